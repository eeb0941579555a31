"""seqdsl: a compiler for long-sequence neural architectures.

Write an architecture as a ``.seq`` file; seqdsl parses it into a layer graph whose token
mixers follow one template (Y = M · V with M described by score, feature map, mask,
decay, kernel and normalisation), checks every shape, and reports what it is made of.
"""

from seqdsl.api import Checked, analyze, check, compile, load, parse, train  # noqa: A004
from seqdsl.errors import SeqError
from seqdsl.generate import generate
from seqdsl.packing import pack

__version__ = "0.1.0"

__all__ = ["Checked", "SeqError", "__version__", "analyze", "check", "compile", "generate", "load", "pack", "parse", "train"]
