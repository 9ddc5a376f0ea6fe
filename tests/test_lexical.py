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


# ---------------------------------------------------------------- streaming (bounded-memory) build


def _glosses(n: int) -> list[str]:
    from gif_core.data import wordnet_samples

    return [s.text for s in wordnet_samples()[:n]]


@pytest.fixture(scope="module")
def mixed_texts(texts: list[str]) -> list[str]:
    """Wikipedia summaries, WordNet glosses and CJK sentences: long and short documents."""
    return texts + _glosses(3000) + CJK_DOCS


def test_streamed_build_equals_one_shot(mixed_texts: list[str], tmp_path: Path) -> None:
    one = LexicalIndex.build(mixed_texts)
    # tiny runs and merge blocks: about ten sorted runs on disk, merged 300 postings at a time;
    # the lists of common words ("the", "of") are longer and are copied run by run
    streamed = LexicalIndex.build_to(tmp_path, (t for t in mixed_texts), run_postings=5_000,
                                     merge_postings=300)
    assert streamed._indptr[streamed._vocab["the"] + 1] - streamed._indptr[
        streamed._vocab["the"]] > 300
    assert isinstance(streamed._data, np.memmap)
    assert streamed.num_docs == one.num_docs == len(mixed_texts)
    assert streamed._meta == one._meta
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # scratch removed
    # same posting lists with the same float32 scores, term by term (term ids differ)
    assert set(streamed._vocab) == set(one._vocab)
    for term in ("the", "kubrick", "odyssey", "长城", "entity"):
        a, b = one._vocab[term], streamed._vocab[term]
        ra = slice(one._indptr[a], one._indptr[a + 1])
        rb = slice(streamed._indptr[b], streamed._indptr[b + 1])
        np.testing.assert_array_equal(one._indices[ra], streamed._indices[rb])
        np.testing.assert_array_equal(one._data[ra], streamed._data[rb])
    assert streamed._data.shape == one._data.shape
    queries = ["Kubrick Clarke Sentinel screenplay", mixed_texts[17][:300],
               mixed_texts[600], "a small domesticated carnivorous mammal", CJK_DOCS[1]]
    for q in queries:
        s1, r1 = one.search(q, 100)
        s2, r2 = streamed.search(q, 100)
        np.testing.assert_array_equal(r1, r2)
        np.testing.assert_allclose(s2, s1, rtol=0, atol=1e-5)
        assert streamed.max_score(q) == pytest.approx(one.max_score(q), abs=1e-5)
    # a known query: row 1 ("2001: A Space Odyssey") first, with the one-shot build's score
    scores, rows = streamed.search("Kubrick Clarke Sentinel screenplay", 3)
    assert rows[0] == 1 and mixed_texts[1].startswith("2001: A Space Odyssey")
    assert float(scores[0]) == pytest.approx(float(one.search(
        "Kubrick Clarke Sentinel screenplay", 1)[0][0]), abs=1e-5)
    reopened = LexicalIndex.load(tmp_path)
    np.testing.assert_array_equal(reopened.search(queries[1], 10)[1], one.search(queries[1], 10)[1])


def test_streamed_build_failure_keeps_previous_index(texts: list[str], tmp_path: Path) -> None:
    before = LexicalIndex.build_to(tmp_path, texts[:100], run_postings=2_000)
    expected = before.search("Kubrick Clarke Sentinel screenplay", 5)
    files = sorted(p.name for p in tmp_path.iterdir())

    def broken():  # a corpus reader that fails half-way, after runs were written
        yield from texts[100:400]
        yield 42

    with pytest.raises(InputError, match=r"texts\[300\] must be str"):
        LexicalIndex.build_to(tmp_path, broken(), run_postings=2_000)

    def interrupted():
        yield from texts[100:400]
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        LexicalIndex.build_to(tmp_path, interrupted(), run_postings=2_000)
    assert sorted(p.name for p in tmp_path.iterdir()) == files  # no scratch left behind
    after = LexicalIndex.load(tmp_path)
    assert after.num_docs == 100
    got = after.search("Kubrick Clarke Sentinel screenplay", 5)
    np.testing.assert_array_equal(got[1], expected[1])
    np.testing.assert_array_equal(got[0], expected[0])
    # a scratch folder left by a killed build is cleared by the next build
    (tmp_path / ".building-lexical").mkdir()
    (tmp_path / ".building-lexical" / "run0.keys").write_bytes(b"junk")
    assert LexicalIndex.build_to(tmp_path, texts[:50]).num_docs == 50
    assert not (tmp_path / ".building-lexical").exists()


def test_streamed_build_bad_input(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="empty"):
        LexicalIndex.build_to(tmp_path, iter([]))
    with pytest.raises(InputError, match="iterable of str"):
        LexicalIndex.build_to(tmp_path, "one long string")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="no text"):
        LexicalIndex.build_to(tmp_path, ["", "  ...  "])
    with pytest.raises(InputError, match="not a directory"):
        LexicalIndex.build_to(tmp_path / "missing", ["text"])
    assert list(tmp_path.iterdir()) == []
