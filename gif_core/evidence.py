"""Evidence packages: a self-contained, re-checkable record of one attribution.

``export_evidence(engine, query, out)`` writes a folder (or a ``.zip``). For a text query
(``query`` a ``str``) it holds::

    evidence.json   the query and its SHA-256, the attribution (schema-checked), the index path,
                    its manifest and the manifest's SHA-256, the encoder-weights and probe-weights
                    hashes, library versions, a UTC timestamp, the GIF version and the command
                    that reproduces the result
    report.html     the same for a human reader, all text escaped, no scripts
    query.txt       the query text, byte for byte
    query.jsonl     one line {"qid": "evidence", "text": ...} for the reproduce command:
                    ``gif query INDEX --queries query.jsonl -k K --json``

For an image query (``query`` the image's bytes or a :class:`~pathlib.Path` to its file; image
index only) it holds::

    evidence.json   as above; ``query`` records the SHA-256 of the image's bytes as given (the
                    hash the attribution's ``query_sha256`` repeats), its size in bytes and
                    pixels, its format, the name it was uploaded under and the file holding it
    report.html     as above, with JPEG thumbnails of the query and of the top sources embedded
                    as ``data:`` URIs (the thumbnails are kept in evidence.json under
                    ``thumbnails``, so that a package written from a `gif serve` answer has them)
    query.EXT       the query image, byte for byte (EXT from its format: png, jpg, gif, ...),
                    for the reproduce command: ``gif query INDEX --image query.EXT -k K --json``

Image packages have ``evidence_version`` 2 (an older GIF refuses them by version rather than as
damaged); text packages keep version 1, and both are read.

``verify_evidence(path)`` re-runs the query on the index named in ``evidence.json`` (or on a given
engine / ``index``) and compares. It refuses (:class:`IndexFormatError`) when the index's
manifest no longer has the recorded SHA-256: a changed index cannot confirm or refute anything.
Otherwise it returns a :class:`VerifyReport` listing every difference. An image package is re-run
on its stored ``query.EXT``; a stored image whose bytes no longer hash to the recorded SHA-256
is a difference named as such, and a missing one is an :class:`InputError`.

Tolerances (the re-run must match within them):

* ranking: the same sample ids, rows and SHA-256s at every rank; same channels, spans, snippet
  and meta; same ``abstained``;
* fused ``score``, ``similarity``, ``gradient_similarity``, ``bm25``, ``verbatim`` and
  ``confidence``: ``|a - b| <= 1e-4 + 1e-4·|b|`` (float32 arithmetic; the same index on another
  machine or BLAS may differ in the last bits, never more);
* ``influence_normalised``: ``|a - b| <= 0.05``; raw ``influence``: within 10 % of the recorded
  value, or within 5 % of the largest recorded ``|influence|``. Influence comes from a seeded
  stochastic solver (LiSSA mini-batches): it repeats exactly on one machine, but its long
  series amplifies rounding differences elsewhere, so it is compared loosely.

Besides the re-run, ``evidence.json`` records a SHA-256 of its own attribution (canonical JSON):
an edit after export shows up as a digest difference even when it is within the tolerances.
This digest detects edits; it is not a signature, so it does not prove who made the file.
The report's thumbnails are previews for a reader: `gif verify` does not check them.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import logging
import math
import os
import platform
import re
import shlex
import uuid
import zipfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from . import __version__
from .errors import IndexFormatError, InputError
from .store import MANIFEST, atomic_directory, read_manifest

log = logging.getLogger(__name__)

EVIDENCE_VERSION = 1
"""Version of text-query packages (unchanged since the first release)."""
IMAGE_EVIDENCE_VERSION = 2
"""Version of image-query packages: version 1 plus ``query.image`` and ``thumbnails``."""
READ_VERSIONS = (EVIDENCE_VERSION, IMAGE_EVIDENCE_VERSION)
EVIDENCE_FILE = "evidence.json"
REPORT_FILE = "report.html"
QUERY_TXT = "query.txt"
QUERY_JSONL = "query.jsonl"
QUERY_IMAGE_STEM = "query"
IMAGE_SUFFIXES = {"PNG": "png", "JPEG": "jpg", "MPO": "jpg", "GIF": "gif", "WEBP": "webp",
                  "BMP": "bmp", "DIB": "bmp", "TIFF": "tif", "SVG": "svg"}
"""File extension of the stored query image, by the format its bytes decode as."""
QUERY_IMAGE_NAME = re.compile(r"query\.[a-z0-9]{1,5}")
"""What ``query.image.file`` may be: a plain name in the package, never a path."""
THUMB_SIDE = 160
"""Longest side of the report's thumbnails (pixels)."""
THUMB_RESULTS = 20
"""Results that get a thumbnail in the report (the top ones)."""
THUMB_QUALITY = 85
QID = "evidence"
MAX_EVIDENCE_BYTES = 256 * 1024 * 1024
"""Largest evidence.json read back (a guard against zip bombs)."""

SCORE_ATOL = 1e-4
SCORE_RTOL = 1e-4
INFLUENCE_NORMALISED_ATOL = 0.05
INFLUENCE_RTOL = 0.10
INFLUENCE_SCALE_ATOL = 0.05
TOLERANCES = {
    "score, similarity, gradient_similarity, bm25, verbatim, confidence":
        f"|a-b| <= {SCORE_ATOL:g} + {SCORE_RTOL:g}*|b|",
    "influence_normalised": f"|a-b| <= {INFLUENCE_NORMALISED_ATOL:g}",
    "influence": f"within {INFLUENCE_RTOL:.0%} of the recorded value, or within "
                 f"{INFLUENCE_SCALE_ATOL:.0%} of the largest recorded |influence|",
    "ids, rows, sha256, rank, channels, spans, snippet, meta, abstained": "exact",
}
TIGHT_FIELDS = ("score", "similarity", "gradient_similarity", "bm25", "verbatim")
EXACT_FIELDS = ("id", "row", "sha256", "rank", "channels", "spans", "snippet", "meta")


# -- schema ------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def attribution_schema() -> dict[str, Any]:
    """The JSON schema of ``Attribution.to_dict()`` (``schemas/attribution.schema.json``)."""
    path = resources.files("gif_core") / "schemas" / "attribution.schema.json"
    return json.loads(path.read_text(encoding="utf-8"))


@lru_cache(maxsize=1)
def _validator():
    from jsonschema import Draft202012Validator

    return Draft202012Validator(attribution_schema())


def schema_errors(obj: Any) -> list[str]:
    """Every way ``obj`` breaks the attribution schema, as ``path: message`` lines."""
    out = []
    for err in sorted(_validator().iter_errors(obj), key=lambda e: list(e.absolute_path)):
        where = _path(err.absolute_path) or "(attribution)"
        out.append(f"{where}: {err.message}")
    return out


