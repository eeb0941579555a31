"""Generated Triton kernels for the LINEAR / KERNEL and DECAYED / GATED families (SPEC §1).

``generate(name, ...)`` returns the text of one section of a generated model file (the
emitter pastes it below the common header: math, torch, triton, tl, ``M``). The section
computes exactly ``codegen.linear.torch_impl.linear_attention`` for one structure,

    S_t = a_t ⊙ S_{t−1} + φ(k_t)ᵀ v_t,   o_t = scale · φ(q_t) S_t

with everything known at generation time written into the kernels as code: the feature map
φ and its derivative, the kind of decay (none, one rate per head, per token, per key
channel), the scale. Kernels (``P`` the section's name):

* ``P_fwd_kernel`` / ``P_bwd_kernel`` — chunked: per (value block, batch·head) program, a
  loop over chunks of C tokens; inside a chunk the C×C decayed scores (every decay exponent
  G_i − G_j ≤ 0, formed only where j ≤ i, so nothing overflows), between chunks the state
  S [F, BV] in registers. The backward recomputes: pass 1 forward for ∂φ(q), pass 2 backward
  carrying ∂S for ∂φ(k), ∂v and ∂S_0.
* ``P_scan_fwd_kernel`` / ``P_scan_bwd_kernel`` — the recurrence one token at a time, the
  state in registers: ``algorithm="recurrent"`` (decoding), and the chunked algorithm's
  choice at run time for tiny value widths (Mamba's selective scan: V = 1, F = 16).
* non-causal: ``P_global_fwd_kernel`` / ``P_global_bwd_kernel`` (o = scale·φ(Q)(S_0 + φ(K)ᵀV)).

The gate gradient uses the identity of gated linear attention: with G_t = Σ_{s≤t} log a_s,
q_t meets the gate as φ(q_t)e^{G_t} and k_t as φ(k_t)e^{−G_t}, so
∂L/∂G_t = φ(q_t)⊙∂φ(q_t) − φ(k_t)⊙∂φ(k_t) (+ S_N⊙∂S_N at t = N), and ∂L/∂log a_t is its
reversed cumulative sum. The kernels write the two terms; PyTorch sums them.

favor / spectral features need the projection: they are applied in PyTorch before the kernels
(``codegen.linear.features.feature_map``), which then see identity features.
"""

from __future__ import annotations

from string import Template

from codegen.linear import triton_support as lx
from codegen.linear.triton_templates import (
    _CHUNK_BWD,
    _CHUNK_FWD,
    _ENTRY,
    _FUNCTION,
    _GLOBAL_BWD,
    _GLOBAL_FUNCTION,
    _GLOBAL_FWD,
    _SCAN_BWD,
    _SCAN_FWD,
    PROGRAM,
)

#: φ(x) and φ'(x) as Triton expressions of a raw block ``{x}`` (None: φ' = 1)
_PHI = {
    "identity": ("{x}", None),
    "elu1": ("tl.where({x} > 0, {x} + 1.0, tl.exp(tl.minimum({x}, 0.0)))",
             "tl.where({x} > 0, 1.0, tl.exp(tl.minimum({x}, 0.0)))"),
    "relu": ("tl.maximum({x}, 0.0)", "tl.where({x} > 0, 1.0, 0.0)"),
    "exp": ("tl.exp({x})", "tl.exp({x})"),
}
#: φ(0) ≠ 0: padded rows/features must be zeroed after φ
_PHI_NONZERO_AT_0 = ("elu1", "exp")
#: feature maps that need the projection: applied in PyTorch, identity in the kernels
_PHI_TORCH = ("favor", "spectral", "spectral_pm")
FEATURES = (*_PHI, *_PHI_TORCH)


def _phi_torch(feature: str) -> bool:
    """φ applied in PyTorch before the kernels: favor, spectral[_pm] and spectral[_pm]+s (the
    smoothed map, codegen.linear.features.spectral_smoothing)."""
    return feature in _PHI_TORCH or (feature.startswith("spectral") and "+" in feature)
