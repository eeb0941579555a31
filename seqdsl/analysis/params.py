"""Parameter counts: the weights a model trains (non-zeros of a fixed sparsity pattern only)
and the weights it stores (dense tensors, masked entries included).

A ``linear``/``mlp`` with ``sparsity = <fixed mask>`` stores a dense [out, in] weight and a
mask; only the entries the mask keeps are ever non-zero or receive a gradient, so the count of
trained parameters (what papers report, e.g. Pixelated Butterfly's) is the mask's pair count.
"""

from __future__ import annotations

import sympy

from seqdsl.ir.graph import Graph, OpKind
from seqdsl.ir.graph import param_count as stored_param_count

SPARSE_ROLES = ("weight", "w1", "w2")   # the weights a layer's ``sparsity`` masks


def weight_density(mask, rows, cols) -> sympy.Expr:
    """The fraction of a [rows, cols] weight a fixed mask keeps (1 when it has no closed form,
    which over-counts rather than under-counts)."""
    from seqdsl.analysis.masks import closed_pairs

    pairs = closed_pairs(mask, rows, cols)
    return sympy.Integer(1) if pairs is None else pairs / (rows * cols)


def nonzero_param_count(g: Graph) -> sympy.Expr:
    """Trainable weights, counting a sparse layer's weight by the non-zeros its pattern keeps;
    nested bodies (MoE experts) with their multiplicity."""
    total = stored_param_count_flat(g) - masked_zeros(g)
    for n in g.nodes():
        body = n.attr("body")
        if body is not None:
            total += n.attr("copies", 1) * nonzero_param_count(body)
    return sympy.expand(total)


def masked_zeros(g: Graph, prefix: str | None = None) -> sympy.Expr:
    """The entries that fixed sparsity patterns zero in the weights of ``g`` itself (those
    named under ``prefix`` when given): stored, never trained."""
    total = sympy.Integer(0)
    masked: set[int] = set()
    for n in g.nodes():
        mask = n.attr("sparsity")
        if mask is None:
            continue
        for p in n.inputs:
            src = g.node(p.node)
            if (src.kind == OpKind.PARAM and p.role in SPARSE_ROLES and src.id not in masked
                    and (prefix is None or src.name.startswith(prefix + "."))):
                masked.add(src.id)
                rows, cols = src.out.shape
                total += src.out.numel() * (1 - weight_density(mask, rows, cols))
    return total


def stored_param_count_flat(g: Graph) -> sympy.Expr:
    """The PARAM nodes of ``g`` itself (not of nested bodies), dense."""
    return sum((n.out.numel() for n in g.nodes(OpKind.PARAM)), sympy.Integer(0))


__all__ = ["masked_zeros", "nonzero_param_count", "stored_param_count", "weight_density"]
