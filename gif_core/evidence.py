"""Evidence packages: a self-contained, re-checkable record of one attribution.

``export_evidence(engine, text, out)`` writes a folder (or a ``.zip``) holding::

    evidence.json   the query and its SHA-256, the attribution (schema-checked), the index path,
                    its manifest and the manifest's SHA-256, the encoder-weights and probe-weights
                    hashes, library versions, a UTC timestamp, the GIF version and the command
                    that reproduces the result
    report.html     the same for a human reader, all text escaped, no scripts
    query.txt       the query text, byte for byte
    query.jsonl     one line {"qid": "evidence", "text": ...} for the reproduce command:
                    ``gif query INDEX --queries query.jsonl -k K --json``

``verify_evidence(path)`` re-runs the query on the index named in ``evidence.json`` (or on a given
engine / ``index``) and compares. It refuses (:class:`IndexFormatError`) when the index's
manifest no longer has the recorded SHA-256: a changed index cannot confirm or refute anything.
Otherwise it returns a :class:`VerifyReport` listing every difference.

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
"""

from __future__ import annotations

import hashlib
import html
import json
import logging
import math
import os
import platform
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
EVIDENCE_FILE = "evidence.json"
REPORT_FILE = "report.html"
QUERY_TXT = "query.txt"
QUERY_JSONL = "query.jsonl"
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


def reproduce_command(index_dir: str | Path, k: int, influence: bool = True) -> str:
    """The shell command that re-runs the query stored in ``query.jsonl`` beside evidence.json."""
    cmd = f"gif query {shlex.quote(str(index_dir))} --queries {QUERY_JSONL} -k {int(k)} --json"
    return cmd if influence else cmd + " --no-influence"


def build_evidence(engine, text: str, *, k: int = 10, influence: bool = True) -> dict[str, Any]:
    """Run the query on ``engine`` and return the content of ``evidence.json``."""
    from .engine import library_versions

    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise InputError(f"k must be an integer >= 1, got {k!r}.")
    att = engine.attribute(text, k=k, influence=influence, spans=True).to_dict()
    validate_attribution(att)
    index_dir = Path(engine.directory).resolve()
    manifest = read_manifest(index_dir)
    probe_path = index_dir / "probe.safetensors"
    return {
        "evidence_version": EVIDENCE_VERSION,
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds")
                               .replace("+00:00", "Z"),
        "gif_version": __version__,
        "query": {"text": text, "sha256": sha256_text(text), "k": k, "influence": influence},
        "attribution": att,
        "attribution_sha256": canonical_sha256(att),
        "index": {
            "path": str(index_dir),
            "manifest_sha256": manifest_sha256(index_dir),
            "manifest": manifest,
            "encoder_name": getattr(engine.encoder, "name", None),
            "encoder_weights_sha256": getattr(engine.encoder, "weights_sha256", None),
            "probe_weights_sha256": sha256_file(probe_path) if probe_path.exists() else None,
        },
        "library_versions": library_versions(),
        "environment": {"device": str(engine.device), "platform": platform.platform()},
        "reproduce": {
            "command": reproduce_command(index_dir, k, influence),
            "cwd": "the evidence folder (query.jsonl and query.txt are stored there)",
            "files": [QUERY_TXT, QUERY_JSONL],
            "note": "prints the attribution as one JSON line with \"qid\": \"evidence\" added; "
                    "timings differ run to run. `gif verify` compares within tolerances.",
        },
        "tolerances": TOLERANCES,
    }