def validate_attribution(obj: Any) -> None:
    """Raise :class:`IndexFormatError` when ``obj`` does not follow the attribution schema."""
    errors = schema_errors(obj)
    if errors:
        raise IndexFormatError(
            "the attribution does not follow gif_core/schemas/attribution.schema.json: "
            + "; ".join(errors[:5]) + ". The index or engine is from an incompatible GIF "
            "version: rebuild the index with this version.")


def _path(parts) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


# -- hashing -----------------------------------------------------------------------------------


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def canonical_sha256(obj: Any) -> str:
    """SHA-256 of ``obj`` as canonical JSON (sorted keys, no spaces, UTF-8)."""
    data = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False)
    return sha256_text(data)


def manifest_sha256(index_dir: str | Path) -> str:
    path = Path(index_dir) / MANIFEST
    if not path.is_file():
        read_manifest(index_dir)  # raises the usual, explanatory IndexFormatError
    return sha256_file(path)


# -- export ------------------------------------------------------------------------------------


def reproduce_command(index_dir: str | Path, k: int, influence: bool = True,
                      image_file: str | None = None) -> str:
    """The shell command that re-runs the stored query: the text in ``query.jsonl``, or with
    ``image_file`` the image stored under that name, beside evidence.json."""
    source = (f"--image {shlex.quote(image_file)}" if image_file is not None
              else f"--queries {QUERY_JSONL}")
    cmd = f"gif query {shlex.quote(str(index_dir))} {source} -k {int(k)} --json"
    return cmd if influence else cmd + " --no-influence"


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _index_record(engine) -> dict[str, Any]:
    index_dir = Path(engine.directory).resolve()
    probe_path = index_dir / "probe.safetensors"
    return {
        "path": str(index_dir),
        "manifest_sha256": manifest_sha256(index_dir),
        "manifest": read_manifest(index_dir),
        "encoder_name": getattr(engine.encoder, "name", None),
        "encoder_weights_sha256": getattr(engine.encoder, "weights_sha256", None),
        "probe_weights_sha256": sha256_file(probe_path) if probe_path.exists() else None,
    }


def _check_k(k: Any) -> None:
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise InputError(f"k must be an integer >= 1, got {k!r}.")


def image_query_bytes(image: Any) -> bytes:
    """The bytes of an image query given as bytes or a :class:`~pathlib.Path` (read with the
    image reader's size limit and messages). A ``str`` is a text query, never a path."""
    if isinstance(image, (bytes, bytearray, memoryview)):
        return bytes(image)
    if isinstance(image, os.PathLike):
        from .images import read_image_bytes

        return read_image_bytes(image)
    raise InputError(f"an image query must be the image's bytes or a Path to its file, got "
                     f"{type(image).__name__}.")


def build_evidence(engine, query: str | bytes | os.PathLike, *, k: int = 10,
                   influence: bool = True, name: str | None = None) -> dict[str, Any]:
    """Run the query on ``engine`` and return the content of ``evidence.json``.

    ``query`` is the text to trace (``str``), or an image: its bytes or a ``Path`` to its file
    (an image index only). ``name`` is the name the image was uploaded under (recorded; by
    default the path's file name).
    """
    _check_k(k)
    if not isinstance(query, str):
        return _build_image_evidence(engine, query, k=k, influence=influence, name=name)
    text = query
    att = engine.attribute(text, k=k, influence=influence, spans=True).to_dict()
    validate_attribution(att)
    index = _index_record(engine)
    evidence = _record(engine, EVIDENCE_VERSION,
                       {"text": text, "sha256": sha256_text(text), "k": k, "influence": influence},
                       att, index, {
        "command": reproduce_command(index["path"], k, influence),
        "cwd": "the evidence folder (query.jsonl and query.txt are stored there)",
        "files": [QUERY_TXT, QUERY_JSONL],
        "note": "prints the attribution as one JSON line with \"qid\": \"evidence\" added; "
                "timings differ run to run. `gif verify` compares within tolerances.",
    })
    if getattr(engine, "modality", "text") == "image":
        # a text traced to images: the report shows the sources it names
        evidence["thumbnails"] = {"query": None, "results": _result_thumbnails(att["results"])}
    return evidence


def _record(engine, version: int, query: dict[str, Any], att: dict[str, Any],
            index: dict[str, Any], reproduce: dict[str, Any]) -> dict[str, Any]:
    """The parts of ``evidence.json`` every query kind shares, around its query and command."""
    from .engine import library_versions

    return {
        "evidence_version": version,
        "created_utc": _utc_now(),
        "gif_version": __version__,
        "query": query,
        "attribution": att,
        "attribution_sha256": canonical_sha256(att),
        "index": index,
        "library_versions": library_versions(),
        "environment": {"device": str(engine.device), "platform": platform.platform()},
        "reproduce": reproduce,
        "tolerances": TOLERANCES,
    }


def _build_image_evidence(engine, image: Any, *, k: int, influence: bool,
                          name: str | None) -> dict[str, Any]:
    from .images import decode_image

    data = image_query_bytes(image)
    if name is None:
        name = Path(image).name if isinstance(image, os.PathLike) else None
    if getattr(engine, "modality", "text") != "image":
        raise InputError(f"index {str(engine.directory)!r} holds texts; evidence for an image "
                         f"query needs an image index (`gif build IMAGE_FOLDER --out INDEX`).")
    # decoded here first, so that a bad image is named before the query runs
    decoded = decode_image(data, where=name or "the query image", max_side=THUMB_SIDE)
    att = engine.attribute_image(data, k=k, influence=influence).to_dict()
    validate_attribution(att)
    sha = hashlib.sha256(data).hexdigest()
    if att["query_sha256"] != sha:
        raise IndexFormatError(f"the engine hashed the query image to {att['query_sha256']}, "
                               f"not to the SHA-256 of its bytes {sha}; this GIF's engine and "
                               f"evidence code disagree.")
    file = f"{QUERY_IMAGE_STEM}.{IMAGE_SUFFIXES.get(decoded.format.upper(), 'img')}"
    index = _index_record(engine)
    evidence = _record(engine, IMAGE_EVIDENCE_VERSION, {
        "modality": "image", "sha256": sha, "k": k, "influence": influence,
        "image": {"file": file, "name": name, "bytes": len(data), "format": decoded.format,
                  "width": decoded.width, "height": decoded.height},
    }, att, index, {
        "command": reproduce_command(index["path"], k, influence, image_file=file),
        "cwd": f"the evidence folder (the query image is stored there as {file})",
        "files": [file],
        "note": "prints the attribution as one JSON line; timings differ run to run. "
                "`gif verify` compares within tolerances.",
    })
    evidence["thumbnails"] = {"query": _thumbnail_b64(decoded.image),
                              "results": _result_thumbnails(att["results"])}
    return evidence


