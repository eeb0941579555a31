"""What generated PyTorch modules call: the ordinary layers, and the module base class.

The token mixers live in their family folders (codegen/softmax, codegen/linear,
codegen/toeplitz); this file holds everything else a layer graph needs, each function
the plain PyTorch form of one IR op kind.
"""

from __future__ import annotations

import math

import einops
import torch
import torch.nn.functional as F
from torch import nn

from codegen.distributed import hooks as _sp_hooks
from codegen.distributed.context import active as _sp_active
from codegen.distributed.hooks import unsharded  # noqa: F401  (what generated modules call)
from codegen.distributed.rows import (  # noqa: F401  (sequence parallelism: rows read whole)
    seq_concat,
    seq_local,
    seq_output,
    seq_part,
    seq_replicated_queries,
    seq_take,
)
from codegen.linear.features import gaussian_frequencies  # noqa: F401  (GMM-RKS: rt.gaussian_frequencies)
from codegen.torch import decode
from codegen.torch.packed import (  # noqa: F401  (packed rows: what generated modules call)
    attention_by_document,
    by_position,
    conv1d_by_document,
    documents,
    linear_by_document,
    packing,
    rotary_by_position,
    toeplitz_by_document,
    unpacked,
)
from seqdsl.errors import Pos, SeqError

# ---- the module base class ------------------------------------------------------------


class SeqModule(nn.Module):
    """A generated module. Weights are registered under their layer paths ("layers.3.q.weight")
    through nested containers, so ``named_parameters()`` gives the names of the .seq file."""

    #: (name, dtype, shape) of the forward's inputs; shape entries are ints or dim names.
    INPUTS: tuple = ()
    #: values of the dims and options the module was generated for
    SIZES: dict = {}

    # Weights and layers are kept in nn.Module's own tables (_parameters, _buffers, _modules)
    # under the names of the .seq file, even a name the class already has as an attribute
    # (a weight called `w`, `step` or `train`): nn.Module's register_* would refuse those, and
    # attribute access would find the method. The generated code reads such a path through
    # ``self.w(path)`` (codegen/torch/emit.py: wref), which looks in the tables first.
    def _scope(self, path: str) -> tuple[nn.Module, str]:
        """The container that holds ``path``'s last name, created on the way if missing."""
        *scopes, leaf = path.split(".")
        owner: nn.Module = self
        for scope in scopes:
            child = owner._modules.get(scope)
            if child is None:
                child = owner._modules[scope] = nn.Module()
            owner = child
        return owner, leaf

    def add_weight(self, path: str, tensor: torch.Tensor, trainable: bool = True) -> None:
        owner, leaf = self._scope(path)
        if trainable:
            owner._parameters[leaf] = nn.Parameter(tensor)
        else:
            owner._buffers[leaf] = tensor

    def add_module_at(self, path: str, module: nn.Module) -> None:
        owner, leaf = self._scope(path)
        owner._modules[leaf] = module

    def module_at(self, path: str) -> nn.Module:
        module: nn.Module = self
        for part in path.split(".") if path else ():
            module = module._modules[part]
        return module

    def w(self, path: str) -> torch.Tensor:
        """The weight or buffer at ``path``."""
        owner, leaf = path.rsplit(".", 1) if "." in path else ("", path)
        module = self.module_at(owner)
        for table in (module._parameters, module._buffers):
            if leaf in table:
                return table[leaf]
        return getattr(module, leaf)

    # decoding (codegen/torch/decode.py): the entry class carries DECODE, its plan
    def prefill(self, *inputs: torch.Tensor, max_tokens: int | None = None):
        """(the forward's output over the prompt, the state after it): the usual algorithms.
        ``max_tokens``: the length the sequences will reach (a KV cache's capacity)."""
        return decode.prefill(self, *inputs, max_tokens=max_tokens)

    def step(self, token: torch.Tensor, state):
        """(the output at the next position — [B, V] for a [B, N, V] model —, the new state)."""
        return decode.step(self, token, state)

    @property
    def can_decode(self) -> tuple[bool, str]:
        """(True, what is kept) or (False, why not: the layer and its place in the .seq file)."""
        return decode.can_decode(self)

    def aux_loss(self) -> torch.Tensor:
        """The auxiliary losses the layers left in this module's last forward, summed: each
        MoE layer's α · E · Σ_e f_e · P_e (and its router z-loss); 0 when there are none.
        A training loop adds it to the task loss (``seqdsl run`` does)."""
        total = torch.zeros(())
        serial = getattr(self, "_forward_serial", None)
        for m in self.modules():
            mark, losses = getattr(m, "_aux_losses", (None, ()))
            if mark == serial:
                for loss in losses:
                    total = total + loss
        return total

    def fixed_points(self, mode: str = "solve", applications: int | None = None) -> None:
        """How every fixed_point cell runs from now on: "solve" (the solver, implicit gradient;
        the default) or "unrolled" (``applications`` applications of f, default ``iters``, plain
        autograd: the released DEQ's pretraining); see :func:`codegen.torch.equilibrium.set_mode`."""
        from codegen.torch.equilibrium import set_mode
        set_mode(self, mode, applications)

    def example_inputs(self, **sizes) -> tuple:
        """Random tensors that fit the declared inputs (ints for token ids); ``sizes`` gives
        the dims read from the inputs (default: the file's defaults, B = 2)."""
        known = {**self.SIZES, **getattr(self, "DEFAULTS", {}), **sizes}
        out = []
        gen = torch.Generator().manual_seed(0)
        for _name, dtype, shape in self.INPUTS:
            dims = tuple(int(known.get(d, 2)) if isinstance(d, str) else int(d[1]) if isinstance(d, tuple)
                         and d[1] is not None else int(d) if not isinstance(d, tuple) else 2 for d in shape)
            if dtype == "int":
                high = int(known.get("V", known.get("vocab", 16)))
                out.append(torch.randint(0, max(2, high), dims, generator=gen))
            elif dtype == "bool":
                out.append(torch.rand(dims, generator=gen) > 0.5)
            else:
                out.append(torch.randn(dims, generator=gen))
        return tuple(out)


