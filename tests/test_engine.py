"""End-to-end: build an index on real text, trace exact and perturbed copies to their source."""

from __future__ import annotations

import json

import faiss
import numpy as np
import pytest

from gif_core.config import BuildConfig, IndexConfig
from gif_core.engine import Engine, build, make_faiss_index, make_fingerprints
from gif_core.errors import IndexFormatError, InputError
from gif_core.queries import perturb
from gif_core.store import read_manifest


def test_exact_copy_ranks_its_source_first(engine, wiki_slice):
    for s in wiki_slice[::60]:
        att = engine.attribute(s.text, k=5)
        assert att.results[0].id == s.id
        assert att.results[0].sha256 == s.sha256
        assert not att.abstained
        assert att.results[0].verbatim == pytest.approx(1.0)
        assert att.results[0].spans[0]["source_start"] == 0
        assert att.verdict()[0].startswith(f"Source found: {s.id} ")


def test_perturbed_copies_rank_their_source_first(engine, wiki_slice):
    hits = 0
    chosen = wiki_slice[5::15]
    for i, s in enumerate(chosen):
        query = perturb(s.text, "word_drop", seed=100 + i)  # ~15% of words dropped + typos
        assert query != s.text
        att = engine.attribute(query, k=3, influence=False, spans=False)
        hits += att.results[0].id == s.id
    assert hits == len(chosen)


def test_results_carry_every_field(engine, wiki_slice):
    att = engine.attribute(wiki_slice[7].text[:200], k=4)
    d = json.loads(json.dumps(att.to_dict()))
    assert [r["rank"] for r in d["results"]] == [1, 2, 3, 4]
    for key in ("id", "score", "similarity", "bm25", "verbatim", "influence", "sha256",
                "snippet", "channels", "spans"):
        assert key in d["results"][0]
    scores = [r["score"] for r in d["results"]]
    assert scores == sorted(scores, reverse=True)
    for stage in ("encode", "ann", "lexical", "verbatim", "influence", "total"):
        assert stage in d["timings_ms"]
    assert 0.0 <= d["confidence"] <= 1.0


def test_out_of_corpus_text_abstains(engine):
    att = engine.attribute("My grandmother's lasagne recipe needs three kinds of cheese and a "
                           "whole afternoon of patience before it is ready for the oven.")
    assert att.abstained
    assert att.confidence < 0.5
    assert att.verdict()[0].startswith("No confident source")


def test_same_query_same_results(engine, wiki_slice):
    q = perturb(wiki_slice[11].text, "typos", seed=3)
    a, b = engine.attribute(q, k=5), engine.attribute(q, k=5)
    assert [r.id for r in a.results] == [r.id for r in b.results]
    assert [r.score for r in a.results] == [r.score for r in b.results]
    assert [r.influence for r in a.results] == pytest.approx([r.influence for r in b.results])


def test_query_fingerprint_matches_build(engine, wiki_slice):
    # a corpus text fingerprinted at query time equals what the build stored (float16 store)
    e, lab, c = engine.fingerprint([wiki_slice[20].text])
    assert np.abs(e[0] - engine.embeddings[20].astype(np.float32)).max() < 2e-3
    assert lab[0] == engine.labels[20]
    stored = engine.grad_proj[20].astype(np.float32)
    assert np.abs(c[0] - stored).max() < 2e-3 * max(1.0, np.abs(stored).max())


def test_hnsw_agrees_with_exact_search(engine):
    xb = make_fingerprints(np.asarray(engine.embeddings, np.float32),
                           np.asarray(engine.grad_proj, np.float32), alpha=0.3)
    exact = faiss.IndexFlatIP(xb.shape[1])
    exact.add(xb)
    hnsw = make_faiss_index(xb, "HNSW32", ef_search=128)
    xq = xb[::10] + 0.01 * np.random.default_rng(0).standard_normal(xb[::10].shape, np.float32)
    _, i_exact = exact.search(xq, 10)
    _, i_hnsw = hnsw.search(xq, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(i_exact, i_hnsw, strict=True)])
    assert recall >= 0.98


def test_manifest_records_build(small_index, wiki_slice):
    m = read_manifest(small_index)
    assert m["counts"]["samples"] == len(wiki_slice)
    assert m["encoder"]["weights_sha256"] and len(m["encoder"]["weights_sha256"]) == 64
    assert m["faiss_factory"] == "Flat"
    assert m["probe"]["grad_norm"] < 0.01
    assert set(m["build_ms"]) >= {"encode", "labels", "probe", "gradients", "faiss", "total"}
    assert m["ranker"]["fitted"] is True


@pytest.mark.parametrize("text", ["", "   \n\t ", None])
def test_empty_query_is_refused(engine, text):
    with pytest.raises(InputError, match="empty|string"):
        engine.attribute(text)


def test_missing_index_is_refused(tmp_path):
    with pytest.raises(IndexFormatError, match="does not exist"):
        Engine.load(tmp_path / "nope")


def test_partly_written_index_is_refused(tmp_path, small_index):
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "embeddings.npy").write_bytes((small_index / "embeddings.npy").read_bytes())
    with pytest.raises(IndexFormatError, match="manifest.json"):
        Engine.load(partial)