def _thumbnail_b64(image) -> str:
    """A decoded RGB image as a base64 JPEG at most :data:`THUMB_SIDE` on its longest side."""
    from PIL import Image

    im = image.copy()
    im.thumbnail((THUMB_SIDE, THUMB_SIDE), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    im.convert("RGB").save(buf, format="JPEG", quality=THUMB_QUALITY)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _result_thumbnails(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Thumbnails of the top results' images, read from their indexed ``meta.path``; a file
    that is gone, unreadable or no longer has the indexed SHA-256 gets a note instead."""
    from .images import ImageError, decode_image

    out = []
    for r in results[:THUMB_RESULTS]:
        path = (r.get("meta") or {}).get("path")
        item: dict[str, Any] = {"id": r["id"], "rank": r["rank"], "jpeg_base64": None,
                                "note": ""}
        if not path:
            item["note"] = "no image file recorded in the index"
        else:
            try:
                decoded = decode_image(path, max_side=THUMB_SIDE)
            except ImageError as exc:
                item["note"] = f"not shown: {exc}"
            else:
                if decoded.sha256 != r.get("sha256"):
                    item["note"] = ("not shown: the file changed since it was indexed (its "
                                    "SHA-256 differs)")
                else:
                    item["jpeg_base64"] = _thumbnail_b64(decoded.image)
        out.append(item)
    return out


def is_image_evidence(evidence: dict[str, Any]) -> bool:
    q = evidence.get("query")
    return isinstance(q, dict) and q.get("modality") == "image"


def _dumps(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n"


def _files(evidence: dict[str, Any], query_image: bytes | None = None) -> dict[str, bytes]:
    files = {EVIDENCE_FILE: _dumps(evidence).encode("utf-8"),
             REPORT_FILE: render_report(evidence).encode("utf-8")}
    if is_image_evidence(evidence):
        q = evidence["query"]
        file = _image_file_name(evidence, "the evidence")
        if query_image is None:
            raise InputError("an image query's evidence package needs the query image's bytes "
                             "(query_image=...): the package stores it for `gif verify`.")
        actual = hashlib.sha256(query_image).hexdigest()
        if actual != q["sha256"]:
            raise InputError(f"the query image given has SHA-256 {actual}, but the evidence "
                             f"records {q['sha256']}: it is not the image that was traced.")
        files[file] = bytes(query_image)
        return files
    text = evidence["query"]["text"]
    line = json.dumps({"qid": QID, "text": text}, ensure_ascii=False) + "\n"
    files[QUERY_TXT] = text.encode("utf-8")
    files[QUERY_JSONL] = line.encode("utf-8")
    return files


def export_evidence(engine, query: str | bytes | os.PathLike, out: str | Path, *, k: int = 10,
                    zip: bool = False, influence: bool = True, name: str | None = None) -> Path:
    """Attribute ``query`` on ``engine`` and write an evidence package to ``out``.

    Args:
        engine: a loaded :class:`~gif_core.engine.Engine`.
        query: the model output to trace (``str``), or an image on an image index: its bytes,
            or a :class:`~pathlib.Path` to its file (a ``str`` is always text).
        out: a folder (replaced atomically; an existing non-empty folder is replaced only if it
            is an earlier evidence package), or with ``zip=True`` a ``.zip`` file (the suffix is
            added if missing; written to a temporary file, then renamed in).
        k: results recorded.
        influence: compute influence evidence (recorded in the reproduce command).
        name: for an image, the name it was uploaded under (recorded in evidence.json).

    Returns:
        The path written.
    """
    out = Path(out)
    if zip:
        if out.suffix.lower() != ".zip":
            out = out.with_name(out.name + ".zip")
        if out.is_dir():
            raise InputError(f"--out {str(out)!r} is a folder; give a file name for --zip.")
    elif out.exists():
        if not out.is_dir():
            raise InputError(f"--out {str(out)!r} exists and is not a folder. Choose another "
                             f"path, or pass --zip to write a .zip file.")
        if any(out.iterdir()) and not (out / EVIDENCE_FILE).exists():
            raise InputError(f"--out {str(out)!r} is a non-empty folder that is not an evidence "
                             f"package; it would be replaced. Choose a new or empty folder.")
    if isinstance(query, str):
        evidence = build_evidence(engine, query, k=k, influence=influence)
        return write_package(evidence, out, zip=zip)
    if name is None and isinstance(query, os.PathLike):
        name = Path(query).name
    data = image_query_bytes(query)  # read once: the bytes traced are the bytes stored
    evidence = build_evidence(engine, data, k=k, influence=influence, name=name)
    return write_package(evidence, out, zip=zip, query_image=data)


def write_package(evidence: dict[str, Any], out: str | Path, *, zip: bool = False,
                  query_image: bytes | None = None) -> Path:
    """Write an ``evidence.json`` content (from :func:`build_evidence`, or a `gif serve`
    ``/evidence`` answer) as a package at ``out``: a folder, or with ``zip=True`` a ``.zip``.
    Both are written atomically. An image query's package needs ``query_image``, the bytes that
    were traced (checked against the recorded SHA-256). Returns the path written."""
    out = Path(out)
    if zip and out.suffix.lower() != ".zip":
        out = out.with_name(out.name + ".zip")
    files = _files(evidence, query_image)
    if zip:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
                for name, data in files.items():
                    zf.writestr(name, data)
            os.replace(tmp, out)
        finally:
            tmp.unlink(missing_ok=True)
    else:
        with atomic_directory(out) as tmp_dir:
            for name, data in files.items():
                (tmp_dir / name).write_bytes(data)
        out = out.resolve()
    log.info("wrote evidence %s (top %s, confidence %.3f)", out,
             evidence["attribution"]["results"][0]["id"] if evidence["attribution"]["results"]
             else None, evidence["attribution"]["confidence"])
    return out


# -- report ------------------------------------------------------------------------------------

_SPAN_COLOURS = ("#ffe08a", "#a8e6cf", "#ffb3ba", "#bae1ff", "#e0c3fc", "#ffd6a5")

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;width:100%;font-size:.9em}
th,td{border:1px solid #ddd;padding:4px 6px;text-align:left;vertical-align:top}
th{background:#f5f5f5}td.n{text-align:right;font-variant-numeric:tabular-nums}
.verdict{padding:.8em 1em;border-radius:6px;font-weight:600}
.found{background:#e6f4ea;border:1px solid #8bc79a}
.none{background:#fdecea;border:1px solid #e6a0a0}
.text{border:1px solid #ddd;border-radius:6px;padding:.6em;white-space:pre-wrap;
overflow-wrap:anywhere;font-size:.92em;max-height:28em;overflow:auto}
code,.mono{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.85em;
overflow-wrap:anywhere}
mark{padding:0 1px;border-radius:2px}.muted{color:#666}
.gallery{display:flex;flex-wrap:wrap;gap:10px;align-items:flex-start}
figure.thumb{margin:0;width:184px;border:1px solid #ddd;border-radius:6px;padding:6px;
text-align:center;font-size:.8em;overflow-wrap:anywhere}
figure.query-thumb{border-color:#d62828}figure.thumb .title{font-weight:600}
figure.thumb img{display:block;margin:6px auto}.cap{color:#555}.note{color:#b45309}
.noimg{width:160px;height:80px;margin:6px auto;background:#f3f3f3;color:#777;display:flex;
align-items:center;justify-content:center}
"""


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _num(value: Any, fmt: str = ".4f") -> str:
    if value is None:
        return "—"
    try:
        return format(float(value), fmt)
    except (TypeError, ValueError):
        return _esc(value)


def _highlight(text: str, spans: list[dict[str, Any]], side: str) -> str:
    """``text`` escaped, with the spans' ``side`` offsets wrapped in <mark> (overlaps trimmed)."""
    n = len(text)
    cuts = []
    for i, s in enumerate(spans):
        try:
            a = max(0, min(n, int(s[f"{side}_start"])))
            b = max(0, min(n, int(s[f"{side}_end"])))
        except (KeyError, TypeError, ValueError):
            continue
        if b > a:
            cuts.append((a, b, i))
    cuts.sort()
    pieces, pos = [], 0
    for a, b, i in cuts:
        a = max(a, pos)
        if b <= a:
            continue
        colour = _SPAN_COLOURS[i % len(_SPAN_COLOURS)]
        pieces.append(_esc(text[pos:a]))
        pieces.append(f'<mark style="background:{colour}" title="shared span {i + 1}">'
                      f"{_esc(text[a:b])}</mark>")
        pos = b
    pieces.append(_esc(text[pos:]))
    return "".join(pieces)


_B64 = re.compile(r"[A-Za-z0-9+/]+={0,2}")


def _img_tag(jpeg_base64: Any, alt: str) -> str:
    """An ``<img>`` of a base64 JPEG as a ``data:`` URI, or a grey box when there is none or the
    value is not plain base64 (so nothing but base64 characters ever enters the attribute)."""
    if isinstance(jpeg_base64, str) and _B64.fullmatch(jpeg_base64):
        return (f'<img src="data:image/jpeg;base64,{jpeg_base64}" alt="{_esc(alt)}" '
                f'style="max-width:{THUMB_SIDE}px;max-height:{THUMB_SIDE}px">')
    return '<div class="noimg">no image</div>'


def _figure(css: str, title: str, img: str, lines: list[str], sample_id: str | None = None,
            note: str = "") -> str:
    data_id = f' data-id="{_esc(sample_id)}"' if sample_id is not None else ""
    body = "".join(f"<div>{_esc(x)}</div>" for x in lines if x)
    note_html = f'<div class="note">{_esc(note)}</div>' if note else ""
    return (f'<figure class="{css}"{data_id}><figcaption class="title">{_esc(title)}'
            f"</figcaption>{img}<div class=\"cap\">{body}</div>{note_html}</figure>")


def _caption_of(r: dict[str, Any]) -> str:
    snippet = r.get("snippet") or ""
    return "" if snippet == (r.get("meta") or {}).get("path") else snippet


def _gallery(evidence: dict[str, Any], results: list[dict[str, Any]]) -> str:
    """Thumbnails of the query image (if any) and of the top sources, in rank order."""
    q = evidence["query"]
    thumbs = evidence.get("thumbnails") if isinstance(evidence.get("thumbnails"), dict) else {}
    cards = []
    if is_image_evidence(evidence):
        im = q.get("image") if isinstance(q.get("image"), dict) else {}
        cards.append(_figure("thumb query-thumb", "Query", _img_tag(thumbs.get("query"), "query"),
                             [str(im.get("name") or im.get("file") or ""),
                              f"{im.get('width', '?')}×{im.get('height', '?')} "
                              f"{im.get('format', '')}"]))
    listed = thumbs.get("results") if isinstance(thumbs.get("results"), list) else []
    by_id = {t.get("id"): t for t in listed if isinstance(t, dict)}
    for r in results[:THUMB_RESULTS]:
        t = by_id.get(r["id"], {})
        same = ("identical bytes to the query" if is_image_evidence(evidence)
                and r.get("sha256") == q.get("sha256") else "")
        cards.append(_figure("thumb source-thumb", f"{r['rank']}. {r['id']}",
                             _img_tag(t.get("jpeg_base64"), str(r["id"])),
                             [f"fused score {_num(r.get('score'), '.3f')}", same,
                              _caption_of(r)[:120]], r["id"], str(t.get("note") or "")))
    return f'<div class="gallery">{"".join(cards)}</div>'


def render_report(evidence: dict[str, Any]) -> str:
    """A standalone HTML report of an evidence record: every value escaped, no scripts; an
    image query's thumbnails are embedded as ``data:`` URIs."""
    q = evidence["query"]
    att = evidence["attribution"]
    idx = evidence["index"]
    results = att.get("results", [])
    image = is_image_evidence(evidence)
    kind = "image" if image else "sample"
    if att.get("abstained") or not results:
        verdict = (f'<div class="verdict none">No confident source. GIF abstains: confidence '
                   f'{_num(att.get("confidence"), ".2f")} is below the index\'s calibrated '
                   f"threshold. The candidates below are the nearest {kind}s, not established "
                   f"sources.</div>")
    else:
        top = results[0]
        verdict = (f'<div class="verdict found">Likely source: <code>{_esc(top["id"])}</code> '
                   f'(confidence {_num(att.get("confidence"), ".2f")}).</div>')

    rows = []
    for r in results:
        cells = [f'<td class="n">{_esc(r["rank"])}</td><td><code>{_esc(r["id"])}</code></td>',
                 f'<td class="n">{_num(r["score"])}</td>',
                 f'<td>{_esc(" + ".join(r.get("channels", [])))}</td>',
                 f'<td class="n">{_num(r["similarity"])}</td>',
                 f'<td class="n">{_num(r["gradient_similarity"])}</td>']
        if not image:
            cells.append(f'<td class="n">{_num(r["bm25"], ".2f")}</td>')
        cells += [f'<td class="n">{_num(r["verbatim"], ".3f")}</td>',
                  f'<td class="n">{_num(r.get("influence"), ".3g")}</td>',
                  f'<td class="n">{_num(r.get("influence_normalised"), "+.3f")}</td>']
        if image:
            same = "yes" if r.get("sha256") == q.get("sha256") else "no"
            cells += [f"<td>{same}</td>", f'<td class="mono">{_esc(r.get("sha256"))}</td>']
        else:
            cells.append(f'<td class="n">{len(r.get("spans", []))}</td>')
        rows.append("<tr>" + "".join(cells) + "</tr>")
    if image:
        head = ("<th>#</th><th>image id</th><th>fused score</th><th>found by</th>"
                "<th>embedding similarity</th><th>gradient similarity</th>"
                "<th>perceptual-hash similarity</th><th>influence</th>"
                "<th>influence (normalised)</th><th>same bytes as the query</th>"
                "<th>SHA-256</th>")
    else:
        head = ("<th>#</th><th>sample id</th><th>fused score</th><th>found by</th>"
                "<th>embedding similarity</th><th>gradient similarity</th><th>BM25</th>"
                "<th>verbatim coverage</th><th>influence</th><th>influence (normalised)</th>"
                "<th>shared spans</th>")
    table = f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"

    details = []
    for r in results:
        spans = r.get("spans", [])
        if not spans:
            continue
        listed = "".join(
            f'<li><mark style="background:{_SPAN_COLOURS[i % len(_SPAN_COLOURS)]}">'
            f'{_esc(s.get("text", ""))}</mark> <span class="muted">(query chars '
            f'{_esc(s.get("query_start"))}–{_esc(s.get("query_end"))}, source chars '
            f'{_esc(s.get("source_start"))}–{_esc(s.get("source_end"))})</span></li>'
            for i, s in enumerate(spans))
        details.append(
            f'<h3>#{_esc(r["rank"])} <code>{_esc(r["id"])}</code> '
            f'<span class="mono muted">sha256 {_esc(r["sha256"])}</span></h3>'
            f"<p>{len(spans)} shared span(s):</p><ul>{listed}</ul>"
            f'<p class="muted">Source opening (first {len(r.get("snippet", ""))} characters; '
            f"spans beyond it are listed above):</p>"
            f'<div class="text">{_highlight(r.get("snippet", ""), spans, "source")}</div>')
    top_spans = results[0].get("spans", []) if results else []

    versions = "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>"
                       for k, v in sorted(evidence.get("library_versions", {}).items()))
    manifest = idx.get("manifest", {})
    counts = manifest.get("counts", {})
    facts = (
        ("created (UTC)", evidence.get("created_utc")),
        ("GIF version", evidence.get("gif_version")),
        ("query image SHA-256 (of the bytes as given)" if image else "query SHA-256",
         q.get("sha256")),
        ("index path", idx.get("path")),
        ("index images" if image else "index samples", counts.get("samples")),
        ("index corpus", manifest.get("corpus")),
        ("manifest SHA-256", idx.get("manifest_sha256")),
        ("encoder", idx.get("encoder_name")),
        ("encoder weights SHA-256", idx.get("encoder_weights_sha256")),
        ("probe weights SHA-256", idx.get("probe_weights_sha256")),
        ("attribution SHA-256", evidence.get("attribution_sha256")),
        ("device", evidence.get("environment", {}).get("device")),
    )
    provenance = "".join(f'<tr><th>{_esc(k)}</th><td class="mono">{_esc(v)}</td></tr>'
                         for k, v in facts)
    reproduce = evidence.get("reproduce", {}).get("command", "")
    gallery = _gallery(evidence, results) if (image or evidence.get("thumbnails")) else ""

    if image:
        im = q.get("image") if isinstance(q.get("image"), dict) else {}
        stored = str(im.get("file") or "query image")
        size = f"{im['bytes']:,}" if isinstance(im.get("bytes"), int) else "?"
        query_section = (
            f'<p class="muted">An image of {_esc(im.get("width", "?"))}×'
            f'{_esc(im.get("height", "?"))} pixels, {_esc(im.get("format", "?"))}, '
            f"{_esc(size)} bytes"
            + (f', uploaded as <code>{_esc(im["name"])}</code>' if im.get("name") else "")
            + f'; stored byte for byte in this package as <code>{_esc(stored)}</code>. '
            f'SHA-256 <span class="mono">{_esc(q.get("sha256"))}</span>.</p>'
            f"<h2>Query and top sources</h2>{gallery}")
        spans_section = ""
        measure = """<li><b>Fused score</b> ranks candidates by combining the channels below with a ranker
fitted on this index; <b>confidence</b> is the calibrated probability that the top result is a
source. It is calibrated on planted, perturbed copies of the index's own images (crops, resizes,
JPEG re-encoding, small rotations, noise), so it is reliable for copies of that kind and less so
for images that differ from their source in other ways (edits, redrawings, style changes).</li>
<li><b>Embedding similarity</b>: cosine between the query's and the image's embeddings from a
frozen image encoder; high when the pictures look alike.</li>
<li><b>Gradient similarity</b> and <b>influence</b> are measured on GIF's own small probe model,
trained on the index's images. They are a proxy for how a generator might have learned from an
image; they are <i>not</i> the gradients or training dynamics of the model that produced the
query image. Negative raw influence / positive normalised influence means the image supports
the probe's view of the query.</li>
<li><b>Perceptual-hash similarity</b> is 1 − (Hamming distance / 128) between the images'
perceptual and difference hashes (pHash + dHash); near 1 for the same picture resized,
re-encoded or lightly edited. <b>Same bytes</b> means the files' SHA-256 digests are equal.</li>"""
        caveat = """<li>A high perceptual-hash or embedding similarity shows that the images look alike. It is
not legal proof of copying: stock motifs, templates, shared upstream sources or independent
pictures of the same subject can look alike too.</li>
<li>GIF only searches this index. An image outside it can never be found, and the absence of a
confident source does not show that the image is original.</li>
<li>The report does not show that the generating model was trained on any listed image; it shows
which indexed images the query most resembles and how GIF's probe relates them.</li>"""
        files_note = f"<code>{_esc(stored)}</code>"
    else:
        text = q["text"]
        query_section = (
            f'<p class="muted">{len(text):,} characters; passages shared with the top result '
            f"are\nhighlighted.</p>\n"
            f'<div class="text">{_highlight(text, top_spans, "query")}</div>'
            + (f"<h2>Top sources</h2>{gallery}" if gallery else ""))
        spans_section = ("<h2>Shared spans</h2>\n" + ("".join(details) or "<p>No passage of the "
                         "query appears verbatim in any listed sample.</p>"))
        measure = """<li><b>Fused score</b> ranks candidates by combining the channels below with a ranker fitted on
this index; <b>confidence</b> is the calibrated probability that the top result is a source.
It is calibrated on planted, perturbed copies of the index's own samples (word drops, typos,
prefixes, shuffles, ...), so it is reliable for text of that kind and less so for text that
differs from its source in other ways.</li>
<li><b>Embedding similarity</b>: cosine between the query's and the sample's embeddings from a
frozen sentence encoder; high when the meaning is close.</li>
<li><b>Gradient similarity</b> and <b>influence</b> are measured on GIF's own small probe model,
trained on the index's samples. They are a proxy for how a generator might have learned from a
sample; they are <i>not</i> the gradients or training dynamics of the model that produced the
text. Negative raw influence / positive normalised influence means the sample supports the
probe's view of the query.</li>
<li><b>BM25</b> measures shared words; <b>verbatim coverage</b> is the share of the query's
word shingles found in the sample; <b>shared spans</b> are passages present in both texts.</li>"""
        caveat = """<li>Shared spans and high similarity show that the texts overlap. They are not legal proof of
copying: common phrases, quotations, shared upstream sources or independent writing can produce
overlap too.</li>
<li>GIF only searches this index. A sample outside it can never be found, and the absence of a
confident source does not show that the text is original.</li>
<li>The report does not show that the generating model was trained on any listed sample; it shows
which indexed samples the text most resembles and how GIF's probe relates them.</li>"""
        files_note = "<code>query.txt</code> and\n<code>query.jsonl</code>"

    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; img-src data:">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>GIF evidence report</title><style>{_STYLE}</style></head><body>
<h1>GIF training-data provenance report</h1>
{verdict}
<h2>Query</h2>
{query_section}
<h2>Ranked candidate sources</h2>
{table}
{spans_section}
<h2>What the scores measure</h2>
<ul>
{measure}
</ul>
<h2>What this does not prove</h2>
<ul>
{caveat}
</ul>
<h2>Reproduce</h2>
<p>From the folder holding this report (it holds {files_note}), with the same index:</p>
<pre class="mono">{_esc(reproduce)}</pre>
<p>or check every number at once: <code>gif verify {_esc(shlex.quote(EVIDENCE_FILE))}</code>
(run in this folder, or pass the folder / .zip path). Tolerances:</p>
<ul>{"".join(f"<li>{_esc(k)}: {_esc(v)}</li>" for k, v in TOLERANCES.items())}</ul>
<h2>Provenance of this report</h2>
<table>{provenance}</table>
<h3>Library versions</h3>
<table>{versions}</table>
</body></html>
"""


# -- verify ------------------------------------------------------------------------------------


@dataclass
class VerifyReport:
    """Outcome of :func:`verify_evidence`: ``ok`` when nothing differs beyond the tolerances."""

    ok: bool
    differences: list[str]
    evidence: str
    index: str
    manifest_sha256: str
    top_id: str | None = None
    checked_results: int = 0
    tolerances: dict[str, str] = field(default_factory=lambda: dict(TOLERANCES))

    def summary(self) -> str:
        if self.ok:
            return (f"verified: {self.checked_results} result(s) re-computed on {self.index} "
                    f"(manifest {self.manifest_sha256[:12]}…) match the evidence"
                    + (f"; top source {self.top_id}" if self.top_id else "") + ".")
        lines = [f"MISMATCH: {len(self.differences)} difference(s) between {self.evidence} and a "
                 f"re-run on {self.index}:"]
        lines += [f"  - {d}" for d in self.differences]
        return "\n".join(lines)


def load_evidence(path: str | Path) -> tuple[dict[str, Any], str | None]:
    """Read ``evidence.json`` (and ``query.txt`` if present) from a folder, a .zip, or the file.

    Returns:
        (evidence, query_txt or None)
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"evidence {str(p)!r} does not exist. Pass an evidence folder, its "
                         f"evidence.json or a .zip written by `gif evidence`.")

    def decode(data: bytes, where: str) -> Any:
        try:
            return json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InputError(f"{where} is not valid UTF-8 JSON ({exc}). Re-export it with "
                             f"`gif evidence`.") from exc

    query_txt: bytes | None = None
    if p.is_dir():
        ev_path = p / EVIDENCE_FILE
        if not ev_path.is_file():
            raise InputError(f"{str(p)!r} has no {EVIDENCE_FILE}: it is not an evidence folder.")
        if ev_path.stat().st_size > MAX_EVIDENCE_BYTES:
            raise InputError(f"{ev_path} is larger than {MAX_EVIDENCE_BYTES:,} bytes.")
        evidence = decode(ev_path.read_bytes(), str(ev_path))
        if (p / QUERY_TXT).is_file():
            query_txt = (p / QUERY_TXT).read_bytes()
    elif zipfile.is_zipfile(p):
        with zipfile.ZipFile(p) as zf:
            names = set(zf.namelist())
            if EVIDENCE_FILE not in names:
                raise InputError(f"{str(p)!r} holds no {EVIDENCE_FILE}: it is not an evidence "
                                 f"package.")
            for name in (EVIDENCE_FILE, QUERY_TXT):
                if name in names and zf.getinfo(name).file_size > MAX_EVIDENCE_BYTES:
                    raise InputError(f"{p}:{name} is larger than {MAX_EVIDENCE_BYTES:,} bytes.")
            evidence = decode(zf.read(EVIDENCE_FILE), f"{p}:{EVIDENCE_FILE}")
            if QUERY_TXT in names:
                query_txt = zf.read(QUERY_TXT)
    else:
        if p.stat().st_size > MAX_EVIDENCE_BYTES:
            raise InputError(f"{p} is larger than {MAX_EVIDENCE_BYTES:,} bytes.")
        evidence = decode(p.read_bytes(), str(p))
        if (p.parent / QUERY_TXT).is_file():
            query_txt = (p.parent / QUERY_TXT).read_bytes()
    _check_structure(evidence, str(p))
    qtext = None
    if query_txt is not None:
        try:
            qtext = query_txt.decode("utf-8")
        except UnicodeDecodeError:
            qtext = query_txt.decode("utf-8", errors="replace")
    return evidence, qtext


