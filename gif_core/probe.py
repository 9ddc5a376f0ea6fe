"""The MLP probe ``f_θ: R^d -> R^C`` (two hidden layers of width h) and its training.

The probe is trained to convergence on (e, ℓ) with an explicit L2 term ``λ/2 |θ|²``: Adam epochs,
then full-batch L-BFGS. Per-sample gradients and influence are taken at the converged θ̂, where
the regularised Hessian is positive definite in practice (``H ⪰ λI`` at a minimum).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .config import ProbeConfig
from .threads import on_one_thread

log = logging.getLogger(__name__)


class Probe(nn.Module):
    """``d -> h -> h -> C`` with tanh activations (smooth, so Hessian-vector products are exact)."""

    def __init__(self, d: int, hidden: int, num_classes: int):
        super().__init__()
        self.fc1 = nn.Linear(d, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, num_classes)

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        return self.fc3(torch.tanh(self.fc2(torch.tanh(self.fc1(e)))))

    def layers(self) -> list[nn.Linear]:
        return [self.fc1, self.fc2, self.fc3]

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


@dataclass
class TrainReport:
    loss: float
    accuracy: float
    grad_norm: float
    seconds: float


def regularised_loss(model: Probe, e: torch.Tensor, y: torch.Tensor, weight_decay: float):
    """Mean cross-entropy plus ``λ/2 |θ|²``: the objective whose minimum θ̂ is."""
    ce = nn.functional.cross_entropy(model(e), y)
    l2 = sum((p * p).sum() for p in model.parameters())
    return ce + 0.5 * weight_decay * l2


@on_one_thread
def train_probe(e: np.ndarray, labels: np.ndarray, num_classes: int, config: ProbeConfig,
                device: torch.device | str = "cpu") -> tuple[Probe, TrainReport]:
    """Train the probe on embeddings (N, d) and pseudo-labels (N,)."""
    t0 = time.perf_counter()
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    x = torch.as_tensor(e, dtype=torch.float32, device=device)
    y = torch.as_tensor(labels, dtype=torch.long, device=device)
    n, d = x.shape
    model = Probe(d, config.hidden, num_classes).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    steps = config.epochs * max(1, -(-n // config.batch_size))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    for _ in range(config.epochs):
        perm = torch.randperm(n, generator=gen).to(device)
        for start in range(0, n, config.batch_size):
            idx = perm[start:start + config.batch_size]
            loss = regularised_loss(model, x[idx], y[idx], config.weight_decay)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()

    # full-batch L-BFGS polishes θ towards a stationary point of the regularised objective
    # (influence functions assume one); float64, since float32 stalls at |∇| ≈ 1e-2 here
    if config.lbfgs_steps:
        model.double()
        x64 = x.double()
        lbfgs = torch.optim.LBFGS(model.parameters(), lr=1.0, max_iter=config.lbfgs_steps,
                                  history_size=20, tolerance_grad=1e-7, tolerance_change=1e-14,
                                  line_search_fn="strong_wolfe")

        def closure():
            lbfgs.zero_grad(set_to_none=True)
            loss = regularised_loss(model, x64, y, config.weight_decay)
            loss.backward()
            return loss

        lbfgs.step(closure)
        model.float()

    model.zero_grad(set_to_none=True)
    loss = regularised_loss(model, x, y, config.weight_decay)
    loss.backward()
    grad_norm = float(torch.sqrt(sum((p.grad ** 2).sum() for p in model.parameters())))
    with torch.no_grad():
        acc = float((model(x).argmax(1) == y).float().mean())
    model.zero_grad(set_to_none=True)
    model.eval()
    report = TrainReport(loss.item(), acc, grad_norm, time.perf_counter() - t0)
    log.info("probe: p=%d loss=%.4f acc=%.3f |∇|=%.2e in %.1fs", model.num_params, report.loss,
             report.accuracy, report.grad_norm, report.seconds)
    return model, report
