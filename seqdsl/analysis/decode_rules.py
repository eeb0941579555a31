"""Which layers stop a model from decoding token by token, and why (``analyze --decode``).

A step sees one new position; a layer can take part only if its output at a position reads
that position and earlier ones, through a state its structure defines. Read from the IR:
shapes (which axis is the sequence dim N), op kinds and their attributes, and the parts of
each MixSpec. The code generator applies the same rules when it writes a module's decoding
plan (codegen/decode/plan.py); tests/analysis/test_decode.py checks that both agree.
"""

from __future__ import annotations

import sympy

from seqdsl.ir import mix as M
from seqdsl.ir.graph import Graph, Node, OpKind

_WHOLE_SEQUENCE = {
    OpKind.POOL: "pools windows of the {n} axis",
    OpKind.SEQ_PROJECT: "a learned projection along {n} mixes every position",
    OpKind.SORT_BLOCKS: "sorts blocks of the whole sequence",
    OpKind.MOE: "routes tokens with a capacity that depends on every token of the batch",
    OpKind.FIXED_POINT: "a fixed-point iteration whose stopping test reads the whole sequence",
    OpKind.RECURRENT: "runs segment by segment; a step inside a segment is not derived",
}
_POSITION_WISE = (OpKind.UNARY, OpKind.BINARY, OpKind.DROPOUT, OpKind.GET, OpKind.EMBED, OpKind.INPUT,
                  OpKind.OUTPUT, OpKind.PARAM, OpKind.BUFFER, OpKind.POSITIONS)


def seq_dim(g: Graph) -> sympy.Symbol | None:
    """The sequence dim: axis 1 of the entry's first input (``tokens: int[B, N]``)."""
    if not g.inputs or g.inputs[0].out.rank < 2:
        return None
    d = sympy.sympify(g.inputs[0].out.shape[1])
    return d if d.is_Symbol else None


def _axes(shape, n) -> list[int]:
    return [i for i, d in enumerate(shape) if sympy.sympify(d) == n]


def _uses(expr, n) -> bool:
    return expr is not None and n in sympy.sympify(expr).free_symbols


def entry_refusal(g: Graph, n: sympy.Symbol | None) -> str | None:
    """Why the entry as a whole cannot decode along ``n`` (None: its layers decide). A
    mixer entry with several inputs is costed per position too; ``step`` itself takes
    models whose one input is the token ids."""
    if n is None:
        return "the entry has no sequence dim N"
    for p in g.outputs:
        if not _axes(g.type_of(p).shape, n):
            return f"the output {g.type_of(p)} has no {n} axis: nothing to generate"
    return None


def refusal(g: Graph, node: Node, n: sympy.Symbol) -> str | None:
    """Why ``node`` cannot run one position at a time (None: it can)."""
    ins = [g.type_of(p) for p in node.inputs]
    for t in ins + list(node.outs):
        for d in t.shape:
            if sympy.sympify(d) != n and _uses(d, n):
                return f"an axis of size {d} depends on the sequence length {n}"
    k = node.kind
    on_seq = any(_axes(t.shape, n) for t in ins + list(node.outs))
    if not on_seq:
        return f"a token mixer that does not mix along {n}" if k == OpKind.MIX else None
    if k == OpKind.BINARY and _uses(node.attr("scalar"), n):
        return f"uses the length {n} as a number"
    if k in _POSITION_WISE:
        return None
    x = ins[0] if ins else None
    last = x is not None and x.rank - 1 in _axes(x.shape, n)
    if k in (OpKind.LINEAR, OpKind.MLP, OpKind.HASH):
        return f"acts along the {n} axis" if last else None
    if k == OpKind.NORM:
        if node.attr("fn") == "batchnorm":
            return "batch norm takes its statistics over the whole sequence"
        return f"normalises along the {n} axis" if last else None
    if k in (OpKind.SOFTMAX, OpKind.REDUCE):
        over = node.attr("axis") % x.rank in _axes(x.shape, n)
        return f"{node.attr('fn') or 'softmax'} over the {n} axis reads every position" if over else None
    if k == OpKind.MATMUL:
        b = ins[1]
        if last or (b.rank >= 2 and b.rank - 2 in _axes(b.shape, n)):
            return f"a matrix product that sums over the {n} axis"
        return None
    if k == OpKind.REARRANGE:
        if not _axes(x.shape, n) and len(_axes(node.out.shape, n)) == 1 and node.attr("expand") is not None:
            return None                        # a broadcast along N: the same at every position
        return None if len(_axes(x.shape, n)) == 1 and len(_axes(node.out.shape, n)) == 1 else \
            f"reshapes the {n} axis"
    if k == OpKind.SLICE:
        return _slice(node, x, n)
    if k == OpKind.CONCAT:
        return f"concatenates along the {n} axis" if node.attr("axis") % node.out.rank in _axes(
            node.out.shape, n) else None
    if k == OpKind.CONV1D:
        return None if node.attr("causal") else "a centred (non-causal) convolution reads later positions"
    if k == OpKind.MIX:
        return mix_refusal(g, node, n)
    return _WHOLE_SEQUENCE.get(k, f"no decoding rule for {k.value}").format(n=n)


