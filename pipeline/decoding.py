"""Decoding strategies for causal LMs, built on ``model.generate``.

The point of this module is to make strategy comparisons *honest*:

* Every call builds a fresh :class:`~transformers.GenerationConfig` from the strategy.  ``generate``
  fills every field we leave unset (``None``) from ``model.generation_config`` and then from the
  library's global defaults -- which include ``top_k=50``.  A strategy called "temperature 1.0"
  that silently truncates to the top 50 tokens would not be pure temperature sampling, so every
  sampling strategy sets temperature / top-k / top-p / typical-p explicitly (``top_k=0`` and
  ``top_p=1.0`` disable them).  The model's own ``generation_config`` is never mutated.
* Prompts are batched with LEFT padding (a decoder-only model continues from the last column) and
  an attention mask.  The padding is done here, so the tokenizer's ``padding_side`` is neither
  relied upon nor modified.
* Sampling is seeded inside a forked RNG, so results are reproducible and calling this from a
  training loop (e.g. an eval callback) does not reset the training RNG stream.
* The model is put in eval mode (dropout off) for the call and its previous mode is restored.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

logger = logging.getLogger(__name__)

#: name -> ``generate`` kwargs.  Only decoding knobs belong here; lengths, special token ids and
#: seeds are arguments of :func:`generate`.
DEFAULT_STRATEGIES: dict[str, dict[str, Any]] = {
    "greedy": {"do_sample": False, "num_beams": 1},
    "temperature_0.5": {"do_sample": True, "temperature": 0.5, "top_k": 0, "top_p": 1.0},
    "temperature_0.8": {"do_sample": True, "temperature": 0.8, "top_k": 0, "top_p": 1.0},
    "temperature_1.0": {"do_sample": True, "temperature": 1.0, "top_k": 0, "top_p": 1.0},
    "temperature_1.5": {"do_sample": True, "temperature": 1.5, "top_k": 0, "top_p": 1.0},
    "top_k_10": {"do_sample": True, "top_k": 10, "top_p": 1.0, "temperature": 1.0},
    "top_p_0.9": {"do_sample": True, "top_p": 0.9, "top_k": 0, "temperature": 1.0},
    "beam_3": {"do_sample": False, "num_beams": 3},
}

# Values that switch off every logits warper / penalty, applied under the strategy's own kwargs so
# that nothing leaks in from ``model.generation_config`` or the global defaults.  The sampling
# knobs are only set for sampling strategies: setting them under ``do_sample=False`` makes
# transformers warn ("flag is only used in sample-based generation modes") for no benefit, since
# greedy and beam search never apply warpers.
_NEUTRAL_SEARCH: dict[str, Any] = {
    "do_sample": False,
    "num_beams": 1,
    "num_return_sequences": 1,
    "repetition_penalty": 1.0,
    "no_repeat_ngram_size": 0,
    "length_penalty": 1.0,
}
_NEUTRAL_SAMPLING: dict[str, Any] = {
    "temperature": 1.0,
    "top_k": 0,
    "top_p": 1.0,
    "typical_p": 1.0,
    "min_p": 0.0,  # unset would inherit; 0.0 keeps every token
    "epsilon_cutoff": 0.0,
    "eta_cutoff": 0.0,
}


@dataclass
class Generation:
    """One continuation of one prompt.

    Attributes:
        prompt: the prompt as given.
        text: the decoded *new* tokens only, special tokens (EOS, pad, unk) removed.
        token_ids: the new token ids.  With ``stop_at_eos`` they end at, and include, the first
            EOS when one was produced (useful for scoring/RL: the stop decision is a token too).
        finished: True when the model produced EOS within ``max_new_tokens``; False means the
            text was cut by the length limit.
    """

    prompt: str
    text: str
    token_ids: list[int]
    finished: bool


def resolve_strategy(strategy: str | Mapping[str, Any]) -> dict[str, Any]:
    """Turn a strategy name from :data:`DEFAULT_STRATEGIES` (or a kwargs mapping) into kwargs."""
    if isinstance(strategy, str):
        try:
            return dict(DEFAULT_STRATEGIES[strategy])
        except KeyError:
            raise ValueError(f"unknown strategy {strategy!r}; known: {sorted(DEFAULT_STRATEGIES)}") from None
    return dict(strategy)


def build_generation_config(
    strategy: str | Mapping[str, Any],
    tokenizer: PreTrainedTokenizerBase,
    max_new_tokens: int = 64,
    stop_at_eos: bool = True,
) -> GenerationConfig:
    """Fresh, fully specified ``GenerationConfig`` for ``strategy`` (see module docstring for why).

    ``stop_at_eos=False`` passes an empty EOS list: leaving ``eos_token_id`` unset would let
    ``generate`` inherit it from the model's config and stop anyway.
    """
    kwargs = resolve_strategy(strategy)
    sampling = bool(kwargs.get("do_sample", False))
    params: dict[str, Any] = {**_NEUTRAL_SEARCH, **(_NEUTRAL_SAMPLING if sampling else {}), **kwargs}
    if params["num_return_sequences"] != 1:
        raise ValueError("num_return_sequences must be 1: generate() returns one Generation per prompt")
    eos_id, pad_id = _special_ids(tokenizer)
    params.update(
        max_new_tokens=max_new_tokens,
        eos_token_id=eos_id if stop_at_eos else [],
        pad_token_id=pad_id,
        bos_token_id=tokenizer.bos_token_id if tokenizer.bos_token_id is not None else eos_id,
    )
    return GenerationConfig(**params)


def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    strategy: str | Mapping[str, Any] = "greedy",
    max_new_tokens: int = 64,
    seed: int = 0,
    batch_size: int = 32,
    stop_at_eos: bool = True,
) -> list[Generation]:
    """Continue each prompt with ``strategy``; one :class:`Generation` per prompt, in order.

    Args:
        model: any causal LM supporting ``generate`` (e.g. ``GPT2LMHeadModel``).
        tokenizer: its tokenizer; prompts are encoded without added special tokens.  A prompt
            that encodes to nothing is replaced by a single BOS (= EOS in this pipeline, i.e.
            "start of a new document"), since a model cannot continue an empty context.
        prompts: raw prompt strings.
        strategy: a :data:`DEFAULT_STRATEGIES` name or a dict of ``GenerationConfig`` kwargs.
        max_new_tokens: length limit of each continuation.  Prompts longer than the model's
            context minus ``max_new_tokens`` keep only their last tokens (with a warning).
        seed: RNG seed for sampling strategies; the RNG is seeded once per call, so samples are
            reproducible for the same (prompts, batch_size) but change with ``batch_size``.
        batch_size: prompts per ``generate`` call.
        stop_at_eos: stop each row at its first EOS and cut the output there.  When False, the
            model always produces ``max_new_tokens`` tokens, EOS is treated as an ordinary token
            (kept in ``token_ids``, removed from ``text``), and ``finished`` says whether any EOS
            occurred.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    generation_config = build_generation_config(strategy, tokenizer, max_new_tokens, stop_at_eos)
    eos_id, pad_id = _special_ids(tokenizer)
    start_id = generation_config.bos_token_id
    device = model.device
    max_positions = getattr(model.config, "max_position_embeddings", None)

    results: list[Generation] = []
    starts = range(0, len(prompts), batch_size)
    # transformers' tqdm: off with transformers.utils.logging.disable_progress_bar(), as the library's own bars.
    progress = hf_logging.tqdm(starts, desc="generating", unit="batch", leave=False, disable=len(starts) < 2)
    with _eval_mode(model), torch.inference_mode(), _seeded(seed, device):
        for start in progress:
            batch = prompts[start : start + batch_size]
            ids = tokenizer(batch, add_special_tokens=False)["input_ids"]
            ids = [row if row else [start_id] for row in ids]
            if max_positions is not None:
                ids = _fit_context(ids, max_positions - max_new_tokens)
            longest = max(len(row) for row in ids)
            # Left padding by hand: independent of the tokenizer's padding_side and works for
            # tokenizers without a pad token.
            input_ids = torch.tensor([[pad_id] * (longest - len(r)) + r for r in ids], device=device)
            attention_mask = torch.tensor([[0] * (longest - len(r)) + [1] * len(r) for r in ids], device=device)
            output = model.generate(
                input_ids=input_ids, attention_mask=attention_mask, generation_config=generation_config
            )
            new_tokens = output[:, input_ids.shape[1] :].tolist()
            for prompt, row in zip(batch, new_tokens):
                results.append(_to_generation(prompt, row, tokenizer, eos_id, pad_id, stop_at_eos))
    return results


