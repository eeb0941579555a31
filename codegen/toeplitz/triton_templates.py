"""Text templates of the Toeplitz family's Triton kernels, launchers and wrappers, filled by
triton_gen.py: ``$name`` the section name, other ``$slots`` from ``generate``, and lines
tagged ``# [complex]``, ``# [real]``, ``# [modes]``, ``# [diagonal]``, ``# [dense]``, ``# [shift]``,
``# [bidir]``, ``# [causal]``
that ``_select`` keeps or drops for the structure; ``$head``, ``$chunk_in``, ``$chunk_out``,
``$wrapper_start`` are the PIECES shared by several templates, filled in first. MIMO SSMs and explicit kernels:
``triton_templates_mimo_explicit.py``."""

# ---- pieces shared by several templates (filled in before the slots) ----------------------

#: the section's first lines
_HEAD = '''
# ==== $name: Toeplitz mix of a $what ====

from codegen.triton import tuning as tt

${name}_CHUNK = $chunk           # tokens per chunk: the Toeplitz block is CHUNK × CHUNK
${name}_GATES = $gates   # (pre, skip, post) this mixer was generated with
'''[1:]

#: inside the loop over chunks: the chunk's tokens (in processing order), u = pre ⊙ v [T, BB]
_CHUNK_IN = '''
        o_i = i0 + o_t                           # step in processing order
        m_x = (o_i < N)[:, None] & m_b[None, :]
        if REVERSE:                              # anti-causal: token N − 1 first
            o_n = N - 1 - o_i
        else:
            o_n = o_i
        # u = pre ⊙ v for the chunk's tokens   [T, BB]
        b_u = tl.load(p_v + o_b[None, :] * s_vb + o_n[:, None] * s_vn + i_c * s_vc, mask=m_x, other=0.0).to(tl.float32)
        if USE_PRE:
            b_u *= tl.load(p_pre + o_b[None, :] * s_pb + o_n[:, None] * s_pn + i_c * s_pc, mask=m_x, other=0.0).to(tl.float32)'''[1:]

#: after b_y holds the mix: skip ⊙ u, post ⊙ ·, stored
_CHUNK_OUT = '''
        if USE_SKIP:
            b_y += tl.load(p_skip + i_c).to(tl.float32) * b_u
        if USE_POST:
            b_y *= tl.load(p_post + o_b[None, :] * s_qb + o_n[:, None] * s_qn + i_c * s_qc, mask=m_x, other=0.0).to(tl.float32)
        tl.store(p_y + o_b[None, :] * (N * C) + o_n[:, None] * C + i_c, b_y.to(p_y.dtype.element_ty), mask=m_x)'''[1:]

#: an SSM mix's callable, first lines: checks of the call, v as [B, N, C] rows and its gates
_WRAPPER_START = '''
    from codegen.toeplitz import triton_support as tzs
    from codegen.toeplitz.kernels import discretize
    tzs.check_device(v)
    given = (pre is not None, skip is not None, post is not None)
    if given != ${name}_GATES:
        raise ValueError(f"$name was generated with gates (pre, skip, post) = {${name}_GATES}, called with {given}")
    if explicit_kernel is not None or params is None:
        raise ValueError("$name is an SSM mix: it takes params, not an explicit kernel")
    if reverse_params is None or initial_state is not None or return_state:  # [bidir]
        raise ValueError("$name is bidirectional: it needs reverse_params and has no recurrent state")  # [bidir]
    lead, (N, C) = v.shape[:-2], v.shape[-2:]
    rd = torch.float32                                 # the kernel computes in fp32 (loads convert, y in v.dtype)
    u = v.reshape(-1, N, C)
    if pre is not None:
        pre = torch.broadcast_to(pre, v.shape).reshape(u.shape)
    if post is not None:
        post = torch.broadcast_to(post, v.shape).reshape(u.shape)
'''[1:-1]

PIECES = {"head": _HEAD, "chunk_in": _CHUNK_IN, "chunk_out": _CHUNK_OUT, "wrapper_start": _WRAPPER_START}

