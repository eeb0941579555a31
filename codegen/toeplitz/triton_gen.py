"""Triton generator of the Toeplitz family: diagonal SSM scans and shift-SSM short
convolutions, with the gates of H3 / GSS / Hyena fused around them.

``generate(name, ...)`` returns one section of a generated model file (the file's header
imports math, torch, triton, tl and ``codegen.masks as M``). The section defines:

- ``{name}_kernel`` — the specialised Triton kernel:
  * diagonal SSMs (S4D, DSS, DLR, Mega's EMA): one program per (channel, block of batch rows)
    walks the sequence in chunks of T tokens. Inside a chunk, the T×T Toeplitz block of the
    taps K[0:T] times the chunk's inputs (tl.dot); from the earlier chunks, the carried state
    h [modes × batch] decayed to each token, Re(c λ^{t+1} h) (tl.dot); then the state is
    advanced to the chunk's end, h ← λ^T h + Σ_s b λ^{T−1−s} u_s (tl.dot). O(N) memory, no
    FFT; the complex modes as separate real / imaginary parts (inlined only for complex
    systems; Mega's EMA is real).
  * shift SSMs (H3's short filter, S taps): a direct S-tap causal convolution, tokens × channels
    tiles, the initial shift register read for the first S − 1 tokens.
  * gates fused in the kernel: u = pre ⊙ v, y = post ⊙ (K ∗ u + skip ⊙ u).
- ``{name}_launch`` — one pass of the kernel (also the backward's anti-causal pass).
- ``{name}(v, params=None, reverse_params=None, explicit_kernel=None, *, pre=None, skip=None,
  post=None, initial_state=None, return_state=False, kernel_length=None)`` — discretises in
  PyTorch (``kernels.discretize``, O(C·state)), runs the kernel through
  ``triton_support.SSMMix`` (autograd), and, when ``causal=False``, adds the anti-causal pass
  of the reverse SSM (same kernel, tokens read backwards, its tap 0 removed through the skip).

- MIMO diagonal SSMs (S5: one diagonal state of M modes shared by the channels, B̄ [M, C_in],
  scale·C [C_out, M]), the SSD / chunked-scan form: one program per (block of modes, batch row)
  walks the chunks; per chunk x = u B̄ᵀ (tl.dot), the states inside the chunk by a parallel scan
  over its T tokens (tl.associative_scan of h ← λ h + x, complex as re / im) plus the carried
  state decayed to each token, y = Re(h Cᵀ) (tl.dot); ``{name}_launch`` sums the blocks of
  modes. Backward (``triton_support.MIMOMix``): the input gradient is the adjoint system (the
  same λ, B̄ and Cᵀ swapped) run backwards; the parameter gradients are contractions of the
  forward and adjoint states the two passes store (PyTorch, then autograd of the
  discretisation).

- explicit kernels (taps K [L, C] given, L ≤ N: Hyena's long convolutions): one program per
  (channel, block of batch rows, output chunk I of T tokens) sums, over the input chunks J ≤ I
  within reach of the L taps, the T×T Toeplitz block K[(I − J)·T + t − s] (a gather load,
  masked where the lag is < 0 or ≥ L) times the chunk's inputs (tl.dot, batch rows the other
  dimension); gates fused as above. Backward through ``triton_support.SSMMix``: the input
  gradient is the same kernel reading backwards (the anti-causal correlation with the same
  taps), the taps' gradient dK[l] = Σ_i dz_i u_(i−l) by FFT correlation in PyTorch
  (``lag_correlation``). A mirrored kernel (causal=False, M_ij = K[|i − j|]) adds the backward
  read with tap 0 taken out. See ``EXPLICIT_COST`` for what this costs against the FFT.

- DPLR SSMs (S4: Ā = Λ − PP* discretised, dense S×S per channel): the diagonal kernel's chunked
  algorithm with matrices in place of the powers of λ. The launcher tabulates per channel (PyTorch,
  O(C·S²·log T), ``triton_support.dense_tables``) W[t] = scale·C Ā^(t+1) (state → output),
  X[:, s] = Ā^(T−1−s) B̄ (input → state) and Ā^T; per chunk the kernel adds Re(W h) to the
  Toeplitz block's output and advances h ← Ā^T h + X u (complex products as real tl.dots).
  Backward as for the diagonal kernel (``SSMMix``; the taps' gradient reaches Λ, P, B through
  PyTorch autograd of the discretisation and the kernel's generation).
"""

from __future__ import annotations

from string import Template

from codegen.toeplitz.triton_templates import (
    _DENSE_KERNEL,
    _DENSE_LAUNCH,
    _DIAG_KERNEL,
    _DIAG_LAUNCH,
    _SHIFT_KERNEL,
    _SHIFT_LAUNCH,
    _WRAPPER,
    PIECES,
)
from codegen.toeplitz.triton_templates_mimo_explicit import (
    _EXPLICIT_KERNEL,
    _EXPLICIT_LAUNCH,
    _EXPLICIT_WRAPPER,
    _MIMO_KERNEL,
    _MIMO_LAUNCH,
    _MIMO_WRAPPER,
)

KINDS = ("diag", "ema", "shift", "dplr")

#: the explicit-kernel path's trade-off (also written as a comment into the generated section)
EXPLICIT_COST = ("explicit kernels run as a chunked block-Toeplitz Triton kernel: O(N·L) work per channel "
                 "(T×T tl.dot blocks) against the O(N log N) of PyTorch's FFT convolution; no padded "
                 "O(N) transforms in memory and the gates fused")


