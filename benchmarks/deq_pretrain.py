"""Does a DEQ's fixed point converge after training as released (pretraining, Jacobian term)?

locuslab/deq (DEQ-Sequence/train_transformer.py, models/deq_transformer.py) never solves at
initialisation: its first ``--pretrain_steps`` steps run the cell as a weight-tied stack of
``--n_layer`` applications from z = 0 with plain backprop (2 in wt103_deq_transformer.sh),
then the solver takes over. This script does the same with ``seqdsl train --pretrain-steps``
(every step of the run unrolled, ``applications`` applications of f), then, at the trained
weights and on real batches of the task's evaluation split, runs each solver of
codegen/torch/equilibrium.py on the first equilibrium function of the model from its z0 and
reports the lowest relative residual within the file's ``iters`` and the application at which
it first reaches ``tol`` (searching up to ``--trace`` applications). ``--steps 0``: the same
at initialisation, on the same batches. ``--solve-steps K`` adds K steps by the solver, which
train with everything the file asks of fixed_point, the Jacobian regulariser (jac_loss,
jac_freq: wt103_deq_transformer_reg.sh) included.

    python benchmarks/deq_pretrain.py --steps 0 --solve-steps 200 --trace 60
    python benchmarks/deq_pretrain.py --sizes D=700,H=10,F=48000 --length 150 --batch 2 \
        --steps 0 --solve-steps 100 --batches 2 --trace 40 --append   # the file's own cell
    python benchmarks/deq_pretrain.py --steps 300 --applications 2,30 --no-write
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from codegen.torch import equilibrium  # noqa: E402
from seqdsl.training import TrainConfig, train  # noqa: E402
from seqdsl.training.fit import fit  # noqa: E402
from seqdsl.training.loop import evaluate  # noqa: E402
from seqdsl.training.tasks import make_task  # noqa: E402

SOLVERS = ("anderson", "broyden", "picard")


def capture(model: torch.nn.Module, inputs: torch.Tensor):
    """(f, z0) of the model's first fixed_point on ``inputs``: f = cell(·, x) with x bound."""
    got: dict = {}
    real = equilibrium.solve

    def first_solve(f, z0, iters, tol, solver):
        got.setdefault("f", f)
        got.setdefault("z0", z0.clone())
        got.setdefault("iters", iters)
        got.setdefault("tol", tol)
        return real(f, z0, 1, tol, "picard")

    equilibrium.solve = first_solve
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", equilibrium.EquilibriumWarning)
            model(inputs)
    finally:
        equilibrium.solve = real
    return got["f"], got["z0"], got["iters"], got["tol"]


def pretrain(
    seq: str,
    task: str,
    task_options: dict,
    sizes: dict,
    steps: int,
    applications: int | None,
    batch: int,
    lr: float,
    seed: int,
    solve_steps: int = 0,
) -> tuple[torch.nn.Module, dict, dict]:
    """The model after ``steps`` unrolled steps (fresh at ``steps = 0``) and ``solve_steps`` more
    by the solver (the release's second phase), switched to the solver;
    the run's last (unrolled) evaluation and the same evaluation by the solver."""
    t = make_task(task, task_options)
    final: dict = {}
    state = None
    config = TrainConfig(
        seq,
        task,
        task_options=task_options,
        sizes=sizes,
        steps=steps + solve_steps,
        batch=batch,
        lr=lr,
        seed=seed,
        eval_every=max(1, steps + solve_steps),
        eval_batches=4,
        progress=False,
        plot=False,
        pretrain_steps=steps,
        pretrain_applications=applications,
    )
    if steps + solve_steps:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", equilibrium.EquilibriumWarning)
            result = train(config)
        state, final = result.state, result.final
    model = fit(seq, t.layout, t.name, sizes=sizes, seed=seed, batch=batch).model
    if state is not None:
        model.load_state_dict(state)
    model.fixed_points("solve")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", equilibrium.EquilibriumWarning)
        solved = evaluate(model, t, config)
    return model.eval(), final, solved


def solve_traces(
    model: torch.nn.Module, task: str, task_options: dict, batch: int, seed: int, batches: int, trace: int
) -> dict:
    """Per solver and evaluation batch: (lowest residual within iters, first application ≤ tol)."""
    t = make_task(task, task_options)
    out: dict = {s: [] for s in SOLVERS}
    for i in range(batches):
        f, z0, iters, tol = capture(model, t.batch(t.eval_split, i, batch, seed).inputs)
        for solver in SOLVERS:
            with torch.no_grad():
                best = equilibrium.solve(f, z0, max(trace, iters), tol, solver)
            below = next((k + 1 for k, r in enumerate(best.trace) if r <= tol), None)
            out[solver].append((min(best.trace[:iters]), below, best.trace[:iters]))
    out["iters"], out["tol"] = iters, tol
    return out


