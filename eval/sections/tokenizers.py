"""The tokenizer comparison (eval/tokenizer_study.py) on the main pretraining run's corpus."""

from __future__ import annotations

from eval import figures
from eval.context import Context
from eval.document import Section

COLUMNS = (
    ("vocab_size", "vocabulary"),
    ("tokens_per_char", "tokens / char"),
    ("unk_rate", "unk rate"),
    ("roundtrip_rate", "exact round trips"),
    ("bits_per_char", "bits / char"),
)


def build(ctx: Context) -> Section | None:
    pretrain = ctx.runs.main("pretrain")
    if pretrain is None or not ctx.options.studies:
        return None
    from eval import tokenizer_study  # imported when used: a report without studies loads no model code

    n = ctx.options.tokenizer_documents
    train, held_out, corpus = tokenizer_study.corpus_from_recipe(
        pretrain.recipe, n, max(50, n // 5), seed=ctx.options.seed
    )
    result = tokenizer_study.run(
        train,
        held_out,
        bpe_vocab_size=int(pretrain.recipe.get("vocab_size", 512)),
        train_steps=ctx.options.tokenizer_train_steps,
        seed=ctx.options.seed,
    )
    result["corpus"] = corpus
    section = Section("tokenizers", "Tokenizer comparison")
    section.text(
        f"Char-level, word-level and byte-level BPE tokenizers (pipeline/tokenization.py) trained on {corpus}. Bits "
        f"per character of the held-out documents (EOS cost included) under **{result['bits_model_description']}**"
        + (
            ", λ picked on a dev split; it sees one token of context, which flatters coarse tokens. "
            "`--tokenizer-train-steps N` trains a tiny GPT per tokenizer instead."
            if result["bits_model"] == "count"
            else "."
        )
        + " Word-level decoding is lossy (whitespace, unknown words), so its round trips fail and its bits/char "
        "leave out what `<|unk|>` hides."
    )
    section.table(
        ["tokenizer"] + [label for _, label in COLUMNS],
        [[kind] + [row.get(key) for key, _ in COLUMNS] for kind, row in result["kinds"].items()],
    )
    section.figure(
        figures.grouped_bars(
            {
                label: {"": {kind: row.get(key) for kind, row in result["kinds"].items()}}
                for key, label in COLUMNS
                if key in ("vocab_size", "tokens_per_char", "bits_per_char")
            },
            ctx.figure_path("tokenizers"),
            "tokenizers on the same corpus",
            columns=3,
        ),
        "Vocabulary size, tokens per character and bits per character of each tokenizer.",
    )
    section.data = result
    return section
