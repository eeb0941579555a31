"""The scan form of chunked linear attention (chunked.py's notation): for small states
(F·V per position, e.g. Mamba's selective scan, F = 16, V = 1) the recurrence

    S_t = a_t ⊙ S_{t−1} + φ(k_t)ᵀ v_t,   o_t = φ(q_t) S_t

runs inside every chunk at once, a loop over the C positions vectorised over the chunks of
a block: pass 1 from a zero state gives each chunk's own final state; a loop over the
chunks turns those into the entering states (S_in,i+1 = e^{Σ lg over chunk i} ⊙ S_in,i +
own_i); pass 2 runs the recurrence again from the entering states and emits the outputs.
Only multiplications by a_t ≤ 1: stable for any gate.

Layout. Every per-position tensor is [chunks, F, V, *batch]: the batch dims (Mamba's Dm
channels, heads) go last, so each elementwise step is a few long unit-stride runs and the
broadcasts (k_t ⊗ v_t, the factored gate Δ_t ⊗ A) run over the long inner dim instead of
over F = 16. Inputs are copied once into position-major memory ([N, ·, *batch]); a step
reads x[chunks, t], runs of the inner dims at a stride of C positions.

Without autograd the states, gates and products live in a few buffers of one block's size,
reused at every step (updated in place): a 2-core CPU spends more on first-touching fresh
1 MB allocations than on the arithmetic. The gates are recomputed in pass 2 rather than
kept (keeping them is N·F·V floats written once and read once). With autograd the steps
are out of place and pass 1's gates are reused (autograd keeps them anyway); memory
O(N·F·V) (the states are what the form computes).
"""

from __future__ import annotations

import math

import torch

from codegen.linear import chunked as _chunked


