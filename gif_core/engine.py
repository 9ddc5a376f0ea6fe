"""The engine: ``build()`` an index directory, ``Engine.load(dir).attribute(text)`` to query it.

Build (each stage timed, progress reported through a callback)::

    samples ─► encode e (N, d) ─► k-means ℓ ─► probe θ̂ ─► c = P g (N, m)
            ─► h = [ê ; α·ĉ] ─► FAISS ─► BM25 + verbatim shingles ─► fusion ranker ─► manifest

Query::

    text ─► e_y, ℓ_y, c_y, h_y ─► candidates from ANN, BM25 and verbatim (K each)
         ─► per-candidate evidence ─► fused score ─► influence (one iHVP, K dot products)
         ─► calibrated confidence / abstention ─► top-k results with spans
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import faiss
import numpy as np
import torch
from numpy.lib.format import open_memmap
from safetensors.torch import load_file, save_file

from . import __version__, ann
from .config import BuildConfig
from .copydetect import VERIFY_FEATURES, CopyDescriptor, CopyStore, describe
from .data import Sample
from .encoders import ImageEncoder, TextEncoder, resolve_device
from .errors import ConfigError, GIFError, IndexFormatError, InputError
from .fusion import FEATURES, Ranker, feature_matrix, fit_ranker, fit_verifier
from .influence import EKFAC, HessianOperator, InfluenceScorer
from .labels import assign, fit_centroids
from .lexical import LexicalIndex
from .perceptual import PerceptualIndex, image_hashes
from .pipeline import (
    ChunkWorker,
    LocalExecutor,
    WorkFolder,
    build_key,
    check_disk,
    chunk_bounds,
    estimate_bytes,
    sample_rows,
)
from .probe import Probe, TrainReport, train_probe
from .projection import make_projector
from .store import (
    FORMAT_VERSION,
    MANIFEST,
    SampleStore,
    Timer,
    atomic_directory,
    building_folder,
    check_files,
    dir_bytes,
    file_sizes,
    load_array,
    read_manifest,
    write_json_atomic,
    write_samples,
)
from .threads import single_thread
from .verbatim import VerbatimIndex, find_spans

if TYPE_CHECKING:
    from .image_data import ImageCorpus

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]
"""progress(stage, done, total): called as build stages advance."""

MAX_QUERY_CHARS = 1_000_000
REMOVED = "removed.npy"
"""Sorted int64 rows taken down by ``gif remove``; no channel returns them."""
MAX_EXTRA_SPARSE = 10_000
"""Extra BM25 / verbatim hits fetched so that K remain after dropping removed rows."""
HVP_SAMPLE = 50_000
"""Training rows kept in memory for Hessian–vector products (a seeded subsample above this)."""
RANKER_KINDS = ("word_drop", "typos", "prefix", "chatty", "ocr", "synonym", "sentence_shuffle",
                "exact", "rewrite")
VERIFY_TOP = 30
"""Image queries: the first stage's leading candidates checked by copy verification."""
VERIFY_PROPOSALS = 10
"""Image queries: the nearest window-hash proposals checked by copy verification too (a crop's
source can rank low in the first stage yet have a window that matches it)."""
IMAGE_RANKER_QUERIES = 300
"""Planted perturbed copies (and masked-source nulls) that fit an image index's ranker; each
costs a decode and an encoder pass, so fewer than the text default."""
TEXT_TO_IMAGE_KINDS = ("exact", "word_drop", "typos", "synonym")
"""Perturbations of captions that fit an image index's text → image ranker."""
SKIPPED_LISTED = 1000
"""Skipped images listed one by one in an image index's manifest (all are counted)."""
EMBED_DIM_GUESS = 1024
"""Embedding dims assumed by the disk estimate when the encoder runs remotely (an upper bound
for the supported text encoders)."""
VOCAB_ENTRY_BYTES = 100
"""RAM of one lexical vocabulary entry (a short str key and an int in a Python dict)."""
SNIPPET_CHARS = 300
SEMANTIC_HINT = 0.7
"""Embedding cosine above which an abstention names the nearest sample in meaning (display
only; it changes neither the ranking nor the abstention). MiniLM paraphrase pairs mostly score
above it, unrelated texts on the same broad topic mostly below."""


def _noop(stage: str, done: int, total: int) -> None:
    pass


def library_versions() -> dict[str, str]:
    import transformers

    return {"gif": __version__, "torch": torch.__version__, "faiss": faiss.__version__,
            "transformers": transformers.__version__, "numpy": np.__version__,
            "python": platform.python_version()}


def make_fingerprints(e: np.ndarray, c: np.ndarray, alpha: float, embedding: bool = True
                      ) -> np.ndarray:
    """``h = [ê ; α·ĉ]`` with both parts unit-normalised; (N, d+m) float32, or (N, m) if
    ``embedding`` is False (gradient-only ablation)."""
    c = np.asarray(c, dtype=np.float32)
    c_hat = c / np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-12)
    if not embedding:
        return np.ascontiguousarray(c_hat)
    e = np.asarray(e, dtype=np.float32)
    e_hat = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    if alpha == 0:
        return np.ascontiguousarray(e_hat)
    return np.ascontiguousarray(np.hstack([e_hat, alpha * c_hat]))


def make_faiss_index(xb: np.ndarray, factory: str, ef_search: int = 128, nprobe: int = 0):
    """A trained, filled FAISS index over ``xb`` (N, D) in RAM (small corpora and tests)."""
    index = ann.new_index(xb.shape[1], factory)
    ann.train(index, xb[ann.train_sample_rows(len(xb))])
    index.add(np.ascontiguousarray(xb, dtype=np.float32))
    ann.tune(index, ef_search, nprobe)
    return index


