"""Tests for pipeline.decoding on tiny GPT-2 models built on the fly (no downloads)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import copy
import logging
import warnings

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from pipeline.decoding import (
    DEFAULT_STRATEGIES,
    Generation,
    build_generation_config,
    distinct_n,
    format_sample_table,
    generate,
    repetition_rate,
    sample_table,
)
from pipeline.tokenization import train_tokenizer

TEXT = "the cat sat on the mat.\nthe dog ate a log!\nhow now, brown cow?\n"
PROMPTS = ["the cat", "a", "how now, brown", "dog ", "w"]  # different lengths on purpose


@pytest.fixture(scope="module", autouse=True)
def single_torch_thread():
    """Tiny models: intra-op threads only add synchronisation cost (on a busy 2-core runner each
    32x128 matmul took ~8 ms with 2 threads vs ~20 us with 1).  Restored afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer([TEXT], "char")


def _config(tok, **overrides) -> GPT2Config:
    values = dict(
        vocab_size=len(tok),
        n_layer=1,
        n_head=2,
        n_embd=32,
        n_positions=64,
        bos_token_id=tok.eos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    return GPT2Config(**{**values, **overrides})


def _saved_and_reloaded(model: GPT2LMHeadModel, path) -> GPT2LMHeadModel:
    model.save_pretrained(path)
    return GPT2LMHeadModel.from_pretrained(path)


@pytest.fixture(scope="module")
def flat_model(tok, tmp_path_factory):
    """Default init (std 0.02): next-token distributions are close to uniform -> sampling varies."""
    torch.manual_seed(0)
    return _saved_and_reloaded(GPT2LMHeadModel(_config(tok)), tmp_path_factory.mktemp("flat"))


@pytest.fixture(scope="module")
def peaked_model(tok, tmp_path_factory):
    """Large init: clear argmax margins, so greedy/beam comparisons are not decided by float noise."""
    torch.manual_seed(0)
    model = GPT2LMHeadModel(_config(tok, initializer_range=0.5))
    return _saved_and_reloaded(model, tmp_path_factory.mktemp("peaked"))


def _markov_model(tok, transitions: dict[str, str], default: str | None = None, bias: str | None = None):
    """A GPT-2 whose next token is a function of the current token only.

    Token ``t`` is followed by ``transitions[t]`` (a char or the EOS string), else ``default``;
    with ``bias`` set, that token wins always (e.g. an always-EOS model).  Construction: attention
    and MLP outputs and position embeddings are zeroed, so the final hidden state is the layer-norm
    of a one-hot of the current token; one extra hidden unit is pinned to 1 by ``ln_f`` (weight 0,
    bias 1) and gives the untied ``lm_head`` a bias column.
    """
    vocab = len(tok)
    width = vocab + 1
    model = GPT2LMHeadModel(_config(tok, n_embd=width, n_head=1, tie_word_embeddings=False))
    lm_head = torch.zeros(vocab, width)
    for token_id in range(vocab):
        target = transitions.get(tok.convert_ids_to_tokens(token_id), default)
        if target is not None:
            lm_head[tok.convert_tokens_to_ids(target), token_id] = 10.0
    if bias is not None:
        lm_head[tok.convert_tokens_to_ids(bias), vocab] = 100.0
    with torch.no_grad():
        for block in model.transformer.h:
            for proj in (block.attn.c_proj, block.mlp.c_proj):
                proj.weight.zero_()
                proj.bias.zero_()
        model.transformer.wpe.weight.zero_()
        model.transformer.wte.weight.copy_(torch.eye(vocab, width) * 10.0)
        model.transformer.ln_f.weight[vocab] = 0.0
        model.transformer.ln_f.bias[vocab] = 1.0
        model.lm_head.weight.copy_(lm_head)
    return model


def _argmax_loop(model, tok, prompt: str, max_new_tokens: int) -> list[int]:
    """Greedy decoding written out by hand: full forward pass, argmax, append; stop after EOS."""
    ids = tok(prompt)["input_ids"]
    new: list[int] = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            logits = model(torch.tensor([ids + new])).logits[0, -1]
            new.append(int(logits.argmax()))
            if new[-1] == tok.eos_token_id:
                break
    return new


def _logprob(model, tok, prompt: str, new: list[int]) -> float:
    """Total log-probability of the continuation ``new`` after ``prompt``."""
    ids = tok(prompt)["input_ids"]
    with torch.no_grad():
        logp = model(torch.tensor([ids + new])).logits[0].log_softmax(-1)
    return sum(float(logp[len(ids) - 1 + i, t]) for i, t in enumerate(new))


# ---------------------------------------------------------------------------- strategies


def test_default_strategies_are_pure(tok):
    for name in DEFAULT_STRATEGIES:
        config = build_generation_config(name, tok, max_new_tokens=8)
        assert config.eos_token_id == tok.eos_token_id and config.pad_token_id == tok.pad_token_id
        assert config.max_new_tokens == 8 and config.num_return_sequences == 1
        if config.do_sample:
            # transformers would otherwise fill top_k=50 in: only top_k_* may truncate by rank
            assert config.top_k == (10 if name == "top_k_10" else 0)
            assert config.top_p == (0.9 if name == "top_p_0.9" else 1.0)
            assert config.typical_p == 1.0
            assert config.num_beams == 1
    assert build_generation_config("beam_3", tok).num_beams == 3
    assert build_generation_config("temperature_1.5", tok).temperature == 1.5
    assert build_generation_config("greedy", tok, stop_at_eos=False).eos_token_id == []
    with pytest.raises(ValueError, match="unknown strategy"):
        build_generation_config("nucleus", tok)


def test_model_generation_config_does_not_leak_into_sampling(flat_model, tok):
    """A checkpoint whose generation_config says top_k=2 must not truncate "temperature_1.0"."""
    model = copy.deepcopy(flat_model)
    model.generation_config.top_k = 2
    prompts = ["the"] * 64
    first = {g.token_ids[0] for g in generate(model, tok, prompts, "temperature_1.0", max_new_tokens=1)}
    assert len(first) > 2
    # ...whereas plain generate(do_sample=True) silently inherits top_k from the model's config.
    enc = tok(prompts, return_tensors="pt")
    torch.manual_seed(0)
    out = model.generate(**enc, do_sample=True, max_new_tokens=1, pad_token_id=tok.pad_token_id)
    assert len(set(out[:, -1].tolist())) <= 2
    assert flat_model.generation_config.top_k is None  # fixture model untouched


def test_no_transformers_warnings(peaked_model, tok):
    records: list[logging.LogRecord] = []
    handler = logging.Handler(level=logging.WARNING)
    handler.emit = records.append  # type: ignore[method-assign]
    hf_logger = logging.getLogger("transformers")
    hf_logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for name in DEFAULT_STRATEGIES:
                generate(peaked_model, tok, PROMPTS, name, max_new_tokens=4)
    finally:
        hf_logger.removeHandler(handler)
    assert [r.getMessage() for r in records] == []
    assert [str(w.message) for w in caught] == []


# ---------------------------------------------------------------------------- greedy


def test_greedy_matches_hand_written_argmax_loop(peaked_model, tok):
    for prompt in PROMPTS:
        (gen,) = generate(peaked_model, tok, [prompt], "greedy", max_new_tokens=6)
        assert gen.token_ids == _argmax_loop(peaked_model, tok, prompt, 6)
        assert gen.prompt == prompt
        assert gen.text == tok.decode(gen.token_ids, skip_special_tokens=True)


def test_greedy_is_deterministic_and_ignores_seed(peaked_model, tok):
    a = generate(peaked_model, tok, PROMPTS, "greedy", max_new_tokens=8, seed=0)
    b = generate(peaked_model, tok, PROMPTS, "greedy", max_new_tokens=8, seed=123)
    assert a == b


def test_left_padded_batch_equals_one_prompt_at_a_time(peaked_model, tok):
    batched = generate(peaked_model, tok, PROMPTS, "greedy", max_new_tokens=8, batch_size=len(PROMPTS))
    single = [generate(peaked_model, tok, [p], "greedy", max_new_tokens=8)[0] for p in PROMPTS]
    assert batched == single
    assert tok.padding_side == "right"  # the tokenizer was not switched to left padding


def test_top_k_1_sampling_equals_greedy(peaked_model, tok):
    greedy = generate(peaked_model, tok, PROMPTS, "greedy", max_new_tokens=8)
    for seed in (0, 1):
        top1 = generate(peaked_model, tok, PROMPTS, {"do_sample": True, "top_k": 1}, max_new_tokens=8, seed=seed)
        assert top1 == greedy


def test_beam_3_scores_at_least_greedy(peaked_model, tok):
    """With 2 new tokens this is a theorem: the beam keeps greedy's first token and then takes the
    best extension of 3 prefixes.  (For longer outputs beam search can in principle lose.)
    EOS is an ordinary token here so that length normalisation of finished beams plays no role."""
    for prompt in PROMPTS:
        (greedy,) = generate(peaked_model, tok, [prompt], "greedy", max_new_tokens=2, stop_at_eos=False)
        (beam,) = generate(peaked_model, tok, [prompt], "beam_3", max_new_tokens=2, stop_at_eos=False)
        assert len(beam.token_ids) == len(greedy.token_ids) == 2
        assert (
            _logprob(peaked_model, tok, prompt, beam.token_ids)
            >= _logprob(peaked_model, tok, prompt, greedy.token_ids) - 1e-5
        )


# ---------------------------------------------------------------------------- sampling


def test_sampling_reproducible_with_seed_and_varies_across_seeds(flat_model, tok):
    a = generate(flat_model, tok, PROMPTS, "temperature_1.0", max_new_tokens=16, seed=0)
    b = generate(flat_model, tok, PROMPTS, "temperature_1.0", max_new_tokens=16, seed=0)
    c = generate(flat_model, tok, PROMPTS, "temperature_1.0", max_new_tokens=16, seed=1)
    assert a == b
    assert [g.token_ids for g in a] != [g.token_ids for g in c]
    # and a flat model really is sampled, not decoded greedily
    greedy = generate(flat_model, tok, PROMPTS, "greedy", max_new_tokens=16)
    assert [g.token_ids for g in a] != [g.token_ids for g in greedy]


def test_caller_rng_and_train_mode_are_preserved(flat_model, tok):
    model = copy.deepcopy(flat_model).train()
    torch.manual_seed(1234)
    expected = torch.rand(3)
    torch.manual_seed(1234)
    generate(model, tok, PROMPTS, "top_p_0.9", max_new_tokens=4, seed=0)
    assert torch.equal(torch.rand(3), expected)
    assert model.training


# ---------------------------------------------------------------------------- EOS handling


def test_always_eos_model_finishes_immediately(tok):
    # every token -> EOS
    model = _markov_model(tok, transitions={}, bias=tok.eos_token)
    for name in ("greedy", "temperature_1.0", "beam_3"):
        gens = generate(model, tok, PROMPTS, name, max_new_tokens=10)
        for gen in gens:
            assert gen.finished
            assert gen.token_ids == [tok.eos_token_id]
            assert gen.text == ""


def test_text_stops_before_eos_and_unfinished_rows_hit_the_limit(tok):
    # a -> b -> c -> EOS, and EOS -> a; "d" loops on itself forever
    model = _markov_model(tok, transitions={"a": "b", "b": "c", "c": tok.eos_token, "d": "d"}, default="a")
    eos = tok.eos_token_id
    gens = generate(model, tok, ["a", "ab", "d", "the"], "greedy", max_new_tokens=6)
    assert [g.text for g in gens] == ["bc", "c", "dddddd", "abc"]
    assert [g.finished for g in gens] == [True, True, False, True]
    assert gens[0].token_ids == tok.convert_tokens_to_ids(["b", "c"]) + [eos]  # EOS kept in ids only
    assert len(gens[2].token_ids) == 6

    # too short to reach EOS -> not finished
    (short,) = generate(model, tok, ["a"], "greedy", max_new_tokens=2)
    assert (short.text, short.finished) == ("bc", False)

    # suppressing EOS through a strategy dict: runs to the limit
    (suppressed,) = generate(model, tok, ["a"], {"do_sample": False, "suppress_tokens": [eos]}, max_new_tokens=5)
    assert not suppressed.finished and len(suppressed.token_ids) == 5 and eos not in suppressed.token_ids

    # stop_at_eos=False: EOS is just a token; it is kept in ids, dropped from the text
    (cont,) = generate(model, tok, ["a"], "greedy", max_new_tokens=8, stop_at_eos=False)
    assert cont.token_ids.count(eos) == 2 and len(cont.token_ids) == 8
    assert cont.text == "bcabcabc"[:6] and cont.finished


def test_empty_and_overlong_prompts(peaked_model, tok, caplog):
    (empty,) = generate(peaked_model, tok, [""], "greedy", max_new_tokens=4)
    assert empty.token_ids == _argmax_loop(peaked_model, tok, tok.eos_token, 4)  # conditioned on BOS
    long_prompt = "the cat sat on the mat. " * 5  # 120 chars > 64 positions
    with caplog.at_level(logging.WARNING, logger="pipeline.decoding"):
        (gen,) = generate(peaked_model, tok, [long_prompt], "greedy", max_new_tokens=8)
    assert "keeping only its last 56 tokens" in caplog.text
    assert gen.token_ids == _argmax_loop(peaked_model, tok, long_prompt[-56:], 8)


# ---------------------------------------------------------------------------- tables & metrics


def test_sample_table_side_by_side(peaked_model, tok):
    table = sample_table(peaked_model, tok, PROMPTS[:2], max_new_tokens=4)
    assert list(table) == list(DEFAULT_STRATEGIES)
    for gens in table.values():
        assert [g.prompt for g in gens] == PROMPTS[:2]
        assert all(isinstance(g, Generation) for g in gens)
    assert table["greedy"] == generate(peaked_model, tok, PROMPTS[:2], "greedy", max_new_tokens=4)
    subset = sample_table(peaked_model, tok, PROMPTS[:2], strategies=["greedy", "beam_3"], max_new_tokens=4)
    assert list(subset) == ["greedy", "beam_3"]
    report = format_sample_table(subset)
    assert "| greedy |" in report and "| beam_3 |" in report and "distinct-2" in report


def test_distinct_n_hand_computed():
    texts = ["a b a b", "a b c"]
    # unigrams: a b a b a b c -> 3 unique / 7
    assert distinct_n(texts, 1) == pytest.approx(3 / 7)
    # bigrams: (a b)(b a)(a b) + (a b)(b c) -> 3 unique / 5; "b a" across the two texts is not counted
    assert distinct_n(texts, 2) == pytest.approx(3 / 5)
    assert distinct_n(["one two"], 3) == 0.0
    assert distinct_n([], 1) == 0.0
    assert distinct_n(["x  y\n z"], 1) == 1.0  # whitespace tokens, any whitespace
    with pytest.raises(ValueError):
        distinct_n(texts, 0)


def test_repetition_rate_hand_computed():
    # 4-grams of text 1: abcd bcda cdab dabc abcd -> 1 repeat of 5; text 2: 1 4-gram, no repeat
    assert repetition_rate(["a b c d a b c d", "w x y z"]) == pytest.approx(1 / 6)
    # repetition is counted within a text only
    assert repetition_rate(["a b c d", "a b c d"]) == 0.0
    assert distinct_n(["a b c d", "a b c d"], 4) == 0.5
    assert repetition_rate(["x x x x x x"]) == pytest.approx(2 / 3)  # 3 identical 4-grams
    assert repetition_rate(["too short"]) == 0.0
    assert repetition_rate(["a a a"], n=2) == pytest.approx(1 / 2)
