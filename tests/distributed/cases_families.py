"""The per-family cases (run inside the processes of test_families.py)."""

from __future__ import annotations

import importlib.util
import pathlib

import torch

from codegen import masks as M
from codegen.distributed import linear as dlin
from codegen.distributed import softmax as dsm
from codegen.distributed import toeplitz as dtz
from codegen.distributed.context import active
from codegen.linear import torch_impl as lin
from codegen.softmax import torch_impl as sm
from codegen.toeplitz import torch_impl as tz
from codegen.toeplitz.kernels import init_ssm_params
from codegen.torch import runtime as rt

_spec = importlib.util.spec_from_file_location("_dist_harness", pathlib.Path(__file__).with_name("harness.py"))
H = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(H)


def _qkv(B, Hh, N, D, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, Hh, N, D, generator=g, dtype=dtype) for _ in range(3)]


def softmax_case(mask, heads=4, n=63, layout="contiguous", strategy="ring", cap=None, bias=None):
    def fn(group):
        q, k, v = _qkv(2, heads, n, 8)
        kw = dict(scale=8 ** -0.5, cap=cap, bias=bias)
        ref = lambda q, k, v: sm.softmax_attention(q, k, v, mask, algorithm="materialized", **kw)  # noqa: E731
        dst = lambda q, k, v: dsm.softmax_attention(q, k, v, mask, sp=active(), **kw)  # noqa: E731
        return H.compare(ref, dst, {"q": (q, 2), "k": (k, 2), "v": (v, 2)}, group, layout, strategy)
    return fn


def small_tiles(case, rows: int = 5, keys: int = 7):
    """``case`` with the ring's tiles made small (ROWS × KEYS = 5 × 7): a rank's 15–32 rows
    span several query and key tiles, the last ones ragged (the default tiles, 512 × 512,
    hold every rank's rows at these lengths)."""
    def fn(group):
        saved = dsm.ROWS, dsm.KEYS
        dsm.ROWS, dsm.KEYS = rows, keys
        try:
            return case(group)
        finally:
            dsm.ROWS, dsm.KEYS = saved
    return fn


def rows_case(layout: str, n=63, g=3):
    """The last ``g`` rows as replicated queries over every key (gathered from their owners,
    an LSE all-reduce; mask, cap and ALiBi at the one-process query positions 0..g−1, so
    that ranks whose keys the mask removes contribute nothing), written back over the
    queries' own rows by a concat; the gradients of the gather and of the concat."""
    mask = M.Or(M.Causal(0), M.KeyRange(20, 30))
    kw = dict(scale=8 ** -0.5, cap=5.0, bias=("alibi", None))

    def fn(group):
        q, k, v = _qkv(2, 4, n, 8, seed=2)

        def ref(q, k, v):
            top = sm.softmax_attention(q[:, :, n - g:], k, v, mask, algorithm="materialized", **kw)
            return torch.cat([v[:, :, :n - g], top], dim=2)

        def dst(q, k, v):
            qg = rt.seq_take(q, 2, n - g, n)
            top = rt.seq_replicated_queries(lambda: sm.softmax_attention(qg, k, v, mask, **kw))
            rest = rt.seq_part(v, 2, 0, n - g)
            return rt.seq_concat([rest, top], 2, (("part", 0, n - g), ("replicated", n - g, None)))
        return H.compare(ref, dst, {"q": (q, 2), "k": (k, 2), "v": (v, 2)}, group, layout)
    return fn


SOFTMAX = [
    ("full", M.Full()), ("causal", M.Causal(0)), ("causal-window", M.And(M.Causal(0), M.Window(9))),
    ("local", M.Local(16)), ("strided|window", M.Or(M.Strided(5), M.Window(4))),
    ("global|window", M.Or(M.Global(3), M.Window(6))), ("random", M.RandomBlocks(2, block=8, seed=3, per_head=True)),
]


