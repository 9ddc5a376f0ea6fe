"""Scale: index choice, compressed search against exact search, streaming and resumable builds,
adds and takedowns, the Ray engine."""

from __future__ import annotations

import json
import shutil
import socket

import faiss
import numpy as np
import pytest

from gif_core import ann
from gif_core.config import BuildConfig, IndexConfig
from gif_core.engine import Engine, build
from gif_core.errors import ConfigError, InputError
from gif_core.update import add_samples, remove_samples

GB = 1 << 30


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def clustered():
    """20,000 unit vectors in 40 clusters (d = 64) and 50 queries near stored rows.

    The spread inside a cluster lives in a 16-dim subspace: like text embeddings, the data have a
    lower intrinsic dimension than d (isotropic noise would make every neighbour a near tie)."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((40, 64))
    basis = rng.standard_normal((16, 64)) / 4
    xb = _unit(centres[rng.integers(0, 40, 20_000)]
               + 0.6 * rng.standard_normal((20_000, 16)) @ basis)
    xq = _unit(xb[rng.choice(20_000, 50, replace=False)] + 0.05 * rng.standard_normal((50, 64)))
    return xb, xq


def test_auto_factory_follows_size_and_memory():
    assert ann.choose_factory(5_000, 384, memory=16 * GB) == "Flat"
    assert ann.choose_factory(100_000, 384, memory=16 * GB) == "HNSW32"
    # HNSW would need ~180 MB, more than a quarter of 400 MB
    assert ann.choose_factory(100_000, 384, memory=400 << 20) == "IVF256,PQ48np"
    assert ann.choose_factory(1_000_000, 384, memory=16 * GB) == "IVF1024,PQ48np"
    assert ann.choose_factory(10_000_000, 384, memory=16 * GB) == "IVF4096_HNSW32,PQ48np"
    assert ann.choose_factory(10_000_000, 512, memory=16 * GB).endswith("PQ64np")
    assert IndexConfig(factory="HNSW16").resolve(10_000_000) == "HNSW16"
    assert ann.auto_nprobe(4096) == 512 and ann.auto_nprobe(64) == 16


def _recall(found, truth):
    return np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth, strict=True)])


def test_ivfpq_reranked_matches_exact_search(tmp_path, clustered):
    xb, xq = clustered
    store = xb.astype(np.float16)
    # the reference is exact search over the same stored (float16) fingerprints
    truth_d, truth = faiss.knn(xq, store.astype(np.float32), 10,
                               metric=faiss.METRIC_INNER_PRODUCT)
    index = ann.new_index(64, "IVF64,PQ8np")
    ann.train(index, xb[ann.train_sample_rows(len(xb), size=10_000)])
    ann.add_chunks(index, (xb[a:a + 4096] for a in range(0, len(xb), 4096)))
    path = str(tmp_path / "ivf.faiss")
    faiss.write_index(index, path)
    mapped = ann.read_index(path, mmap=True)
    read = []

    def exact_rows(rows):
        read.append(len(rows))
        return store[rows].astype(np.float32)

    # every list is scanned, so what is left of the error is the PQ codes'
    plain = ann.FingerprintSearcher(mapped, None, ann.SearchParams(nprobe=64))
    reranked = ann.FingerprintSearcher(mapped, exact_rows, ann.SearchParams(nprobe=64))
    assert plain.rerank == 1 and reranked.rerank == ann.RERANK
    _, i_plain = plain.search(xq, 10)
    d_rr, i_rr = reranked.search(xq, 10)
    # re-ranking lifts recall above the PQ codes' own, and its scores are exact (float16 store)
    assert _recall(i_rr, truth) >= 0.97
    assert _recall(i_rr, truth) > _recall(i_plain, truth)
    assert np.abs(d_rr[:, 0] - truth_d[:, 0]).max() < 2e-3
    # only the candidates' rows were read: rerank × k per query, not the store
    assert max(read) <= ann.RERANK * 10
    # memory-mapped and in-RAM copies give the same answers
    in_ram = ann.FingerprintSearcher(faiss.read_index(path), exact_rows,
                                     ann.SearchParams(nprobe=64))
    assert np.array_equal(in_ram.search(xq, 10)[1], i_rr)
    assert ann.ram_bytes(mapped) < 0.05 * (tmp_path / "ivf.faiss").stat().st_size


@pytest.mark.parametrize("factory", ["Flat", "HNSW32", "IVF64,PQ8np"])
def test_removed_rows_never_come_back(clustered, factory):
    xb, xq = clustered
    xb = xb[:5000]
    index = ann.new_index(64, factory)
    ann.train(index, xb)
    index.add(xb)
    _, before = ann.FingerprintSearcher(index, None, ann.SearchParams(nprobe=16)).search(xq, 10)
    removed = np.unique(before[:, :3])
    searcher = ann.FingerprintSearcher(index, lambda r: xb[r], ann.SearchParams(nprobe=16),
                                       removed=removed)
    _, after = searcher.search(xq, 10)
    assert not np.isin(after, removed).any()
    assert (after >= 0).all()  # still k results


def test_streaming_build_resumes_without_redoing_chunks(tmp_path, wiki_slice, encoder):
    samples = wiki_slice[:60]
    config = BuildConfig(ranker_queries=0, chunk_size=20)
    calls = []

    class Flaky:
        """The real encoder, counting chunks; fails on the chunk number ``fail_at``."""

        def __init__(self, fail_at):
            self.fail_at = fail_at

        def __getattr__(self, name):
            return getattr(encoder, name)

        def encode(self, texts, **kw):
            calls.append(len(texts))
            if len(calls) == self.fail_at:
                raise RuntimeError("power cut")
            return encoder.encode(texts, **kw)

    out = tmp_path / "idx"
    with pytest.raises(RuntimeError, match="power cut"):
        build(samples, out, config, encoder=Flaky(fail_at=3))
    assert not out.exists()
    assert calls == [20, 20, 20]
    calls.clear()
    manifest = build(samples, out, config, encoder=Flaky(fail_at=0))
    assert calls == [20]  # only the chunk that failed is encoded again
    assert [p.name for p in tmp_path.iterdir()] == ["idx"]
    assert manifest["build"] == {"engine": "local", "chunks": 3}

    reference = tmp_path / "ref"
    build(samples, reference, config, encoder=encoder)
    for name in ("embeddings.npy", "grad_proj.npy", "labels.npy"):
        assert np.array_equal(np.load(out / name), np.load(reference / name)), name
    engine = Engine(out, encoder=encoder)
    assert engine.attribute(samples[41].text, k=1).results[0].id == samples[41].id


def test_ivf_with_too_few_samples_is_a_config_error(tmp_path, wiki_slice, encoder):
    with pytest.raises(ConfigError, match="more training samples"):
        build(wiki_slice[:60], tmp_path / "x",
              BuildConfig(index=IndexConfig(factory="IVF8,PQ48"), ranker_queries=0),
              encoder=encoder)
    assert list(tmp_path.iterdir()) == []  # a config error leaves nothing to resume


def test_build_refuses_when_disk_is_too_small(tmp_path, wiki_slice, encoder, monkeypatch):
    import gif_core.pipeline as pipeline

    monkeypatch.setattr(pipeline.shutil, "disk_usage",
                        lambda p: shutil._ntuple_diskusage(10 * GB, 10 * GB - 1000, 1000))
    with pytest.raises(InputError, match=r"GB of disk .* only 0.00 GB are free"):
        build(wiki_slice[:40], tmp_path / "x", BuildConfig(ranker_queries=0), encoder=encoder)
    assert list(tmp_path.iterdir()) == []


def test_compressed_index_end_to_end(tmp_path, wiki_slice, encoder):
    out = tmp_path / "ivf"
    # 4-bit codes: an 8-bit PQ needs 256 training rows per sub-quantiser, more than 200 samples
    cfg = BuildConfig(index=IndexConfig(factory="IVF8,PQ48x4np"), ranker_queries=0)
    manifest = build(wiki_slice[:200], out, cfg, encoder=encoder)
    assert manifest["ann"]["compressed"] and manifest["ann"]["rerank"] == 60
    for channel in ("ann", "stores", "samples", "lexical", "verbatim"):
        assert manifest["bytes_per_sample"][channel]["disk"] > 0
    per = manifest["bytes_per_sample"]
    # 24-byte codes + 8-byte ids per sample (+ codebooks), against 2 × (384 + 128) + 4 stored
    assert per["ann"]["disk"] < per["stores"]["disk"] / 4
    assert per["stores"]["disk"] == pytest.approx(2 * (384 + 128) + 4, abs=3)  # + .npy headers
    engine = Engine(out, encoder=encoder)
    assert engine.ann.rerank == 60
    for s in wiki_slice[:200:50]:
        att = engine.attribute(s.text, k=3, influence=False)
        assert att.results[0].id == s.id
        assert att.results[0].similarity == pytest.approx(1.0, abs=2e-3)


@pytest.fixture()
def small_built(tmp_path, wiki_slice, encoder):
    out = tmp_path / "idx"
    build(wiki_slice[:60], out, BuildConfig(ranker_queries=0), encoder=encoder,
          corpus_name="wiki[:60]")
    return out


def test_add_then_remove(small_built, wiki_slice, encoder):
    added = wiki_slice[60:80]
    ekfac_before = (small_built / "ekfac.safetensors").read_bytes()
    manifest = add_samples(small_built, added, encoder=encoder, corpus_name="wiki[60:80]")
    assert manifest["index_version"] == 2 and manifest["counts"]["samples"] == 80
    # the influence factors follow the grown corpus
    assert (small_built / "ekfac.safetensors").read_bytes() != ekfac_before
    assert manifest["changes"][-1]["action"] == "add"
    assert manifest["changes"][-1]["rows"] == [60, 80]
    engine = Engine(small_built, encoder=encoder)
    assert len(engine) == 80 and engine.lexical.num_docs == 80
    att = engine.attribute(added[5].text, k=3, influence=False)
    assert att.results[0].id == added[5].id and att.index_version == 2
    assert "ann" in att.results[0].channels and "verbatim" in att.results[0].channels

    gone = [added[5].id, wiki_slice[3].id]
    manifest = remove_samples(small_built, gone)
    assert manifest["index_version"] == 3 and manifest["counts"]["removed"] == 2
    assert manifest["changes"][-1] == {**manifest["changes"][-1], "action": "remove",
                                       "ids": gone, "rows": [3, 65]}
    engine = Engine(small_built, encoder=encoder)
    for sid, text in ((added[5].id, added[5].text), (wiki_slice[3].id, wiki_slice[3].text)):
        att = engine.attribute(text, k=10, influence=True)
        assert sid not in [r.id for r in att.results]
        assert len(att.results) == 10 and att.index_version == 3
    assert engine.samples.record(3)["text"] == ""  # the text itself is deleted
    assert all(sid not in gone for sid, _ in engine.samples.id_text_pairs())
    # an evaluation cannot be scored against a taken-down source
    from gif_core.evaluate import check_queries
    from gif_core.queries import Query

    with pytest.raises(InputError, match="removed from the index"):
        check_queries(engine, [Query("q1", added[5].text, [added[5].id], "exact")])


def test_add_rebuilds_sparse_channels_as_one_shot(small_built, wiki_slice, encoder):
    """`gif add` streams all texts of the grown corpus through the bounded-memory channel builds;
    the result equals a one-shot in-memory build over the same 80 texts."""
    from gif_core.lexical import LexicalIndex
    from gif_core.verbatim import VerbatimIndex

    add_samples(small_built, wiki_slice[60:80], encoder=encoder)
    texts = [s.text for s in wiki_slice[:80]]
    lex, ref = LexicalIndex.load(small_built / "lexical"), LexicalIndex.build(texts)
    assert lex.num_docs == 80
    for q in (texts[70], "Kubrick Clarke Sentinel screenplay", texts[3][:200]):
        s1, r1 = ref.search(q, 20)
        s2, r2 = lex.search(q, 20)
        np.testing.assert_array_equal(r2, r1)
        np.testing.assert_allclose(s2, s1, rtol=0, atol=1e-5)
    assert lex.search(texts[70], 1)[1][0] == 70
    verb, vref = VerbatimIndex.load(small_built / "verbatim"), VerbatimIndex.build(texts)
    np.testing.assert_array_equal(verb._keys, vref._keys)
    np.testing.assert_array_equal(verb._docs, vref._docs)
    assert not [p for p in (small_built / "lexical").iterdir() if p.name.startswith(".")]


def test_remove_unknown_or_repeated_ids_changes_nothing(small_built, wiki_slice):
    before = (small_built / "manifest.json").read_bytes()
    with pytest.raises(InputError, match=r"1 of the 2 id\(s\) are not in .*'no-such-id'"):
        remove_samples(small_built, [wiki_slice[0].id, "no-such-id"])
    assert (small_built / "manifest.json").read_bytes() == before
    assert not (small_built / "removed.npy").exists()
    remove_samples(small_built, [wiki_slice[0].id])
    with pytest.raises(InputError, match="already removed"):
        remove_samples(small_built, [wiki_slice[0].id])
    with pytest.raises(InputError, match="already in the index"):
        add_samples(small_built, wiki_slice[:2])
    assert sorted(p.name for p in small_built.parent.iterdir()) == ["idx"]


def test_cli_remove_reports_unknown_ids(small_built, capsys):
    from gif_core.cli import main

    assert main(["remove", str(small_built), "--ids", "nope"]) == 2
    assert "not in" in capsys.readouterr().err
    assert main(["info", str(small_built)]) == 0
    assert "verbatim:" in capsys.readouterr().out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ray_address_that_does_not_answer(tmp_path):
    pytest.importorskip("ray")
    from gif_core.config import EncoderConfig
    from gif_core.distributed import ray_executor

    with pytest.raises(ConfigError, match="does not answer"):
        ray_executor(EncoderConfig(), address=f"127.0.0.1:{_free_port()}")
    with pytest.raises(ConfigError, match="HOST:PORT"):
        ray_executor(EncoderConfig(), address="no-port-here")


@pytest.mark.slow
def test_ray_build_equals_local_build(tmp_path, wiki_slice, encoder):
    pytest.importorskip("ray")
    from gif_core.distributed import ray_executor

    samples = wiki_slice[:120]
    config = BuildConfig(ranker_queries=0, chunk_size=25)
    local = build(samples, tmp_path / "local", config, encoder=encoder)
    executor = ray_executor(config.encoder, workers=2)
    try:
        remote = build(samples, tmp_path / "ray", config, executor=executor)
    finally:
        executor.close()
    assert remote["build"] == {"engine": "ray", "chunks": 5}
    assert remote["encoder"]["weights_sha256"] == local["encoder"]["weights_sha256"]
    a, b = tmp_path / "local", tmp_path / "ray"
    e_a, e_b = np.load(a / "embeddings.npy"), np.load(b / "embeddings.npy")
    assert np.abs(e_a.astype(np.float32) - e_b.astype(np.float32)).max() < 2e-3
    assert np.array_equal(np.load(a / "labels.npy"), np.load(b / "labels.npy"))
    c_a, c_b = (np.load(x / "grad_proj.npy").astype(np.float32) for x in (a, b))
    assert np.abs(c_a - c_b).max() < 2e-3 * max(1.0, np.abs(c_a).max())
    ea, eb = Engine(a, encoder=encoder), Engine(b, encoder=encoder)
    for s in samples[::10]:
        ra = ea.attribute(s.text, k=5, influence=False)
        rb = eb.attribute(s.text, k=5, influence=False)
        assert ra.results[0].id == rb.results[0].id == s.id
        assert [r.id for r in ra.results] == [r.id for r in rb.results]
    assert json.loads((b / "manifest.json").read_text())["counts"]["samples"] == 120