def _check_structure(ev: Any, where: str) -> None:
    def need(obj: Any, key: str, kind: type | tuple[type, ...], name: str) -> None:
        if not isinstance(obj, dict) or key not in obj:
            raise InputError(f"{where}: evidence.json lacks {name}; it is damaged or not written "
                             f"by `gif evidence`. Re-export it.")
        if not isinstance(obj[key], kind):
            raise InputError(f"{where}: evidence.json {name} has type {type(obj[key]).__name__}; "
                             f"it is damaged. Re-export it.")

    if not isinstance(ev, dict):
        raise InputError(f"{where}: evidence.json is not a JSON object. Re-export it.")
    need(ev, "evidence_version", int, "'evidence_version'")
    if ev["evidence_version"] not in READ_VERSIONS:
        raise InputError(f"{where}: evidence version {ev['evidence_version']!r}; this GIF reads "
                         f"versions {', '.join(map(str, READ_VERSIONS))}. Verify it with the GIF "
                         f"release that wrote it ({ev.get('gif_version', '?')}).")
    need(ev, "query", dict, "'query'")
    if is_image_evidence(ev):
        need(ev["query"], "image", dict, "'query.image'")
        need(ev["query"]["image"], "file", str, "'query.image.file'")
        _image_file_name(ev, where)
    else:
        need(ev["query"], "text", str, "'query.text'")
    need(ev["query"], "sha256", str, "'query.sha256'")
    need(ev["query"], "k", int, "'query.k'")
    need(ev, "attribution", dict, "'attribution'")
    need(ev, "index", dict, "'index'")
    need(ev["index"], "path", str, "'index.path'")
    need(ev["index"], "manifest_sha256", str, "'index.manifest_sha256'")


