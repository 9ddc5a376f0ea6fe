"""Corpus readers: formats, ids, hashes and every documented bad input."""

from __future__ import annotations

import hashlib
import json

import pytest

from gif_core.data import read_corpus, wiki_samples
from gif_core.errors import CorpusError


def test_jsonl_keeps_ids_hashes_and_metadata(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_text('{"id": "a", "text": "alpha text", "lang": "en"}\n\n'
                 '{"id": 7, "text": "beta"}\n', encoding="utf-8")
    s = read_corpus(p)
    assert [x.id for x in s] == ["a", "7"]
    assert s[0].sha256 == hashlib.sha256(b"alpha text").hexdigest()
    assert s[0].meta == {"lang": "en"}


def test_derived_ids_are_stable_and_unique(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_text("\n".join(json.dumps({"text": t}) for t in ["x y", "z", "x y"]))
    ids = [s.id for s in read_corpus(p)]
    digest = hashlib.sha256(b"x y").hexdigest()[:16]
    assert ids[0] == digest and ids[2] == f"{digest}~1" and len(set(ids)) == 3


def test_csv_parquet_and_folder(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "c.csv").write_text("id,text,topic\nr1,first row,t\nr2,second row,u\n")
    assert [s.text for s in read_corpus(tmp_path / "c.csv")] == ["first row", "second row"]
    pq.write_table(pa.table({"id": ["p1", "p2"], "text": ["one", "two"]}), tmp_path / "c.parquet")
    assert [s.id for s in read_corpus(tmp_path / "c.parquet")] == ["p1", "p2"]
    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("doc a")
    (folder / "sub" / "b.txt").write_text("doc b")
    assert [s.id for s in read_corpus(folder)] == ["a.txt", "sub/b.txt"]


def test_duplicate_ids(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_text('{"id": "a", "text": "x"}\n{"id": "a", "text": "y"}\n')
    with pytest.raises(CorpusError, match="duplicate id 'a'.*c.jsonl:1"):
        read_corpus(p)


def test_non_utf8_bytes(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_bytes(b'{"id": "a", "text": "caf\xe9"}\n')
    with pytest.raises(CorpusError, match="offset .* not valid UTF-8.*iconv"):
        read_corpus(p)


def test_unknown_format_and_missing_file(tmp_path):
    (tmp_path / "c.xlsx").write_bytes(b"PK")
    with pytest.raises(CorpusError, match="unknown format '.xlsx'"):
        read_corpus(tmp_path / "c.xlsx")
    with pytest.raises(CorpusError, match="does not exist"):
        read_corpus(tmp_path / "missing.jsonl")
    with pytest.raises(CorpusError, match="unknown packaged corpus"):
        read_corpus("pkg:nothing")


def test_missing_text_field_and_bad_json(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_text('{"id": "a", "body": "x"}\n')
    with pytest.raises(CorpusError, match="field 'text' is missing.*--text-field"):
        read_corpus(p)
    p.write_text('{"id": "a", "text": "x"\n')
    with pytest.raises(CorpusError, match="c.jsonl:1: not valid JSON"):
        read_corpus(p)


def test_packaged_corpora():
    wiki = wiki_samples()
    assert len(wiki) == 10033
    assert len({s.id for s in wiki}) == 10033
    from gif_core.data import fortunes_samples, wordnet_samples

    wn = wordnet_samples()
    assert len(wn) > 100_000 and wn[0].text.startswith("entity: ")
    fortunes = fortunes_samples()
    assert len(fortunes) > 5000 and len({s.id for s in fortunes}) == len(fortunes)


def test_limit_must_be_positive(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_text('{"id": "a", "text": "x"}\n')
    with pytest.raises(CorpusError, match="limit must be >= 1"):
        read_corpus(p, limit=-5)
