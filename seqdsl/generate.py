"""``seqdsl generate``: text (or token ids) from a causal model, one token per step.

The prompt runs once through ``model.prefill`` (the parallel / chunked algorithms), then
each new token through ``model.step`` from the state (docs/decoding.md). A vocabulary of
at least 256 ids is read as bytes: the prompt is encoded as UTF-8 and the output decoded
the same way (invalid sequences and ids above 255 become U+FFFD); a smaller vocabulary
takes and gives token ids.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from seqdsl.errors import SeqError

BYTE_VOCAB = 256


@dataclass
class Generation:
    """What ``generate`` produced and how fast."""

    prompt_ids: list[int]
    new_ids: list[int]
    byte_level: bool
    vocab: int
    prefill_seconds: float
    step_seconds: float
    steps: int
    state_bytes_prompt: int          # the state after the prompt, per batch (B = 1: per sequence)
    state_bytes: int                 # the state after the last token
    state_layout: str = field(default="", repr=False)
    state_bytes_held: int = 0        # the same with the KV caches' spare rows (state.nbytes)

    @property
    def text(self) -> str:
        """The generated continuation: decoded bytes, or the ids separated by spaces."""
        return decode_text(self.new_ids) if self.byte_level else " ".join(map(str, self.new_ids))

    @property
    def prefill_tokens_per_s(self) -> float:
        return len(self.prompt_ids) / self.prefill_seconds if self.prefill_seconds > 0 else float("inf")

    @property
    def step_tokens_per_s(self) -> float:
        if self.steps == 0:
            return float("nan")
        return self.steps / self.step_seconds if self.step_seconds > 0 else float("inf")

    def summary(self) -> str:
        """The lines the CLI prints after the text."""
        ms = 1e3 * self.step_seconds / self.steps if self.steps else float("nan")
        return "\n".join([
            f"prompt {len(self.prompt_ids)} tokens, generated {len(self.new_ids)} "
            f"({'bytes' if self.byte_level else 'token ids'}, vocabulary {self.vocab})",
            f"prefill: {len(self.prompt_ids)} tokens in {self.prefill_seconds:.3g} s "
            f"({self.prefill_tokens_per_s:.4g} tokens/s)",
            f"step:    {self.steps} tokens in {self.step_seconds:.3g} s "
            f"({self.step_tokens_per_s:.4g} tokens/s, {ms:.3g} ms/token)" if self.steps else
            "step:    none (the first new token comes from the prefill's logits)",
            f"state:   {_size(self.state_bytes)} per sequence after {len(self.prompt_ids) + self.steps} tokens "
            f"({_size(self.state_bytes_prompt)} after the prompt)" +
            (f"; {_size(self.state_bytes_held)} held with the caches' spare rows"
             if self.state_bytes_held > self.state_bytes else ""),
        ])


def _size(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} B"


def decode_text(ids: list[int]) -> str:
    """Bytes to text; an invalid UTF-8 sequence or an id that is not a byte becomes U+FFFD."""
    out, run = [], bytearray()
    for i in ids:
        if 0 <= i < BYTE_VOCAB:
            run.append(i)
            continue
        out.append(run.decode("utf-8", errors="replace"))
        run = bytearray()
        out.append("\ufffd")
    out.append(run.decode("utf-8", errors="replace"))
    return "".join(out)


def encode_prompt(prompt: str | list[int], vocab: int) -> tuple[list[int], bool]:
    """(ids, byte_level). A string is UTF-8 bytes for a byte-level vocabulary, otherwise ids
    separated by spaces or commas; every id must be below ``vocab``."""
    byte_level = vocab >= BYTE_VOCAB
    if isinstance(prompt, str):
        if byte_level:
            ids = list(prompt.encode("utf-8"))
        else:
            try:
                ids = [int(t) for t in prompt.replace(",", " ").split()]
            except ValueError:
                raise SeqError(f"the vocabulary has {vocab} ids (fewer than {BYTE_VOCAB}: not bytes); give the "
                               f"prompt as token ids, e.g. --prompt \"1 2 3\"") from None
    else:
        ids = [int(t) for t in prompt]
    if not ids:
        raise SeqError("the prompt is empty: give at least one token")
    bad = [i for i in ids if not 0 <= i < vocab]
    if bad:
        raise SeqError(f"prompt token {bad[0]} is outside the vocabulary 0..{vocab - 1}")
    return ids, byte_level


def _signature(source, entry, dims) -> int:
    """The vocabulary size: the last axis of the entry's output, whose input must be token ids."""
    from seqdsl.api import check

    checked = check(source, entry, **dims)
    ins, outs = checked.inputs, checked.outputs
    if len(ins) != 1 or ins[0][1].dtype != "int" or ins[0][1].rank != 2:
        shown = ", ".join(f"{n}: {t}" for n, t in ins)
        raise SeqError(f"generate needs an entry that takes token ids int[B, N]; {checked.entry} takes {shown}")
    if len(outs) != 1 or outs[0].rank != 3:
        raise SeqError(f"generate needs logits [B, N, V]; {checked.entry} returns "
                       f"{', '.join(str(t) for t in outs)}")
    vocab = checked.value(outs[0].shape[-1])
    if not vocab.is_Integer:
        raise SeqError(f"the vocabulary size {vocab} has no value; set it with --set")
    return int(vocab)


