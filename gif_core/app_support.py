"""Logic behind the Streamlit provenance explorer (``app.py`` and ``pages/``).

The pages hold layout only; everything they show is computed here: which index to open, the
results table, the verdict, the influence chart, the span viewer's HTML, the UMAP map of the
index and its on-disk cache, and the listing of index directories.

Streamlit-specific caching (``st.cache_resource`` for the engine, ``st.cache_data`` for derived
tables) lives in the ``cached_*`` helpers at the end, so that the pure functions above them can be
tested without a running app.
"""

from __future__ import annotations

import functools
import hashlib
import html
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .errors import GIFError, IndexFormatError, InputError
from .store import MANIFEST, dir_bytes, read_manifest

log = logging.getLogger(__name__)

APP_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_INDEX = "indexes/wiki"
INDEX_ENV = "GIF_INDEX"
CACHE_ENV = "GIF_CACHE_DIR"
EXAMPLES_PATH = APP_ROOT / "assets" / "examples.json"
BUILD_HINT = "gif build pkg:wiki --out indexes/wiki"

INFLUENCE_CAPTION = ("Influence on GIF's probe — which samples shaped the probe's view of this "
                     "output; not proof of copying.")
UMAP_MAX_POINTS = 3000
UMAP_SEED = 0
UMAP_PARAMS = {"n_neighbors": 15, "min_dist": 0.1, "metric": "cosine"}
HOVER_CHARS = 80

# One colour per shared span, used in both texts so that a passage can be matched by eye.
SPAN_COLOURS = ("#ffe08a", "#a8e6cf", "#ffb3c6", "#b5d8ff", "#d9c2ff", "#ffd3a8", "#c8f0a0",
                "#f5b8ff")

_ATTRIBUTE_LOCK = threading.Lock()


# -- which index ---------------------------------------------------------------------------


def index_dir_from(argv: Sequence[str], environ: dict[str, str] | None = None) -> Path:
    """The index directory the app opens: ``--index DIR`` (``streamlit run app.py -- --index
    DIR``), else ``$GIF_INDEX``, else ``indexes/wiki`` next to the app.

    Relative paths given on the command line or in the environment are taken from the current
    directory, as a shell user would expect.
    """
    environ = os.environ if environ is None else environ
    args = list(argv)
    chosen: str | None = None
    for i, arg in enumerate(args):
        if arg == "--index" and i + 1 < len(args):
            chosen = args[i + 1]
        elif arg.startswith("--index="):
            chosen = arg.split("=", 1)[1]
    if chosen is None:
        chosen = environ.get(INDEX_ENV) or None
    if chosen is None:
        return APP_ROOT / DEFAULT_INDEX
    return Path(chosen).expanduser()


def index_problem(directory: Path) -> str | None:
    """A readable message when ``directory`` cannot be opened as an index, else None."""
    if not directory.exists():
        return (f"No GIF index at `{directory}`. Build the demo index with "
                f"`{BUILD_HINT}` (about an hour on a laptop CPU), or open another index with "
                f"`streamlit run app.py -- --index DIR` or the `{INDEX_ENV}` environment "
                f"variable.")
    try:
        read_manifest(directory)
    except GIFError as exc:
        return f"{exc} (To build the demo index: `{BUILD_HINT}`.)"
    return None


def manifest_hash(directory: Path) -> str:
    """SHA-256 of the index's ``manifest.json`` bytes: changes whenever the index is rebuilt."""
    return hashlib.sha256((Path(directory) / MANIFEST).read_bytes()).hexdigest()


# -- examples ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Example:
    label: str
    text: str
    source_id: str | None
    kind: str