# ---- diagonal SSMs ------------------------------------------------------------------------

_DIAG_KERNEL = '''
$head

@tt.autotune(key=["N", "C", "n_mode", "REVERSE"])   # warps × stages timed once per size on a GPU
@triton.jit
def ${name}_kernel(
    p_v, p_pre, p_post, p_skip, p_y,     # v, gates [B, N, C] (strided), skip [C], y [B, N, C]
    p_taps,                              # the first T taps of each channel, K[c, 0:T], [C, T]
    p_zr, p_br, p_cr,                    # real parts of log λ, B̄ and scale·C, [C, M] each
    p_zi, p_bi, p_ci,                    # imaginary parts  # [complex]
    p_h0r, p_hNr,                        # initial / final state, real parts [B, C, M]
    p_h0i, p_hNi,                        # imaginary parts  # [complex]
    n_batch, N, C, n_mode,
    s_vb, s_vn, s_vc, s_pb, s_pn, s_pc, s_qb, s_qn, s_qc,
    T: tl.constexpr, BB: tl.constexpr, BM: tl.constexpr,
    USE_PRE: tl.constexpr, USE_SKIP: tl.constexpr, USE_POST: tl.constexpr,
    USE_H0: tl.constexpr, STORE_HN: tl.constexpr, REVERSE: tl.constexpr,
):
    """Channel i_c, batch rows i_b·BB …: y = post ⊙ (K ∗ u + skip ⊙ u), u = pre ⊙ v, chunk by
    chunk, the SSM state h_m carried from chunk to chunk. REVERSE reads the tokens backwards
    (the anti-causal mix: the backward pass, a bidirectional mix's second direction)."""
    i_c = tl.program_id(0)
    i_b = tl.program_id(1)
    o_b = i_b * BB + tl.arange(0, BB)            # batch rows
    m_b = o_b < n_batch
    o_t = tl.arange(0, T)                        # token within a chunk
    o_m = tl.arange(0, BM)                       # SSM mode (padding modes have b = c = 0)
    m_m = o_m < n_mode

    # ---- the channel's system: λ_m = exp(z_m), B̄_m = b_m, scale·C_m = c_m
    b_zr = tl.load(p_zr + i_c * n_mode + o_m, mask=m_m, other=0.0)
    b_br = tl.load(p_br + i_c * n_mode + o_m, mask=m_m, other=0.0)
    b_cr = tl.load(p_cr + i_c * n_mode + o_m, mask=m_m, other=0.0)
    b_zi = tl.load(p_zi + i_c * n_mode + o_m, mask=m_m, other=0.0)  # [complex]
    b_bi = tl.load(p_bi + i_c * n_mode + o_m, mask=m_m, other=0.0)  # [complex]
    b_ci = tl.load(p_ci + i_c * n_mode + o_m, mask=m_m, other=0.0)  # [complex]

    # ---- tables every chunk reuses
    # the Toeplitz block: b_K[t, s] = K[t − s] for s ≤ t, 0 above the diagonal
    o_d = o_t[:, None] - o_t[None, :]
    b_K = tl.load(p_taps + i_c * T + o_d, mask=o_d >= 0, other=0.0)
    # state → output: b_W[t, m] = c_m λ_m^(t+1)   [T, BM]
    e_w = (o_t[:, None] + 1).to(tl.float32)
    b_Wr = b_cr[None, :] * tl.exp(e_w * b_zr[None, :])  # [real]
    b_pr = tl.exp(e_w * b_zr[None, :]) * tl.cos(e_w * b_zi[None, :])  # [complex]
    b_pi = tl.exp(e_w * b_zr[None, :]) * tl.sin(e_w * b_zi[None, :])  # [complex]
    b_Wr = b_cr[None, :] * b_pr - b_ci[None, :] * b_pi  # [complex]
    b_Wi = b_cr[None, :] * b_pi + b_ci[None, :] * b_pr  # [complex]
    # input → state at the chunk's end: b_V[m, s] = b_m λ_m^(T−1−s)   [BM, T]
    e_v = (T - 1 - o_t[None, :]).to(tl.float32)
    b_Vr = b_br[:, None] * tl.exp(e_v * b_zr[:, None])  # [real]
    b_pr = tl.exp(e_v * b_zr[:, None]) * tl.cos(e_v * b_zi[:, None])  # [complex]
    b_pi = tl.exp(e_v * b_zr[:, None]) * tl.sin(e_v * b_zi[:, None])  # [complex]
    b_Vr = b_br[:, None] * b_pr - b_bi[:, None] * b_pi  # [complex]
    b_Vi = b_br[:, None] * b_pi + b_bi[:, None] * b_pr  # [complex]
    # the state's decay over a whole chunk, λ^T   [BM, 1]
    b_lr = tl.exp(T * b_zr)[:, None]  # [real]
    b_lr = (tl.exp(T * b_zr) * tl.cos(T * b_zi))[:, None]  # [complex]
    b_li = (tl.exp(T * b_zr) * tl.sin(T * b_zi))[:, None]  # [complex]

    # ---- the state entering the first chunk, [BM, BB]
    o_h = o_b[None, :] * (C * n_mode) + i_c * n_mode + o_m[:, None]
    m_h = m_m[:, None] & m_b[None, :]
    b_hr = tl.zeros([BM, BB], dtype=tl.float32)
    b_hi = tl.zeros([BM, BB], dtype=tl.float32)  # [complex]
    if USE_H0:
        b_hr += tl.load(p_h0r + o_h, mask=m_h, other=0.0)
        b_hi += tl.load(p_h0i + o_h, mask=m_h, other=0.0)  # [complex]

    for i0 in range(0, N, T):
$chunk_in
        # inside the chunk: the Toeplitz block times u
        b_y = tl.dot(b_K, b_u, input_precision="ieee")
        # from the earlier chunks: Re(c λ^(t+1) h)
        b_y += tl.dot(b_Wr, b_hr, input_precision="ieee")
        b_y -= tl.dot(b_Wi, b_hi, input_precision="ieee")  # [complex]
$chunk_out

        # the state leaving the chunk: h ← λ^T h + Σ_s b λ^(T−1−s) u_s
        b_Vr_c, b_lr_c = b_Vr, b_lr
        b_Vi_c, b_li_c = b_Vi, b_li  # [complex]
        if STORE_HN:
            if N - i0 < T:                       # the last chunk is short: powers for its n_in tokens
                n_in = N - i0
                e_s = tl.maximum(n_in - 1 - o_t[None, :], 0).to(tl.float32)
                b_Vr_c = b_br[:, None] * tl.exp(e_s * b_zr[:, None])  # [real]
                b_lr_c = tl.exp(n_in * b_zr)[:, None]  # [real]
                b_qr = tl.exp(e_s * b_zr[:, None]) * tl.cos(e_s * b_zi[:, None])  # [complex]
                b_qi = tl.exp(e_s * b_zr[:, None]) * tl.sin(e_s * b_zi[:, None])  # [complex]
                b_Vr_c = b_br[:, None] * b_qr - b_bi[:, None] * b_qi  # [complex]
                b_Vi_c = b_br[:, None] * b_qi + b_bi[:, None] * b_qr  # [complex]
                b_lr_c = (tl.exp(n_in * b_zr) * tl.cos(n_in * b_zi))[:, None]  # [complex]
                b_li_c = (tl.exp(n_in * b_zr) * tl.sin(n_in * b_zi))[:, None]  # [complex]
        b_hr_new = b_lr_c * b_hr + tl.dot(b_Vr_c, b_u, input_precision="ieee")  # [real]
        b_hr_new = b_lr_c * b_hr - b_li_c * b_hi + tl.dot(b_Vr_c, b_u, input_precision="ieee")  # [complex]
        b_hi = b_lr_c * b_hi + b_li_c * b_hr + tl.dot(b_Vi_c, b_u, input_precision="ieee")  # [complex]
        b_hr = b_hr_new

    if STORE_HN:
        tl.store(p_hNr + o_h, b_hr, mask=m_h)
        tl.store(p_hNi + o_h, b_hi, mask=m_h)  # [complex]
'''