def sample_table(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    strategies: Mapping[str, str | Mapping[str, Any]] | Sequence[str] = DEFAULT_STRATEGIES,
    max_new_tokens: int = 64,
    seed: int = 0,
    batch_size: int = 32,
    stop_at_eos: bool = True,
) -> dict[str, list[Generation]]:
    """Run every strategy on the same prompts with the same seed: ``{strategy: [Generation]}``.

    ``strategies`` is a name -> kwargs mapping or a list of :data:`DEFAULT_STRATEGIES` names.
    Use :func:`format_sample_table` to render the result side by side.
    """
    if not isinstance(strategies, Mapping):
        strategies = {name: name for name in strategies}
    return {
        name: generate(
            model,
            tokenizer,
            prompts,
            strategy=spec,
            max_new_tokens=max_new_tokens,
            seed=seed,
            batch_size=batch_size,
            stop_at_eos=stop_at_eos,
        )
        for name, spec in strategies.items()
    }


def format_sample_table(table: Mapping[str, list[Generation]]) -> str:
    """Markdown rendering of :func:`sample_table` output: one table per prompt with one row per
    strategy, then distinct-1/2 and 4-gram repetition of each strategy's samples."""
    if not table:
        return ""
    names = list(table)
    lines: list[str] = []
    for i, first in enumerate(table[names[0]]):
        lines += [f"**Prompt:** `{_md_cell(first.prompt)}`", "", "| strategy | sample | EOS |", "|---|---|---|"]
        for name in names:
            g = table[name][i]
            lines.append(f"| {name} | {_md_cell(g.text)} | {'yes' if g.finished else 'no'} |")
        lines.append("")
    lines += ["| strategy | distinct-1 | distinct-2 | repetition (4-gram) |", "|---|---|---|---|"]
    for name in names:
        texts = [g.text for g in table[name]]
        d1, d2, rep = distinct_n(texts, 1), distinct_n(texts, 2), repetition_rate(texts)
        lines.append(f"| {name} | {d1:.3f} | {d2:.3f} | {rep:.3f} |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# Diversity metrics (pure functions, whitespace tokens)
# --------------------------------------------------------------------------------------------


def _ngrams(tokens: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(texts: Iterable[str], n: int) -> float:
    """Corpus-level distinct-n (Li et al., 2016): unique n-grams / total n-grams.

    Units are *whitespace tokens* (``str.split()``), not characters or model tokens, so the
    number is comparable across tokenizers.  N-grams never span two texts; all texts are pooled,
    so low values mean the samples repeat themselves *or each other*.  Returns 0.0 when there
    are no n-grams at all.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    seen: set[tuple[str, ...]] = set()
    total = 0
    for text in texts:
        grams = _ngrams(text.split(), n)
        total += len(grams)
        seen.update(grams)
    return len(seen) / total if total else 0.0


def repetition_rate(texts: Iterable[str], n: int = 4) -> float:
    """Share of whitespace-token n-grams (default 4-grams) that repeat an earlier n-gram of the
    *same* text -- the degenerate looping of greedy decoding.

    Per text, repeats = total n-grams - unique n-grams; the result pools all texts:
    sum(repeats) / sum(total).  Repetition across different texts is not counted (that is what
    :func:`distinct_n` measures).  Returns 0.0 when there are no n-grams.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    repeats = 0
    total = 0
    for text in texts:
        grams = _ngrams(text.split(), n)
        total += len(grams)
        repeats += len(grams) - len(set(grams))
    return repeats / total if total else 0.0


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _special_ids(tokenizer: PreTrainedTokenizerBase) -> tuple[int, int]:
    """(eos, pad) ids; tokenizers without a pad token (e.g. the original GPT-2) pad with EOS,
    which is harmless here because padded positions are masked and outputs are cut at EOS."""
    eos_id = tokenizer.eos_token_id
    if eos_id is None:
        raise ValueError("tokenizer has no eos_token; generation needs one to stop")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id
    return eos_id, pad_id


def _fit_context(ids: list[list[int]], budget: int) -> list[list[int]]:
    """Keep the last ``budget`` prompt tokens so prompt + new tokens fit the position table.

    Truncating (with a warning) rather than raising: sampling is usually a side product of a
    long training run, and a crash there would lose the run's report for one long prompt.
    """
    if budget < 1:
        raise ValueError("max_new_tokens is as large as the model's context: no room left for the prompt")
    if any(len(row) > budget for row in ids):
        logger.warning("prompt longer than %d tokens: keeping only its last %d tokens", budget, budget)
        ids = [row[-budget:] for row in ids]
    return ids


def _to_generation(
    prompt: str,
    row: list[int],
    tokenizer: PreTrainedTokenizerBase,
    eos_id: int,
    pad_id: int,
    stop_at_eos: bool,
) -> Generation:
    finished = eos_id in row
    if stop_at_eos and finished:
        # Everything after the first EOS is padding added by generate() for finished rows.
        row = row[: row.index(eos_id) + 1]
    text = tokenizer.decode(row, skip_special_tokens=True)
    return Generation(prompt=prompt, text=text, token_ids=row, finished=finished)


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", "⏎")


@contextlib.contextmanager
def _eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Dropout off while generating; restore train mode afterwards (eval callbacks mid-training)."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@contextlib.contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch inside a forked RNG so the caller's RNG state is left untouched."""
    devices: list[int] = []
    if device.type == "cuda":
        devices = [device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
