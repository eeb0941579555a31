"""The ``seqdsl`` command line (SPEC §3). Thin: parsing options and printing results.

Errors in a ``.seq`` file print as ``file:line:col: error: ...`` and exit with status 1.
Any other failure is a bug in seqdsl: it prints one line saying so (status 2), and the
traceback only with SEQDSL_DEBUG=1.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from seqdsl import __version__
from seqdsl.errors import SeqError

app = typer.Typer(
    name="seqdsl",
    help="A compiler for long-sequence neural architectures written as .seq files.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

SetOpt = Annotated[
    Optional[list[str]],
    typer.Option("--set", "-s", help="Set a dim or option: --set N=4096 (repeatable)."),
]
EntryOpt = Annotated[
    Optional[str], typer.Option("--entry", "-e", help="The mixer, block or model to use (default: the model).")
]
FileArg = Annotated[Path, typer.Argument(help="A .seq file.", show_default=False)]
ExpandOpt = Annotated[
    bool, typer.Option("--expand", help="List every repeat iteration (default: identical ones are folded).")
]


def parse_sets(items: list[str] | None) -> dict[str, str]:
    sizes: dict[str, str] = {}
    for item in items or []:
        name, eq, value = item.partition("=")
        if not eq or not name.strip() or not value.strip():
            raise SeqError(f"--set expects NAME=VALUE, got {item!r}")
        sizes[name.strip()] = value.strip()
    return sizes


def guarded(fn):
    """Turn SeqError into its rendered message and exit 1; hide tracebacks of bugs."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except SeqError as err:
            typer.echo(err.render(), err=True)
            raise typer.Exit(1) from None
        except (typer.Exit, typer.Abort):
            raise
        except BrokenPipeError:   # the reader went away (`seqdsl compile … | head`): not an error of ours
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise typer.Exit(0) from None
        except OSError as err:    # an output path that cannot be written: the user's to fix, not a bug
            where = f"{err.filename}: " if err.filename else ""
            typer.echo(f"error: cannot write {where}{err.strerror or err}", err=True)
            raise typer.Exit(1) from None
        except Exception as err:  # noqa: BLE001 - the last line of defence for users
            if os.environ.get("SEQDSL_DEBUG"):
                raise
            typer.echo(f"internal error: {type(err).__name__}: {err}\n"
                       "  this is a bug in seqdsl; rerun with SEQDSL_DEBUG=1 for the traceback", err=True)
            raise typer.Exit(2) from None

    return wrapper


def output_path(path: Path, what: str, folder: bool = False) -> Path:
    """Refuse an output path that cannot be written before any work is done: a missing
    parent folder, one that is not writable, a file where a folder is wanted or the reverse."""
    if folder:
        if path.exists() and not path.is_dir():
            raise SeqError(f"{what} {path}: exists and is not a folder")
        target = path
        while not target.exists() and target != target.parent:   # compile -o a/b creates a/b
            target = target.parent
    else:
        if path.is_dir():
            raise SeqError(f"{what} {path}: is a folder; give a file name")
        target = path.parent
    if not target.is_dir():
        raise SeqError(f"{what} {path}: the folder {target} does not exist")
    if not os.access(target, os.W_OK | os.X_OK):
        raise SeqError(f"{what} {path}: the folder {target} is not writable")
    return path


