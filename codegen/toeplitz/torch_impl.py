"""PyTorch runtime of the Toeplitz family: y = M v with M_ij = K[i − j] (SPEC §1).

K comes from an SSM (``kind`` + ``params``, see ``kernels.py``) or is given explicitly
([L, C] taps). The algorithms (the cost model picks one; each can be forced):

- ``direct``: conv1d with the kernel's taps — N taps, or S for a shift SSM.
  O(N·L) per channel; exact; the short-sequence path.
- ``fft``: pad to N + L − 1 (≈ 2N), y = irfft(rfft(u)·rfft(K))[:N]. O(N log N), but the
  kernel, its transform and the padded input are O(N) per channel, all at once.
- ``chunked_fft`` (SSM kernels): FlashConv's state passing. Chunks of ``chunk`` tokens are
  convolved by FFT with the first ``chunk`` taps; the SSM state crosses chunk boundaries,
  so beyond input and output the memory is O(group + C·state). Groups of chunks are
  processed together, their boundary states found by :func:`state.carry`.
- ``scan`` (SSM kernels): the recurrence, chunked as Mamba-2's SSD: inside blocks of
  ``scan_block`` tokens the quadratic form (the Toeplitz block for per-channel SSMs, the
  λ^{t−s} decay matrix for S5's MIMO state), across blocks the state carried with
  log-space powers — no Python loop over tokens (DPLR's dense state: a loop over blocks).

A shift SSM is a finite filter of S taps: every algorithm but ``fft`` runs it as the S-tap
convolution, which is exactly its shift-register recurrence.

Bidirectional (``causal=False``): y = conv(u, K) + flip(conv(flip(u), K_rev)), K_rev from
``reverse_params`` with its tap 0 left out so that the diagonal counts once (``diagonal``:
"shift" delays the backward pass by one token instead, as S4's FFT layout; "twice" keeps
both, as S5's two scans); an explicit kernel mirrors itself.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from codegen.distributed.context import active as _sp_active
from codegen.toeplitz import state as st
from codegen.toeplitz.kernels import (
    DenseSSM,
    DiagSSM,
    ShiftSSM,
    System,
    dense_powers,
    discretize,
    system_kernel,
)
from codegen.torch.decode import stateful

ALGORITHMS = ("direct", "fft", "chunked_fft", "scan")
GROUP_TOKENS = 1 << 15     # tokens per vectorised group of chunks (bounds the working set)


# ---- plain convolutions ---------------------------------------------------------------


def _fft_len(m: int) -> int:
    """The smallest 2^a·3^b·5^c ≥ m (sizes pocketfft transforms fastest)."""
    best = 1 << max(0, (m - 1).bit_length())
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            n = p35
            while n < m:
                n *= 2
            best = min(best, n)
            p35 *= 3
        p5 *= 5
    return best


def fft_conv(u: Tensor, K: Tensor) -> Tensor:
    """Causal y_i = Σ_{j≤i} K[i−j] u_j by FFT. u [B, N, C]; K [L, C] or [L, C_out, C_in]."""
    n = u.shape[1]
    size = _fft_len(n + K.shape[0] - 1)
    uf = torch.fft.rfft(u, n=size, dim=1)                  # read N·C, write size·C complex
    Kf = torch.fft.rfft(K, n=size, dim=0)
    yf = uf * Kf if K.dim() == 2 else torch.einsum("bfi,foi->bfo", uf, Kf)
    return torch.fft.irfft(yf, n=size, dim=1)[:, :n]


def direct_conv(u: Tensor, K: Tensor) -> Tensor:
    """Causal y_i = Σ_{j≤i} K[i−j] u_j by conv1d (cross-correlation with the flipped taps)."""
    L = K.shape[0]
    x = F.pad(u.transpose(1, 2), (L - 1, 0))               # [B, C, L − 1 + N]
    if K.dim() == 2:
        y = F.conv1d(x, K.flip(0).transpose(0, 1)[:, None, :], groups=K.shape[1])
    else:
        y = F.conv1d(x, K.flip(0).permute(1, 2, 0))
    return y.transpose(1, 2)


def _block_toeplitz(K: Tensor) -> Tensor:
    """[C, T, T] with T[c, t, s] = K[t − s, c] for s ≤ t."""
    T = K.shape[0]
    d = torch.arange(T)[:, None] - torch.arange(T)[None, :]
    return (K[d.clamp(min=0)] * (d >= 0)[..., None].to(K.dtype)).permute(2, 0, 1)


# ---- output sink: preallocated when no graph is built ----------------------------------


class _Sink:
    def __init__(self, batch: int, n: int, channels: int, dtype: torch.dtype, graph: bool):
        self.graph, self.pieces, self.pos = graph, [], 0
        self.buf = None if graph else torch.empty(batch, n, channels, dtype=dtype)

    def add(self, y: Tensor) -> None:
        if self.graph:
            self.pieces.append(y)
        else:
            self.buf[:, self.pos:self.pos + y.shape[1]] = y
        self.pos += y.shape[1]

    def result(self) -> Tensor:
        return torch.cat(self.pieces, dim=1) if self.graph else self.buf


# ---- chunked algorithms ----------------------------------------------------------------


class _DenseGrad(torch.autograd.Function):
    """The identity, whose backward hands on a contiguous gradient. The batched products
    before it would otherwise receive a broadcast (stride-0, as from ``y.sum()``) or
    permuted gradient, which CPU BLAS cannot take, and PyTorch then multiplies with a
    naive loop, ~100× slower."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g: Tensor) -> Tensor:
        return g.contiguous()


