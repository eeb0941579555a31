"""Text templates of the Toeplitz family's Triton sections for MIMO diagonal SSMs (S5) and
explicit kernels (Hyena's long convolutions), filled by triton_gen.py as in
``triton_templates.py`` (same ``$slots``, line tags and PIECES)."""

# ---- MIMO diagonal SSMs (S5) ----------------------------------------------------------------

_MIMO_KERNEL = '''
# ==== $name: Toeplitz mix of a $what ====

from codegen.triton import tuning as tt

${name}_CHUNK = $chunk           # tokens per chunk
${name}_MODE_BLOCK = 64          # modes per program (more modes: several programs, their outputs summed)
${name}_GATES = $gates   # (pre, skip, post) this mixer was generated with


@triton.jit
def ${name}_scan_step(ar1, ai1, xr1, xi1, ar2, ai2, xr2, xi2):
    """Two consecutive spans of h ← λ h + x (complex, as re / im) joined: the first span's
    (decay a₁, state x₁) followed by the second's gives (a₁a₂, a₂x₁ + x₂)."""
    return (ar1 * ar2 - ai1 * ai2, ar1 * ai2 + ai1 * ar2,
            ar2 * xr1 - ai2 * xi1 + xr2, ar2 * xi1 + ai2 * xr1 + xi2)


@tt.autotune(key=["N", "C_in", "C_out", "n_mode", "REVERSE"])   # warps × stages timed once per size on a GPU
@triton.jit
def ${name}_kernel(
    p_v, p_pre, p_post, p_skip, p_y,     # v, pre [B, N, C_in], post [B, N, C_out] (strided); skip [C]; y [G, B, N, C_out]
    p_zr, p_zi,                          # log λ [M], real and imaginary parts
    p_br, p_bi,                          # B̄ [M, C_in]
    p_cr, p_ci,                          # scale·C [C_out, M]
    p_h0r, p_h0i, p_hNr, p_hNi,          # initial / final state [B, M]
    p_Hr, p_Hi,                          # the state after every token [B, N, M] (STORE_H: for the backward)
    N, C_in, C_out, n_mode,
    s_vb, s_vn, s_vc, s_pb, s_pn, s_pc, s_qb, s_qn, s_qc,
    T: tl.constexpr, BM: tl.constexpr, BC: tl.constexpr,
    USE_PRE: tl.constexpr, USE_SKIP: tl.constexpr, USE_POST: tl.constexpr,
    USE_H0: tl.constexpr, STORE_HN: tl.constexpr, STORE_H: tl.constexpr, REVERSE: tl.constexpr,
):
    """Modes i_m·BM …, batch row i_b: h_t = λ ⊙ h_(t−1) + B̄ u_t, y_t = post_t ⊙ (Re(C h_t) + skip ⊙ u_t)
    (the skip added by the first block of modes only), u = pre ⊙ v, chunk by chunk. This block
    of modes' share of y goes to y[i_m]. REVERSE reads the tokens backwards (anti-causal)."""
    i_m = tl.program_id(0)
    i_b = tl.program_id(1)
    n_batch = tl.num_programs(1)
    o_m = i_m * BM + tl.arange(0, BM)            # modes (padding modes: λ = 1, B̄ = C = 0, so h = 0)
    m_m = o_m < n_mode
    o_t = tl.arange(0, T)                        # token within a chunk
    o_c = tl.arange(0, BC)                       # channel within a block of channels

    # ---- the modes: λ = exp(z); the scan's decay per step, λ, and λ^(t+1), the entering state's decay to token t
    b_zr = tl.load(p_zr + o_m, mask=m_m, other=0.0)
    b_zi = tl.load(p_zi + o_m, mask=m_m, other=0.0)
    b_ar = tl.zeros([T, BM], dtype=tl.float32) + (tl.exp(b_zr) * tl.cos(b_zi))[None, :]
    b_ai = tl.zeros([T, BM], dtype=tl.float32) + (tl.exp(b_zr) * tl.sin(b_zi))[None, :]
    e_t = (o_t[:, None] + 1).to(tl.float32)
    b_Pr = tl.exp(e_t * b_zr[None, :]) * tl.cos(e_t * b_zi[None, :])    # λ^(t+1), [T, BM]
    b_Pi = tl.exp(e_t * b_zr[None, :]) * tl.sin(e_t * b_zi[None, :])

    # ---- the state entering the first chunk, [BM]
    b_hr = tl.zeros([BM], dtype=tl.float32)
    b_hi = tl.zeros([BM], dtype=tl.float32)
    if USE_H0:
        b_hr += tl.load(p_h0r + i_b * n_mode + o_m, mask=m_m, other=0.0)
        b_hi += tl.load(p_h0i + i_b * n_mode + o_m, mask=m_m, other=0.0)

    for i0 in range(0, N, T):
        o_i = i0 + o_t                           # step in processing order
        m_t = o_i < N
        if REVERSE:                              # anti-causal: token N − 1 first
            o_n = N - 1 - o_i
        else:
            o_n = o_i
        # x = B̄ u for the chunk's tokens, [T, BM]: input channels in blocks of BC
        b_xr = tl.zeros([T, BM], dtype=tl.float32)
        b_xi = tl.zeros([T, BM], dtype=tl.float32)
        for c0 in range(0, C_in, BC):
            o_ci = c0 + o_c
            m_ci = o_ci < C_in
            m_u = m_t[:, None] & m_ci[None, :]
            b_u = tl.load(p_v + i_b * s_vb + o_n[:, None] * s_vn + o_ci[None, :] * s_vc, mask=m_u, other=0.0).to(tl.float32)
            if USE_PRE:
                b_u *= tl.load(p_pre + i_b * s_pb + o_n[:, None] * s_pn + o_ci[None, :] * s_pc, mask=m_u, other=0.0).to(tl.float32)
            m_bt = m_ci[:, None] & m_m[None, :]  # B̄ᵀ tiles [BC, BM]
            b_Btr = tl.load(p_br + o_m[None, :] * C_in + o_ci[:, None], mask=m_bt, other=0.0)
            b_Bti = tl.load(p_bi + o_m[None, :] * C_in + o_ci[:, None], mask=m_bt, other=0.0)
            b_xr += tl.dot(b_u, b_Btr, input_precision="ieee")
            b_xi += tl.dot(b_u, b_Bti, input_precision="ieee")
        # the states inside the chunk from a zero start: a parallel scan of h ← λ h + x over its tokens
        _, _, b_Hr, b_Hi = tl.associative_scan((b_ar, b_ai, b_xr, b_xi), 0, ${name}_scan_step)
        # plus the state entering the chunk, decayed to each token: λ^(t+1) h
        b_Hr += b_Pr * b_hr[None, :] - b_Pi * b_hi[None, :]
        b_Hi += b_Pr * b_hi[None, :] + b_Pi * b_hr[None, :]
        if STORE_H:
            o_H = i_b * (N * n_mode) + o_n[:, None] * n_mode + o_m[None, :]
            m_H = m_t[:, None] & m_m[None, :]
            tl.store(p_Hr + o_H, b_Hr, mask=m_H)
            tl.store(p_Hi + o_H, b_Hi, mask=m_H)

        # y = Re(h Cᵀ) (this block of modes' share), output channels in blocks of BC
        for c0 in range(0, C_out, BC):
            o_co = c0 + o_c
            m_co = o_co < C_out
            m_y = m_t[:, None] & m_co[None, :]
            m_ct = m_m[:, None] & m_co[None, :]  # Cᵀ tiles [BM, BC]
            b_Ctr = tl.load(p_cr + o_co[None, :] * n_mode + o_m[:, None], mask=m_ct, other=0.0)
            b_Cti = tl.load(p_ci + o_co[None, :] * n_mode + o_m[:, None], mask=m_ct, other=0.0)
            b_y = tl.dot(b_Hr, b_Ctr, input_precision="ieee") - tl.dot(b_Hi, b_Cti, input_precision="ieee")
            if USE_SKIP:                         # skip ⊙ u (C_in = C_out), once: by the first block of modes
                b_w = tl.load(p_skip + o_co, mask=m_co, other=0.0).to(tl.float32) * (i_m == 0).to(tl.float32)
                b_u = tl.load(p_v + i_b * s_vb + o_n[:, None] * s_vn + o_co[None, :] * s_vc, mask=m_y, other=0.0).to(tl.float32)
                if USE_PRE:
                    b_u *= tl.load(p_pre + i_b * s_pb + o_n[:, None] * s_pn + o_co[None, :] * s_pc, mask=m_y, other=0.0).to(tl.float32)
                b_y += b_w[None, :] * b_u
            if USE_POST:
                b_y *= tl.load(p_post + i_b * s_qb + o_n[:, None] * s_qn + o_co[None, :] * s_qc, mask=m_y, other=0.0).to(tl.float32)
            o_y = ((i_m * n_batch + i_b) * N + o_n[:, None]) * C_out + o_co[None, :]
            tl.store(p_y + o_y, b_y.to(p_y.dtype.element_ty), mask=m_y)

        # the state leaving the chunk: h at its last token (the last chunk may be short)
        last = tl.minimum(N - i0, T) - 1
        b_hr = tl.sum(tl.where(o_t[:, None] == last, b_Hr, 0.0), axis=0)
        b_hi = tl.sum(tl.where(o_t[:, None] == last, b_Hi, 0.0), axis=0)

    if STORE_HN:
        tl.store(p_hNr + i_b * n_mode + o_m, b_hr, mask=m_m)
        tl.store(p_hNi + i_b * n_mode + o_m, b_hi, mask=m_m)
'''

