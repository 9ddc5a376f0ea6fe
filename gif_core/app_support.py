"""Logic behind the Streamlit provenance explorer (``app.py`` and ``pages/``).

The pages hold layout only; everything they show is computed here: which index to open, the
backend that answers queries (the engine in this process, or a `gif serve` API at a URL), text
and image uploads and their limits, the results table, the verdict, the influence chart, the span
viewer's HTML, thumbnails of image queries and their sources, the counterfactual check and evidence packages, the UMAP map of the index and its on-disk
cache, the listing and building of index directories, and reading and running evaluations.

Streamlit-specific caching (``st.cache_resource`` for the engine, ``st.cache_data`` for derived
tables) lives in the ``cached_*`` helpers at the end, so that the pure functions above them can be
tested without a running app.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import hashlib
import html
import io
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

NO_SOURCE_CAPTION = ("GIF abstains: its calibrated confidence that the top sample is the source "
                     "is below the index's threshold. These are the samples nearest to the text, "
                     "listed for inspection; none is claimed as its source, and no confident "
                     "source does not prove the text is original.")
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


def attribute_image(engine, upload: ImageUpload | None, k: int):
    """``engine.attribute_image`` on an uploaded image's bytes, serialised like
    :func:`attribute`. Raises GIFError (an :class:`~gif_core.images.ImageError` for an image
    that cannot be decoded)."""
    if upload is None:
        raise InputError("No image to trace. Upload a PNG, JPEG, GIF, WebP, BMP or TIFF file "
                         "and press Trace sources.")
    with _ATTRIBUTE_LOCK:
        return engine.attribute_image(upload.data, k=int(k))


@dataclass(frozen=True)
class Verdict:
    found: bool
    headline: str
    detail: str


def verdict(att, *, image: bool = False) -> Verdict:
    """What the page says above the table: the source found, or that GIF abstains.

    ``image``: the query was an image, so the evidence is named in image terms (perceptual-hash
    and embedding similarity) instead of shared text passages.
    """
    headline, detail = att.verdict(image=image)
    return Verdict(not att.abstained and bool(att.results), headline, detail)


TABLE_COLUMNS = ["rank", "id", "fused score", "similarity", "BM25", "verbatim coverage",
                 "influence", "channels"]


IMAGE_TABLE_COLUMNS = ["rank", "id", "fused score", "similarity", "perceptual hash",
                       "influence", "channels"]
"""For an image query: no BM25 (an image has no words) and the near-copy channel is the
perceptual-hash similarity (pHash + dHash) instead of verbatim coverage."""


def results_table(att, *, image: bool = False) -> pd.DataFrame:
    """One row per result, best first. ``influence`` is the normalised support in [-1, 1].

    ``image``: the query was an image; columns are :data:`IMAGE_TABLE_COLUMNS`.
    """
    def row(r) -> dict[str, Any]:
        near = ({"perceptual hash": round(r.verbatim, 4)} if image else
                {"BM25": round(r.bm25, 3), "verbatim coverage": round(r.verbatim, 4)})
        return {"rank": r.rank, "id": r.id, "fused score": round(r.score, 4),
                "similarity": round(r.similarity, 4), **near,
                "influence": (None if r.influence_normalised is None
                              else round(r.influence_normalised, 4)),
                "channels": ", ".join(r.channels)}

    return pd.DataFrame([row(r) for r in att.results],
                        columns=IMAGE_TABLE_COLUMNS if image else TABLE_COLUMNS)


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


def place_query(engine, umap_model, sample_rows_: np.ndarray, coords: np.ndarray,
                query: str | ImageUpload, source_ids: Sequence[str]) -> pd.DataFrame:
    """Positions of the query and its sources in the map: ``umap_model.transform`` of their
    embeddings (a source that is in the mapped sample keeps its mapped position).

    ``query`` is a text, or on an image index an uploaded image, embedded as the engine embeds
    it for a query (:meth:`~gif_core.engine.Engine.fingerprint_images`)."""
    pos_of = {int(r): i for i, r in enumerate(sample_rows_)}
    if isinstance(query, ImageUpload):
        from .engine import ImageQuery

        e_query = engine.fingerprint_images([ImageQuery.from_source(query.data).image])[0]
        hover = f"{query.name} ({query.width}×{query.height} {query.format})"
    else:
        e_query = engine.encoder.encode([query])
        hover = query[:HOVER_CHARS]
    points = [{"kind": "query", "id": "your query", "rank": 0,
               "text": hover[:HOVER_CHARS], "vec": e_query[0], "row": None}]
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


UNKNOWN_CORPUS = "unknown (built before corpus names were recorded)"
NOT_RECORDED = "not recorded"


def corpus_label(manifest: dict[str, Any]) -> str:
    """The corpus an index was built from, as recorded in its manifest (never a bare "?")."""
    corpus = manifest.get("corpus")
    return str(corpus) if corpus else UNKNOWN_CORPUS


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
        ("corpus", corpus_label(manifest)),
        ("samples", f"{n:,}"),
        ("clusters", str(counts.get("clusters", NOT_RECORDED))),
        ("encoder", f"{enc.get('name', NOT_RECORDED)} (d={enc.get('dim', NOT_RECORDED)})"),
        ("encoder weights sha256", str(enc.get("weights_sha256") or NOT_RECORDED)),
        ("FAISS factory", str(manifest.get("faiss_factory", NOT_RECORDED))),
        ("probe parameters", f"{counts['probe_params']:,}"
         if isinstance(counts.get("probe_params"), int) else NOT_RECORDED),
        ("projection dim", str(counts.get("projection_dim", NOT_RECORDED))),
        ("fingerprint dim", str(counts.get("fingerprint_dim", NOT_RECORDED))),
        ("bytes on disk", f"{size:,}" if size is not None else NOT_RECORDED),
        ("bytes / sample", f"{size / n:,.0f}" if size is not None and n else NOT_RECORDED),
        ("build time", f"{build_ms['total'] / 1000:,.1f} s" if "total" in build_ms
         else NOT_RECORDED),
        ("built", time.strftime("%Y-%m-%d %H:%M", time.localtime(created)) if created
         else NOT_RECORDED),
        ("GIF version", str(manifest.get("versions", {}).get("gif", NOT_RECORDED))),
        ("format version", str(manifest.get("format_version", NOT_RECORDED))),
    ]
    return pd.DataFrame(rows, columns=["field", "value"])


def key_value_html(rows: pd.DataFrame, css_class: str = "gif-manifest") -> str:
    """A two-column (field, value) frame as an HTML table that shows every value in full: long
    values such as 64-hex hashes and paths wrap inside their cell instead of being cut."""
    cell = "border:1px solid rgba(128,128,128,.25);padding:4px 8px;vertical-align:top"
    body = "".join(
        f'<tr><th style="{cell};text-align:left;font-weight:500;white-space:nowrap">'
        f"{html.escape(str(k))}</th>"
        f'<td style="{cell};overflow-wrap:anywhere;font-variant-numeric:tabular-nums">'
        f"{html.escape(str(v))}</td></tr>"
        for k, v in rows.itertuples(index=False, name=None))
    return (f'<table class="{css_class}" style="border-collapse:collapse;width:100%;'
            f'font-size:0.9rem">{body}</table>')


def build_times_table(manifest: dict[str, Any]) -> pd.DataFrame:
    ms = manifest.get("build_ms", {})
    return pd.DataFrame([{"stage": k, "seconds": round(v / 1000, 2)} for k, v in ms.items()],
                        columns=["stage", "seconds"])


INDEX_LIST_COLUMNS = ["index", "corpus", "samples", "encoder", "status", "loaded"]


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
                rows.append({"index": str(d), "corpus": "", "samples": None, "encoder": "",
                             "status": f"not usable: {str(exc).split('. ')[0]}",
                             "loaded": rd == cur})
                continue
            rows.append({"index": str(d), "corpus": corpus_label(m),
                         "samples": int(m.get("counts", {}).get("samples", 0)),
                         "encoder": m.get("encoder", {}).get("name", "?"), "status": "ready",
                         "loaded": rd == cur})
    return pd.DataFrame(rows, columns=INDEX_LIST_COLUMNS)


# -- query input ---------------------------------------------------------------------------

MAX_UPLOAD_BYTES = 1_000_000
"""Largest text file accepted by the Attribute page's upload (1 MB, the engine's query limit of
1,000,000 characters in ASCII). The text uploader caps itself at :data:`TEXT_UPLOAD_WIDGET_MB`
so that a larger file reaches this check and gets a message rather than a bare browser
refusal."""
TEXT_UPLOAD_WIDGET_MB = 2
UPLOAD_TYPES = ("txt", "md")


def _check_upload(name: str, data: bytes, types: Sequence[str], limit: int, type_fix: str,
                  size_fix: str) -> None:
    """Refuse an upload of the wrong type or over ``limit`` bytes, naming the fix."""
    suffix = Path(name).suffix.lower().lstrip(".")
    if suffix not in types:
        raise InputError(f"{name!r} is a .{suffix or '(no extension)'} file; {type_fix}")
    if len(data) > limit:
        raise InputError(f"{name!r} is {len(data):,} bytes; the limit is {limit:,} bytes. "
                         f"{size_fix}")


def read_upload(name: str, data: bytes) -> str:
    """The text of an uploaded model output. Raises InputError naming the problem and the fix."""
    _check_upload(name, data, UPLOAD_TYPES, MAX_UPLOAD_BYTES,
                  f"upload the model output as plain text "
                  f"({', '.join('.' + t for t in UPLOAD_TYPES)}), or paste it into the text box.",
                  "Upload the passage you want traced, not the whole document.")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{name!r} is not UTF-8 text (byte {exc.start} cannot be decoded). "
                         f"Save it as UTF-8 and upload it again.") from exc
    if not text.strip():
        raise InputError(f"{name!r} is empty. Upload a file that holds the model output.")
    return text


# -- image queries ---------------------------------------------------------------------------

MAX_IMAGE_UPLOAD_BYTES = 20_000_000
"""Largest image file accepted by the Attribute page on an image index (20 MB). Its pixels are
limited separately, to :data:`gif_core.images.MAX_PIXELS` (64 megapixels), before any is
decoded."""
IMAGE_UPLOAD_WIDGET_MB = MAX_IMAGE_UPLOAD_BYTES // (1024 * 1024) + 2
"""Streamlit's own cap for the image uploader (MiB), set above :data:`MAX_IMAGE_UPLOAD_BYTES` so
that a file slightly over the limit reaches :func:`read_image_upload` and gets its message. The
server refuses any upload over ``server.maxUploadSize`` whatever the widget says, so
``.streamlit/config.toml`` sets that to this value."""
IMAGE_UPLOAD_TYPES = ("png", "jpg", "jpeg", "gif", "webp", "bmp", "tif", "tiff")
THUMB_SIDE = 128
"""Longest side of the thumbnails in the ranked gallery (pixels)."""
COMPARE_SIDE = 320
"""Longest side of the query and source in the side-by-side comparison (pixels)."""
THUMB_QUALITY = 85


def image_upload_label() -> str:
    """The image uploader's label, stating the accepted types and both limits."""
    from .images import MAX_PIXELS

    return (f"An image ({', '.join(IMAGE_UPLOAD_TYPES)}), at most "
            f"{MAX_IMAGE_UPLOAD_BYTES:,} bytes and {MAX_PIXELS:,} pixels")


