"""How a .seq file's ``fixed_point`` converges at initialisation: the relative residual
‖f(z) − z‖ / ‖f(z)‖ after each application of the cell, for each solver, from the same z0.

    python scripts/deq_convergence.py examples/models/deq.seq --sizes B=1,N=150 --iters 30
    python scripts/deq_convergence.py examples/models/deq.seq --small      # tests/codegen/small_sizes.json

The model is built at the given sizes (seed 0) and run once on its example inputs (seed 0),
which records its first equilibrium function f(z) = cell(z, x) and z0; each solver of
codegen/torch/equilibrium.py is then run on that f from that z0 with the file's ``iters`` and
``tol`` (``--iters`` overrides). Prints one line per solver: the residual trace, the
lowest residual and the application count at which it fell below ``tol`` (if it did).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import seqdsl  # noqa: E402
from codegen.torch import equilibrium  # noqa: E402


def capture(model: torch.nn.Module):
    """f (the first equilibrium cell of ``model`` with its other arguments bound) and z0,
    recorded from one forward on the model's example inputs."""
    got: dict = {}
    real = equilibrium.solve

    def first_solve(f, z0, iters, tol, solver):          # record f and z0; 1 Picard step to go on
        got.setdefault("f", f)
        got.setdefault("z0", z0.clone())
        return real(f, z0, 1, tol, "picard")

    equilibrium.solve = first_solve
    try:
        with torch.no_grad(), torch.random.fork_rng(), equilibrium.warnings.catch_warnings():
            equilibrium.warnings.simplefilter("ignore", equilibrium.EquilibriumWarning)
            torch.manual_seed(0)
            model(*model.example_inputs())
    finally:
        equilibrium.solve = real
    return got["f"], got["z0"]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("seq", type=Path)
    ap.add_argument("--sizes", default="", help="NAME=value,... (dims and options)")
    ap.add_argument("--small", action="store_true", help="the sizes of tests/codegen/small_sizes.json")
    ap.add_argument("--iters", type=int, default=None)
    ap.add_argument("--solvers", default="anderson,broyden,picard")
    ap.add_argument("--float64", action="store_true")
    args = ap.parse_args(argv)
    sizes: dict = {}
    if args.small:
        key = str(args.seq.resolve().relative_to(ROOT / "examples"))
        sizes.update(json.loads((ROOT / "tests/codegen/small_sizes.json").read_text())[key])
    for item in filter(None, args.sizes.split(",")):
        k, v = item.split("=")
        sizes[k] = float(v) if "." in v or "e" in v else int(v)
    torch.manual_seed(0)
    t0 = time.time()
    model = seqdsl.load(args.seq, **sizes).eval()
    if args.float64:
        model = model.double()
    f, z0 = capture(model)
    iters = args.iters or int(model.SIZES["iters"])
    tol = float(model.SIZES["tol"])
    print(f"{args.seq} sizes {model.SIZES} dtype {z0.dtype}; built and captured in {time.time() - t0:.0f} s; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for solver in args.solvers.split(","):
        t = time.time()
        with torch.no_grad():
            best = equilibrium.solve(f, z0, iters, tol, solver)
        below = next((i + 1 for i, r in enumerate(best.trace) if r <= tol), None)
        print(f"{solver:9s} lowest {best.residual:.2e} at application {best.steps:3d}; "
              f"{'reaches tol at ' + str(below) if below else 'above tol = ' + format(tol, 'g')}; "
              f"{time.time() - t:.0f} s")
        print("   trace:", " ".join(f"{r:.1e}" for r in best.trace), flush=True)


if __name__ == "__main__":
    main()
