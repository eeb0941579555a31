"""Text templates of the linear family's Triton kernels and wrappers, filled by triton_gen.py
(``$P`` the section name, ``$G`` "g, " when there is a gate, and the other ``${...}`` slots
that the generator's ``_Gen.slots`` lists)."""

# ---- kernel templates (slots: $P the section name, $G "g, " when there is a gate) -----------


#: every kernel's first lines: program (value block i_v, batch·head i_bh), offsets and masks
#: of the state's F × BV tile (filled in as $PROGRAM)
PROGRAM = """    i_v, i_bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < F, o_v < V
    m_kv = m_k[:, None] & m_v[None, :]"""

_CHUNK_FWD = '''
@tt.autotune(key=["N", "F", "V"])   # warps × stages timed once per size on a GPU
@triton.jit
def ${P}_fwd_kernel(q, k, v, ${G}h0, o, ht, N, F, V,
        C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, USE_H0: tl.constexpr):
    """Chunked forward. One program per (block of BV values, batch·head): chunks of C tokens in
    order, the intra-chunk part as a C×C product, the state S [F, BV] carried in registers."""
$PROGRAM
    o_c = tl.arange(0, C)
    m_causal = o_c[:, None] >= o_c[None, :]                  # key j ≤ query i inside a chunk
    q, k = q + i_bh * N * F, k + i_bh * N * F
    v, o = v + i_bh * N * V, o + i_bh * N * V
$GATE_BASE
    # the state S (features × this program's values), from the initial state or 0
    b_S = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_H0:
        b_S += tl.load(h0 + i_bh * F * V + o_k[:, None] * V + o_v[None, :], mask=m_kv, other=0.0)
    for i_t in range(0, tl.cdiv(N, C)):
        o_t = i_t * C + o_c
        m_t = o_t < N
        m_tk, m_tv = m_t[:, None] & m_k[None, :], m_t[:, None] & m_v[None, :]
$BODY
        # o = the chunk's own part + the state entering it, seen by each query through its decay
        b_o = tl.dot(b_A, b_v, input_precision="ieee") + tl.dot($Q_IN, b_S, input_precision="ieee")
$SCALE_O
        tl.store(o + o_t[:, None] * V + o_v[None, :], b_o, mask=m_tv)
        # state passing: S ← $S_DOC
        b_S = $CARRY + tl.dot(tl.trans($K_OUT), b_v, input_precision="ieee")
    tl.store(ht + i_bh * F * V + o_k[:, None] * V + o_v[None, :], b_S, mask=m_kv)
'''

_CHUNK_BWD = '''
@triton.jit
def ${P}_bwd_kernel(q, k, v, ${G}h0, do, dht, dq, dk, dv, ${DG}dh0, N, F, V, BH,
        C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, USE_H0: tl.constexpr):
    """Chunked backward, recomputing the forward. Pass 1 (chunks in order, carrying S): ∂φ(q).
    Pass 2 (chunks in reverse, carrying ∂S from the final state's gradient): ∂φ(k), ∂v, ∂S_0.
    dq, dk [NV, BH, N, F] are partial sums over this program's values (summed afterwards)."""
$PROGRAM
    o_c = tl.arange(0, C)
    m_causal = o_c[:, None] >= o_c[None, :]
    q, k = q + i_bh * N * F, k + i_bh * N * F
    v, do, dv = v + i_bh * N * V, do + i_bh * N * V, dv + i_bh * N * V
    dq, dk = dq + (i_v * BH + i_bh) * N * F, dk + (i_v * BH + i_bh) * N * F
$GATE_BASE
$DG_BASE
    n_chunks = tl.cdiv(N, C)
    # ---- pass 1: forward over the chunks, S = the state entering each ----
    b_S = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_H0:
        b_S += tl.load(h0 + i_bh * F * V + o_k[:, None] * V + o_v[None, :], mask=m_kv, other=0.0)
    for i_t in range(0, n_chunks):
        o_t = i_t * C + o_c
        m_t = o_t < N
        m_tk, m_tv = m_t[:, None] & m_k[None, :], m_t[:, None] & m_v[None, :]
$PASS1
    # ---- pass 2: backward over the chunks, dS = ∂L/∂(the state leaving each) ----
    b_dS = tl.load(dht + i_bh * F * V + o_k[:, None] * V + o_v[None, :], mask=m_kv, other=0.0)
    for i_r in range(0, n_chunks):
        i_t = n_chunks - 1 - i_r
        o_t = i_t * C + o_c
        m_t = o_t < N
        m_tk, m_tv = m_t[:, None] & m_k[None, :], m_t[:, None] & m_v[None, :]
$PASS2
    if USE_H0:
        tl.store(dh0 + i_bh * F * V + o_k[:, None] * V + o_v[None, :], b_dS, mask=m_kv)
'''