@dataclass
class Result:
    id: str
    row: int
    """Position of the sample in the index (FAISS id)."""
    rank: int
    score: float
    """Fused ranking score (higher = more likely the source)."""
    sha256: str
    snippet: str
    channels: list[str]
    similarity: float
    gradient_similarity: float
    bm25: float
    verbatim: float
    influence: float | None = None
    influence_normalised: float | None = None
    spans: list[dict[str, Any]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Attribution:
    query_sha256: str
    results: list[Result]
    confidence: float
    abstained: bool
    timings_ms: dict[str, float]
    index_version: int = 1
    solver: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def verdict(self, *, image: bool = False) -> tuple[str, str]:
        """(headline, detail) in words for a person: the source found, or why GIF abstains.
        ``image``: the query was a picture, so the evidence is named in image terms."""
        conf = f"confidence {self.confidence:.0%}"
        if not self.results:
            return f"No confident source ({conf})", "No candidate was found."
        top = self.results[0]
        if image:
            if not self.abstained:
                return (f"Source found: {top.id} ({conf})",
                        f"Found by {', '.join(top.channels)} and confirmed by copy "
                        f"verification; perceptual-hash similarity {top.verbatim:.2f}; "
                        f"embedding similarity {top.similarity:.2f}.")
            return (f"No confident source ({conf})",
                    f"The nearest indexed image, {top.id}, has perceptual-hash similarity "
                    f"{top.verbatim:.2f} and embedding similarity {top.similarity:.2f}, but copy "
                    f"verification does not single it out: a look-alike rather than a copy, or "
                    f"a picture with too little structure to verify (blank, one colour). The "
                    f"candidates are shown for inspection.")
        if not self.abstained:
            shared = sum(s["query_end"] - s["query_start"] for s in top.spans)
            return (f"Source found: {top.id} ({conf})",
                    f"Found by {', '.join(top.channels)}; {shared:,} characters in shared "
                    f"passages; similarity {top.similarity:.2f}.")
        if top.spans:
            return (f"No confident source ({conf})",
                    f"{top.id} shares passages with the text, but not enough to tell it from "
                    f"other samples; the candidates are shown for inspection.")
        if top.similarity >= SEMANTIC_HINT:
            return (f"No confident source ({conf}); nearest in meaning: {top.id}",
                    f"{top.id} is close in meaning (similarity {top.similarity:.2f}) but shares "
                    f"no passage with the text: a paraphrase of it and independent text on the "
                    f"same topic cannot be told apart.")
        return (f"No confident source ({conf})",
                "None of the candidates is likely to be where this text came from; they are "
                "shown for inspection.")


@dataclass
class Candidates:
    """Every candidate any channel proposed for one query, with its evidence (K rows)."""

    rows: np.ndarray
    features: np.ndarray
    cos_e: np.ndarray
    cos_c: np.ndarray
    bm25: np.ndarray
    verbatim: np.ndarray
    channels: list[list[str]]
    e_y: np.ndarray
    c_y: np.ndarray
    label_y: int


@dataclass
class ImageQuery:
    """A query image, decoded, with the hash of its bytes and its perceptual hashes."""

    image: Any
    """RGB ``PIL.Image``."""
    sha256: str
    phash: np.uint64
    dhash: np.uint64
    copy: CopyDescriptor | None = None
    """Copy-detection descriptor (:mod:`gif_core.copydetect`): window hashes, keypoints and a
    thumbnail, for crop-tolerant proposals and the verification stage."""

    @classmethod
    def from_source(cls, source: bytes | str | Path | Any) -> ImageQuery:
        """From bytes or a path (decoded by :func:`gif_core.images.decode_image`; an
        :class:`~gif_core.images.ImageError` names any problem) or a decoded PIL image (hashed
        over its RGB pixels)."""
        from .images import decode_image

        if isinstance(source, (bytes, bytearray, str, Path)):
            decoded = decode_image(source)
            image, sha = decoded.image, decoded.sha256
        elif hasattr(source, "convert") and hasattr(source, "size"):
            image = source.convert("RGB")
            sha = hashlib.sha256(image.tobytes()).hexdigest()
        else:
            raise InputError(f"image query must be bytes, a path or a PIL image, got "
                             f"{type(source).__name__}.")
        ph, dh = image_hashes(image)
        return cls(image, sha, ph, dh, describe(image, variants=True))


def validate_text(text: Any) -> str:
    if not isinstance(text, str):
        raise InputError(f"query text must be a string, got {type(text).__name__}.")
    if not text.strip():
        raise InputError("query text is empty or whitespace only. Paste the model output to trace.")
    if len(text) > MAX_QUERY_CHARS:
        raise InputError(f"query text has {len(text):,} characters; the limit is "
                         f"{MAX_QUERY_CHARS:,}. Split it and query the parts.")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        # lone surrogates: what undecodable bytes become on a command line or in JSON
        raise InputError(f"query text is not valid Unicode (character {exc.start} is a lone "
                         f"surrogate, typically from bytes that are not UTF-8). Re-encode the "
                         f"text as UTF-8.") from None
    return text


class Engine:
    """A loaded index: encoder, probe, FAISS index, evidence channels and the fusion ranker."""

    def __init__(self, directory: str | Path, *, device: str = "auto",
                 encoder: TextEncoder | None = None, _building: bool = False):
        self.directory = Path(directory)
        if _building:
            self.manifest = json.loads((self.directory / "manifest.partial.json").read_text())
        else:
            self.manifest = read_manifest(self.directory)
            check_files(self.directory, self.manifest)
        try:
            self._open(device, encoder)
        except (OSError, RuntimeError, ValueError, KeyError) as exc:
            if isinstance(exc, GIFError):
                raise
            raise IndexFormatError(
                f"index {str(self.directory)!r} cannot be opened: {type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}. A file is damaged or missing; "
                f"rebuild it with `gif build`.") from exc

    def _open(self, device: str, encoder: TextEncoder | None) -> None:
        self.config = BuildConfig.from_dict(self.manifest["config"])
        self.device = resolve_device(device)
        d = self.directory
        self.samples = SampleStore(d)
        self.embeddings = load_array(d, "embeddings.npy")
        self.grad_proj = load_array(d, "grad_proj.npy")
        self.labels = load_array(d, "labels.npy")
        self.centroids = load_array(d, "centroids.npy", mmap_mode=None)
        n = len(self.samples)
        if not (len(self.embeddings) == len(self.grad_proj) == len(self.labels) == n):
            raise IndexFormatError(f"index {str(d)!r} is inconsistent: {n} samples but "
                                   f"{len(self.embeddings)} embeddings. Rebuild it.")
        pc = self.config.probe
        self.probe = Probe(self.embeddings.shape[1], pc.hidden, len(self.centroids))
        self.probe.load_state_dict(load_file(str(d / "probe.safetensors")))
        self.probe.eval()
        self.projector = make_projector(self.probe, self.config.projection)
        ic = self.config.index
        self.faiss = ann.read_index(str(d / "fingerprints.faiss"), mmap=ic.mmap)
        removed_path = d / REMOVED
        self.removed = (load_array(d, REMOVED, mmap_mode=None).astype(np.int64)
                        if removed_path.exists() else np.zeros(0, dtype=np.int64))
        self.ann = ann.FingerprintSearcher(self.faiss, self.fingerprint_rows,
                                           ann.SearchParams(ic.ef_search, ic.nprobe),
                                           rerank=ic.rerank, removed=self.removed)
        self.modality = self.manifest.get("modality", "text")
        # image indexes have BM25 only when some image has a caption, and perceptual hashes in
        # the place of the shingle channel
        self.lexical = LexicalIndex.load(d / "lexical") if (d / "lexical").is_dir() else None
        self.verbatim = VerbatimIndex.load(d / "verbatim") if self.modality == "text" else None
        self.perceptual = (PerceptualIndex.load(d / "perceptual") if self.modality == "image"
                           else None)
        self.copies: CopyStore | None = None
        if self.modality == "image":
            if (d / "copydetect").is_dir():
                self.copies = CopyStore.load(d / "copydetect")
            else:
                log.warning("image index %s has no copy-detection data (built by an older GIF): "
                            "queries are ranked without copy verification. Rebuild the index "
                            "for crop- and rotation-tolerant matching.", d)
        ranker_path = d / "ranker.json"
        self.ranker = (Ranker.from_dict(json.loads(ranker_path.read_text()))
                       if ranker_path.exists() else Ranker.default())
        text_ranker_path = d / "ranker_text.json"
        self.text_ranker = (Ranker.from_dict(json.loads(text_ranker_path.read_text()))
                            if text_ranker_path.exists()
                            else self.ranker if self.modality == "text" else Ranker.default())
        if encoder is not None and getattr(encoder, "modality", "text") != self.modality:
            raise ConfigError(f"index {str(d)!r} holds {self.modality}s but the encoder passed "
                              f"in is a {encoder.modality} encoder.")
        if encoder is None:
            encoder = (ImageEncoder(self.config.encoder) if self.modality == "image"
                       else TextEncoder(self.config.encoder))
        self.encoder = encoder
        expected = self.manifest.get("encoder", {}).get("weights_sha256")
        if expected and self.encoder.weights_sha256 not in (expected, "unknown"):
            raise IndexFormatError(
                f"index {str(d)!r} was built with encoder weights {expected[:12]}…, but the "
                f"loaded encoder {self.encoder.name!r} has {self.encoder.weights_sha256[:12]}…. "
                f"Install the encoder the index was built with, or rebuild the index.")
        self._influence: InfluenceScorer | None = None

    @classmethod
    def load(cls, directory: str | Path, *, warm: bool = True, **kwargs) -> Engine:
        """Open an index directory. ``warm`` runs one throw-away query so that the first real
        query does not pay for lazy initialisation (thread pools, the Hessian operator)."""
        engine = cls(directory, **kwargs)
        if warm:
            engine.attribute("warm-up query for the provenance engine", k=1, spans=False)
            if engine.modality == "image":
                from PIL import Image

                engine.attribute_image(Image.new("RGB", (64, 64), (128, 128, 128)), k=1)
        return engine

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def manifest_sha256(self) -> str:
        return hashlib.sha256((self.directory / MANIFEST).read_bytes()).hexdigest()

    # -- fingerprints ---------------------------------------------------------------------

    def fingerprint(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Encode texts exactly as at build time: (e (B, d), labels (B,), c (B, m)).

        On an image index the texts go through the image encoder's text side (the shared
        space), for text → image queries."""
        return self._fingerprint_e(self.encoder.encode(list(texts)))

    def fingerprint_images(self, images: Sequence) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Encode decoded RGB images exactly as at build time: (e, labels, c)."""
        if self.modality != "image":
            raise InputError(f"index {str(self.directory)!r} holds texts; an image query needs "
                             f"an image index (`gif build IMAGE_FOLDER --out INDEX`).")
        return self._fingerprint_e(self.encoder.encode_images(list(images)))

    def _fingerprint_e(self, e: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Stage B on embeddings (B, d), the same for every modality: label, gradient, c."""
        labels = assign(e, self.centroids)
        with torch.no_grad(), single_thread():
            c = self.projector.project(self.probe, torch.from_numpy(e),
                                       torch.from_numpy(labels)).numpy()
        return e, labels, c

    def fingerprint_rows(self, rows: np.ndarray) -> np.ndarray:
        """Stored fingerprints ``h`` of ``rows`` (sorted for a front-to-back read), float32;
        only these rows are read from the memory-mapped stores."""
        fp = self.config.fingerprint
        e = self.embeddings[rows]
        c = self.grad_proj[rows] if (fp.alpha or not fp.embedding) else e[:, :1]
        return make_fingerprints(e, c, fp.alpha, fp.embedding)

    # -- candidates and evidence ----------------------------------------------------------

    def candidates(self, query: str | ImageQuery, timer: Timer, k_cand: int,
                   exclude: set[int] | None = None,
                   fingerprint: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
                   ) -> Candidates:
        """Candidates from the ANN, BM25 and near-copy channels (``k_cand`` each) and their
        features. ``exclude`` drops rows (used to simulate outputs with no source);
        ``fingerprint`` passes a precomputed (e, label, c) to skip the encoder.

        ``query`` is a text, or an :class:`ImageQuery` on an image index. The third channel is
        the verbatim shingle index for texts and the perceptual-hash index for images; a text
        on an image index uses ANN (shared space) and BM25 over the captions.
        """
        image = query if isinstance(query, ImageQuery) else None
        text = None if image is not None else query
        with timer.stage("encode"):
            if fingerprint is None:
                fingerprint = (self.fingerprint_images([image.image]) if image is not None
                               else self.fingerprint([text]))
            e_y, lab_y, c_y = fingerprint
        fp = self.config.fingerprint
        h_y = make_fingerprints(e_y, c_y, fp.alpha, fp.embedding)
        empty = np.zeros(0, dtype=np.int64)
        # removed samples (takedowns) are excluded inside the ANN search; the sparse channels
        # ask for as many extra rows as could be dropped, up to a bound
        extra = min(len(self.removed), MAX_EXTRA_SPARSE)
        with timer.stage("ann"):
            _, found = self.ann.search(h_y, k_cand + (len(exclude) if exclude else 0))
        ann_rows = found[0][found[0] >= 0]
        with timer.stage("lexical"):
            lex = (self.lexical.search(text, k_cand + extra)[1]
                   if text is not None and self.lexical else empty)
        with timer.stage("verbatim" if image is None else "phash"):
            if image is not None and self.copies is not None and image.copy is not None:
                near = self.copies.propose(image.copy, k_cand, self.removed)
            elif image is not None:
                near = self.perceptual.search(image.phash, image.dhash, k_cand + extra)[1]
            elif self.verbatim is not None:
                near = self.verbatim.search(text, k_cand + extra)[1]
            else:
                near = empty
        with timer.stage("fuse"):
            if len(self.removed):
                lex = lex[~np.isin(lex, self.removed)][:k_cand]
                near = near[~np.isin(near, self.removed)][:k_cand]
            if exclude:
                ann_rows = ann_rows[~np.isin(ann_rows, list(exclude))][:k_cand]
                lex = lex[~np.isin(lex, list(exclude))]
                near = near[~np.isin(near, list(exclude))]
            ann = ann_rows
            rows = np.unique(np.concatenate([ann, lex, near]).astype(np.int64))
            rank_of = []
            for found in (ann, lex, near):
                r = np.zeros(len(rows), dtype=np.int64)
                pos = {int(row): i + 1 for i, row in enumerate(found)}
                for j, row in enumerate(rows):
                    r[j] = pos.get(int(row), 0)
                rank_of.append(r)
            emb = np.asarray(self.embeddings[rows], dtype=np.float32)
            cos_e = emb @ (e_y[0] / max(np.linalg.norm(e_y[0]), 1e-12))
            cp = np.asarray(self.grad_proj[rows], dtype=np.float32)
            cp /= np.maximum(np.linalg.norm(cp, axis=1, keepdims=True), 1e-12)
            cos_c = cp @ (c_y[0] / max(np.linalg.norm(c_y[0]), 1e-12))
            if text is not None and self.lexical is not None:
                bm25 = self.lexical.score_rows(text, rows).astype(np.float32)
                ideal = self.lexical.max_score(text)
            else:
                bm25, ideal = np.zeros(len(rows), dtype=np.float32), 1.0
            # the near-copy evidence: shingle coverage for texts, hash similarity for images
            if image is not None:
                verbatim = self.perceptual.similarity_rows(image.phash, image.dhash, rows
                                                           ).astype(np.float32)
            elif self.verbatim is not None:
                verbatim = self.verbatim.coverage_rows(text, rows).astype(np.float32)
            else:
                verbatim = np.zeros(len(rows), dtype=np.float32)
            feats = feature_matrix(cos_e, cos_c, bm25, ideal, verbatim, *rank_of)
            names = ("ann", "lexical", "verbatim" if self.modality == "text" else "phash")
            channels = [[names[c] for c in range(3) if rank_of[c][j] > 0]
                        for j in range(len(rows))]
        return Candidates(rows, feats, cos_e, cos_c, bm25, verbatim, channels, e_y[0],
                          c_y[0], int(lab_y[0]))

    # -- influence ------------------------------------------------------------------------

    def influence_scorer(self) -> InfluenceScorer:
        if self._influence is None:
            n = len(self)
            # removed samples stay in: the probe θ̂ was trained with them, and the curvature is
            # that of the probe's training objective
            rows = np.arange(n)
            if n > HVP_SAMPLE:
                rows = np.sort(np.random.default_rng(0).choice(n, HVP_SAMPLE, replace=False))
            e = torch.from_numpy(np.asarray(self.embeddings[rows], dtype=np.float32))
            y = torch.from_numpy(np.asarray(self.labels[rows], dtype=np.int64))
            scale = self.config.influence.scale or self.manifest["influence"]["scale"]
            ekfac = None
            path = self.directory / "ekfac.safetensors"
            if self.config.influence.solver == "ekfac" and path.exists():
                ekfac = EKFAC.from_state_dict(self.probe, load_file(str(path)))
            self._influence = InfluenceScorer(self.probe, e, y, self.config.probe.weight_decay,
                                              self.config.influence, scale, ekfac)
        return self._influence

    def influence_for(self, e_y: np.ndarray, label_y: int, rows: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        """Influence of the samples at ``rows`` on a query with embedding ``e_y`` (d,).

        Returns raw influence ``-g_yᵀ H⁻¹ g_x`` (K,), its normalised support score (K,) and the
        solver's report.
        """
        with single_thread():
            scorer = self.influence_scorer()
            e_c = torch.from_numpy(np.asarray(self.embeddings[rows], dtype=np.float32))
            y_c = torch.from_numpy(np.asarray(self.labels[rows], dtype=np.int64))
            infl, infl_n, rep = scorer.score(torch.from_numpy(np.asarray(e_y, np.float32)),
                                             torch.tensor(int(label_y)), e_c, y_c)
        return infl, infl_n, {"name": rep.solver, "iterations": rep.iterations,
                              "restarts": rep.restarts,
                              "scale": rep.scale if math.isfinite(rep.scale) else None}

    # -- query ----------------------------------------------------------------------------

    def attribute(self, text: str, *, k: int = 10, candidates: int | None = None,
                  influence: bool = True, spans: bool = True) -> Attribution:
        """Rank the training samples this text most likely came from.

        On an image index the text is matched against the images through the shared space and
        against their captions (text → image).

        Args:
            text: the model output to trace.
            k: results returned.
            candidates: K, candidates taken from each channel (default from the index config).
            influence: compute influence evidence for the returned results.
            spans: compute the shared verbatim spans of the returned results.
        """
        text = validate_text(text)
        return self._attribute(text, hashlib.sha256(text.encode("utf-8")).hexdigest(),
                               self.text_ranker, k=k, candidates=candidates,
                               influence=influence, spans=spans)

    def attribute_image(self, image: bytes | str | Path | Any, *, k: int = 10,
                        candidates: int | None = None, influence: bool = True) -> Attribution:
        """Rank the indexed images this image most likely came from (image index only).

        Args:
            image: image bytes, a path, or a decoded PIL image.

        Raises:
            ImageError: the image cannot be decoded (empty, truncated, over the pixel limit,
                not an image); the message names the problem and the fix.
        """
        if self.modality != "image":
            raise InputError(f"index {str(self.directory)!r} holds texts; an image query needs "
                             f"an image index (`gif build IMAGE_FOLDER --out INDEX`).")
        if k < 1:
            raise InputError(f"k must be >= 1, got {k}.")
        timer = Timer()
        t0 = time.perf_counter()
        with timer.stage("decode"):
            query = ImageQuery.from_source(image)
        return self._attribute(query, query.sha256, self.ranker, k=k, candidates=candidates,
                               influence=influence, spans=False, timer=timer, t0=t0)

    def _attribute(self, query: str | ImageQuery, query_sha256: str, ranker: Ranker, *, k: int,
                   candidates: int | None, influence: bool, spans: bool,
                   timer: Timer | None = None, t0: float | None = None) -> Attribution:
        if k < 1:
            raise InputError(f"k must be >= 1, got {k}.")
        timer = timer or Timer()
        t0 = time.perf_counter() if t0 is None else t0
        cand = self.candidates(query, timer, candidates or self.config.index.candidates)
        with timer.stage("rank"):
            scores = ranker.score(cand.features)
            order = np.argsort(-scores, kind="stable")
            confidence = ranker.confidence(scores, cand.features)
        if self._verifies(query, ranker):
            with timer.stage("verify"):
                order, scores, confidence = self._verify_stage(query, cand, order, ranker, k)
        top = order[:k]
        infl = infl_n = None
        solver: dict[str, Any] = {}
        if influence and len(top):
            with timer.stage("influence"):
                infl, infl_n, solver = self.influence_for(cand.e_y, cand.label_y, cand.rows[top])
        text = query if isinstance(query, str) else None
        results = []
        with timer.stage("results"):
            for i, j in enumerate(top):
                row = int(cand.rows[j])
                rec = self.samples.record(row)
                found = ([asdict(s) for s in find_spans(text, rec["text"])]
                         if spans and text is not None and rec["text"] else [])
                snippet = rec["text"] or rec.get("meta", {}).get("path", "")
                results.append(Result(
                    id=rec["id"], row=row, rank=i + 1, score=float(scores[j]), sha256=rec["sha256"],
                    snippet=snippet[:SNIPPET_CHARS], channels=cand.channels[j],
                    similarity=float(cand.cos_e[j]), gradient_similarity=float(cand.cos_c[j]),
                    bm25=float(cand.bm25[j]), verbatim=float(cand.verbatim[j]),
                    influence=None if infl is None else float(infl[i]),
                    influence_normalised=None if infl_n is None else float(infl_n[i]),
                    spans=found, meta=rec.get("meta", {})))
        timer.ms["total"] = (time.perf_counter() - t0) * 1000
        return Attribution(
            query_sha256=query_sha256, results=results,
            confidence=confidence, abstained=confidence < ranker.threshold,
            timings_ms={k_: round(v, 3) for k_, v in timer.ms.items()},
            index_version=int(self.manifest.get("index_version", 1)), solver=solver)

    def _verifies(self, query: Any, ranker: Ranker) -> bool:
        return (isinstance(query, ImageQuery) and query.copy is not None
                and self.copies is not None and len(ranker.verify) == len(VERIFY_FEATURES) + 1)

    @staticmethod
    def verify_rows(cand: Candidates, order: np.ndarray, k: int) -> np.ndarray:
        """Positions (into ``cand``) that the verification stage checks: the first stage's top
        ``max(k, VERIFY_TOP)`` and the ``VERIFY_PROPOSALS`` nearest window-hash proposals."""
        head = order[:max(k, VERIFY_TOP)]
        rr_near = cand.features[:, FEATURES.index("rr_verbatim")]
        near = np.flatnonzero(rr_near >= 1.0 / VERIFY_PROPOSALS)
        return np.concatenate([head, near[~np.isin(near, head)]])

    def _verify_stage(self, query: ImageQuery, cand: Candidates, order: np.ndarray,
                      ranker: Ranker, k: int) -> tuple[np.ndarray, np.ndarray, float]:
        """Second stage for image queries: geometric verification of the leading candidates
        (:mod:`gif_core.copydetect`), scored by the ranker's ``verify`` model. Returns the new
        order (verified candidates by that score, then the rest as before), per-candidate
        scores (the verification logit; unchecked candidates keep a score below all checked
        ones) and the confidence from the ranker's verification calibration."""
        pos = self.verify_rows(cand, order, k)
        feats = self.copies.verify(query.copy, cand.rows[pos])
        z = ranker.verify_logits(feats)
        ranked = pos[np.argsort(-z, kind="stable")]
        rest = order[~np.isin(order, pos)]
        scores = np.full(len(cand.rows), float(z.min()) - 1.0 if len(z) else 0.0,
                         dtype=np.float64)
        scores[pos] = z
        confidence = ranker.verify_confidence(z, feats)
        return np.concatenate([ranked, rest]), scores, confidence

    def info(self) -> dict[str, Any]:
        out = dict(self.manifest)
        out["bytes_on_disk"] = dir_bytes(self.directory)
        return out


# -- build ---------------------------------------------------------------------------------


def _fill(executor_results, store_chunk, work: WorkFolder, stage: str, progress: Progress,
          n_chunks: int, done_before: int) -> None:
    """Write each finished chunk through ``store_chunk`` and mark it done (flush first, so a
    chunk marked done is on disk)."""
    done = done_before
    for item in executor_results:
        store_chunk(*item)
        work.mark_done(stage, item[0])
        done += 1
        progress(stage, done, n_chunks)


def _check_samples(samples: Sequence[Sample]) -> None:
    if len(samples) < 2:
        raise InputError(f"the corpus has {len(samples)} usable sample(s); at least 2 are needed.")
    ids = [s.id for s in samples]
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        dup = next(i for i in ids if i in seen or seen.add(i))
        raise InputError(f"duplicate sample id {dup!r}. Ids must be unique.")


def _check_clusters(config: BuildConfig, n: int) -> None:
    n_clusters = config.labels.resolve(n)
    if n < n_clusters:
        raise InputError(f"the corpus has {n} samples, fewer than the {n_clusters} clusters asked "
                         f"for. Pass --clusters {max(2, n // 4)} or fewer, or add samples.")


def build(samples: Sequence[Sample], out: str | Path, config: BuildConfig | None = None, *,
          progress: Progress | None = None, encoder: TextEncoder | None = None,
          corpus_name: str = "", executor=None) -> dict[str, Any]:
    """Build an index directory from text samples, streaming and resumable (see
    :mod:`gif_core.pipeline`); atomic (a failure leaves ``out`` untouched).

    Args:
        executor: runs the per-chunk encode and fingerprint work; a
            :class:`~gif_core.pipeline.LocalExecutor` by default, or the Ray executor of
            :func:`gif_core.distributed.ray_executor`.

    Returns:
        The manifest written to ``out/manifest.json``.
    """
    config = config or BuildConfig()
    progress = progress or _noop
    _check_samples(samples)
    _check_clusters(config, len(samples))
    timer = Timer()
    t_start = time.perf_counter()
    texts = [s.text for s in samples]
    n = len(samples)
    with timer.stage("load_encoder"):
        if executor is None:
            executor = LocalExecutor(ChunkWorker(config.encoder, encoder))
        encoder = encoder or getattr(getattr(executor, "worker", None), "encoder", None)
    d_emb = encoder.dim if encoder is not None else EMBED_DIM_GUESS

    def embed(work: WorkFolder, chunks: list[tuple[int, int]]) -> None:
        todo = [i for i in range(len(chunks)) if not work.is_done("encode", i)]
        if not todo:
            return
        gen = executor.encode((i, texts[slice(*chunks[i])]) for i in todo)
        # the first finished chunk (any chunk, on Ray) tells the embedding width
        i0, e0 = next(gen)
        e32 = work.array("e32", (n, e0.shape[1]), np.float32)

        def store_e(i, e, out=e32):
            out[slice(*chunks[i])] = e
            out.flush()

        store_e(i0, e0)
        work.mark_done("encode", i0)
        progress("encode", len(chunks) - len(todo) + 1, len(chunks))
        _fill(gen, store_e, work, "encode", progress, len(chunks), len(chunks) - len(todo) + 1)

    def write_channels(tmp: Path, work: WorkFolder) -> None:
        for name, cls in (("lexical", LexicalIndex), ("verbatim", VerbatimIndex)):
            with timer.stage(name):
                progress(name, 0, 1)
                if not work.is_done(name):
                    (tmp / name).mkdir(exist_ok=True)
                    cls.build_to(tmp / name, texts)  # in bounded memory, batch by batch
                    work.mark_done(name)
                progress(name, 1, 1)

    def fit_rankers(engine: Engine) -> dict[str, Ranker]:
        return {"ranker.json": fit_build_ranker(engine, samples, config.ranker_queries, progress)}

    return _build_index(samples, out, config, executor, encoder, modality="text", embed=embed,
                        disk_estimate=estimate_bytes(n, sum(len(t) for t in texts), d_emb,
                                                     config.projection.dim),
                        write_channels=write_channels, fit_rankers=fit_rankers, extra={},
                        progress=progress, timer=timer, t_start=t_start, corpus_name=corpus_name)


def build_images(corpus: ImageCorpus, out: str | Path, config: BuildConfig | None = None, *,
                 progress: Progress | None = None, encoder: ImageEncoder | None = None,
                 corpus_name: str = "") -> dict[str, Any]:
    """Build an index of images (with optional captions) through the same Stage A/B as text.

    Each image is read and decoded once (:func:`gif_core.images.decode_image`); one that
    cannot be used (unreadable, empty, truncated, not an image, over the pixel limit) is skipped
    and listed under ``skipped`` in the manifest with its reason, next to the problems found
    while listing the corpus (a caption without an image). The evidence channels are the
    fingerprint ANN, perceptual hashes (:mod:`gif_core.perceptual`) and, when captions exist,
    BM25 over the captions. Two fusion rankers are fitted: on perturbed copies of indexed
    images (``ranker.json``) and on perturbed captions (``ranker_text.json``, text → image).

    ``config.encoder.name`` left at the text default means the default image tower.
    """
    import dataclasses

    from .config import DEFAULT_IMAGE_ENCODER, DEFAULT_TEXT_ENCODER
    from .images import ImageError, decode_image

    config = config or BuildConfig()
    if config.encoder.name == DEFAULT_TEXT_ENCODER:
        config = dataclasses.replace(
            config, encoder=dataclasses.replace(config.encoder, name=DEFAULT_IMAGE_ENCODER))
    progress = progress or _noop
    timer = Timer()
    t_start = time.perf_counter()
    with timer.stage("load_encoder"):
        encoder = encoder or ImageEncoder(config.encoder)
    sources = corpus.sources
    skipped: list[dict[str, str]] = list(corpus.problems)
    kept: list[int] = []
    samples: list[Sample] = []
    hashes: list[tuple[np.uint64, np.uint64]] = []
    copies: list[CopyDescriptor] = []
    chunks: list[np.ndarray] = []
    seen_ids: set[str] = set()
    done = 0
    with timer.stage("encode"):
        for start in range(0, len(sources), config.chunk_size):
            images = []
            for i in range(start, min(len(sources), start + config.chunk_size)):
                src = sources[i]
                if src.id in seen_ids:
                    raise InputError(f"duplicate image id {src.id!r}. Ids must be unique.")
                seen_ids.add(src.id)
                try:
                    decoded = decode_image(src.read(), where=src.id)
                except ImageError as exc:
                    skipped.append({"item": src.id, "reason": exc.reason, "message": str(exc)})
                    log.warning("skipped %s", exc)
                    continue
                meta = dict(src.meta)
                meta.update(width=decoded.width, height=decoded.height, format=decoded.format)
                samples.append(Sample(src.id, src.caption, decoded.sha256, meta))
                hashes.append(image_hashes(decoded.image))
                copies.append(describe(decoded.image))
                images.append(decoded.image)
                kept.append(i)
            if images:
                chunks.append(encoder.encode_images(images))
            done = min(len(sources), start + config.chunk_size)
            progress("encode", done, len(sources))
    _check_samples(samples)
    _check_clusters(config, len(samples))
    e = np.concatenate(chunks)
    texts = [s.text for s in samples]
    captioned = sum(1 for t in texts if t.strip())
    kept_sources = [sources[i] for i in kept]

    def write_channels(tmp: Path, work: WorkFolder) -> None:
        with timer.stage("phash"):
            PerceptualIndex(np.array([h[0] for h in hashes], dtype=np.uint64),
                            np.array([h[1] for h in hashes], dtype=np.uint64)
                            ).save(tmp / "perceptual")
        with timer.stage("copydetect"):
            CopyStore.save(copies, tmp / "copydetect")
        if captioned:
            with timer.stage("lexical"):
                (tmp / "lexical").mkdir()
                LexicalIndex.build_to(tmp / "lexical", texts)

    def fit_rankers(engine: Engine) -> dict[str, Ranker]:
        n_img = min(config.ranker_queries, IMAGE_RANKER_QUERIES)
        out = {"ranker.json": fit_image_ranker(engine, kept_sources, n_img, progress)}
        if captioned:
            out["ranker_text.json"] = fit_caption_ranker(engine, samples,
                                                         min(config.ranker_queries,
                                                             IMAGE_RANKER_QUERIES), progress)
        return out

    reasons: dict[str, int] = {}
    for item in skipped:
        reasons[item["reason"]] = reasons.get(item["reason"], 0) + 1
    extra = {"images": {"listed": len(sources), "indexed": len(samples), "captioned": captioned,
                        "skipped": len(skipped), "skipped_reasons": reasons,
                        "skipped_items": skipped[:SKIPPED_LISTED]}}
    if skipped:
        log.warning("%d of %d images skipped: %s", len(skipped), len(sources), reasons)
    def embed(work: WorkFolder, chunks: list[tuple[int, int]]) -> None:
        # images were decoded and encoded above (skips decide which rows exist); stored whole
        e32 = work.array("e32", e.shape, np.float32)
        e32[:] = e
        e32.flush()
        for i in range(len(chunks)):
            work.mark_done("encode", i)

    executor = LocalExecutor(ChunkWorker(config.encoder, encoder))
    return _build_index(samples, out, config, executor, encoder, modality="image", embed=embed,
                        disk_estimate=estimate_bytes(len(samples), sum(len(t) for t in texts),
                                                     e.shape[1], config.projection.dim),
                        write_channels=write_channels, fit_rankers=fit_rankers, extra=extra,
                        progress=progress, timer=timer, t_start=t_start, corpus_name=corpus_name)


def _build_index(samples: Sequence[Sample], out: str | Path, config: BuildConfig, executor,
                 encoder: Any, *, modality: str,
                 embed: Callable[[WorkFolder, list[tuple[int, int]]], None], disk_estimate: int,
                 write_channels: Callable[[Path, WorkFolder], None],
                 fit_rankers: Callable[[Engine], dict[str, Ranker]], extra: dict[str, Any],
                 progress: Progress, timer: Timer, t_start: float, corpus_name: str
                 ) -> dict[str, Any]:
    """Stage A/B for every modality, streaming and resumable: ``embed`` fills the work
    folder's ``e32`` (N, d) chunk by chunk; then pseudo-labels, the probe, labels and projected
    gradients per chunk, FAISS, the modality's evidence channels (``write_channels``), stores,
    curvature and EK-FAC factors, rankers (``fit_rankers``) and the manifest."""
    n = len(samples)
    weights_sha = executor.weights_sha256()
    out = Path(out)
    check_disk(out, disk_estimate, f"building {n:,} samples")
    key = build_key(samples, config, weights_sha, __version__)
    chunks = chunk_bounds(n, config.chunk_size)
    mine = building_folder(out.resolve(), key)
    stale = [p for p in mine.parent.glob(f".{out.name}.building-*") if p != mine]
    if stale:
        log.warning("unfinished builds of other corpora or settings are left next to %s: %s; "
                    "delete them if they will not be resumed", out, ", ".join(map(str, stale)))

    with atomic_directory(out, resume_key=key) as tmp:
        work = WorkFolder(tmp)
        write_json_atomic(tmp / "build_key.json", {"key": key, "samples": n})

        # pass 1: embeddings
        with timer.stage("encode"):
            embed(work, chunks)
            e32 = np.load(work.work / "e32.npy", mmap_mode="r")
            d = e32.shape[1]

        # driver: centroids and probe on seeded samples
        with timer.stage("labels"):
            progress("labels", 0, 1)
            if work.is_done("centroids"):
                centroids = np.load(work.work / "centroids.npy")
            else:
                centroids = fit_centroids(e32, config.labels)
                np.save(work.work / "centroids.npy", centroids)
                work.mark_done("centroids")
            progress("labels", 1, 1)
        with timer.stage("probe"):
            progress("probe", 0, 1)
            probe = Probe(d, config.probe.hidden, len(centroids))
            if work.is_done("probe"):
                probe.load_state_dict(load_file(str(work.work / "probe.safetensors")))
                report = TrainReport(**work.load_json("probe_report.json"))
            else:
                rows = sample_rows(n, config.probe.sample_size, config.probe.seed)
                e_s = np.asarray(e32[rows], dtype=np.float32)
                probe, report = train_probe(e_s, assign(e_s, centroids), len(centroids),
                                            config.probe, executor_device(encoder))
                probe = probe.cpu()
                del e_s
                save_file({k: v.contiguous() for k, v in probe.state_dict().items()},
                          str(work.work / "probe.safetensors"))
                work.save_json("probe_report.json", asdict(report))
                work.mark_done("probe")
            probe.eval()
            progress("probe", 1, 1)

        # pass 2: labels and gradient projections with the one trained probe
        with timer.stage("gradients"):
            projector = make_projector(probe, config.projection)
            m = projector.dim
            labels_w = work.array("labels", (n,), np.int32)
            c32 = work.array("c32", (n, m), np.float32)
            todo = [i for i in range(len(chunks)) if not work.is_done("fingerprint", i)]
            if todo:
                state = {k: v.detach().numpy() for k, v in probe.state_dict().items()}
                executor.set_probe(state, d, len(centroids), config.probe, config.projection,
                                   centroids)

                def store_c(i, lab, c, out_l=labels_w, out_c=c32):
                    out_l[slice(*chunks[i])] = lab
                    out_c[slice(*chunks[i])] = c
                    out_l.flush()
                    out_c.flush()

                _fill(executor.fingerprint((i, np.asarray(e32[slice(*chunks[i])]))
                                           for i in todo),
                      store_c, work, "fingerprint", progress, len(chunks),
                      len(chunks) - len(todo))
            del labels_w, c32
            labels = np.load(work.work / "labels.npy", mmap_mode="r")
            c32 = np.load(work.work / "c32.npy", mmap_mode="r")

        with timer.stage("faiss"):
            progress("faiss", 0, n)
            fpc = config.fingerprint
            dim = int(make_fingerprints(e32[:1], c32[:1], fpc.alpha, fpc.embedding).shape[1])
            factory = config.index.resolve(n, dim)
            if not work.is_done("faiss"):
                index = ann.new_index(dim, factory)
                rows = ann.train_sample_rows(n)
                ann.train(index, make_fingerprints(e32[rows], c32[rows], fpc.alpha,
                                                   fpc.embedding))
                ann.add_chunks(index, (make_fingerprints(e32[a:b], c32[a:b], fpc.alpha,
                                                         fpc.embedding) for a, b in chunks),
                               lambda done: progress("faiss", done, n))
                faiss.write_index(index, str(tmp / "fingerprints.faiss"))
                ann_ram = ann.ram_bytes(index)
                work.save_json("ann.json", {"ram_bytes": ann_ram,
                                            "compressed": ann.is_compressed(index)})
                del index
                work.mark_done("faiss")
            ann_info = work.load_json("ann.json")
            progress("faiss", n, n)
        write_channels(tmp, work)
        with timer.stage("store"):
            write_samples(tmp, samples)
            for name, src, dtype in (("embeddings.npy", e32, np.float16),
                                     ("grad_proj.npy", c32, np.float16),
                                     ("labels.npy", labels, np.int32)):
                dst = open_memmap(tmp / name, mode="w+", dtype=dtype, shape=src.shape)
                for a, b in chunks:
                    dst[a:b] = src[a:b]
                dst.flush()
                del dst
            np.save(tmp / "centroids.npy", centroids)
            save_file({k: v.contiguous() for k, v in probe.state_dict().items()},
                      str(tmp / "probe.safetensors"))
            (tmp / "probe.safetensors").chmod(0o644)
        with timer.stage("curvature"):
            rows = sample_rows(n, HVP_SAMPLE, 0)
            op = HessianOperator(probe, torch.from_numpy(np.asarray(e32[rows], np.float32)),
                                 torch.from_numpy(np.asarray(labels[rows], np.int64)),
                                 config.probe.weight_decay, config.influence.damping,
                                 config.influence.curvature)
            lam_max = op.top_eigenvalue(iters=20)
            # EK-FAC factors (the default solver's), a few hundred KB, so queries need no setup
            ekfac = EKFAC(probe, torch.from_numpy(np.asarray(e32[rows], np.float32)),
                          config.probe.weight_decay, config.influence.damping)
            save_file(ekfac.state_dict(), str(tmp / "ekfac.safetensors"))
            (tmp / "ekfac.safetensors").chmod(0o644)
        del e32, c32, labels
        work.remove()
        (tmp / "build_key.json").unlink()
        manifest: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "index_version": 1,
            "modality": modality,
            "corpus": corpus_name,
            "created_unix": time.time(),
            "config": config.to_dict(),
            "versions": library_versions(),
            "encoder": {"name": config.encoder.name if encoder is None else encoder.name,
                        "dim": int(d), "weights_sha256": weights_sha},
            "counts": {"samples": n, "clusters": int(len(centroids)),
                       "probe_params": probe.num_params, "projection_dim": int(m),
                       "fingerprint_dim": dim, "removed": 0},
            "faiss_factory": factory,
            "ann": {"compressed": bool(ann_info["compressed"]),
                    "rerank": config.index.rerank if ann_info["compressed"] else 1,
                    "ram_bytes": int(ann_info["ram_bytes"])},
            "build": {"engine": executor.name, "chunks": len(chunks)},
            "probe": asdict(report),
            "influence": {"lambda_max": lam_max,
                          "scale": 1.1 * (lam_max + config.influence.damping)},
            "build_ms": {},
            "changes": [{"version": 1, "action": "build", "unix": time.time(), "samples": n,
                         "corpus": corpus_name}],
            **extra,
        }
        write_json_atomic(tmp / "manifest.partial.json", manifest)

        with timer.stage("ranker"):
            engine = Engine(tmp, encoder=encoder, _building=True)
            rankers = fit_rankers(engine)
            for name, ranker in rankers.items():
                write_json_atomic(tmp / name, ranker.to_dict())
        manifest["ranker"] = rankers["ranker.json"].report
        if "ranker_text.json" in rankers:
            manifest["ranker_text"] = rankers["ranker_text.json"].report
        manifest["build_ms"] = {k: round(v, 1) for k, v in timer.ms.items()}
        manifest["build_ms"]["total"] = round((time.perf_counter() - t_start) * 1000, 1)
        manifest["bytes_on_disk"] = dir_bytes(tmp)
        (tmp / "manifest.partial.json").unlink()
        manifest["bytes_per_sample"] = channel_bytes(tmp, manifest)
        manifest["files"] = file_sizes(tmp)
        write_json_atomic(tmp / MANIFEST, manifest)
    log.info("built %s: %d samples in %.1fs", out, n, manifest["build_ms"]["total"] / 1000)
    return manifest


def executor_device(encoder: TextEncoder | None) -> str:
    """Device the driver trains the probe on: the encoder's, or CPU when encoding ran remotely."""
    return encoder.device if encoder is not None else "cpu"


def channel_bytes(directory: Path, manifest: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Bytes per sample of each channel, on disk and in RAM once the index is open.

    RAM counts what an open :class:`Engine` keeps in anonymous memory; memory-mapped files (the
    stores, an IVF index's lists, the lexical and verbatim postings) count as disk, since the
    kernel pages in only what queries touch and may drop it again. The lexical channel's
    vocabulary is a Python dict, about :data:`VOCAB_ENTRY_BYTES` per term.
    """
    from . import lexical, verbatim

    d = Path(directory)
    n = max(1, int(manifest["counts"]["samples"]))

    def size(*names: str) -> int:
        return sum((d / x).stat().st_size for x in names if (d / x).exists())

    vocab = 0
    vocab_path = d / "lexical" / "vocab.index.json"
    if vocab_path.exists():
        vocab = len(json.loads(vocab_path.read_text(encoding="utf-8")))
    ann_ram = int(manifest.get("ann", {}).get("ram_bytes", size("fingerprints.faiss")))
    out = {
        "ann": {"disk": size("fingerprints.faiss"), "ram": ann_ram},
        "stores": {"disk": size("embeddings.npy", "grad_proj.npy", "labels.npy"), "ram": 0},
        "samples": {"disk": size("samples.jsonl", "sample_offsets.npy"), "ram": 0},
        "lexical": {"disk": lexical.nbytes_on_disk(d / "lexical"),
                    "ram": vocab * VOCAB_ENTRY_BYTES},
        "verbatim": {"disk": verbatim.nbytes_on_disk(d / "verbatim"), "ram": 0},
    }
    return {k: {"disk": round(v["disk"] / n, 2), "ram": round(v["ram"] / n, 2)}
            for k, v in out.items()}


def refit_ranker(directory: str | Path, n_queries: int | None = None, *,
                 progress: Progress | None = None) -> dict[str, Any]:
    """Fit the fusion ranker of an existing index again (after an upgrade of the ranker) and
    write ``ranker.json`` and the manifest atomically; the index version is incremented.
    """
    engine = Engine(directory)
    if engine.modality != "text":
        raise ConfigError(f"index {str(directory)!r} holds {engine.modality}s; refitting its "
                          f"rankers needs the original images. Rebuild it with `gif build`.")
    n_queries = engine.config.ranker_queries if n_queries is None else n_queries
    samples = [Sample(r["id"], r["text"], r["sha256"])
               for r in engine.samples.records()]
    ranker = fit_build_ranker(engine, samples, n_queries, progress or _noop)
    d = engine.directory
    write_json_atomic(d / "ranker.json", ranker.to_dict())
    manifest = dict(engine.manifest)
    manifest["ranker"] = ranker.report
    manifest["index_version"] = int(manifest.get("index_version", 1)) + 1
    manifest.setdefault("changes", []).append({"version": manifest["index_version"],
                                               "action": "refit-ranker", "unix": time.time(),
                                               "queries": n_queries})
    manifest["files"] = file_sizes(d)
    write_json_atomic(d / MANIFEST, manifest)
    return manifest


def fit_build_ranker(engine: Engine, samples: Sequence[Sample], n_queries: int,
                     progress: Progress) -> Ranker:
    """Fit the fusion ranker on planted perturbed copies of the index's own samples."""
    from .queries import perturb

    if n_queries == 0 or len(samples) < 50:
        return Ranker.default()
    rng = np.random.default_rng(12345)
    rows = rng.choice(len(samples), size=min(n_queries, len(samples)), replace=False)
    planted: list[tuple[int, int, str]] = []
    for i, row in enumerate(rows):
        kind = RANKER_KINDS[i % len(RANKER_KINDS)]
        try:
            text = perturb(samples[row].text, kind, seed=int(row) * 31 + i)
        except InputError:
            continue
        if text.strip():
            planted.append((i, int(row), text))
    # one batched encoder pass for all planted queries (the encoder dominates the cost)
    fps = engine.fingerprint([t for _, _, t in planted])
    return _fit_on_planted(engine, planted, fps, progress)


def _fit_on_planted(engine: Engine, planted: Sequence[tuple[int, Any, Any]],
                    fps: tuple[np.ndarray, np.ndarray, np.ndarray], progress: Progress,
                    stage: str = "ranker") -> Ranker:
    """Fit a ranker on planted queries ``(i, source rows, query)`` with their fingerprints.

    ``source rows`` is one row or an array of rows that all count as the source. Every third
    query has its sources masked: a stand-in for outputs with no source in the index."""
    e, lab, c = fps
    groups, nulls = [], []
    kept: list[tuple[Any, Candidates, np.ndarray, bool]] = []
    k_cand = engine.config.index.candidates
    for j, (i, src, query) in enumerate(planted):
        timer = Timer()
        fp = (e[j:j + 1], lab[j:j + 1], c[j:j + 1])
        src_rows = np.atleast_1d(np.asarray(src, dtype=np.int64))
        if i % 3 == 2:
            cand = engine.candidates(query, timer, k_cand, exclude=set(src_rows.tolist()),
                                     fingerprint=fp)
            if len(cand.rows):
                nulls.append(cand.features)
                kept.append((query, cand, src_rows, True))
        else:
            cand = engine.candidates(query, timer, k_cand, fingerprint=fp)
            groups.append((cand.features, np.isin(cand.rows, src_rows)))
            kept.append((query, cand, src_rows, False))
        progress(stage, j + 1, len(planted))
    ranker = fit_ranker(groups, nulls)
    image_queries = [item for item in kept if isinstance(item[0], ImageQuery)
                     and item[0].copy is not None and len(item[1].rows)]
    if image_queries and engine.copies is not None:
        # the second stage: copy verification of each planted query's leading candidates
        xs, ys = [], []
        for j, (query, cand, src_rows, masked) in enumerate(image_queries):
            order = np.argsort(-ranker.score(cand.features), kind="stable")
            rows = cand.rows[engine.verify_rows(cand, order, 1)]
            sources = set(src_rows.tolist())
            # the same picture stored again under another id is as much the source: a copy
            # cannot tell them apart, and counting it wrong would teach the model to distrust
            # a perfect match; in a masked (null) query such a row is left out instead
            same = np.array([int(r) in sources
                             or any(engine.copies.same_picture(int(s), int(r)) for s in src_rows)
                             for r in rows], dtype=bool)
            if masked:
                rows, same = rows[~same], np.zeros(int((~same).sum()), dtype=bool)
            if len(rows):
                xs.append(engine.copies.verify(query.copy, rows))
                ys.append(same)
            progress("verify", j + 1, len(image_queries))
        ranker.verify, ranker.verify_calib, ranker.report["verify"] = fit_verifier(xs, ys)
    return ranker


def fit_image_ranker(engine: Engine, sources: Sequence[Any], n_queries: int,
                     progress: Progress) -> Ranker:
    """Fit an image index's ranker on perturbed copies (crop, resize, JPEG, rotation, noise)
    of its own images; ``sources[row]`` is the :class:`~gif_core.image_data.ImageSource` of
    each row, read and decoded again for the queries picked."""
    from .image_queries import IMAGE_KINDS, perturb_image
    from .images import ImageError, decode_image

    if n_queries == 0 or len(sources) < 50:
        return Ranker.default()
    # an image stored twice (same bytes under two ids) is a source under either id
    same_bytes: dict[str, list[int]] = {}
    for r, rec in enumerate(engine.samples.records()):
        same_bytes.setdefault(rec["sha256"], []).append(r)
    sha_of = [rec["sha256"] for rec in engine.samples.records()]
    rng = np.random.default_rng(12345)
    rows = rng.choice(len(sources), size=min(n_queries, len(sources)), replace=False)
    planted: list[tuple[int, np.ndarray, ImageQuery]] = []
    for i, row in enumerate(rows):
        try:
            image = decode_image(sources[row].read(), where=sources[row].id).image
        except ImageError:
            continue  # the file changed since it was indexed
        kind = IMAGE_KINDS[i % len(IMAGE_KINDS)]
        query = ImageQuery.from_source(perturb_image(image, kind, seed=int(row) * 31 + i))
        planted.append((i, np.asarray(same_bytes[sha_of[int(row)]]), query))
        progress("ranker", i + 1, 2 * len(rows))
    fps = engine.fingerprint_images([q.image for _, _, q in planted])
    return _fit_on_planted(engine, planted, fps, progress)


def fit_caption_ranker(engine: Engine, samples: Sequence[Sample], n_queries: int,
                       progress: Progress) -> Ranker:
    """Fit an image index's text → image ranker on perturbed captions of its own images; all
    images that share the caption count as its source."""
    from .queries import perturb

    rows_with = [r for r, s in enumerate(samples) if s.text.strip()]
    if n_queries == 0 or len(rows_with) < 50:
        return Ranker.default()
    by_caption: dict[str, list[int]] = {}
    for r in rows_with:
        by_caption.setdefault(samples[r].text, []).append(r)
    rng = np.random.default_rng(12345)
    picked = rng.choice(rows_with, size=min(n_queries, len(rows_with)), replace=False)
    planted: list[tuple[int, np.ndarray, str]] = []
    for i, row in enumerate(picked):
        caption = samples[int(row)].text
        kind = TEXT_TO_IMAGE_KINDS[i % len(TEXT_TO_IMAGE_KINDS)]
        try:
            text = perturb(caption, kind, seed=int(row) * 31 + i)
        except InputError:
            continue
        if text.strip():
            planted.append((i, np.asarray(by_caption[caption]), text))
    fps = engine.fingerprint([t for _, _, t in planted])
    return _fit_on_planted(engine, planted, fps, progress, stage="ranker_text")