_MIMO_LAUNCH = '''

def ${name}_launch(v, pre, skip, post, sys, h0, reverse, want_state, want_states=False):
    """One pass of ${name}_kernel over v [B, N, C_in] (gates None or strided [B, N, C] views) with
    ``sys`` a MIMO DiagSSM (c = scale·C): (y [B, N, C_out], final state [B, M] or None, the state
    after every token [B, N, M] or None). ``reverse`` reads the tokens backwards."""
    from codegen.toeplitz import triton_support as tzs
    Bn, N, C_in = v.shape
    C_out, n_mode = sys.c.shape
    T = ${name}_CHUNK
    BM = tzs.pow2(n_mode, 16, ${name}_MODE_BLOCK)
    G = triton.cdiv(n_mode, BM)                  # blocks of modes: each writes its share of y
    y = tzs.scratch((G, Bn, N, C_out), v.dtype if G == 1 else torch.float32, v.device)
    zr, zi = tzs.split(sys.log_lam)              # complex → (real part, imaginary part)
    br, bi = tzs.split(sys.b)
    cr, ci = tzs.split(sys.c)
    h0r, h0i = tzs.split(h0)
    hNr, hNi = (tzs.scratch((Bn, n_mode), zr.dtype, v.device) for _ in range(2)) if want_state else (zr, zi)
    Hr, Hi = (tzs.scratch((Bn, N, n_mode), zr.dtype, v.device) for _ in range(2)) if want_states else (zr, zi)
    gp = pre if pre is not None else v           # placeholders: the kernel never reads an absent gate
    gq = post if post is not None else v
    ${name}_kernel[(G, Bn)](
        v, gp, gq, skip if skip is not None else zr, y,
        zr, zi, br, bi, cr, ci,
        h0r if h0r is not None else zr, h0i if h0i is not None else zi, hNr, hNi,
        Hr, Hi,
        N, C_in, C_out, n_mode, *v.stride(), *gp.stride(), *gq.stride(),
        T=T, BM=BM, BC=tzs.pow2(max(C_in, C_out), 16, 64),
        USE_PRE=pre is not None, USE_SKIP=skip is not None, USE_POST=post is not None,
        USE_H0=h0 is not None, STORE_HN=bool(want_state), STORE_H=bool(want_states), REVERSE=bool(reverse),
    )
    y = y[0] if G == 1 else y.sum(0).to(v.dtype)
    hN = torch.complex(hNr, hNi) if want_state else None
    H = torch.complex(Hr, Hi) if want_states else None
    return y, hN, H
'''