_SCAN_FWD = '''
@tt.autotune(key=["N", "F", "V"])
@triton.jit
def ${P}_scan_fwd_kernel(q, k, v, ${G}h0, o, ht, N, F, V,
        BK: tl.constexpr, BV: tl.constexpr, USE_H0: tl.constexpr):
    """The recurrence one token at a time, the state S [F, BV] in registers (decoding; tiny V)."""
$PROGRAM
    q, k = q + i_bh * N * F, k + i_bh * N * F
    v, o = v + i_bh * N * V, o + i_bh * N * V
$GATE_BASE
$HEAD_A
    b_S = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_H0:
        b_S += tl.load(h0 + i_bh * F * V + o_k[:, None] * V + o_v[None, :], mask=m_kv, other=0.0)
    for t in range(0, N):
$BODY
    tl.store(ht + i_bh * F * V + o_k[:, None] * V + o_v[None, :], b_S, mask=m_kv)
'''

_SCAN_BWD = '''
@triton.jit
def ${P}_scan_bwd_kernel(q, k, v, ${G}h0, do, dht, dq, dk, dv, ${DG}dh0, N, F, V, BH,
        BK: tl.constexpr, BV: tl.constexpr, USE_H0: tl.constexpr):
    """Backward of the recurrence: pass 1 replays S_t forward for ∂φ(q_t); pass 2 walks back
    carrying ∂S_t for ∂φ(k_t), ∂v_t and, at the end, ∂S_0. dq, dk are partial over values."""
$PROGRAM
    q, k = q + i_bh * N * F, k + i_bh * N * F
    v, do, dv = v + i_bh * N * V, do + i_bh * N * V, dv + i_bh * N * V
    dq, dk = dq + (i_v * BH + i_bh) * N * F, dk + (i_v * BH + i_bh) * N * F
$GATE_BASE
$HEAD_A
$DG_BASE
    # ---- pass 1: forward, S_t after token t ----
    b_S = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_H0:
        b_S += tl.load(h0 + i_bh * F * V + o_k[:, None] * V + o_v[None, :], mask=m_kv, other=0.0)
    for t in range(0, N):
$PASS1
    # ---- pass 2: backward, dS = ∂L/∂S_t ----
    b_dS = tl.load(dht + i_bh * F * V + o_k[:, None] * V + o_v[None, :], mask=m_kv, other=0.0)
    for i_r in range(0, N):
        t = N - 1 - i_r
$PASS2
    if USE_H0:
        tl.store(dh0 + i_bh * F * V + o_k[:, None] * V + o_v[None, :], b_dS, mask=m_kv)
'''

_GLOBAL_FWD = '''
@tt.autotune(key=["NQ", "NK", "F", "V"])
@triton.jit
def ${P}_global_fwd_kernel(q, k, v, h0, o, ht, NQ, NK, F, V,
        C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, USE_H0: tl.constexpr):
    """Non-causal: S = S_0 + φ(K)ᵀV over the key chunks, then o = scale · φ(Q) S."""
$PROGRAM
    o_c = tl.arange(0, C)
    q, o = q + i_bh * NQ * F, o + i_bh * NQ * V
    k, v = k + i_bh * NK * F, v + i_bh * NK * V
    b_S = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_H0:
        b_S += tl.load(h0 + i_bh * F * V + o_k[:, None] * V + o_v[None, :], mask=m_kv, other=0.0)
    for i_t in range(0, tl.cdiv(NK, C)):                      # S += φ(K)ᵀ V, chunk by chunk
        o_t = i_t * C + o_c
        m_t = o_t < NK
        m_tk, m_tv = m_t[:, None] & m_k[None, :], m_t[:, None] & m_v[None, :]
$LOAD_K
        b_v = tl.load(v + o_t[:, None] * V + o_v[None, :], mask=m_tv, other=0.0)
        b_S += tl.dot(tl.trans(b_k), b_v, input_precision="ieee")
    tl.store(ht + i_bh * F * V + o_k[:, None] * V + o_v[None, :], b_S, mask=m_kv)
    for i_t in range(0, tl.cdiv(NQ, C)):                      # o = φ(Q) S
        o_t = i_t * C + o_c
        m_t = o_t < NQ
        m_tk, m_tv = m_t[:, None] & m_k[None, :], m_t[:, None] & m_v[None, :]
$LOAD_Q
        b_o = tl.dot(b_q, b_S, input_precision="ieee")
$SCALE_O
        tl.store(o + o_t[:, None] * V + o_v[None, :], b_o, mask=m_tv)
'''