def unsupported(*, kind: str | None, disc: str | None, conj: bool, mimo: bool, causal: bool,
                explicit: bool) -> str | None:
    """None when the Triton generator handles this Toeplitz mixer, else a one-line reason."""
    if explicit:
        if mimo:
            return "an explicit kernel is one filter per channel ([L, C]); MIMO applies to diagonal SSMs (S5)"
        return None          # chunked block-Toeplitz kernel: O(N·L) work (see EXPLICIT_COST)
    if kind is None:
        return "a Toeplitz mixer needs an SSM kind or an explicit kernel"
    if mimo and kind != "diag":
        return f"ssm({kind}) has no MIMO form; mimo applies to diagonal SSMs (S5)"
    if kind not in KINDS:
        return f"unknown SSM kind {kind!r}"
    if kind == "diag" and disc not in ("zoh", "bilinear", "dss", "none"):
        return f"unknown discretisation {disc!r}"
    if kind == "dplr" and disc not in ("zoh", "bilinear", "none"):
        return f"discretisation {disc!r} does not apply to a DPLR SSM (zoh, bilinear or none)"
    return None


def generate(name: str, *, kind: str | None, disc: str | None, conj: bool, mimo: bool, causal: bool,
             explicit: bool, chunk: int = 64, pre: bool = False, skip: bool = False,
             post: bool = False) -> str:
    """The section text for one Toeplitz mixer (see the module docstring)."""
    why = unsupported(kind=kind, disc=disc, conj=conj, mimo=mimo, causal=causal, explicit=explicit)
    if why is not None:
        raise ValueError(f"the Triton backend cannot generate this Toeplitz mixer: {why}")
    if not name.isidentifier():
        raise ValueError(f"section name {name!r} is not an identifier")
    T = 16
    while T * 2 <= min(int(chunk), 128):   # tl.arange / tl.dot: a power of two in [16, 128]
        T *= 2
    fields = {
        "name": name,
        "kind": repr(str(kind)),
        "disc": repr(None if disc is None else str(disc)),
        "conj": repr(bool(conj)),
        "causal": repr(bool(causal)),
        "chunk": repr(T),
        "gates": repr((bool(pre), bool(skip), bool(post))),
        "what": _describe("explicit" if explicit else kind, disc, conj, causal, pre, skip, post),
    }
    fields.update({k: Template(piece).substitute(fields) for k, piece in PIECES.items()})
    if explicit:
        text = "".join(Template(p).substitute(fields) for p in (_EXPLICIT_KERNEL, _EXPLICIT_LAUNCH, _EXPLICIT_WRAPPER))
        return _select(text, complex_modes=False, shift=True, bidirectional=not causal, dense=False)
    if mimo:
        fields["what"] = _describe("mimo", disc, conj, causal, pre, skip, post)
        text = "".join(Template(p).substitute(fields) for p in (_MIMO_KERNEL, _MIMO_LAUNCH, _MIMO_WRAPPER))
        return _select(text, complex_modes=True, shift=False, bidirectional=not causal, dense=False)
    if kind == "shift":
        parts = [_SHIFT_KERNEL, _SHIFT_LAUNCH, _WRAPPER]
    elif kind == "dplr":
        parts = [_DENSE_KERNEL, _DENSE_LAUNCH, _WRAPPER]
    else:
        parts = [_DIAG_KERNEL, _DIAG_LAUNCH, _WRAPPER]
    text = "".join(Template(p).substitute(fields) for p in parts)
    return _select(text, complex_modes=kind in ("diag", "dplr"), shift=kind == "shift", bidirectional=not causal,
                   dense=kind == "dplr")


def _describe(kind, disc, conj, causal, pre, skip, post) -> str:
    what = {"diag": f"diagonal SSM (disc={disc}, conj={bool(conj)})", "ema": "Mega's EMA (real diagonal SSM)",
            "dplr": f"DPLR SSM (S4: dense Ā = Λ − PP* discretised; disc={disc}, conj={bool(conj)})",
            "shift": "shift SSM (short causal filter)",
            "mimo": f"MIMO diagonal SSM (S5; disc={disc}, conj={bool(conj)})",
            "explicit": "an explicit kernel (given taps, Hyena's long convolution)" + ("" if causal else ", mirrored")}[kind]
    gates = [g for g, on in (("pre", pre), ("skip", skip), ("post", post)) if on]
    return f"{what}, {'causal' if causal else 'bidirectional'}, gates: {', '.join(gates) or 'none'}"


def _select(text: str, *, complex_modes: bool, shift: bool, bidirectional: bool, dense: bool) -> str:
    """Keep the lines tagged for this structure: ``# [complex]`` / ``# [real]`` (a diagonal SSM's
    modes complex or real), ``# [modes]`` / ``# [shift]`` (an SSM with states or a shift SSM),
    ``# [diagonal]`` / ``# [dense]`` (a diagonal or dense state), ``# [bidir]`` / ``# [causal]``;
    the tag itself is removed."""
    keep = {"[complex]": complex_modes, "[real]": not complex_modes and not shift, "[modes]": not shift,
            "[diagonal]": not shift and not dense, "[dense]": dense,
            "[shift]": shift, "[bidir]": bidirectional, "[causal]": not bidirectional}
    out = []
    for line in text.splitlines():
        tag = next((t for t in keep if line.rstrip().endswith("# " + t)), None)
        if tag is None:
            out.append(line)
        elif keep[tag]:
            out.append(line.rstrip()[: -len(tag) - 2].rstrip())
    return "\n".join(out) + "\n"


