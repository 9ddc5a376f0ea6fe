"""The fused ranking against each channel alone, and the bad inputs of the evidence channels."""

from __future__ import annotations

import time

import pytest
from corpora import CJK_DOCS

from gif_core.config import BuildConfig
from gif_core.data import Sample, content_hash
from gif_core.engine import Engine, build
from gif_core.evaluate import compare_methods, summarize_methods
from gif_core.queries import generate_queries

KINDS = ["word_drop", "typos", "ocr", "chatty", "prefix"]


@pytest.fixture(scope="module")
def method_summary(engine, wiki_slice):
    samples = [(s.id, s.text) for s in wiki_slice]
    queries = generate_queries(samples, KINDS, 12, seed=4242)
    results = compare_methods(engine, queries, influence=False)
    return summarize_methods(results)


@pytest.mark.parametrize("kind", KINDS)
def test_fusion_at_least_every_channel(method_summary, kind):
    fused = method_summary["gif"]["per_kind"][kind]["p@1"]
    for channel in ("bm25", "verbatim", "embedding_knn"):
        assert fused >= method_summary[channel]["per_kind"][kind]["p@1"], channel
    assert fused >= 0.9


def test_gradient_only_is_measured_not_assumed(method_summary):
    # the gradient-only fingerprint finds some sources, but fewer than the static embedding
    g = method_summary["gradient_only"]["overall"]["p@1"]
    e = method_summary["embedding_knn"]["overall"]["p@1"]
    assert 0.2 < g <= e


def test_long_query_bounded_time_and_spans_found(engine, wiki_slice):
    from gif_core.data import wiki_samples

    inside = wiki_slice[42].text
    # filler from articles that are not in the index
    filler = " ".join(s.text for s in wiki_samples()[5000:5060])
    query = (filler * 4)[:50_000] + " " + inside + " " + (filler * 4)[:50_000]
    assert len(query) > 100_000
    t0 = time.perf_counter()
    att = engine.attribute(query, k=10, influence=False)
    assert time.perf_counter() - t0 < 20
    hit = next(r for r in att.results if r.id == wiki_slice[42].id)
    longest = max(hit.spans, key=lambda s: s["query_end"] - s["query_start"])
    assert query[longest["query_start"]:longest["query_end"]] == inside[
        longest["source_start"]:longest["source_end"]]
    assert longest["query_end"] - longest["query_start"] > 0.8 * len(inside)


def test_no_shared_tokens_still_gets_semantic_results(engine):
    att = engine.attribute("zxqv blorptastic flimflam quuxified", k=5, influence=False)
    assert len(att.results) == 5
    assert all(r.bm25 == 0 for r in att.results)
    assert all("ann" in r.channels for r in att.results)


@pytest.fixture(scope="module")
def mixed_script_engine(tmp_path_factory, wiki_slice, encoder):
    cjk = [*CJK_DOCS, "京都には千年以上の歴史を持つ寺院や神社が数多く残り、毎年多くの観光客が訪れる。"]
    samples = list(wiki_slice[:80]) + [Sample(f"cjk-{i}", t, content_hash(t))
                                       for i, t in enumerate(cjk)]
    out = tmp_path_factory.mktemp("mixed") / "idx"
    build(samples, out, BuildConfig(ranker_queries=80), encoder=encoder)
    return Engine.load(out, encoder=encoder), cjk


def test_cjk_exact_copy_ranks_first(mixed_script_engine):
    engine, cjk = mixed_script_engine
    for i, text in enumerate(cjk):
        att = engine.attribute(text, k=3)
        assert att.results[0].id == f"cjk-{i}"
        assert att.results[0].verbatim == pytest.approx(1.0)
    # a CJK sentence quoted inside English chatter
    att = engine.attribute(f"Sure! The passage reads: {cjk[1]} Hope that helps.", k=3)
    assert att.results[0].id == "cjk-1"
    span = att.results[0].spans[0]
    assert cjk[1][span["source_start"]:span["source_end"]] in cjk[1]
    assert span["source_end"] - span["source_start"] >= len(cjk[1]) - 2


def test_calibration_features_and_older_rankers():
    import numpy as np

    from gif_core.fusion import FEATURES, Ranker, calibration_features

    feats = np.zeros((3, len(FEATURES)), dtype=np.float32)
    col = {name: FEATURES.index(name) for name in FEATURES}
    feats[:, col["cos_e"]] = [0.60, 0.95, 0.70]
    feats[:, col["bm25_abs"]] = [0.2, 0.5, 0.1]
    feats[:, col["verbatim"]] = [0.0, 0.25, 0.0]
    scores = np.array([1.0, 4.0, 2.5])
    cf = calibration_features(scores, feats)
    # top = row 1: score 4, margin 1.5 over row 2, its own evidence, cos_e 0.95 - 0.70
    np.testing.assert_allclose(cf, [4.0, 1.5, 0.95, 0.5, 0.25, 0.25], atol=1e-6)
    # a ranker saved before the semantic margin existed keeps its five coefficients
    old = Ranker.from_dict({"weights": [0.0] * len(FEATURES), "features": list(FEATURES),
                            "calib": [1.0, 1.0, 0.0, 0.0, 0.0, -5.0], "threshold": 0.5})
    assert old.confidence(scores, feats) == pytest.approx(1 / (1 + np.exp(-(4.0 + 1.5 - 5.0))))


def test_semantic_calibration_keeps_to_its_null_budget():
    import numpy as np

    from gif_core.fusion import SEMANTIC_NULL_BUDGET, _fit_semantic

    rng = np.random.default_rng(0)
    n_pos, n_null = 400, 400
    x = np.zeros((n_pos + n_null, 6))
    x[:n_pos, 2] = rng.uniform(0.75, 1.0, n_pos)  # sources: close in meaning
    x[:n_pos, 5] = rng.uniform(0.05, 0.5, n_pos)  # and far ahead of the runner-up
    x[n_pos:, 2] = rng.uniform(0.3, 0.85, n_null)  # nulls: related at best
    x[n_pos:, 5] = rng.uniform(-0.05, 0.2, n_null)
    y = np.r_[np.ones(n_pos), np.zeros(n_null)]
    coef, report = _fit_semantic(x, y)
    z = x[:, [2, 5]] @ np.asarray(coef[:-1]) + coef[-1]
    assert (z[y == 0] >= 0).mean() <= SEMANTIC_NULL_BUDGET
    assert report["null_attributed"] == round(float((z[y == 0] >= 0).mean()), 4)
    # a clearly separated source is still attributed on meaning alone
    assert np.asarray([0.97, 0.45]) @ np.asarray(coef[:-1]) + coef[-1] > 0
