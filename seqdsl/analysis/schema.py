"""The JSON schema of ``seqdsl analyze complexity --json`` (SPEC §5)."""

from __future__ import annotations

_EXPR = {"type": "string", "minLength": 1}
_VALUES = {
    "type": "object",
    "required": ["flops", "matmul_flops", "param_count", "activation_bytes", "hbm_bytes"],
    "additionalProperties": {"type": "number"},
}
_BIG_O = {
    "type": "object",
    "required": ["time", "memory"],
    "properties": {"time": {"type": "string", "pattern": r"^O\(.+\)$"},
                   "memory": {"type": "string", "pattern": r"^O\(.+\)$"}},
}
_COSTS = {
    "flops": _EXPR, "matmul_flops": _EXPR, "param_count": _EXPR, "activation_bytes": _EXPR,
    "hbm_bytes": _EXPR, "big_o": _BIG_O, "values": _VALUES,
}
_CANDIDATE = {
    "type": "object",
    "required": ["algorithm", "flops", "matmul_flops", "activation_bytes", "hbm_bytes", "estimated_seconds"],
    "properties": {"algorithm": {"type": "string"}, "flops": _EXPR, "matmul_flops": _EXPR,
                   "activation_bytes": _EXPR, "hbm_bytes": _EXPR, "estimated_seconds": {"type": "number"}},
}
_LAYER = {
    "type": "object",
    "required": ["name", "op", "algorithm", "candidates", *_COSTS],
    "properties": {"name": {"type": "string"}, "op": {"type": "string"}, "algorithm": {"type": "string"},
                   "candidates": {"type": "array", "items": _CANDIDATE}, "note": {"type": "string"}, **_COSTS},
}

REPORT_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "seqdsl analyze complexity report",
    "type": "object",
    "required": ["model", "sizes", "layers", "total"],
    "properties": {
        "model": {"type": "string"},
        "sizes": {"type": "object", "additionalProperties": {"type": "number"}},
        "machine": {"type": "string"},
        "pass": {"enum": ["forward", "forward+backward"]},
        "layers": {"type": "array", "items": _LAYER},
        "total": {"type": "object", "required": list(_COSTS), "properties": _COSTS},
    },
}
