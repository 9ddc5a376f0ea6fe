"""BM25 lexical channel on a slice of real Wikipedia summaries."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from corpora import CJK_DOCS, wiki_texts

from gif_core.errors import IndexFormatError, InputError
from gif_core.lexical import MAX_QUERY_TERMS, LexicalIndex, nbytes_on_disk


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return wiki_texts()


@pytest.fixture(scope="module")
def index(texts: list[str]) -> LexicalIndex:
    return LexicalIndex.build(texts)


@pytest.mark.parametrize("row", [0, 1, 17, 123, 499])
def test_exact_copy_is_rank_one(index: LexicalIndex, texts: list[str], row: int) -> None:
    scores, rows = index.search(texts[row], 10)
    assert rows[0] == row
    assert scores.dtype == np.float32 and rows.dtype == np.int64
    assert np.all(np.diff(scores) <= 0)
    # the self-score normaliser equals the exact copy's score
    assert index.max_score(texts[row]) == pytest.approx(float(scores[0]), rel=1e-5)


@pytest.mark.parametrize("row", [1, 17, 123, 250, 499])
def test_copy_with_dropped_words_is_rank_one(
    index: LexicalIndex, texts: list[str], row: int
) -> None:
    rng = np.random.default_rng(row)
    words = texts[row].split()
    kept = [w for w in words if rng.random() >= 0.15]
    assert len(kept) < len(words)
    _, rows = index.search(" ".join(kept), 5)
    assert rows[0] == row


def test_short_query_finds_known_doc(index: LexicalIndex, texts: list[str]) -> None:
    _, rows = index.search("Kubrick Clarke Sentinel screenplay", 3)
    assert rows[0] == 1
    assert texts[1].startswith("2001: A Space Odyssey")


def test_unknown_tokens_return_empty(index: LexicalIndex) -> None:
    scores, rows = index.search("zzqxvb qqqzzw", 5)
    assert scores.shape == (0,) and rows.shape == (0,)
    assert scores.dtype == np.float32 and rows.dtype == np.int64
    assert index.max_score("zzqxvb") == 0.0
    scores, rows = index.search("", 5)
    assert rows.size == 0


def test_k_bounds_and_zero_scores_excluded(index: LexicalIndex) -> None:
    scores, rows = index.search("pointillist", 50)
    assert 0 < rows.size < 50
    assert np.all(scores > 0)
    assert len(set(rows.tolist())) == rows.size
    with pytest.raises(InputError, match="k must be a positive integer"):
        index.search("art", 0)


def test_score_rows_matches_search(index: LexicalIndex, texts: list[str]) -> None:
    query = texts[123][:300]
    scores, rows = index.search(query, 20)
    again = index.score_rows(query, rows)
    np.testing.assert_allclose(again, scores, rtol=1e-6)
    far = index.score_rows("zzqxvb", np.array([0, 5]))
    assert far.tolist() == [0.0, 0.0]
    with pytest.raises(InputError, match="rows must be integers"):
        index.score_rows("art", np.array([len(texts)]))


def test_cjk_exact_copy_rank_one() -> None:
    corpus = wiki_texts(200) + CJK_DOCS
    idx = LexicalIndex.build(corpus)
    for offset, doc in enumerate(CJK_DOCS):
        _, rows = idx.search(doc, 5)
        assert rows[0] == 200 + offset
    # a Japanese copy wrapped in chatty English still ranks first
    _, rows = idx.search("Sure! Here is the text you wanted: " + CJK_DOCS[2] + " Anything else?", 3)
    assert rows[0] == 202


def test_save_load_round_trip(index: LexicalIndex, texts: list[str], tmp_path: Path) -> None:
    index.save(tmp_path)
    loaded = LexicalIndex.load(tmp_path, mmap=True)
    assert loaded.num_docs == index.num_docs == len(texts)
    assert nbytes_on_disk(tmp_path) > 0
    for query in (texts[0], texts[321][:200], "impressionism Seurat", "zzqxvb"):
        s1, r1 = index.search(query, 10)
        s2, r2 = loaded.search(query, 10)
        np.testing.assert_array_equal(r1, r2)
        np.testing.assert_array_equal(s1, s2)
        assert index.max_score(query) == loaded.max_score(query)
    in_memory = LexicalIndex.load(tmp_path, mmap=False)
    np.testing.assert_array_equal(in_memory.search(texts[7], 5)[1], index.search(texts[7], 5)[1])


def test_load_rejects_incomplete_directory(index: LexicalIndex, tmp_path: Path) -> None:
    with pytest.raises(IndexFormatError, match="missing"):
        LexicalIndex.load(tmp_path)
    index.save(tmp_path)
    meta = tmp_path / "gif_lexical.json"
    meta.write_text(json.dumps({"format": "gif-lexical", "format_version": 999}))
    with pytest.raises(IndexFormatError, match="rebuild"):
        LexicalIndex.load(tmp_path)


def test_empty_and_bad_corpus() -> None:
    with pytest.raises(InputError, match="empty"):
        LexicalIndex.build([])
    with pytest.raises(InputError, match=r"texts\[1\] must be str"):
        LexicalIndex.build(["ok", 3])  # type: ignore[list-item]
    with pytest.raises(InputError, match="no text"):
        LexicalIndex.build(["", "  ...  "])


def test_long_query_is_bounded(index: LexicalIndex, texts: list[str]) -> None:
    big = " ".join(texts)[:100_000]
    assert len(big) == 100_000
    t0 = time.perf_counter()
    scores, rows = index.search(big, 10)
    index.max_score(big)
    elapsed = time.perf_counter() - t0
    assert elapsed < 2.0, f"100k-char query took {elapsed:.2f}s (bound 2s)"
    assert rows.size == 10
    assert index._query_terms(big)[0].size == MAX_QUERY_TERMS