def _image_file_name(evidence: dict[str, Any], where: str) -> str:
    """The stored query image's name from ``query.image.file``: a plain ``query.EXT``, never a
    path (an edited name cannot make `gif verify` read a file outside the package)."""
    file = (evidence["query"].get("image") or {}).get("file")
    if not isinstance(file, str) or not QUERY_IMAGE_NAME.fullmatch(file):
        raise InputError(f"{where}: evidence.json names the query image {_short(file)}; it must "
                         f"be query.EXT inside the package. The file is damaged: re-export it.")
    return file


def load_query_image(path: str | Path, evidence: dict[str, Any] | None = None) -> bytes:
    """The stored query image of an image package (a folder, a .zip, or its evidence.json).

    Raises:
        InputError: the package records no image query, or its query image file is missing.
    """
    p = Path(path)
    if evidence is None:
        evidence, _ = load_evidence(p)
    if not is_image_evidence(evidence):
        raise InputError(f"{str(p)!r} records a text query, not an image.")
    file = _image_file_name(evidence, str(p))
    sha = evidence["query"].get("sha256")
    missing = InputError(
        f"the query image {file} is missing from {str(p)!r}: an image query cannot be re-run or "
        f"checked without the image it records (SHA-256 {sha}). Put the original file back as "
        f"{file} in the package, or export the evidence again.")
    if p.is_dir() or (p.is_file() and not zipfile.is_zipfile(p)):
        folder = p if p.is_dir() else p.parent
        img = folder / file
        if not img.is_file():
            raise missing
        if img.stat().st_size > MAX_EVIDENCE_BYTES:
            raise InputError(f"{img} is larger than {MAX_EVIDENCE_BYTES:,} bytes.")
        return img.read_bytes()
    with zipfile.ZipFile(p) as zf:
        if file not in set(zf.namelist()):
            raise missing
        if zf.getinfo(file).file_size > MAX_EVIDENCE_BYTES:
            raise InputError(f"{p}:{file} is larger than {MAX_EVIDENCE_BYTES:,} bytes.")
        return zf.read(file)


