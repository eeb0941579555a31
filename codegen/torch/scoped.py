"""Generated source that mirrors the ``.seq`` file: one class per definition, loops for repeats.

The writer of :mod:`codegen.torch.emit` lowers nodes one line each. Here it is run once per
:class:`~codegen.torch.structure.Scope`: a scope's own nodes become lines of its class's
``forward``, its weights lines of its ``__init__``, and each child scope one line of each —
``self.h3 = H3(gen)`` and ``y = self.h3(x)``. A repeat becomes an ``nn.ModuleList`` and,
when its iterations chain (each reads what the previous one rebinds), a Python loop.

Classes of instances that generate the same text are one class (the 24 blocks of Mamba are
``MambaBlock``); weights are created in the order of the flat graph, so a seed gives the
same weights as the flat module did. Anything this cannot express raises
:class:`Unstructured`, and the emitter falls back to the flat module (and says so).
"""

from __future__ import annotations

import re

import sympy

from codegen.source import comment, ident
from codegen.torch.structure import Scope
from seqdsl.ir.graph import Port


class Unstructured(Exception):
    """The graph has a shape the structured writer does not handle (it says which)."""


class Registry:
    """Class texts of a module: identical texts share one class name."""

    def __init__(self, taken: set[str]):
        self.by_text: dict[str, str] = {}
        self.names: set[str] = set(taken)
        self.sources: list[str] = []
        self.extra: dict[str, list[str]] = {}    # class -> dims it takes as keyword arguments

    def add(self, base: str, text: str, extra: list[str] | None = None) -> str:
        """The name of the class whose text is ``text`` (with ``__CLASS__`` for its name);
        ``extra``: the dims its forward takes as keyword arguments."""
        name = self.by_text.get(text)
        if name is None:
            name, k = base, 2
            while name in self.names:
                name, k = f"{base}{k}", k + 1
            self.names.add(name)
            self.by_text[text] = name
            self.extra[name] = list(extra or ())
            self.sources.append(text.replace("__CLASS__", name))
        return name


def camel(text: str) -> str:
    return "".join(p[:1].upper() + p[1:] for p in ident(text).split("_") if p) or "Layer"


# A name in the code part of a generated line (not an attribute, not inside a string).
_IDENT = re.compile(r"(?<![\w.'\"])[A-Za-z_]\w*")


def _key(p: Port) -> tuple[int, int]:
    return (p.node, p.index)


def run_scope(w) -> None:
    """Write the scope ``w.scope``: its weights and children into ``w.init``, its nodes and
    child calls into ``w.body``."""
    s: Scope = w.scope
    g = w.g
    own = set(s.nodes)
    for name, p in s.inputs:          # values the scope reads from outside: its arguments
        w.var[_key(p)] = w.arg_name(name or g.node(p.node).name.split(".")[-1])
    w.plan_folds(own)
    # One pass in the order of the flat graph: weights, child modules and body modules are
    # created in the order the flat module created them (the same seed gives the same weights,
    # and parameters() lists them in the same order); a child is built and called where its
    # first node was (its arguments were computed before it, by construction of the graph).
    items = [(nid, 0, nid) for nid in s.nodes] + [(min(c.subtree()), 1, c) for c in s.children]
    for _, what, item in sorted(items, key=lambda t: (t[0], t[1])):
        if what == 1:
            _call_child(w, item, _make_child(w, item))
            continue
        w.lower(g.node(item))


def _attr(parent: Scope, child: Scope) -> str:
    return parent.rel(child.path)


def _make_child(w, c: Scope) -> dict:
    """Generate the class(es) of child ``c``; add its construction to ``w.init``."""
    attr = _attr(w.scope, c)
    if c.kind == "loop":
        names = [_class_of(w, it, f"{w.cls_base}Layer") for it in c.children]
        if c.shared:     # one module, run at every step: its steps must be one class and chain
            if len(set(names)) != 1 or not c.loopable:
                raise Unstructured(f"{c.path}: a shared repeat whose steps differ")
            w.init.append(f"        {_module_target(w, attr)} = {names[0]}(gen)   # shared by the {len(names)} steps")
            return {"attr": attr, "classes": names}
        w.init.append(f"        {_module_target(w, attr)} = nn.ModuleList({_list_of(names)})")
        return {"attr": attr, "classes": names}
    base = camel(c.definition or c.path.split(".")[-1])
    name = _class_of(w, c, base)
    w.init.append(f"        {_module_target(w, attr)} = {name}(gen)")
    return {"attr": attr, "classes": [name]}


def _dims_kw(w, name: str) -> str:
    """``, N=N`` for the dims class ``name`` takes as keyword arguments."""
    return "".join(f", {w.sizes.pyname[d]}={w.sizes.pyname[d]}" for d in w.registry.extra.get(name, ()))


def _module_target(w, attr: str) -> str:
    ref = w.wref(attr)
    if ref.startswith("self.w("):
        raise Unstructured(f"{attr}: not a plain module name")
    return ref


