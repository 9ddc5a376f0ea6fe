"""Image corpora: folders, CSV/JSONL tables, WebDataset tar shards and the Debian image sets.

A reader lists :class:`ImageSource` items (id, caption, where the bytes are) without decoding
anything; the build reads and decodes each item once (:mod:`gif_core.images`), hashes its bytes
(SHA-256) and skips, with a reason, whatever cannot be used. Problems found while listing (a
caption file with no image beside it, a table row without an image path) are returned in
:attr:`ImageCorpus.problems` and land in the manifest next to the decoding failures.

Formats:

* a folder of images (``IMAGE_SUFFIXES``, searched recursively); ``NAME.txt`` beside
  ``NAME.png`` is that image's caption; id = path inside the folder;
* a CSV or JSONL table with an ``image`` column (a path, relative to the table's folder) and an
  optional ``caption`` and ``id``;
* WebDataset shards: an uncompressed ``.tar`` file, or a folder of them; members that share a key
  (the name up to its first dot) form one sample: an image member plus an optional ``.txt``
  caption or ``.json`` with a ``caption`` / ``text`` field; id = ``shard/key``;
* packaged: ``pkg:stamps`` (Debian ``tuxpaint-stamps-default``: the ~950 stamps with an English
  description, GPL-2), ``pkg:openclipart`` (Debian ``openclipart-png``: ~8,100 public-domain
  clip-art PNGs, captioned by their file name and folder), ``pkg:fashion-mnist`` (Debian
  ``dataset-fashion-mnist``: 70,000 28×28 photos, MIT, captioned by class name).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import logging
import re
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .data import _records_jsonl
from .errors import CorpusError
from .images import IMAGE_SUFFIXES, read_image_bytes

log = logging.getLogger(__name__)

STAMPS_DIR = Path("/usr/share/tuxpaint/stamps")
OPENCLIPART_DIR = Path("/usr/share/openclipart/png")
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = ("T-shirt or top", "trousers", "pullover", "dress", "coat", "sandal", "shirt",
                   "sneaker", "bag", "ankle boot")
IMAGE_PACKAGES = ("stamps", "openclipart", "fashion-mnist")
CAPTION_SUFFIX = ".txt"


@dataclass
class ImageSource:
    """One image sample before decoding: id, caption ("" if none), where its bytes are."""

    id: str
    caption: str
    meta: dict[str, Any]
    read: Callable[[], bytes] = field(repr=False)
    """Returns the image bytes; raises :class:`~gif_core.images.ImageError` if unreadable."""


@dataclass
class ImageCorpus:
    sources: list[ImageSource]
    problems: list[dict[str, str]] = field(default_factory=list)
    """Items found while listing that cannot become samples: {item, reason, message}."""


def _file_reader(path: Path) -> Callable[[], bytes]:
    return lambda: read_image_bytes(path)


def _is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES)


def is_image_corpus(source: str | Path) -> bool:
    """True for a source GIF reads as images: ``pkg:`` image sets, tar shards, a folder with
    image files, or a CSV/JSONL table whose first record has an ``image`` field."""
    name = str(source)
    if name.startswith("pkg:"):
        return name[4:] in IMAGE_PACKAGES
    path = Path(source)
    if path.is_dir():
        for p in path.rglob("*"):
            if p.is_file() and (_is_image_name(p.name) or p.suffix == ".tar"):
                return True
        return False
    if path.suffix == ".tar":
        return True
    if path.suffix.lower() in (".jsonl", ".ndjson", ".json", ".csv") and path.is_file():
        first = next(iter(_table_rows(path)), None)
        return first is not None and "image" in first[0]
    return False


def _caption_text(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace").strip()


def image_folder(path: Path) -> ImageCorpus:
    files = sorted(p for p in path.rglob("*") if p.is_file())
    images = [p for p in files if _is_image_name(p.name)]
    stems = {p.with_suffix("") for p in images}
    sources, problems = [], []
    for p in files:
        if p.suffix == CAPTION_SUFFIX and p.with_suffix("") not in stems:
            problems.append({"item": p.relative_to(path).as_posix(),
                             "reason": "caption_without_image",
                             "message": f"{p}: caption file with no image of the same name "
                                        f"beside it ({', '.join(IMAGE_SUFFIXES)}); rename it "
                                        f"or remove it."})
    for p in images:
        cap_path = p.with_suffix(CAPTION_SUFFIX)
        caption = _caption_text(cap_path.read_bytes()) if cap_path.is_file() else ""
        rel = p.relative_to(path).as_posix()
        sources.append(ImageSource(rel, caption, {"path": str(p)}, _file_reader(p)))
    return ImageCorpus(sources, problems)


def _table_rows(path: Path):
    if path.suffix.lower() == ".csv":
        raw = path.read_bytes().decode("utf-8", errors="replace")
        for rowno, row in enumerate(csv.DictReader(raw.splitlines()), 2):
            yield dict(row), f"{path}:{rowno}"
        return
    yield from _records_jsonl(path, "caption")


def image_table(path: Path) -> ImageCorpus:
    sources, problems = [], []
    seen: set[str] = set()
    for obj, where in _table_rows(path):
        image = obj.get("image")
        if not isinstance(image, str) or not image.strip():
            problems.append({"item": where, "reason": "no_image_path",
                             "message": f"{where}: no 'image' path; give the image file of this "
                                        f"row."})
            continue
        p = Path(image)
        if not p.is_absolute():
            p = path.parent / p
        caption = obj.get("caption") or obj.get("text") or ""
        if not isinstance(caption, str):
            caption = str(caption)
        sid = str(obj.get("id") or image)
        if sid in seen:
            raise CorpusError(f"{where}: duplicate id {sid!r}. Ids must be unique.")
        seen.add(sid)
        meta = {k: v for k, v in obj.items() if k not in ("image", "caption", "text", "id")}
        meta["path"] = str(p)
        sources.append(ImageSource(sid, caption.strip(), meta, _file_reader(p)))
    return ImageCorpus(sources, problems)


def _tar_member_reader(shard: Path, offset: int, size: int) -> Callable[[], bytes]:
    def read() -> bytes:
        with shard.open("rb") as fh:
            fh.seek(offset)
            return fh.read(size)

    return read


def _shard_key(name: str) -> tuple[str, str]:
    """WebDataset key and extension: ``dir/abc.jpg`` -> (``dir/abc``, ``jpg``)."""
    head, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{head}/{stem}" if head else stem), ext.lower()


def webdataset_shards(path: Path) -> ImageCorpus:
    shards = sorted(path.glob("*.tar")) if path.is_dir() else [path]
    if not shards:
        raise CorpusError(f"{path}: no .tar shards found. Give a .tar file or a folder of them.")
    sources, problems = [], []
    for shard in shards:
        groups: dict[str, dict[str, tarfile.TarInfo]] = {}
        try:
            with tarfile.open(shard, "r:") as tar:
                for m in tar:
                    if m.isfile():
                        key, ext = _shard_key(m.name)
                        groups.setdefault(key, {})[ext] = m
        except (tarfile.TarError, OSError) as exc:
            problems.append({"item": shard.name, "reason": "damaged_shard",
                             "message": f"{shard}: not a readable uncompressed tar ({exc}); "
                                        f"its samples are skipped."})
            continue
        with shard.open("rb") as fh:
            for key, members in groups.items():
                image_ext = next((e for e in members if _is_image_name("x." + e)), None)
                caption = ""
                if "txt" in members:
                    m = members["txt"]
                    fh.seek(m.offset_data)
                    caption = _caption_text(fh.read(m.size))
                elif "json" in members:
                    m = members["json"]
                    fh.seek(m.offset_data)
                    try:
                        obj = json.loads(fh.read(m.size))
                        caption = str(obj.get("caption") or obj.get("text") or "").strip() \
                            if isinstance(obj, dict) else ""
                    except (json.JSONDecodeError, UnicodeDecodeError):
                        problems.append({"item": f"{shard.name}/{key}.json",
                                         "reason": "bad_caption",
                                         "message": f"{shard}: {key}.json is not valid JSON; "
                                                    f"the image is kept without a caption."})
                if image_ext is None:
                    if "txt" in members or "json" in members:
                        problems.append({"item": f"{shard.name}/{key}",
                                         "reason": "caption_without_image",
                                         "message": f"{shard}: key {key!r} has a caption but "
                                                    f"no image member."})
                    continue
                m = members[image_ext]
                sources.append(ImageSource(
                    f"{shard.stem}/{key}", caption,
                    {"shard": str(shard), "member": m.name},
                    _tar_member_reader(shard, m.offset_data, m.size)))
    return ImageCorpus(sources, problems)


def stamps_corpus() -> ImageCorpus:
    """Tux Paint stamps with an English description (the first line of ``NAME.txt``)."""
    if not STAMPS_DIR.is_dir():
        raise CorpusError("pkg:stamps needs Debian's tuxpaint-stamps-default: "
                          "`apt-get install tuxpaint-stamps-default`.")
    sources, problems = [], []
    for txt in sorted(STAMPS_DIR.rglob("*.txt")):
        stem = txt.with_suffix("")
        image = next((stem.with_suffix(s) for s in (".png", ".svg")
                      if stem.with_suffix(s).is_file()), None)
        rel = txt.relative_to(STAMPS_DIR).with_suffix("").as_posix()
        if image is None:
            problems.append({"item": rel, "reason": "caption_without_image",
                             "message": f"{txt}: description with no stamp image beside it."})
            continue
        lines = txt.read_text(encoding="utf-8", errors="replace").splitlines()
        caption = lines[0].strip() if lines else ""
        sources.append(ImageSource(f"stamps/{rel}", caption,
                                   {"path": str(image), "package": "tuxpaint-stamps-default"},
                                   _file_reader(image)))
    return ImageCorpus(sources, problems)


_CLIPART_TAIL = re.compile(r"_\d*$")


def openclipart_caption(path: Path) -> str:
    """``animals/birds/acquila_architetto_franc_01.png`` -> ``acquila architetto franc (animals,
    birds)``: the file name's words (title, then the author's name, cut short by upstream), and
    the folder as the category."""
    words = _CLIPART_TAIL.sub("", path.stem).replace("_", " ").replace("-", " ").strip()
    folder = path.parent.relative_to(OPENCLIPART_DIR).as_posix().replace("_", " ")
    return f"{' '.join(words.split())} ({folder.replace('/', ', ')})"


def openclipart_corpus() -> ImageCorpus:
    if not OPENCLIPART_DIR.is_dir():
        raise CorpusError("pkg:openclipart needs Debian's openclipart-png: "
                          "`apt-get install openclipart-png`.")
    sources = []
    for p in sorted(OPENCLIPART_DIR.rglob("*.png")):
        rel = p.relative_to(OPENCLIPART_DIR).as_posix()
        sources.append(ImageSource(f"openclipart/{rel}", openclipart_caption(p),
                                   {"path": str(p), "package": "openclipart-png"},
                                   _file_reader(p)))
    return ImageCorpus(sources)


def fashion_mnist_arrays() -> tuple[np.ndarray, np.ndarray]:
    """(images (70000, 28, 28) uint8, labels (70000,) uint8): train then test split."""
    if not FASHION_DIR.is_dir():
        raise CorpusError("pkg:fashion-mnist needs Debian's dataset-fashion-mnist: "
                          "`apt-get install dataset-fashion-mnist`.")
    xs, ys = [], []
    for split in ("train", "t10k"):
        with gzip.open(FASHION_DIR / f"{split}-images-idx3-ubyte.gz", "rb") as fh:
            raw = fh.read()
        n = int.from_bytes(raw[4:8], "big")
        xs.append(np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(n, 28, 28))
        with gzip.open(FASHION_DIR / f"{split}-labels-idx1-ubyte.gz", "rb") as fh:
            ys.append(np.frombuffer(fh.read(), dtype=np.uint8, offset=8))
    return np.concatenate(xs), np.concatenate(ys)


def _png_bytes(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels, "L").save(buf, format="PNG")
    return buf.getvalue()


def fashion_mnist_corpus(limit: int | None = None) -> ImageCorpus:
    """Fashion-MNIST photos as PNG bytes; caption = class name; id = ``fashion-mnist/<n>``."""
    x, y = fashion_mnist_arrays()
    n = len(x) if limit is None else min(limit, len(x))
    sources = [ImageSource(f"fashion-mnist/{i}", FASHION_CLASSES[int(y[i])],
                           {"package": "dataset-fashion-mnist", "index": i, "label": int(y[i])},
                           (lambda px=x[i]: _png_bytes(px)))
               for i in range(n)]
    return ImageCorpus(sources)


def read_image_corpus(source: str | Path, *, limit: int | None = None) -> ImageCorpus:
    """List the images of a folder, table, tar shard(s) or ``pkg:`` image set (see module doc).

    Raises:
        CorpusError: missing source, unknown format, a table with duplicate ids.
    """
    name = str(source)
    if limit is not None and limit < 1:
        raise CorpusError(f"limit must be >= 1, got {limit}. Leave it out to use every image.")
    if name.startswith("pkg:"):
        loaders = {"stamps": stamps_corpus, "openclipart": openclipart_corpus,
                   "fashion-mnist": lambda: fashion_mnist_corpus(limit)}
        if name[4:] not in loaders:
            raise CorpusError(f"unknown packaged image set {name!r}; expected one of "
                              f"{', '.join('pkg:' + k for k in loaders)}.")
        corpus = loaders[name[4:]]()
    else:
        path = Path(source)
        if not path.exists():
            raise CorpusError(f"image corpus {name!r} does not exist. Pass a folder of images, "
                              f"a CSV/JSONL with an 'image' column, .tar shards, or "
                              f"pkg:{'|pkg:'.join(IMAGE_PACKAGES)}.")
        if path.is_dir():
            corpus = (webdataset_shards(path) if any(path.glob("*.tar"))
                      and not any(_is_image_name(p.name) for p in path.iterdir())
                      else image_folder(path))
        elif path.suffix == ".tar":
            corpus = webdataset_shards(path)
        elif path.suffix.lower() in (".jsonl", ".ndjson", ".json", ".csv"):
            corpus = image_table(path)
        else:
            raise CorpusError(f"image corpus {name!r}: unknown format {path.suffix!r}. Pass a "
                              f"folder, a .csv/.jsonl table with an 'image' column, or .tar "
                              f"shards.")
    if limit is not None:
        corpus.sources = corpus.sources[:limit]
    if not corpus.sources:
        raise CorpusError(f"image corpus {name!r} holds no images"
                          f"{' (' + corpus.problems[0]['message'] + ')' if corpus.problems else ''}"
                          f". Expected files ending in {', '.join(IMAGE_SUFFIXES)}.")
    log.info("listed %d images from %s (%d problems)", len(corpus.sources), name,
             len(corpus.problems))
    return corpus


HELD_OUT_PERCENT = 10
"""Share of the captioned Debian pairs kept out of the image tower's training (by id hash)."""


def is_held_out(sample_id: str) -> bool:
    """True for the pairs the shipped image tower never saw: a fixed function of the id, so the
    training script and the benchmarks agree on the split without a list."""
    import hashlib

    digest = hashlib.sha256(sample_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big") % 100 < HELD_OUT_PERCENT
