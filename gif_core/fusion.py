"""Fusion of evidence channels into one ranking, and the abstention calibration.

Every candidate proposed by any channel (fingerprint ANN, BM25, verbatim shingles) gets the same
feature vector (:data:`FEATURES`); a linear scorer ranks them. Its weights are fitted at build
time on planted-provenance queries generated from the index's own corpus (perturbed copies of
random samples) with a listwise softmax loss: the true source should out-score every other
candidate of its query. A second, two-feature logistic model maps the top candidate's score and
its margin over the runner-up to a calibrated probability that the top candidate is a true source;
it is fitted on the same planted queries plus "null" queries whose true source is masked out,
which stand in for outputs with no source in the index. Its inputs are the top score, the margin
over the runner-up, the top candidate's raw evidence and its semantic margin — how far its
embedding cosine stands above every other candidate's (:data:`CALIBRATION_FEATURES`) — so that a
noisy but unmistakable copy (a big margin, many shared words) and a paraphrase that shares few
words but is far closer in meaning than anything else are not mistaken for a null.

The planted copies are lexically close to their sources, so the full model leans on lexical
evidence and gives an LM paraphrase (few shared words) a low probability even when its meaning
singles out one sample. A second logistic model on the semantic evidence alone (the top
candidate's ``cos_e`` and its ``cos_e_margin``) is fitted on the same queries, and its intercept is
lowered until at most :data:`SEMANTIC_NULL_BUDGET` of the null queries reach 0.5 with it. The
confidence is the larger of the two; below ``threshold`` the engine abstains.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)

FEATURES = (
    "cos_e",        # embedding cosine ê_y·ê_x
    "cos_e_gap",    # cos_e minus the best cos_e among the query's candidates (≤ 0)
    "cos_c",        # gradient-signature cosine ĉ_y·ĉ_x
    "bm25_abs",     # BM25 / BM25 of an ideal match of the query, in [0, 1]
    "bm25_rel",     # BM25 / best BM25 among the candidates, in [0, 1]
    "verbatim",     # fraction of the query's word shingles found in x
    "verbatim_gap", # verbatim minus the best verbatim among the candidates (≤ 0)
    "rr_ann",       # 1 / rank in the fingerprint channel (0 when absent)
    "rr_lexical",   # 1 / rank in the BM25 channel
    "rr_verbatim",  # 1 / rank in the verbatim channel
)


def feature_matrix(cos_e, cos_c, bm25, bm25_ideal, verbatim, rank_ann, rank_lex, rank_verb
                   ) -> np.ndarray:
    """Stack per-candidate evidence (each (K,)) into features (K, len(FEATURES)).

    Ranks are 1-based with 0 meaning "not proposed by that channel".
    """
    def rr(rank):
        rank = np.asarray(rank, dtype=np.float32)
        return np.where(rank > 0, 1.0 / np.maximum(rank, 1), 0.0)

    bm25 = np.asarray(bm25, dtype=np.float32)
    best_bm25 = float(bm25.max()) if bm25.size and bm25.max() > 0 else 1.0
    x = np.stack([
        cos_e,
        cos_e - (cos_e.max() if cos_e.size else 0.0),
        cos_c,
        np.clip(bm25 / max(bm25_ideal, 1e-9), 0.0, 1.0),
        bm25 / best_bm25,
        verbatim,
        verbatim - (verbatim.max() if verbatim.size else 0.0),
        rr(rank_ann), rr(rank_lex), rr(rank_verb),
    ], axis=1).astype(np.float32)
    return x  # (K, F)


CALIBRATION_FEATURES = ("top_score", "margin", "cos_e", "bm25_abs", "verbatim", "cos_e_margin")
_CALIB_FROM_FEATURES = tuple(FEATURES.index(n) for n in CALIBRATION_FEATURES[2:5])
_COS_E = FEATURES.index("cos_e")
SEMANTIC_CALIBRATION = (2, 5)
"""Indices into :data:`CALIBRATION_FEATURES` of the semantic model: cos_e, cos_e_margin."""
SEMANTIC_NULL_BUDGET = 0.01
"""Largest share of build-time null queries the semantic model alone may attribute."""


def calibration_features(scores: np.ndarray, features: np.ndarray) -> np.ndarray:
    """(top score, margin over the runner-up, top candidate's cos_e, bm25_abs, verbatim, and
    its cos_e minus the best cos_e of the other candidates)."""
    order = np.argsort(-scores, kind="stable")
    top = float(scores[order[0]])
    margin = top - float(scores[order[1]]) if len(order) > 1 else top
    cos = features[:, _COS_E]
    others = np.delete(cos, order[0])
    cos_margin = float(cos[order[0]] - others.max()) if others.size else float(cos[order[0]])
    return np.array([top, margin, *features[order[0], list(_CALIB_FROM_FEATURES)], cos_margin],
                    dtype=np.float64)


@dataclass
class Ranker:
    """Linear scorer over :data:`FEATURES` plus the abstention calibration."""

    weights: list[float]
    features: tuple[str, ...] = FEATURES
    calib: list[float] = field(default_factory=lambda: [0.5, 1.0, 4.0, 2.0, 2.0, 8.0, -8.0])
    """Logistic coefficients on :data:`CALIBRATION_FEATURES`, then the intercept. A ranker fitted
    before ``cos_e_margin`` existed has one coefficient fewer and uses the features before it."""
    threshold: float = 0.5
    report: dict[str, Any] = field(default_factory=dict)
    semantic_calib: list[float] = field(default_factory=list)
    """Logistic coefficients on the semantic features (:data:`SEMANTIC_CALIBRATION`), then the
    intercept; empty for rankers fitted before it existed (then only ``calib`` counts)."""
    verify_calib: list[float] = field(default_factory=list)
    """Logistic coefficients on :func:`verify_calibration_features`, then the intercept: the
    image query's confidence; empty means the top verification logit's sigmoid."""
    verify: list[float] = field(default_factory=list)
    """Image indexes: logistic coefficients on the copy-verification features
    (:data:`gif_core.copydetect.VERIFY_FEATURES`), then the intercept: the second stage that
    re-ranks the leading candidates of an image query and gives its confidence. Empty for text
    indexes and for image rankers fitted before it existed."""

    def score(self, x: np.ndarray) -> np.ndarray:
        return x @ np.asarray(self.weights, dtype=np.float32)

    def verify_logits(self, x: np.ndarray) -> np.ndarray:
        """Second-stage logits of verification features (K, len(VERIFY_FEATURES))."""
        w = np.asarray(self.verify, dtype=np.float64)
        return np.asarray(x, dtype=np.float64) @ w[:-1] + w[-1]

    def verify_confidence(self, z: np.ndarray, x: np.ndarray) -> float:
        """P(the top verified candidate is the source), from the second-stage logits ``z``
        and features ``x`` of the verified candidates: the calibration model on
        :func:`verify_calibration_features` when fitted, else the top logit's sigmoid."""
        if not len(z):
            return 0.0
        if self.verify_calib:
            c = np.asarray(self.verify_calib, dtype=np.float64)
            zz = float(verify_calibration_features(z, x) @ c[:-1] + c[-1])
        else:
            zz = float(np.max(z))
        return float(1.0 / (1.0 + np.exp(-zz)))

    def confidence(self, scores: np.ndarray, features: np.ndarray) -> float:
        """P(top candidate is a true source), from all candidates' scores (K,) and features."""
        if scores.size == 0:
            return 0.0
        cf = calibration_features(scores, features)
        coef = np.asarray(self.calib[:-1])
        z = cf[:len(coef)] @ coef + self.calib[-1]
        if self.semantic_calib:
            z_sem = (cf[list(SEMANTIC_CALIBRATION)] @ np.asarray(self.semantic_calib[:-1])
                     + self.semantic_calib[-1])
            z = max(z, float(z_sem))
        return float(1.0 / (1.0 + np.exp(-z)))

    def to_dict(self) -> dict[str, Any]:
        return {"weights": self.weights, "features": list(self.features), "calib": self.calib,
                "threshold": self.threshold, "report": self.report,
                "semantic_calib": self.semantic_calib, "verify": self.verify,
                "verify_calib": self.verify_calib}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Ranker:
        return cls(weights=list(d["weights"]), features=tuple(d["features"]),
                   calib=list(d["calib"]), threshold=float(d["threshold"]),
                   report=dict(d.get("report", {})),
                   semantic_calib=list(d.get("semantic_calib", [])),
                   verify=list(d.get("verify", [])),
                   verify_calib=list(d.get("verify_calib", [])))

    @classmethod
    def default(cls) -> Ranker:
        """Hand-set weights used when a corpus is too small to fit a ranker."""
        w = dict.fromkeys(FEATURES, 0.0)
        w.update(cos_e=4.0, cos_e_gap=4.0, bm25_abs=2.0, bm25_rel=2.0, verbatim=3.0,
                 verbatim_gap=3.0)
        return cls(weights=[w[f] for f in FEATURES], report={"fitted": False},
                   verify=list(DEFAULT_VERIFY))