def check_image_upload(name: str, data: bytes) -> None:
    """Refuse an image upload of the wrong type (by its name) or over
    :data:`MAX_IMAGE_UPLOAD_BYTES`; the same check for the page's uploader and `gif serve`'s
    image endpoints. Raises InputError naming the fix."""
    _check_upload(name, data, IMAGE_UPLOAD_TYPES, MAX_IMAGE_UPLOAD_BYTES,
                  f"give an image ({', '.join('.' + t for t in IMAGE_UPLOAD_TYPES)}). This "
                  f"index holds images; to trace a text, send it as a text query.",
                  "Re-encode it smaller (e.g. as JPEG or at a lower resolution) and upload it "
                  "again.")


@dataclass(frozen=True)
class ImageUpload:
    """An uploaded query image that decodes: its bytes (traced as they are), their SHA-256,
    its size in pixels, and JPEG previews at most :data:`COMPARE_SIDE` (for the side-by-side
    view) and :data:`THUMB_SIDE` (for the gallery) on the longest side."""

    name: str
    data: bytes = dataclasses.field(repr=False)
    sha256: str
    width: int
    height: int
    format: str
    preview: bytes = dataclasses.field(repr=False)
    thumbnail: bytes = dataclasses.field(repr=False)


def _jpeg(image, side: int) -> bytes:
    """An RGB PIL image as JPEG bytes, shrunk to ``side`` on its longest side (never enlarged)."""
    from PIL import Image

    im = image.copy()
    im.thumbnail((side, side), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    im.convert("RGB").save(buf, format="JPEG", quality=THUMB_QUALITY)
    return buf.getvalue()


def read_image_upload(name: str, data: bytes) -> ImageUpload:
    """Check and decode an uploaded query image. Raises InputError for a wrong type or a file
    over :data:`MAX_IMAGE_UPLOAD_BYTES`, and :class:`~gif_core.images.ImageError` (with the
    decoder's message: not an image, truncated, over the pixel limit...) for one that does not
    decode."""
    from .images import decode_image

    check_image_upload(name, data)
    decoded = decode_image(data, where=name, max_side=COMPARE_SIDE)
    return ImageUpload(name=name, data=bytes(data), sha256=decoded.sha256, width=decoded.width,
                       height=decoded.height, format=decoded.format,
                       preview=_jpeg(decoded.image, COMPARE_SIDE),
                       thumbnail=_jpeg(decoded.image, THUMB_SIDE))


@dataclass(frozen=True)
class Thumbnail:
    """A source image as JPEG bytes (None when it cannot be shown) and a note for the reader:
    why it is missing, or that the file changed since it was indexed."""

    jpeg: bytes | None
    note: str = ""


def source_thumbnail(path: str | None, sha256: str | None, side: int) -> Thumbnail:
    """The indexed image at ``path`` (a result's ``meta["path"]``) as a thumbnail. A missing or
    unreadable file gives a note instead of an image; a file whose bytes no longer hash to the
    indexed ``sha256`` is shown with a note saying so."""
    from .images import ImageError, decode_image

    if not path:
        return Thumbnail(None, "no image path recorded in the index")
    try:
        decoded = decode_image(path, max_side=side)
    except ImageError as exc:
        return Thumbnail(None, f"not shown: {exc}")
    note = ("" if not sha256 or decoded.sha256 == sha256 else
            "the file changed since it was indexed (its SHA-256 differs)")
    return Thumbnail(_jpeg(decoded.image, side), note)


def _data_uri(jpeg: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


def _figure(css: str, title: str, body: str, caption: str, sample_id: str | None,
            note: str = "") -> str:
    data_id = f' data-id="{html.escape(sample_id)}"' if sample_id is not None else ""
    note_html = (f'<div class="gif-thumb-note" style="color:#b45309;font-size:0.8rem">'
                 f"{html.escape(note)}</div>") if note else ""
    return (f'<figure class="{css}"{data_id} style="margin:0;width:{THUMB_SIDE + 24}px;'
            f'border:1px solid #ddd;border-radius:6px;padding:6px;text-align:center">'
            f'<div style="font-weight:600;font-size:0.85rem;overflow-wrap:anywhere">'
            f"{html.escape(title)}</div>{body}"
            f'<figcaption style="font-size:0.78rem;color:#555;overflow-wrap:anywhere">'
            f"{html.escape(caption)}</figcaption>{note_html}</figure>")


def _img(jpeg: bytes | None, side: int, alt: str) -> str:
    if jpeg is None:
        return (f'<div style="width:{side}px;height:{side // 2}px;margin:6px auto;display:flex;'
                f'align-items:center;justify-content:center;background:#f3f3f3;color:#777;'
                f'font-size:0.8rem">no image</div>')
    return (f'<img src="{_data_uri(jpeg)}" alt="{html.escape(alt)}" '
            f'style="max-width:{side}px;max-height:{side}px;margin:6px auto;display:block">')


def _caption_of(result) -> str:
    """A result's caption (its indexed text), or "" when the image had none."""
    snippet = result.snippet or ""
    return "" if snippet == (result.meta or {}).get("path") else snippet


def image_gallery_html(att, thumbnails: Sequence[Thumbnail], *, query: ImageUpload | None = None,
                       query_text: str | None = None) -> str:
    """The query (its image, or the text traced) and each ranked source as thumbnails, in rank
    order, with id, fused score and caption. ``thumbnails[i]`` belongs to ``att.results[i]``."""
    if query is not None:
        head = _figure("gif-thumb gif-query-thumb", "Query",
                       _img(query.thumbnail, THUMB_SIDE, query.name),
                       f"{query.name}, {query.width}×{query.height}", None)
    else:
        text = query_text or ""
        text = text if len(text) <= HOVER_CHARS else text[:HOVER_CHARS] + "…"
        head = _figure("gif-thumb gif-query-thumb", "Query (text)",
                       f'<div style="margin:6px 0;font-size:0.85rem">{html.escape(text)}</div>',
                       "", None)
    cards = [head]
    for r, thumb in zip(att.results, thumbnails, strict=True):
        cards.append(_figure("gif-thumb gif-source-thumb", f"{r.rank}. {r.id}",
                             _img(thumb.jpeg, THUMB_SIDE, r.id),
                             f"fused {r.score:.3f}" + (f" · {_caption_of(r)}"
                                                       if _caption_of(r) else ""),
                             r.id, thumb.note))
    return ('<div class="gif-gallery" style="display:flex;flex-wrap:wrap;gap:10px;'
            f'align-items:flex-start">{"".join(cards)}</div>')


def image_compare_html(query: ImageUpload, result, source: Thumbnail) -> str:
    """The query image and one source side by side at :data:`COMPARE_SIDE`, with the evidence
    that links them."""
    box = ("flex:1;min-width:0;border:1px solid #ddd;border-radius:6px;padding:10px;"
           "text-align:center")
    head = "font-weight:600;margin-bottom:6px;overflow-wrap:anywhere"
    facts = (f"perceptual-hash similarity {result.verbatim:.3f} · embedding similarity "
             f"{result.similarity:.3f} · channels: {', '.join(result.channels) or 'none'}")
    same = ("identical bytes (same SHA-256)" if result.sha256 == query.sha256
            else "different bytes")
    caption = _caption_of(result)
    note = (f'<div class="gif-thumb-note" style="color:#b45309">{html.escape(source.note)}'
            f"</div>") if source.note else ""
    return (
        '<div class="gif-image-viewer" style="display:flex;gap:12px;align-items:flex-start">'
        f'<div class="gif-query" style="{box}"><div style="{head}">Query: '
        f"{html.escape(query.name)}</div>{_img(query.preview, COMPARE_SIDE, query.name)}"
        f"<div>{query.width}×{query.height} {html.escape(query.format)}</div></div>"
        f'<div class="gif-source" data-id="{html.escape(result.id)}" style="{box}">'
        f'<div style="{head}">Source: {html.escape(result.id)}</div>'
        f"{_img(source.jpeg, COMPARE_SIDE, result.id)}"
        f"<div>{html.escape(caption)}</div>{note}</div></div>"
        f'<div class="gif-image-facts" style="margin-top:6px;font-size:0.9rem">'
        f"{html.escape(facts)}; {same}.</div>")


# -- backends: in-process engine or a `gif serve` API ------------------------------------------

API_URL_ENV = "GIF_API_URL"
API_TOKEN_ENV = "GIF_API_TOKEN"
API_TIMEOUT_S = 120.0
API_CONNECT_TIMEOUT_S = 5.0


class BackendError(GIFError):
    """The `gif serve` backend cannot be reached or answered with an error."""


def _fill_dataclass(cls, data: dict[str, Any]):
    """``cls(**data)`` keeping only the fields ``cls`` knows (the server may be newer)."""
    import dataclasses

    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})