_GLOBAL_BWD = '''
@triton.jit
def ${P}_global_bwd_kernel(q, k, v, ht, do, dht, dq, dk, dv, dh0, NQ, NK, F, V, BH,
        C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr):
    """Non-causal backward from the global state S (ht): ∂φ(q) = do Sᵀ; ∂S = φ(Q)ᵀ do + ∂S_final;
    ∂φ(k) = v ∂Sᵀ; ∂v = φ(k) ∂S; ∂S_0 = ∂S. dq, dk are partial over this program's values."""
$PROGRAM
    o_c = tl.arange(0, C)
    q, do = q + i_bh * NQ * F, do + i_bh * NQ * V
    k, v, dv = k + i_bh * NK * F, v + i_bh * NK * V, dv + i_bh * NK * V
    dq, dk = dq + (i_v * BH + i_bh) * NQ * F, dk + (i_v * BH + i_bh) * NK * F
    b_S = tl.load(ht + i_bh * F * V + o_k[:, None] * V + o_v[None, :], mask=m_kv, other=0.0)
    b_dS = tl.load(dht + i_bh * F * V + o_k[:, None] * V + o_v[None, :], mask=m_kv, other=0.0)
    for i_t in range(0, tl.cdiv(NQ, C)):
        o_t = i_t * C + o_c
        m_t = o_t < NQ
        m_tk, m_tv = m_t[:, None] & m_k[None, :], m_t[:, None] & m_v[None, :]
$LOAD_Q
$LOAD_DO
        b_dq = tl.dot(b_do, tl.trans(b_S), input_precision="ieee")
        tl.store(dq + o_t[:, None] * F + o_k[None, :], $DQ, mask=m_tk)
        b_dS += tl.dot(tl.trans(b_q), b_do, input_precision="ieee")
    for i_t in range(0, tl.cdiv(NK, C)):
        o_t = i_t * C + o_c
        m_t = o_t < NK
        m_tk, m_tv = m_t[:, None] & m_k[None, :], m_t[:, None] & m_v[None, :]
$LOAD_K
        b_v = tl.load(v + o_t[:, None] * V + o_v[None, :], mask=m_tv, other=0.0)
        b_dk = tl.dot(b_v, tl.trans(b_dS), input_precision="ieee")
        tl.store(dk + o_t[:, None] * F + o_k[None, :], $DK, mask=m_tk)
        tl.store(dv + o_t[:, None] * V + o_v[None, :], tl.dot(b_k, b_dS, input_precision="ieee"), mask=m_tv)
    tl.store(dh0 + i_bh * F * V + o_k[:, None] * V + o_v[None, :], b_dS, mask=m_kv)
'''

_FUNCTION = '''
def ${P}_blocks(f, nv, scan):
    """(BK, BV): all F features in one block; values in blocks of at most ${P}_BLOCK_V. The
    chunked kernels' tl.dot needs tiles of at least 16."""
    if scan:
        return lx.block(f), lx.block(nv, hi=${P}_BLOCK_V)
    return lx.block(f, lo=16), lx.block(nv, lo=16, hi=${P}_BLOCK_V)


class ${P}_Attention(torch.autograd.Function):
    """The kernels under autograd. Flat inputs: q, k [BH, N, F] (raw: φ is applied in the
    kernels), v [BH, N, V], g the log-gate or None, h0 [BH, F, V] or None; ``scan``: the
    sequential kernels instead of the chunked ones. Returns (o [BH, N, V], state [BH, F, V])."""

    @staticmethod
    def forward(ctx, q, k, v, g, h0, scan):
        bh, n, f = q.shape
        nv = v.shape[-1]
        o = lx.scratch(bh, n, nv, device=q.device)
        ht = lx.scratch(bh, f, nv, device=q.device)
        h0_ptr = q if h0 is None else h0                   # any pointer when USE_H0 is False
        bk, bv = ${P}_blocks(f, nv, scan)
        if scan:
            ${P}_scan_fwd_kernel[(triton.cdiv(nv, bv), bh)](
                q, k, v, ${G}h0_ptr, o, ht, n, f, nv, BK=bk, BV=bv, USE_H0=h0 is not None)
$FWD_CHUNKED
        ctx.save_for_backward(q, k, v, g, h0, ht)
        ctx.scan = scan
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        q, k, v, g, h0, ht = ctx.saved_tensors
        bh, n, f = q.shape
        nv = v.shape[-1]
        bk, bv = ${P}_blocks(f, nv, ctx.scan)
        n_v = triton.cdiv(nv, bv)
        dq = lx.scratch(n_v, bh, n, f, device=q.device)       # partial sums, one per value block
        dk = lx.scratch(n_v, bh, n, f, device=q.device)
        dv = lx.scratch(bh, n, nv, device=q.device)
        dh0 = q if h0 is None else lx.scratch(bh, f, nv, device=q.device)
$DG_ALLOC
        args = (q, k, v, ${G}q if h0 is None else h0, do.contiguous(), dht.contiguous(), dq, dk, dv, ${DG}dh0, n, f, nv, bh)
        if ctx.scan:
            ${P}_scan_bwd_kernel[(n_v, bh)](*args, BK=bk, BV=bv, USE_H0=h0 is not None)
$BWD_CHUNKED
        dgate = None
$GATE_GRAD
        return dq.sum(0), dk.sum(0), dv, dgate, None if h0 is None else dh0, None
'''