_DIAG_LAUNCH = '''

def ${name}_launch(v, pre, skip, post, taps, sys, h0, reverse, want_state):
    """One pass of ${name}_kernel over v [B, N, C] (gates None or [B, N, C] views): (y, final state
    [B, C, M] or None). ``taps`` [T, C]; ``sys`` a DiagSSM with c = scale·C; ``reverse`` reads the
    tokens backwards."""
    from codegen.toeplitz import triton_support as tzs
    Bn, N, C = v.shape
    n_mode = sys.log_lam.shape[-1]
    T = ${name}_CHUNK
    y = tzs.scratch((Bn, N, C), v.dtype, v.device)
    zr, zi = tzs.split(sys.log_lam)              # complex → (real part, imaginary part)
    br, bi = tzs.split(sys.b)
    cr, ci = tzs.split(sys.c)
    h0r, h0i = tzs.split(h0)
    hNr = tzs.scratch((Bn, C, n_mode), zr.dtype, v.device) if want_state else None
    hNi = tzs.scratch((Bn, C, n_mode), zr.dtype, v.device) if want_state else None  # [complex]
    gp = pre if pre is not None else v           # placeholders: the kernel never reads an absent gate
    gq = post if post is not None else v
    BB = tzs.pow2(Bn, 16, 64)
    ${name}_kernel[(C, triton.cdiv(Bn, BB))](
        v, gp, gq, skip if skip is not None else y, y,
        taps.transpose(0, 1).contiguous(),
        zr, br, cr,
        zi, bi, ci,  # [complex]
        h0r if h0r is not None else zr, hNr if hNr is not None else zr,
        h0i if h0i is not None else zr, hNi if hNi is not None else zr,  # [complex]
        Bn, N, C, n_mode, *v.stride(), *gp.stride(), *gq.stride(),
        T=T, BB=BB, BM=tzs.pow2(n_mode),
        USE_PRE=pre is not None, USE_SKIP=skip is not None, USE_POST=post is not None,
        USE_H0=h0 is not None, STORE_HN=bool(want_state), REVERSE=bool(reverse),
    )
    if not want_state:
        return y, None
    return y, hNr  # [real]
    return y, torch.complex(hNr, hNi)  # [complex]
'''