def _close(a: Any, b: Any, atol: float, rtol: float) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, bool) or isinstance(b, bool):
        return a == b
    try:
        fa, fb = float(a), float(b)
    except (TypeError, ValueError):
        return False
    if not (math.isfinite(fa) and math.isfinite(fb)):
        return fa == fb
    return abs(fa - fb) <= atol + rtol * abs(fb)


def _short(value: Any) -> str:
    s = json.dumps(value, ensure_ascii=False, default=str)
    return s if len(s) <= 80 else s[:77] + "..."


def compare_attributions(recorded: dict[str, Any], rerun: dict[str, Any], *,
                         query_kind: str = "text") -> list[str]:
    """Differences between a recorded attribution and a re-run, within :data:`TOLERANCES`.
    ``query_kind``: "text" or "image", for the wording of a query-hash difference."""
    diffs: list[str] = []
    if recorded.get("query_sha256") != rerun["query_sha256"]:
        diffs.append(f"attribution.query_sha256: evidence has "
                     f"{_short(recorded.get('query_sha256'))}, the query {query_kind} hashes to "
                     f"{rerun['query_sha256']}")
    if recorded.get("abstained") != rerun["abstained"]:
        diffs.append(f"attribution.abstained: evidence has {_short(recorded.get('abstained'))}, "
                     f"re-run gives {rerun['abstained']}")
    if not _close(recorded.get("confidence"), rerun["confidence"], SCORE_ATOL, SCORE_RTOL):
        diffs.append(f"attribution.confidence: evidence has {_short(recorded.get('confidence'))}, "
                     f"re-run gives {rerun['confidence']:.6g}")
    if recorded.get("index_version") != rerun["index_version"]:
        diffs.append(f"attribution.index_version: evidence has "
                     f"{_short(recorded.get('index_version'))}, re-run gives "
                     f"{rerun['index_version']}")
    rec_solver = recorded.get("solver") if isinstance(recorded.get("solver"), dict) else {}
    if rec_solver.get("name") != rerun["solver"].get("name"):
        diffs.append(f"attribution.solver.name: evidence has {_short(rec_solver.get('name'))}, "
                     f"re-run gives {_short(rerun['solver'].get('name'))}")
    rec = recorded.get("results")
    if not isinstance(rec, list):
        return diffs + ["attribution.results: missing or not a list"]
    new = rerun["results"]
    rec_ids = [r.get("id") if isinstance(r, dict) else None for r in rec]
    new_ids = [r["id"] for r in new]
    if rec_ids != new_ids:
        pairs = zip(rec_ids, new_ids, strict=False)
        first = next((i for i, (a, b) in enumerate(pairs) if a != b),
                     min(len(rec_ids), len(new_ids)))
        diffs.append(f"attribution.results ranking: evidence ranks {_short(rec_ids)}, re-run "
                     f"ranks {_short(new_ids)} (first difference at rank {first + 1})")
    infl = [abs(r["influence"]) for r in rec if isinstance(r, dict)
            and isinstance(r.get("influence"), (int, float))
            and not isinstance(r["influence"], bool)]
    infl_scale = max(infl, default=0.0)
    by_id = {r["id"]: (j, r) for j, r in enumerate(new)}
    for i, r in enumerate(rec):
        where = f"results[{i}]"
        if not isinstance(r, dict):
            diffs.append(f"{where}: not an object")
            continue
        if r.get("id") not in by_id:
            diffs.append(f"{where}.id: {_short(r.get('id'))} is not among the re-run's top "
                         f"{len(new)}")
            continue
        j, n = by_id[r["id"]]
        label = f"{where} (id {r['id']})"
        for name in EXACT_FIELDS:
            if name == "rank" and j != i:
                continue  # already reported as a ranking difference
            if r.get(name) != n[name]:
                diffs.append(f"{label}.{name}: evidence has {_short(r.get(name))}, re-run gives "
                             f"{_short(n[name])}")
        for name in TIGHT_FIELDS:
            if not _close(r.get(name), n[name], SCORE_ATOL, SCORE_RTOL):
                diffs.append(f"{label}.{name}: evidence has {_short(r.get(name))}, re-run gives "
                             f"{n[name]:.6g} (tolerance {SCORE_ATOL:g} + {SCORE_RTOL:g}·|x|)")
        if not _close(r.get("influence_normalised"), n["influence_normalised"],
                      INFLUENCE_NORMALISED_ATOL, 0.0):
            diffs.append(f"{label}.influence_normalised: evidence has "
                         f"{_short(r.get('influence_normalised'))}, re-run gives "
                         f"{_short(n['influence_normalised'])} (tolerance "
                         f"{INFLUENCE_NORMALISED_ATOL:g})")
        if not _close(r.get("influence"), n["influence"], INFLUENCE_SCALE_ATOL * infl_scale,
                      INFLUENCE_RTOL):
            diffs.append(f"{label}.influence: evidence has {_short(r.get('influence'))}, re-run "
                         f"gives {_short(n['influence'])} (tolerance {INFLUENCE_RTOL:.0%})")
    return diffs


