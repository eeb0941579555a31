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
QUOTE_WIDTH = 160     # characters of a source line quoted under a message

# Sources registered by the front end, so that errors can quote the offending line.
_SOURCES: dict[str, str] = {}


def register_source(file: str, text: str) -> None:
    _SOURCES[file] = text


def source_line(file: str, line: int) -> str | None:
    """Line ``line`` of a registered source, counted as the lexer counts: only "\\n" ends a
    line (a form feed or U+2028 inside a line does not shift the lines after it)."""
    text = _SOURCES.get(file)
    if text is None or line < 1:
        return None
    lines = text.split("\n")
    if text.endswith("\n"):
        lines.pop()
    return lines[line - 1].removesuffix("\r") if line <= len(lines) else None


def printable(text: str) -> str:
    """``text`` on one line, with every character a terminal would act on written as an
    escape (a newline as \\n, ESC as \\x1b): a message that quotes a string of the file
    can neither start a line of its own (forging ``file:1:1: error:``) nor drive the terminal."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _shown(text: str) -> str:
    """A source line as it is quoted: tabs expanded, other control characters as one '?' each,
    so that the caret line built from the same text lines up under it."""
    text = text.expandtabs(8)
    return text if text.isprintable() else "".join(c if c.isprintable() else "?" for c in text)


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
        file = printable(self.pos.file)
        if self.pos.line > 0:
            head = f"{file}:{self.pos.line}:{self.pos.col}: error: "
        elif self.pos.file != NOWHERE.file:
            head = f"{file}: error: "
        else:
            head = "error: "
        out = [head + printable(self.message)]
        text = source_line(self.pos.file, self.pos.line)
        if text is not None:
            width = 1
            if self.pos.end_line == self.pos.line and self.pos.end_col:
                width = max(1, self.pos.end_col - self.pos.col)
            shown = _shown(text).rstrip()
            start = len(_shown(text[: self.pos.col - 1]))
            width = max(1, len(_shown(text[: self.pos.col - 1 + width])) - start)
            if len(shown) > QUOTE_WIDTH:       # a long line: the part around the caret
                lo = max(0, min(start - QUOTE_WIDTH // 2, len(shown) - QUOTE_WIDTH))
                cut = ("..." if lo else "") + shown[lo: lo + QUOTE_WIDTH] + ("..." if lo + QUOTE_WIDTH < len(shown) else "")
                start = start - lo + (3 if lo else 0)
                width = max(1, min(width, len(cut) - start))
                shown = cut
            out.append(f"  {shown}")
            out.append("  " + " " * start + "^" + "~" * (width - 1))
        if self.hint:
            out.append(f"  hint: {printable(self.hint)}")
        return "\n".join(out)