def _json_safe(value):
    """JSON has no Infinity or NaN: such a number is written as the string "inf" or "nan"."""
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return str(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _version(value: bool) -> None:
    if value:
        typer.echo(f"seqdsl {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        Optional[bool], typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = None,
    import_path: Annotated[
        Optional[list[Path]],
        typer.Option("--import-path", "-I", help="Also resolve `import` in DIR (repeatable; also SEQDSL_PATH)."),
    ] = None,
    allow_any_import: Annotated[
        bool, typer.Option("--allow-any-import", help="Let `import` read .seq files outside the import folders.")
    ] = False,
) -> None:
    """seqdsl: check, analyse and compile long-sequence architectures."""
    from seqdsl.check.program import set_import_defaults

    set_import_defaults(import_path or (), allow_any_import)   # for this command (each one resets them)


@app.command()
@guarded
def check(file: FileArg, entry: EntryOpt = None, set_: SetOpt = None, expand: ExpandOpt = False) -> None:
    """Parse and type/shape-check FILE; print its inputs, outputs, parameters and layers."""
    from seqdsl.api import check_all
    from seqdsl.report import check_report

    checked = check_all(file, entry, **parse_sets(set_))
    typer.echo(check_report(checked, expand=expand))


@app.command()
@guarded
def graph(
    file: FileArg,
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="OUT.dot, OUT.svg or OUT.png")] = None,
    entry: EntryOpt = None,
    set_: SetOpt = None,
    params: Annotated[bool, typer.Option("--params", help="Draw weight nodes too.")] = False,
    expand: ExpandOpt = False,
) -> None:
    """Draw the layer graph of FILE (DOT text on stdout without -o)."""
    from seqdsl.api import check as check_api
    from seqdsl.viz import to_dot, write_graph

    if output is not None:
        output_path(output, "graph -o")
    checked = check_api(file, entry, **parse_sets(set_))
    if output is None:
        typer.echo(to_dot(checked.graph, with_params=params, expand=expand), nl=False)
        return
    note = write_graph(checked.graph, output, with_params=params, expand=expand)
    typer.echo(f"wrote {output} ({len(checked.graph)} nodes), {note}")


@app.command()
@guarded
def ir(file: FileArg, entry: EntryOpt = None, set_: SetOpt = None) -> None:
    """Print the layer graph of FILE as text, one node a line (what SEQDSL_DUMP writes)."""
    from seqdsl.api import check as check_api
    from seqdsl.ir.graph import format_graph

    typer.echo(format_graph(check_api(file, entry, **parse_sets(set_)).graph))


@app.command()
@guarded
def fmt(file: FileArg, write: Annotated[bool, typer.Option("--write", "-w", help="Rewrite FILE in place.")] = False
        ) -> None:
    """Print FILE in canonical form (comments are not kept)."""
    from seqdsl.frontend.parser import parse_file
    from seqdsl.frontend.printer import module

    text = module(parse_file(file))
    if write:
        file.write_text(text)
    else:
        typer.echo(text, nl=False)


@app.command(name="builtins")
@guarded
def list_builtins() -> None:
    """List the primitives of the language with their signatures."""
    from seqdsl.report import builtins_report

    typer.echo(builtins_report())


@app.command(name="compile")
@guarded
def compile_cmd(
    file: FileArg,
    output: Annotated[Path, typer.Option("-o", "--output", help="Directory for the generated sources.")] = Path("out"),
    backend: Annotated[str, typer.Option("--backend", help="torch, triton or auto.")] = "auto",
    entry: EntryOpt = None,
    set_: SetOpt = None,
    algorithm: Annotated[
        Optional[list[str]], typer.Option("--algorithm", help="Force LAYER=ALGORITHM (repeatable).")
    ] = None,
) -> None:
    """Write the generated, readable module of FILE and say which algorithm each mixer uses and why."""
    from seqdsl.api import compile as compile_api

    forced = parse_sets(algorithm)
    output_path(output, "compile -o", folder=True)
    result = compile_api(file, output, backend=backend, entry=entry, algorithms=forced or None, **parse_sets(set_))
    typer.echo(f"wrote {result.path} (class {result.class_name})")
    for c in result.choices:
        if c.backend == "triton":
            typer.echo(f"  {c.path}: {c.family} -> {c.algorithm} ({c.note})")
            continue
        others = ", ".join(f"{a} {t:.3g} s" for a, t in sorted(c.estimates.items(), key=lambda kv: kv[1])
                           if a != c.algorithm)
        why = "forced" if c.forced else f"estimated {c.estimates[c.algorithm]:.3g} s"
        if c.by_length is not None:    # chosen for the length of each call
            why = f"at the default sizes {c.algorithm}, {why}"
        typer.echo(f"  {c.path}: {c.family} -> {c.describe()} ({why}" + (f"; {others}" if others else "") + ")")
        if c.note:
            typer.echo(f"    {c.note}")