def verify_evidence(path: str | Path, engine=None, *, index: str | Path | None = None,
                    device: str = "auto") -> VerifyReport:
    """Re-run an evidence package's query and compare with what it records.

    Args:
        path: an evidence folder, its ``evidence.json``, or a ``.zip`` from ``export_evidence``.
        engine: a loaded engine to re-run on (its index must have the recorded manifest hash).
        index: the index folder to use instead of the path recorded in evidence.json (for an
            index that was moved or copied; its manifest must still match).
        device: device for loading the engine when ``engine`` is None.

    Raises:
        IndexFormatError: the index's manifest SHA-256 differs from the recorded one (the index
            was rebuilt or changed), or the index cannot be read.
        InputError: the evidence cannot be read or is structurally damaged, or an image
            package lacks its query image.

    A stored query image whose bytes no longer hash to the recorded SHA-256 is a difference
    (the query is still re-run on it, so the report also shows what the changed image gives).
    """
    evidence, query_txt = load_evidence(path)
    q, att, idx = evidence["query"], evidence["attribution"], evidence["index"]
    diffs: list[str] = []
    image = is_image_evidence(evidence)
    text = image_data = None
    if image:
        # read before the index loads: a package without its image fails fast
        image_data = load_query_image(path, evidence)
        file = _image_file_name(evidence, str(path))
        actual_sha = hashlib.sha256(image_data).hexdigest()
        if q["sha256"] != actual_sha:
            diffs.append(f"{file}: the stored query image hashes to {actual_sha}, but "
                         f"evidence.json records query.sha256 {q['sha256']}: the query image "
                         f"was changed or replaced after export")
    else:
        text = q["text"]
        actual_sha = sha256_text(text)
        if q["sha256"] != actual_sha:
            diffs.append(f"query.sha256: evidence has {q['sha256']}, but query.text hashes to "
                         f"{actual_sha}")
        if query_txt is not None and query_txt != text:
            diffs.append(f"{QUERY_TXT}: differs from query.text in evidence.json (SHA-256 "
                         f"{sha256_text(query_txt)} vs {actual_sha})")
    for err in schema_errors(att):
        diffs.append(f"attribution schema: {err}")
    recorded_digest = evidence.get("attribution_sha256")
    try:
        digest = canonical_sha256(att)
    except ValueError:
        digest = None
    if recorded_digest != digest:
        diffs.append(f"attribution_sha256: evidence records {_short(recorded_digest)}, its "
                     f"attribution hashes to {digest}: the attribution was edited after export")

    if engine is not None:
        index_dir = Path(engine.directory).resolve()
        if index is not None and Path(index).resolve() != index_dir:
            raise InputError(f"both engine ({index_dir}) and index ({index}) given; pass one.")
    else:
        index_dir = Path(index if index is not None else idx["path"])
    if not index_dir.is_dir():
        raise IndexFormatError(
            f"the index {str(index_dir)!r} named by the evidence does not exist. Pass the index "
            f"it was made with: `gif verify {path} --index DIR`.")
    current = manifest_sha256(index_dir)
    if current != idx["manifest_sha256"]:
        raise IndexFormatError(
            f"the index changed since the evidence was exported: evidence.json records manifest "
            f"SHA-256 {idx['manifest_sha256']}, but {index_dir / MANIFEST} has {current}. A "
            f"rebuilt or different index cannot confirm this evidence. Verify against the index "
            f"the evidence was made with (`--index DIR`), or export new evidence on this index "
            f"with `gif evidence {index_dir} {'--image FILE' if image else '--text ...'} "
            f"--out DIR`.")
    manifest = read_manifest(index_dir)
    if "manifest" in idx and idx["manifest"] != manifest:
        keys = sorted(k for k in set(manifest) | set(idx["manifest"] or {})
                      if (idx["manifest"] or {}).get(k) != manifest.get(k))
        diffs.append(f"index.manifest: the copy in evidence.json differs from the index's "
                     f"manifest (whose SHA-256 matches) at {', '.join(keys) or 'its type'}")
    probe_path = index_dir / "probe.safetensors"
    recorded_probe = idx.get("probe_weights_sha256")
    if recorded_probe is not None and probe_path.exists():
        actual_probe = sha256_file(probe_path)
        if actual_probe != recorded_probe:
            diffs.append(f"index.probe_weights_sha256: evidence has {recorded_probe}, "
                         f"{probe_path} has {actual_probe}")

    if engine is None:
        from .engine import Engine

        engine = Engine.load(index_dir, device=device)
    elif engine.manifest_sha256 != idx["manifest_sha256"]:
        raise IndexFormatError(
            f"the engine's index changed since the evidence was exported: evidence.json records "
            f"manifest SHA-256 {idx['manifest_sha256']}, the engine's has "
            f"{engine.manifest_sha256}. Load the index the evidence was made with.")
    recorded_enc = idx.get("encoder_weights_sha256")
    actual_enc = getattr(engine.encoder, "weights_sha256", None)
    if recorded_enc not in (None, "unknown") and actual_enc not in (None, "unknown") \
            and recorded_enc != actual_enc:
        diffs.append(f"index.encoder_weights_sha256: evidence has {recorded_enc}, the loaded "
                     f"encoder has {actual_enc}")

    influence = bool(q.get("influence", True))
    rerun = None
    if image:
        from .images import ImageError

        try:
            rerun = engine.attribute_image(image_data, k=q["k"], influence=influence).to_dict()
        except ImageError as exc:
            if q["sha256"] == actual_sha:
                raise
            diffs.append(f"{file}: the changed query image cannot be re-run ({exc})")
    else:
        rerun = engine.attribute(text, k=q["k"], influence=influence, spans=True).to_dict()
    if rerun is not None:
        diffs += compare_attributions(att, rerun, query_kind="image" if image else "text")
    results = rerun["results"] if rerun is not None else []
    report = VerifyReport(ok=not diffs, differences=diffs, evidence=str(path),
                          index=str(index_dir), manifest_sha256=current,
                          top_id=results[0]["id"] if results else None,
                          checked_results=len(results))
    log.info("verify %s: %s", path, "ok" if report.ok else f"{len(diffs)} difference(s)")
    return report
