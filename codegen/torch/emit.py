"""Lower a checked layer graph to the source of a PyTorch module.

One code path: ``seqdsl compile --backend torch`` writes this source, and ``seqdsl.load``
executes the very same text. The source is straight-line code, one line per layer, with
the layer path and output shape in a comment; token mixers call the family runtimes in
codegen/softmax, codegen/linear and codegen/toeplitz with their structure spelled out
(mask constructors, decay, kernel kind, algorithm).

Nothing from a .seq file is pasted unescaped: names become identifiers made of
[A-Za-z0-9_] only, and every string (paths, patterns) is written with ``repr``.
"""

from __future__ import annotations

import fnmatch
import keyword
from dataclasses import dataclass, field

import sympy

from codegen import fuse
from codegen.decode.plan import DecodePlan, class_lines, seq_flag, window_line
from codegen.decode.plan import plan as plan_decoding
from codegen.source import RESERVED, comment, ident, literal
from codegen.torch import names, packing, scoped
from codegen.torch import sizes as size_plan
from codegen.torch.choice import Choice, Chooser
from codegen.torch.sizes import SizeCode, plan_sizes, runtime_dims, shape_spec, size_check_lines, value_of
from codegen.torch.structure import Scope, build
from seqdsl.analysis.select import MACHINES
from seqdsl.errors import SeqError
from seqdsl.ir import mix as M
from seqdsl.ir.graph import Graph, Node, OpKind, Port


@dataclass
class Emitted:
    source: str
    class_name: str
    choices: list[Choice] = field(default_factory=list)


_ident = ident


def class_name(entry: str) -> str:
    name = "".join(part.capitalize() for part in _ident(entry).split("_")) or "Model"
    return name + "Model" if name in RESERVED else name