def load_examples(path: Path = EXAMPLES_PATH) -> list[Example]:
    """Example queries shown as buttons on the Attribute page (empty list if the file is gone)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        log.warning("examples file %s not found; no examples shown", path)
        return []
    except json.JSONDecodeError as exc:
        log.warning("examples file %s is not valid JSON (%s); no examples shown", path, exc)
        return []
    return [Example(e["label"], e["text"], e.get("source_id"), e.get("kind", ""))
            for e in data.get("examples", [])]


# -- attribution ---------------------------------------------------------------------------


def attribute(engine, text: str, k: int):
    """``engine.attribute`` serialised across app sessions (the engine is shared by all of them
    and its lazy state is not thread-safe). Raises GIFError on bad input."""
    if not isinstance(text, str) or not text.strip():
        raise InputError("The query is empty. Paste a model output (or click an example) and "
                         "press Trace sources.")
    with _ATTRIBUTE_LOCK:
        return engine.attribute(text, k=int(k))


@dataclass(frozen=True)
class Verdict:
    found: bool
    headline: str
    detail: str


def verdict(att) -> Verdict:
    """What the page says above the table: the source found, or that GIF abstains."""
    headline, detail = att.verdict()
    return Verdict(not att.abstained and bool(att.results), headline, detail)


TABLE_COLUMNS = ["rank", "id", "fused score", "similarity", "BM25", "verbatim coverage",
                 "influence", "channels"]


def results_table(att) -> pd.DataFrame:
    """One row per result, best first. ``influence`` is the normalised support in [-1, 1]."""
    rows = [{
        "rank": r.rank,
        "id": r.id,
        "fused score": round(r.score, 4),
        "similarity": round(r.similarity, 4),
        "BM25": round(r.bm25, 3),
        "verbatim coverage": round(r.verbatim, 4),
        "influence": (None if r.influence_normalised is None
                      else round(r.influence_normalised, 4)),
        "channels": ", ".join(r.channels),
    } for r in att.results]
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)


def timings_table(att) -> pd.DataFrame:
    """Per-stage query timings in milliseconds, in the order the engine ran them."""
    return pd.DataFrame([{"stage": k, "ms": round(float(v), 1)}
                         for k, v in att.timings_ms.items()], columns=["stage", "ms"])


def influence_figure(att):
    """Bar chart of normalised influence per result (rank order), or None if not computed."""
    import plotly.graph_objects as go

    results = [r for r in att.results if r.influence_normalised is not None]
    if not results:
        return None
    ids = [f"{r.rank}. {r.id}" for r in results]
    vals = [r.influence_normalised for r in results]
    fig = go.Figure(go.Bar(
        x=vals, y=ids, orientation="h",
        marker_color=["#2a9d8f" if v >= 0 else "#e76f51" for v in vals],
        hovertemplate="%{y}<br>normalised influence %{x:.3f}<extra></extra>"))
    fig.update_layout(
        title={"text": "Influence on GIF's probe (normalised, +1 = most supportive)",
               "font": {"size": 14}},
        xaxis={"title": "normalised influence", "range": [-1.05, 1.05], "zeroline": True},
        yaxis={"autorange": "reversed"},
        height=max(220, 34 * len(results) + 90), margin={"l": 10, "r": 10, "t": 40, "b": 40})
    return fig


# -- span highlighting -----------------------------------------------------------------------


def _intervals(spans: Sequence[dict[str, Any]], side: str, length: int
               ) -> list[tuple[int, int, int]]:
    """(start, end, span number) on one side, clipped to the text, sorted, overlaps trimmed."""
    out = []
    for i, s in enumerate(spans):
        a = max(0, min(length, int(s[f"{side}_start"])))
        b = max(0, min(length, int(s[f"{side}_end"])))
        if b > a:
            out.append((a, b, i))
    out.sort()
    trimmed: list[tuple[int, int, int]] = []
    last_end = 0
    for a, b, i in out:
        a = max(a, last_end)
        if b > a:
            trimmed.append((a, b, i))
            last_end = b
    return trimmed


def highlight_html(text: str, spans: Sequence[dict[str, Any]], side: str) -> str:
    """``text`` HTML-escaped with the spans on ``side`` ("query" or "source") wrapped in
    ``<mark>``; span i has the same colour on both sides. Newlines become ``<br>``."""
    if side not in ("query", "source"):
        raise ValueError(f"side must be 'query' or 'source', got {side!r}")

    def esc(part: str) -> str:
        return html.escape(part).replace("\n", "<br>")

    pieces, pos = [], 0
    for a, b, i in _intervals(spans, side, len(text)):
        pieces.append(esc(text[pos:a]))
        colour = SPAN_COLOURS[i % len(SPAN_COLOURS)]
        pieces.append(f'<mark class="gif-span" data-span="{i + 1}" title="shared span {i + 1}" '
                      f'style="background:{colour};padding:0 1px;border-radius:2px">'
                      f"{esc(text[a:b])}</mark>")
        pos = b
    pieces.append(esc(text[pos:]))
    return "".join(pieces)


def side_by_side_html(query: str, source: str, spans: Sequence[dict[str, Any]],
                      source_title: str) -> str:
    """Two columns, query and source, with their shared spans highlighted in matching colours."""
    box = ("flex:1;min-width:0;border:1px solid #ddd;border-radius:6px;padding:10px;"
           "white-space:normal;overflow-wrap:anywhere;line-height:1.5;font-size:0.92rem")
    head = "font-weight:600;margin-bottom:6px"
    return (
        '<div class="gif-viewer" style="display:flex;gap:12px;align-items:flex-start">'
        f'<div class="gif-query" style="{box}"><div style="{head}">Query</div>'
        f'{highlight_html(query, spans, "query")}</div>'
        f'<div class="gif-source" style="{box}"><div style="{head}">Source: '
        f"{html.escape(source_title)}</div>"
        f'{highlight_html(source, spans, "source")}</div></div>')


def span_summary(query: str, spans: Sequence[dict[str, Any]]) -> str:
    """One line: how many spans and how much of the query they cover."""
    if not spans:
        return "No verbatim passage of 20+ characters is shared with this sample."
    covered = sum(b - a for a, b, _ in _intervals(spans, "query", len(query)))
    return (f"{len(spans)} shared span{'s' if len(spans) != 1 else ''} covering {covered:,} of "
            f"{len(query):,} query characters ({covered / max(1, len(query)):.0%}).")


def source_text(engine, sample_id: str) -> str:
    row = engine.samples.row_of(sample_id)
    if row is None:
        raise IndexFormatError(f"sample {sample_id!r} is not in the loaded index; it may have "
                               f"been rebuilt. Trace the text again.")
    return engine.samples.text(row)


# -- UMAP map of the index -----------------------------------------------------------------


def cache_root() -> Path:
    """``$GIF_CACHE_DIR``, else ``$XDG_CACHE_HOME/gif``, else ``~/.cache/gif``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "gif"