class _DiagBases:
    """What every chunk of T tokens of a diagonal SSM reuses, from one table λ^t, t ≤ T.

    A chunk of t ≤ T tokens (the last one may be short) slices the same tables: taps
    K[:t], input weights b λ^{t−1−s} (the last t rows of Vt), output weights scale c λ^{s+1}
    (the first t columns of W). Layouts are the ones the batched products read directly:
    per channel, operands are [C, rows, t] with rows = batch × chunks."""

    def __init__(self, sys: DiagSSM, T: int, fft: bool):
        self.sys, self.T, self.fft = sys, T, fft
        z = sys.log_lam
        self.cplx = z.is_complex()
        P = st.powers(z, 0, T + 1)                                         # λ^t  [(C,) M, T + 1]
        if sys.mimo:
            self.P_in = P[:, :T].flip(-1)                                  # λ^{T−1−t}  [M, T]
            self.P_out = P[:, 1:]                                          # λ^{t+1}    [M, T]
            if fft:
                self.K = sys.scale * torch.einsum("ml,om,mi->loi", P[:, :T], sys.c, sys.b).real   # [T, Co, Ci]
            else:
                d = torch.arange(T)[None, :] - torch.arange(T)[:, None]   # t − s, indexed [s, t]
                self.Dt = P[:, d.clamp(min=0)] * (d >= 0)                  # λ^{t−s} as [M, s, t]
            return
        K = torch.einsum("cm,cml->cl", sys.scale * sys.c * sys.b, P[..., :T])
        self.K = K.real if self.cplx else K                                # taps [C, T]
        V = sys.b[..., None] * P[..., :T].flip(-1)                         # b λ^{T−1−t}  [C, M, T]
        W = sys.scale * sys.c[..., None] * P[..., 1:]                      # scale c λ^{t+1}
        if self.cplx:   # real forms, so that real inputs never get a complex copy
            V = torch.cat([V.real, V.imag], dim=1)
            W = torch.cat([W.real, -W.imag], dim=1)
        self.Vt, self.W = V.transpose(1, 2).contiguous(), W                # [C, T, k], [C, k, T]
        self.Kf = torch.fft.rfft(self.K, n=2 * T) if fft else None
        self.TzT = None if fft else _block_toeplitz(self.K.transpose(0, 1)).transpose(1, 2).contiguous()

    def intra(self, X: Tensor, t: int) -> Tensor:
        """Per-channel convolution inside each chunk, X [C, rows, t]."""
        if self.fft:
            Kf = self.Kf if t == self.T else torch.fft.rfft(self.K[:, :t], n=2 * t)
            return torch.fft.irfft(torch.fft.rfft(X, n=2 * t) * Kf[:, None], n=2 * t)[..., :t]
        return X @ self.TzT[:, :t, :t]                                     # t² per channel and chunk


