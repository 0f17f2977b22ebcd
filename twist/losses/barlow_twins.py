"""The Barlow Twins objective (Zbontar et al., 2021) on the embeddings of two views.

Each view's embeddings are standardised over the batch (a non-affine batch norm with the batch's
statistics, biased variance), then

    C   = z1^T z2 / N                       (D x D cross-correlation, N the global batch)
    loss = sum_i (1 - C_ii)^2 + lam * sum_{i != j} C_ij^2

``batch_mean`` averages its argument over the processes that share the batch, differentiably (one
process: the identity). The statistics and C are such means, so every rank computes the loss of the
global batch, and with DDP averaging the gradients the result is that loss's exact gradient. The
standardisation and C are computed in float32 (or float64) even inside an autocast region.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from twist.losses.twist import at_least_float32


def _identity(t: torch.Tensor) -> torch.Tensor:
    return t


class BarlowTwinsLoss(nn.Module):
    def __init__(self, lam: float = 0.0051, eps: float = 1e-5,
                 batch_mean: Callable[[torch.Tensor], torch.Tensor] = _identity):
        super().__init__()
        self.lam, self.eps, self.batch_mean = lam, eps, batch_mean

    def standardise(self, z: torch.Tensor) -> torch.Tensor:
        # Two passes (mean, then mean squared deviation): E[z^2] - E[z]^2 cancels catastrophically in
        # float32 when a dimension's mean is large next to its spread, as in a nearly collapsed one.
        mean = self.batch_mean(z.mean(dim=0))
        variance = self.batch_mean((z - mean).pow(2).mean(dim=0))
        return (z - mean) / torch.sqrt(variance + self.eps)

    def forward(self, embeddings: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        if len(embeddings) != 2:
            raise ValueError(f"Barlow Twins compares two views, got {len(embeddings)}")
        with torch.autocast(embeddings[0].device.type, enabled=False):  # the correlation stays in float32
            z1, z2 = (self.standardise(at_least_float32(z)) for z in embeddings)
            c = self.batch_mean(z1.T @ z2 / z1.shape[0])
        diagonal = torch.diagonal(c)
        on_diagonal = (1 - diagonal).pow(2).sum()
        off_diagonal = c.pow(2).sum() - diagonal.pow(2).sum()
        loss = on_diagonal + self.lam * off_diagonal
        return {"loss": loss, "on_diagonal": on_diagonal, "off_diagonal": off_diagonal}