@app.command(name="run")
@guarded
def run_cmd(
    file: FileArg,
    entry: EntryOpt = None,
    set_: SetOpt = None,
    device: Annotated[str, typer.Option("--device", help="cpu or cuda.")] = "cpu",
    backward: Annotated[bool, typer.Option("--backward/--no-backward", help="Also run the backward pass.")] = True,
    repeat: Annotated[int, typer.Option("--repeat", help="Timed runs (the best is reported).")] = 3,
    backend: Annotated[str, typer.Option("--backend", help="torch, triton or auto.")] = "auto",
    nproc: Annotated[int, typer.Option("--nproc", help="Split the sequence over this many local processes "
                                       "(gloo; docs/distributed.md).")] = 1,
    layout: Annotated[str, typer.Option("--layout", help="With --nproc: contiguous or zigzag.")] = "contiguous",
) -> None:
    """Run a forward (and backward) pass of FILE on random inputs; print time and peak memory."""
    from seqdsl.runner import run_model

    sizes = parse_sets(set_)
    if nproc != 1:
        from seqdsl.distributed.run import run_distributed

        run_distributed(file, entry, sizes, nproc, backward=backward, repeat=repeat, layout=layout, echo=typer.echo)
        return
    _fits_in_memory(file, entry, sizes, device)
    try:
            run_model(file, entry, sizes, device=device, backward=backward, repeat=repeat, backend=backend,
                  echo=typer.echo)
    except (RuntimeError, MemoryError) as err:      # torch's allocator: its first line, not its C++ stack
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        if isinstance(err, MemoryError) or "alloc" in first.lower() or "out of memory" in first.lower():
            raise SeqError(f"run: out of memory at these sizes ({first[:200]})") from None
        raise


def _fits_in_memory(file: Path, entry: str | None, sizes: dict, device: str) -> None:
    """Refuse, before allocating, sizes whose inputs and weights alone exceed the memory
    available (``--set N=1000000000``): the run would fail deep inside torch, or swap."""
    from seqdsl.api import check as check_api
    from seqdsl.ir.graph import OpKind

    checked = check_api(file, entry, **sizes)
    elements = 0
    for n in checked.graph.nodes():
        if n.kind in (OpKind.INPUT, OpKind.PARAM, OpKind.BUFFER):
            value = checked.value(n.out.numel())
            value = value.xreplace({d: 1 for d in value.free_symbols})   # dims without a value: at least 1
            elements += int(value) if value.is_number else 0
    need = 4 * elements      # fp32; activations and gradients come on top
    if device == "cuda":
        import torch

        free = torch.cuda.mem_get_info()[0]
    else:
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    if need > free:
        raise SeqError(f"run: the inputs and weights alone need {need / 2**30:.3g} GiB at these sizes; "
                       f"{free / 2**30:.3g} GiB of {device} memory is free", hint="run at smaller sizes (--set)")