NORMS = ("none", "sum")
DECAY_KINDS = (None, "scalar", "head", "token", "channel")
ALGORITHMS = ("chunked", "recurrent", "quadratic")
_IEEE = 'input_precision="ieee"'           # exact fp32 products (tf32 would miss 1e-4)


def unsupported(*, feature: str, norm: str, causal: bool, decay_kind: str | None) -> str | None:
    """None when ``generate`` supports the structure, else a one-line reason."""
    if feature not in FEATURES and not _phi_torch(feature):
        return f"feature map {feature!r} has no Triton form (supported: {', '.join(FEATURES)})"
    if norm not in NORMS:
        return f"normalisation {norm!r} is not a linear-attention norm (none, sum)"
    if decay_kind not in DECAY_KINDS:
        return f"unknown decay kind {decay_kind!r}"
    if decay_kind is not None and not causal:
        return "a decay needs causal=True (L_ij = Π a_t is only defined for j ≤ i)"
    return None


def generate(name: str, *, feature: str, norm: str, causal: bool, decay_kind: str | None,
             log_decay: bool, scale: float, chunk: int = 64, algorithm: str = "chunked") -> str:
    """The section text: kernels, an autograd Function and the entry
    ``{name}(q, k, v, decay=None, projection=None, initial_state=None, return_state=False)``.
    ``algorithm="quadratic"`` is served by the chunked kernels (same M, one chunk at a time)."""
    reason = unsupported(feature=feature, norm=norm, causal=causal, decay_kind=decay_kind)
    if reason is not None:
        raise ValueError(reason)
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {algorithm!r}; expected one of {', '.join(ALGORITHMS)}")
    if not name.isidentifier():
        raise ValueError(f"section name {name!r} is not an identifier")
    kind = "head" if decay_kind == "scalar" else decay_kind
    phi = "identity" if _phi_torch(feature) else feature
    scale = 1.0 if norm == "sum" else float(scale)      # the normaliser cancels the scale
    g = _Gen(name, kind, phi, scale, with_chunked=algorithm != "recurrent")
    c = lx.chunk_size(int(chunk))
    if kind == "channel":
        c = 16      # the [C, C, F] decays of a per-channel gate: registers bound the chunk
    parts = [_header(name, feature, norm, causal, decay_kind, log_decay, scale, c, algorithm)]
    if causal:
        if algorithm != "recurrent":
            parts += [g.chunk_fwd(), g.chunk_bwd()]
        parts += [g.scan_fwd(), g.scan_bwd(), g.function()]
    else:
        parts += [g.global_fwd(), g.global_bwd(), g.global_function()]
    parts.append(_entry(name, feature, norm, causal, decay_kind, log_decay, algorithm))
    return "\n\n".join(p.strip("\n") + "\n" for p in parts)


# ---- small text helpers ----------------------------------------------------------------


def _ind(text: str, n: int) -> str:
    """Indent every non-empty line by n spaces; drop a fragment that is empty."""
    return "\n".join((" " * n + line) if line.strip() else "" for line in text.strip("\n").splitlines())


def _fill(template: str, **slots: str) -> str:
    text = Template(template).substitute(PROGRAM=PROGRAM, **slots)
    return "\n".join(line for line in text.splitlines() if line.strip() != "<drop>")


def _header(name, feature, norm, causal, decay_kind, log_decay, scale, c, algorithm) -> str:
    decay = "no decay" if decay_kind is None else f"decay per {decay_kind}" + (" (log-space)" if log_decay else "")
    torch_phi = ("\n# φ = " + feature + " needs the projection: applied in PyTorch before the kernels, which "
                 "see identity features") if _phi_torch(feature) else ""
    return f'''
# ==== {name}: linear attention — φ = {feature}, norm = {norm}, {"causal" if causal else "non-causal"}, {decay},
#      scale {scale!r}, algorithm {algorithm}, chunk {c} ====
#   S_t = a_t ⊙ S_(t−1) + φ(k_t)ᵀ v_t,   o_t = scale · φ(q_t) S_t{torch_phi}
from codegen.linear import triton_support as lx
from codegen.triton import tuning as tt

{name}_CHUNK = {int(c)}          # tokens per chunk of the chunked kernels
{name}_BLOCK_V = 64       # the most values one program holds (larger Dv: several programs)
'''