def _diag_group(ug: Tensor, bs: _DiagBases, t: int, h: Tensor | None) -> tuple[Tensor, Tensor]:
    """G chunks of t tokens of a per-channel diagonal SSM at once. ug [B, G, t, C]."""
    Bn, G, _, C = ug.shape
    z = bs.sys.log_lam
    M = z.shape[-1]
    X = ug.permute(3, 0, 1, 2).reshape(C, Bn * G, t)                     # one copy: [C, rows, t]
    y = bs.intra(X, t)
    s = X @ bs.Vt[:, bs.T - t:]                                            # chunk-local end states [C, rows, k]
    if bs.cplx:
        s = torch.complex(s[..., :M], s[..., M:])
    s = s.reshape(C, Bn, G, M).permute(1, 2, 0, 3).reshape(Bn, G, C * M)
    H, h = st.carry((t * z).reshape(-1), s, None if h is None else h.reshape(Bn, -1))
    H = H.reshape(Bn, G, C, M).permute(2, 0, 1, 3).reshape(C, Bn * G, M)
    if bs.cplx:
        H = torch.cat([H.real, H.imag], dim=-1)
    y = _DenseGrad.apply(y + H @ bs.W[..., :t])                           # what entering states add
    return y.reshape(C, Bn, G * t).permute(1, 2, 0), h.reshape(Bn, C, M)


def _mimo_group(ug: Tensor, bs: _DiagBases, t: int, h: Tensor | None) -> tuple[Tensor, Tensor]:
    """G chunks of t tokens of S5's MIMO diagonal SSM. ug [B, G, t, C_in]."""
    Bn, G, _, _ = ug.shape
    sys = bs.sys
    z, b, c = sys.log_lam, sys.b, sys.c
    M = z.shape[0]
    flat = ug.reshape(-1, ug.shape[-1])                                    # [rows·t, C_in]
    x = torch.complex(b.real @ flat.transpose(0, 1), b.imag @ flat.transpose(0, 1))   # B̄ u  [M, rows·t]
    x = x.reshape(M, Bn * G, t)
    if bs.fft:
        n = 2 * t
        uf = torch.fft.rfft(ug, n=n, dim=2)
        yf = torch.einsum("bgfi,foi->bgfo", uf, torch.fft.rfft(bs.K[:t], n=n, dim=0))
        y = torch.fft.irfft(yf, n=n, dim=2)[:, :, :t]
        s = (x * bs.P_in[:, None, bs.T - t:]).sum(-1)                     # [M, rows]
    else:
        hloc = x @ bs.Dt[:, :t, :t]                                        # states from the chunk's inputs
        s = hloc[..., -1]
    H, h = st.carry(t * z, s.transpose(0, 1).reshape(Bn, G, M), h)
    hin = bs.P_out[:, None, :t] * H.reshape(Bn * G, M).transpose(0, 1)[..., None]   # λ^{t+1} H_g [M, rows, t]
    hs = hin if bs.fft else hloc + hin
    cr = torch.cat([c.real, -c.imag], dim=1)                               # Re(c h) = [Re c, −Im c]·[Re h; Im h]
    ys = sys.scale * (cr @ torch.cat([hs.real, hs.imag], dim=0).reshape(2 * M, -1))   # [C_out, rows·t]
    ys = _DenseGrad.apply(ys).reshape(-1, Bn, G * t).permute(1, 2, 0)
    if bs.fft:
        return y.reshape(Bn, G * t, -1) + ys, h
    return ys, h