# ---- dense SSMs (DPLR) ---------------------------------------------------------------------

_DENSE_KERNEL = '''
$head

@tt.autotune(key=["N", "C", "n_state", "REVERSE"])   # warps × stages timed once per size on a GPU
@triton.jit
def ${name}_kernel(
    p_v, p_pre, p_post, p_skip, p_y,     # v, gates [B, N, C] (strided), skip [C], y [B, N, C]
    p_taps,                              # the first T taps of each channel, K[c, 0:T], [C, T]
    p_wr, p_wi,                          # state → output: W[c, t, :] = scale·C Ā^(t+1), [C, T, S]
    p_xr, p_xi,                          # input → state at the chunk's end: X[c, :, s] = Ā^(T−1−s) B̄, [C, S, T]
    p_ar, p_ai,                          # the state's transition over a whole chunk, Ā^T, [C, S, S]
    p_xlr, p_xli, p_alr, p_ali,          # X and Ā^n for the last chunk when it is short (n tokens)
    p_h0r, p_h0i, p_hNr, p_hNi,          # initial / final state, real and imaginary parts [B, C, S]
    n_batch, N, C, n_state,
    s_vb, s_vn, s_vc, s_pb, s_pn, s_pc, s_qb, s_qn, s_qc,
    T: tl.constexpr, BB: tl.constexpr, BS: tl.constexpr,
    USE_PRE: tl.constexpr, USE_SKIP: tl.constexpr, USE_POST: tl.constexpr,
    USE_H0: tl.constexpr, STORE_HN: tl.constexpr, REVERSE: tl.constexpr,
):
    """Channel i_c, batch rows i_b·BB …: y = post ⊙ (K ∗ u + skip ⊙ u), u = pre ⊙ v, chunk by
    chunk, the dense state h (S complex numbers per batch row) carried from chunk to chunk by
    matrix products with the tables the launcher computed (PyTorch, O(C·S²·log T)). REVERSE
    reads the tokens backwards (the anti-causal mix: the backward pass, a bidirectional mix's
    second direction)."""
    i_c = tl.program_id(0)
    i_b = tl.program_id(1)
    o_b = i_b * BB + tl.arange(0, BB)            # batch rows
    m_b = o_b < n_batch
    o_t = tl.arange(0, T)                        # token within a chunk
    o_s = tl.arange(0, BS)                       # state index (padding rows and columns read as 0)
    m_s = o_s < n_state

    # ---- tables every chunk reuses (complex, as real and imaginary parts); held in registers:
    # at S = T = 64 seven 64×64 fp32 blocks per program, which may spill on a GPU (unmeasured)
    # the Toeplitz block: b_K[t, s] = K[t − s] for s ≤ t, 0 above the diagonal
    o_d = o_t[:, None] - o_t[None, :]
    b_K = tl.load(p_taps + i_c * T + o_d, mask=o_d >= 0, other=0.0)
    o_w = i_c * (T * n_state) + o_t[:, None] * n_state + o_s[None, :]          # [T, BS]
    b_Wr = tl.load(p_wr + o_w, mask=m_s[None, :], other=0.0)
    b_Wi = tl.load(p_wi + o_w, mask=m_s[None, :], other=0.0)
    o_x = i_c * (n_state * T) + o_s[:, None] * T + o_t[None, :]                # [BS, T]
    b_Xr = tl.load(p_xr + o_x, mask=m_s[:, None], other=0.0)
    b_Xi = tl.load(p_xi + o_x, mask=m_s[:, None], other=0.0)
    o_a = i_c * (n_state * n_state) + o_s[:, None] * n_state + o_s[None, :]    # [BS, BS]
    m_a = m_s[:, None] & m_s[None, :]
    b_Ar = tl.load(p_ar + o_a, mask=m_a, other=0.0)
    b_Ai = tl.load(p_ai + o_a, mask=m_a, other=0.0)

    # ---- the state entering the first chunk, [BS, BB]
    o_h = o_b[None, :] * (C * n_state) + i_c * n_state + o_s[:, None]
    m_h = m_s[:, None] & m_b[None, :]
    b_hr = tl.zeros([BS, BB], dtype=tl.float32)
    b_hi = tl.zeros([BS, BB], dtype=tl.float32)
    if USE_H0:
        b_hr += tl.load(p_h0r + o_h, mask=m_h, other=0.0)
        b_hi += tl.load(p_h0i + o_h, mask=m_h, other=0.0)

    for i0 in range(0, N, T):
$chunk_in
        # inside the chunk: the Toeplitz block times u; from the earlier chunks: Re(W h)
        b_y = tl.dot(b_K, b_u, input_precision="ieee")
        b_y += tl.dot(b_Wr, b_hr, input_precision="ieee") - tl.dot(b_Wi, b_hi, input_precision="ieee")
$chunk_out

        # the state leaving the chunk: h ← Ā^T h + X u (complex products as four real ones)
        b_Xr_c, b_Xi_c, b_Ar_c, b_Ai_c = b_Xr, b_Xi, b_Ar, b_Ai
        if STORE_HN:
            if N - i0 < T:                       # the last chunk is short: its own tables
                b_Xr_c = tl.load(p_xlr + o_x, mask=m_s[:, None], other=0.0)
                b_Xi_c = tl.load(p_xli + o_x, mask=m_s[:, None], other=0.0)
                b_Ar_c = tl.load(p_alr + o_a, mask=m_a, other=0.0)
                b_Ai_c = tl.load(p_ali + o_a, mask=m_a, other=0.0)
        b_hr_new = tl.dot(b_Ar_c, b_hr, input_precision="ieee") - tl.dot(b_Ai_c, b_hi, input_precision="ieee")
        b_hr_new += tl.dot(b_Xr_c, b_u, input_precision="ieee")
        b_hi = tl.dot(b_Ar_c, b_hi, input_precision="ieee") + tl.dot(b_Ai_c, b_hr, input_precision="ieee") \
            + tl.dot(b_Xi_c, b_u, input_precision="ieee")
        b_hr = b_hr_new

    if STORE_HN:
        tl.store(p_hNr + o_h, b_hr, mask=m_h)
        tl.store(p_hNi + o_h, b_hi, mask=m_h)
'''