_MIMO_WRAPPER = '''

def $name(
    v, params=None, reverse_params=None, explicit_kernel=None, *, pre=None, skip=None, post=None,
    initial_state=None, return_state=False, kernel_length=None, diagonal="once",
):
    """$what.
    v [..., N, C] → y [..., N, C] = post ⊙ (K ∗ (pre ⊙ v) + skip ⊙ pre ⊙ v), K_l = scale·Re(C λ^l B̄)
    the [C, C] taps of the shared state (toeplitz_mix's semantics, mimo=True). pre / post broadcast
    to v's shape, skip [C]. A causal mix carries the state: ``initial_state`` [..., M] (complex)
    in, ``return_state=True`` → (y, final state)."""
$wrapper_start
    # the discretised system (PyTorch, O(M·C)): log λ [M], B̄ [M, C], scale·C [C, M]
    sys = discretize($kind, {k: t.to(rd) for k, t in params.items()}, disc=$disc, conj=$conj, mimo=True,
                     length=kernel_length or N)
    h0 = None
    if initial_state is not None:
        h0 = initial_state.reshape(u.shape[0], -1).to(sys.log_lam.dtype)
    y, hN = tzs.MIMOMix.apply(${name}_launch, False, bool(return_state), u, pre, skip, post, sys.log_lam, sys.b, sys.scale * sys.c, h0)  # [causal]
    y, _ = tzs.MIMOMix.apply(${name}_launch, False, False, u, pre, skip, None, sys.log_lam, sys.b, sys.scale * sys.c, None)  # [bidir]
    # the reverse direction: the reverse SSM read backwards, its tap 0 (a [C, C] matrix) taken out  # [bidir]
    rsys = discretize($kind, {k: t.to(rd) for k, t in reverse_params.items()}, disc=$disc, conj=$conj, mimo=True,  # [bidir]
                      length=kernel_length or N)  # [bidir]
    rc = rsys.scale * rsys.c  # [bidir]
    yr, _ = tzs.MIMOMix.apply(${name}_launch, True, False, u, pre, None, None, rsys.log_lam, rsys.b, rc, None)  # [bidir]
    if diagonal == "once":  # its tap 0 (a [C, C] matrix) taken out  # [bidir]
        k0 = (rc @ rsys.b).real                            # K_rev[0] = scale·Re(C B̄)  # [bidir]
        x = u * pre if pre is not None else u  # [bidir]
        yr = yr - (x.to(rd) @ k0.transpose(0, 1)).to(y.dtype)  # [bidir]
    elif diagonal == "shift":  # token i: Σ_{j>i} K_rev[j − i − 1] u_j (S4's layout)  # [bidir]
        yr = torch.cat([yr[:, 1:], torch.zeros_like(yr[:, :1])], dim=1)  # [bidir]
    y = y + yr  # [bidir]
    y = y * post if post is not None else y  # [bidir]
    y = y.reshape(*lead, N, y.shape[-1])
    if return_state:  # [causal]
        return y, hN.reshape(*lead, *hN.shape[1:])  # [causal]
    return y
'''