class _Writer(Chooser, scoped.ScopedWriter):
    def __init__(self, graph: Graph, sizes: SizeCode, cls: str, machine: str, choices: list[Choice],
                 classes: list[str], forced: dict[str, str] | None = None):
        self.forced = forced or {}    # layer path -> algorithm, from load(algorithms=...)
        self.g = graph
        self.sizes = sizes
        self.cls = cls
        self.machine = MACHINES[machine]
        self.choices = choices
        self.classes = classes
        self.init: list[str] = []
        self.body: list[str] = []
        self.var: dict[tuple[int, int], str] = {}
        # Generated names never shadow Python's builtins, the file's imports, the dims bound
        # at call time or each other: a local named like one of them gets a suffix.
        self.used: set[str] = set(RESERVED) | set(sizes.runtime) | {cls}
        self.folds: dict[int, fuse.Fold] = {}     # MIX node id -> what its call absorbs
        self.dropped: set[int] = set()            # nodes a fold computes inside a mixer call
        self.early: set[int] = set()              # nodes already emitted ahead of a mixer call
        self.own: set[int] | None = None          # the nodes of the scope being written (None: all)
        self.scope: Scope | None = None           # the scope this writer writes (None: the flat graph)
        self.registry: scoped.Registry | None = None
        self._readers: dict | None = None
        self.extra_dims: list[str] = []
        self.cls_base = cls
        self.definitions: dict[str, str] = {}     # definition name -> mixer / block / model
        self.decoding: DecodePlan | None = None  # what prefill / step keep (codegen/decode/plan.py)

    # ---- names
    def name_for(self, n: Node, index: int = 0) -> str:
        base = _ident(n.name.split(".")[-1] if n.kind != OpKind.INPUT else n.name)
        base = base if not base[0].isdigit() else "t_" + base
        base = "v_" + base if base.startswith("mix_") else base     # the generated kernels' names
        name, k = base, 1
        while name in self.used:
            name, k = f"{base}_{k}", k + 1
        self.used.add(name)
        self.var[(n.id, index)] = name
        return name

    def ref(self, port: Port | None) -> str:
        if port is None:
            return "None"
        return self.var[(port.node, port.index)]

    def wref(self, path: str) -> str:
        """Source that reads the weight at ``path`` of the module being written: attribute
        access where every part is a plain name (``self.mixer.conv1d.weight``), else by path."""
        parts = path.split(".")
        if names.MODULE_ATTRS and all(p.isidentifier() and p not in names.MODULE_ATTRS and not keyword.iskeyword(p)
                                 and not p.startswith("_") for p in parts):
            return "self." + path
        return f"self.w({literal(path)})"

    def inp(self, n: Node, role: str) -> str:
        return self.ref(n.input(role))

    def emit(self, n: Node, expr: str) -> None:
        expr = packing.rewrite(self, n, expr)      # packed rows: the layers that honour documents
        out = self.name_for(n)
        shapes = ", ".join(str(t) for t in n.outs)
        self.body.append(f"        {out} = {expr}  # {self.rel(n.name)}: {shapes}")

    # ---- the graph
    def run(self) -> None:
        if self.scope is not None:
            return scoped.run_scope(self)
        self.plan_folds()
        for n in self.g.nodes():
            self.lower(n)

    def lower(self, n: Node) -> None:
        """The line(s) of one node, unless a fold computes it inside a mixer call."""
        if n.id in self.dropped or n.id in self.early:
            return
        names.check_layer(n)
        handler = getattr(self, f"op_{n.kind.value}", None)
        if handler is None:
            raise NotImplementedError(f"the torch backend has no lowering for {n.kind.value} ({n.name})")
        with scoped.layer_hooks(self, n):           # packed rows, sequence parallelism: lines around it
            handler(n)
        window_line(self, n)                        # x[:, N - M:]: a window slot when decoding
        size_plan.table_end(self, n)                # a factorised position table: its first N rows

    def mix_nodes(self) -> list[Node]:
        """The MIX nodes this writer writes (those of its scope)."""
        return [n for n in self.g.nodes(OpKind.MIX) if self.own is None or n.id in self.own]

    def plan_folds(self, own: set[int] | None = None) -> None:
        """Rank-one log-gates of linear mixers go in factored (see codegen/fuse.py)."""
        self.own = own
        uses = fuse.readers(self.g)
        for n in self.mix_nodes():
            decay = next((x for x in M.mask_leaves(n.spec.mask) if isinstance(x, M.Decay)), None)
            if n.spec.family in ("linear", "decayed_linear") and decay is not None and decay.log \
                    and isinstance(decay.rate, M.Ref):
                self.add_fold(n, fuse.outer_gate(self.g, n, uses))

    def emit_hoisted(self, n: Node) -> None:
        """Emit, ahead of the mixer ``n``, the nodes its fold reads that come later in the graph."""
        fold = self.folds.get(n.id)
        for nid in fold.hoist if fold is not None else ():
            node = self.g.node(nid)
            getattr(self, f"op_{node.kind.value}")(node)
            self.early.add(nid)

    def add_fold(self, n: Node, fold) -> None:
        if fold is not None and self.own is not None and \
                not (fold.dropped | set(fold.hoist) | {fold.result} - {None}) <= self.own:
            return          # a fold across a definition's boundary: the call stays plain
        if fold is not None:
            self.folds[n.id] = fold
            self.dropped |= fold.dropped

    def child(self, body: Graph, name: str) -> _Writer:
        """The writer of a block used as a function (an expert, a DEQ cell, a recurrent step)."""
        sub = type(self)(body, self.sizes, name, self.machine.name, self.choices, self.classes, self.forced)
        sub.registry, sub.packing_plan = self.registry, packing.plan_of(self)
        sub.decoding = self.decoding if body is self.g else None
        return sub

    def _size_checks(self, constraints) -> list[str]:
        return size_check_lines(self, constraints)

    def preamble(self) -> str:
        """Module-level source placed before the classes (the Triton writer's kernels)."""
        return ""

    # weights
    def op_param(self, n: Node, trainable: bool = True) -> None:
        init = n.attr("init")
        kind, args = init.kind, init.args
        try:
            shape = ", ".join(self.sizes.init_code(d) for d in n.out.shape)
        except ValueError as err:      # a weight shaped by a size read at call time
            raise SeqError(f"parameter {n.name}: {err}", n.pos) from None
        if kind.startswith("ssm_"):
            ssm_kind = _kernel_kind(self.g, n)
            dt = f", dt=({', '.join(repr(float(self.sizes.number(a))) for a in args)})" if args else ""
            self.init.append(f"        self.add_weight({self.rel(n.name)!r}, rt_ssm_init({ssm_kind!r}, {kind[4:]!r}, "
                             f"{n.name.rsplit('.', 1)[-1]!r}, ({shape},), gen{dt}), {trainable})")
        else:
            args_text = ", ".join(repr(float(self.sizes.number(a))) for a in args)
            self.init.append(f"        self.add_weight({self.rel(n.name)!r}, rt.init_tensor({kind!r}, ({shape},), "
                             f"({args_text}{',' if len(args) == 1 else ''}), gen), {trainable})")
        self.var[(n.id, 0)] = self.wref(self.rel(n.name)) + self._bounded_slice(n)   # read where it is used

    def _bounded_slice(self, n: Node) -> str:
        """``[:N]`` on the axis of a position table whose length is bound at call time."""
        parts = []
        for d in n.out.shape:
            d = sympy.sympify(d)
            parts.append(d.name if d.is_Symbol and d.name in self.sizes.plan.bounds else None)
        if not any(parts):
            return ""
        last = max(i for i, p in enumerate(parts) if p)
        rows = (lambda p: f"rt.seq_rows({p})") if self._seq(n) else (lambda p: f":{p}")   # decoding: from t
        return "[" + ", ".join(rows(p) if p else ":" for p in parts[:last + 1]) + "]"

    def op_buffer(self, n: Node) -> None:
        self.op_param(n, trainable=False)

    def op_input(self, n: Node) -> None:
        self.name_for(n)

    def op_get(self, n: Node) -> None:
        p = n.inputs[0]
        self.emit(n, f"{self.ref(p)}[{p.index}]")

    # layers
    def op_linear(self, n: Node) -> None:
        mask = self._weight_mask(n, "weight", "weight_mask")
        self.emit(n, f"rt.linear({self.inp(n, 'x')}, {self.inp(n, 'weight')}, {self.inp(n, 'bias')}{mask})")

    def _weight_mask(self, n: Node, role: str, buffer: str, arg: str = "weight_mask") -> str:
        sparsity = n.attr("sparsity")
        if sparsity is None:
            return ""
        shape = self.g.type_of(n.input(role)).shape
        rows, cols = (self.sizes.number(d) for d in shape)
        path = f"{self.rel(n.name)}.{buffer}"
        self.init.append(f"        self.add_weight({path!r}, {self.mask_source(sparsity)}.dense({rows}, {cols})"
                         f".float(), trainable=False)")
        return f", {arg}={self.wref(path)}"

    def op_seq_project(self, n: Node) -> None:
        self.emit(n, f"rt.seq_project({self.inp(n, 'x')}, {self.inp(n, 'weight')})")

    def op_embed(self, n: Node) -> None:
        self.emit(n, f"rt.embed({self.inp(n, 'tokens')}, {self.inp(n, 'table')})")

    def op_norm(self, n: Node) -> None:
        fn, x = n.attr("fn"), self.inp(n, "x")
        w, b, eps = self.inp(n, "weight"), self.inp(n, "bias"), n.attr("eps")
        eps = "" if eps is None else f", eps={float(self.sizes.number(eps))!r}"   # None: the runtime's default
        if fn == "layernorm":
            self.emit(n, f"rt.layernorm({x}, {w}, {b}{eps})")
        elif fn == "rmsnorm":
            self.emit(n, f"rt.rmsnorm({x}, {w}{eps})")
        elif fn == "batchnorm":
            self.emit(n, f"rt.batchnorm({x}, {w}, {b}{eps})")
        else:
            self.emit(n, f"rt.groupnorm({x}, {w}, {b}, groups={self.sizes.code(n.attr('groups'))}{eps})")

    def op_mlp(self, n: Node) -> None:
        masks = self._weight_mask(n, "w1", "w1_mask", "w1_mask") + self._weight_mask(n, "w2", "w2_mask", "w2_mask")
        self.emit(n, f"rt.mlp({self.inp(n, 'x')}, {self.inp(n, 'w1')}, {self.inp(n, 'b1')}, {self.inp(n, 'w2')}, "
                     f"{self.inp(n, 'b2')}, act={n.attr('act')!r}, gated={bool(n.attr('gated'))}{masks})")

    def op_conv1d(self, n: Node) -> None:
        self.emit(n, f"rt.conv1d({self.inp(n, 'x')}, {self.inp(n, 'weight')}, {self.inp(n, 'bias')}, "
                     f"causal={bool(n.attr('causal'))})")

    def op_pool(self, n: Node) -> None:
        self.emit(n, f"rt.pool({self.inp(n, 'x')}, {self.sizes.code(n.attr('size'))}, {n.attr('fn')!r})")

    def op_reduce(self, n: Node) -> None:
        self.emit(n, f"rt.reduce({self.inp(n, 'x')}, {n.attr('fn')!r}, {n.attr('axis')}, {bool(n.attr('keep'))})")

    def op_softmax(self, n: Node) -> None:
        self.emit(n, f"torch.softmax({self.inp(n, 'x')}, dim={n.attr('axis')})")

    def op_unary(self, n: Node) -> None:
        fn = n.attr("fn")
        if fn == "rotary":
            self.emit(n, f"rt.rotary({self.inp(n, 'x')}, {self.sizes.number(n.attr('fraction'))!r}, "
                         f"{self.sizes.number(n.attr('base'))!r}{self._seq(n)})")
        else:
            self.emit(n, f"rt.UNARY[{fn!r}]({self.inp(n, 'x')})")

    def op_binary(self, n: Node) -> None:
        op = n.attr("op")
        a, b = self.inp(n, "a"), self.inp(n, "b")
        scalar = n.attr("scalar")
        if scalar is not None:
            literal = self.scalar_code(scalar)
            a, b = (literal, b) if n.attr("side") == "left" else (a, literal)
        self.emit(n, f"{a} {op} {b}")

    def scalar_code(self, e) -> str:
        v = self.sizes.subs(e)
        if v.is_number:
            return repr(int(v)) if v.is_Integer else repr(float(v))
        return f"({self.sizes.code(e)})"

    def op_matmul(self, n: Node) -> None:
        self.emit(n, f"{self.inp(n, 'a')} @ {self.inp(n, 'b')}")

    def op_rearrange(self, n: Node) -> None:
        x = self.inp(n, "x")
        if n.attr("pattern") is not None:
            sizes = "".join(f", {_ident(k)}={self.sizes.code(v)}" for k, v in n.attr("sizes", ()))
            self.emit(n, f"rt.rearrange({x}, {n.attr('pattern')!r}{sizes})")
        elif n.attr("perm") is not None:
            self.emit(n, f"{x}.permute({', '.join(str(p) for p in n.attr('perm'))})")
        else:      # inside a factorised position table: at the size it is built for (sizes.table_end)
            code = self.sizes.init_code if size_plan.in_table(self.sizes.plan, n.id) else self.sizes.code
            self.emit(n, f"{x}.expand({', '.join(code(d) for d in n.attr('expand'))})")

    def op_slice(self, n: Node) -> None:
        parts = []
        shape = iter(self.g.type_of(n.input("x")).shape)
        for item in n.attr("index"):
            if item[0] == "new":
                parts.append("None")
                continue
            dim = sympy.sympify(next(shape))
            if item[0] == "index":
                parts.append(self.sizes.code(item[1]))
            elif sympy.sympify(item[1]) == 0 and sympy.simplify(sympy.sympify(item[2]) - dim) == 0:
                parts.append(":")                      # the whole axis
            else:
                lo = "" if sympy.sympify(item[1]) == 0 else self.sizes.code(item[1])
                parts.append(f"{lo}:{self.sizes.code(item[2])}")
        while parts and parts[-1] == ":":
            parts.pop()
        if "None" not in parts and len(parts) > 1 and parts[0] == ":":
            k = next(i for i, p in enumerate(parts) if p != ":")
            parts = ["..."] + parts[k:] if len(parts) == len(self.g.type_of(n.input("x")).shape) else parts
        self.emit(n, f"{self.inp(n, 'x')}[{', '.join(parts) or ':'}]")

    def op_concat(self, n: Node) -> None:
        items = ", ".join(self.ref(p) for p in n.inputs)
        self.emit(n, f"torch.cat([{items}], dim={n.attr('axis')})")

    def op_dropout(self, n: Node) -> None:
        self.emit(n, f"F.dropout({self.inp(n, 'x')}, {self.sizes.number(n.attr('p'))!r}, self.training)")

    def op_positions(self, n: Node) -> None:
        if n.attr("fn") == "arange":
            self.emit(n, f"rt.arange({self.sizes.code(n.out.shape[0])}{self._seq(n)})")
        else:
            self.emit(n, f"rt.sinusoidal({self.sizes.code(n.out.shape[0])}, {self.sizes.code(n.out.shape[1])}"
                         f"{self._seq(n)})")

    def _seq(self, n: Node) -> str:      # ", seq=True": the node reads the position (t in a decoding step)
        return seq_flag(self.decoding, n.id)

    def op_hash(self, n: Node) -> None:
        d = self.sizes.number(self.g.type_of(n.input("x")).shape[-1])
        buckets = self.sizes.number(n.attr("buckets"))
        path = f"{self.rel(n.name)}.rotation"
        self.init.append(f"        self.add_weight({path!r}, torch.randn({d}, {max(1, buckets // 2)}, "
                         f"generator=torch.Generator().manual_seed({int(n.attr('seed'))})), trainable=False)")
        self.emit(n, f"rt.lsh({self.inp(n, 'x')}, {self.wref(path)})")

    def op_sort_blocks(self, n: Node) -> None:
        self.emit(n, f"rt.sinkhorn_sort({self.inp(n, 'x')}, {self.inp(n, 'weight')}, "
                     f"{self.sizes.code(n.attr('block'))}, {int(n.attr('iters'))})")

    # blocks used as functions
    def _body_class(self, n: Node, what: str) -> str:
        body: Graph = n.attr("body")
        if self.registry is None:
            name = f"{self.cls}_{_ident(self.rel(n.name))}_{what}"
            sub = self.child(body, name)
            sub.run()
            self.classes.append(sub.source(tuple(_ident(i.name) for i in body.inputs)))
            return name
        sub = self.child(body, "__CLASS__")
        sub.run()
        return self.registry.add(scoped.camel(f"{_ident(self.rel(n.name).split('.')[-1])}_{what}"),
                                 sub.source(tuple(_ident(i.name) for i in body.inputs)))

    def op_moe(self, n: Node) -> None:
        cls = self._body_class(n, "expert")
        count = self.sizes.number(n.attr("copies"))
        path = f"{self.rel(n.name)}.experts"
        self.init.append(f"        self.add_module_at({path!r}, nn.ModuleList([{cls}() for _ in range({count})]))")
        self.emit(n, f"rt.moe({self.inp(n, 'x')}, {self.inp(n, 'router')}, self.module_at({path!r}), "
                     f"top_k={int(n.attr('top_k'))}, capacity={self.sizes.number(n.attr('capacity'))!r}, owner=self, "
                     f"balance={self.sizes.number(n.attr('balance'))!r}, router_z={self.sizes.number(n.attr('z_loss'))!r})")

    def op_fixed_point(self, n: Node) -> None:
        cls = self._body_class(n, "cell")
        path = f"{self.rel(n.name)}.cell"
        self.init.append(f"        self.add_module_at({path!r}, {cls}())")
        self.emit(n, f"rt.fixed_point(self.module_at({path!r}), {self.inp(n, 'z')}, {self.inp(n, 'x')}, "
                     f"iters={int(n.attr('iters'))}, tol={self.sizes.number(n.attr('tol'))!r}, "
                     f"solver={literal(n.attr('solver'))}{self._equilibrium_args(n)})")

    def _equilibrium_args(self, n: Node) -> str:
        """fixed_point's backward solve and Jacobian regularisation, where not the defaults."""
        a, num = n.attr, self.sizes.number
        out = f", backward_solver={literal(a('backward_solver'))}" if a("backward_solver") != a("solver") else ""
        out += f", backward_iters={int(a('backward_iters'))}" if a("backward_iters") != a("iters") else ""
        if num(a("jac_loss", 0)):
            out += f", jac_loss={num(a('jac_loss'))!r}, jac_freq={num(a('jac_freq', 1))!r}"
        return out

    def op_recurrent(self, n: Node) -> None:
        cls = self._body_class(n, "step")
        path = f"{self.rel(n.name)}.step"
        self.init.append(f"        self.add_module_at({path!r}, {cls}())")
        out = self.name_for(n)
        self.body.append(f"        {out} = rt.recurrent(self.module_at({path!r}), {self.inp(n, 'x')}, "
                         f"{self.inp(n, 'state')}, {self.sizes.code(n.attr('segment'))})  # {self.rel(n.name)}")
        self.var[(n.id, 1)] = f"{out}[1]"
        self.var[(n.id, 0)] = f"{out}[0]"

    # the token mixer
    def op_mix(self, n: Node) -> None:
        self.emit_torch_mix(n, self.choose(n))

    def emit_torch_mix(self, n: Node, choice: Choice) -> None:
        from codegen.torch import mixers as lower_mix

        expr = lower_mix.call(self, n, choice)
        others = ", ".join(f"{a} {t:.3g} s" for a, t in choice.estimates.items() if a != choice.algorithm)
        why = "forced by the file" if choice.forced else f"est. {choice.estimates[choice.algorithm]:.3g} s"
        if choice.by_length is not None:
            at = ", ".join(f"{d}={v}" for d, v in self.sizes.plan.defaults.items())
            self.body.append(f"        # {n.spec.family} mixer: {choice.describe()} (cost model '{self.machine.name}'; "
                             f"at {at}: {choice.algorithm}, {why}" + (f"; {others}" if others else "") + ")")
        else:
            self.body.append(f"        # {n.spec.family} mixer: {choice.algorithm} ({why}" +
                             (f"; {others}" if others else "") + f") on the '{self.machine.name}' model")
        self.emit(n, expr)
        fold = self.folds.get(n.id)
        if fold is not None and fold.result != n.id:
            self.var[(fold.result, 0)] = self.var[(n.id, 0)]

    def mask_source(self, mask, tensors: dict[str, str] | None = None) -> str:
        from codegen.torch import mixers as lower_mix
        return lower_mix.mask_source(self, mask, tensors or {})

    # ---- output
    def source(self, arg_names: tuple[str, ...], entry: str | None = None, constraints=()) -> str:
        """The class. ``entry`` marks the module a user calls: its forward binds the sizes
        read from the inputs and checks the others (``rt.bind_sizes``) and the file's
        ``require``s at those sizes."""
        outs = ", ".join(self.ref(p) for p in self.g.outputs)
        plan = self.sizes.plan
        lines = [f"class {self.cls}(rt.SeqModule):"]
        inputs = tuple((i.name, i.out.dtype, shape_spec(i.out.shape, self.sizes)) for i in self.g.inputs)
        if entry is not None:
            lines.append(f"    ENTRY = {literal(entry)}")
        lines.append(f"    INPUTS = {literal(inputs)}   # an int or (dim, int): fixed; a name: read at each call")
        lines.append(f"    SIZES = {literal(self.sizes.values)}")
        if entry is not None:
            lines.append(f"    RUNTIME = {literal(tuple(plan.runtime))}   # dims read from the inputs at each call")
            if plan.bounds:
                lines.append(f"    BOUNDS = {literal(plan.bounds)}   # largest size the position tables serve")
            lines.append(f"    DEFAULTS = {literal(plan.defaults)}")
            lines += class_lines(self.decoding, getattr(self, "no_step", None)) if self.decoding else []
            lines += size_plan.decode_limit_lines(self, constraints)   # bounds a decoded N may not pass
            fixed = {d: why for d, why in plan.fixed_by.items() if any(
                isinstance(a, tuple) and a[0] == d for _, _, shape in inputs for a in shape)}
            if fixed:
                lines.append(f"    FIXED_BY = {literal({d: comment(w) for d, w in fixed.items()})}")
        lines.append("")
        lines.append("    def __init__(self, seed: int = 0):")
        lines.append("        super().__init__()")
        lines.append("        gen = torch.Generator().manual_seed(seed)")
        lines += self.init or ["        pass"]
        lines.append("")
        args = ", ".join(self.var[(i.id, 0)] for i in self.g.inputs)
        lines += packing.entry_forward(self, args) if entry is not None else [f"    def forward(self, {args}):"]
        if entry is not None:
            names = [self.sizes.pyname[d] for d in plan.runtime]
            if names:
                lines.append(f"        {', '.join(names)}{',' if len(names) == 1 else ''} = rt.bind_sizes(self, {args})"
                             f"  # read from the inputs; the other sizes are checked")
            elif args:
                lines.append(f"        rt.bind_sizes(self, {args})  # every size is fixed: checked")
            lines += self._size_checks(constraints)
        else:
            for dim, (inp, axis) in runtime_dims(self.g, self.sizes).items():
                lines.append(f"        {self.sizes.pyname[dim]} = {self.var[(inp, 0)]}.shape[{axis}]")
        lines += scoped.with_frees(self.body, keep={self.ref(p) for p in self.g.outputs})
        lines.append(f"        return {outs}")
        return "\n".join(lines) + "\n"