def _list_of(names: list[str]) -> str:
    """``[A(gen) for _ in range(24)]``, or ``[(B if i in (2, 6) else A)(gen) for i in range(12)]``."""
    count = len(names)
    kinds = sorted(set(names), key=names.count, reverse=True)
    if len(kinds) == 1:
        return f"[{kinds[0]}(gen) for _ in range({count})]"
    if len(kinds) == 2:
        other = tuple(i for i, n in enumerate(names) if n == kinds[1])
        return f"[({kinds[1]} if i in {other!r} else {kinds[0]})(gen) for i in range({count})]"
    return f"[cls(gen) for cls in ({', '.join(names)},)]"


def _class_of(w, c: Scope, base: str) -> str:
    sub = w.scope_writer(c, "__CLASS__")
    sub.run()
    if c.kind == "instance":
        doc = f"{w.definition_kind(c.definition).capitalize()} {c.definition} of the .seq file."
    else:
        doc = f"One step of a `repeat` (the module at {c.path.rsplit('.', 2)[-2]}.<i>)."
    text = sub.scope_source(comment(doc))
    return w.registry.add(base, text, sub.extra_dims)


def _call_child(w, c: Scope, info: dict) -> None:
    """The line(s) of ``w``'s forward that call child ``c`` (built by :func:`_make_child`)."""
    attr = info["attr"]
    target = w.wref(attr)
    if c.kind == "loop":
        return _call_loop(w, c, target, info)
    args = ", ".join(w.ref(p) for _, p in c.inputs) + _dims_kw(w, info["classes"][0])
    args = args.removeprefix(", ")
    outs = [w.fresh(attr.split(".")[-1] if len(c.outputs) == 1 else f"{attr.split('.')[-1]}_{i}")
            for i, _ in enumerate(c.outputs)]
    lhs = ", ".join(outs) if outs else "_"
    shapes = ", ".join(str(w.g.type_of(p)) for _, p in c.outputs)
    w.body.append(f"        {lhs} = {target}({args})  # {comment(w.definition_kind(c.definition))} "
                  f"{comment(c.definition or attr)}: {shapes}")
    for out, (_, p) in zip(outs, c.outputs):
        w.var[_key(p)] = out


def _call_loop(w, c: Scope, target: str, info: dict) -> None:
    its = c.children
    kws = {_dims_kw(w, name) for name in info["classes"]}
    if not c.loopable or len(kws) > 1:
        for i, it in enumerate(its):
            args = (", ".join(w.ref(p) for _, p in it.inputs) + _dims_kw(w, info["classes"][i])).removeprefix(", ")
            outs = [w.fresh(name or "h") for name, _ in it.outputs]
            w.body.append(f"        {', '.join(outs) or '_'} = {target}[{i}]({args})")
            for out, (_, p) in zip(outs, it.outputs):
                w.var[_key(p)] = out
        return
    first, last = its[0], its[-1]
    loop_vars: dict[str, str] = {}
    inside = c.subtree()
    for name, p in first.inputs:
        if name is not None:
            current = w.ref(p)
            read_elsewhere = any(r not in inside for r in w.readers_of(p))
            if current.isidentifier() and not current.startswith("self") and not read_elsewhere:
                loop_vars[name] = current          # the loop carries it on under its own name
                continue
            var = w.fresh(name)
            w.body.append(f"        {var} = {current}")
            loop_vars[name] = var
    for name, _ in first.outputs:
        loop_vars.setdefault(name, w.fresh(name))
    args = (", ".join(loop_vars[name] if name is not None else w.ref(p) for name, p in first.inputs)
            + kws.pop()).removeprefix(", ")
    outs = ", ".join(loop_vars[name] for name, _ in first.outputs)
    if c.shared:
        w.body.append(f"        for _ in range({len(its)}):")
        w.body.append(f"            {outs} = {target}({args})")
        for name, p in last.outputs:
            w.var[_key(p)] = loop_vars[name]
        return
    layer = w.fresh("layer")
    w.body.append(f"        for {layer} in {target}:")
    w.body.append(f"            {outs} = {layer}({args})")
    for name, p in last.outputs:
        w.var[_key(p)] = loop_vars[name]


def dims_needed(w, lines: list[str]) -> list[str]:
    """The dims read at call time that ``lines`` use (as names in their code part)."""
    pynames = {v: k for k, v in w.sizes.pyname.items()}
    used = []
    for line in lines:
        code = line.split("  # ", 1)[0]
        code = re.sub(r"'[^']*'|\"[^\"]*\"", "''", code)
        for name in _IDENT.findall(code):
            if name in pynames and pynames[name] not in used:
                used.append(pynames[name])
    return used


