"""Decoding (issue 13): which layers keep a state when a model generates token by token
(plan.py, from the IR alone); the runtime side is codegen/torch/decode.py."""