def _all_mixers(g: Graph) -> list[Node]:
    out = []
    for n in g.nodes():
        if n.kind == OpKind.MIX:
            out.append(n)
        if n.attr("body") is not None:
            out += _all_mixers(n.attr("body"))
    return out


def _kernel_kind(g: Graph, param: Node) -> str:
    """The kind of the SSM kernel this weight belongs to (shift, diag, dplr, ema)."""
    for n in g.nodes(OpKind.MIX):
        if any(p.node == param.id for p in n.inputs):
            for leaf in M.mask_leaves(n.spec.mask):
                if isinstance(leaf, M.Toeplitz) and isinstance(leaf.kernel, M.SSMKernel):
                    return leaf.kernel.kind
    raise ValueError(f"{param.name} is an SSM weight that no SSM kernel reads")


HEADER = '''"""{title}

Generated by seqdsl {version} from {source} (entry: {entry}).
Sizes fixed: {sizes}
Read from the inputs at each call: {runtime}
Regenerate with `seqdsl compile`; `seqdsl.load` runs exactly this text.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from codegen.torch import runtime as rt
'''

# Imports of the mixer families, added when the module uses them.
FAMILY_IMPORTS = {
    "masks": "from codegen import masks as M",
    "softmax": "from codegen.softmax.torch_impl import given_attention, softmax_attention",
    "linear": "from codegen.linear.torch_impl import linear_attention",
    "outer_gate": "from codegen.linear.chunked import OuterGate",
    "toeplitz": "from codegen.toeplitz.torch_impl import toeplitz_mix",
    "ssm_init": "from codegen.torch.mixers import ssm_init_factory",
}