_GLOBAL_FUNCTION = '''
class ${P}_Attention(torch.autograd.Function):
    """The non-causal kernels under autograd: q [BH, NQ, F], k [BH, NK, F] (raw), v [BH, NK, V],
    h0 [BH, F, V] or None. Returns (o [BH, NQ, V], the global state [BH, F, V])."""

    @staticmethod
    def forward(ctx, q, k, v, g, h0, scan):
        bh, nq, f = q.shape
        nk, nv = v.shape[-2], v.shape[-1]
        bk, bv = lx.block(f, lo=16), lx.block(nv, lo=16, hi=${P}_BLOCK_V)
        o = lx.scratch(bh, nq, nv, device=q.device)
        ht = lx.scratch(bh, f, nv, device=q.device)
        ${P}_global_fwd_kernel[(triton.cdiv(nv, bv), bh)](q, k, v, q if h0 is None else h0, o, ht, nq, nk, f, nv,
                                                           C=${P}_CHUNK, BK=bk, BV=bv, USE_H0=h0 is not None)
        ctx.save_for_backward(q, k, v, ht)
        ctx.has_h0 = h0 is not None
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        q, k, v, ht = ctx.saved_tensors
        bh, nq, f = q.shape
        nk, nv = v.shape[-2], v.shape[-1]
        bk, bv = lx.block(f, lo=16), lx.block(nv, lo=16, hi=${P}_BLOCK_V)
        n_v = triton.cdiv(nv, bv)
        dq = lx.scratch(n_v, bh, nq, f, device=q.device)
        dk = lx.scratch(n_v, bh, nk, f, device=q.device)
        dv = lx.scratch(bh, nk, nv, device=q.device)
        dh0 = lx.scratch(bh, f, nv, device=q.device)
        ${P}_global_bwd_kernel[(n_v, bh)](q, k, v, ht, do.contiguous(), dht.contiguous(), dq, dk, dv, dh0,
                                          nq, nk, f, nv, bh, C=${P}_CHUNK, BK=bk, BV=bv)
        return dq.sum(0), dk.sum(0), dv, None, dh0 if ctx.has_h0 else None, None
'''


_ENTRY = '''
def ${P}(q, k, v, decay=None, projection=None, initial_state=None, return_state=False):
    """Linear attention: q, k [..., N, Dk]; v [..., N, Dv] -> o [..., N, Dv] (with ``return_state``
    also the final state [..., F, Dv${PLUS1}]). Leading dims broadcast, as in
    codegen.linear.torch_impl.linear_attention; computed in fp32, o cast to v's dtype."""
    lx.check_device(q, k, v)
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q and k widths differ: {q.shape[-1]} vs {k.shape[-1]}")
    $LENGTHS
        raise ValueError(f"sequence lengths differ: q {q.shape[-2]}, k {k.shape[-2]}, v {v.shape[-2]}")
    $NO_DECAY
    out_dtype = v.dtype
$FEATS
    v = v.float()
$NORM_V
    n, f, nv = fq.shape[-2], fq.shape[-1], v.shape[-1]
    lead = [fq.shape[:-2], fk.shape[:-2], v.shape[:-2]]
$GATE_PREP
    if initial_state is not None:
        if initial_state.shape[-2:] != (f, nv):
            raise ValueError(f"initial_state must be [..., {f}, {nv}], got {tuple(initial_state.shape)}")
        lead.append(initial_state.shape[:-2])
    batch = torch.broadcast_shapes(*lead)
    if n == 0:                                          # nothing to run: no tokens
        state = torch.zeros(*batch, f, nv, device=v.device) if initial_state is None else \\
            initial_state.float().expand(*batch, f, nv)
        o = torch.zeros(*batch, 0, $OUT_V, dtype=out_dtype, device=v.device)
        return (o, state) if return_state else o
    # everything flat: [batch·heads, N, ·], contiguous fp32 (autograd sums the broadcasts back)
    qf = lx.flat(fq, batch, (n, f))
    kf = lx.flat(fk, batch, (fk.shape[-2], f))
    vf = lx.flat(v, batch, (v.shape[-2], nv))
    gf = $GATE_FLAT
    h0 = None if initial_state is None else lx.flat(initial_state, batch, (f, nv))
    scan = $SCAN
    o, state = ${P}_Attention.apply(qf, kf, vf, gf, h0, scan)
    o = o.reshape(*batch, n, nv)
$NORM_O
    o = o.to(out_dtype)
    return (o, state.reshape(*batch, f, nv)) if return_state else o
'''