def _dumps(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n"


def _files(evidence: dict[str, Any]) -> dict[str, bytes]:
    text = evidence["query"]["text"]
    line = json.dumps({"qid": QID, "text": text}, ensure_ascii=False) + "\n"
    return {
        EVIDENCE_FILE: _dumps(evidence).encode("utf-8"),
        REPORT_FILE: render_report(evidence).encode("utf-8"),
        QUERY_TXT: text.encode("utf-8"),
        QUERY_JSONL: line.encode("utf-8"),
    }


def export_evidence(engine, text: str, out: str | Path, *, k: int = 10, zip: bool = False,
                    influence: bool = True) -> Path:
    """Attribute ``text`` on ``engine`` and write an evidence package to ``out``.

    Args:
        engine: a loaded :class:`~gif_core.engine.Engine`.
        text: the model output to trace.
        out: a folder (replaced atomically; an existing non-empty folder is replaced only if it
            is an earlier evidence package), or with ``zip=True`` a ``.zip`` file (the suffix is
            added if missing; written to a temporary file, then renamed in).
        k: results recorded.
        influence: compute influence evidence (recorded in the reproduce command).

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
    evidence = build_evidence(engine, text, k=k, influence=influence)
    return write_package(evidence, out, zip=zip)


def write_package(evidence: dict[str, Any], out: str | Path, *, zip: bool = False) -> Path:
    """Write an ``evidence.json`` content (from :func:`build_evidence`, or a `gif serve`
    ``/evidence`` answer) as a package at ``out``: a folder, or with ``zip=True`` a ``.zip``.
    Both are written atomically. Returns the path written."""
    out = Path(out)
    if zip and out.suffix.lower() != ".zip":
        out = out.with_name(out.name + ".zip")
    files = _files(evidence)
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


def render_report(evidence: dict[str, Any]) -> str:
    """A standalone HTML report of an evidence record: every value escaped, no scripts."""
    q = evidence["query"]
    att = evidence["attribution"]
    idx = evidence["index"]
    results = att.get("results", [])
    text = q["text"]
    if att.get("abstained") or not results:
        verdict = (f'<div class="verdict none">No confident source. GIF abstains: confidence '
                   f'{_num(att.get("confidence"), ".2f")} is below the index\'s calibrated '
                   f"threshold. The candidates below are the nearest samples, not established "
                   f"sources.</div>")
    else:
        top = results[0]
        verdict = (f'<div class="verdict found">Likely source: <code>{_esc(top["id"])}</code> '
                   f'(confidence {_num(att.get("confidence"), ".2f")}).</div>')

    rows = []
    for r in results:
        rows.append(
            "<tr>"
            f'<td class="n">{_esc(r["rank"])}</td><td><code>{_esc(r["id"])}</code></td>'
            f'<td class="n">{_num(r["score"])}</td>'
            f'<td>{_esc(" + ".join(r.get("channels", [])))}</td>'
            f'<td class="n">{_num(r["similarity"])}</td>'
            f'<td class="n">{_num(r["gradient_similarity"])}</td>'
            f'<td class="n">{_num(r["bm25"], ".2f")}</td>'
            f'<td class="n">{_num(r["verbatim"], ".3f")}</td>'
            f'<td class="n">{_num(r.get("influence"), ".3g")}</td>'
            f'<td class="n">{_num(r.get("influence_normalised"), "+.3f")}</td>'
            f'<td class="n">{len(r.get("spans", []))}</td>'
            "</tr>")
    table = (
        "<table><thead><tr><th>#</th><th>sample id</th><th>fused score</th><th>found by</th>"
        "<th>embedding similarity</th><th>gradient similarity</th><th>BM25</th>"
        "<th>verbatim coverage</th><th>influence</th><th>influence (normalised)</th>"
        "<th>shared spans</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>")

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
        ("query SHA-256", q.get("sha256")),
        ("index path", idx.get("path")),
        ("index samples", counts.get("samples")),
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

    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>GIF evidence report</title><style>{_STYLE}</style></head><body>
<h1>GIF training-data provenance report</h1>
{verdict}
<h2>Query</h2>
<p class="muted">{len(text):,} characters; passages shared with the top result are
highlighted.</p>
<div class="text">{_highlight(text, top_spans, "query")}</div>
<h2>Ranked candidate sources</h2>
{table}
<h2>Shared spans</h2>
{"".join(details) or "<p>No passage of the query appears verbatim in any listed sample.</p>"}
<h2>What the scores measure</h2>
<ul>
<li><b>Fused score</b> ranks candidates by combining the channels below with a ranker fitted on
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
word shingles found in the sample; <b>shared spans</b> are passages present in both texts.</li>
</ul>
<h2>What this does not prove</h2>
<ul>
<li>Shared spans and high similarity show that the texts overlap. They are not legal proof of
copying: common phrases, quotations, shared upstream sources or independent writing can produce
overlap too.</li>
<li>GIF only searches this index. A sample outside it can never be found, and the absence of a
confident source does not show that the text is original.</li>
<li>The report does not show that the generating model was trained on any listed sample; it shows
which indexed samples the text most resembles and how GIF's probe relates them.</li>
</ul>
<h2>Reproduce</h2>
<p>From the folder holding this report (it holds <code>query.txt</code> and
<code>query.jsonl</code>), with the same index:</p>
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
    if ev["evidence_version"] != EVIDENCE_VERSION:
        raise InputError(f"{where}: evidence version {ev['evidence_version']!r}; this GIF reads "
                         f"version {EVIDENCE_VERSION}. Verify it with the GIF release that wrote "
                         f"it ({ev.get('gif_version', '?')}).")
    need(ev, "query", dict, "'query'")
    need(ev["query"], "text", str, "'query.text'")
    need(ev["query"], "sha256", str, "'query.sha256'")
    need(ev["query"], "k", int, "'query.k'")
    need(ev, "attribution", dict, "'attribution'")
    need(ev, "index", dict, "'index'")
    need(ev["index"], "path", str, "'index.path'")
    need(ev["index"], "manifest_sha256", str, "'index.manifest_sha256'")


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


def compare_attributions(recorded: dict[str, Any], rerun: dict[str, Any]) -> list[str]:
    """Differences between a recorded attribution and a re-run, within :data:`TOLERANCES`."""
    diffs: list[str] = []
    if recorded.get("query_sha256") != rerun["query_sha256"]:
        diffs.append(f"attribution.query_sha256: evidence has "
                     f"{_short(recorded.get('query_sha256'))}, the query text hashes to "
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
        InputError: the evidence cannot be read or is structurally damaged.
    """
    evidence, query_txt = load_evidence(path)
    q, att, idx = evidence["query"], evidence["attribution"], evidence["index"]
    diffs: list[str] = []
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
            f"with `gif evidence {index_dir} --text ... --out DIR`.")
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

    rerun = engine.attribute(text, k=q["k"], influence=bool(q.get("influence", True)),
                             spans=True).to_dict()
    diffs += compare_attributions(att, rerun)
    report = VerifyReport(ok=not diffs, differences=diffs, evidence=str(path),
                          index=str(index_dir), manifest_sha256=current,
                          top_id=rerun["results"][0]["id"] if rerun["results"] else None,
                          checked_results=len(rerun["results"]))
    log.info("verify %s: %s", path, "ok" if report.ok else f"{len(diffs)} difference(s)")
    return report
