"""The scan form of chunked linear attention (chunked.py's notation): for small states
(F·V per position, e.g. Mamba's selective scan, F = 16, V = 1) the recurrence

    S_t = a_t ⊙ S_{t−1} + φ(k_t)ᵀ v_t,   o_t = φ(q_t) S_t

runs inside every chunk at once, a loop over the C positions vectorised over the chunks of
a block: pass 1 from a zero state gives each chunk's own final state; a loop over the
chunks turns those into the entering states (S_in,i+1 = e^{Σ lg over chunk i} ⊙ S_in,i +
own_i); pass 2 runs the recurrence again from the entering states and emits the outputs.
Only multiplications by a_t ≤ 1: stable for any gate.

Backward (hand-written, :class:`_ScanFn`): the forward keeps only its inputs and the state
entering each chunk (N/C·F·V per batch element). The adjoint G_t = ∂L/∂S_t obeys the same
recurrence backwards in time, G_t = a_{t+1} ⊙ G_{t+1} + φ(q_t)ᵀ ∂o_t, so it runs in the same
chunked way, blocks in reverse: the states of a block recomputed from their entering states,
the adjoint inside every chunk from zero (pass A), carried across the chunks backwards, then
again from the true carried adjoints (pass C), which also forms the gradients:

    ∂φ(q_t) = S_t ∂o_tᵀ,  ∂φ(k_t) = G_t v_t,  ∂v_t = G_tᵀ φ(k_t),
    ∂lg_t = a_t ⊙ Σ_V G_t ⊙ S_{t−1},  ∂S_in = a_0 ⊙ G_0.

Layout. Every per-position tensor is [chunks, F, V, *batch]: the batch dims (Mamba's Dm
channels, heads) go last, so each elementwise step is a few long unit-stride runs and the
broadcasts (k_t ⊗ v_t, the factored gate Δ_t ⊗ A) run over the long inner dim instead of
over F = 16. Inputs are copied once into position-major memory ([N, ·, *batch]); a step
reads x[chunks, t], runs of the inner dims at a stride of C positions. States, gates and
products live in a few buffers of one block's size, reused at every step (updated in
place): a 2-core CPU spends more on first-touching fresh 1 MB allocations than on the
arithmetic. The gates are recomputed where needed rather than kept.

Memory: forward O(N·V + block); with autograd O(N/C·F·V) kept, the backward's working set
O(C·block) (one block's states).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from codegen.linear import chunked as _chunked


def scan(fq: torch.Tensor, fk: torch.Tensor, v: torch.Tensor, lg, kind: str | None, state: torch.Tensor,
         chunk: int, grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """fq, fk [*, N, F]; v [*, N, V]; lg per ``kind`` (chunked.py; an OuterGate for "channel"
    allowed); state [*batch, F, V] (full batch shape). Returns (o [*batch, N, V], final state).
    ``grad``: gradients will be asked for (the hand-written backward)."""
    f, dv = fq.shape[-1], v.shape[-1]
    lay = _Layout(state.dim() - 2)
    q, k = lay.seq(fq, (f, 1)), lay.seq(fk, (f, 1))                                     # [N, F, 1, *b]
    vv = lay.seq(v, (1, dv))                                                             # [N, 1, V, *b]
    outer = isinstance(lg, _chunked.OuterGate)
    if outer:
        g1, g2 = lay.seq(lg.rate[..., None], (1, 1)), lay.put(lg.channel, 1)[:, None].contiguous()  # [N, 1, 1, *b], [F, 1, *b]
    elif kind == "head":
        g1, g2 = lay.put(lg, 0), None                                                    # [*b]
    elif kind == "token":
        g1, g2 = lay.seq(lg[..., None], (1, 1)), None                                    # [N, 1, 1, *b]
    elif kind == "channel":
        g1, g2 = lay.seq(lg, (f, 1)), None                                               # [N, F, 1, *b]
    else:
        g1 = g2 = None
    h = lay.put(state, 2)                                                                # [F, V, *b]
    spec = _Spec(kind, outer, chunk)
    if grad:
        o, hN = _ScanFn.apply(q, k, vv, g1, g2, h, spec)
    else:
        o, hN = _forward(q, k, vv, _Gate(spec, g1, g2), h, chunk)
    return lay.take(o, 2), lay.take(hN, 2)


@dataclass(frozen=True)
class _Spec:
    kind: str | None
    outer: bool
    chunk: int


#: the backward's blocks, as a fraction of the forward's: it keeps a block's C states
#: (Mamba's shapes on a 2-core CPU: ½ a little faster than 1 and ¼, ⅛ clearly slower)
BACKWARD_BLOCK = 0.5


def _blocks(n: int, chunk: int, state_numel: int, budget: int | None = None) -> list[tuple[int, int]]:
    """(chunks m, chunk size c) per block: whole chunks while they last, then the rest."""
    per = max(1, (budget or _chunked.BLOCK_BUDGET) // max(1, state_numel))
    full, rest = divmod(n, chunk)
    return [(min(per, full - b0), chunk) for b0 in range(0, full, per)] + ([(1, rest)] if rest else [])


def _pieces(x: torch.Tensor | None, blocks):
    """Per block, the c positions of x [N, ...] as c tensors [m, ...] (views)."""
    for view in _views(x, blocks):
        yield None if view is None else view.unbind(1)


def _views(x: torch.Tensor | None, blocks):
    """Per block, x [N, ...] as [m, c, ...] (a view)."""
    pos = 0
    for m, c in blocks:
        yield None if x is None else x[pos:pos + m * c].unflatten(0, (m, c))
        pos += m * c


def _forward(q, k, vv, gate: _Gate, h, chunk: int, keep: list | None = None):
    """The two passes, without autograd, in reused buffers. Layout tensors in (module
    docstring); returns (o [N, V, *b], final state [F, V, *b]). ``keep`` receives, per block,
    the states entering its chunks [m, F, V, *b]."""
    n = q.shape[0]
    state = h.shape
    blocks = _blocks(n, chunk, math.prod(state))
    shared_q = all(s == 1 for s in q.shape[3:])           # q the same for every batch element: one bmm per step
    out = q.new_empty(n, *state[1:])
    if not blocks:
        return out, h
    work = _Buffers(max(m for m, _ in blocks), state, gate.step_shape(), q)
    if _chunked.SCRATCH_FILL is not None:
        out.fill_(_chunked.SCRATCH_FILL)
    pos = 0
    for (m, c), qs, ks, vs, gv in zip(blocks, *(_pieces(x, blocks) for x in (q, k, vv)), _views(gate.seq, blocks)):
        gs = None if gv is None else gv.unbind(1)
        a_buf, s_buf = work.a[:m], work.s[:m]
        H = q.new_empty(m, *state)                     # the states entering the chunks, then the true states
        H[0] = h
        if m > 1:
            own = work.h[:m]                           # pass 1: every chunk from a zero state
            own.copy_(ks[0]).mul_(vs[0])               # broadcast into the full state's shape
            for t in range(1, c):
                _step(own, gate.rate(gs, t, a_buf), ks[t], vs[t])
            decay = gate.chunk_decay(gv, m, c)
            shared = decay is None or decay.dim() == h.dim()
            for i in range(m - 1):
                d = decay if shared else decay[i]
                if d is None:
                    torch.add(own[i], H[i], out=H[i + 1])
                else:
                    torch.addcmul(own[i], d, H[i], out=H[i + 1])
        if keep is not None:
            keep.append(H.clone())
        view = out[pos:pos + m * c].unflatten(0, (m, c))
        for t in range(c):                             # pass 2: the true states, and the outputs
            _step(H, gate.rate(gs, t, a_buf), ks[t], vs[t])
            view[:, t] = _read(qs[t], H, shared_q, s_buf)                                # [m, V, *b]
        pos += m * c
        h = H[-1]
    return out, h


def _step(h, a, kt, vt):
    """h ← a ⊙ h + kᵀv, in place."""
    if a is not None:
        h.mul_(a)
    return h.addcmul_(kt, vt)


def _read(qt, H, shared: bool, scratch):
    """Σ_F q_t ⊙ H -> [m, V, *b]: one batched matrix-vector product when q is shared by the batch."""
    m, f = H.shape[0], H.shape[1]
    if shared:
        return torch.bmm(qt.reshape(m, 1, f), H.reshape(m, f, -1)).view(m, *H.shape[2:])
    return torch.mul(qt, H, out=scratch).sum(1)


class _ScanFn(torch.autograd.Function):
    """The scan form with its hand-written backward (module docstring). Inputs in the layout:
    q, k [N, F, 1, *b'], v [N, 1, V, *b'], the gate's tensors g1, g2 (see ``scan``), the
    entering state h [F, V, *b]."""

    @staticmethod
    def forward(ctx, q, k, v, g1, g2, h, spec: _Spec):
        keep: list[torch.Tensor] = []
        o, hN = _forward(q, k, v, _Gate(spec, g1, g2), h, spec.chunk, keep)
        ctx.spec = spec
        ctx.save_for_backward(q, k, v, g1, g2, torch.cat(keep))
        return o, hN

    @staticmethod
    def backward(ctx, do, dhN):
        q, k, v, g1, g2, entering = ctx.saved_tensors
        spec = ctx.spec
        gate = _Gate(spec, g1, g2)
        n = q.shape[0]
        state = entering.shape[1:]
        blocks = _blocks(n, spec.chunk, math.prod(state), int(_chunked.BLOCK_BUDGET * BACKWARD_BLOCK))
        dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
        dg1 = None if g1 is None else torch.zeros_like(g1)
        dg2 = None if g2 is None else torch.zeros_like(g2)
        if not blocks:                                 # an empty sequence: the state passes through
            return dq, dk, dv, dg1, dg2, dhN, None
        do = q.new_zeros(n, *state[1:]) if do is None else do
        E = entering.new_zeros(state) if dhN is None else dhN.expand(state).clone()      # ∂L/∂S after the block
        work = _Buffers(max(m for m, _ in blocks), state, gate.step_shape(), q, chunk=max(c for _, c in blocks))
        grads = (dq, dk, dv, dg1 if gate.seq is not None else None)
        pieces = [list(_pieces(x, blocks)) for x in (q, k, v, gate.seq, do, *grads)]
        views = list(_views(gate.seq, blocks))
        starts = [0]
        for m, _ in blocks:
            starts.append(starts[-1] + m)
        for b in reversed(range(len(blocks))):
            (m, c), (qs, ks, vs, gs, dos, dqs, dks, dvs, dgs) = blocks[b], [p[b] for p in pieces]
            H = entering[starts[b]:starts[b + 1]]
            # the block's states S_t, recomputed from the entering states   [c, m, F, V, *b]
            # (the gates too, here and below: recomputing a_t into a warm buffer is cheaper
            # than first-touching C of them in fresh memory)
            S = work.states[:c, :m]
            for t in range(c):
                prev = H if t == 0 else S[t - 1]
                a = gate.rate(gs, t, work.a[:m])
                (torch.mul(prev, a, out=S[t]) if a is not None else S[t].copy_(prev)).addcmul_(ks[t], vs[t])
            # pass A: each chunk's adjoint from zero at its end, to its first position
            dos_ = [x.unsqueeze(1) for x in dos]                                         # c × [m, 1, V, *b]
            G = work.h[:m]
            G.copy_(qs[c - 1]).mul_(dos_[c - 1])
            for t in range(c - 2, -1, -1):
                _step(G, gate.rate(gs, t + 1, work.a[:m]), qs[t], dos_[t])
            a0 = gate.rate(gs, 0, work.a[:m])
            own = G if a0 is None else G.mul_(a0)                                        # a_0 ⊙ G_0, per chunk
            # carried across the chunks backwards: E_i enters chunk i at its end
            decay = gate.chunk_decay(views[b], m, c)
            carried = [None] * m
            for i in reversed(range(m)):
                carried[i] = E
                d = decay if decay is None or decay.dim() == E.dim() else decay[i]
                E = own[i] + E if d is None else torch.addcmul(own[i], d, E)
            # pass C: the true adjoints, and the gradients
            G = torch.stack(carried).addcmul_(qs[c - 1], dos_[c - 1])                    # G_{C−1}
            for t in range(c - 1, -1, -1):
                dqs[t].copy_(_reduce(_sum_v(torch.mul(S[t], dos_[t], out=work.s[:m])), dqs[t]))
                dks[t].copy_(_reduce(_sum_v(torch.mul(G, vs[t], out=work.s[:m])), dks[t]))
                dvs[t].copy_(_reduce(torch.mul(G, ks[t], out=work.s[:m]).sum(1, keepdim=True), dvs[t]))
                a = gate.rate(gs, t, work.a[:m])
                if a is not None:
                    prev = H if t == 0 else S[t - 1]
                    dlg = _sum_v(torch.mul(G, prev, out=work.s[:m])).mul_(a)                # [m, F, 1, *b]
                    gate.accumulate(dlg, gs, t, dgs, dg1, dg2)
                if t > 0:
                    _step(G, a, qs[t - 1], dos_[t - 1])
        dh = E
        return dq, dk, dv, dg1, dg2, dh, None


def _sum_v(x: torch.Tensor) -> torch.Tensor:
    """Σ over the value dim (2), kept; free when V = 1."""
    return x if x.shape[2] == 1 else x.sum(2, keepdim=True)


def _reduce(g: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """g summed down to ``like``'s (broadcast) shape."""
    return g if g.shape == like.shape else g.sum_to_size(like.shape)


