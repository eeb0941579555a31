"""Names from the .seq file that meet the attributes of a generated torch module.

Weights and layers keep the file's names (``named_parameters()`` gives them), even a name the
module's class already has (``w``, ``step``, ``train``): runtime.SeqModule keeps them in
nn.Module's tables and the generated code reads such a path with ``self.w(path)``. One name
cannot be held at all: ``training``, the flag train()/eval() set on every module.
"""

from __future__ import annotations

from seqdsl.errors import SeqError
from seqdsl.ir.graph import Node


def _module_attrs() -> frozenset:
    """Names a generated module already has (SeqModule's, and what the generated class and
    load() set): a weight path through one of them is read by path."""
    try:
        from codegen.torch.runtime import SeqModule
    except ImportError:       # generating without torch: every weight is read by path
        return frozenset()
    return frozenset(dir(SeqModule)) | {"RUNTIME", "BOUNDS", "DEFAULTS", "FIXED_BY", "ENTRY", "DECODE",
                                        "DECODE_LIMITS",
                                        "choices", "source", "training"}


MODULE_ATTRS = _module_attrs()


def check_layer(n: Node) -> None:
    """Refuse, at the layer's position, a path through ``training``."""
    if "training" in n.name.split("."):
        raise SeqError(f"{n.name}: 'training' cannot name a weight or a layer (it is the train/eval "
                       "flag every torch module keeps); rename it", n.pos)