_DENSE_LAUNCH = '''

def ${name}_launch(v, pre, skip, post, taps, sys, h0, reverse, want_state):
    """One pass of ${name}_kernel over v [B, N, C] (gates None or [B, N, C] views): (y, final state
    [B, C, S] or None). ``taps`` [T, C]; ``sys`` a DenseSSM with c = scale·C (its tables:
    ``triton_support.dense_tables``); ``reverse`` reads the tokens backwards."""
    from codegen.toeplitz import triton_support as tzs
    Bn, N, C = v.shape
    n_state = sys.b.shape[-1]
    T = ${name}_CHUNK
    tab = tzs.dense_tables(sys, T, N % T if want_state else 0)
    y = tzs.scratch((Bn, N, C), v.dtype, v.device)
    h0r, h0i = tzs.split(h0.to(sys.A.dtype) if h0 is not None else None)
    hNr = tzs.scratch((Bn, C, n_state), torch.float32, v.device) if want_state else None
    hNi = tzs.scratch((Bn, C, n_state), torch.float32, v.device) if want_state else None
    gp = pre if pre is not None else v           # placeholders: the kernel never reads an absent gate
    gq = post if post is not None else v
    BB = tzs.pow2(Bn, 16, 64)
    ${name}_kernel[(C, triton.cdiv(Bn, BB))](
        v, gp, gq, skip if skip is not None else y, y,
        taps.transpose(0, 1).contiguous(),
        *tab.w, *tab.x, *tab.a, *tab.x_last, *tab.a_last,
        h0r if h0r is not None else y, h0i if h0i is not None else y,
        hNr if hNr is not None else y, hNi if hNi is not None else y,
        Bn, N, C, n_state, *v.stride(), *gp.stride(), *gq.stride(),
        T=T, BB=BB, BS=tzs.pow2(n_state),
        USE_PRE=pre is not None, USE_SKIP=skip is not None, USE_POST=post is not None,
        USE_H0=h0 is not None, STORE_HN=bool(want_state), REVERSE=bool(reverse),
    )
    if not want_state:
        return y, None
    return y, torch.complex(hNr, hNi)
'''

