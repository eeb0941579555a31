"""Whole example models, one process against 2 and 4 (run inside test_models.py's processes)."""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib

import seqdsl

HERE = pathlib.Path(__file__).parent
ROOT = HERE.parents[1]
_spec = importlib.util.spec_from_file_location("_dist_harness", HERE / "harness.py")
H = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(H)
SMALL = json.loads((ROOT / "tests/codegen/small_sizes.json").read_text())
N = 37                      # not a multiple of 2, 4, 8 or any block

# (file, entry or None, extra sizes); GLA's per-channel gates are covered by test_families.py
MODELS = [
    ("models/transformer_decoder.seq", None, {}),
    ("mixers/sliding_window.seq", None, {"W": 9}),
    ("models/retnet.seq", None, {}),
    ("models/mamba.seq", None, {}),
    ("models/h3.seq", None, {}),
    ("models/hyena.seq", None, {}),
    # global tokens (x[:, :G] over every key, concat back) and a [CLS] classifier: rows.py
    ("models/longformer.seq", None, {"W": 6, "G": 2}),
]

# BigBird with blocks of 3 (N % Bk == 0 with N = 39, not a multiple of the ranks): a module
# built for N = 39, whose fixed N and requirement are about the whole sequence (bind_sizes
# reads the global length before it checks); 2 ranks (the suite's time budget).
BIGBIRD = ("models/bigbird.seq", None, {"Bk": 3, "R": 2, "N": 39})

# Run only with SEQDSL_DIST_EXTRA=1 (about +10 s: the suite's time budget); each passes on
# 4 ranks. BigBird: its [CLS] read, blocks of 1 and N read at call time (blocks of 3 at a
# fixed N run in the suite: BIGBIRD).
# Perceiver AR: the last M positions as latents (cross-attention of replicated queries,
# then layers of M replicated rows, child modules reading the bound N).
EXTRA = [
    ("models/bigbird.seq", None, {"Bk": 1, "R": 2}),
    ("models/perceiver_ar.seq", None, {"M": 5}),
]


_loaded: dict = {}


# every model on 4 ranks (zig-zag); one per kind of algorithm on 2 (time budget): Ulysses,
# state passing with a halo, the all-to-all of a long convolution, replicated global rows
TWO_RANKS = ("models/transformer_decoder.seq", "models/mamba.seq", "models/hyena.seq", "models/longformer.seq")


def _model(path: str, entry: str | None, extra: dict):
    if path not in _loaded:          # one module per process for both group sizes
        sizes = {k: v for k, v in SMALL[path].items() if k not in ("B", "N") and k not in extra}
        options = dict(extra)        # N among them: a module built for that N (its requirements on N)
        _loaded[path] = seqdsl.load(str(ROOT / "examples" / path), entry=entry, **sizes, **options)
    return _loaded[path]


def model_case(path: str, entry: str | None, extra: dict, layout: str):
    def fn(group):
        model = _model(path, entry, extra)
        model.zero_grad(set_to_none=True)
        inputs = model.example_inputs(**{"B": 2, "N": N, **extra})
        return H.compare_module(model, inputs, group, layout)
    return fn


# the last 3 positions attend among themselves (a mixer on replicated rows only: the
# one-process runtime on every rank) and are written back after the sharded rest
SUFFIX = """dim B, N, D = 8, H = 2

model suffix(x: [B, N, D]) -> [B, N, D] {
  g = x[:, N - 3:]
  q = rearrange(linear(g, D), "b n (h d) -> b h n d", h = H)
  k = rearrange(linear(g, D), "b n (h d) -> b h n d", h = H)
  a = mix(q, k, q, score = dot(), mask = causal(), norm = softmax)
  top = linear(rearrange(a, "b h n d -> b n (h d)"), D)
  return concat([x[:, :N - 3], top], axis = 1)
}
"""


def _source_case(text: str, group):
    """Load a module from inline .seq text and compare it sharded (zig-zag) with one process."""
    import tempfile

    import torch

    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / "case.seq"
        path.write_text(text)
        model = seqdsl.load(str(path))
    x = torch.randn(2, N, 8, generator=torch.Generator().manual_seed(0))
    return H.compare_module(model, (x,), group, "zigzag")


def suffix_case(group):
    return _source_case(SUFFIX, group)


LONGFORMER = ("models/longformer.seq", None, {"W": 6, "G": 2})


def longformer_bytes_case(group):
    """Longformer's forward on 2 ranks with the bytes handed to each kind of collective
    counted (codegen/distributed/comm.py: counting); test_models.py sets them beside the
    analysis' formulas."""
    import torch

    import seqdsl.distributed as sd
    from codegen.distributed import comm

    path, entry, extra = LONGFORMER
    model = _model(path, entry, extra)
    inputs = model.example_inputs(**{"B": 2, "N": N, **extra})
    with torch.no_grad(), sd.sequence_parallel(group):
        local = [sd.shard(x, 1) for x in inputs]
        with comm.counting() as counted:
            model(*local)
    return dict(counted)


# two sequence-parallel mixers on independent branches of one block (a softmax on the ring,
# 2 heads over 4 ranks, and linear attention by state passing), summed: their forward and
# backward collectives must meet in the same order on every rank
BRANCHES = """dim B, N, D = 8, H = 2

model branches(x: [B, N, D]) -> [B, N, D] {
  q = rearrange(linear(x, D), "b n (h d) -> b h n d", h = H)
  k = rearrange(linear(x, D), "b n (h d) -> b h n d", h = H)
  v = rearrange(linear(x, D), "b n (h d) -> b h n d", h = H)
  a = mix(q, k, v, score = dot(), mask = window(5), norm = softmax)
  f = rearrange(linear(x, D), "b n (h d) -> b h n d", h = H)
  g = rearrange(linear(x, D), "b n (h d) -> b h n d", h = H)
  c = mix(f, g, v, feature = elu1, mask = causal(), norm = sum)
  return linear(rearrange(a, "b h n d -> b n (h d)"), D) + linear(rearrange(c, "b h n d -> b n (h d)"), D)
}
"""


def branches_case(group):
    return _source_case(BRANCHES, group)


def cases() -> list:
    out = [("suffix-rows-P4", 4, suffix_case), ("branches-P4", 4, branches_case)]
    for P, layout in ((2, "contiguous"), (4, "zigzag")):
        for path, entry, extra in MODELS + (EXTRA if os.environ.get("SEQDSL_DIST_EXTRA") == "1" else []):
            if P == 2 and path not in TWO_RANKS:
                continue
            name = pathlib.Path(path).stem + (f".{entry}" if entry else "")
            out.append((f"{name}-P{P}", P, model_case(path, entry, extra, layout)))
    # two-rank cases alternate between the pairs of ranks: these two land on the pair that
    # ran longformer-P2 (its module already loaded there) and on the other one
    out += [("bigbird-Bk3-N39-P2", 2, model_case(*BIGBIRD, "contiguous")),
            ("bytes:longformer-P2", 2, longformer_bytes_case)]
    return out


def main() -> dict:
    return H.run_cases(cases())
