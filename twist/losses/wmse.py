"""The W-MSE objective (Ermolov et al., 2021): whiten the embeddings, then pull positives together.

For each of ``w_iter`` random splits of the batch into sub-batches of ``w_size`` rows (the same split
for every view), every sub-batch of every view is whitened by Cholesky whitening:

    x_c = x - mean(x);  S = x_c^T x_c / (n - 1);  S <- (1 - w_eps) S + w_eps I;  S = L L^T;  w = x_c L^-T

and the loss is, over every pair of the views (d views give d(d-1)/2 pairs), the normalised MSE
``2 - 2 mean_i cos(w_i, w'_i)`` (or the plain MSE), averaged over pairs and splits.

The decomposition always runs in float32 or float64, whatever the autocast. A covariance Cholesky
cannot factor raises :class:`WhiteningError` instead of letting a NaN train on. ``gather`` collects
the embeddings of every process that shares the batch (differentiably; one process: the identity),
so the loss is that of the global batch; the splits come from ``generator``, which every process
seeds alike, and apply to the rows ordered by ``keys`` (the samples' dataset indices) when given, so
that the sub-batches do not depend on how the batch is spread over processes.
"""
from __future__ import annotations

from itertools import combinations
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn


class WhiteningError(RuntimeError):
    """A sub-batch covariance that is not positive definite (Cholesky failed)."""


def _identity(t: torch.Tensor) -> torch.Tensor:
    return t


def cholesky_whiten(x: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """Rows of ``x`` (n x d) whitened with the Cholesky factor of their covariance, in >= float32."""
    whitened, failure = _whiten(x, eps)
    raise_if_failed(failure, *x.shape)
    return whitened


def _whiten(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The whitened rows and a failure code on ``x``'s device (0 fine, 1 non-finite input, 2 Cholesky
    failed), so that a caller whitening many sub-batches reads one code per step, not one per sub-batch."""
    with torch.autocast(x.device.type, enabled=False):  # an enclosing autocast would run the matmuls in half
        x = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        n, d = x.shape
        centred = x - x.mean(dim=0, keepdim=True)
        covariance = centred.T @ centred / (n - 1)
        covariance = (1 - eps) * covariance + eps * torch.eye(d, dtype=x.dtype, device=x.device)
        factor, info = torch.linalg.cholesky_ex(covariance)
        whitened = torch.linalg.solve_triangular(factor, centred.T, upper=False).T
    failure = torch.where(~torch.isfinite(x).all(), 1, torch.where((info != 0) | ~torch.isfinite(factor).all(), 2, 0))
    return whitened, failure


def raise_if_failed(failure: torch.Tensor, n: int, d: int) -> None:
    code = int(failure)  # the one host read
    if code == 1:
        raise WhiteningError("the embeddings to whiten contain NaN or infinite values: training diverged before "
                             "the whitening (lower optim.lr, or use bf16 rather than fp16)")
    if code == 2:
        raise WhiteningError(
            f"the covariance of a sub-batch of {n} embeddings of dimension {d} is not positive definite "
            f"(Cholesky failed): raise wmse.w_eps (e.g. 0.01) to shrink it towards the identity, or use a "
            f"larger wmse.w_size (it must exceed the embedding dimension {d}, and far more is safer)")


def normalised_mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return 2 - 2 * F.cosine_similarity(a, b, dim=-1).mean()


class WMSELoss(nn.Module):
    def __init__(self, w_size: int, w_iter: int = 1, w_eps: float = 0.0, normalize: bool = True,
                 gather: Callable[[torch.Tensor], torch.Tensor] = _identity):
        super().__init__()
        self.w_size, self.w_iter, self.w_eps, self.normalize, self.gather = w_size, w_iter, w_eps, normalize, gather

    def forward(self, embeddings: list[torch.Tensor], generator: torch.Generator,
                keys: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        if len(embeddings) < 2:
            raise ValueError(f"W-MSE needs at least 2 positives per image, got {len(embeddings)}")
        views = [self.gather(z) for z in embeddings]
        if keys is not None:
            canonical = torch.argsort(self.gather(keys.to(views[0].device)))
            views = [v[canonical] for v in views]
        batch = views[0].shape[0]
        if batch % self.w_size:
            raise ValueError(f"the global batch ({batch}) must be a multiple of wmse.w_size ({self.w_size})")
        distance = normalised_mse if self.normalize else F.mse_loss
        pairs = list(combinations(range(len(views)), 2))
        total = views[0].new_zeros((), dtype=torch.float64 if views[0].dtype == torch.float64 else torch.float32)
        failures = []
        for _ in range(self.w_iter):
            order = torch.randperm(batch, generator=generator).to(views[0].device).view(-1, self.w_size)
            for rows in order:
                whitened, failed = zip(*(_whiten(v[rows], self.w_eps) for v in views))
                failures += list(failed)
                total = total + sum(distance(whitened[i], whitened[j]) for i, j in pairs) * len(rows) / batch
        raise_if_failed(torch.stack(failures).max(), self.w_size, views[0].shape[1])
        loss = total / (self.w_iter * len(pairs))
        return {"loss": loss}
