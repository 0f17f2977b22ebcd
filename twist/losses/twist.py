"""The TWIST objective over the class distributions of several views of one batch.

For a pair of views (a, b) with logits f_a, f_b (B x C):

    consistency = 1/2 [KL(p_a || p_b) + KL(p_b || p_a)],   p = softmax(f)
    sharpness   = 1/2 [H(q_a) + H(q_b)],                   H = mean over rows of the row entropy
    diversity   = 1/2 [H(mean_rows q_a) + H(mean_rows q_b)], q = softmax(f / tau)
    loss        = consistency + (1 + lam1) * sharpness - lam2 * diversity

Every logarithm is log(x + eps). tau enters the entropies but not the consistency term, which is
where the authors' code applies it (identical at the default tau = 1). With more than two views the
pairs are (0, 1), (0, j) and (1, j) for every local view j >= 2, and each term is the plain average
over pairs. Because the entropy terms of a view do not depend on its partner, they are computed once
per view and weighted by how many pairs the view takes part in.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn


def sparse_pairs(num_views: int) -> list[tuple[int, int]]:
    """The reference's pairing: the two global views with each other and with every local view."""
    if num_views < 2:
        raise ValueError(f"TWIST needs at least 2 views, got {num_views}")
    return [(0, 1)] + [(g, j) for j in range(2, num_views) for g in (0, 1)]


def _identity(t: torch.Tensor) -> torch.Tensor:
    return t


class TwistLoss(nn.Module):
    """Consistency + (1 + lam1) x sharpness - lam2 x diversity.

    ``batch_mean`` averages a per-rank mean distribution over the processes that share the batch;
    the default leaves it as is (one process). It must be differentiable.
    """

    def __init__(self, lam1: float = 0.0, lam2: float = 1.0, tau: float = 1.0, eps: float = 1e-5,
                 batch_mean: Callable[[torch.Tensor], torch.Tensor] = _identity):
        super().__init__()
        self.lam1, self.lam2, self.tau, self.eps = lam1, lam2, tau, eps
        self.batch_mean = batch_mean

    def _row_entropy(self, q: torch.Tensor) -> torch.Tensor:
        return -(q * torch.log(q + self.eps)).sum(dim=1).mean()

    def _entropy_of_mean(self, q: torch.Tensor) -> torch.Tensor:
        mean = self.batch_mean(q.mean(dim=0))
        return -(mean * torch.log(mean + self.eps)).sum()

    def _kl(self, p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        return (p * (torch.log(p + self.eps) - torch.log(q + self.eps))).sum(dim=1).mean()

    def forward(self, logits: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        # Softmax, logs and sums in float32 even when the network ran in bf16/fp16.
        logits = [f.float() for f in logits]
        pairs = sparse_pairs(len(logits))
        p = [torch.softmax(f, dim=1) for f in logits]
        q = p if self.tau == 1.0 else [torch.softmax(f / self.tau, dim=1) for f in logits]

        consistency = sum(0.5 * (self._kl(p[a], p[b]) + self._kl(p[b], p[a])) for a, b in pairs) / len(pairs)
        weights = [sum(v in pair for pair in pairs) / (2 * len(pairs)) for v in range(len(logits))]
        sharpness = sum(w * self._row_entropy(qv) for w, qv in zip(weights, q))
        diversity = sum(w * self._entropy_of_mean(qv) for w, qv in zip(weights, q))
        loss = consistency + (1.0 + self.lam1) * sharpness - self.lam2 * diversity
        return {"loss": loss, "consistency": consistency, "sharpness": sharpness, "diversity": diversity}
