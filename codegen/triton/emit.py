"""Lower a checked layer graph to a Python module whose token mixers are generated Triton kernels.

The module is the PyTorch module of :mod:`codegen.torch.emit` (same layers, same weights,
same names) with one difference: each MIX node whose structure a Triton kernel family
supports calls a kernel generated for it, specialised to that structure, and written in
the same file above the model classes:

- softmax family  -> :mod:`codegen.softmax.triton_gen` (block-sparse online softmax; the mask's
  predicate and block schedule inlined);
- linear families -> :mod:`codegen.linear.triton_gen` (chunked / recurrent linear attention; the
  feature map, decay or gate and normaliser inlined);
- Toeplitz family -> :mod:`codegen.toeplitz.triton_gen` (SSM scans and chunked long convolutions,
  with the gates around the mix fused in: see :func:`codegen.fuse.toeplitz_gates`).

A node no family supports keeps its PyTorch call, and the reason is recorded in its
:class:`~codegen.torch.emit.Choice` (printed by ``seqdsl compile``): never silently.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

import sympy

from codegen import fuse
from codegen import masks as runtime_masks
from codegen.torch import emit as torch_emit
from codegen.torch import mixers as torch_mix
from seqdsl.ir import mix as M
from seqdsl.ir.graph import Graph, Node

HEADER = """
# ---- Triton kernels, one section per token-mixer structure -------------------------------
# Each section was generated for a mixer of the file (and serves every mixer of the same
# structure), with that structure (mask, score modification, feature map, decay, gates)
# written into the kernels as code.
import math

import triton
import triton.language as tl
"""

FAMILY_MODULES = {
    "softmax": "codegen.softmax.triton_gen",
    "linear": "codegen.linear.triton_gen",
    "toeplitz": "codegen.toeplitz.triton_gen",
}


def _generator(family: str):
    """The generator module of a kernel family, or the reason it cannot be used."""
    try:
        return importlib.import_module(FAMILY_MODULES[family]), None
    except ImportError as err:     # triton missing, or the family not built
        return None, f"the Triton generator of the {family} family is unavailable ({err})"


@dataclass
class Plan:
    """How one MIX node is lowered to Triton: the generator's arguments and the call."""

    family: str
    kwargs: dict
    call: str                       # the call, with {name} for the generated function
    note: str = ""


@dataclass
class Shared:
    """State shared by the writers of a model and of its bodies."""

    sections: list[str] = field(default_factory=list)
    names: set[str] = field(default_factory=set)
    kernels: dict[tuple, str] = field(default_factory=dict)   # structure -> its generated function
    no_step: list[str] = field(default_factory=list)          # kernels with gates folded in: no torch step


