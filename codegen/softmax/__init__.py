"""The softmax family (SPEC §1): dense, masked / sparse and content-based softmax
attention, and given (synthetic) scores.

- ``reference.py``: the literal formula, fp32, the whole score matrix (tests only);
- ``torch_impl.py``: ``softmax_attention`` (algorithms materialized | sdpa | tiled) and
  ``given_attention``;
- ``plan.py``: which tiles each step of the tiled algorithm computes, from the masks' block
  schedules (batched squares of full tiles, strided windows, masked leftovers; cached);
- ``tiled.py``: the tiled online-softmax engine (chunk kernels, log-sum-exp merging, the
  autograd function with a FlashAttention-2-style backward);
- ``scores.py``: positional biases (ALiBi, relative) at index tensors.

Masks are the runtime masks of ``codegen/masks.py``.
"""