# ---- sizes bound at call time (see codegen/torch/sizes.py) -----------------------------------

_FORWARDS = [0]   # forwards of entry modules so far (each bind_sizes call is one)


def record_aux_loss(owner: nn.Module, loss: torch.Tensor) -> None:
    """Keep ``loss`` on ``owner`` for the current forward (read by ``SeqModule.aux_loss``)."""
    mark, losses = getattr(owner, "_aux_losses", (None, None))
    if mark != _FORWARDS[0]:
        losses = []
        owner._aux_losses = (_FORWARDS[0], losses)
    losses.append(loss)


def bind_sizes(module: nn.Module, *inputs: torch.Tensor) -> tuple[int, ...]:
    """The values of ``module.RUNTIME`` read from ``inputs``, after checking every axis
    against ``module.INPUTS``: an int (or a ``(name, int)``) is a size the weights or the
    structure fixed; a name is a dim read from the first input that has it, which every
    later input must match; ``module.BOUNDS`` caps some (position tables)."""
    entry = module.ENTRY
    _FORWARDS[0] += 1                    # a new forward: aux losses of earlier ones are stale
    module._forward_serial = _FORWARDS[0]
    found: dict[str, tuple[int, str]] = {}
    sizes = [tuple(x.shape) if isinstance(x, torch.Tensor) else None for x in inputs]
    if _sp_active() is not None:          # the sequence split over ranks: its axis read as the whole length
        sizes = _sp_hooks.global_sizes(module, inputs)
    for (name, _dtype, shape), x, xs in zip(module.INPUTS, inputs, sizes):
        if not isinstance(x, torch.Tensor):
            raise SeqError(f"{entry}: input {name} must be a tensor, got {type(x).__name__}")
        if x.dim() != len(shape):
            raise SeqError(f"{entry}: input {name} must have {len(shape)} axes "
                           f"({_shape_text(shape)}), got shape {list(x.shape)}")
        for axis, want in enumerate(shape):
            got = int(xs[axis])
            if isinstance(want, str):
                first = found.setdefault(want, (got, name))
                if first[0] != got:
                    raise SeqError(f"{entry}: input {name} has {want} = {got} (axis {axis}), but input "
                                   f"{first[1]} has {want} = {first[0]}")
                continue
            label, value = want if isinstance(want, tuple) else (None, want)
            if value is not None and got != value:
                what = f"{label} = {got}" if label else f"size {got} on axis {axis}"
                expected = f"{label} = {value}" if label else str(value)
                raise SeqError(f"{entry}: input {name} has {what}, the module was built for {expected}"
                               + _why(module, label))
    for dim, limit in getattr(module, "BOUNDS", {}).items():
        if dim in found and found[dim][0] > limit:
            raise SeqError(f"{entry}: input {found[dim][1]} has {dim} = {found[dim][0]}, but the position "
                           f"table was built for at most {dim} = {limit} (load the model with {dim}={found[dim][0]})")
    return tuple(found[d][0] for d in module.RUNTIME)