def _randn(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def linear_case(n=63, decay=None, decay_dim=None, **kw):
    """Causal/non-causal linear attention; ``decay`` a tensor (sharded along ``decay_dim``)."""
    def fn(group):
        q, k, v = _qkv(2, 3, n, 6, seed=1)
        ins = {"q": (q, 2), "k": (k, 2), "v": (v, 2)}
        if isinstance(decay, torch.Tensor):
            ins["decay"] = (decay, decay_dim)

        def ref(q, k, v, decay=decay):
            return lin.linear_attention(q, k, v, decay=decay, algorithm="chunked", chunk=16, **kw)

        def dst(q, k, v, decay=decay):
            return dlin.linear_attention(q, k, v, sp=active(), decay=decay, algorithm="chunked", chunk=16, **kw)
        return H.compare(ref, dst, ins, group, layout_of(group))
    return fn


def layout_of(group) -> str:
    """Zig-zag on the 4-rank group, contiguous on the 2-rank one (both layouts covered)."""
    import torch.distributed as dist
    return "zigzag" if dist.get_world_size(group) == 4 else "contiguous"


def scan_case(n=63):
    def fn(group):
        B, Dm, S = 2, 5, 4
        u, delta = _randn(B, Dm, n, seed=2), _randn(B, Dm, n, seed=3)
        A = -torch.exp(_randn(Dm, S, seed=4))
        Bm, Cm, D = _randn(B, S, n, seed=5), _randn(B, S, n, seed=6), _randn(Dm, seed=7)
        ins = {"u": (u, 2), "delta": (delta, 2), "A": (A, None), "B": (Bm, 2), "C": (Cm, 2), "D": (D, None)}
        ref = lambda **a: lin.selective_scan(**a, delta_softplus=True)  # noqa: E731
        dst = lambda **a: dlin.selective_scan(**a, delta_softplus=True, sp=active())  # noqa: E731
        return H.compare(ref, dst, ins, group, layout_of(group), out_dim=-1)
    return fn


def ssm_case(kind, init, shapes, n=63, causal=True, algorithm="fft", disc="zoh"):
    def fn(group):
        C = 6
        g = torch.Generator().manual_seed(8)
        params = {k: t.float() for k, t in init_ssm_params(kind, init, {k: (C, *s) for k, s in shapes.items()},
                                                           g).items()}
        rev = {k: t.float() * 0.9 for k, t in params.items()} if not causal else None
        v = _randn(2, n, C, seed=9)
        ins = {"v": (v, 1), **{k: (t, None) for k, t in params.items()}}
        kw = dict(kind=kind, disc=disc, causal=causal, algorithm=algorithm)

        def split(a):
            return a.pop("v"), a

        def ref(**a):
            v, p = split(a)
            return tz.toeplitz_mix(v, params=p, reverse_params=rev and {k: p[k] * 0.9 for k in p}, **kw)

        def dst(**a):
            v, p = split(a)
            return dtz.toeplitz_mix(v, params=p, reverse_params=rev and {k: p[k] * 0.9 for k in p}, sp=active(),
                                    **kw)
        return H.compare(ref, dst, ins, group, layout_of(group))
    return fn


def explicit_case(n=63, causal=True):
    def fn(group):
        v, K = _randn(2, n, 7, seed=10), _randn(n, 7, seed=11) / n
        ins = {"v": (v, 1), "K": (K, None)}
        ref = lambda v, K: tz.toeplitz_mix(v, explicit_kernel=K, causal=causal)  # noqa: E731
        dst = lambda v, K: dtz.toeplitz_mix(v, explicit_kernel=K, causal=causal, sp=active())  # noqa: E731
        return H.compare(ref, dst, ins, group, layout_of(group))
    return fn


def conv_case(width, causal, n=13):
    def fn(group):
        x, w, b = _randn(2, n, 5, seed=12), _randn(5, width, seed=13), _randn(5, seed=14)
        ins = {"x": (x, 1), "w": (w, None), "b": (b, None)}
        ref = lambda x, w, b: rt.conv1d(x, w, b, causal)  # noqa: E731
        dst = lambda x, w, b: dtz.conv1d(x, w, b, causal, sp=active())  # noqa: E731
        return H.compare(ref, dst, ins, group, layout_of(group))
    return fn


DIAG = {"log_dt": (), "log_A_real": (4,), "A_imag": (4,), "C_re": (4,), "C_im": (4,)}
LINEAR = [
    ("linear-elu1-sum", dict(feature="elu1", norm="sum")),
    ("linear-noncausal", dict(feature="elu1", norm="sum", causal=False)),
    ("retention", dict(decay=torch.tensor([0.9, 0.97, 0.99]).reshape(3, 1, 1)[:, 0, 0], scale=0.4)),
    ("token-decay", dict(decay=-torch.rand(2, 3, 63, generator=torch.Generator().manual_seed(1)), decay_dim=2,
                         log_decay=True)),
    ("gla", dict(decay=-torch.rand(2, 3, 63, 6, generator=torch.Generator().manual_seed(2)) * 0.5, decay_dim=2,
                 log_decay=True)),
]


def cases() -> list:
    out = []
    for P in (2, 4):
        layout = "contiguous" if P == 2 else "zigzag"
        for name, mask in SOFTMAX:                      # every mask on the ring, one layout per P
            out.append((f"softmax-ring-{name}-{layout}-P{P}", P, softmax_case(mask, layout=layout)))
        for name, mask in SOFTMAX[1:3]:
            out.append((f"softmax-ulysses-{name}-{layout}-P{P}", P, softmax_case(mask, layout=layout,
                                                                                 strategy="ulysses")))
        out.append((f"rows-global-queries-P{P}", P, rows_case(layout)))
        out.append((f"softmax-ring-cap-alibi-P{P}", P, softmax_case(M.Causal(0), cap=5.0, bias=("alibi", None))))
        out.append((f"softmax-ring-small-tiles-cap-alibi-P{P}", P, small_tiles(
            softmax_case(M.Or(M.Causal(0), M.KeyRange(20, 30)), layout=layout, cap=5.0, bias=("alibi", None)))))
        # 8 heads: Ulysses in rounds of one head per rank (4 rounds on 2 ranks, 2 on 4), ALiBi per round
        out.append((f"softmax-ulysses-rounds-{layout}-P{P}", P, softmax_case(M.Causal(0), heads=8, layout=layout,
                                                                            bias=("alibi", None), strategy="ulysses")))
        out.append((f"softmax-ulysses-cap-alibi-P{P}", P, softmax_case(M.Causal(0), cap=5.0, bias=("alibi", None),
                                                                     strategy="ulysses")))
        for name, kw in LINEAR:
            out.append((f"{name}-P{P}", P, linear_case(**kw)))
        out.append((f"selective-scan-P{P}", P, scan_case()))
        out.append((f"s4d-fft-P{P}", P, ssm_case("diag", "s4d_lin", DIAG)))
        out.append((f"s4d-scan-bidirectional-P{P}", P, ssm_case("diag", "s4d_lin", DIAG, causal=False, algorithm="scan")))
        out.append((f"shift-P{P}", P, ssm_case("shift", "random", {"C_re": (4,)}, algorithm="direct", disc="none")))
        out.append((f"explicit-P{P}", P, explicit_case()))
        out.append((f"explicit-bidirectional-P{P}", P, explicit_case(causal=False)))
        out.append((f"conv-causal-w4-P{P}", P, conv_case(4, True)))
        out.append((f"conv-centered-w5-P{P}", P, conv_case(5, False)))
        out.append((f"control-P{P}", P, control))
    return out


def main() -> dict:
    return H.run_cases(cases())


def control(group):
    """No communication: each rank runs the one-process runtime on its shard. The comparison
    must see this as wrong (the test's own check that it can fail)."""
    from codegen.distributed.context import suspended

    q, k, v = _qkv(2, 3, 63, 6, seed=1)
    ref = lambda q, k, v: lin.linear_attention(q, k, v, feature="elu1", norm="sum")  # noqa: E731

    def alone(q, k, v):
        with suspended():                    # the one-process runtime, even inside the block
            return ref(q, k, v)
    return H.compare(ref, alone, {"q": (q, 2), "k": (k, 2), "v": (v, 2)}, group)