def umap_cache_path(directory: Path) -> Path:
    return cache_root() / "umap" / f"{manifest_hash(directory)}.npz"


def sample_rows(n: int, max_points: int = UMAP_MAX_POINTS, seed: int = UMAP_SEED) -> np.ndarray:
    """Sorted rows of a seeded sample of at most ``max_points`` of ``n``."""
    if n <= max_points:
        return np.arange(n, dtype=np.int64)
    return np.sort(np.random.default_rng(seed).choice(n, max_points, replace=False))


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _umap_settings(n: int, max_points: int, seed: int) -> np.ndarray:
    """What the cached coordinates depend on besides the manifest, for a staleness check."""
    key = json.dumps({"n": n, "max_points": max_points, "seed": seed, **UMAP_PARAMS},
                     sort_keys=True)
    return np.frombuffer(hashlib.sha256(key.encode()).digest(), dtype=np.uint8)


def fit_umap(embeddings: np.ndarray, rows: np.ndarray, seed: int = UMAP_SEED):
    """Fit UMAP on the given rows of the (N, d) embeddings; returns the fitted model."""
    import umap

    x = _unit(embeddings[rows])
    n_neighbors = int(min(UMAP_PARAMS["n_neighbors"], max(2, len(rows) - 1)))
    model = umap.UMAP(n_neighbors=n_neighbors, min_dist=UMAP_PARAMS["min_dist"],
                      metric=UMAP_PARAMS["metric"], random_state=seed, n_components=2, n_jobs=1,
                      init="spectral" if len(rows) > n_neighbors + 2 else "random")
    t0 = time.perf_counter()
    model.fit(x)
    log.info("UMAP fitted on %d points in %.1fs", len(rows), time.perf_counter() - t0)
    return model


