"""The Python API (SPEC §4): thin wrappers over the front end and the checker."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import sympy

from seqdsl.check.elaborate import Elaborated, elaborate
from seqdsl.check.program import Program, load_program
from seqdsl.errors import Pos, SeqError
from seqdsl.frontend import ast as A
from seqdsl.ir.graph import Graph, OpKind, verify
from seqdsl.ir.types import TensorType
from seqdsl.passes import run_pipeline


def parse(source: str | Path, *, import_path: list[str | Path] | None = None,
          allow_any_import: bool | None = None) -> Program:
    """Parse a ``.seq`` file (a path, or the text itself) and resolve its imports.

    ``import "x.seq"`` finds only ``.seq`` files inside the importing file's folder (the
    current one for text) or a folder of ``import_path`` (then of SEQDSL_PATH), symlinks
    resolved first; ``allow_any_import=True`` (or SEQDSL_ALLOW_ANY_IMPORT=1) lifts the
    folder restriction. Raises :class:`seqdsl.SeqError` with file, line and column on any
    error, also for input made to exhaust the compiler (docs/language.md, "Limits").
    """
    try:
        return load_program(source, import_path, allow_any_import)
    except RecursionError:   # a safety net: the front end's limits should stop this first
        raise SeqError("the program is nested too deeply to check") from None


@dataclass
class Checked:
    """A checked entry: its layer graph, inputs, outputs and parameter count."""

    program: Program
    entry: str
    kind: str
    graph: Graph
    sizes: dict[str, sympy.Basic]
    param_count: sympy.Expr
    constraints: list
    concretized: set = field(default_factory=set)   # dims the graph's structure depends on
    # weights stored, dense (a sparse layer's masked entries included); param_count counts the
    # trained non-zeros only (seqdsl/analysis/params.py)
    stored_param_count: sympy.Expr | None = None

    def value(self, expr: sympy.Expr) -> sympy.Basic:
        """``expr`` (e.g. ``param_count``) at the sizes this entry was checked at."""
        subs = {}
        for name, v in self.sizes.items():
            info = self.program.dims.get(name)
            if info is not None:
                subs[info.symbol] = v
        return sympy.sympify(expr).xreplace(subs)

    @property
    def inputs(self) -> list[tuple[str, TensorType]]:
        return [(n.name, n.out) for n in self.graph.inputs]

    @property
    def outputs(self) -> list[TensorType]:
        return [self.graph.type_of(p) for p in self.graph.outputs]

    @property
    def mixers(self):
        """Every MIX node, those inside function bodies (MoE experts, DEQ cells, recurrent
        steps) included."""
        return _mix_nodes(self.graph)


def _mix_nodes(graph: Graph) -> list:
    out = []
    for n in graph.nodes():
        if n.kind == OpKind.MIX:
            out.append(n)
        body = n.attr("body")
        if body is not None:
            out += _mix_nodes(body)
    return out


def analyze(source: str | Path | Program, entry: str | None = None, *, backward: bool = False,
            machine: str = "cpu", algorithms: dict[str, str] | None = None, decode: bool = False, **sizes):
    """The cost report of ``entry`` at ``sizes`` (SPEC §5): ``Report.to_dict()`` is the JSON
    of ``seqdsl analyze complexity --json``. ``algorithms`` forces a choice per mixer
    (layer path -> algorithm). ``decode=True`` adds the cost of generating one token after a
    context of N (per-token FLOPs and state bytes, ``Report.decode``; docs/decoding.md)."""
    from seqdsl.analysis import analyze_graph
    from seqdsl.analysis.select import resolve_forced

    checked = check(source, entry, **sizes)
    forced = resolve_forced(checked.graph, algorithms)
    report = analyze_graph(checked.graph, checked.entry, checked.sizes, backward=backward, machine=machine,
                           forced=forced)
    if decode:
        from seqdsl.analysis.decode import analyze_decode

        report.decode = analyze_decode(checked.graph, report)
    return report


BACKENDS = ("auto", "torch", "triton")


@dataclass
class Compiled:
    """What ``compile`` wrote and chose."""

    path: Path
    class_name: str
    choices: list
    source: str


def _lower(source, entry, backend: str, sizes: dict, algorithms: dict[str, str] | None = None,
           at_call: tuple[str, ...] = ()):
    from codegen.torch.emit import emit_module

    if backend not in BACKENDS:
        raise SeqError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    from seqdsl.analysis.select import resolve_forced

    checked = check(source, entry, **sizes)
    resolve_forced(checked.graph, algorithms)     # a positioned error before the code generator
    name = str(checked.program.file)
    # Sizes the user gave are fixed (but those of at_call); the others the inputs carry are read at each call.
    binding = dict(explicit=set(sizes) - set(at_call), concretized=checked.concretized,
                   constraints=checked.constraints)
    try:
        if backend == "triton":
            from codegen.triton.emit import emit_triton_module

            emitted = emit_triton_module(checked.graph, checked.entry, checked.sizes, name, algorithms=algorithms,
                                         **binding)
        else:
            emitted = emit_module(checked.graph, checked.entry, checked.sizes, name, algorithms=algorithms, **binding)
    except ValueError as err:
        if isinstance(err, SeqError):
            raise
        raise SeqError(str(err)) from None
    return checked, emitted


def compile(source: str | Path, out_dir: str | Path, backend: str = "auto", entry: str | None = None,
            *, algorithms: dict[str, str] | None = None, **dims) -> Compiled:
    """Write the generated module of ``entry`` to ``out_dir`` (what the CLI's ``compile``
    does) and return what was chosen for each mixer. ``backend``: torch, triton (generated
    Triton kernels for the mixers a kernel family supports) or auto (torch). ``algorithms``
    forces a mixer's algorithm by layer path, e.g. ``{"layers.0.attn.mix": "materialized"}``."""
    from codegen.torch.emit import _ident
    from codegen.torch.load import write_module

    checked, emitted = _lower(source, entry, backend, dims, algorithms)
    path = write_module(emitted.source, Path(out_dir), _ident(checked.entry))
    return Compiled(path, emitted.class_name, emitted.choices, emitted.source)