def _diag_chunked(u: Tensor, sys: DiagSSM, T: int, fft: bool, h: Tensor | None, sink: _Sink) -> Tensor:
    Bn, N, C = u.shape
    bases = _DiagBases(sys, T, fft)
    nfull = N // T
    per = max(1, GROUP_TOKENS // T)
    spans = [(g0 * T, min(nfull, g0 + per) * T, T) for g0 in range(0, nfull, per)]
    if N > nfull * T:
        spans.append((nfull * T, N, N - nfull * T))
    for a, e, t in spans:
        ug = u[:, a:e].reshape(Bn, (e - a) // t, t, -1)
        y, h = (_mimo_group if sys.mimo else _diag_group)(ug, bases, t, h)
        sink.add(y)
    return h


def _dense_chunked(u: Tensor, sys: DenseSSM, T: int, fft: bool, h: Tensor | None, sink: _Sink) -> Tensor:
    """DPLR's dense Ā, chunk by chunk: the state is [C, S] and its carry a matrix product, so
    this loops over the N/T chunks (each chunk's work is batched products over channels)."""
    cd = sys.A.dtype
    X = dense_powers(sys.A, sys.b, T)                                      # Ā^j B̄      [C, S, T]
    R = dense_powers(sys.A.transpose(-1, -2), torch.einsum("ct,cts->cs", sys.c, sys.A), T)   # (c Ā^{t+1})ᵀ
    K = (sys.scale * torch.einsum("cs,csj->jc", sys.c, X)).real           # taps [T, C]
    TzT = None if fft else _block_toeplitz(K).transpose(1, 2).contiguous()
    Xin = X.flip(-1).transpose(1, 2).contiguous()                           # Ā^{T−1−j} B̄ as [C, T, S]
    A_T = torch.linalg.matrix_power(sys.A, T)
    N = u.shape[1]
    for a in range(0, N, T):
        t = min(T, N - a)
        uk = u[:, a:a + t]
        Uc = uk.permute(2, 0, 1).contiguous()                              # [C, B, t]
        if fft:
            y = fft_conv(uk, K[:t])
        else:
            y = (Uc @ TzT[:, :t, :t]).permute(1, 2, 0)
        if h is not None:
            y = y + sys.scale * (h.transpose(0, 1) @ R[..., :t]).real.permute(1, 2, 0)
        s = (Uc.to(cd) @ Xin[:, T - t:]).transpose(0, 1)                  # [B, C, S]
        if h is not None:
            Ak = A_T if t == T else torch.linalg.matrix_power(sys.A, t)
            s = s + (Ak @ h.permute(1, 2, 0)).permute(2, 0, 1)
        h = s
        sink.add(_DenseGrad.apply(y.contiguous()) if sink.graph else y)
    return h


# ---- dispatch -------------------------------------------------------------------------


def _shift_run(u: Tensor, sys: ShiftSSM, algorithm: str, h: Tensor | None) -> tuple[Tensor, Tensor]:
    S = sys.taps.shape[1]
    K = sys.taps.transpose(0, 1)                                           # [S, C]
    if h is not None:                                                      # prepend u_{−S+1} … u_{−1}
        u = torch.cat([h[..., : S - 1].flip(-1).transpose(1, 2), u], dim=1)
    y = fft_conv(u, K) if algorithm == "fft" else direct_conv(u, K)
    hN = st.input_state(sys, u)
    return (y if h is None else y[:, S - 1:]), hN


def _run(u: Tensor, sys: System, algorithm: str, chunk: int, scan_block: int, h0: Tensor | None,
         want_state: bool, graph: bool) -> tuple[Tensor, Tensor | None]:
    """One causal pass: (y [B, N, C_out], the final state if asked)."""
    if isinstance(sys, ShiftSSM):
        y, h = _shift_run(u, sys, algorithm, h0)
        return y, h
    if isinstance(sys, DiagSSM) and sys.from_end is not None and (algorithm not in ("direct", "fft")
                                                                 or h0 is not None or want_state):
        raise ValueError(f"a DSS mode with Re(ΔΛ) > 0 grows along the sequence: only its normalised kernel "
                         f"is bounded, so it runs with 'direct' or 'fft' and carries no state (not {algorithm!r})")
    if algorithm in ("direct", "fft"):
        K = system_kernel(sys, u.shape[1])
        y = direct_conv(u, K) if algorithm == "direct" else fft_conv(u, K)
        if h0 is not None:
            y = y + st.state_output(sys, h0, u.shape[1])
        return y, (st.final_state(sys, u, h0) if want_state else None)
    T = chunk if algorithm == "chunked_fft" else scan_block
    T = max(1, min(T, u.shape[1]))
    c_out = sys.channels
    sink = _Sink(u.shape[0], u.shape[1], c_out, u.dtype, graph)
    run = _dense_chunked if isinstance(sys, DenseSSM) else _diag_chunked
    h = run(u, sys, T, algorithm == "chunked_fft", h0, sink)
    return sink.result(), h


def _compute_dtype(*tensors: Tensor) -> torch.dtype:
    """fp32 at least (CPU FFTs take no half precision), else the widest of the inputs."""
    rd = torch.float32
    for t in tensors:
        if t is not None and t.is_floating_point():
            rd = torch.promote_types(rd, t.dtype)
    return rd


def _tap0(sys: System) -> Tensor:
    return system_kernel(sys, 1)[0]


@stateful("toeplitz")   # prefill / step: the SSM state or the input history (toeplitz/step.py)
def toeplitz_mix(v: Tensor, *, kind: str | None = None, params: dict[str, Tensor] | None = None,
                 reverse_params: dict[str, Tensor] | None = None, explicit_kernel: Tensor | None = None,
                 causal: bool = True, disc: str | None = None, conj: bool = True, mimo: bool = False,
                 diagonal: str = "once", algorithm: str = "fft", chunk: int = 4096, scan_block: int = 64,
                 initial_state: Tensor | None = None, return_state: bool = False,
                 kernel_length: int | None = None, docs=None,
                 doc_ids: Tensor | None = None) -> Tensor | tuple[Tensor, Tensor]:
    """Toeplitz mixing of v [..., N, C] → [..., N, C] (MIMO: C_out channels).

    Either an SSM (``kind``, ``params``, ``disc``, ``conj``, ``mimo``; ``reverse_params`` for the
    backward direction when ``causal=False``) or ``explicit_kernel`` [L, C] (L ≤ N taps used).
    ``algorithm``: direct | fft | chunked_fft | scan (the last two for SSM kernels only);
    ``chunk`` is chunked_fft's FFT chunk, ``scan_block`` the scan's block. Causal SSMs carry a
    state: ``initial_state`` [..., C, M] (see ``state.py`` for each kind's layout) and
    ``return_state=True`` returns (y, final state). ``kernel_length`` is DSS's normalisation
    length (default N). ``diagonal`` (bidirectional SSMs): "once" — the backward kernel's tap 0
    left out; "shift" — M_ij = K_rev[j − i − 1] for j > i (S4's FFT layout); "twice" — both
    directions read u_i (S5's two scans). Packed rows: ``docs`` (the call's
    ``codegen.varlen.Documents``, v laid out [B, …, N, C]) and/or ``doc_ids`` [..., N] (a
    ``document(ids)`` mask): see :func:`_per_document`."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown Toeplitz algorithm {algorithm!r}; expected one of {', '.join(ALGORITHMS)}")
    if _sp_active() is not None:       # the sequence split over ranks: state passing or all-to-all (codegen/distributed)
        from codegen.distributed import hooks
        return hooks.toeplitz(v, kind=kind, params=params, reverse_params=reverse_params,
                              explicit_kernel=explicit_kernel, causal=causal, disc=disc, conj=conj, mimo=mimo,
                              diagonal=diagonal, algorithm=algorithm, chunk=chunk, scan_block=scan_block,
                              initial_state=initial_state, return_state=return_state, kernel_length=kernel_length,
                              docs=docs, doc_ids=doc_ids)
    if docs is not None or doc_ids is not None:
        return _per_document(v, docs, doc_ids, dict(
            kind=kind, params=params, reverse_params=reverse_params, explicit_kernel=explicit_kernel, causal=causal,
            disc=disc, conj=conj, mimo=mimo, diagonal=diagonal, algorithm=algorithm, chunk=chunk,
            scan_block=scan_block, kernel_length=kernel_length or v.shape[-2]), initial_state, return_state)
    lead, (N, C) = v.shape[:-2], v.shape[-2:]
    if explicit_kernel is not None:
        rd = _compute_dtype(v, explicit_kernel)
        y = _explicit(v.reshape(-1, N, C).to(rd), explicit_kernel.to(rd), causal, algorithm)
        return y.to(v.dtype).reshape(*lead, N, C)
    if kind is None or params is None:
        raise ValueError("toeplitz_mix needs an SSM (kind and params) or an explicit_kernel")
    rd = _compute_dtype(v, *params.values())
    u = v.reshape(-1, N, C).to(rd)
    params = {k: t.to(rd) for k, t in params.items()}
    reverse_params = None if reverse_params is None else {k: t.to(rd) for k, t in reverse_params.items()}
    if not causal and (initial_state is not None or return_state):
        raise ValueError("a bidirectional Toeplitz mix has no recurrent state (it reads the future)")
    if not causal and reverse_params is None:
        raise ValueError("a bidirectional SSM mix (causal=False) needs reverse_params, the backward "
                         "direction's own SSM")
    length = kernel_length or N
    sys = discretize(kind, params, disc=disc, conj=conj, mimo=mimo, length=length)
    tensors = [v, *params.values(), *(reverse_params or {}).values()]
    if initial_state is not None:
        tensors.append(initial_state)
    graph = torch.is_grad_enabled() and any(t.requires_grad for t in tensors if t is not None)
    h0 = None
    if initial_state is not None:
        h0 = initial_state.reshape(u.shape[0], *initial_state.shape[len(lead):])
        h0 = h0.to(st.zero_state(sys, 1, rd).dtype)
    y, h = _run(u, sys, algorithm, chunk, scan_block, h0, return_state, graph)
    if not causal:
        rsys = discretize(kind, reverse_params, disc=disc, conj=conj, mimo=mimo, length=length)
        ur = u.flip(1)
        yr, _ = _run(ur, rsys, algorithm, chunk, scan_block, None, False, graph)
        if diagonal == "once":
            k0 = _tap0(rsys)
            yr = yr - (ur * k0 if k0.dim() == 1 else ur @ k0.transpose(0, 1))  # the diagonal counts once
        elif diagonal == "shift":   # backward time: token t sees K_rev[t − 1 − s] u_s for s < t
            yr = torch.cat([torch.zeros_like(yr[:, :1]), yr[:, :-1]], dim=1)
        elif diagonal != "twice":
            raise ValueError(f"unknown diagonal {diagonal!r}; expected once, shift or twice")
        y = y + yr.flip(1)
    y = y.to(v.dtype).reshape(*lead, N, y.shape[-1])
    if return_state:
        return y, h.reshape(*lead, *h.shape[1:])
    return y


def _per_document(v: Tensor, docs, doc_ids: Tensor | None, args: dict, initial_state, return_state: bool) -> Tensor:
    """Packed rows, the stated fallback for every Toeplitz algorithm: the documents are gathered
    into a [documents, longest, C] batch (zeros after each document's end), mixed by the
    unchanged algorithm, and scattered back. A document then starts from a zero state and no
    convolution history, and a bidirectional mix does not read past its end: exactly the
    cross-document terms of M dropped. Cost: the algorithm's at (documents × longest) instead
    of (B × N); DSS keeps its normalisation length (the row's N unless given)."""
    from codegen.varlen import Documents, mixer_ids

    if initial_state is not None or return_state:
        raise ValueError("packed rows: a Toeplitz mix over documents takes no initial state and returns none "
                         "(each document starts from zero)")
    lead, (N, C) = v.shape[:-2], v.shape[-2:]
    ids = mixer_ids(docs, v, "toeplitz mix", doc_ids)
    batch = torch.broadcast_shapes(lead, ids.shape[:-1])
    d = Documents(ids.expand(*batch, N).reshape(-1, N))
    u = d.to_padded(v.expand(*batch, N, C).reshape(-1, N, C), axis=1)
    y = toeplitz_mix(u, **args)
    return d.from_padded(y, axis=1).reshape(*batch, N, y.shape[-1])


def _explicit(u: Tensor, K: Tensor, causal: bool, algorithm: str) -> Tensor:
    if algorithm not in ("direct", "fft"):
        raise ValueError(f"algorithm {algorithm!r} passes an SSM's state between chunks; an explicit kernel "
                         "runs with 'direct' or 'fft'")
    if K.dim() != 2 or K.shape[1] != u.shape[-1]:
        raise ValueError(f"an explicit kernel must be [L, C] with C = {u.shape[-1]}, got {tuple(K.shape)}")
    K = K[: u.shape[1]]
    conv = direct_conv if algorithm == "direct" else fft_conv
    y = conv(u, K)
    if not causal:   # mirrored: M_ij = K[|i − j|], the diagonal once
        y = y + conv(u.flip(1), torch.cat([torch.zeros_like(K[:1]), K[1:]])).flip(1)
    return y


# ---- generation -------------------------------------------------------------------------


def recurrent_step(state: Tensor | None, u_t: Tensor, *, kind: str | None = None,
                   params: dict[str, Tensor] | None = None, disc: str | None = None, conj: bool = True,
                   mimo: bool = False, kernel_length: int | None = None,
                   system: System | None = None) -> tuple[Tensor, Tensor]:
    """One token of a causal SSM mix: u_t [..., C] → (y_t [..., C_out], new state).

    ``state`` None starts from zero. Pass ``system`` (from ``kernels.discretize``) to skip the
    discretisation at every step; ``kernel_length`` is DSS's L."""
    sys = system if system is not None else discretize(kind, params, disc=disc, conj=conj, mimo=mimo,
                                                       length=kernel_length)
    if isinstance(sys, DiagSSM) and sys.from_end is not None:
        raise ValueError("a DSS mode with Re(ΔΛ) > 0 grows along the sequence: it has no bounded recurrent "
                         "state to step (its normalised kernel runs with 'direct' or 'fft')")
    lead = u_t.shape[:-1]
    x = u_t.reshape(-1, u_t.shape[-1])
    h = st.zero_state(sys, x.shape[0], x.dtype) if state is None else state.reshape(x.shape[0], *state.shape[len(lead):])
    if isinstance(sys, ShiftSSM):
        h = torch.cat([x[..., None], h[..., :-1]], dim=-1)
        y = (sys.taps * h).sum(-1)
    elif isinstance(sys, DenseSSM):
        h = torch.einsum("cst,bct->bcs", sys.A, h) + sys.b * x[..., None].to(sys.b.dtype)
        y = sys.scale * (sys.c * h).sum(-1).real
    elif sys.mimo:
        lam = torch.exp(sys.log_lam)
        h = lam * h + x.to(sys.b.dtype) @ sys.b.transpose(0, 1)
        y = sys.scale * (h @ sys.c.transpose(0, 1)).real
    elif diag_kernel_wanted(x, h):                     # a decoding step on a GPU: one kernel
        from codegen.toeplitz.step_kernel import fused_diag_step
        y, h = fused_diag_step(h, x, torch.exp(sys.log_lam), sys.b, sys.c, sys.scale)
    else:
        lam = torch.exp(sys.log_lam)
        h = lam * h + sys.b * x[..., None].to(sys.b.dtype)
        y = sys.scale * (sys.c * h).sum(-1)
        y = y.real if y.is_complex() else y
    return y.reshape(*lead, -1), h.reshape(*lead, *h.shape[1:])


def diag_kernel_wanted(x: Tensor, h: Tensor) -> bool:
    """A per-channel diagonal SSM's step on a CUDA device in fp32 (complex64 state) without
    gradients: the fused Triton step (step_kernel.py); anywhere else the torch ops."""
    return x.is_cuda and x.dtype == torch.float32 and h.dtype in (torch.float32, torch.complex64) and \
        not torch.is_grad_enabled()