class _Gate:
    """The log-gate in the layout: a_t per position, e^{Σ lg} per chunk, and the gradient's
    accumulation. ``seq``: the per-position tensor ([N, ·, 1, *b]) or None."""

    def __init__(self, spec: _Spec, g1, g2):
        self.kind, self.outer = spec.kind, spec.outer
        self.seq = g1 if (self.outer or spec.kind in ("token", "channel")) else None
        self.channel = g2                                                                # outer: [F, 1, *b]
        self.head = g1 if spec.kind == "head" else None                                  # [*b]
        self.a_head = None if self.head is None else self.head.exp()[None, None, None]   # [1, 1, 1, *b]

    def step_shape(self) -> tuple[int, ...]:
        """The shape of a_t for one chunk: [F or 1, 1, *b']."""
        if self.outer:
            return tuple(torch.broadcast_shapes(self.seq.shape[1:], self.channel.shape))
        return tuple(self.seq.shape[1:]) if self.seq is not None else (1, 1)

    def rate(self, steps, t: int, buf) -> torch.Tensor | None:
        """a_t = e^{lg_t} [m, F or 1, 1, *b], written into ``buf`` [m, F or 1, 1, *b']."""
        if self.kind is None:
            return None
        if self.head is not None:
            return self.a_head
        if not self.outer:
            return torch.exp(steps[t], out=buf)
        return torch.mul(steps[t], self.channel, out=buf).exp_()

    def chunk_decay(self, piece, m: int, c: int) -> torch.Tensor | None:
        """e^{Σ lg} over each chunk: [m, F or 1, 1, *b], or [1, 1, *b] shared by all chunks.
        ``piece``: the block's per-position tensor as [m, c, ...]."""
        if self.kind is None:
            return None
        if self.head is not None:
            return torch.exp(c * self.head)[None, None]
        total = piece.sum(1)
        return torch.exp(total * self.channel if self.outer else total)

    def accumulate(self, dlg, steps_grad, t: int, dsteps, dg1, dg2) -> None:
        """Add ∂L/∂lg_t (dlg [m, F, 1, *b]) to the gate's input gradients."""
        if self.head is not None:
            dg1 += _reduce(dlg.sum((0, 1, 2)), dg1)
        elif self.outer:
            dsteps[t].add_(_reduce((dlg * self.channel).sum(1, keepdim=True), dsteps[t]))
            rate = steps_grad[t]
            dg2 += _reduce((dlg * rate).sum(0), dg2)
        else:
            dsteps[t].add_(_reduce(dlg, dsteps[t]))


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


class _Buffers:
    """One block's scratch: states, gates, products; with ``chunk`` (the backward) also a
    block's states at every position. NaN-filled under tests."""

    def __init__(self, m: int, state: tuple, gate: tuple, like: torch.Tensor, chunk: int = 0):
        self.h = like.new_empty(m, *state)
        self.a = like.new_empty(m, *gate)
        self.s = like.new_empty(m, *state)
        self.states = like.new_empty(chunk, m, *state)
        if _chunked.SCRATCH_FILL is not None:
            for x in (self.h, self.a, self.s, self.states):
                x.fill_(_chunked.SCRATCH_FILL)
