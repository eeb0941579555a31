"""Runs hostile-input cases in one fresh process (the test starts it under a wall-clock
timeout and an address-space cap) and prints one JSON line per case.

Reads a JSON list of ``{"name", "code"}`` on stdin (``"seconds"`` may raise the case's limit). ``code`` is Python whose last line is an
expression: the call to judge. The namespace has ``seqdsl``, ``Path`` and ``cli(*args)``,
which runs the ``seqdsl`` command in-process and returns its exit code and output. Each case
gets CASE_SECONDS of CPU time (SIGPROF: a loaded CI machine does not make it fail) and four
times that of wall time (SIGALRM: a case blocked reading a FIFO uses no CPU); ``seconds`` in
the result is the CPU time it used. A line ``start NAME`` is printed first, so that a case
that takes the whole process down is named in the test's failure.
"""

from __future__ import annotations

import json
import signal
import sys
import time
import traceback
from pathlib import Path

CASE_SECONDS = 8


class CaseTimeout(BaseException):
    pass


def _alarm(signum, frame):
    raise CaseTimeout()


def cli(*args: str) -> dict:
    from typer.testing import CliRunner

    from seqdsl.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    try:
        stdout, stderr = result.stdout, result.stderr
    except ValueError:         # an older Click mixes the two
        stdout, stderr = result.output, ""
    exc = result.exception if not isinstance(result.exception, SystemExit) else None
    return {"exit_code": result.exit_code, "stdout": stdout[-20000:], "stderr": stderr[-5000:],
            "exception": repr(exc) if exc is not None else None}


def run_case(code: str, seconds: int = CASE_SECONDS) -> dict:
    import seqdsl

    lines = code.strip().splitlines()
    scope = {"seqdsl": seqdsl, "Path": Path, "cli": cli}
    start = time.process_time()
    signal.setitimer(signal.ITIMER_PROF, seconds)
    signal.alarm(4 * seconds)
    try:
        exec("\n".join(lines[:-1]), scope)
        value = eval(lines[-1], scope)
        out = {"kind": "ok", "value": value if isinstance(value, (str, dict, int, list)) else repr(value)[:2000]}
    except seqdsl.SeqError as err:
        out = {"kind": "SeqError", "file": err.file, "line": err.line, "col": err.column,
               "message": err.message, "rendered": err.render()}
    except CaseTimeout:
        out = {"kind": "timeout"}
    except BaseException as err:  # noqa: BLE001 - what the test reports
        out = {"kind": "other", "type": type(err).__name__, "message": str(err)[:2000],
               "trace": traceback.format_exc()[-3000:]}
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.alarm(0)
    out["seconds"] = time.process_time() - start
    return out


def main() -> None:
    signal.signal(signal.SIGALRM, _alarm)
    signal.signal(signal.SIGPROF, _alarm)
    for case in json.load(sys.stdin):
        print(f"start {case['name']}", flush=True)
        result = run_case(case["code"], case.get("seconds", CASE_SECONDS))
        print(json.dumps({"name": case["name"], **result}), flush=True)


if __name__ == "__main__":
    main()