def line(name: str, res: dict) -> str:
    cells = []
    for s in SOLVERS:
        lows = [f"{r[0]:.1e}" for r in res[s]]
        at = [str(r[1]) for r in res[s]]
        cells.append(f"{' / '.join(lows)} (tol at {' / '.join(at)})")
    return f"| {name} | " + " | ".join(cells) + " |"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seq", default="examples/models/deq.seq")
    ap.add_argument("--task", default="text_lm")
    ap.add_argument("--length", type=int, default=64, help="text_lm's length (N)")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--applications", default="2,30", help="applications of f per unrolled step, comma-separated")
    ap.add_argument("--solve-steps", type=int, default=0, help="steps by the solver after the unrolled ones")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batches", type=int, default=2, help="evaluation batches to solve on")
    ap.add_argument("--trace", type=int, default=150, help="applications searched for the first ≤ tol")
    ap.add_argument("--sizes", default="", help="dims over the test sizes, e.g. D=700,H=10,F=48000 (the file's)")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--append", action="store_true", help="add this run's section to the result file")
    args = ap.parse_args(argv)
    started = time.time()
    small = json.loads((ROOT / "tests/codegen/small_sizes.json").read_text())["models/deq.seq"]
    sizes = {k: v for k, v in small.items() if k not in ("B", "N")} | {"V": 256}
    where = "tests/codegen/small_sizes.json's sizes"
    if args.sizes:
        sizes |= {k: int(v) for k, v in (kv.split("=") for kv in args.sizes.split(","))}
        where = f"its test sizes with {args.sizes}"
    opts = {"length": args.length}
    rows, traces = [], {}
    counts = args.applications.split(",") if args.steps else ["2"]  # nothing unrolled: one run
    runs = [(0, None, 0)] + [(args.steps, int(a), args.solve_steps) for a in counts if args.steps + args.solve_steps]
    for steps, apps, more in runs:
        t0 = time.time()
        torch.manual_seed(args.seed)
        model, final, solved = pretrain(
            args.seq, args.task, opts, sizes, steps, apps, args.batch, args.lr, args.seed, more
        )
        res = solve_traces(model, args.task, opts, args.batch, args.seed, args.batches, args.trace)
        name = (
            "initialisation"
            if not steps + more
            else (f"{steps} steps unrolled x{apps}" if steps else "")
            + (f"{' + ' if steps else ''}{more} solved" if more else "")
        )
        loss = (
            f", eval loss {'unrolled' if not more else 'solved'} {final['loss']:.3f}" if final else ""
        ) + f", solved {solved['loss']:.3f}"
        print(f"{name}{loss}: {time.time() - t0:.0f} s", flush=True)
        for s in SOLVERS:
            print(
                f"  {s:9s} lowest within {res['iters']}: "
                + " / ".join(f"{r[0]:.2e}" for r in res[s])
                + "; first ≤ tol at "
                + " / ".join(str(r[1]) for r in res[s]),
                flush=True,
            )
        losses = (
            f"{final['loss']:.2f} {'unrolled' if not more else 'solved in training'}, " if final else ""
        ) + f"{solved['loss']:.2f} solved"
        rows.append(line(f"{name} (eval loss {losses})", res))
        traces[name] = res
    if args.no_write:
        return
    it, tol = traces["initialisation"]["iters"], traces["initialisation"]["tol"]
    text = [
        "# DEQ: convergence after training (unrolled pretraining, then by the solver with the file's regulariser)",
        "",
        f"`python benchmarks/deq_pretrain.py {' '.join(argv if argv is not None else sys.argv[1:])}` "
        f"(seed {args.seed}); {platform.processor() or platform.machine()}, {os.cpu_count()} cores "
        f"(a loaded 2-core VM), torch {torch.__version__}, float32; {time.time() - started:.0f} s in all.",
        "",
        f"Model: {args.seq} at {where} (D {sizes['D']}, H {sizes['H']}, "
        f"F {sizes['F']}) with V = 256 and N = {args.length}, trained on {args.task} (bytes of Python source), "
        f"batch {args.batch}, AdamW lr {args.lr}, warmup a tenth; the first --steps steps unrolled "
        "(`seqdsl train --pretrain-steps`, `--pretrain-applications` as the row says), then "
        "--solve-steps steps with the solver where the row says so ("
        "the release pretrains with 2 = its --n_layer). Then, at those weights, each solver runs from z0 = 0 "
        f"on {args.batches} evaluation batches (one number per batch): the lowest relative residual "
        f"‖f(z) − z‖/‖f(z)‖ within the file's iters = {it}, and the application at which it first "
        f"reaches tol = {tol:g} (None: not within {args.trace}). Eval loss: nats per byte on 4 evaluation "
        f"batches, unrolled as trained and with the solver (iters {it}) at the same weights. Solved training steps "
        "add the file's Jacobian term (fixed_point jac_loss/jac_freq) when it has one.",
        "",
        "| weights | anderson | broyden | picard |",
        "|---|---|---|---|",
        *rows,
        "",
    ]
    path = ROOT / "benchmarks/results/deq_pretrain.md"
    if args.append and path.exists():
        text = [path.read_text().rstrip("\n"), "", "## " + text[2]] + text[3:]
    path.write_text("\n".join(text))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
