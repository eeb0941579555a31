"""A model file meets a task: check that its layout fits, build the module, and read from
the IR what the loop needs (weight-decay groups, whether there are auxiliary losses, FLOPs).

Fitting reads only the checked graph: the entry must have one input, ``int[B, N]`` for a
token task or ``[B, N, C]`` for a float one, and one output, ``[B, N, V]`` (lm) or
``[B, Classes]`` (classify). The input's length dim is set to the task's length unless
the user set it. A mismatch is a SeqError that names the dim and the ``--set`` that fixes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import sympy
import torch

from seqdsl.errors import SeqError
from seqdsl.ir.graph import Graph, OpKind
from seqdsl.training.tasks.base import Layout

# MIX inputs that carry an SSM's step Δ or state matrix A, or a decay (as in the SSM papers,
# these get no weight decay): a decay mask's log-rate, and the ssm() kernel tensors for Δ/A
# (log_dt, log_A_real, A_imag) and the EMA's damping (alpha, delta).
DYNAMICS_ROLES = ("decay", "kernel.log_dt", "kernel.log_A_real", "kernel.A_imag", "kernel.alpha", "kernel.delta")
# Ops a parameter may pass through and still count as the dynamics (elementwise, reshapes).
PASS_THROUGH = (OpKind.UNARY, OpKind.BINARY, OpKind.REARRANGE, OpKind.SLICE, OpKind.GET, OpKind.CONCAT)


@dataclass
class Fitted:
    model: torch.nn.Module
    checked: object
    sizes: dict
    no_decay: dict[str, str]         # parameter name -> why it gets no weight decay
    has_aux: bool                    # layers that leave auxiliary losses (MoE, Jacobian reg.)
    params: int
    flops_per_token: float | None    # forward, at the task's length
    train_flops_per_step: float | None


def _mismatch(file, what: str, dim, have, want, hint_dim=None) -> SeqError:
    name = hint_dim if hint_dim is not None else (str(dim) if isinstance(dim, sympy.Symbol) else None)
    hint = f"--set {name}={want}" if name else "change the model's sizes"
    return SeqError(f"{file}: {what}: the model has {dim} = {have}, the task needs {want} (use {hint})")


def check_layout(file, checked, layout: Layout, task: str) -> None:
    """Refuse a model whose inputs or outputs do not fit ``layout``, naming the mismatch."""
    ins, outs = checked.inputs, checked.outputs
    where = f"task {task} ({layout.describe()})"
    if len(ins) != 1 or len(outs) != 1:
        raise SeqError(f"{file}: the {where} needs a model of one input and one output; "
                       f"{checked.entry} has {len(ins)} input(s) and {len(outs)} output(s)")
    name, t = ins[0]
    want_rank = 2 if layout.inputs == "int" else 3
    if (t.dtype == "int") != (layout.inputs == "int") or t.rank != want_rank:
        raise SeqError(f"{file}: the {where} feeds {'int[B, N]' if layout.inputs == 'int' else '[B, N, C]'}; "
                       f"the model's input {name} is {t}")
    n = checked.value(t.shape[1])
    if n != layout.length:
        raise _mismatch(file, f"input {name} length", t.shape[1], n, layout.length)
    if layout.inputs == "float":
        c = checked.value(t.shape[2])
        if c != layout.channels:
            raise _mismatch(file, f"input {name} channels", t.shape[2], c, layout.channels)
    o = outs[0]
    if layout.kind == "lm":
        if o.rank != 3 or checked.value(o.shape[1]) != layout.length:
            raise SeqError(f"{file}: the {where} needs logits [B, N, V] per position; the model returns {o}"
                           " (a classifier? use a classification task)")
        v = checked.value(o.shape[2])
        if v != layout.outputs:
            raise _mismatch(file, "output vocabulary", o.shape[2], v, layout.outputs)
    else:
        if o.rank != 2:
            raise SeqError(f"{file}: the {where} needs class logits [B, Classes]; the model returns {o}"
                           " (a language model? use an lm task)")
        c = checked.value(o.shape[1])
        if c != layout.outputs:
            raise _mismatch(file, "number of classes", o.shape[1], c, layout.outputs)
    if layout.inputs == "int":
        for node in checked.graph.nodes(OpKind.EMBED):
            src = node.input("tokens")
            if src is not None and checked.graph.node(src.node).kind == OpKind.INPUT:
                table = checked.graph.type_of(node.input("table")) if node.input("table") else node.out
                rows = checked.value(table.shape[0])
                if rows.is_number and int(rows) < layout.vocab:
                    raise _mismatch(file, f"embedding {node.name} rows", table.shape[0], rows, layout.vocab)


def dynamics_params(graph: Graph) -> dict[str, str]:
    """Parameters that reach a mixer's decay / SSM Δ, A through elementwise ops only."""
    out: dict[str, str] = {}
    for mix in graph.nodes(OpKind.MIX):
        for port in mix.inputs:
            if port.role not in DYNAMICS_ROLES:
                continue
            stack, seen = [port.node], set()
            while stack:
                node = graph.node(stack.pop())
                if node.id in seen:
                    continue
                seen.add(node.id)
                if node.kind == OpKind.PARAM:
                    out[node.name] = f"{port.role} of mixer {mix.name}"
                elif node.kind in PASS_THROUGH:
                    stack += [p.node for p in node.inputs]
    return out


