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

With an EMA teacher (the ViT recipes) the consistency term is instead the mean of KL(t_a || s_j)
over the teacher's two global views a and every other student view j, and the entropy terms are the
plain mean over the student's views.
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


def at_least_float32(t: torch.Tensor) -> torch.Tensor:
    """Softmax, logs and sums in float32 when the network ran in bf16/fp16; float64 stays float64."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def teacher_student_pairs(num_views: int) -> list[tuple[int, int]]:
    """(teacher global a, student view j) for a in {0, 1} and every j != a: 2(n - 1) pairs."""
    if num_views < 2:
        raise ValueError(f"TWIST needs at least 2 views, got {num_views}")
    return [(a, j) for a in (0, 1) for j in range(num_views) if j != a]


def _identity(t: torch.Tensor) -> torch.Tensor:
    return t


class TwistLoss(nn.Module):
    """Consistency + (1 + lam1) x sharpness - lam2 x diversity.

    ``batch_mean`` averages the per-rank mean distributions (one row per view) over the processes
    that share the batch, differentiably; the default leaves them as they are (one process). The
    consistency and sharpness terms are per-rank means: with DDP averaging the gradients, the result
    is the gradient of the loss on the global batch.
    """

    def __init__(self, lam1: float = 0.0, lam2: float = 1.0, tau: float = 1.0, eps: float = 1e-5,
                 batch_mean: Callable[[torch.Tensor], torch.Tensor] = _identity):
        super().__init__()
        self.lam1, self.lam2, self.tau, self.eps = lam1, lam2, tau, eps
        self.batch_mean = batch_mean

    def _row_entropy(self, q: torch.Tensor) -> torch.Tensor:
        return -(q * torch.log(q + self.eps)).sum(dim=1).mean()

    def _entropies_of_means(self, q: list[torch.Tensor]) -> torch.Tensor:
        """Entropy of each view's batch-mean distribution; one collective for all views."""
        means = self.batch_mean(torch.stack([qv.mean(dim=0) for qv in q]))
        return -(means * torch.log(means + self.eps)).sum(dim=1)

    def _kl(self, p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        return (p * (torch.log(p + self.eps) - torch.log(q + self.eps))).sum(dim=1).mean()

    def forward(self, logits: list[torch.Tensor],
                teacher_logits: list[torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Student logits of every view (globals first); with a teacher, its logits of the two globals."""
        if teacher_logits is not None:
            return self._with_teacher(logits, teacher_logits)
        return self._symmetric(logits)

    def _with_teacher(self, logits: list[torch.Tensor], teacher_logits: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        # The teacher's distribution of global view a is the target of every other student view:
        # 2(n - 1) one-directional pairs. Both sides use tau here, as in the reference's teacher path.
        student = [torch.softmax(at_least_float32(f) / self.tau, dim=1) for f in logits]
        teacher = [torch.softmax(at_least_float32(f) / self.tau, dim=1).detach() for f in teacher_logits]
        pairs = teacher_student_pairs(len(logits))
        consistency = sum(self._kl(teacher[a], student[j]) for a, j in pairs) / len(pairs)
        sharpness = sum(self._row_entropy(q) for q in student) / len(student)
        diversity = self._entropies_of_means(student).mean()
        loss = consistency + (1.0 + self.lam1) * sharpness - self.lam2 * diversity
        return {"loss": loss, "consistency": consistency, "sharpness": sharpness, "diversity": diversity}

    def _symmetric(self, logits: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        logits = [at_least_float32(f) for f in logits]
        pairs = sparse_pairs(len(logits))
        p = [torch.softmax(f, dim=1) for f in logits]
        q = p if self.tau == 1.0 else [torch.softmax(f / self.tau, dim=1) for f in logits]

        consistency = sum(0.5 * (self._kl(p[a], p[b]) + self._kl(p[b], p[a])) for a, b in pairs) / len(pairs)
        weights = [sum(v in pair for pair in pairs) / (2 * len(pairs)) for v in range(len(logits))]
        sharpness = sum(w * self._row_entropy(qv) for w, qv in zip(weights, q))
        diversity = sum(w * entropy for w, entropy in zip(weights, self._entropies_of_means(q)))
        loss = consistency + (1.0 + self.lam1) * sharpness - self.lam2 * diversity
        return {"loss": loss, "consistency": consistency, "sharpness": sharpness, "diversity": diversity}