class _Gen:
    """Builds the kernels' text for one structure. ``kind``: None | head | token | channel."""

    def __init__(self, name: str, kind: str | None, phi: str, scale: float, with_chunked: bool = True):
        self.p, self.kind, self.phi, self.scale = name, kind, phi, scale
        self.with_chunked = with_chunked        # False: algorithm='recurrent' (the scan kernels only)

    # -- fragments shared by the kernels --

    def g_arg(self) -> str:
        return "" if self.kind is None else "g, "

    def load_feat(self, var: str, ptr: str, mask: str, raw: bool) -> str:
        """b_<var> = φ(load); with ``raw`` the raw block stays as b_<var>r (for φ')."""
        if self.phi == "identity":
            return f"b_{var} = tl.load({ptr}, mask={mask}, other=0.0)"
        expr = _PHI[self.phi][0].format(x=f"b_{var}r")
        if self.phi in _PHI_NONZERO_AT_0:
            expr = f"tl.where({mask}, {expr}, 0.0)"
        return f"b_{var}r = tl.load({ptr}, mask={mask}, other=0.0)\nb_{var} = {expr}"

    def dphi(self, grad: str, raw: str) -> str:
        d = _PHI[self.phi][1]
        return grad if d is None else f"{grad} * {d.format(x=raw)}"

    def gate_base(self) -> str:
        """Per-program gate setup (before the loop over time)."""
        return {None: "",
                "head": "b_lam = tl.load(g + i_bh)                            # this head's log-decay λ",
                "token": "g = g + i_bh * N",
                "channel": "g = g + i_bh * N * F"}[self.kind]

    def chunk_gates(self) -> str:
        """b_G: the cumulative log-gate inside the chunk (inclusive); b_Gl: the whole chunk's."""
        if self.kind is None:
            return ""
        if self.kind == "head":
            return ("# cumulative log-decay inside the chunk, G_i = λ·(i+1), and over the chunk's valid tokens\n"
                    "b_G = tl.minimum(o_c + 1, N - i_t * C).to(tl.float32) * b_lam\n"
                    "b_Gl = tl.minimum(N - i_t * C, C).to(tl.float32) * b_lam")
        ptr, mask = ("g + o_t", "m_t") if self.kind == "token" else ("g + o_t[:, None] * F + o_k[None, :]", "m_tk")
        return (f"# log-gates of the chunk (0 past N), G_i = their inclusive cumulative sum, G_last = the chunk's\n"
                f"b_g = tl.load({ptr}, mask={mask}, other=0.0)\n"
                "b_G = tl.cumsum(b_g, axis=0)\n"
                "b_Gl = tl.sum(b_g, axis=0)")

    def decay_mask(self) -> str:
        if self.kind is None:
            return ""
        if self.kind == "channel":
            return ("# decays D_ijf = e^(G_if − G_jf) per key feature, only where j ≤ i: [C, C, BK], every\n"
                    "# exponent ≤ 0 for rates ≤ 1 (no e^G · e^−G factorisation, which overflows on long chunks)\n"
                    'b_D = tl.exp(tl.where(m_causal[:, :, None], b_G[:, None, :] - b_G[None, :, :], float("-inf")))')
        return ("# decay mask D_ij = e^(G_i − G_j) for j ≤ i, 0 above the diagonal\n"
                'b_D = tl.exp(tl.where(m_causal, b_G[:, None] - b_G[None, :], float("-inf")))')

    def scores(self) -> str:
        """b_A [C, C]: the decayed scores φ(q_i)·φ(k_j), j ≤ i."""
        if self.kind is None:
            return f"b_A = tl.where(m_causal, tl.dot(b_q, tl.trans(b_k), {_IEEE}), 0.0)    # φ(q_i)·φ(k_j), j ≤ i"
        if self.kind == "channel":
            return "b_A = tl.sum(b_q[:, None, :] * b_k[None, :, :] * b_D, axis=2)             # Σ_f q_if k_jf D_ijf"
        return f"b_A = tl.dot(b_q, tl.trans(b_k), {_IEEE}) * b_D"

    def q_in(self) -> str:
        """φ(q) seen from the state entering the chunk: φ(q_i) ⊙ e^(G_i)."""
        return {None: "b_q", "channel": "b_q * tl.exp(b_G)"}.get(self.kind, "b_q * tl.exp(b_G)[:, None]")

    def k_out(self) -> str:
        """φ(k) seen from the state leaving the chunk: φ(k_j) ⊙ e^(G_last − G_j)."""
        return {None: "b_k", "channel": "b_k * tl.exp(b_Gl[None, :] - b_G)"}.get(
            self.kind, "b_k * tl.exp(b_Gl - b_G)[:, None]")

    def carry(self, s: str) -> str:
        """e^(G_last) ⊙ state."""
        return {None: s, "channel": f"{s} * tl.exp(b_Gl)[:, None]"}.get(self.kind, f"{s} * tl.exp(b_Gl)")

    def scale_line(self, var: str) -> str:
        return "<drop>" if self.scale == 1.0 else f"{var} = {var} * {self.scale!r}"

    def slots(self) -> dict[str, str]:
        return {"P": self.p, "G": self.g_arg(), "GATE_BASE": _ind(self.gate_base(), 4) or "<drop>"}

    # -- the chunked kernels --

    def chunk_fwd(self) -> str:
        loads = "\n".join([
            "# φ(q), φ(k) [C, BK] and v [C, BV] of this chunk (rows past N and features past F are 0)",
            self.load_feat("q", "q + o_t[:, None] * F + o_k[None, :]", "m_tk", raw=False),
            self.load_feat("k", "k + o_t[:, None] * F + o_k[None, :]", "m_tk", raw=False),
            "b_v = tl.load(v + o_t[:, None] * V + o_v[None, :], mask=m_tv, other=0.0)"])
        body = "\n".join(x for x in [loads, self.chunk_gates(), self.decay_mask(), self.scores()] if x)
        state_doc = "S + φ(k)ᵀ v" if self.kind is None else "e^(G_last) ⊙ S + (φ(k) ⊙ e^(G_last − G))ᵀ v"
        return _fill(_CHUNK_FWD, **self.slots(), BODY=_ind(body, 8), Q_IN=self.q_in(), K_OUT=self.k_out(),
                     CARRY=self.carry("b_S"), SCALE_O=_ind(self.scale_line("b_o"), 8), S_DOC=state_doc)

    def chunk_bwd(self) -> str:
        kind = self.kind
        load_do = "b_do = tl.load(do + o_t[:, None] * V + o_v[None, :], mask=m_tv, other=0.0)"
        if self.scale != 1.0:
            load_do += f" * {self.scale!r}     # ∂L/∂(φ(q)S): the scale folded in"
        load_v = "b_v = tl.load(v + o_t[:, None] * V + o_v[None, :], mask=m_tv, other=0.0)"
        ptr_q, ptr_k = "q + o_t[:, None] * F + o_k[None, :]", "k + o_t[:, None] * F + o_k[None, :]"
        gates = "\n".join(x for x in [self.chunk_gates(), self.decay_mask()] if x)
        da = f"b_dA = tl.where(m_causal, tl.dot(b_do, tl.trans(b_v), {_IEEE}), 0.0)     # ∂A_ij = do_i · v_j, j ≤ i"
        if kind is None:
            dq = f"b_dq = tl.dot(b_dA, b_k, {_IEEE}) + tl.dot(b_do, tl.trans(b_S), {_IEEE})"
            dk = f"b_dk = tl.dot(tl.trans(b_dA), b_q, {_IEEE}) + tl.dot(b_v, tl.trans(b_dS), {_IEEE})"
        elif kind == "channel":
            dq = ("b_dq = (tl.sum(b_dA[:, :, None] * b_k[None, :, :] * b_D, axis=1)\n"
                  f"        + tl.dot(b_do, tl.trans(b_S), {_IEEE}) * tl.exp(b_G))")
            dk = ("b_dk = (tl.sum(b_dA[:, :, None] * b_q[:, None, :] * b_D, axis=0)\n"
                  f"        + tl.dot(b_v, tl.trans(b_dS), {_IEEE}) * tl.exp(b_Gl[None, :] - b_G))")
        else:
            da += "\nb_dA = b_dA * b_D"
            dq = (f"b_dq = tl.dot(b_dA, b_k, {_IEEE}) + tl.dot(b_do, tl.trans(b_S), {_IEEE}) * tl.exp(b_G)[:, None]")
            dk = (f"b_dk = (tl.dot(tl.trans(b_dA), b_q, {_IEEE})\n"
                  f"        + tl.dot(b_v, tl.trans(b_dS), {_IEEE}) * tl.exp(b_Gl - b_G)[:, None])")
        gq = gk = "<drop>"
        if kind is not None:
            if kind == "channel":
                gq = "tl.store(dgq + o_t[:, None] * F + o_k[None, :], b_q * b_dq, mask=m_tk)"
                gk = "tl.store(dgk + o_t[:, None] * F + o_k[None, :], b_k * b_dk, mask=m_tk)"
            else:
                gq = "tl.store(dgq + o_t, tl.sum(b_q * b_dq, axis=1), mask=m_t)"
                gk = "tl.store(dgk + o_t, tl.sum(b_k * b_dk, axis=1), mask=m_t)"
            gq = "# the q-side term φ(q) ⊙ ∂φ(q) of the gate gradient\n" + gq
            gk = "# the k-side term φ(k) ⊙ ∂φ(k) of the gate gradient\n" + gk
        dg_base = "<drop>"
        if kind is not None:
            per = "N * F" if kind == "channel" else "N"
            dg_base = _ind(f"dgq = dg + (i_v * BH + i_bh) * {per}                      # dg [2, NV, BH, N(, F)]\n"
                           f"dgk = dg + ((tl.num_programs(0) + i_v) * BH + i_bh) * {per}", 4)
        pass1 = "\n".join(x for x in [
                           self.load_feat("q", ptr_q, "m_tk", raw=True), self.load_feat("k", ptr_k, "m_tk", raw=False),
                           load_v, load_do, gates, da, dq, gq,
                           "tl.store(dq + o_t[:, None] * F + o_k[None, :], " + self.dphi("b_dq", "b_qr") + ", mask=m_tk)",
                           "b_S = " + self.carry("b_S") + f" + tl.dot(tl.trans({self.k_out()}), b_v, {_IEEE})"] if x)
        pass2 = "\n".join(x for x in [
                           self.load_feat("q", ptr_q, "m_tk", raw=False), self.load_feat("k", ptr_k, "m_tk", raw=True),
                           load_v, load_do, gates, self.scores(), da,
                           f"b_dv = tl.dot(tl.trans(b_A), b_do, {_IEEE}) + tl.dot({self.k_out()}, b_dS, {_IEEE})",
                           dk, gk,
                           "tl.store(dk + o_t[:, None] * F + o_k[None, :], " + self.dphi("b_dk", "b_kr") + ", mask=m_tk)",
                           "tl.store(dv + o_t[:, None] * V + o_v[None, :], b_dv, mask=m_tv)",
                           "b_dS = " + self.carry("b_dS") + f" + tl.dot(tl.trans({self.q_in()}), b_do, {_IEEE})"] if x)
        return _fill(_CHUNK_BWD, **self.slots(), DG="" if kind is None else "dg, ", DG_BASE=dg_base,
                     PASS1=_ind(pass1, 8), PASS2=_ind(pass2, 8))

    # -- the sequential (scan) kernels --

    def scan_gate(self) -> tuple[str, str]:
        """(the line loading a_t, the decayed state expression) for the scan kernels."""
        if self.kind is None:
            return "", "{s}"
        if self.kind == "head":
            return "", "{s} * b_a"
        if self.kind == "token":
            return "b_a = tl.exp(tl.load(g + t))                            # a_t", "{s} * b_a"
        return ("b_a = tl.exp(tl.load(g + t * F + o_k, mask=m_k, other=0.0))    # a_t per key feature",
                "{s} * b_a[:, None]")

    def scan_fwd(self) -> str:
        load_a, decayed = self.scan_gate()
        body = "\n".join(x for x in [
            self.load_feat("q", "q + t * F + o_k", "m_k", raw=False),
            self.load_feat("k", "k + t * F + o_k", "m_k", raw=False),
            "b_v = tl.load(v + t * V + o_v, mask=m_v, other=0.0)",
            load_a,
            "# S_t = a_t ⊙ S_(t−1) + φ(k_t)ᵀ v_t;  o_t = scale · φ(q_t) S_t",
            "b_S = " + decayed.format(s="b_S") + " + b_k[:, None] * b_v[None, :]",
            "b_o = tl.sum(b_q[:, None] * b_S, axis=0)",
            self.scale_line("b_o"),
            "tl.store(o + t * V + o_v, b_o, mask=m_v)"] if x)
        return _fill(_SCAN_FWD, **self.slots(), HEAD_A=self.scan_head(), BODY=_ind(body, 8))

    def scan_head(self) -> str:
        return _ind("b_a = tl.exp(b_lam)                                  # a = e^λ, every token", 4) \
            if self.kind == "head" else "<drop>"

    def scan_bwd(self) -> str:
        load_a, decayed = self.scan_gate()
        load_do = "b_do = tl.load(do + t * V + o_v, mask=m_v, other=0.0)"
        if self.scale != 1.0:
            load_do += f" * {self.scale!r}"
        gq = gk = "<drop>"
        dg_base = "<drop>"
        if self.kind is not None:
            if self.kind == "channel":
                gq = "tl.store(dgq + t * F + o_k, b_q * b_dq, mask=m_k)          # q-side gate term"
                gk = "tl.store(dgk + t * F + o_k, b_k * b_dk, mask=m_k)          # k-side gate term"
                per = "N * F"
            else:
                gq = "tl.store(dgq + t, tl.sum(b_q * b_dq, axis=0))              # q-side gate term"
                gk = "tl.store(dgk + t, tl.sum(b_k * b_dk, axis=0))              # k-side gate term"
                per = "N"
            dg_base = _ind(f"dgq = dg + (i_v * BH + i_bh) * {per}                      # dg [2, NV, BH, N(, F)]\n"
                           f"dgk = dg + ((tl.num_programs(0) + i_v) * BH + i_bh) * {per}", 4)
        pass1 = "\n".join(x for x in [
            self.load_feat("q", "q + t * F + o_k", "m_k", raw=True),
            self.load_feat("k", "k + t * F + o_k", "m_k", raw=False),
            "b_v = tl.load(v + t * V + o_v, mask=m_v, other=0.0)",
            load_do, load_a,
            "b_S = " + decayed.format(s="b_S") + " + b_k[:, None] * b_v[None, :]",
            "b_dq = tl.sum(b_S * b_do[None, :], axis=1)                  # ∂φ(q_t) = S_t do_tᵀ",
            gq,
            "tl.store(dq + t * F + o_k, " + self.dphi("b_dq", "b_qr") + ", mask=m_k)"] if x)
        pass2 = "\n".join(x for x in [
            self.load_feat("q", "q + t * F + o_k", "m_k", raw=False),
            self.load_feat("k", "k + t * F + o_k", "m_k", raw=True),
            "b_v = tl.load(v + t * V + o_v, mask=m_v, other=0.0)",
            load_do, load_a,
            "b_dS += b_q[:, None] * b_do[None, :]                        # ∂S_t gets φ(q_t)ᵀ do_t",
            "b_dk = tl.sum(b_dS * b_v[None, :], axis=1)                  # ∂φ(k_t) = ∂S_t v_tᵀ",
            "b_dv = tl.sum(b_dS * b_k[:, None], axis=0)                  # ∂v_t = φ(k_t) ∂S_t",
            gk,
            "tl.store(dk + t * F + o_k, " + self.dphi("b_dk", "b_kr") + ", mask=m_k)",
            "tl.store(dv + t * V + o_v, b_dv, mask=m_v)",
            "b_dS = " + decayed.format(s="b_dS") + "                               # ∂S_(t−1) = a_t ⊙ ∂S_t"] if x)
        return _fill(_SCAN_BWD, **self.slots(), HEAD_A=self.scan_head(), DG="" if self.kind is None else "dg, ",
                     DG_BASE=dg_base, PASS1=_ind(pass1, 8), PASS2=_ind(pass2, 8))

    # -- non-causal --

    def global_fwd(self) -> str:
        return _fill(_GLOBAL_FWD, **self.slots(),
                     LOAD_K=_ind(self.load_feat("k", "k + o_t[:, None] * F + o_k[None, :]", "m_tk", raw=False), 8),
                     LOAD_Q=_ind(self.load_feat("q", "q + o_t[:, None] * F + o_k[None, :]", "m_tk", raw=False), 8),
                     SCALE_O=_ind(self.scale_line("b_o"), 8))

    def global_bwd(self) -> str:
        load_do = "b_do = tl.load(do + o_t[:, None] * V + o_v[None, :], mask=m_tv, other=0.0)"
        if self.scale != 1.0:
            load_do += f" * {self.scale!r}"
        return _fill(_GLOBAL_BWD, **self.slots(),
                     LOAD_Q=_ind(self.load_feat("q", "q + o_t[:, None] * F + o_k[None, :]", "m_tk", raw=True), 8),
                     LOAD_K=_ind(self.load_feat("k", "k + o_t[:, None] * F + o_k[None, :]", "m_tk", raw=True), 8),
                     LOAD_DO=_ind(load_do, 8), DQ=self.dphi("b_dq", "b_qr"), DK=self.dphi("b_dk", "b_kr"))

    # -- autograd --

    def function(self) -> str:
        kind = self.kind
        if kind is None:
            gate_grad = "<drop>"
        else:
            final = "(ht * dht).sum(-1)" if kind == "channel" else "(ht * dht).sum((-2, -1))"
            gate_grad = _ind(f'''
if ctx.needs_input_grad[3]:
    # ∂L/∂G_t = φ(q_t) ⊙ ∂φ(q_t) − φ(k_t) ⊙ ∂φ(k_t), plus S_N ⊙ ∂S_N at the last token (G_t: the
    # cumulative log-gate); log a_t enters every G_s with s ≥ t: a reversed cumulative sum
    dG = dg[0].sum(0) - dg[1].sum(0)
    dG[:, -1] += {final}
    dgate = lx.reverse_cumsum(dG, 1){".sum(1)                    # one rate per head: Σ_t" if kind == "head" else ""}''', 8)
        chunked = self.with_chunked
        fwd = _ind("""
else:
    ${P}_fwd_kernel[(triton.cdiv(nv, bv), bh)](
        q, k, v, ${G}h0_ptr, o, ht, n, f, nv, C=${P}_CHUNK, BK=bk, BV=bv, USE_H0=h0 is not None)""", 8)
        bwd = _ind("""
else:
    ${P}_bwd_kernel[(n_v, bh)](*args, C=${P}_CHUNK, BK=bk, BV=bv, USE_H0=h0 is not None)""", 8)
        return _fill(_FUNCTION.replace("$FWD_CHUNKED", fwd if chunked else "<drop>")
                     .replace("$BWD_CHUNKED", bwd if chunked else "<drop>"), **self.slots(),
                     DG_ALLOC="<drop>" if kind is None else _ind(
                         f"dg = lx.scratch(2, n_v, bh, n, {'f, ' if kind == 'channel' else ''}device=q.device)"
                         "    # gate terms: q side, k side", 8),
                     DG="" if kind is None else "dg, ", GATE_GRAD=gate_grad)

    def global_function(self) -> str:
        return _fill(_GLOBAL_FUNCTION, **self.slots())