def attribution_from_dict(data: dict[str, Any]):
    """An :class:`~gif_core.engine.Attribution` from its JSON form (``to_dict`` / the API)."""
    from .engine import Attribution, Result

    results = [_fill_dataclass(Result, r) for r in data.get("results", [])]
    return _fill_dataclass(Attribution, {**data, "results": results})


class LocalBackend:
    """The index loaded in this process."""

    remote = False

    def __init__(self, engine, directory: Path):
        self.engine = engine
        self.directory = Path(directory)

    @property
    def label(self) -> str:
        return str(self.directory)

    def size(self) -> int:
        return len(self.engine)

    @property
    def modality(self) -> str:
        """"text" or "image": what the index holds."""
        return self.engine.modality

    images_supported = True
    """Image queries can be traced (on an image index)."""

    def attribute(self, text: str, k: int):
        return attribute(self.engine, text, k)

    def attribute_image(self, upload: ImageUpload | None, k: int):
        return attribute_image(self.engine, upload, k)

    def source_text(self, result) -> str:
        return source_text(self.engine, result.id)


class RemoteBackend:
    """A `gif serve` API. Every failure becomes a :class:`BackendError` with a readable
    message; the token comes from ``$GIF_API_TOKEN`` and is never shown."""

    remote = True

    def __init__(self, url: str, token: str | None = None, timeout: float = API_TIMEOUT_S):
        url = url.strip().rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise BackendError(f"backend URL {url!r} must start with http:// or https://, e.g. "
                               f"http://127.0.0.1:8765 for `gif serve INDEX`.")
        self.url = url
        self.token = token if token is not None else os.environ.get(API_TOKEN_ENV) or None
        self.timeout = timeout
        self._info: dict[str, Any] | None = None

    @property
    def label(self) -> str:
        return self.url

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        import httpx

        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        timeout = httpx.Timeout(self.timeout, connect=API_CONNECT_TIMEOUT_S)
        try:
            r = httpx.request(method, self.url + path, json=body, headers=headers,
                              timeout=timeout)
        except httpx.TimeoutException as exc:
            raise BackendError(f"the backend {self.url} did not answer {path} within "
                               f"{self.timeout:.0f} s ({type(exc).__name__}). Check that "
                               f"`gif serve` is running and not overloaded.") from exc
        except httpx.HTTPError as exc:
            raise BackendError(f"cannot reach the backend {self.url} ({exc}). Start it with "
                               f"`gif serve INDEX --port PORT`, fix the URL, or clear the field "
                               f"to run in-process.") from exc
        try:
            payload = r.json()
        except ValueError:
            payload = None
        if r.status_code != 200:
            detail = payload.get("error") if isinstance(payload, dict) else None
            if r.status_code == 401:
                raise BackendError(f"the backend {self.url} refused the request (401): set "
                                   f"{API_TOKEN_ENV} to the server's token before starting the "
                                   f"app.")
            raise BackendError(f"the backend {self.url} answered {path} with HTTP "
                               f"{r.status_code}: {detail or r.text[:200]}")
        if payload is None:
            raise BackendError(f"the backend {self.url} answered {path} with something other "
                               f"than JSON; is the URL a `gif serve` API?")
        return payload

    def info(self) -> dict[str, Any]:
        if self._info is None:
            self._info = self._request("GET", "/info")
        return self._info

    def size(self) -> int:
        return int(self.info().get("samples") or 0)

    @property
    def modality(self) -> str:
        return str(self.info().get("modality") or "text")

    @property
    def images_supported(self) -> bool:
        """The server answers /query/image (an image index served by a GIF that has it)."""
        return bool(self.info().get("image_queries"))

    def _image_body(self, upload: ImageUpload | None, k: int) -> dict[str, Any]:
        if upload is None:
            raise InputError("No image to trace. Upload a PNG, JPEG, GIF, WebP, BMP or TIFF "
                             "file and press Trace sources.")
        if not self.images_supported:
            raise BackendError(f"the backend {self.url} takes text queries only; trace images "
                               f"with the index in this process (clear the backend URL) or with "
                               f"`gif query INDEX --image FILE` on the machine that holds it.")
        return {"image_base64": base64.b64encode(upload.data).decode("ascii"),
                "name": upload.name, "k": int(k)}

    def attribute_image(self, upload: ImageUpload | None, k: int):
        data = self._request("POST", "/query/image", self._image_body(upload, k))
        return attribution_from_dict(data)

    def evidence_image(self, upload: ImageUpload | None, k: int) -> dict[str, Any]:
        data = self._request("POST", "/evidence/image", self._image_body(upload, k))
        return self._check_evidence(data)

    def attribute(self, text: str, k: int):
        if not isinstance(text, str) or not text.strip():
            raise InputError("The query is empty. Paste a model output (or click an example) "
                             "and press Trace sources.")
        data = self._request("POST", "/query", {"text": text, "k": int(k)})
        return attribution_from_dict(data)

    def evidence(self, text: str, k: int) -> dict[str, Any]:
        return self._check_evidence(self._request("POST", "/evidence",
                                                  {"text": text, "k": int(k)}))

    def _check_evidence(self, data: Any) -> dict[str, Any]:
        if not isinstance(data, dict) or not all(key in data for key in
                                                 ("query", "attribution", "index")):
            raise BackendError(f"the backend {self.url} answered /evidence without query, "
                               f"attribution and index; it is not a compatible `gif serve`.")
        return data

    def source_text(self, result) -> str:
        """The API returns each result's opening (snippet), not the whole sample."""
        return result.snippet