# ---- explicit kernels (Hyena's long convolutions) ---------------------------------------------

_EXPLICIT_KERNEL = '''
# ==== $name: Toeplitz mix of $what ====
# Cost: the taps are given ([L, C], no state to carry), so each output chunk of T tokens reads
# every input chunk within L tokens before it: O(N·L) multiply-adds per channel (tensor-core
# T×T blocks), against the O(N log N) of an FFT convolution (toeplitz_mix(algorithm="fft")).
# For L ≈ N and long sequences the FFT does less work; this kernel needs no O(N) padded
# transforms in memory and fuses the gates.

from codegen.triton import tuning as tt

${name}_CHUNK = $chunk           # tokens per chunk: the Toeplitz blocks are CHUNK × CHUNK
${name}_GATES = $gates   # (pre, skip, post) this mixer was generated with


@tt.autotune(key=["N", "C", "L", "REVERSE"])   # warps × stages timed once per size on a GPU
@triton.jit
def ${name}_kernel(
    p_v, p_pre, p_post, p_skip, p_y,     # v, gates [B, N, C] (strided), skip [C], y [B, N, C]
    p_taps,                              # the explicit kernel, channel-major: K[c, l] at c·L + l, [C, L]
    n_batch, N, C, L,
    s_vb, s_vn, s_vc, s_pb, s_pn, s_pc, s_qb, s_qn, s_qc,
    T: tl.constexpr, BB: tl.constexpr,
    USE_PRE: tl.constexpr, USE_SKIP: tl.constexpr, USE_POST: tl.constexpr, REVERSE: tl.constexpr,
):
    """Channel i_c, batch rows i_b·BB …, output chunk i_i (tokens i_i·T …):
    y_i = post_i ⊙ (Σ_(0 ≤ i−j < L) K[i − j] u_j + skip ⊙ u_i), u = pre ⊙ v, as a sum over the
    input chunks J ≤ I within reach of the L taps of the T×T Toeplitz block K[(I − J)·T + t − s]
    times the chunk's inputs. REVERSE reads the tokens backwards (the anti-causal correlation
    with the same taps: the backward pass, a mirrored kernel's second direction)."""
    i_c = tl.program_id(0)
    i_b = tl.program_id(1)
    i_i = tl.program_id(2)
    o_b = i_b * BB + tl.arange(0, BB)            # batch rows
    m_b = o_b < n_batch
    o_t = tl.arange(0, T)                        # token within a chunk
    o_d = o_t[:, None] - o_t[None, :]            # t − s: the lag inside a block

    b_y = tl.zeros([T, BB], dtype=tl.float32)
    # the first input chunk within reach: lags (I − J)·T + t − s ≥ (I − J)·T − T + 1 must be < L
    j_lo = tl.maximum(i_i - (L + T - 2) // T, 0)
    for i_j in range(j_lo, i_i + 1):
        # the Toeplitz block: b_K[t, s] = K[(I − J)·T + t − s], 0 where the lag is < 0 or ≥ L
        o_l = (i_i - i_j) * T + o_d
        b_K = tl.load(p_taps + i_c * L + o_l, mask=(o_l >= 0) & (o_l < L), other=0.0).to(tl.float32)
        # u = pre ⊙ v for the input chunk's tokens   [T, BB]
        o_j = i_j * T + o_t                      # input step in processing order
        m_x = (o_j < N)[:, None] & m_b[None, :]
        if REVERSE:                              # anti-causal: token N − 1 first
            o_n = N - 1 - o_j
        else:
            o_n = o_j
        b_u = tl.load(p_v + o_b[None, :] * s_vb + o_n[:, None] * s_vn + i_c * s_vc, mask=m_x, other=0.0).to(tl.float32)
        if USE_PRE:
            b_u *= tl.load(p_pre + o_b[None, :] * s_pb + o_n[:, None] * s_pn + i_c * s_pc, mask=m_x, other=0.0).to(tl.float32)
        b_y += tl.dot(b_K, b_u, input_precision="ieee")

    # the output chunk's tokens: skip ⊙ u, post, store
    o_i = i_i * T + o_t
    m_x = (o_i < N)[:, None] & m_b[None, :]
    if REVERSE:
        o_n = N - 1 - o_i
    else:
        o_n = o_i
    if USE_SKIP:
        b_u = tl.load(p_v + o_b[None, :] * s_vb + o_n[:, None] * s_vn + i_c * s_vc, mask=m_x, other=0.0).to(tl.float32)
        if USE_PRE:
            b_u *= tl.load(p_pre + o_b[None, :] * s_pb + o_n[:, None] * s_pn + i_c * s_pc, mask=m_x, other=0.0).to(tl.float32)
        b_y += tl.load(p_skip + i_c).to(tl.float32) * b_u
    if USE_POST:
        b_y *= tl.load(p_post + o_b[None, :] * s_qb + o_n[:, None] * s_qn + i_c * s_qc, mask=m_x, other=0.0).to(tl.float32)
    tl.store(p_y + o_b[None, :] * (N * C) + o_n[:, None] * C + i_c, b_y.to(p_y.dtype.element_ty), mask=m_x)
'''