# ---- the entry function ------------------------------------------------------------------


def _entry(name, feature, norm, causal, decay_kind, log_decay, algorithm) -> str:
    normalized = norm == "sum"
    if _phi_torch(feature):
        feats = (f"# φ = {feature} needs the projection: applied here in PyTorch; the kernels see identity features\n"
                 f"fq = lx.feature_map(q.float(), {feature!r}, projection, is_query=True, normalized={normalized})\n"
                 f"fk = lx.feature_map(k.float(), {feature!r}, projection, is_query=False, normalized={normalized})")
    else:
        feats = f"fq, fk = q, k                                   # raw: φ = {feature} is applied inside the kernels"
    norm_v = ("# norm='sum': a column of ones rides along with v; its output is the normaliser\n"
              "v = torch.cat([v, v.new_ones(()).expand(*v.shape[:-1], 1)], dim=-1)") if normalized else ""
    norm_o = "o = o[..., :-1] / o[..., -1:]                  # Σ_j M_ij v_j / Σ_j M_ij (the scale cancels)" \
        if normalized else ""
    to_log = "" if log_decay else "torch.log"
    lengths = ("if k.shape[-2] != v.shape[-2] or q.shape[-2] != k.shape[-2]:" if causal
               else "if k.shape[-2] != v.shape[-2]:")
    gate_prep, gate_flat = _gate_prep(decay_kind, log_decay, to_log)
    if not causal:
        scan = "False"
    elif algorithm == "recurrent":
        scan = "True                                       # algorithm='recurrent'"
    else:
        scan = "nv <= lx.SCAN_MAX_V                        # tiny value width: the sequential scan"
    return _fill(_ENTRY, P=name, FEATS=_ind(feats, 4), NORM_V=_ind(norm_v, 4) or "<drop>",
                 NORM_O=_ind(norm_o, 4) or "<drop>", LENGTHS=lengths, GATE_PREP=_ind(gate_prep, 4) or "<drop>",
                 GATE_FLAT=gate_flat, SCAN=scan, PLUS1=" + 1" if normalized else "",
                 OUT_V="nv - 1" if normalized else "nv",
                 NO_DECAY=("if decay is not None:\n        raise ValueError(\"this mixer has no decay; got one\")"
                           if decay_kind is None else "<drop>"))