# -- counterfactual check ------------------------------------------------------------------

COUNTERFACTUAL_STEPS = 30
COUNTERFACTUAL_CONTROLS = 3


@dataclass(frozen=True)
class CounterfactualSummary:
    k: int
    effect: float
    control_mean: float | None
    control_std: float | None
    control_effects: list[float]
    seconds: float
    sentence: str


def counterfactual_check(engine, query: str | ImageUpload, k: int, *,
                         steps: int = COUNTERFACTUAL_STEPS,
                         controls: int = COUNTERFACTUAL_CONTROLS) -> CounterfactualSummary:
    """Retrain GIF's probe without the top-k results (and without k random samples, the
    control) and say how much the query's loss moves. ``query`` is a text or an uploaded image.
    Serialised like :func:`attribute`."""
    from .counterfactual import counterfactual

    image = query.data if isinstance(query, ImageUpload) else None
    if image is None and (not isinstance(query, str) or not query.strip()):
        raise InputError("The query is empty; trace a text before the counterfactual check.")
    k = int(min(k, len(engine) - 1))
    with _ATTRIBUTE_LOCK:
        out = counterfactual(engine, None if image is not None else query, k=k, steps=steps,
                             controls=controls, image=image)
    effect = float(out["effect"])
    mean = out["control_effect_mean"]
    std = out["control_effect_std"]
    if mean is None:
        sentence = (f"Removing these {k} samples moves the query's loss on GIF's probe by "
                    f"{effect:+.4f} (no random control was run).")
    else:
        ratio = abs(effect) / max(abs(float(mean)), 1e-9)
        sentence = (f"Removing these {k} samples moves the query's loss on GIF's probe by "
                    f"{effect:+.4f}, against {float(mean):+.4f} (± {float(std):.4f}) for "
                    f"{k} random samples ({ratio:,.1f}× the control).")
    return CounterfactualSummary(k, effect, None if mean is None else float(mean),
                                 None if std is None else float(std),
                                 [float(c) for c in out["control_effects"]],
                                 float(out["seconds"]), sentence)