def decay_rule(model: torch.nn.Module, graph: Graph) -> dict[str, str]:
    """Parameters without weight decay, and why: every tensor of fewer than two dims (norm
    scales, biases, per-channel gains and skips), every weight of a norm layer, and the
    decay/Δ/A parameters of mixers (``dynamics_params``)."""
    why = dynamics_params(graph)
    for node in graph.nodes(OpKind.NORM):
        for p in node.inputs:
            src = graph.node(p.node)
            if src.kind == OpKind.PARAM:
                why.setdefault(src.name, f"weight of norm {node.name}")
    out = {}
    for name, p in model.named_parameters():
        if name in why:
            out[name] = why[name]
        elif p.dim() < 2:
            out[name] = "fewer than two dims (bias, scale, gain)"
    return out


def _flops(checked, bname: str | None, batch: int, length: int) -> tuple[float | None, float | None]:
    """Forward FLOPs per token and training (forward + backward) FLOPs per step, from the
    analysis of the graph already checked (no second check)."""
    from seqdsl.analysis import analyze_graph

    try:
        def total(b: int, backward: bool) -> float:
            sizes = dict(checked.sizes, **({bname: b} if bname else {}))
            report = analyze_graph(checked.graph, checked.entry, sizes, backward=backward)
            return float(report.to_dict()["total"]["values"]["flops"])

        return total(1, False) / length, total(batch, True)
    except (SeqError, KeyError, TypeError, ValueError):   # a dim the analysis cannot bind: no FLOPs axis
        return None, None


_CACHE: dict[tuple, tuple] = {}   # one process's checked and generated models (a resumed or compared run reuses them)


def fit(file: str | Path, layout: Layout, task: str, *, entry: str | None = None, sizes: dict | None = None,
        seed: int = 0, batch: int = 1, split_sequence: bool = False) -> Fitted:
    """Check ``file`` against ``layout`` and build its module with weights from ``seed``
    (a fresh module each call; the checking and code generation are cached per process,
    keyed by the file's path and modification time, the entry, sizes, layout and batch).
    ``split_sequence``: a module that reads the input's length at each call (each rank of a
    sequence-parallel run holds a part of the sequence), with the same weights and tables."""
    key = _built(file, layout, task, entry, sizes, batch, split_sequence)
    cls, choices, source, checked, sizes, flops, train_flops = _CACHE[key]
    model = cls(seed=seed)
    model.choices, model.source = choices, source
    params = sum(p.numel() for p in model.parameters())
    has_aux = any(n.kind == OpKind.MOE or n.kind == OpKind.FIXED_POINT and n.attr("jac_loss", 0)
                  for n in _all_nodes(checked.graph))
    return Fitted(model, checked, sizes, decay_rule(model, checked.graph), has_aux, params, flops, train_flops)


def _built(file, layout: Layout, task: str, entry: str | None, sizes: dict | None, batch: int,
           split_sequence: bool) -> tuple:
    """The cache key of the checked and generated model, built if needed."""
    path = Path(file)
    key = (str(path.resolve()), path.stat().st_mtime_ns if path.is_file() else 0, entry,
           tuple(sorted((k, str(v)) for k, v in (sizes or {}).items())), layout, batch, split_sequence)
    if key not in _CACHE:
        if len(_CACHE) >= 8:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = _build(file, layout, task, entry, dict(sizes or {}), batch, split_sequence)
    return key


def export(file: str | Path, layout: Layout, task: str, *, entry: str | None = None, sizes: dict | None = None,
           batch: int = 1, split_sequence: bool = False) -> dict:
    """What ``fit`` builds, in a picklable form that :func:`adopt` installs in another process
    (the ranks of a run get the parent's checked graph and generated source instead of
    checking and generating it once each)."""
    key = _built(file, layout, task, entry, sizes, batch, split_sequence)
    cls, *rest = _CACHE[key]
    return {"key": key, "class": cls.__name__, "entry": rest[2].entry, "rest": rest}


def adopt(built: dict) -> None:
    """Install an :func:`export`ed model in this process's cache (the generated source is
    imported through the module cache, verified byte for byte)."""
    from codegen.torch.emit import _ident
    from codegen.torch.load import load_source

    source = built["rest"][1]
    cls = getattr(load_source(source, _ident(built["entry"])), built["class"])
    _CACHE[built["key"]] = (cls, *built["rest"])


def _build(file, layout: Layout, task: str, entry: str | None, sizes: dict, batch: int, split_sequence: bool) -> tuple:
    from seqdsl import api

    checked = api.check(file, entry, **sizes)
    ins = checked.inputs
    if ins and ins[0][1].rank >= 2:
        length = ins[0][1].shape[1]
        if isinstance(length, sympy.Symbol) and length.name not in sizes and length.name in checked.program.dims:
            sizes[length.name] = layout.length
            checked = api.check(file, entry, **sizes)
    check_layout(file, checked, layout, task)
    # split_sequence: the input's length read at each call (a rank holds part of it), the weights
    # and position tables built for the task's length as in one process. Where the structure or
    # a weight fixes it, the module refuses the split at its first call, by name.
    length = ins[0][1].shape[1] if ins and ins[0][1].rank >= 2 else None
    at_call = (length.name,) if split_sequence and isinstance(length, sympy.Symbol) else ()
    first = api.load(file, entry, at_call=at_call, **sizes)
    bdim = ins[0][1].shape[0] if ins and ins[0][1].rank else None
    bname = bdim.name if isinstance(bdim, sympy.Symbol) and bdim.name not in sizes else None
    flops, train_flops = _flops(checked, bname, batch, layout.length)
    return type(first), first.choices, first.source, checked, sizes, flops, train_flops




def _all_nodes(graph: Graph) -> list:
    out = []
    for n in graph.nodes():
        out.append(n)
        if n.attr("body") is not None:
            out += _all_nodes(n.attr("body"))
    return out