_EXPLICIT_LAUNCH = '''

def ${name}_launch(v, pre, skip, post, taps, sys, h0, reverse, want_state):
    """One pass of ${name}_kernel over v [B, N, C] (gates None or [B, N, C] views) with the taps
    [L, C]: (y, None) — an explicit kernel has no state (``sys``, ``h0`` unused). ``reverse``
    reads the tokens backwards."""
    from codegen.toeplitz import triton_support as tzs
    Bn, N, C = v.shape
    L = taps.shape[0]
    T = ${name}_CHUNK
    y = tzs.scratch((Bn, N, C), v.dtype, v.device)
    gp = pre if pre is not None else v           # placeholders: the kernel never reads an absent gate
    gq = post if post is not None else v
    BB = tzs.pow2(Bn, 16, 64)                    # batch rows per program: tl.dot's other dimension
    ${name}_kernel[(C, triton.cdiv(Bn, BB), triton.cdiv(N, T))](
        v, gp, gq, skip if skip is not None else y, y,
        taps.transpose(0, 1).contiguous(),
        Bn, N, C, L, *v.stride(), *gp.stride(), *gq.stride(),
        T=T, BB=BB,
        USE_PRE=pre is not None, USE_SKIP=skip is not None, USE_POST=post is not None, REVERSE=bool(reverse),
    )
    return y, None
'''