# ---- shift SSMs ---------------------------------------------------------------------------

_SHIFT_KERNEL = '''
# ==== $name: Toeplitz mix of a $what ====

from codegen.triton import tuning as tt

${name}_CHUNK = $chunk           # tokens per program
${name}_GATES = $gates   # (pre, skip, post) this mixer was generated with


@tt.autotune(key=["N", "C", "S", "REVERSE"])   # warps × stages timed once per size on a GPU
@triton.jit
def ${name}_kernel(
    p_v, p_pre, p_post, p_skip, p_y,     # v, gates [B, N, C] (strided), skip [C], y [B, N, C]
    p_taps, p_h0,                        # taps [C, S]; initial shift register [B, C, S] = (u_−1, …, u_−S)
    N, C, S,
    s_vb, s_vn, s_vc, s_pb, s_pn, s_pc, s_qb, s_qn, s_qc,
    BN: tl.constexpr, BC: tl.constexpr,
    USE_PRE: tl.constexpr, USE_SKIP: tl.constexpr, USE_POST: tl.constexpr,
    USE_H0: tl.constexpr, REVERSE: tl.constexpr,
):
    """Tokens i_n·BN …, channels i_c·BC …, batch row i_b: y_t = post_t (Σ_k K[k] u_(t−k) + skip u_t),
    u = pre ⊙ v, a direct S-tap convolution. REVERSE reads the tokens backwards (anti-causal)."""
    i_n = tl.program_id(0)
    i_c = tl.program_id(1)
    i_b = tl.program_id(2)
    o_i = i_n * BN + tl.arange(0, BN)            # output step in processing order
    o_c = i_c * BC + tl.arange(0, BC)
    m_i = o_i < N
    m_c = o_c < C
    b_y = tl.zeros([BN, BC], dtype=tl.float32)
    for k in range(0, S):                        # tap k reads the input k steps back
        o_j = o_i - k
        m_j = (o_j >= 0) & m_i
        if REVERSE:
            o_n = N - 1 - o_j
        else:
            o_n = o_j
        m_x = m_j[:, None] & m_c[None, :]
        b_x = tl.load(p_v + i_b * s_vb + o_n[:, None] * s_vn + o_c[None, :] * s_vc, mask=m_x, other=0.0).to(tl.float32)
        if USE_PRE:
            b_x *= tl.load(p_pre + i_b * s_pb + o_n[:, None] * s_pn + o_c[None, :] * s_pc, mask=m_x, other=0.0).to(tl.float32)
        if USE_H0:                               # before token 0: the shift register, u_(−1−j) = h0[j]
            m_h = ((o_j < 0) & m_i)[:, None] & m_c[None, :]
            b_x += tl.load(p_h0 + i_b * (C * S) + o_c[None, :] * S + (-1 - o_j)[:, None], mask=m_h, other=0.0).to(tl.float32)
        b_y += tl.load(p_taps + o_c * S + k, mask=m_c, other=0.0).to(tl.float32)[None, :] * b_x

    if REVERSE:
        o_n = N - 1 - o_i
    else:
        o_n = o_i
    m_x = m_i[:, None] & m_c[None, :]
    if USE_SKIP:
        b_u = tl.load(p_v + i_b * s_vb + o_n[:, None] * s_vn + o_c[None, :] * s_vc, mask=m_x, other=0.0).to(tl.float32)
        if USE_PRE:
            b_u *= tl.load(p_pre + i_b * s_pb + o_n[:, None] * s_pn + o_c[None, :] * s_pc, mask=m_x, other=0.0).to(tl.float32)
        b_y += tl.load(p_skip + o_c, mask=m_c, other=0.0).to(tl.float32)[None, :] * b_u
    if USE_POST:
        b_y *= tl.load(p_post + i_b * s_qb + o_n[:, None] * s_qn + o_c[None, :] * s_qc, mask=m_x, other=0.0).to(tl.float32)
    tl.store(p_y + i_b * (N * C) + o_n[:, None] * C + o_c[None, :], b_y.to(p_y.dtype.element_ty), mask=m_x)
'''

