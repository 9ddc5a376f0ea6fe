"""Counterfactual check of an attribution: retrain the probe without the attributed samples.

``removing these k samples moves the model this much``: the probe is warm-started from θ̂ and
run for ``steps`` full-batch L-BFGS iterations (float64) on the regularised training objective
three ways, with identical settings:

* **baseline** — nothing removed. θ̂ is only approximately stationary (the index's probe has
  |∇| ≈ 4e-2), so the steps alone move the query's loss; every effect is measured against this.
* **removed** — without the top-k attributed samples.
* **control** — without k random samples (``controls`` independent draws, excluding the top-k).

``effect = loss(removed) - loss(baseline)``; ``control_effect`` likewise, mean and spread over the
draws. A positive effect well above the controls' means the attributed samples are what holds the
probe's view of the query.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import torch

from .errors import ConfigError, InputError
from .influence_check import polish, query_losses
from .probe import Probe

log = logging.getLogger(__name__)

RANKINGS = ("attribution", "influence")


def counterfactual_effect(model: Probe, e: np.ndarray, y: np.ndarray, e_q: np.ndarray,
                          y_q: np.ndarray, remove: np.ndarray, weight_decay: float,
                          steps: int = 30, controls: int = 3, seed: int = 0) -> dict[str, Any]:
    """Loss of the queries (Q,) after retraining without rows ``remove``, against controls.

    Args:
        model: θ̂, the trained probe (not modified).
        e, y: the training rows (N, d), (N,).
        e_q, y_q: query embeddings (Q, d) and labels (Q,).
        remove: row positions to leave out.
        steps: warm-start L-BFGS iterations for every retrain.
        controls: random draws of ``len(remove)`` rows (outside ``remove``).
    """
    remove = np.unique(np.asarray(remove, dtype=np.int64))
    n = len(e)
    if len(remove) == 0 or remove.min() < 0 or remove.max() >= n:
        raise InputError(f"counterfactual: remove must be 1..{n - 1} row positions in [0, {n}).")
    if len(remove) >= n:
        raise InputError("counterfactual: cannot remove every training row.")
    if steps < 1 or controls < 0:
        raise ConfigError(f"counterfactual: steps must be >= 1 and controls >= 0 (got {steps}, "
                          f"{controls}). Use steps=30, controls=3.")
    t0 = time.perf_counter()
    et = torch.as_tensor(np.asarray(e, dtype=np.float32))
    yt = torch.as_tensor(np.asarray(y, dtype=np.int64))
    eq = torch.as_tensor(np.asarray(e_q, dtype=np.float32)).reshape(-1, et.shape[1])
    yq = torch.as_tensor(np.asarray(y_q, dtype=np.int64)).reshape(-1)

    def run(drop: np.ndarray) -> np.ndarray:
        w = torch.ones(n, dtype=torch.float64)
        w[torch.from_numpy(drop)] = 0.0
        return query_losses(polish(model, et, yt, weight_decay, steps, w), eq, yq)

    before = query_losses(model, eq, yq)
    baseline = run(np.zeros(0, dtype=np.int64))
    removed = run(remove)
    rng = np.random.default_rng(seed)
    pool = np.setdiff1d(np.arange(n), remove)
    ctrl = np.array([run(rng.choice(pool, len(remove), replace=False)) - baseline
                     for _ in range(controls)]).reshape(controls, -1)
    effect = removed - baseline
    out = {
        "k": int(len(remove)), "steps": steps, "rows": n,
        "loss_before": before.tolist(), "loss_baseline": baseline.tolist(),
        "loss_removed": removed.tolist(), "effect": effect.tolist(),
        "control_effects": ctrl.tolist(),
        "control_effect_mean": ctrl.mean(0).tolist() if controls else None,
        "control_effect_std": ctrl.std(0).tolist() if controls else None,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    log.info("counterfactual: k=%d effect %s vs control %s in %.1fs", len(remove),
             np.round(effect, 5), out["control_effect_mean"], out["seconds"])
    return out


def counterfactual(engine, text: str | None, k: int = 10, steps: int = 30, controls: int = 3,
                   rank: str = "attribution", seed: int = 0, *,
                   image: bytes | None = None) -> dict[str, Any]:
    """Retrain ``engine``'s probe without the top-k samples attributed to ``text``.

    ``rank``: ``attribution`` removes the engine's top-k results; ``influence`` removes the k
    most supportive (most negative influence) among the top ``max(50, 5k)`` results.
    ``image``: the query is these image bytes instead of ``text`` (an image index only; pass
    ``text=None``); an :class:`~gif_core.images.ImageError` names an unusable image.
    """
    if (image is None) == (text is None):
        raise InputError("counterfactual: give a text or an image query, not both or neither.")
    if rank not in RANKINGS:
        raise ConfigError(f"counterfactual: rank must be one of {RANKINGS}, got {rank!r}.")
    if k < 1 or k >= len(engine):
        raise InputError(f"counterfactual: k must be in [1, {len(engine) - 1}], got {k}.")
    pool = k if rank == "attribution" else max(50, 5 * k)
    if image is not None:
        from .engine import ImageQuery

        att = engine.attribute_image(image, k=pool, influence=rank == "influence")
        e_y, lab_y, _ = engine.fingerprint_images([ImageQuery.from_source(image).image])
    else:
        att = engine.attribute(text, k=pool, influence=rank == "influence", spans=False)
        e_y, lab_y, _ = engine.fingerprint([text])
    results = att.results
    if rank == "influence":
        results = sorted(results, key=lambda r: r.influence)
    chosen = results[:k]
    rows = np.array([r.row for r in chosen], dtype=np.int64)
    n = len(engine)
    e = np.asarray(engine.embeddings[:n], dtype=np.float32)
    y = np.asarray(engine.labels[:n], dtype=np.int64)
    out = counterfactual_effect(engine.probe, e, y, e_y, lab_y, rows,
                                engine.config.probe.weight_decay, steps, controls, seed)
    out = {key: (v[0] if isinstance(v, list) and len(v) == 1 and key != "control_effects"
                 else v) for key, v in out.items()}
    out["control_effects"] = [c[0] for c in out["control_effects"]]
    out["rank"] = rank
    out["removed"] = [{"row": r.row, "id": r.id, "score": round(r.score, 4),
                       "influence": r.influence} for r in chosen]
    return out