def load(source: str | Path, entry: str | None = None, backend: str = "auto", *,
         algorithms: dict[str, str] | None = None, torch_compile: bool = False, at_call: tuple[str, ...] = (),
         **dims):
    """An ``nn.Module`` for ``entry`` (default: the file's model). ``dims`` sets declared
    dims and options by name. Its forward takes the entry's inputs in declaration order;
    ``example_inputs(**sizes)`` makes random ones. ``algorithms`` forces a mixer's algorithm
    by layer path; ``torch_compile=True`` wraps the module's forward in ``torch.compile``
    (the first call then compiles, ~20 s on a CPU). ``backend="triton"`` runs generated
    Triton kernels (on a CPU only with TRITON_INTERPRET=1 set before import: slowly).
    ``at_call``: dims given in ``dims`` that the module still reads from its inputs at each
    call where it can (weights and position tables are built for the given value; a
    sequence-parallel rank holds part of N)."""
    from codegen.torch.emit import _ident
    from codegen.torch.load import load_source

    checked, emitted = _lower(source, entry, backend, dims, algorithms, at_call)
    module = load_source(emitted.source, _ident(checked.entry))
    model = getattr(module, emitted.class_name)()
    model.choices = emitted.choices
    model.source = emitted.source
    if torch_compile:
        import torch

        model.forward = torch.compile(model.forward)
    return model


def check_all(source: str | Path | Program, entry: str | None = None, **sizes) -> Checked:
    """Check the entry and, standalone, every other definition of the file (so that an
    error in a definition the entry does not use is still reported)."""
    prog = source if isinstance(source, Program) else parse(source)
    result = check(prog, entry, **sizes)
    for item in prog.main.items:
        if isinstance(item, A.Definition) and item.name != result.entry:
            elaborate(prog, item.name, sizes)
    return result


def check(source: str | Path | Program, entry: str | None = None, **sizes) -> Checked:
    """Parse, check shapes and build the layer graph of ``entry`` (default: the model).

    ``sizes`` sets dims and options by name (``N=4096``); the others keep their defaults.
    """
    prog = source if isinstance(source, Program) else parse(source)
    try:
        el: Elaborated = elaborate(prog, entry, sizes)
    except RecursionError:   # a safety net: the checker's limits should stop this first
        raise SeqError("the program is nested too deeply to check", Pos(prog.file, 0, 0)) from None
    verify(el.graph)
    graph = run_pipeline(el.graph)
    from seqdsl.analysis.params import nonzero_param_count, stored_param_count
    return Checked(prog, el.entry.name, el.entry.kind, graph, el.sizes, nonzero_param_count(graph), el.constraints,
                   el.concretized, stored_param_count(graph))


def train(source: str | Path, task: str, *, entry: str | None = None, task_options: dict | None = None,
          steps: int = 1000, batch: int = 32, lr: float = 1e-3, seed: int = 0, out: str | Path | None = None,
          progress: bool = False, **dims):
    """Train the model of ``source`` on ``task`` (docs/training.md) and return a
    ``seqdsl.training.TrainResult`` (history, final evaluation, parameters, FLOPs per token).
    ``dims`` sets sizes as in ``load``; other loop settings (``warmup``, ``weight_decay``,
    ``clip``, ``eval_every``, ``eval_batches``, ``resume``, ``nproc``, ``threads`` ...) are
    the fields of ``seqdsl.training.TrainConfig`` and may be passed by name too."""
    from dataclasses import fields

    from seqdsl.training import TrainConfig
    from seqdsl.training import train as run_training

    names = {f.name for f in fields(TrainConfig)}
    loop = {k: dims.pop(k) for k in list(dims) if k in names}
    config = TrainConfig(str(source), task, task_options=dict(task_options or {}), entry=entry, sizes=dims,
                         steps=steps, batch=batch, lr=lr, seed=seed, out=None if out is None else str(out),
                         progress=progress, **loop)
    return run_training(config)
