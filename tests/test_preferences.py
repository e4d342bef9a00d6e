"""Preference data: formats, HH transcript splitting, cleaning, and clear errors."""

from __future__ import annotations

import json

import pytest
from conftest import SHARED_DATA

from pipeline.data.preferences import load_preferences, split_hh_transcript
from pipeline.data.toy_world import gold_reward
from pipeline.errors import DataError


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_hh_transcripts_split_into_shared_prompt_and_final_responses():
    chosen = "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Capital of France?\n\nAssistant: Paris."
    rejected = "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Capital of France?\n\nAssistant: No idea, sorry."
    prompt, good, bad = split_hh_transcript(chosen, rejected)
    assert prompt == "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Capital of France?\n\nAssistant:"
    assert (good, bad) == (" Paris.", " No idea, sorry.")
    assert prompt + good == chosen and prompt + bad == rejected


def test_hh_split_when_responses_differ_in_an_earlier_turn():
    chosen = "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: ok\n\nAssistant: Bye."
    rejected = "\n\nHuman: Hi\n\nAssistant: Go away.\n\nHuman: ok\n\nAssistant: Bye."
    prompt, good, bad = split_hh_transcript(chosen, rejected)
    assert prompt == "\n\nHuman: Hi\n\nAssistant:" and good.startswith(" Hello!") and bad.startswith(" Go away.")


def test_toy_pairs_are_ordered_by_gold_reward():
    pairs, stats = load_preferences("toy", max_pairs=200)
    assert stats.kept == len(pairs) > 150
    for row in pairs:
        assert gold_reward(row["prompt"], row["chosen"]) > gold_reward(row["prompt"], row["rejected"])


def test_duplicates_and_ties_are_removed_and_counted(tmp_path):
    data = write_jsonl(
        tmp_path / "p.jsonl",
        [
            {"prompt": "q", "chosen": "a", "rejected": "b"},
            {"prompt": "q", "chosen": "a", "rejected": "b"},
            {"prompt": "q", "chosen": "same", "rejected": "same"},
            {"prompt": "r", "chosen": "c", "rejected": "d"},
        ],
    )
    pairs, stats = load_preferences(str(data))
    assert len(pairs) == 2 and stats.duplicates == 1 and stats.chosen_equals_rejected == 1 and stats.records == 4


@pytest.mark.parametrize(
    "records, message",
    [
        ([{"prompt": "q", "chosen": "a"}], "p.jsonl:1: missing field 'rejected'"),
        ([{"prompt": "q", "chosen": "a", "rejected": 3}], "p.jsonl:1: field 'rejected' must be a string, got int"),
        ([{"prompt": "  ", "chosen": "a", "rejected": "b"}], "p.jsonl:1: empty prompt"),
        ([{"chosen": "plain", "rejected": "text"}], "p.jsonl:1: missing field 'prompt'"),
        ([{"prompt": "q", "chosen": "x", "rejected": "x"}] * 3, "all 3 pairs were dropped"),
        ([], "holds no preference pairs"),
    ],
)
def test_bad_preference_files(tmp_path, records, message):
    data = write_jsonl(tmp_path / "p.jsonl", records)
    with pytest.raises(DataError, match=message.replace("(", r"\(")):
        load_preferences(str(data))


def test_malformed_line_names_file_and_line(tmp_path):
    data = tmp_path / "p.jsonl"
    data.write_text('{"prompt": "q", "chosen": "a", "rejected": "b"}\n{"prompt": oops}\n')
    with pytest.raises(DataError, match=r"p.jsonl:2: malformed JSON"):
        load_preferences(str(data))


@pytest.mark.skipif(not (SHARED_DATA / "hh_rlhf" / "test.jsonl.gz").is_file(), reason="shared data absent")
def test_real_hh_file_loads():
    pairs, stats = load_preferences(str(SHARED_DATA / "hh_rlhf" / "test.jsonl.gz"))
    assert stats.records == 500 and len(pairs) > 450
    assert all(prompt.endswith("\n\nAssistant:") for prompt in pairs["prompt"][:50])