_EXPLICIT_WRAPPER = '''

def $name(
    v, params=None, reverse_params=None, explicit_kernel=None, *, pre=None, skip=None, post=None,
    initial_state=None, return_state=False, kernel_length=None,
):
    """$what.
    v [..., N, C] → y [..., N, C] = post ⊙ (K ∗ (pre ⊙ v) + skip ⊙ pre ⊙ v), K = explicit_kernel
    [L, C] (its first N taps; toeplitz_mix's semantics). pre / post broadcast to v's shape,
    skip [C]. No recurrent state."""
    from codegen.toeplitz import triton_support as tzs
    tzs.check_device(v)
    given = (pre is not None, skip is not None, post is not None)
    if given != ${name}_GATES:
        raise ValueError(f"$name was generated with gates (pre, skip, post) = {${name}_GATES}, called with {given}")
    if explicit_kernel is None or params is not None or reverse_params is not None:
        raise ValueError("$name is an explicit-kernel mix: it takes explicit_kernel, not SSM params")
    if initial_state is not None or return_state:
        raise ValueError("$name mixes with an explicit kernel: it has no recurrent state")
    lead, (N, C) = v.shape[:-2], v.shape[-2:]
    if explicit_kernel.dim() != 2 or explicit_kernel.shape[1] != C:
        raise ValueError(f"an explicit kernel must be [L, C] with C = {C}, got {tuple(explicit_kernel.shape)}")
    T = ${name}_CHUNK
    taps = explicit_kernel[:N].to(torch.float32)       # taps beyond N never reach an output
    u = v.reshape(-1, N, C)
    if pre is not None:
        pre = torch.broadcast_to(pre, v.shape).reshape(u.shape)
    if post is not None:
        post = torch.broadcast_to(post, v.shape).reshape(u.shape)
    L = taps.shape[0]
    y, _ = tzs.SSMMix.apply(${name}_launch, L, False, False, u, pre, skip, post, taps, None, None, None, None)  # [causal]
    y, _ = tzs.SSMMix.apply(${name}_launch, L, False, False, u, pre, skip, None, taps, None, None, None, None)  # [bidir]
    # mirrored (M_ij = K[|i − j|]): the same taps read backwards, tap 0 taken out (the diagonal counts once)  # [bidir]
    yr, _ = tzs.SSMMix.apply(${name}_launch, L, True, False, u, pre, -taps[0], None, taps, None, None, None, None)  # [bidir]
    y = (y + yr) * post if post is not None else y + yr  # [bidir]
    return y.reshape(*lead, N, C)
'''