def emit_module(graph: Graph, entry: str, sizes: dict, source_name: str, machine: str = "cpu", *,
                writer: type[_Writer] | None = None, algorithms: dict[str, str] | None = None,
                backend: str = "torch", explicit: set[str] | None = None, concretized: set[str] | None = None,
                constraints=(), structured: bool = True) -> Emitted:
    """The Python source of an ``nn.Module`` computing ``graph``. ``algorithms`` forces the
    algorithm of mixers by layer path; ``writer`` is the lowering (the Triton backend's
    writer lowers mixers to generated kernels). ``explicit`` names the sizes the user gave:
    those, and the sizes weights or structure fix, are written in; the other dims the inputs
    carry are read at each call (codegen/torch/sizes.py); ``explicit=None`` fixes every size
    that has a value. ``constraints`` (the file's ``require``s) are checked at each call."""
    from seqdsl import __version__

    values = {k: value_of(k, v) for k, v in sizes.items()}
    plan = plan_sizes(graph, values, explicit, concretized)
    sz = SizeCode(plan.values, set(plan.runtime), plan)
    cls = class_name(entry)
    choices: list[Choice] = []
    classes: list[str] = []
    paths = [n.name for n in _all_mixers(graph)]
    unknown = [p for p in algorithms or {} if not any(fnmatch.fnmatchcase(path, p) for path in paths)]
    if unknown:
        listed = ", ".join(paths[:4]) + (f", … ({len(paths)} in all)" if len(paths) > 4 else "")
        raise ValueError(f"no mixer matches {', '.join(unknown)} (mixers: {listed or 'none'}; "
                         f"'*' matches any part of a path)")
    w = (writer or _Writer)(graph, sz, cls, machine, choices, classes, algorithms)
    w.decoding = decoding = plan_decoding(graph, set(plan.runtime), plan.fixed_by)
    flat_reason = None
    if structured:
        try:
            w.scope, w.registry = build(graph), scoped.Registry(set(RESERVED) | {cls})
            w.definitions = {name: kind for _, kind, name in graph.layers}
            w.run()
            main = w.source((), entry=entry, constraints=constraints)
            classes = w.registry.sources
        except scoped.Unstructured as why:      # written flat instead, and said so in the header
            flat_reason = str(why)
            choices.clear()
            w = (writer or _Writer)(graph, sz, cls, machine, choices, classes, algorithms)
            w.decoding = decoding
    if not structured or flat_reason is not None:
        w.run()
        main = w.source((), entry=entry, constraints=constraints)
    title = "the PyTorch module" if backend == "torch" else "the module with generated Triton kernels"
    fixed = ", ".join(f"{k}={v}" for k, v in plan.values.items()) or "none"
    read = ", ".join(plan.runtime) or "none"
    if flat_reason is not None:
        read += f" (written as one flat class: {flat_reason})"
    head = HEADER.format(title=comment(f"{cls}: {title} of {entry}"), version=comment(__version__),
                         source=comment(source_name), entry=comment(entry), sizes=comment(fixed, 1000),
                         runtime=comment(read, 1000))
    body = "\n\n".join(classes + [main])
    needed = []
    families = {c.family for c in choices}
    preamble = w.preamble()
    if families & {"softmax", "content_sparse", "synthetic"} or "M." in body or "M." in preamble:
        needed += ["masks", "softmax"]
    if families & {"linear", "decayed_linear"}:
        needed.append("linear")
    if "OuterGate(" in body:
        needed.append("outer_gate")
    if "toeplitz" in families:
        needed.append("toeplitz")
    if "rt_ssm_init(" in body:
        needed.append("ssm_init")
    imports = "".join(FAMILY_IMPORTS[k] + "\n" for k in needed)
    ssm_line = "\nrt_ssm_init = ssm_init_factory()\n" if "ssm_init" in needed else ""
    text = head + imports + ssm_line + preamble + "\n\n" + body
    return Emitted(text, cls, choices)