_SHIFT_LAUNCH = '''

def ${name}_launch(v, pre, skip, post, taps, sys, h0, reverse, want_state):
    """One pass of ${name}_kernel over v [B, N, C]: (y, final shift register [B, C, S] or None).
    The taps come from ``sys`` (a ShiftSSM, [C, S]); ``taps`` is unused. The final register is the
    last S inputs (PyTorch slicing, O(S·C))."""
    from codegen.toeplitz import state as tz_state
    from codegen.toeplitz import triton_support as tzs
    Bn, N, C = v.shape
    S = sys.taps.shape[1]
    y = tzs.scratch((Bn, N, C), v.dtype, v.device)
    gp = pre if pre is not None else v           # placeholders: the kernel never reads an absent gate
    gq = post if post is not None else v
    BN, BC = ${name}_CHUNK, tzs.pow2(C, 16, 64)
    ${name}_kernel[(triton.cdiv(N, BN), triton.cdiv(C, BC), Bn)](
        v, gp, gq, skip if skip is not None else y, y,
        sys.taps.contiguous(), h0.contiguous() if h0 is not None else y,
        N, C, S, *v.stride(), *gp.stride(), *gq.stride(),
        BN=BN, BC=BC,
        USE_PRE=pre is not None, USE_SKIP=skip is not None, USE_POST=post is not None,
        USE_H0=h0 is not None, REVERSE=bool(reverse),
    )
    if not want_state:
        return y, None
    tail = v[:, max(0, N - S):]
    if pre is not None:
        tail = tail * pre[:, max(0, N - S):]
    return y, tz_state.final_state(sys, tail.to(sys.taps.dtype), h0)
'''