def scan(fq: torch.Tensor, fk: torch.Tensor, v: torch.Tensor, lg, kind: str | None, state: torch.Tensor,
         chunk: int, grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """fq, fk [*, N, F]; v [*, N, V]; lg per ``kind`` (chunked.py; an OuterGate for "channel"
    allowed); state [*batch, F, V] (full batch shape). Returns (o [*batch, N, V], final state).
    ``grad``: build an autograd graph (out-of-place steps)."""
    n, f, dv = fq.shape[-2], fq.shape[-1], v.shape[-1]
    batch = state.shape[:-2]
    lay = _Layout(len(batch))
    q, k = lay.seq(fq, (f, 1)), lay.seq(fk, (f, 1))                                     # [N, F, 1, *b]
    vv = lay.seq(v, (1, dv))                                                             # [N, 1, V, *b]
    gate = _Gate(lg, kind, lay, f)
    h = lay.put(state, 2)                                                                # [F, V, *b]
    per = max(1, _chunked.BLOCK_BUDGET // max(1, math.prod(batch) * f * dv))             # chunks per block
    full, rest = divmod(n, chunk)
    blocks = [(min(per, full - b0), chunk) for b0 in range(0, full, per)] + ([(1, rest)] if rest else [])
    sizes = [m * c for m, c in blocks]
    shared_q = all(s == 1 for s in q.shape[3:])           # q the same for every batch element: one bmm per step
    work = None if grad else _Buffers(max(m for m, _ in blocks), (f, dv, *batch), gate.step_shape(), q)
    out = None if grad else q.new_empty(n, dv, *batch)
    if out is not None and _chunked.SCRATCH_FILL is not None:
        out.fill_(_chunked.SCRATCH_FILL)
    outs, pos = [], 0
    for (m, c), qb, kb, vb, gb in zip(blocks, *(_split(x, sizes) for x in (q, k, vv)), gate.split(sizes)):
        qs, ks, vs = (x.unflatten(0, (m, c)).unbind(1) for x in (qb, kb, vb))            # c × [m, ·, ·, *b]
        steps = gate.steps(gb, m, c)
        rates = {}                                     # pass 1's a_t, reused by pass 2 under autograd

        def a_at(t: int, keep: bool) -> torch.Tensor | None:
            if t in rates:
                return rates[t]
            a = gate.rate(steps, t, None if work is None else work.a[:m])
            if keep and grad:
                rates[t] = a
            return a

        if m == 1:
            H = h[None] if grad else h[None].clone(memory_format=torch.contiguous_format)
        else:
            own = None                                 # pass 1: every chunk from a zero state
            for t in range(c):
                own = _step(own, None if t == 0 else a_at(t, True), ks[t], vs[t], None if grad else work.h[:m])
            decay = gate.chunk_decay(gb, m, c)         # [m, F or 1, 1, *b] or one for all chunks
            if decay is None or decay.dim() == h.dim():
                decay = [decay] * m
            else:
                decay = decay.unbind(0)                # one autograd node, not a zero-filled gradient per chunk
            entering = []
            for own_i, d in zip(own.unbind(0)[:-1], decay):
                entering.append(h)
                h = own_i + h if d is None else torch.addcmul(own_i, d, h)
            entering.append(h)
            H = torch.stack(entering)                                                    # [m, F, V, *b]
        ys = []
        for t in range(c):                             # pass 2: the true states, and the outputs
            H = _step(H, a_at(t, False), ks[t], vs[t], None if grad else H)
            y = _read(qs[t], H, shared_q, None if work is None else work.s[:m])           # [m, V, *b]
            if out is None:
                ys.append(y)
            else:
                out[pos:pos + m * c].unflatten(0, (m, c))[:, t] = y
        if out is None:
            outs.append(torch.stack(ys, 1).flatten(0, 1))
        pos += m * c
        h = H[-1]
    o = out if out is not None else (outs[0] if len(outs) == 1 else torch.cat(outs))   # [N, V, *b]
    return lay.take(o, 2), lay.take(h, 2)


def _step(h, a, kt, vt, buf):
    """a ⊙ h + kᵀv. ``buf`` (no autograd): the tensor to write, h itself or a scratch buffer."""
    if buf is None:
        kv = kt * vt
        if h is None:
            return kv
        x = h if a is None else a * h
        return kv.add_(x) if kv.shape == x.shape else kv + x
    if h is None:
        return buf.copy_(kt).mul_(vt)                  # broadcast into the full state's shape
    if a is not None:
        h.mul_(a)
    return h.addcmul_(kt, vt)


def _read(qt, H, shared: bool, scratch):
    """Σ_F q_t ⊙ H -> [m, V, *b]. Without autograd, one batched matrix-vector product when q
    is shared by the batch (bmm's backward of these thin shapes copies row by row: under
    autograd, mul and sum)."""
    if scratch is None:
        return (qt * H).sum(1)
    m, f = H.shape[0], H.shape[1]
    if shared:
        return torch.bmm(qt.reshape(m, 1, f), H.reshape(m, f, -1)).view(m, *H.shape[2:])
    return torch.mul(qt, H, out=scratch).sum(1)


def _split(x: torch.Tensor, sizes: list[int]):
    # one split per input: its backward is one concatenation (slicing per block would make
    # autograd zero-fill a full-size gradient per block)
    return (x,) if len(sizes) == 1 else torch.split(x, sizes)


class _Layout:
    """Moves the ``nb`` batch dims of a tensor behind its own dims and back."""

    def __init__(self, nb: int):
        self.nb = nb

    def put(self, x: torch.Tensor, own: int) -> torch.Tensor:
        """[*b', *own] (b' broadcastable to the batch) -> [*own, *b] (a view)."""
        x = x[(None,) * (self.nb + own - x.dim())]
        return x.movedim(tuple(range(self.nb)), tuple(range(own, own + self.nb)))

    def seq(self, x: torch.Tensor, inner: tuple[int, int]) -> torch.Tensor:
        """[*b', N, w] -> position-major memory [N, inner…, *b'] (one copy), ``inner`` the
        (F, V) shape that w takes, a 1 where it broadcasts."""
        x = self.put(x, 2).contiguous()
        return x.view(x.shape[0], *inner, *x.shape[2:])

    def take(self, x: torch.Tensor, own: int) -> torch.Tensor:
        return x.movedim(tuple(range(own, own + self.nb)), tuple(range(self.nb)))


class _Gate:
    """The log-gate in the layout: a_t per position and e^{Σ lg} per chunk."""

    def __init__(self, lg, kind: str | None, lay: _Layout, f: int):
        self.kind, self.outer = kind, isinstance(lg, _chunked.OuterGate)
        if self.outer:
            self.seq = lay.seq(lg.rate[..., None], (1, 1))                               # [N, 1, 1, *b]
            self.channel = lay.put(lg.channel, 1)[:, None].contiguous()                 # [F, 1, *b]
        elif kind == "head":
            self.seq = None
            self.head = lay.put(lg, 0)                                                   # [*b]
            self.a_head = self.head.exp()[None, None, None]                              # [1, 1, 1, *b]
        elif kind == "token":
            self.seq = lay.seq(lg[..., None], (1, 1))
        elif kind == "channel":
            self.seq = lay.seq(lg, (f, 1))                                               # [N, F, 1, *b]
        else:
            self.seq = None

    def step_shape(self) -> tuple[int, ...]:
        """The shape of a_t for one chunk: [F or 1, 1, *b']."""
        if self.outer:
            return tuple(torch.broadcast_shapes(self.seq.shape[1:], self.channel.shape))
        return tuple(self.seq.shape[1:]) if self.seq is not None else (1, 1)

    def split(self, sizes: list[int]):
        return _split(self.seq, sizes) if self.seq is not None else [None] * len(sizes)

    def steps(self, piece, m: int, c: int):
        return None if piece is None else piece.unflatten(0, (m, c)).unbind(1)

    def rate(self, steps, t: int, buf) -> torch.Tensor | None:
        """a_t = e^{lg_t} [m, F or 1, 1, *b] (into ``buf`` [m, F, 1, *b] when given)."""
        if self.kind is None:
            return None
        if self.kind == "head":
            return self.a_head
        if not self.outer:
            return steps[t].exp() if buf is None else torch.exp(steps[t], out=buf)
        if buf is None:
            return (steps[t] * self.channel).exp()
        return torch.mul(steps[t], self.channel, out=buf).exp_()

    def chunk_decay(self, piece, m: int, c: int) -> torch.Tensor | None:
        """e^{Σ lg} over each chunk: [m, F or 1, 1, *b], or [1, 1, *b] shared by all chunks."""
        if self.kind is None:
            return None
        if self.kind == "head":
            return torch.exp(c * self.head)[None, None]
        total = piece.unflatten(0, (m, c)).sum(1)
        return torch.exp(total * self.channel if self.outer else total)


class _Buffers:
    """One block's scratch (no autograd): states, gates, products; NaN-filled under tests."""

    def __init__(self, m: int, state: tuple, gate: tuple, like: torch.Tensor):
        self.h = like.new_empty(m, *state)
        self.a = like.new_empty(m, *gate)
        self.s = like.new_empty(m, *state)
        if _chunked.SCRATCH_FILL is not None:
            for x in (self.h, self.a, self.s):
                x.fill_(_chunked.SCRATCH_FILL)