def _slice(node: Node, x, n) -> str | None:
    shape = iter(x.shape)
    for item in node.attr("index"):
        if item[0] == "new":
            continue
        if sympy.sympify(next(shape)) != n:
            continue
        if item[0] == "index" or sympy.sympify(item[1]) != 0 or sympy.simplify(sympy.sympify(item[2]) - n) != 0:
            return f"takes part of the {n} axis (which positions depends on the length)"
    return None


def mix_refusal(g: Graph, node: Node, n) -> str | None:
    """A mixer decodes when its mask is causal and its family has a state for that mask."""
    spec = node.spec
    for role in ("q", "k", "v"):
        p = node.input(role)
        if p is not None and sympy.sympify(g.type_of(p).shape[-2]) != n:
            return f"its {role} runs over {g.type_of(p).shape[-2]}, not over the sequence {n}"
    leaves = M.mask_leaves(spec.mask)
    terms = M.conjuncts(spec.mask)
    toeplitz = next((x for x in leaves if isinstance(x, M.Toeplitz)), None)
    if toeplitz is not None and not toeplitz.causal:
        return "a bidirectional convolution (a second pass runs backwards in time from the end)"
    if not spec.causal:
        return f"the mask {spec.mask} lets a query see later keys (no causal term)"
    fam = spec.family
    if fam == "toeplitz":
        if len(leaves) > 1:
            return f"a Toeplitz mix with another mask term ({spec.mask}) has no derived state"
        if isinstance(toeplitz.kernel, M.SSMKernel) and toeplitz.kernel.disc == "dss":
            return f"DSS normalises its kernel over the length {n}: earlier outputs change with {n}"
        return None
    if fam in ("linear", "decayed_linear"):
        if any(not isinstance(t, (M.Causal, M.Decay)) for t in terms) or any(
                isinstance(t, M.Causal) and t.offset != 0 for t in leaves):
            return f"a linear mixer's state is derived for causal() & decay(...) masks, not {spec.mask}"
        return None
    if fam not in ("softmax", "content_sparse"):
        return f"no decoding state is derived for the {fam} family"
    causal = [t for t in terms if isinstance(t, M.Causal)]
    if not causal or any(t.offset != 0 for t in causal):
        return f"the KV cache is derived for masks with causal() as a term, not {spec.mask}"
    for leaf in leaves:
        if isinstance(leaf, M.RandomBlocks):
            return f"{leaf}: the draw depends on the number of blocks in {n}"
        if isinstance(leaf, M.BlockMap):
            return f"{leaf}: the block order is computed from the whole sequence"
        if isinstance(leaf, M.KeyRange) and leaf.stop is None:
            return f"{leaf}: keys up to the last position"
        if any(_uses(getattr(leaf, f, None), n) for f in ("size", "block", "stride", "count", "start", "stop")):
            return f"{leaf}: the mask depends on the length {n}"
    if isinstance(spec.score, M.Dot) and spec.score.bias is not None and _uses(spec.score.bias.buckets, n):
        return f"the relative bias has {n} buckets"
    return None