def local_rows(x, axis: int):
    """``x``, computed whole over the sequence, at this rank's rows of ``axis`` when the
    sequence is split over ranks (else ``x`` itself)."""
    return x if _sp_active() is None else _sp_hooks.local_rows(x, axis)


def seq_length(n: int) -> int:
    """The length of the sequence axis: ``n``, or the whole length when it is split over ranks."""
    return n if _sp_active() is None else _sp_hooks.seq_length(n)


def _why(module: nn.Module, label: str | None) -> str:
    reason = getattr(module, "FIXED_BY", {}).get(label)
    return f" ({reason})" if reason else ""


def _shape_text(shape) -> str:
    return "[" + ", ".join(d if isinstance(d, str) else str(d[0] if isinstance(d, tuple) else d)
                           for d in shape) + "]"


def by_length(n: int, table: tuple) -> str:
    """The algorithm for a length ``n`` from ``((largest n, algorithm), ..., (None, algorithm))``
    (the cost model's choices at powers of two, written into the module)."""
    for limit, algorithm in table:
        if limit is None or n <= limit:
            return algorithm
    return table[-1][1]


def require(ok: bool, message: str, file: str = "<unknown>", line: int = 0, col: int = 0) -> None:
    """A ``require`` of the file (or a slice bound) at the sizes of this call; the error
    points at the requirement in the ``.seq`` file."""
    if not ok and not decode.running():    # decoding binds N to the call's length: whole-sequence rules wait
        raise SeqError(message, Pos(file, line, col))


# ---- initialisation ----------------------------------------------------------------------

def init_tensor(kind: str, shape: tuple[int, ...], args: tuple = (), generator: torch.Generator | None = None
                ) -> torch.Tensor:
    """normal(std), truncated_normal(std), uniform(lo, hi), zeros, ones, constant(c), orthogonal(scale),
    orthogonal_gaussian(seed): rows of ω for random features (orthogonal blocks, χ norms)."""
    if kind == "normal":
        return torch.randn(shape, generator=generator) * float(args[0] if args else 0.02)
    if kind == "truncated_normal":                  # TF's truncated_normal: redrawn beyond ±2·std
        std = float(args[0] if args else 0.02)
        return nn.init.trunc_normal_(torch.empty(shape), std=std, a=-2 * std, b=2 * std, generator=generator)
    if kind == "uniform":
        lo, hi = (float(a) for a in args)
        return torch.rand(shape, generator=generator) * (hi - lo) + lo
    if kind == "zeros":
        return torch.zeros(shape)
    if kind == "ones":
        return torch.ones(shape)
    if kind == "constant":
        return torch.full(shape, float(args[0]))
    if kind == "orthogonal":
        t = torch.empty(shape)
        nn.init.orthogonal_(t, gain=float(args[0]) if args else 1.0, generator=generator)
        return t
    if kind == "orthogonal_gaussian":
        gen = torch.Generator().manual_seed(int(args[0]) if args else 0)
        rows, cols = shape
        blocks = []
        for _ in range(math.ceil(rows / cols)):
            q, _r = torch.linalg.qr(torch.randn(cols, cols, generator=gen))
            blocks.append(q.T)
        w = torch.cat(blocks)[:rows]
        norms = torch.randn(rows, cols, generator=gen).norm(dim=1, keepdim=True)
        return w * norms
    raise ValueError(f"unknown init {kind!r}")


# ---- layers ------------------------------------------------------------------------------

def linear(x, weight, bias=None, weight_mask=None):
    """x Wᵀ + b; a fixed sparsity pattern multiplies the weight."""
    if weight_mask is not None:
        weight = weight * weight_mask
    return F.linear(x, weight, bias)


def seq_project(x, weight):
    """[.., N, D] -> [.., k, D] with weight [k, N] (Linformer's E, F)."""
    return torch.einsum("...nd,kn->...kd", x, weight)