def _gate_prep(decay_kind, log_decay, to_log) -> tuple[str, str]:
    """(lines building lg = log a and appending its lead shape, the flat gate expression)."""
    log_of = (lambda x: x) if log_decay else (lambda x: f"torch.log({x})")
    if decay_kind is None:
        return "", "None"
    if decay_kind == "scalar":
        check = "" if log_decay else ("if float(decay) <= 0:\n"
                                      "    raise ValueError(f\"a decay rate must be in (0, 1], got {decay}\")\n")
        value = "float(decay)" if log_decay else "math.log(float(decay))"
        return (f"# one decay for the whole layer: log a as one number per batch·head\n{check}"
                f"lg = torch.tensor({value}, dtype=torch.float32, device=q.device)\n"
                "lead.append(lg.shape)"), "lx.flat(lg, batch, ())"
    if decay_kind == "head":
        return ("# one decay rate per head (rank ≤ R−2, broadcast against the leading dims)\n"
                "if not isinstance(decay, torch.Tensor):\n"
                "    decay = torch.tensor(float(decay), device=q.device)\n"
                "if decay.dim() > q.dim() - 2:\n"
                "    raise ValueError(f\"a per-head decay has rank ≤ {q.dim() - 2}, got {tuple(decay.shape)}\")\n"
                f"lg = {log_of('decay.float()')}\n"
                "lead.append(lg.shape)"), "lx.flat(lg, batch, ())"
    if decay_kind == "token":
        return ("# one decay per head and token: [..., N]\n"
                "if not isinstance(decay, torch.Tensor) or decay.dim() != q.dim() - 1 or decay.shape[-1] != n:\n"
                "    raise ValueError(f\"a per-token decay must be [..., N={n}]\")\n"
                f"lg = {log_of('decay.float()')}\n"
                "lead.append(lg.shape[:-1])"), "lx.flat(lg, batch, (n,))"
    return ("# one decay per token and key feature: [..., N, F] (GLA, Mamba)\n"
            "decay = lx.dense_gate(decay)                   # a factored Δ ⊗ A as one [..., N, F] tensor\n"
            "if (not isinstance(decay, torch.Tensor) or decay.dim() != q.dim() or decay.shape[-2] != n\n"
            "        or decay.shape[-1] not in (1, f)):\n"
            "    raise ValueError(f\"a per-channel decay must be [..., N={n}, F={f}]\")\n"
            f"lg = {log_of('decay.float()')}\n"
            "lead.append(lg.shape[:-2])"), "lx.flat(lg, batch, (n, f))"