def load_checkpoint(model, path: str | Path) -> None:
    """Load a state_dict saved with ``torch.save`` (tensors only: ``weights_only=True``)."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise SeqError(f"--checkpoint {path}: no such file")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:   # noqa: BLE001 - any unreadable file is the user's to fix
        raise SeqError(f"--checkpoint {path}: cannot read it as a torch state_dict ({type(err).__name__}: "
                       f"{str(err).splitlines()[0] if str(err) else ''})") from None
    if not isinstance(sd, dict):
        raise SeqError(f"--checkpoint {path}: holds a {type(sd).__name__}, not a state_dict")
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    extra = [k for k in sd if k not in own]
    shapes = [f"{k} {list(sd[k].shape)} (the model's: {list(own[k].shape)})" for k in own
              if k in sd and hasattr(sd[k], "shape") and tuple(sd[k].shape) != tuple(own[k].shape)]
    if missing or extra or shapes:
        parts = []
        for what, keys in (("missing", missing), ("unexpected", extra), ("of another shape", shapes)):
            if keys:
                parts.append(f"{len(keys)} {what}: {', '.join(keys[:3])}{' …' if len(keys) > 3 else ''}")
        raise SeqError(f"--checkpoint {path} does not fit the model: " + "; ".join(parts))
    model.load_state_dict(sd)


def sample(logits, temperature: float, top_k: int | None, generator) -> int:
    """One id from logits [V]: greedy at temperature 0, else softmax(logits / t) over the
    top k (all if k is None)."""
    import torch

    if temperature < 0:
        raise SeqError(f"--temperature must be ≥ 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise SeqError(f"--top-k must be ≥ 1, got {top_k}")
    logits = logits.float()
    if temperature == 0:
        return int(torch.argmax(logits))
    if top_k is not None and top_k < logits.numel():
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits / temperature, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))


def generate(source: str | Path, prompt: str | list[int], tokens: int = 200, *, entry: str | None = None,
             checkpoint: str | Path | None = None, temperature: float = 1.0, top_k: int | None = None,
             seed: int = 0, **dims) -> Generation:
    """Generate ``tokens`` tokens after ``prompt`` with the model of ``source``.

    ``dims`` sets dims and options as in :func:`seqdsl.load`; ``seed`` seeds the weights'
    initialisation (when no ``checkpoint`` is given) and the sampling. Raises
    :class:`seqdsl.SeqError` when the model cannot decode (with the reason), when the prompt
    does not fit the vocabulary or the checkpoint does not fit the model."""
    import torch

    from seqdsl.api import load

    if tokens < 0:
        raise SeqError(f"--tokens must be ≥ 0, got {tokens}")
    if checkpoint is not None and not Path(checkpoint).is_file():   # before the (slower) model
        raise SeqError(f"--checkpoint {checkpoint}: no such file")
    vocab = _signature(source, entry, dims)
    ids, byte_level = encode_prompt(prompt, vocab)
    torch.manual_seed(seed)
    model = load(source, entry, **dims)
    ok, why = model.can_decode
    if not ok:
        fixed = [k for k in dims if f"fixes {k} " in why]
        raise SeqError(f"{model.ENTRY} cannot decode: {why}",
                       hint=f"leave {fixed[0]} out of --set: generation reads the length from the prompt"
                       if fixed else None)
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    x = torch.tensor([ids], dtype=torch.long)
    t0 = time.perf_counter()
    logits, state = model.prefill(x, max_tokens=len(ids) + tokens)     # a KV cache made that large at once
    prefill_s = time.perf_counter() - t0
    prompt_bytes = state.used_nbytes
    new: list[int] = []
    step_s, steps = 0.0, 0
    if tokens > 0:
        new.append(sample(logits[0, -1], temperature, top_k, gen))
    while len(new) < tokens:
        t0 = time.perf_counter()
        logits, state = model.step(torch.tensor([new[-1]]), state)
        step_s += time.perf_counter() - t0
        steps += 1
        new.append(sample(logits[0], temperature, top_k, gen))
    return Generation(ids, new, byte_level, vocab, prefill_s, step_s, steps, prompt_bytes, state.used_nbytes,
                      state.describe() if hasattr(state, "describe") else "", state.nbytes)
