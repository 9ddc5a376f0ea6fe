"""Memorisation queries: the overlap measure (exact values) and a real fine-tune (slow)."""

from __future__ import annotations

import pytest

from gif_core.errors import ConfigError, InputError
from gif_core.memorise import (
    fine_tune,
    memorised_queries,
    normalise_words,
    overlap_stats,
    split_prefix,
)


def test_normalise_words():
    assert normalise_words("The cat, (sat). -- ") == ["the", "cat", "sat", "--"]
    assert normalise_words("  ... !! ") == []


def test_overlap_stats_hand_computed():
    # reference: the cat sat on the mat today (7 words); generated: the cat sat under the mat (6)
    # LCS = the cat sat the mat (5); longest common run = "the cat sat" (3); leading match 3
    s = overlap_stats("The cat sat on the mat today.", "the cat sat under the mat")
    assert s["reference_words"] == 7
    assert s["generated_words"] == 6
    assert s["lcs_words"] == 5
    assert s["rouge_l_recall"] == pytest.approx(5 / 7)
    assert s["rouge_l_precision"] == pytest.approx(5 / 6)
    assert s["rouge_l_f1"] == pytest.approx(10 / 13)
    assert s["longest_run_words"] == 3
    assert s["longest_run_fraction"] == pytest.approx(3 / 7)
    assert s["exact_prefix_words"] == 3


def test_overlap_stats_reordered_and_degenerate():
    s = overlap_stats("a b c d", "c d a b")
    assert (s["lcs_words"], s["longest_run_words"], s["exact_prefix_words"]) == (2, 2, 0)
    assert s["rouge_l_recall"] == pytest.approx(0.5)
    same = overlap_stats("Hello, World!", "hello world")
    assert same["rouge_l_f1"] == 1.0 and same["exact_prefix_words"] == 2
    empty = overlap_stats("one two", "")
    assert empty["lcs_words"] == 0 and empty["rouge_l_recall"] == 0.0
    assert empty["rouge_l_f1"] == 0.0 and empty["longest_run_fraction"] == 0.0
    assert overlap_stats("", "x")["rouge_l_recall"] == 0.0
    with pytest.raises(InputError):
        overlap_stats("a", None)


def test_split_prefix_keeps_spacing():
    assert split_prefix("One  two three four", 2) == ("One  two", " three four")
    assert split_prefix("One two", 5) == ("One two", "")
    with pytest.raises(InputError):
        split_prefix("One two", 0)


def test_bad_arguments_fail_before_loading_the_model():
    with pytest.raises(InputError):
        fine_tune([], epochs=1)
    with pytest.raises(InputError):
        fine_tune("one text", epochs=1)
    with pytest.raises(ConfigError):
        fine_tune(["some text"], epochs=0)
    with pytest.raises(ConfigError):
        fine_tune(["some text"], epochs=1, lr=-1.0)
    with pytest.raises(ConfigError):
        fine_tune(["some text"], epochs=1, device="tpu")
    long = [("a", " ".join(["word"] * 40))]
    with pytest.raises(ConfigError, match="seed"):
        memorised_queries(long, 1, fine_tune_kwargs={"seed": 3})
    with pytest.raises(InputError, match="prefix_words"):
        memorised_queries([("a", "too short to continue")], 1)
    with pytest.raises(InputError):
        memorised_queries(long, 0)


@pytest.mark.slow
def test_fine_tuned_model_recites_its_training_samples():
    from gif_core.data import wiki_samples

    samples = [(s.id, s.text) for s in wiki_samples() if 30 <= len(s.text.split()) <= 60][:3]
    assert len(samples) == 3
    timings: dict[str, float] = {}
    queries = memorised_queries(
        samples, 3, prefix_words=8, seed=0, timings=timings,
        fine_tune_kwargs={"epochs": 12, "lr": 1e-4, "max_tokens": 96, "batch_size": 3,
                          "device": "cpu", "threads": 1})
    assert [q.source_ids for q in queries] == [[sid] for sid, _ in samples]
    by_id = dict(samples)
    for q in queries:
        assert q.kind == "memorised" and q.qid.startswith("memorised-")
        source = by_id[q.source_ids[0]]
        assert source.startswith(q.meta["prefix"])
        assert q.meta["generated"].startswith(q.meta["prefix"])
        assert q.text and not q.text.startswith(q.meta["prefix"])
        remainder = split_prefix(source, 8)[1]
        # at least half of the words after the prefix come back, in order
        assert overlap_stats(remainder, q.text)["rouge_l_recall"] >= 0.5, q.meta
        assert q.meta["overlap"]["rouge_l_recall"] >= 0.5
    assert set(timings) == {"load_s", "fine_tune_s", "generate_s"}