def bind_lines(w, dims: list[str]) -> tuple[list[str], list[str]]:
    """``N = x.shape[1]`` for each dim a class uses, from the first argument that has it; and
    the dims no argument carries (the class takes them as keyword arguments)."""
    out, extra = [], []
    for dim in dims:
        for _, p in w.scope.inputs:
            shape = w.g.type_of(p).shape
            axis = next((i for i, d in enumerate(shape)
                         if sympy.sympify(d).is_Symbol and sympy.sympify(d).name == dim), None)
            if axis is not None:
                read = f"{w.var[_key(p)]}.shape[{axis}]"
                if _is_sequence(w, dim):       # the whole length when the sequence is split over ranks
                    read = f"rt.seq_length({read})"
                out.append(f"        {w.sizes.pyname[dim]} = {read}")
                break
        else:
            extra.append(dim)
    return out, extra


def layer_hooks(w, n):
    """The lines a layer gets before and after its own (codegen/distributed/plan.py)."""
    from codegen.distributed.plan import layer_hooks as hooks

    return hooks(w, n)


def _is_sequence(w, dim: str) -> bool:
    """Whether ``dim`` is the sequence axis of the entry's first input (packed rows' axis)."""
    from codegen.torch import packing

    fr = packing.plan_of(w).frame
    return fr is not None and fr[1].name == dim


class ScopedWriter:
    """The writer's side of scopes (mixed into codegen.torch.emit._Writer)."""

    # ---- scopes: one class per definition (codegen/torch/scoped.py)
    def scope_writer(self, scope: Scope, cls: str):
        sub = self.child(self.g, cls)
        sub.scope, sub.cls_base = scope, (camel(scope.definition) if scope.definition else self.cls_base)
        sub.definitions = self.definitions
        return sub

    def rel(self, name: str) -> str:
        """A layer path as the module being written names it (relative to its scope)."""
        return self.scope.rel(name) if self.scope is not None and self.scope.path else name

    def arg_name(self, name: str) -> str:
        return self.fresh(name)

    def fresh(self, base: str) -> str:
        """A new local name from ``base``, unique in the class being written."""
        base = ident(base)
        base = "v_" + base if base.startswith("mix_") else base
        name, k = base, 1
        while name in self.used:
            name, k = f"{base}_{k}", k + 1
        self.used.add(name)
        return name

    def readers_of(self, p: Port) -> list[int]:
        """Ids of the nodes that read ``p``."""
        if self._readers is None:
            self._readers = {}
            for n in self.g.nodes():
                for q in n.inputs:
                    self._readers.setdefault((q.node, q.index), []).append(n.id)
        return self._readers.get((p.node, p.index), [])

    def definition_kind(self, name: str | None) -> str:
        return self.definitions.get(name, "definition")

    def scope_source(self, doc: str) -> str:
        """The class of a scope that is not the entry: ``__init__(gen)``, and a forward whose
        arguments are the values the scope reads from outside."""
        args = [self.var[(p.node, p.index)] for _, p in self.scope.inputs]
        outs = [self.ref(p) for _, p in self.scope.outputs]
        body = with_frees(self.body, keep=set(outs))
        lines = ["class __CLASS__(rt.SeqModule):", f'    """{doc}"""', "",
                 "    def __init__(self, gen: torch.Generator):", "        super().__init__()"]
        lines += self.init or []
        lines.append("")
        binds, self.extra_dims = bind_lines(self, dims_needed(self, self.init + body))
        if self.extra_dims:      # sizes read at call time that no argument carries: given by the caller
            args += ["*"] + [self.sizes.pyname[d] for d in self.extra_dims]
        lines.append(f"    def forward(self, {', '.join(args)}):")
        lines += binds
        lines += body
        lines.append(f"        return {', '.join(outs)}")
        return "\n".join(lines) + "\n"


def with_frees(body: list[str], keep: set[str]) -> list[str]:
    """``body`` with ``del`` after the last line that reads a tensor the layers computed, so
    that a long model holds only what later layers still read (at N = 10⁶ every [B, N, D]
    intermediate is hundreds of MB). Names are found as identifiers in the code part of each
    line; a name that only looks read (inside a string) is kept longer, never freed early."""
    code = [line.split("  # ", 1)[0] for line in body]
    defined: dict[str, int] = {}
    for i, text in enumerate(code):
        target = text.strip().split(" = ", 1)[0] if " = " in text else ""
        if target.isidentifier() and target not in defined:
            defined[target] = i
    last: dict[str, int] = {}
    for i, text in enumerate(code):
        rhs = text.split(" = ", 1)[1] if " = " in text else text
        for name in _IDENT.findall(rhs):
            if name in defined and defined[name] < i:
                last[name] = i
    frees: dict[int, list[str]] = {}
    for name, i in last.items():
        if name not in keep:
            frees.setdefault(i, []).append(name)
    out = []
    for i, line in enumerate(body):
        out.append(line)
        if i in frees:
            out.append(f"        del {', '.join(sorted(frees[i], key=lambda n: defined[n]))}  # not read again")
    return out
