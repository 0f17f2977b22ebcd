"""The Barlow Twins objective (Zbontar et al., 2021) on the embeddings of two views.

Each view's embeddings are standardised over the batch (a non-affine batch norm with the batch's
statistics, biased variance), then

    C   = A^T B / N                         (D x D cross-correlation of the standardised A and B, N x D)
    loss = sum_i (1 - C_ii)^2 + lam * sum_{i != j} C_ij^2

The diagonal is a column-wise product, ``C_ii = mean_n A_ni B_ni``. For the off-diagonal sum only
``||C||_F^2`` is needed, and it has two exact forms:

- ``matrix``: form C (N D^2 multiply-adds; across ranks an all-reduce of the D x D matrix);
- ``gram``: ``||A^T B||_F^2 = sum_nm (A A^T)_nm (B B^T)_nm``, from the two N x N Gram matrices
  (2 N^2 D; across ranks an all-gather of A and B, and each rank forms only its own rows).

``gram`` costs 2 N / D of ``matrix`` in arithmetic and about as much in communication, and never
forms a D x D matrix: half at the recipe's N = 2048 and D = 8192, 1/32 at the CPU benchmark's
N = 128. By default the cheaper form is taken: ``gram`` when 2 N <= D.

``batch_mean`` averages its argument over the processes that share the batch and ``gather``
concatenates their rows, both differentiably (one process: the identity). Every rank computes the
loss of the global batch, and with DDP averaging the gradients the result is that loss's exact
gradient. The standardisation and C are computed in float32 (or float64) even inside autocast.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from twist.distributed import world_size
from twist.losses.twist import at_least_float32


def _identity(t: torch.Tensor) -> torch.Tensor:
    return t


class BarlowTwinsLoss(nn.Module):
    def __init__(self, lam: float = 0.0051, eps: float = 1e-5,
                 batch_mean: Callable[[torch.Tensor], torch.Tensor] = _identity,
                 gather: Callable[[torch.Tensor], torch.Tensor] = _identity, form: str = "auto"):
        super().__init__()
        if form not in ("auto", "matrix", "gram"):
            raise ValueError(f"form must be auto, matrix or gram; got '{form}'")
        self.lam, self.eps, self.batch_mean, self.gather, self.form = lam, eps, batch_mean, gather, form

    def standardise(self, z: torch.Tensor) -> torch.Tensor:
        # Two passes (mean, then mean squared deviation): E[z^2] - E[z]^2 cancels catastrophically in
        # float32 when a dimension's mean is large next to its spread, as in a nearly collapsed one.
        mean = self.batch_mean(z.mean(dim=0))
        variance = self.batch_mean((z - mean).pow(2).mean(dim=0))
        return (z - mean) / torch.sqrt(variance + self.eps)

    def squared_norm_of_correlation(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """``||C||_F^2`` for this rank's standardised rows ``a``, ``b`` (the same on every rank)."""
        rows, dim = a.shape
        form = self.form
        if form == "auto":
            form = "gram" if 2 * rows * world_size() <= dim else "matrix"
        if form == "matrix":
            c = self.batch_mean((a.T / rows) @ b)
            return c.pow(2).sum()
        all_a, all_b = self.gather(a), self.gather(b)
        total = all_a.shape[0]
        rows_product = ((a @ all_a.T) * (b @ all_b.T)).sum()  # this rank's rows of (A A^T) * (B B^T)
        return self.batch_mean(rows_product) * (total / rows) / total ** 2

    def forward(self, embeddings: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        if len(embeddings) != 2:
            raise ValueError(f"Barlow Twins compares two views, got {len(embeddings)}")
        with torch.autocast(embeddings[0].device.type, enabled=False):  # the correlation stays in float32
            a, b = (self.standardise(at_least_float32(z)) for z in embeddings)
            diagonal = self.batch_mean((a * b).mean(dim=0))
            squared_norm = self.squared_norm_of_correlation(a, b)
        on_diagonal = (1 - diagonal).pow(2).sum()
        off_diagonal = squared_norm - diagonal.pow(2).sum()
        loss = on_diagonal + self.lam * off_diagonal
        return {"loss": loss, "on_diagonal": on_diagonal, "off_diagonal": off_diagonal}