def fit_ranker(groups: list[tuple[np.ndarray, np.ndarray]], null_groups: list[np.ndarray],
               l2: float = 1e-3, seed: int = 0) -> Ranker:
    """Fit the listwise scorer and its calibration.

    Args:
        groups: per planted query, (features (K, F), is_source (K,) bool) with ≥ 1 source.
        null_groups: per null query, features (K, F) of candidates none of which is a source.
    """
    usable = [(x, y) for x, y in groups if y.any() and len(y) > 1]
    if len(usable) < 20:
        log.warning("only %d planted queries with their source among the candidates; using "
                    "the default fusion weights", len(usable))
        return Ranker.default()
    torch.manual_seed(seed)
    n_feat = usable[0][0].shape[1]
    w = torch.zeros(n_feat, dtype=torch.float64, requires_grad=True)
    xs = [torch.as_tensor(x, dtype=torch.float64) for x, _ in usable]
    ys = [torch.as_tensor(y, dtype=torch.bool) for _, y in usable]
    opt = torch.optim.LBFGS([w], lr=1.0, max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.zeros((), dtype=torch.float64)
        for x, y in zip(xs, ys, strict=True):
            s = x @ w
            # listwise softmax: log-probability mass on the true source(s)
            loss = loss - (torch.logsumexp(s[y], 0) - torch.logsumexp(s, 0))
        loss = loss / len(xs) + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    weights = w.detach().numpy()
    ranker = Ranker(weights=[float(v) for v in weights])

    # calibration: was the top candidate a true source?
    rows, labels = [], []
    for x, y in usable:
        s = x @ weights
        rows.append(calibration_features(s, x))
        labels.append(float(y[np.argmax(s)]))
    for x in null_groups:
        if len(x) == 0:
            continue
        rows.append(calibration_features(x @ weights, x))
        labels.append(0.0)
    x_cal, y_cal = np.asarray(rows), np.asarray(labels)
    ranker.calib = _fit_logistic(x_cal, y_cal)
    p1 = float(np.mean([y[np.argmax(x @ weights)] for x, y in usable]))
    ranker.report = {"fitted": True, "planted_queries": len(usable),
                     "null_queries": len(null_groups), "train_p_at_1": p1}
    if (y_cal == 0).sum() >= 20:
        ranker.semantic_calib, ranker.report["semantic"] = _fit_semantic(x_cal, y_cal)
    log.info("fusion ranker fitted on %d planted + %d null queries, train P@1 %.3f",
             len(usable), len(null_groups), p1)
    return ranker


VERIFY_NULL_BUDGET = 0.01
"""Largest share of build-time null image queries (sources masked) the fitted verification model
may attribute; its intercept is lowered to meet it."""
DEFAULT_VERIFY = (1.0, 4.5, 10.0, -21.0, 6.0, 0.0, -16.5)
"""Second-stage weights (on :data:`gif_core.copydetect.VERIFY_FEATURES`, then the intercept)
for image indexes too small to fit their own: rounded from a fit on planted copies of the
Debian image sets. An aligned copy (grey-level correlation near 1, small colour difference,
many RANSAC inliers) scores above 0, a look-alike below; a query without structure far below."""


def verify_calibration_features(z: np.ndarray, x: np.ndarray) -> np.ndarray:
    """(top logit, its margin over the runner-up, then the top candidate's verification
    features) of one image query's verified candidates."""
    order = np.argsort(-z, kind="stable")
    top = float(z[order[0]])
    margin = top - float(z[order[1]]) if len(order) > 1 else top
    return np.array([top, min(margin, 20.0), *np.asarray(x[order[0]], np.float64)])


def fit_verifier(x_groups: list[np.ndarray], y_groups: list[np.ndarray]
                 ) -> tuple[list[float], list[float], dict[str, float]]:
    """Fit the second stage (pointwise logistic) on the verification features of planted
    image queries' leading candidates; a group whose labels are all 0 is a null query (its
    source masked). Reports the fitted model's P@1 on the planted groups and the share of null
    groups whose top candidate it would attribute (probability >= 0.5)."""
    if not x_groups:
        return list(DEFAULT_VERIFY), [], {"fitted": False}
    x = np.concatenate(x_groups).astype(np.float64)
    y = np.concatenate(y_groups).astype(np.float64)
    if len(set(y.tolist())) < 2:
        return list(DEFAULT_VERIFY), [], {"fitted": False}
    # about one positive in thirty rows and features of very different ranges: a light penalty
    wv = np.asarray(_fit_logistic(x, y, l2=1e-5))
    w = [float(v) for v in wv]
    # the confidence: a logistic model on each query's (top logit, margin, top features),
    # labelled 1 when the top verified candidate is the source; nulls are 0. Its intercept is
    # lowered until at most VERIFY_NULL_BUDGET of the nulls reach 0.5.
    cf, cy, is_null = [], [], []
    for xg, yg in zip(x_groups, y_groups, strict=True):
        z = xg @ wv[:-1] + wv[-1]
        cf.append(verify_calibration_features(z, xg))
        cy.append(float(yg[int(np.argmax(z))]))
        is_null.append(not yg.any())
    cf_a, cy_a, null_a = np.asarray(cf), np.asarray(cy), np.asarray(is_null)
    calib: list[float] = []
    shift = 0.0
    if len(set(cy)) == 2:
        c = np.asarray(_fit_logistic(cf_a, cy_a, l2=1e-4))
        if null_a.any():
            zc = cf_a[null_a] @ c[:-1] + c[-1]
            shift = max(0.0, float(np.quantile(zc, 1 - VERIFY_NULL_BUDGET)))
            if shift > 0:
                c[-1] -= shift + 1e-6
        calib = [float(v) for v in c]
    conf_z = (cf_a @ np.asarray(calib[:-1]) + calib[-1]) if calib else cf_a[:, 0]
    hits, attributed, null_attr, n_pos, n_null = 0, 0, 0, 0, 0
    for j, yg in enumerate(y_groups):
        if yg.any():
            n_pos += 1
            hits += bool(cy_a[j])
            attributed += bool(cy_a[j]) and bool(conf_z[j] >= 0)
        else:
            n_null += 1
            null_attr += bool(conf_z[j] >= 0)
    report = {"fitted": True, "planted": n_pos, "nulls": n_null,
              "train_p_at_1": round(hits / max(n_pos, 1), 4),
              "planted_attributed": round(attributed / max(n_pos, 1), 4),
              "intercept_shift": round(shift, 4),
              "null_attributed": round(null_attr / max(n_null, 1), 4)}
    log.info("copy verification fitted on %d planted + %d null image queries: train P@1 %.3f, "
             "nulls attributed %.3f", n_pos, n_null, report["train_p_at_1"],
             report["null_attributed"])
    return w, calib, report


def _fit_semantic(x: np.ndarray, y: np.ndarray) -> tuple[list[float], dict[str, float]]:
    """The semantic-only model, its intercept lowered so that at most
    :data:`SEMANTIC_NULL_BUDGET` of the nulls (y = 0) reach 0.5."""
    xs = x[:, list(SEMANTIC_CALIBRATION)]
    coef = np.asarray(_fit_logistic(xs, y))
    z = xs @ coef[:-1] + coef[-1]
    shift = max(0.0, float(np.quantile(z[y == 0], 1 - SEMANTIC_NULL_BUDGET)))
    coef[-1] -= shift + 1e-6
    z = z - shift - 1e-6
    return [float(v) for v in coef], {
        "intercept_shift": round(shift, 4),
        "null_attributed": round(float((z[y == 0] >= 0).mean()), 4),
        "planted_attributed": round(float((z[y == 1] >= 0).mean()), 4)}


def _fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1e-3) -> list[float]:
    if len(set(y.tolist())) < 2:
        return Ranker.default().calib
    xt = torch.as_tensor(np.hstack([x, np.ones((len(x), 1))]), dtype=torch.float64)
    yt = torch.as_tensor(y, dtype=torch.float64)
    w = torch.zeros(xt.shape[1], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w], lr=1.0, max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(xt @ w, yt)
        loss = loss + l2 * (w[:-1] * w[:-1]).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return [float(v) for v in w.detach()]