def read_umap_cache(path: Path, settings: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(rows, coords) from a cache file written by :func:`write_umap_cache`, or None when it
    is missing, damaged or was made with other settings."""
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if not np.array_equal(z["settings"], settings):
                return None
            return z["rows"].astype(np.int64), z["coords"].astype(np.float32)
    except (OSError, ValueError, KeyError) as exc:
        log.warning("ignoring damaged UMAP cache %s (%s)", path, exc)
        return None


def write_umap_cache(path: Path, rows: np.ndarray, coords: np.ndarray,
                     settings: np.ndarray) -> None:
    """Write atomically: a temporary sibling, then a rename. Failure to write only logs."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex}.tmp.npz")
        np.savez(tmp, rows=rows.astype(np.int64), coords=coords.astype(np.float32),
                 settings=settings)
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("could not write UMAP cache %s (%s)", path, exc)


@dataclass
class UmapMap:
    rows: np.ndarray
    coords: np.ndarray
    model: Any | None
    """The fitted UMAP model, or None when the coordinates came from the disk cache."""
    from_cache: bool


def umap_map(directory: Path, embeddings: np.ndarray, *, need_model: bool,
             max_points: int = UMAP_MAX_POINTS, seed: int = UMAP_SEED) -> UmapMap:
    """The 2-D map of a seeded sample of the index.

    Coordinates come from the disk cache when present and no model is needed; otherwise UMAP is
    fitted (seeded, so a refit reproduces the map) and the cache refreshed. The cache keeps
    coordinates only (no pickles), so placing a query needs one fit per server process.
    """
    n = len(embeddings)
    rows = sample_rows(n, max_points, seed)
    settings = _umap_settings(n, max_points, seed)
    path = umap_cache_path(directory)
    if not need_model:
        cached = read_umap_cache(path, settings)
        if cached is not None and np.array_equal(cached[0], rows):
            return UmapMap(cached[0], cached[1], None, True)
    model = fit_umap(embeddings, rows, seed)
    coords = np.asarray(model.embedding_, dtype=np.float32)
    write_umap_cache(path, rows, coords, settings)
    return UmapMap(rows, coords, model, False)


def place_query(engine, umap_model, sample_rows_: np.ndarray, coords: np.ndarray, text: str,
                source_ids: Sequence[str]) -> pd.DataFrame:
    """Positions of the query and its sources in the map: ``umap_model.transform`` of their
    embeddings (a source that is in the mapped sample keeps its mapped position)."""
    pos_of = {int(r): i for i, r in enumerate(sample_rows_)}
    e_query = engine.encoder.encode([text])
    points = [{"kind": "query", "id": "your query", "rank": 0,
               "text": text[:HOVER_CHARS], "vec": e_query[0], "row": None}]
    for rank, sid in enumerate(source_ids, 1):
        row = engine.samples.row_of(sid)
        if row is None:
            continue
        points.append({"kind": "source", "id": sid, "rank": rank,
                       "text": engine.samples.text(row)[:HOVER_CHARS],
                       "vec": np.asarray(engine.embeddings[row], dtype=np.float32), "row": row})
    need = [p for p in points if p["row"] is None or p["row"] not in pos_of]
    if need:
        xy = umap_model.transform(_unit(np.stack([p["vec"] for p in need])))
        for p, (x, y) in zip(need, xy, strict=True):
            p["x"], p["y"], p["placed"] = float(x), float(y), "transform"
    for p in points:
        if "x" not in p:
            x, y = coords[pos_of[p["row"]]]
            p["x"], p["y"], p["placed"] = float(x), float(y), "mapped"
    return pd.DataFrame([{k: v for k, v in p.items() if k != "vec"} for p in points])


def map_frame(engine, rows: np.ndarray, coords: np.ndarray) -> pd.DataFrame:
    """One row per mapped sample: id, pseudo-label, first characters, coordinates."""
    labels = np.asarray(engine.labels[rows])
    records = [engine.samples.record(int(r)) for r in rows]
    return pd.DataFrame({
        "row": rows, "x": coords[:, 0], "y": coords[:, 1], "label": labels.astype(int),
        "id": [rec["id"] for rec in records],
        "text": [_hover_text(rec["text"]) for rec in records]})