def embed(tokens, table):
    return F.embedding(tokens, table)


def layernorm(x, weight=None, bias=None, eps: float = 1e-5):
    return F.layer_norm(x, x.shape[-1:], weight, bias, eps)


def rmsnorm(x, weight, eps: float = 1e-6):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def batchnorm(x, weight, bias, eps: float = 1e-5):
    """Per channel (last axis), over every other axis, with the batch's statistics."""
    dims = tuple(range(x.dim() - 1))
    mean = x.mean(dims, keepdim=True)
    var = x.var(dims, keepdim=True, unbiased=False)
    return (x - mean) * torch.rsqrt(var + eps) * weight + bias


def groupnorm(x, weight, bias, groups: int, eps: float = 1e-5):
    """Normalise groups of channels of the last axis (e.g. one group per head)."""
    shape = x.shape
    g = x.reshape(*shape[:-1], groups, shape[-1] // groups)
    g = (g - g.mean(-1, keepdim=True)) * torch.rsqrt(g.var(-1, keepdim=True, unbiased=False) + eps)
    return g.reshape(shape) * weight + bias


def activation(name: str, x):
    return UNARY[name](x)


def mlp(x, w1, b1, w2, b2, act: str, gated: bool, w1_mask=None, w2_mask=None):
    h = linear(x, w1, b1, w1_mask)
    if gated:
        a, g = h.chunk(2, dim=-1)
        h = activation(act, a) * g
    else:
        h = activation(act, h)
    return linear(h, w2, b2, w2_mask)


@decode.stateful("conv1d")   # prefill / step: the last width − 1 inputs (decode_families.py)
def conv1d(x, weight, bias=None, causal: bool = True):
    """Depthwise convolution along the sequence of x [.., N, C] with weight [C, width]."""
    lead, n, c = x.shape[:-2], x.shape[-2], x.shape[-1]
    width = weight.shape[-1]
    u = x.reshape(-1, n, c).transpose(1, 2)
    pad = (width - 1, 0) if causal else ((width - 1) // 2, width // 2)
    y = F.conv1d(F.pad(u, pad), weight.unsqueeze(1), bias, groups=c)
    return y.transpose(1, 2).reshape(*lead, n, c)


@decode.stateful("window")   # prefill / step: the last size − 1 rows (decode_families.py)
def last_rows(x, axis: int, size: int, rows=None):
    """``x[:, N - size:]`` along ``axis``: the last ``size`` rows (a suffix of the sequence).
    ``rows``: the slice as a layer hook wrote it (sequence parallelism), run outside decoding."""
    if rows is not None and not decode.running():
        return rows()
    n = x.shape[axis]
    if n < size:
        raise SeqError(f"the last {size} rows of an axis of {n}: the sequence is shorter than the window")
    return x.narrow(axis, n - size, size)


def pool(x, size: int, fn: str):
    """Non-overlapping windows of ``size`` along the sequence (axis −2)."""
    g = x.reshape(*x.shape[:-2], x.shape[-2] // size, size, x.shape[-1])
    return {"mean": g.mean(-2), "sum": g.sum(-2), "max": g.amax(-2)}[fn]


def reduce(x, fn: str, axis: int, keep: bool):
    if fn == "max":
        return x.amax(axis, keepdim=keep)
    return getattr(x, fn)(axis, keepdim=keep)


def rotary(x, fraction: float = 1.0, base: float = 10000.0, seq: bool = False):
    """RoFormer's rotation of feature pairs by position (axis −2; ``seq``: the positions of
    the sequence, which in a decoding step start at the token's position)."""
    n, d = x.shape[-2], x.shape[-1]
    rot = int(d * fraction) // 2 * 2
    half = rot // 2
    freq = base ** (-torch.arange(half, dtype=torch.float32, device=x.device) / half)
    start = decode.offset() if seq else 0
    angle = torch.arange(start, start + n, dtype=torch.float32, device=x.device)[:, None] * freq
    cos, sin = angle.cos().to(x.dtype), angle.sin().to(x.dtype)
    x1, x2, rest = x[..., :half], x[..., half:rot], x[..., rot:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos, rest], dim=-1)


UNARY = {
    "relu": F.relu, "gelu": F.gelu, "silu": F.silu, "sigmoid": torch.sigmoid, "tanh": torch.tanh,
    "softplus": F.softplus, "exp": torch.exp, "log": torch.log, "sqrt": torch.sqrt, "abs": torch.abs,
    "sin": torch.sin, "cos": torch.cos, "elu1": lambda x: F.elu(x) + 1, "square": torch.square,
    "rsqrt": torch.rsqrt, "log_sigmoid": F.logsigmoid, "sign": torch.sign, "erf": torch.erf,
    "stop_gradient": torch.Tensor.detach, "identity": lambda x: x,
}


def rearrange(x, pattern: str, **sizes):
    return einops.rearrange(x, pattern, **sizes)


def arange(n: int, device=None, seq: bool = False):
    """0 … n−1 as floats; ``seq``: the positions of the sequence (from the token's position in
    a decoding step)."""
    start = decode.offset() if seq else 0
    return torch.arange(start, start + n, dtype=torch.float32, device=device)


def decoding() -> bool:
    """Inside prefill / step (a Triton module's mixers then run their torch step)."""
    return decode.running()


def seq_rows(n: int) -> slice:
    """The rows of a position table for the n positions of this call."""
    start = decode.offset()
    return slice(start, start + n)


def sinusoidal(n: int, dim: int, device=None, seq: bool = False):
    """The Transformer's fixed encodings [n, dim]: sin on even, cos on odd features
    (``seq``: positions from the token's position in a decoding step)."""
    start = decode.offset() if seq else 0
    pos = torch.arange(start, start + n, dtype=torch.float32, device=device)[:, None]
    i = torch.arange(0, dim, 2, dtype=torch.float32, device=device)
    angle = pos / (10000.0 ** (i / dim))
    out = torch.zeros(n, dim, device=device)
    out[:, 0::2] = torch.sin(angle)
    out[:, 1::2] = torch.cos(angle[:, : dim // 2])
    return out


def lsh(x, rotation):
    """Angular LSH: argmax over [xR, −xR] for a fixed random rotation R [D, buckets/2]."""
    proj = x @ rotation
    return torch.cat([proj, -proj], dim=-1).argmax(-1)


def sinkhorn_sort(x, weight, block: int, iters: int):
    """For each block of rows, the key block to attend: block sums -> scores against the
    learned [nb, D] table -> Sinkhorn normalisation in log space -> argmax (hard)."""
    nb = x.shape[-2] // block
    summary = x.reshape(*x.shape[:-2], nb, block, x.shape[-1]).sum(-2)
    logits = summary @ weight.T
    for _ in range(iters):
        logits = logits - torch.logsumexp(logits, dim=-1, keepdim=True)
        logits = logits - torch.logsumexp(logits, dim=-2, keepdim=True)
    return logits.argmax(-1)


# ---- blocks used as functions ------------------------------------------------------------

def moe(x, router, experts: nn.ModuleList, top_k: int, capacity: float, owner: nn.Module,
        balance: float = 0.0, router_z: float = 0.0):
    """Switch-style routing with capacity; the balance loss (α · E · Σ_e f_e · P_e) and the
    router z-loss are left for ``aux_loss()``; see :mod:`codegen.torch.moe`."""
    from codegen.torch.moe import moe as route_moe
    return route_moe(x, router, experts, top_k, capacity, owner, balance, router_z)


def fixed_point(cell: nn.Module, z, x, iters: int, tol: float, solver: str = "anderson",
                backward_solver: str | None = None, backward_iters: int | None = None,
                jac_loss: float = 0.0, jac_freq: float = 1.0):
    """Deep equilibrium: z* = cell(z*, x) by ``solver`` (anderson, broyden, picard), with the
    implicit gradient (and, with ``jac_loss`` > 0, Jacobian regularisation left for
    ``aux_loss()``); see :mod:`codegen.torch.equilibrium`."""
    from codegen.torch.equilibrium import fixed_point as solve_fixed_point
    return solve_fixed_point(cell, z, x, iters, tol, solver, backward_solver, backward_iters, jac_loss, jac_freq)


@decode.stateful("recurrent")   # prefill / step: the state of the last whole segment (decode_families.py)
def recurrent(step: nn.Module, x, state, segment: int):
    """Apply ``step(x_segment, state) -> (y_segment, state')`` over consecutive segments."""
    outs = []
    for start in range(0, x.shape[-2], segment):
        y, state = step(x[..., start:start + segment, :], state)
        outs.append(y)
    return torch.cat(outs, dim=-2), state