@app.command(name="generate")
@guarded
def generate_cmd(
    file: FileArg,
    prompt: Annotated[str, typer.Option("--prompt", "-p", help="Text (a byte-level vocabulary, V ≥ 256) or "
                                        "token ids separated by spaces.")],
    tokens: Annotated[int, typer.Option("--tokens", "-n", help="How many tokens to generate.")] = 200,
    checkpoint: Annotated[
        Optional[Path], typer.Option("--checkpoint", help="A state_dict saved with torch.save.")
    ] = None,
    temperature: Annotated[float, typer.Option("--temperature", help="0: greedy.")] = 1.0,
    top_k: Annotated[Optional[int], typer.Option("--top-k", help="Sample among the k most likely.")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seeds the initial weights and the sampling.")] = 0,
    entry: EntryOpt = None,
    set_: SetOpt = None,
) -> None:
    """Generate text after a prompt: the prompt runs once (prefill), then one step per token
    from the model's state; prints the text, tokens/s of each phase and the state's memory."""
    from seqdsl.generate import generate

    result = generate(file, prompt, tokens, entry=entry, checkpoint=checkpoint, temperature=temperature,
                      top_k=top_k, seed=seed, **parse_sets(set_))
    typer.echo(result.text)
    typer.echo(result.summary(), err=True)


analyze_app = typer.Typer(help="Cost analysis.", no_args_is_help=True)
app.add_typer(analyze_app, name="analyze")


@analyze_app.command("complexity")
@guarded
def analyze_complexity(
    file: FileArg,
    entry: EntryOpt = None,
    set_: SetOpt = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON (SPEC §5).")] = False,
    backward: Annotated[bool, typer.Option("--backward", help="Add the backward pass.")] = False,
    machine: Annotated[str, typer.Option("--machine", help="Machine model for the choice: cpu or h100.")] = "cpu",
    algorithm: Annotated[
        Optional[list[str]], typer.Option("--algorithm", help="Force LAYER=ALGORITHM (repeatable).")
    ] = None,
    plot: Annotated[Optional[Path], typer.Option("--plot", help="Draw cost against N to this PNG/SVG.")] = None,
    formulas: Annotated[bool, typer.Option("--formulas/--no-formulas", help="Show formulas in the table.")] = True,
    mixers_only: Annotated[bool, typer.Option("--mixers-only", help="List only the mixers (total of all).")] = False,
    expand: ExpandOpt = False,
    decode: Annotated[bool, typer.Option("--decode", help="Add the cost of generating one token after a context "
                                         "of N: FLOPs per token and state bytes per layer.")] = False,
    nproc: Annotated[Optional[int], typer.Option("--nproc", help="Add the cost per rank with the sequence split "
                                                 "over P ranks: FLOPs, memory, bytes sent.")] = None,
    memory: Annotated[Optional[str], typer.Option("--memory", help="With --nproc: the largest N whose per-rank "
                                                  "memory fits this (e.g. 24GB).")] = None,
) -> None:
    """FLOPs, matrix FLOPs, parameters, activation memory and memory traffic of every layer
    of FILE, as formulas and numbers, with the algorithm chosen for each mixer and why;
    with --decode, the per-token cost and the state of step-by-step decoding."""
    import json

    from seqdsl.analysis.select import MACHINES
    from seqdsl.analysis.table import render
    from seqdsl.api import analyze

    if machine not in MACHINES:
        raise SeqError(f"--machine must be one of {', '.join(MACHINES)}, got {machine!r}")
    forced = dict(parse_sets(algorithm))
    if plot is not None:
        output_path(plot, "--plot")
    report = analyze(file, entry, backward=backward, machine=machine, algorithms=forced, decode=decode,
                     **parse_sets(set_))
    dist = _distributed_section(file, entry, report, nproc, memory, parse_sets(set_))
    if json_out:
        typer.echo(json.dumps(_json_safe(report.to_dict() | ({} if dist is None else {"distributed": dist})),
                              indent=2, allow_nan=False))
    else:
        typer.echo(render(report, formulas=formulas, mixers_only=mixers_only, expand=expand))
        if dist is not None:
            from seqdsl.analysis.distributed import render as render_distributed

            typer.echo(render_distributed(dist))
        if decode:
            from seqdsl.analysis.decode import render_decode

            typer.echo(render_decode(report.to_dict()["decode"], formulas=formulas))
    if plot is not None:
        from seqdsl.analysis.plot import plot_costs

        n_crossings = plot_costs(file, entry, parse_sets(set_), plot, machine=machine)
        typer.echo(f"wrote {plot} ({n_crossings} crossover point(s) marked)", err=json_out)


def _distributed_section(file, entry, report, nproc: int | None, memory: str | None, sizes: dict) -> dict | None:
    """``--nproc``/``--memory``: the per-rank costs (seqdsl/analysis/distributed.py)."""
    if nproc is None:
        if memory is not None:
            raise SeqError("--memory needs --nproc (the number of ranks the sequence is split over)")
        return None
    if nproc < 1:
        raise SeqError(f"--nproc must be at least 1, got {nproc}")
    from seqdsl.analysis.distributed import analyze_distributed, parse_memory
    from seqdsl.api import check

    try:
        budget = None if memory is None else parse_memory(memory)
    except ValueError as err:
        raise SeqError(str(err)) from None
    return analyze_distributed(check(file, entry, **sizes).graph, report, nproc, budget)


# `seqdsl train` and `seqdsl compare` live with the training package (docs/training.md).
from seqdsl.training.commands import register as _register_training  # noqa: E402

_register_training(app, guarded, parse_sets, output_path)


def run() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    run()