COUNTERFACTUAL_CAPTION = ("Loss change of the query on GIF's probe after retraining without the "
                          "samples (warm start, same steps for every bar). A bar well above the "
                          "random controls means the attributed samples hold the probe's view "
                          "of the query; it is measured on the probe, not the generator.")


def counterfactual_figure(cf: CounterfactualSummary):
    """Bars: the effect of removing the top-k against each random-k control."""
    import plotly.graph_objects as go

    names = [f"top {cf.k} removed"] + [f"random {cf.k} #{i + 1}"
                                       for i in range(len(cf.control_effects))]
    vals = [cf.effect] + cf.control_effects
    fig = go.Figure(go.Bar(x=names, y=vals,
                           marker_color=["#2a9d8f"] + ["#adb5bd"] * len(cf.control_effects),
                           hovertemplate="%{x}<br>Δ loss %{y:+.5f}<extra></extra>"))
    fig.update_layout(title={"text": "Counterfactual: change in the query's loss",
                             "font": {"size": 14}},
                      yaxis_title="Δ loss (retrained − baseline)", height=300,
                      margin={"l": 10, "r": 10, "t": 40, "b": 40})
    return fig


# -- evidence packages ---------------------------------------------------------------------


def evidence_dir() -> Path:
    """Where the app writes evidence packages: ``evidence/`` under :func:`cache_root`."""
    return cache_root() / "evidence"