class TritonWriter(torch_emit._Writer):
    shared: Shared

    def preamble(self) -> str:
        return HEADER + "".join(self.shared.sections) if self.shared.sections else ""

    @property
    def no_step(self) -> str | None:
        """Why the module cannot decode: a kernel with gates folded in has no torch twin."""
        if not self.shared.no_step:
            return None
        return (f"the Triton kernels of {', '.join(self.shared.no_step[:3])} compute the gates around the mix; "
                "decoding runs the torch step of each mixer: load with backend='torch' (same weights)")

    def child(self, body: Graph, name: str) -> TritonWriter:
        sub = super().child(body, name)
        sub.shared = self.shared
        return sub

    # ---- folds: gates around Toeplitz mixes go into the kernel
    def plan_folds(self, own: set[int] | None = None) -> None:
        self.own = own
        uses = fuse.readers(self.g)
        for n in self.mix_nodes():
            if n.spec.family == "toeplitz" and self._plan(n, probe=True)[1] is None:
                taken = frozenset(self.dropped | {f.result for f in self.folds.values()})
                self.add_fold(n, fuse.toeplitz_gates(self.g, n, uses, taken))

    # ---- the token mixer
    def op_mix(self, n: Node) -> None:
        self.emit_hoisted(n)          # what the fold reads that the graph computes after the mixer
        choice = self.choose(n)
        plan, reason = self._plan(n)
        if plan is None:
            choice.note = f"PyTorch fallback: {reason}"
            return self.emit_torch_mix(n, choice)
        key = (plan.family, repr(sorted(plan.kwargs.items())))
        name = self.shared.kernels.get(key)
        if name is None:      # the first mixer of this structure: generate its kernels
            gen, _ = _generator(plan.family)
            name = self.shared.kernels[key] = self._kernel_name(n)
            self.shared.sections.append(_banner(n, plan) + gen.generate(name, **plan.kwargs).strip("\n") + "\n")
        step = self._torch_step(n, choice)        # decoding: the torch family call (no step kernels)
        choice.backend = "triton"
        choice.algorithm = f"triton:{plan.family}"
        choice.note = f"generated kernel {name}" + (f" ({plan.note})" if plan.note else "") + \
            ("; no decoding step (gates folded in)" if step is None else "; decoding: its torch step" +
             (" (on CUDA one fused Triton kernel per token: codegen/linear/step_kernel.py)"
              if plan.family == "linear" else ""))
        self.body.append(f"        # {n.spec.family} mixer: Triton kernel {name}" +
                         (f", {plan.note}" if plan.note else "") + ("" if step is None else "; decoding: the torch step"))
        self.emit(n, plan.call.replace("{name}", name, 1))
        if step is None:
            self.shared.no_step.append(n.name)
        else:        # prefill / step run the torch family runtime, which keeps the state (no step kernels)
            # (a decoding call never carries packed rows: the step is written as it is)
            line, note = self.body[-1].split("  # ", 1)
            self.body[-1] = f"{line} if not rt.decoding() else {step}  # {note}"
        fold = self.folds.get(n.id)
        if fold is not None and fold.result != n.id:
            self.var[(fold.result, 0)] = self.var[(n.id, 0)]

    def _torch_step(self, n: Node, choice) -> str | None:
        """The torch family call that prefill / step run for a kernel-backed mixer; gates folded
        into a Toeplitz kernel are written around it: post · (mix(v · pre) + v · pre · skip)."""
        fold = self.folds.get(n.id)
        if fold is None:
            return torch_mix.call(self, n, choice)
        if set(fold.args) - {"pre", "skip", "post"}:
            return None
        v = n.input("v")
        u = f"({self.ref(fold.v)} * {self.ref(fold.args['pre'])})" if "pre" in fold.args else self.ref(v)
        saved, dropped = self.var.get((v.node, v.index)), set(self.dropped)
        self.var[(v.node, v.index)], self.dropped = u, self.dropped - {v.node}    # the call reads v · pre
        try:
            y = torch_mix.call(self, n, choice)
        finally:
            self.dropped = dropped
            if saved is None:
                del self.var[(v.node, v.index)]
            else:
                self.var[(v.node, v.index)] = saved
        if "skip" in fold.args:
            y = f"({y} + {u} * {self.ref(fold.args['skip'])})"
        return f"{y} * {self.ref(fold.args['post'])}" if "post" in fold.args else y

    def _kernel_name(self, n: Node) -> str:
        words = [w for w in n.name.split(".") if not w.isdigit()]     # not the repeat indices
        base = "mix_" + torch_emit._ident("_".join(words[-2:])).lower()   # e.g. mix_h3_k_shift
        name, k = base, 1
        while name in self.shared.names:
            name, k = f"{base}_{k}", k + 1
        self.shared.names.add(name)
        return name

    def _plan(self, n: Node, probe: bool = False) -> tuple[Plan | None, str | None]:
        fam = n.spec.family
        family = {"softmax": "softmax", "content_sparse": "softmax", "synthetic": "softmax",
                  "linear": "linear", "decayed_linear": "linear", "toeplitz": "toeplitz"}.get(fam)
        if family is None:
            return None, f"no Triton kernel family for {fam} mixers"
        gen, reason = _generator(family)
        if gen is None:
            return None, reason
        try:
            return getattr(self, f"_plan_{family}")(n, gen, probe)
        except ValueError as err:     # a size unknown when generating, and the like
            return None, str(err)

    def _arg(self, n: Node, role: str) -> str:
        return self.ref(n.input(role))

    def _plan_softmax(self, n: Node, gen, probe: bool) -> tuple[Plan | None, str | None]:
        spec = n.spec
        if not isinstance(spec.score, M.Dot):
            return None, "given scores (a [.., N, N] tensor) are mixed by PyTorch"
        content = [leaf for leaf in M.mask_leaves(spec.mask) if isinstance(leaf, (M.Buckets, M.BlockMap))]
        if content:
            instead = ("sorts by bucket" if isinstance(content[0], M.Buckets) else "runs it on its tile grid")
            return None, (f"content-based mask ({content[0]}: computed from the data at run time), so no block "
                          f"schedule exists when compiling; the PyTorch tiled path {instead}")
        try:
            mask = runtime_masks.from_ir(spec.mask, self.sizes.values)
        except ValueError as err:
            return None, f"the mask needs run-time data ({err})"
        score = spec.score
        bias_kind = None if score.bias is None else score.bias.kind
        cap = None if score.cap is None else float(self.sizes.number(score.cap))
        reason = gen.unsupported(mask, bias_kind=bias_kind, cap=cap)
        if reason:
            return None, reason
        block = int(self.sizes.number(spec.hint("block") or 64))
        scale, q = self._runtime_scale(score.scale), self._arg(n, "q")
        if scale is not None:     # a scale of sizes read at call time (Dh ** -0.5): q is scaled first
            q = f"{q} * {scale}"
        kwargs = dict(mask=mask, scale=1.0 if scale is not None else float(self.sizes.number(score.scale)),
                      bias_kind=bias_kind, cap=cap, block_m=block, block_n=block)
        table = "None" if score.bias is None or score.bias.table is None else self._arg(n, score.bias.table.role)
        call = f"{{name}}({q}, {self._arg(n, 'k')}, {self._arg(n, 'v')}, {table})"
        return Plan("softmax", kwargs, call, f"mask {spec.mask}"), None

    def _runtime_scale(self, scale) -> str | None:
        """The source of a scale that depends on sizes read at call time (None: a number the
        kernel can hold as a constant)."""
        return None if self.sizes.subs(scale).is_number else self.sizes.scalar(scale)

    def _decay(self, n: Node) -> tuple[str | None, str | None, bool]:
        """(granularity for the generator, the call's decay argument, log?)."""
        decay = next((x for x in M.mask_leaves(n.spec.mask) if isinstance(x, M.Decay)), None)
        if decay is None:
            return None, None, False
        if not isinstance(decay.rate, M.Ref):
            return "scalar", repr(float(self.sizes.number(decay.rate))), decay.log
        rank_q = self.g.type_of(n.input("q")).rank
        t = self.g.type_of(n.input(decay.rate.role))
        arg = self._arg(n, decay.rate.role)
        if t.rank <= rank_q - 2:
            return "head", arg, decay.log
        if t.rank == rank_q - 1:
            return "token", arg, decay.log
        if sympy.sympify(t.shape[-1]) == 1:
            return "token", f"{arg}[..., 0]", decay.log
        return "channel", arg, decay.log

    def _plan_linear(self, n: Node, gen, probe: bool) -> tuple[Plan | None, str | None]:
        spec = n.spec
        feature = "identity" if spec.feature is None else spec.feature.kind
        causal = spec.causal
        kind, decay, log = self._decay(n)
        reason = gen.unsupported(feature=feature, norm=spec.norm, causal=causal, decay_kind=kind)
        if reason:
            return None, reason
        scale = spec.score.scale if isinstance(spec.score, M.Dot) else 1
        late = self._runtime_scale(scale) if spec.norm != "sum" else None   # the normaliser cancels it
        forced = spec.hint("algorithm")
        algorithm = "recurrent" if forced == "recurrent" else "chunked"
        kwargs = dict(feature=feature, norm=spec.norm, causal=causal, decay_kind=kind, log_decay=log,
                      scale=1.0 if late is not None or spec.norm == "sum" else float(self.sizes.number(scale)),
                      chunk=int(self.sizes.number(spec.hint("chunk") or 64)), algorithm=algorithm)
        args = [self._arg(n, "q"), self._arg(n, "k"), self._arg(n, "v")]
        if decay is not None:
            args.append(f"decay={decay}")
        if spec.feature is not None and spec.feature.projection is not None:
            args.append(f"projection={torch_mix.projection_source(spec.feature, lambda r: self._arg(n, r))}")
        note = f"{algorithm}, feature {feature}, norm {spec.norm}" + (f", {kind} decay" if kind else "")
        call = f"{{name}}({', '.join(args)})" + (f" * {late}" if late is not None else "")   # o = scale · φ(q) S
        return Plan("linear", kwargs, call, note), None

    def _plan_toeplitz(self, n: Node, gen, probe: bool) -> tuple[Plan | None, str | None]:
        t = next(x for x in M.mask_leaves(n.spec.mask) if isinstance(x, M.Toeplitz))
        k = t.kernel
        explicit = isinstance(k, M.ExplicitKernel)
        kind = None if explicit else k.kind
        disc = None if explicit else k.disc
        conj = True if explicit else k.conj
        mimo = False if explicit else k.mimo
        reason = gen.unsupported(kind=kind, disc=disc, conj=conj, mimo=mimo, causal=t.causal, explicit=explicit)
        if not explicit and k.a_real == "free":
            reason = ("DSS with a free Re Λ (a_real = free): a growing mode is bounded only in its normalised "
                      "kernel, which PyTorch's FFT convolution evaluates from the kernel's end; the Triton scan "
                      "carries the state")
        if reason or probe:       # probe: only whether the kernel family takes this structure
            return None, reason
        fold = self.folds.get(n.id)
        parts = fold.args if fold is not None else {}
        v = self.ref(fold.v) if fold is not None and fold.v is not None else self._arg(n, "v")
        args = [v]
        if explicit:
            args.append(f"explicit_kernel={self._arg(n, k.kernel.role)}")
        else:
            params = ", ".join(f"{name!r}: {self._arg(n, ref.role)}" for name, ref in k.params)
            args.append(f"params={{{params}}}")
            if k.reverse:
                rev = ", ".join(f"{name!r}: {self._arg(n, ref.role)}" for name, ref in k.reverse)
                args.append(f"reverse_params={{{rev}}}")
            if disc == "dss":
                length = self.g.type_of(n.input("v")).shape[-2]
                args.append(f"kernel_length={self.sizes.code(length)}")
            if not t.causal and t.diagonal != "once":
                args.append(f"diagonal={t.diagonal!r}")
        for role in ("pre", "skip", "post"):
            if role in parts:
                args.append(f"{role}={self.ref(parts[role])}")
        kwargs = dict(kind=kind, disc=disc, conj=conj, mimo=mimo, causal=t.causal, explicit=explicit,
                      chunk=int(self.sizes.number(n.spec.hint("chunk") or 64)),
                      pre="pre" in parts, skip="skip" in parts, post="post" in parts)
        fused = [r for r in ("pre", "skip", "post") if r in parts]
        note = f"{'explicit kernel' if explicit else f'{kind} SSM' + (' (MIMO)' if mimo else '')}" + (f", fused {'/'.join(fused)}" if fused else "")
        return Plan("toeplitz", kwargs, f"{{name}}({', '.join(args)})", note), None


def _banner(n: Node, plan: Plan) -> str:
    return f"\n\n# ==== generated for {n.name} (and every later mixer of the same structure) ====\n"


def emit_triton_module(graph: Graph, entry: str, sizes: dict, source_name: str, machine: str = "h100",
                       algorithms: dict[str, str] | None = None, **binding) -> torch_emit.Emitted:
    """The source of a module computing ``graph`` with generated Triton kernels for its mixers."""
    shared = Shared()

    class Writer(TritonWriter):
        def __init__(self, *args, **kw):
            super().__init__(*args, **kw)
            self.shared = shared

    return torch_emit.emit_module(graph, entry, sizes, source_name, machine, writer=Writer, algorithms=algorithms,
                                  backend="triton", **binding)

