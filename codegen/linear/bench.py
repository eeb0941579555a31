"""Timings of the chunked runtime against the plain-PyTorch forms users would otherwise run.

    python -m codegen.linear.bench [--threads 2] [--repeat 3] [--only la,ret,gla,ss]

Cases (fp32, batch 1): linear attention, retention (a decay per head) and GLA (a gate per key
channel) at H=4, N=16384, Dh=64; the selective scan at Dm=256, S=16, N=4096. Baselines,
written here after the published plain-PyTorch forms (not imported: they are not dependencies):

- ``chunk_linear_attn_baseline``: flash-linear-attention's naive chunked linear attention
  ([B, T, H, D] layout, chunk 64, kᵀv per chunk, cumsum over chunks, masked intra-chunk);
- ``chunk_simple_gla_baseline``: its naive chunked simple-GLA (a scalar gate per head and
  token; a Python loop over chunks carrying the state);
- ``selective_scan_loop_baseline``: mamba_ssm's ``selective_scan_ref`` (a loop over time).

Each time is the best of ``--repeat`` runs, wall clock and, in brackets, the process's CPU
time (on a shared machine the wall clock of a 2-thread run suffers most: every parallel op
waits for both threads). Forward+backward uses a random output gradient; the selective-scan loop
gets it only with ``--baseline-backward`` (it takes seconds). The simple-GLA baseline is
timed in the stacked variant (``chunk_simple_gla_stacked_baseline``): the published form writes
each chunk's output in place, which makes its autograd backward ~40× slower (2.2 s here).
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from codegen.linear.torch_impl import linear_attention, selective_scan


def chunk_linear_attn_baseline(q, k, v, chunk=64):
    """[B, T, H, D] -> [B, T, H, D]; scale D^-½, no normaliser; T a multiple of ``chunk``."""
    b, t, h, d = q.shape
    q, k, v = (x.reshape(b, t // chunk, chunk, h, -1).permute(0, 3, 1, 2, 4) for x in (q, k, v))   # b h n c d
    q = q * d ** -0.5
    kv = torch.cumsum(k.transpose(-1, -2) @ v, dim=2)
    kv = torch.cat([torch.zeros_like(kv[:, :, :1]), kv[:, :, :-1]], dim=2)
    upper = torch.ones(chunk, chunk, dtype=torch.bool).triu(1)
    o = q @ kv + (q @ k.transpose(-1, -2)).masked_fill_(upper, 0) @ v
    return o.permute(0, 2, 3, 1, 4).reshape(b, t, h, -1)


def chunk_simple_gla_baseline(q, k, v, g, chunk=64):
    """[B, T, H, D], g [B, T, H] (log gate) -> [B, T, H, D]; scale D^-½."""
    q, k, v, g = (x.transpose(1, 2) for x in (q, k, v, g))                   # b h t ...
    b, h, t, d = q.shape
    q = q * d ** -0.5
    q, k, v = (x.reshape(b, h, t // chunk, chunk, -1) for x in (q, k, v))
    g = g.reshape(b, h, t // chunk, chunk).cumsum(-1)
    mask = (g[..., :, None] - g[..., None, :]).tril().exp().tril()
    S = q.new_zeros(b, h, d, v.shape[-1])
    o = torch.zeros_like(v)
    for i in range(t // chunk):
        qi, ki, vi, gi = q[:, :, i], k[:, :, i], v[:, :, i], g[:, :, i]
        o[:, :, i] = (qi * gi[..., None].exp()) @ S + (qi @ ki.transpose(-1, -2) * mask[:, :, i]) @ vi
        S = S * gi[..., -1, None, None].exp() + (ki * (gi[..., -1:] - gi).exp()[..., None]).transpose(-1, -2) @ vi
    return o.reshape(b, h, t, -1).transpose(1, 2)


def chunk_simple_gla_stacked_baseline(q, k, v, g, chunk=64):
    """The same, with the chunks taken by ``unbind`` and their outputs stacked instead of written
    in place: the form whose autograd backward is fast (the stronger baseline for fwd+bwd)."""
    q, k, v, g = (x.transpose(1, 2) for x in (q, k, v, g))
    b, h, t, d = q.shape
    q = q * d ** -0.5
    q, k, v = (x.reshape(b, h, t // chunk, chunk, -1) for x in (q, k, v))
    g = g.reshape(b, h, t // chunk, chunk).cumsum(-1)
    mask = (g[..., :, None] - g[..., None, :]).tril().exp().tril()
    S = q.new_zeros(b, h, d, v.shape[-1])
    outs = []
    # unbind, not q[:, :, i]: the backward of each slice would zero-fill a full-size gradient
    for qi, ki, vi, gi, mi in zip(*(x.unbind(2) for x in (q, k, v, g, mask))):
        outs.append((qi * gi[..., None].exp()) @ S + (qi @ ki.transpose(-1, -2) * mi) @ vi)
        S = S * gi[..., -1, None, None].exp() + (ki * (gi[..., -1:] - gi).exp()[..., None]).transpose(-1, -2) @ vi
    return torch.stack(outs, 2).reshape(b, h, t, -1).transpose(1, 2)


def chunk_gla_baseline(q, k, v, g, chunk=64):
    """flash-linear-attention's naive chunked GLA form: [B, T, H, D], g [B, T, H, D] (log gate per
    key channel); inside a chunk the factorised scores (q ⊙ e^{G})(k ⊙ e^{−G})ᵀ (exact for
    moderate gates, GLA's τ = 16), between chunks a loop carrying the state; scale D^-½."""
    q, k, v, g = (x.transpose(1, 2) for x in (q, k, v, g))
    b, h, t, d = q.shape
    q = q * d ** -0.5
    q, k, v, g = (x.reshape(b, h, t // chunk, chunk, -1) for x in (q, k, v, g))
    g = g.cumsum(-2)
    qg, kg = q * g.exp(), k * (-g).exp()
    upper = torch.ones(chunk, chunk, dtype=torch.bool).triu(1)
    intra = (qg @ kg.transpose(-1, -2)).masked_fill(upper, 0) @ v
    kd = k * (g[..., -1:, :] - g).exp()
    S = q.new_zeros(b, h, d, v.shape[-1])
    outs = []
    for qi, gi, ki, vi in zip(*(x.unbind(2) for x in (qg, g, kd, v))):     # unbind: see above
        outs.append(qi @ S)
        S = S * gi[..., -1, :, None].exp() + ki.transpose(-1, -2) @ vi
    o = torch.stack(outs, 2) + intra
    return o.reshape(b, h, t, -1).transpose(1, 2)


def selective_scan_loop_baseline(u, delta, A, B, C, D, delta_softplus=True):
    """mamba_ssm's reference: the recurrence one step at a time."""
    if delta_softplus:
        delta = F.softplus(delta)
    deltaA = torch.exp(torch.einsum("bdl,dn->bdln", delta, A))
    deltaB_u = torch.einsum("bdl,bnl,bdl->bdln", delta, B, u)
    x = A.new_zeros(u.shape[0], A.shape[0], A.shape[1])
    ys = []
    for i in range(u.shape[2]):
        x = deltaA[:, :, i] * x + deltaB_u[:, :, i]
        ys.append(torch.einsum("bdn,bn->bd", x, C[:, :, i]))
    return torch.stack(ys, dim=2) + u * D[:, None]


def best(fn, repeat: int) -> tuple[float, float]:
    """(wall, cpu) seconds, each the minimum over ``repeat`` runs."""
    wall, cpu = [], []
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return min(wall), min(cpu)


def timed(fn, inputs, repeat: int, backward: bool = True):
    """((forward wall, cpu), (forward+backward wall, cpu) or None)."""
    with torch.no_grad():
        fn(*inputs)
        fwd = best(lambda: fn(*inputs), repeat)
    if not backward:
        return fwd, None
    grads = [x.detach().requires_grad_(x.is_floating_point()) for x in inputs]
    out = fn(*grads)
    go = torch.randn_like(out)

    def step():
        for x in grads:
            x.grad = None
        fn(*grads).backward(go)

    step()
    return fwd, best(step, repeat)


def cases(only: set[str]):
    torch.manual_seed(0)
    h, n, d = 4, 16384, 64
    bthd = [torch.randn(1, n, h, d) for _ in range(3)]
    bhnd = [x.transpose(1, 2).contiguous() for x in bthd]
    if "la" in only:
        yield ("linear attention", lambda q, k, v: linear_attention(q, k, v, scale=d ** -0.5), bhnd,
               "fla naive_chunk_linear_attn", chunk_linear_attn_baseline, bthd)
        yield ("linear attention elu+1, norm=sum", lambda q, k, v: linear_attention(q, k, v, feature="elu1", norm="sum"),
               bhnd, None, None, None)
    if "ret" in only:
        gamma = 1 - 2.0 ** (-5 - torch.arange(h, dtype=torch.float32))
        g_bth = torch.log(gamma).expand(1, n, h).contiguous()
        yield ("retention (decay per head)", lambda q, k, v: linear_attention(q, k, v, decay=gamma, scale=d ** -0.5),
               bhnd, "fla naive_chunk_simple_gla (stacked)", chunk_simple_gla_stacked_baseline, bthd + [g_bth])
    if "gla" in only:
        g = F.logsigmoid(torch.randn(1, h, n, d)) / 16
        yield ("GLA (gate per key channel)",
               lambda q, k, v, g: linear_attention(q, k, v, decay=g, log_decay=True, scale=d ** -0.5),
               bhnd + [g], "fla naive chunk GLA", chunk_gla_baseline, bthd + [g.transpose(1, 2).contiguous()])
    if "ss" in only:
        dm, s, n = 256, 16, 4096
        ss = [torch.randn(1, dm, n), torch.randn(1, dm, n) - 1, -torch.exp(torch.randn(dm, s) * 0.5),
              torch.randn(1, s, n), torch.randn(1, s, n), torch.randn(dm)]
        yield ("selective scan Dm256 S16 N4096", lambda *a: selective_scan(*a, delta_softplus=True), ss,
               "mamba selective_scan_ref", selective_scan_loop_baseline, ss)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", default="la,ret,gla,ss")
    parser.add_argument("--baseline-backward", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, best of {args.repeat}; wall s (cpu s)")

    def show(t):
        return f"{t[0]:7.4f} ({t[1]:7.4f})"

    for name, fn, inputs, base_name, base, base_inputs in cases(set(args.only.split(","))):
        fwd, both = timed(fn, inputs, args.repeat)
        line = f"{name:34s} fwd {show(fwd)}  fwd+bwd {show(both)}"
        if base is not None:
            backward = args.baseline_backward or base is not selective_scan_loop_baseline
            bf, bb = timed(base, base_inputs, args.repeat, backward)
            line += f"  | {base_name}: fwd {show(bf)}"
            if bb is not None:
                line += f" fwd+bwd {show(bb)}"
            line += f"  (fwd ×{bf[0] / fwd[0]:.1f} wall, ×{bf[1] / fwd[1]:.1f} cpu)"
        print(line, flush=True)


if __name__ == "__main__":
    main()