def export_evidence_zip(backend, query: str | ImageUpload | None, k: int,
                        out_dir: Path | None = None) -> Path:
    """Write an evidence package (.zip) for ``query`` (a text, or an uploaded image: the package
    then stores its bytes) and return its path.

    In-process, :func:`gif_core.evidence.export_evidence` runs the query; with a `gif serve`
    backend, the server builds ``evidence.json`` and the package is written here from it (with
    the uploaded bytes, for an image).
    """
    from . import evidence as ev

    image = query if isinstance(query, ImageUpload) else None
    if image is None and (not isinstance(query, str) or not query.strip()):
        raise InputError("The query is empty; trace a text or an image before exporting "
                         "evidence.")
    out_dir = Path(out_dir) if out_dir is not None else evidence_dir()
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    sha = image.sha256 if image is not None else ev.sha256_text(query)
    kind = "-image" if image is not None else ""
    out = out_dir / f"gif-evidence{kind}-{sha[:12]}-k{int(k)}-{stamp}.zip"
    if backend.remote:
        if image is not None:
            return ev.write_package(backend.evidence_image(image, int(k)), out, zip=True,
                                    query_image=image.data)
        return ev.write_package(backend.evidence(query, int(k)), out, zip=True)
    with _ATTRIBUTE_LOCK:
        if image is not None:
            return ev.export_evidence(backend.engine, image.data, out, k=int(k), zip=True,
                                      name=image.name)
        return ev.export_evidence(backend.engine, query, out, k=int(k), zip=True)


@dataclass(frozen=True)
class VerifyOutcome:
    ok: bool
    message: str
    differences: list[str]


def verify_package(backend, path: Path) -> VerifyOutcome:
    """Re-run an evidence package's query on the loaded index and compare (``gif verify``)."""
    from .evidence import verify_evidence

    if backend.remote:
        return VerifyOutcome(False, "Verification re-runs the query on the index itself; run "
                             f"`gif verify {Path(path).name} --index DIR` on the machine that "
                             f"holds the index served at {backend.url}.", [])
    with _ATTRIBUTE_LOCK:
        report = verify_evidence(path, engine=backend.engine)
    return VerifyOutcome(report.ok, report.summary().splitlines()[0], list(report.differences))


# -- building an index from the app -----------------------------------------------------------

BUILD_STAGES = ("encode", "labels", "probe", "fingerprint", "faiss", "lexical", "verbatim",
                "ranker")
PACKAGED_CORPORA = ("pkg:wiki", "pkg:wordnet", "pkg:fortunes")


