"""Per-sample gradients ``g_x = ∇_θ L(f_θ(e_x), ℓ_x)`` of the probe loss, at the converged θ̂.

Two implementations with the same result (the reference is used in tests only):

* :func:`per_sample_grads` — ``torch.func.vmap`` over ``torch.func.grad``; (B, p) in one call.
* :func:`per_sample_grads_loop` — one ``backward`` per sample; obviously correct, slow.

:func:`layer_factors` returns, per linear layer, the input activations (with a constant 1 for the
bias) and the backpropagated output errors, whose outer product is that layer's per-sample
gradient. The Kronecker projector consumes these and never forms ``g`` at all.

The loss here is the plain cross-entropy of one sample: the L2 term belongs to the training
objective (and so to the Hessian), not to a sample's gradient.
"""

from __future__ import annotations

import torch
from torch.func import functional_call, grad, vmap

from .probe import Probe


def param_dict(model: Probe) -> dict[str, torch.Tensor]:
    return {k: v.detach() for k, v in model.named_parameters()}


def flatten(grads: dict[str, torch.Tensor], batch: bool = True) -> torch.Tensor:
    """Concatenate parameter-shaped tensors into one (B, p) (or (p,)) tensor, in parameter order."""
    if batch:
        return torch.cat([g.reshape(g.shape[0], -1) for g in grads.values()], dim=1)
    return torch.cat([g.reshape(-1) for g in grads.values()])


def per_sample_grads(model: Probe, e: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Gradients of each sample's cross-entropy; e (B, d), y (B,) -> (B, p)."""
    params = param_dict(model)

    def sample_loss(p, ei, yi):
        logits = functional_call(model, p, (ei.unsqueeze(0),))  # (1, C)
        return torch.nn.functional.cross_entropy(logits, yi.unsqueeze(0))

    # in_dims: the parameters are shared (None), the sample and its label are batched (0)
    grads = vmap(grad(sample_loss), in_dims=(None, 0, 0))(params, e, y)
    return flatten(grads)


def per_sample_grads_loop(model: Probe, e: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Reference twin of :func:`per_sample_grads`: a Python loop of single-sample backwards."""
    rows = []
    for i in range(e.shape[0]):
        model.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(e[i:i + 1]), y[i:i + 1])
        loss.backward()
        rows.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
    model.zero_grad(set_to_none=True)
    return torch.stack(rows)


def layer_factors(model: Probe, e: torch.Tensor, y: torch.Tensor
                  ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per linear layer: (inputs with a bias 1 (B, in+1), output errors δ (B, out)).

    The per-sample gradient of layer l's ``[W b]`` is ``δ_l ⊗ a_l``: the samples of a batch are
    independent, so the gradient of the summed loss with respect to each pre-activation is the
    per-sample δ.
    """
    acts: list[torch.Tensor] = []
    pre: list[torch.Tensor] = []
    h = e
    layers = model.layers()
    with torch.enable_grad():
        for i, layer in enumerate(layers):
            acts.append(h.detach())
            z = layer(h)
            z.retain_grad()
            pre.append(z)
            h = torch.tanh(z) if i < len(layers) - 1 else z
        loss = torch.nn.functional.cross_entropy(h, y, reduction="sum")
        deltas = torch.autograd.grad(loss, pre)
    ones = torch.ones(e.shape[0], 1, dtype=e.dtype, device=e.device)
    return [(torch.cat([a, ones], dim=1), d.detach()) for a, d in zip(acts, deltas, strict=True)]
