"""Every example model: does `analyze --decode` agree with the generated module on whether it
decodes, and does its predicted state equal `state.used_nbytes` (a KV cache's rows, without
its buffer's spare capacity, which `state.nbytes` counts)? (docs/decoding.md)

Loads each file of examples/models at its small sizes (tests/codegen/small_sizes.json, one
layer, the sequence length read from the inputs), prefills 63 tokens, steps once, and
compares with the analysis at B = 2, N = 64. Prints one line per model; exits 1 on a
disagreement. Several minutes on the project's 2-core VM.

    python scripts/decode_states.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

import seqdsl

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    small = json.loads((ROOT / "tests" / "codegen" / "small_sizes.json").read_text())
    bad = 0
    for path in sorted((ROOT / "examples" / "models").glob("*.seq")):
        sizes = {k: v for k, v in small.get(f"models/{path.name}", {}).items() if k not in ("N", "B")}
        if "L" in sizes:
            sizes["L"] = 1
        try:
            model = seqdsl.load(path, **sizes)
        except seqdsl.SeqError as err:          # a file being edited: say so, go on
            bad += 1
            print(f"{path.name}: does not load: {str(err).splitlines()[0]}", flush=True)
            continue
        theirs = model.can_decode
        report = seqdsl.analyze(path, decode=True, B=2, N=64, **sizes).to_dict()["decode"]
        line = f"{path.name}: module {theirs[0]}, analysis {report['can_decode']}"
        if theirs[0] != report["can_decode"]:
            bad += 1
            line += f"  DIFFER\n    module:   {theirs[1]}\n    analysis: {report['reason']}"
        elif theirs[0]:
            tokens = torch.randint(0, sizes.get("V", 50), (2, 63), generator=torch.Generator().manual_seed(0))
            _, state = model.prefill(tokens)
            _, state = model.step(tokens[:, -1], state)
            predicted = report["total"]["values"]["state_bytes"]
            ok = predicted == state.used_nbytes
            bad += not ok
            line += f"  state {state.used_nbytes} B (held {state.nbytes} B), predicted {predicted:.0f} B{'' if ok else '  MISMATCH'}"
        print(line, flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