def build_target(folder: str, current: Path, replace: bool) -> Path:
    """Check where a new index may be written. Raises InputError naming the fix.

    Refused: an empty path, the index the app has loaded (switch first), a file, a non-empty
    folder that is not an index, and an existing index unless ``replace``.
    """
    if not folder or not folder.strip():
        raise InputError("The output folder is empty. Give a folder for the new index, e.g. "
                         "indexes/my-corpus.")
    out = Path(folder.strip()).expanduser()
    if not out.is_absolute():
        out = APP_ROOT / out
    if out.exists() and out.resolve() == Path(current).resolve():
        raise InputError(f"{out} is the index this app has loaded; build into another folder "
                         f"(or open another index first).")
    if out.exists() and not out.is_dir():
        raise InputError(f"{out} is a file; give a folder for the new index.")
    if out.is_dir() and any(out.iterdir()):
        if not (out / MANIFEST).exists():
            raise InputError(f"{out} is a non-empty folder that is not a GIF index; it would be "
                             f"replaced. Choose a new or empty folder.")
        if not replace:
            raise InputError(f"{out} already holds an index. Tick 'Replace an existing index' "
                             f"to rebuild it (the old one stays usable until the new one is "
                             f"complete), or choose another folder.")
    return out


def build_index(corpus: str, out: Path, *, limit: int | None = None,
                progress=None) -> dict[str, Any]:
    """Read ``corpus`` (a file, a folder of .txt files or ``pkg:NAME``) and build an index at
    ``out`` atomically: a failure at any stage leaves ``out`` as it was.

    Args:
        progress: ``progress(stage, done, total)``, stages as in :data:`BUILD_STAGES`.

    Returns:
        The new index's manifest.
    """
    from .data import read_corpus
    from .engine import build

    corpus = (corpus or "").strip()
    if not corpus:
        raise InputError("The corpus is empty. Give a .jsonl/.csv/.parquet file, a folder of "
                         f".txt files, or one of {', '.join(PACKAGED_CORPORA)}.")
    if corpus.startswith("pkg:"):
        name = corpus
    else:
        path = Path(corpus).expanduser()
        name = str(path if path.is_absolute() else (Path.cwd() / path))
    samples = read_corpus(name, limit=limit)
    log.info("building %s from %s (%d samples)", out, name, len(samples))
    return build(samples, out, progress=progress, corpus_name=name)


# -- evaluation results ---------------------------------------------------------------------

RUNS_ENV = "GIF_RUNS_DIR"


def runs_root() -> Path:
    """Where the Evaluate page looks for and writes results: ``$GIF_RUNS_DIR``, else ``runs/``
    next to the app."""
    return Path(os.environ.get(RUNS_ENV) or APP_ROOT / "runs").expanduser()

EVAL_KINDS = ("exact", "word_drop", "typos", "prefix", "chatty", "ocr", "synonym",
              "sentence_shuffle", "rewrite", "out_of_corpus")
"""Query kinds the Evaluate page can generate (LM paraphrases need ``gif eval`` and a model)."""
RUN_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_.")


def list_eval_runs(roots: Sequence[Path]) -> list[Path]:
    """Result folders (holding ``metrics.json``) directly under the roots, newest first."""
    found: dict[Path, float] = {}
    for root in roots:
        root = Path(root)
        if not root.is_dir():
            continue
        for d in root.iterdir():
            m = d / "metrics.json"
            if d.is_dir() and not d.name.startswith(".") and m.is_file():
                found[d.resolve()] = m.stat().st_mtime
    return sorted(found, key=lambda d: -found[d])


@dataclass
class EvalRun:
    path: Path
    metrics: dict[str, Any]
    summary_md: str | None