def test_incompatible_version_is_refused(tmp_path, small_index):
    import shutil

    copy = tmp_path / "old"
    shutil.copytree(small_index, copy)
    m = json.loads((copy / "manifest.json").read_text())
    m["format_version"] = 999
    (copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(IndexFormatError, match="Rebuild"):
        Engine.load(copy)


def test_failed_build_leaves_previous_index_usable(tmp_path, wiki_slice, encoder, monkeypatch):
    out = tmp_path / "idx"
    build(wiki_slice[:60], out, BuildConfig(ranker_queries=0), encoder=encoder)
    before = (out / "manifest.json").read_bytes()

    import gif_core.engine as eng

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(eng.LexicalIndex, "build_to", boom)  # the channel build it calls
    with pytest.raises(RuntimeError, match="disk full"):
        build(wiki_slice[60:120], out, BuildConfig(ranker_queries=0), encoder=encoder)
    assert (out / "manifest.json").read_bytes() == before
    # the unfinished build is kept, hidden, for a resume; it is not an index
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left[1] == "idx" and left[0].startswith(".idx.building-")
    with pytest.raises(IndexFormatError):
        Engine(tmp_path / left[0])
    monkeypatch.undo()
    e = Engine.load(out, encoder=encoder)
    assert e.attribute(wiki_slice[3].text, k=1).results[0].id == wiki_slice[3].id


def test_fewer_samples_than_clusters(tmp_path, wiki_slice, encoder):
    from gif_core.config import LabelConfig

    with pytest.raises(InputError, match="fewer than the 16 clusters"):
        build(wiki_slice[:10], tmp_path / "x", BuildConfig(labels=LabelConfig(num_clusters=16)),
              encoder=encoder)
    assert not (tmp_path / "x").exists()


def test_bad_factory_string(tmp_path, wiki_slice, encoder):
    from gif_core.errors import ConfigError

    with pytest.raises(ConfigError, match="factory"):
        build(wiki_slice[:40], tmp_path / "x",
              BuildConfig(index=IndexConfig(factory="NotAnIndex"), ranker_queries=0),
              encoder=encoder)


def test_lone_surrogate_text_is_refused(engine):
    with pytest.raises(InputError, match="not valid Unicode"):
        engine.attribute("caf\udce9 au lait")


def test_damaged_index_files_are_refused(tmp_path, small_index):
    import shutil

    for name, damage in [("embeddings.npy", "truncate"), ("samples.jsonl", "delete"),
                         ("fingerprints.faiss", "truncate")]:
        copy = tmp_path / name
        shutil.copytree(small_index, copy)
        target = copy / name
        if damage == "delete":
            target.unlink()
        else:
            target.write_bytes(target.read_bytes()[:100])
        with pytest.raises(IndexFormatError, match=f"damaged: {name}"):
            Engine.load(copy)


def test_cli_queries_file_reports_bad_lines_and_continues(small_index, wiki_slice, tmp_path,
                                                          capsys):
    from gif_core.cli import main

    qf = tmp_path / "q.jsonl"
    qf.write_text(json.dumps({"qid": "good1", "text": wiki_slice[3].text}) + "\n"
                  + "{broken\n" + "[1, 2]\n"
                  + json.dumps({"qid": "empty", "text": "  "}) + "\n"
                  + json.dumps({"qid": "good2", "text": wiki_slice[9].text}) + "\n")
    assert main(["query", str(small_index), "--queries", str(qf), "--json", "-k", "1",
                 "--no-influence"]) == 1
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [d["qid"] for d in lines] == ["good1", 2, 3, "empty", "good2"]
    assert lines[0]["results"][0]["id"] == wiki_slice[3].id
    assert lines[4]["results"][0]["id"] == wiki_slice[9].id
    assert "not valid JSON" in lines[1]["error"] and "JSON object" in lines[2]["error"]


def test_cli_text_file(small_index, wiki_slice, tmp_path, capsys):
    from gif_core.cli import main

    f = tmp_path / "out.txt"
    f.write_text(wiki_slice[12].text)
    assert main(["query", str(small_index), "--text-file", str(f), "--json", "-k", "2",
                 "--no-influence"]) == 0
    assert json.loads(capsys.readouterr().out)["results"][0]["id"] == wiki_slice[12].id
    assert main(["query", str(small_index), "--text-file", str(f), "-k", "0"]) == 2


def test_refit_ranker_in_place(tmp_path, small_index, wiki_slice, encoder):
    import shutil

    from gif_core.engine import refit_ranker

    copy = tmp_path / "idx"
    shutil.copytree(small_index, copy)
    manifest = refit_ranker(copy, 90)
    assert manifest["index_version"] == 2
    assert manifest["ranker"]["fitted"] and manifest["ranker"]["planted_queries"] >= 50
    e = Engine.load(copy, encoder=encoder)
    att = e.attribute(wiki_slice[33].text, k=1, influence=False)
    assert att.results[0].id == wiki_slice[33].id and att.index_version == 2


def test_stored_ekfac_factors_match_a_fresh_computation(engine):
    import torch
    from safetensors.torch import load_file

    from gif_core.errors import SolverError
    from gif_core.influence import EKFAC

    state = load_file(str(engine.directory / "ekfac.safetensors"))
    stored = EKFAC.from_state_dict(engine.probe, state)
    e = torch.from_numpy(np.asarray(engine.embeddings, dtype=np.float32))
    fresh = EKFAC(engine.probe, e, engine.config.probe.weight_decay,
                  engine.config.influence.damping)
    v = torch.randn(engine.probe.num_params, generator=torch.Generator().manual_seed(0))
    # the build used the float32 embeddings, the index stores float16: agree to well under 1%
    a, b = stored.solve(v)[0], fresh.solve(v)[0]
    assert float((a - b).norm() / b.norm()) < 1e-2
    state["layer1.q_a"] = state["layer1.q_a"][:-1]
    with pytest.raises(SolverError, match="rebuild the index"):
        EKFAC.from_state_dict(engine.probe, state)
