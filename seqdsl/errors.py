"""Errors reported to users: ``file:line:col: error: message``, the source line, a caret.

Every problem in a ``.seq`` file is raised as :class:`SeqError`. The CLI prints
:meth:`SeqError.render` and exits with status 1; it never shows a Python traceback.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Pos:
    """A source span. Lines and columns are 1-based, as editors show them."""

    file: str
    line: int
    col: int
    end_line: int | None = None
    end_col: int | None = None

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


NOWHERE = Pos("<unknown>", 0, 0)

# Sources registered by the front end, so that errors can quote the offending line.
_SOURCES: dict[str, str] = {}


def register_source(file: str, text: str) -> None:
    _SOURCES[file] = text


def source_line(file: str, line: int) -> str | None:
    text = _SOURCES.get(file)
    if text is None or line < 1:
        return None
    lines = text.splitlines()
    return lines[line - 1] if line <= len(lines) else None


class SeqError(ValueError):
    """An error in a ``.seq`` program, carrying its position (file, line, column)."""

    def __init__(self, message: str, pos: Pos | None = None, hint: str | None = None):
        self.message = message
        self.pos = pos or NOWHERE
        self.hint = hint
        super().__init__(self.render())

    @property
    def file(self) -> str:
        return self.pos.file

    @property
    def line(self) -> int:
        return self.pos.line

    @property
    def column(self) -> int:
        return self.pos.col

    def render(self) -> str:
        """The message as the CLI prints it: location, source line with a caret, hint."""
        if self.pos.line > 0:
            head = f"{self.pos}: error: "
        elif self.pos.file != NOWHERE.file:
            head = f"{self.pos.file}: error: "
        else:
            head = "error: "
        out = [head + self.message]
        text = source_line(self.pos.file, self.pos.line)
        if text is not None:
            width = 1
            if self.pos.end_line == self.pos.line and self.pos.end_col:
                width = max(1, self.pos.end_col - self.pos.col)
            out.append(f"  {text.rstrip()}")
            out.append("  " + " " * (self.pos.col - 1) + "^" + "~" * (width - 1))
        if self.hint:
            out.append(f"  hint: {self.hint}")
        return "\n".join(out)