# ---- the callable -------------------------------------------------------------------------

_WRAPPER = '''

def ${name}_parts(sys, length):
    """(taps [L, C], z, b, c) of a discretised system: its first ``length`` taps and, for a
    diagonal SSM, λ = exp(z), B̄ = b and the output weights c = scale·C (a dense one: Ā for z)."""
    from codegen.toeplitz.kernels import system_kernel  # [modes]
    if sys.from_end is not None:  # [diagonal]
        raise ValueError("a DSS mode with Re(ΔΛ) > 0 grows along the sequence: the chunked scan cannot "  # [diagonal]
                         "carry it; run this mixer with the torch backend (algorithm fft)")  # [diagonal]
    return system_kernel(sys, length), sys.log_lam, sys.b, sys.scale * sys.c  # [diagonal]
    return system_kernel(sys, length), sys.A, sys.b, sys.scale * sys.c  # [dense]
    return sys.taps.transpose(0, 1), None, None, sys.taps    # a shift SSM: K[k] = taps[:, k], k < S  # [shift]


def $name(
    v, params=None, reverse_params=None, explicit_kernel=None, *, pre=None, skip=None, post=None,
    initial_state=None, return_state=False, kernel_length=None, diagonal="once",
):
    """$what.
    v [..., N, C] → y [..., N, C] = post ⊙ (K ∗ (pre ⊙ v) + skip ⊙ pre ⊙ v), K the SSM's kernel
    (toeplitz_mix's semantics, ``diagonal`` too). pre / post broadcast to v's shape, skip [C]. A
    causal mix carries the SSM's state: ``initial_state`` [..., C, M] in, ``return_state=True``
    → (y, final state)."""
$wrapper_start
    T = ${name}_CHUNK
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in [*params.values(), *(reverse_params or {}).values()])
    # the discretised system (PyTorch, O(C·state)) and its first taps; with gradients, all N taps,
    # through which the kernel's tap gradient reaches the parameters
    sys = discretize($kind, {k: t.to(rd) for k, t in params.items()}, disc=$disc, conj=$conj, length=kernel_length or N)
    length = max(T, N) if grad else T
    taps, z, b, c = ${name}_parts(sys, length)
    h0 = None
    if initial_state is not None:
        h0 = initial_state.reshape(u.shape[0], *initial_state.shape[len(lead):])
        h0 = h0.to(z.dtype if z is not None else rd)
    y, hN = tzs.SSMMix.apply(${name}_launch, T, False, bool(return_state), u, pre, skip, post, taps, z, b, c, h0)  # [causal]
    y, _ = tzs.SSMMix.apply(${name}_launch, T, False, False, u, pre, skip, None, taps, z, b, c, None)  # [bidir]
    # the reverse direction: the reverse SSM read backwards; diagonal "once": its tap 0 taken out  # [bidir]
    # through the skip; "twice": kept; "shift": the pass read one token later (S4's layout)  # [bidir]
    rsys = discretize($kind, {k: t.to(rd) for k, t in reverse_params.items()}, disc=$disc, conj=$conj, length=kernel_length or N)  # [bidir]
    rtaps, rz, rb, rc = ${name}_parts(rsys, length)  # [bidir]
    rskip = -rtaps[0] if diagonal == "once" else None  # [bidir]
    yr, _ = tzs.SSMMix.apply(${name}_launch, T, True, False, u, pre, rskip, None, rtaps, rz, rb, rc, None)  # [bidir]
    if diagonal == "shift":  # token i: Σ_{j>i} K_rev[j − i − 1] u_j  # [bidir]
        yr = torch.cat([yr[:, 1:], torch.zeros_like(yr[:, :1])], dim=1)  # [bidir]
    y = (y + yr) * post if post is not None else y + yr  # [bidir]
    y = y.reshape(*lead, N, C)
    if return_state:  # [causal]
        return y, hN.reshape(*lead, *hN.shape[1:])  # [causal]
    return y
'''
