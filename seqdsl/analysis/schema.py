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

_DECODE_COSTS = {
    "flops": _EXPR, "state_bytes": _EXPR, "big_o": _BIG_O,
    "values": {"type": "object", "required": ["flops", "state_bytes"],
               "additionalProperties": {"type": "number"}},
}
# `--decode`: one generated token after a context of N (seqdsl.analysis.decode).
_DECODE = {
    "type": "object",
    "required": ["can_decode", "reason", "layers", "total", "crossover"],
    "properties": {
        "can_decode": {"type": "boolean"}, "reason": {"type": "string"},
        "layers": {"type": "array", "items": {
            "type": "object", "required": ["name", "op", "state", *_DECODE_COSTS],
            "properties": {"name": {"type": "string"}, "op": {"type": "string"}, "state": {"type": "string"},
                           "refusal": {"type": "string"}, "note": {"type": "string"}, **_DECODE_COSTS}}},
        "total": {"type": "object", "required": list(_DECODE_COSTS), "properties": _DECODE_COSTS},
        "crossover": {"oneOf": [{"type": "null"}, {
            "type": "object", "required": ["attention_flops", "rest_flops", "formula", "value", "layers"],
            "properties": {"attention_flops": _EXPR, "rest_flops": _EXPR,
                           "formula": {"oneOf": [{"type": "null"}, _EXPR]},
                           "value": {"oneOf": [{"type": "null"}, {"type": "number"}]},
                           "layers": {"type": "array", "items": {"type": "string"}}}}]},
    },
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
        "decode": _DECODE,
    },
}
