"""Verbatim channel: shingle index and shared spans, on real Wikipedia summaries."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from corpora import CJK_DOCS, wiki_texts

from gif_core.errors import IndexFormatError, InputError
from gif_core.verbatim import MAX_QUERY_SHINGLES, Span, VerbatimIndex, find_spans, nbytes_on_disk

# A sentence of row 1 ("2001: A Space Odyssey") and where it sits in that summary.
SENTENCE = (
    "Its plot was inspired by several short stories optioned from Clarke, primarily "
    '"The Sentinel" (1951) and "Encounter in the Dawn" (1953).'
)
SENTENCE_ROW = 1
SENTENCE_AT = 151
PREFIX = "Sure! Here is the passage you asked for:\n\n"
SUFFIX = "\n\nLet me know if you want the rest of the plot."


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return wiki_texts()


@pytest.fixture(scope="module")
def index(texts: list[str]) -> VerbatimIndex:
    return VerbatimIndex.build(texts)


def test_fixture_sentence_location(texts: list[str]) -> None:
    assert texts[SENTENCE_ROW][SENTENCE_AT : SENTENCE_AT + len(SENTENCE)] == SENTENCE
    assert len(SENTENCE) == 136


def test_find_spans_exact_offsets(texts: list[str]) -> None:
    query = PREFIX + SENTENCE + SUFFIX
    spans = find_spans(query, texts[SENTENCE_ROW])
    assert spans[0] == Span(
        query_start=len(PREFIX),
        query_end=len(PREFIX) + len(SENTENCE),
        source_start=SENTENCE_AT,
        source_end=SENTENCE_AT + len(SENTENCE),
        text=SENTENCE,
    )
    assert (spans[0].query_start, spans[0].source_start) == (42, 151)


def test_find_spans_through_case_quotes_and_homoglyphs(texts: list[str]) -> None:
    altered = (
        SENTENCE.upper().replace('"THE', "“THE").replace('L"', "L”").replace("CLARKE", "СLARKE")
    )  # curly quotes and a Cyrillic С; same length as the original
    assert len(altered) == len(SENTENCE)
    query = PREFIX + altered + SUFFIX
    span = find_spans(query, texts[SENTENCE_ROW])[0]
    assert (span.query_start, span.query_end) == (len(PREFIX), len(PREFIX) + len(SENTENCE))
    assert (span.source_start, span.source_end) == (SENTENCE_AT, SENTENCE_AT + len(SENTENCE))
    assert query[span.query_start : span.query_end] == altered


def test_find_spans_two_passages_sorted_and_disjoint(texts: list[str]) -> None:
    src = texts[123]
    first = src[0:120]
    second = src[200:260]
    query = "Intro text. " + second + " and then, later on, " + first + " The end."
    spans = find_spans(query, src, min_chars=20)
    assert len(spans) >= 2
    lengths = [s.source_end - s.source_start for s in spans]
    assert lengths == sorted(lengths, reverse=True)
    for a in spans:
        assert a.text == src[a.source_start : a.source_end]
        for b in spans:
            if a is not b:
                assert a.query_end <= b.query_start or b.query_end <= a.query_start
                assert a.source_end <= b.source_start or b.source_end <= a.source_start
    # the two inserted passages are recovered in the source (up to word boundaries)
    assert spans[0].source_start == 0
    assert src[spans[0].source_start : spans[0].source_end] in first
    assert spans[0].source_end >= 110
    assert any(200 <= s.source_start <= 205 and 250 <= s.source_end <= 260 for s in spans[1:])


def test_find_spans_min_chars_and_no_overlap_cases(texts: list[str]) -> None:
    assert find_spans("completely unrelated words here", texts[0]) == []
    assert find_spans("", texts[0]) == []
    short = find_spans("prefix " + texts[0][:30] + " suffix", texts[0], min_chars=40)
    assert short == []
    with pytest.raises(InputError, match="min_chars"):
        find_spans("a", "b", min_chars=0)


def test_find_spans_cjk_offsets() -> None:
    source = "前言。" + CJK_DOCS[2] + "以上。"
    query = "Here's a quote: 「" + CJK_DOCS[2] + "」 nice."
    spans = find_spans(query, source)
    assert len(spans) == 1
    q0 = query.index(CJK_DOCS[2])
    assert (spans[0].query_start, spans[0].query_end) == (q0, q0 + len(CJK_DOCS[2]))
    assert (spans[0].source_start, spans[0].source_end) == (3, 3 + len(CJK_DOCS[2]))
    assert spans[0].text == CJK_DOCS[2]


@pytest.mark.parametrize("row", [0, 1, 17, 123, 499])
def test_exact_copy_is_rank_one(index: VerbatimIndex, texts: list[str], row: int) -> None:
    cov, rows = index.search(texts[row], 10)
    assert rows[0] == row
    assert cov[0] == pytest.approx(1.0)
    assert cov.dtype == np.float32 and rows.dtype == np.int64
    assert np.all(np.diff(cov) <= 0) and np.all(cov > 0)


def test_embedded_sentence_found(index: VerbatimIndex) -> None:
    cov, rows = index.search(PREFIX + SENTENCE + SUFFIX, 5)
    assert rows[0] == SENTENCE_ROW
    assert 0.4 < cov[0] < 1.0  # the chatty prefix and suffix are not in the sample


def test_coverage_rows_matches_search(index: VerbatimIndex, texts: list[str]) -> None:
    query = texts[42][:400]
    cov, rows = index.search(query, 10)
    np.testing.assert_allclose(index.coverage_rows(query, rows), cov)
    assert index.coverage_rows("zzqxvb unknown words that are nowhere", np.array([0])).tolist() == [
        0.0
    ]
    with pytest.raises(InputError, match="rows must be integers"):
        index.coverage_rows("x", np.array([-1]))


def test_cjk_exact_copy_rank_one() -> None:
    corpus = wiki_texts(200) + CJK_DOCS
    idx = VerbatimIndex.build(corpus)
    for offset, doc in enumerate(CJK_DOCS):
        cov, rows = idx.search(doc, 5)
        assert rows[0] == 200 + offset
        assert cov[0] == pytest.approx(1.0)


def test_common_shingles_dropped_but_copies_still_full_coverage(texts: list[str]) -> None:
    boiler = "This article is licensed under the Creative Commons Attribution Share Alike licence."
    corpus = [t + " " + boiler for t in texts[:100]]
    idx = VerbatimIndex.build(corpus)  # df 100 > cap of 64 for the boilerplate shingles
    assert idx._stop.size >= 8
    cov, rows = idx.search(corpus[5], 3)
    assert rows[0] == 5 and cov[0] == pytest.approx(1.0)
    assert idx.search(boiler, 3)[1].size == 0


def test_save_load_round_trip(index: VerbatimIndex, texts: list[str], tmp_path: Path) -> None:
    index.save(tmp_path)
    loaded = VerbatimIndex.load(tmp_path, mmap=True)
    assert isinstance(loaded._keys, np.memmap)
    assert loaded.num_docs == len(texts) and loaded.n == 5
    assert nbytes_on_disk(tmp_path) > 0
    for query in (texts[0], texts[321][:300], PREFIX + SENTENCE, "zzqxvb"):
        c1, r1 = index.search(query, 10)
        c2, r2 = loaded.search(query, 10)
        np.testing.assert_array_equal(r1, r2)
        np.testing.assert_array_equal(c1, c2)


def test_load_rejects_bad_directory(index: VerbatimIndex, tmp_path: Path) -> None:
    with pytest.raises(IndexFormatError, match="missing"):
        VerbatimIndex.load(tmp_path)
    index.save(tmp_path)
    np.save(tmp_path / "verbatim_docs.npy", np.zeros(3, dtype=np.uint32))
    with pytest.raises(IndexFormatError, match="do not match"):
        VerbatimIndex.load(tmp_path)


def test_bad_build_arguments() -> None:
    with pytest.raises(InputError, match="empty"):
        VerbatimIndex.build([])
    with pytest.raises(InputError, match="n must be"):
        VerbatimIndex.build(["some text here"], n=0)
    with pytest.raises(InputError, match="no text"):
        VerbatimIndex.build(["", "!!"])


def test_short_texts_use_whole_text_shingle() -> None:
    idx = VerbatimIndex.build(["Hello world", "hello there world", "Goodbye"])
    cov, rows = idx.search("HELLO,  world!", 3)
    assert rows.tolist() == [0] and cov.tolist() == [1.0]


def test_long_query_is_bounded(index: VerbatimIndex, texts: list[str]) -> None:
    big = " ".join(texts)[:100_000]
    t0 = time.perf_counter()
    cov, rows = index.search(big, 10)
    spans = find_spans(big, texts[3])
    elapsed = time.perf_counter() - t0
    assert elapsed < 2.0, f"100k-char query took {elapsed:.2f}s (bound 2s)"
    assert index.query_shingles(big).size == MAX_QUERY_SHINGLES
    assert rows.size == 10
    # texts[3] lies wholly inside the first 100k characters, so it is one span
    assert spans[0].source_start == 0 and spans[0].source_end == len(texts[3])
    assert big[spans[0].query_start : spans[0].query_end] == texts[3]


# ---------------------------------------------------------------- streaming (bounded-memory) build


def test_streamed_build_equals_one_shot(texts: list[str], tmp_path: Path) -> None:
    boiler = "This article is licensed under the Creative Commons Attribution Share Alike licence."
    # boilerplate on 100 rows (df over the cap of 64: stop shingles), CJK and very short texts
    corpus = [t + " " + boiler if i % 5 == 0 else t for i, t in enumerate(texts)]
    corpus += CJK_DOCS + ["short", "two words", ""]
    one = VerbatimIndex.build(corpus)
    assert one._stop.size >= 8
    streamed = VerbatimIndex.build_to(tmp_path, iter(corpus), run_pairs=4_000, merge_pairs=3_000)
    assert isinstance(streamed._keys, np.memmap)
    assert streamed._meta == one._meta
    for name in ("_keys", "_docs", "_stop"):
        np.testing.assert_array_equal(getattr(streamed, name), getattr(one, name))
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # scratch removed
    for query in (corpus[5], PREFIX + SENTENCE + SUFFIX, texts[321][:300], CJK_DOCS[0], "short"):
        c1, r1 = one.search(query, 50)
        c2, r2 = streamed.search(query, 50)
        np.testing.assert_array_equal(r1, r2)
        np.testing.assert_allclose(c2, c1, rtol=0, atol=1e-6)
    cov, rows = streamed.search(PREFIX + SENTENCE + SUFFIX, 3)
    assert rows[0] == SENTENCE_ROW and 0.4 < cov[0] < 1.0  # the chatty wrapper is not in it


def test_streamed_build_failure_keeps_previous_index(texts: list[str], tmp_path: Path) -> None:
    before = VerbatimIndex.build_to(tmp_path, texts[:200], run_pairs=3_000)
    expected = before.search(SENTENCE, 3)
    files = sorted(p.name for p in tmp_path.iterdir())

    def broken():
        yield from texts[200:450]
        yield b"bytes, not text"

    with pytest.raises(InputError, match=r"texts\[250\] must be str"):
        VerbatimIndex.build_to(tmp_path, broken(), run_pairs=3_000)
    with pytest.raises(InputError, match="max_df_fraction"):
        VerbatimIndex.build_to(tmp_path, texts, max_df_fraction=0.0)
    with pytest.raises(InputError, match="no text"):
        VerbatimIndex.build_to(tmp_path, ["", "..."])
    assert sorted(p.name for p in tmp_path.iterdir()) == files
    after = VerbatimIndex.load(tmp_path)
    assert after.num_docs == 200
    got = after.search(SENTENCE, 3)
    np.testing.assert_array_equal(got[1], expected[1])
    assert got[1][0] == SENTENCE_ROW and got[0][0] == pytest.approx(1.0)


def test_streamed_build_splits_buckets_of_boilerplate(texts: list[str], tmp_path: Path) -> None:
    """A bucket of hashes over the merge block is halved until it fits; a shingle with more
    pairs than a block is copied run by run, or dropped when over the df cap."""
    common = "This article is licensed under the Creative Commons Attribution Share Alike licence."
    rarer = "Text from the public domain encyclopaedia, edition of nineteen eleven, volume four."
    corpus = [t + " " + common if i % 4 == 0 else t for i, t in enumerate(texts[:400])]
    corpus = [t + " " + rarer if i % 13 == 0 else t for i, t in enumerate(corpus)]
    one = VerbatimIndex.build(corpus)  # df 100 > cap 64 (dropped); df 31 (kept)
    streamed = VerbatimIndex.build_to(tmp_path, corpus, run_pairs=2_000, merge_pairs=20)
    assert streamed._meta == one._meta and one._stop.size >= 8
    for name in ("_keys", "_docs", "_stop"):
        np.testing.assert_array_equal(getattr(streamed, name), getattr(one, name))
    cov, rows = streamed.search(rarer, 40)
    assert rows.tolist() == list(range(0, 400, 13)) and np.all(cov == 1.0)