def _hover_text(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= HOVER_CHARS else text[:HOVER_CHARS] + "…"


def clusters_figure(frame: pd.DataFrame, placed: pd.DataFrame | None = None):
    """Scatter of the map coloured by pseudo-label, with the query and its sources on top."""
    import plotly.graph_objects as go

    fig = go.Figure()
    fig.add_trace(go.Scattergl(
        x=frame["x"], y=frame["y"], mode="markers", name="index samples",
        marker={"size": 5, "color": frame["label"], "colorscale": "Turbo", "opacity": 0.7,
                "showscale": False},
        customdata=np.stack([frame["id"].map(html.escape), frame["label"],
                             frame["text"].map(html.escape)], axis=1),
        hovertemplate=("<b>%{customdata[0]}</b><br>cluster %{customdata[1]}<br>"
                       "%{customdata[2]}<extra></extra>")))
    if placed is not None and len(placed):
        src = placed[placed["kind"] == "source"]
        if len(src):
            fig.add_trace(go.Scatter(
                x=src["x"], y=src["y"], mode="markers+text", name="top sources",
                text=[str(r) for r in src["rank"]], textposition="top center",
                marker={"size": 12, "symbol": "diamond", "color": "white",
                        "line": {"width": 2, "color": "black"}},
                customdata=np.stack([src["id"].map(html.escape), src["rank"],
                                     src["placed"]], axis=1),
                hovertemplate=("<b>%{customdata[1]}. %{customdata[0]}</b>"
                               "<br>(%{customdata[2]})<extra></extra>")))
        q = placed[placed["kind"] == "query"]
        fig.add_trace(go.Scatter(
            x=q["x"], y=q["y"], mode="markers", name="your query",
            marker={"size": 18, "symbol": "star", "color": "#d62828",
                    "line": {"width": 1, "color": "black"}},
            customdata=q["text"].map(html.escape),
            hovertemplate="<b>your query</b><br>%{customdata}<extra></extra>"))
    fig.update_layout(height=620, margin={"l": 10, "r": 10, "t": 30, "b": 10},
                      legend={"orientation": "h", "y": 1.04},
                      xaxis={"showticklabels": False, "title": None},
                      yaxis={"showticklabels": False, "title": None})
    return fig


# -- index listing -------------------------------------------------------------------------


def manifest_summary(manifest: dict[str, Any], directory: Path | None = None) -> pd.DataFrame:
    """Key facts of a manifest as (field, value) rows of strings."""
    counts = manifest.get("counts", {})
    n = int(counts.get("samples", 0))
    size = manifest.get("bytes_on_disk")
    if size is None and directory is not None:
        size = dir_bytes(directory)
    build_ms = manifest.get("build_ms", {})
    enc = manifest.get("encoder", {})
    created = manifest.get("created_unix")
    rows = [
        ("directory", str(directory) if directory is not None else ""),
        ("corpus", manifest.get("corpus") or "?"),
        ("samples", f"{n:,}"),
        ("clusters", f"{counts.get('clusters', '?')}"),
        ("encoder", f"{enc.get('name', '?')} (d={enc.get('dim', '?')})"),
        ("encoder weights sha256", str(enc.get("weights_sha256", "?"))[:16] + "…"),
        ("FAISS factory", str(manifest.get("faiss_factory", "?"))),
        ("probe parameters", f"{counts.get('probe_params', '?'):,}"
         if isinstance(counts.get("probe_params"), int) else "?"),
        ("projection dim", f"{counts.get('projection_dim', '?')}"),
        ("fingerprint dim", f"{counts.get('fingerprint_dim', '?')}"),
        ("bytes on disk", f"{size:,}" if size is not None else "?"),
        ("bytes / sample", f"{size / n:,.0f}" if size is not None and n else "?"),
        ("build time", f"{build_ms['total'] / 1000:,.1f} s" if "total" in build_ms else "?"),
        ("built", time.strftime("%Y-%m-%d %H:%M", time.localtime(created)) if created else "?"),
        ("GIF version", str(manifest.get("versions", {}).get("gif", "?"))),
        ("format version", str(manifest.get("format_version", "?"))),
    ]
    return pd.DataFrame(rows, columns=["field", "value"])


def build_times_table(manifest: dict[str, Any]) -> pd.DataFrame:
    ms = manifest.get("build_ms", {})
    return pd.DataFrame([{"stage": k, "seconds": round(v / 1000, 2)} for k, v in ms.items()],
                        columns=["stage", "seconds"])


def list_indexes(roots: Sequence[Path], current: Path | None = None) -> pd.DataFrame:
    """Index directories directly under each root (hidden and in-progress folders skipped)."""
    seen: set[Path] = set()
    rows = []
    cur = current.resolve() if current is not None else None
    for root in roots:
        root = Path(root)
        if not root.is_dir():
            continue
        for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if not any((d / f).exists() for f in (MANIFEST, "manifest.partial.json",
                                                  "samples.jsonl")):
                continue  # not an index folder
            rd = d.resolve()
            if rd in seen:
                continue
            seen.add(rd)
            try:
                m = read_manifest(d)
            except GIFError as exc:
                rows.append({"index": str(d), "samples": None, "encoder": "",
                             "status": f"not usable: {str(exc).split('. ')[0]}",
                             "loaded": rd == cur})
                continue
            rows.append({"index": str(d), "samples": int(m.get("counts", {}).get("samples", 0)),
                         "encoder": m.get("encoder", {}).get("name", "?"), "status": "ready",
                         "loaded": rd == cur})
    return pd.DataFrame(rows, columns=["index", "samples", "encoder", "status", "loaded"])


# -- Streamlit caching -------------------------------------------------------------------------


def _load_engine(directory: str, manifest_key: str):
    from .engine import Engine

    del manifest_key  # part of the cache key only: a rebuilt index is loaded afresh
    return Engine.load(directory)


def _fit_map(directory: str, manifest_key: str, _engine) -> UmapMap:
    return umap_map(Path(directory), _engine.embeddings, need_model=True)


def _map_frame_cached(directory: str, manifest_key: str, rows_bytes: bytes,
                      coords_bytes: bytes, _engine) -> pd.DataFrame:
    rows = np.frombuffer(rows_bytes, dtype=np.int64)
    coords = np.frombuffer(coords_bytes, dtype=np.float32).reshape(-1, 2)
    return map_frame(_engine, rows, coords)


@functools.cache
def _cached(name: str):
    """Streamlit-cached versions of the loaders above, made on first use."""
    import streamlit as st

    if name == "engine":
        return st.cache_resource(show_spinner="Loading the index…", max_entries=4)(_load_engine)
    if name == "umap":
        return st.cache_resource(
            show_spinner="Fitting UMAP on the index sample (once per server)…",
            max_entries=2)(_fit_map)
    if name == "frame":
        return st.cache_data(show_spinner=False, max_entries=4)(_map_frame_cached)
    raise KeyError(name)


def cached_engine(directory: Path):
    """The engine for ``directory``, loaded once per server (re-loaded if the index changes)."""
    directory = Path(directory).resolve()
    return _cached("engine")(str(directory), manifest_hash(directory))


def cached_umap(engine, directory: Path, need_model: bool) -> UmapMap:
    """The index map. Without a query to place, coordinates come from the disk cache when it
    holds them; otherwise UMAP is fitted once per server (and the disk cache refreshed)."""
    directory = Path(directory).resolve()
    if not need_model:
        n = len(engine.embeddings)
        rows = sample_rows(n)
        cached = read_umap_cache(umap_cache_path(directory),
                                 _umap_settings(n, UMAP_MAX_POINTS, UMAP_SEED))
        if cached is not None and np.array_equal(cached[0], rows):
            return UmapMap(cached[0], cached[1], None, True)
    return _cached("umap")(str(directory), manifest_hash(directory), engine)


def cached_map_frame(engine, directory: Path, rows: np.ndarray, coords: np.ndarray
                     ) -> pd.DataFrame:
    directory = Path(directory).resolve()
    return _cached("frame")(str(directory), manifest_hash(directory),
                            np.ascontiguousarray(rows, dtype=np.int64).tobytes(),
                            np.ascontiguousarray(coords, dtype=np.float32).tobytes(), engine)


def page_index_dir() -> Path:
    """The index directory chosen by ``app.py`` for this session."""
    import streamlit as st

    return Path(st.session_state.get("gif_index_dir") or index_dir_from([]))


def page_engine():
    """The loaded engine for a page; shows a readable message and stops the page if the index
    cannot be opened."""
    import streamlit as st

    directory = page_index_dir()
    problem = index_problem(directory)
    if problem:
        st.error(problem)
        st.stop()
    try:
        return cached_engine(directory)
    except GIFError as exc:
        st.error(str(exc))
        st.stop()