def load_eval_run(folder: str | Path) -> EvalRun:
    """Read a `gif eval` results folder. Raises InputError when it is not one."""
    if not str(folder).strip():
        raise InputError("No results folder given. Pick one from the list or type the path of "
                         "a folder written by `gif eval --out DIR`.")
    path = Path(str(folder).strip()).expanduser()
    if not path.is_absolute():
        path = APP_ROOT / path
    if not path.is_dir():
        raise InputError(f"{path} is not a folder. Give the folder written by "
                         f"`gif eval --out DIR`.")
    mpath = path / "metrics.json"
    if not mpath.is_file():
        raise InputError(f"{path} holds no metrics.json, so it is not a `gif eval` results "
                         f"folder. Run `gif eval INDEX --generate KINDS --out {path}` or pick "
                         f"another folder.")
    try:
        metrics = json.loads(mpath.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{mpath} is not valid JSON ({exc}); run `gif eval` again.") from exc
    methods = metrics.get("methods") if isinstance(metrics, dict) else None
    if not isinstance(methods, dict) or not methods or not all(
            isinstance(s, dict) and "overall" in s and "per_kind" in s for s in methods.values()):
        raise InputError(f"{mpath} has no per-method results ('methods' with 'overall' and "
                         f"'per_kind'); it was not written by `gif eval`. Run it again.")
    summary = path / "summary.md"
    return EvalRun(path, metrics, summary.read_text(encoding="utf-8")
                   if summary.is_file() else None)


def eval_table(metrics: dict[str, Any], metric: str = "p@1") -> pd.DataFrame:
    """Methods × query kinds for one metric (P@1 by default), with overall, MRR, abstention on
    in-corpus queries and false attribution on out-of-corpus ones. Values are unrounded."""
    methods = metrics["methods"]
    kinds = sorted({k for s in methods.values() for k, b in s["per_kind"].items()
                    if metric in b})
    rows = []
    for method, s in methods.items():
        row: dict[str, Any] = {"method": method}
        for kind in kinds:
            row[kind] = s["per_kind"].get(kind, {}).get(metric)
        row["overall"] = s["overall"].get(metric)
        row["MRR"] = s["overall"].get("mrr")
        row["abstained (in corpus)"] = s["overall"].get("abstention_rate")
        row["false attribution (out of corpus)"] = s["overall"].get("false_attribution_rate")
        rows.append(row)
    return pd.DataFrame(rows)


def eval_facts(metrics: dict[str, Any]) -> dict[str, str]:
    return {"queries": f"{metrics.get('n_queries', 0):,}",
            "kinds": ", ".join(metrics.get("kinds", [])),
            "index": str(metrics.get("index", NOT_RECORDED)),
            "seconds": f"{float(metrics.get('seconds', 0)):,.1f}"}


def eval_figures(metrics: dict[str, Any]) -> dict[str, Any]:
    """The figures `gif eval` writes as HTML (P@k curves, P@1 per kind, latency by stage)."""
    from .evaluate import figures

    return figures(metrics["methods"])


def latency_histogram(folder: Path, method: str = "gif"):
    """Histogram of per-query total latency from ``rows.jsonl``, or None without timings."""
    import plotly.graph_objects as go

    rows_path = Path(folder) / "rows.jsonl"
    if not rows_path.is_file():
        return None
    totals = []
    with rows_path.open(encoding="utf-8") as fh:
        for line in fh:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            t = (row.get("timings_ms") or {}).get("total")
            if row.get("method") == method and isinstance(t, (int, float)):
                totals.append(float(t))
    if not totals:
        return None
    fig = go.Figure(go.Histogram(x=totals, nbinsx=min(40, max(5, len(totals) // 3)),
                                 marker_color="#457b9d"))
    p50 = float(np.percentile(totals, 50))
    fig.add_vline(x=p50, line_dash="dash", annotation_text=f"p50 {p50:,.0f} ms")
    fig.update_layout(title=f"{method} query latency, {len(totals)} queries",
                      xaxis_title="total ms per query", yaxis_title="queries", height=320,
                      margin={"l": 10, "r": 10, "t": 40, "b": 40})
    return fig


def run_folder(name: str, root: Path | None = None, replace: bool = False) -> Path:
    """``root/name`` for a new results folder; InputError on a bad or taken name."""
    name = (name or "").strip()
    if not name or not set(name.lower()) <= RUN_NAME_CHARS or name.startswith("."):
        raise InputError(f"run name {name!r} must be letters, digits, '-', '_' or '.', not "
                         f"starting with '.', e.g. eval-wordrop-50.")
    out = Path(root if root is not None else runs_root()) / name
    if out.exists() and not replace:
        raise InputError(f"{out} already exists; choose another name or tick 'Replace'.")
    if out.exists() and not (out / "metrics.json").exists():
        raise InputError(f"{out} exists and is not a `gif eval` results folder; choose "
                         f"another name.")
    return out


def eval_queries(engine, kinds: Sequence[str], n: int, seed: int = 0) -> list:
    """Planted queries of the chosen kinds from the index's samples (as ``gif eval
    --generate``); ``out_of_corpus`` draws held-out fortunes quotes that are not indexed."""
    from .evaluate import planted_queries

    kinds = list(kinds)
    if not kinds:
        raise InputError("No query kind chosen. Pick at least one kind to evaluate.")
    unknown = [k for k in kinds if k not in EVAL_KINDS]
    if unknown:
        raise InputError(f"unknown query kind(s) {unknown}; choose from {list(EVAL_KINDS)}.")
    return planted_queries(engine, kinds, n, seed)


def run_small_eval(engine, kinds: Sequence[str], n: int, out: Path, *, influence: bool = True,
                   progress=None) -> dict[str, Any]:
    """Generate queries and run :func:`gif_core.evaluate.run_eval` into ``out`` (atomically)."""
    from .evaluate import run_eval

    queries = eval_queries(engine, kinds, n)
    with _ATTRIBUTE_LOCK:
        return run_eval(engine, queries, out, influence=influence, progress=progress)


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
    if name == "thumb":
        return st.cache_data(show_spinner=False, max_entries=2000)(source_thumbnail)
    raise KeyError(name)


def cached_thumbnails(results: Sequence[Any], side: int = THUMB_SIDE) -> list[Thumbnail]:
    """:func:`source_thumbnail` of each result's ``meta["path"]``, cached per server (the key
    includes the indexed SHA-256, so a rebuilt index does not reuse stale notes)."""
    get = _cached("thumb")
    return [get((r.meta or {}).get("path"), r.sha256, side) for r in results]


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


def page_api_url() -> str:
    """The `gif serve` URL chosen in the sidebar (seeded from ``$GIF_API_URL``), or ""."""
    import streamlit as st

    return str(st.session_state.get("gif_api_url") or "").strip()


def page_backend():
    """The backend for the Attribute page: the `gif serve` API when a URL is set, else the
    index in this process. Shows a readable message and stops the page when neither works."""
    import streamlit as st

    url = page_api_url()
    if not url:
        return LocalBackend(page_engine(), page_index_dir())
    try:
        backend = RemoteBackend(url)
        backend.info()
    except GIFError as exc:
        st.error(str(exc))
        st.stop()
    return backend
