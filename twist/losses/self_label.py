"""The self-labeling stage: confident predictions of one global view become hard labels for the others.

Per sample, the global view whose class distribution is more confident is the *weak anchor*; its
argmax is the pseudo-label, kept only when its confidence clears a threshold. The threshold is the
confidence of the sample ranked at ``floor(quantile * B)`` in the batch (descending), so about that
fraction of the batch is kept. Cross-entropy to the pseudo-label is applied to the other global view
and to every local view, and averaged over those n - 1 views. With a teacher, the teacher's global
logits choose the anchor and give the labels; the student is trained on all of its views.

Confidence, anchor and the kept mask use softmax(f / tau); the cross-entropy uses the logits as they
are. A tie in confidence makes the second global view the weak anchor, as in the reference. At
tau != 1 the reference's mask differs: its threshold comes from softmax(f / tau), but it compares
with the weak anchor's maximum of softmax(f); here both sides use softmax(f / tau), so ``quantile``
stays the kept fraction at every tau (docs/differences.md). The two agree at the default tau = 1.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from twist.losses.twist import at_least_float32


def quantile_threshold(confidence: torch.Tensor, quantile: float) -> torch.Tensor:
    """The confidence ranked ``floor(quantile * B)`` in descending order (clamped to the last one)."""
    ranked = confidence.sort(descending=True).values
    index = min(int(quantile * confidence.numel()), confidence.numel() - 1)
    return ranked[index]


class SelfLabelLoss(nn.Module):
    def __init__(self, tau: float = 1.0):
        super().__init__()
        self.tau = tau

    def forward(self, student_logits: list[torch.Tensor], quantile: float,
                anchor_logits: list[torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """``student_logits``: all n views (globals first); ``anchor_logits``: the teacher's two globals, if any."""
        if len(student_logits) < 2:
            raise ValueError(f"self-labeling needs at least the 2 global views, got {len(student_logits)}")
        anchors = student_logits[:2] if anchor_logits is None else anchor_logits
        with torch.no_grad():
            probs = [torch.softmax(at_least_float32(a) / self.tau, dim=1) for a in anchors]
            max_prob = torch.stack([p.max(dim=1).values for p in probs])  # 2 x B
            weak_is_first = max_prob[0] > max_prob[1]  # a tie goes to the second view, as in the reference
            confidence = max_prob.max(dim=0).values
            threshold = quantile_threshold(confidence, quantile)
            keep = confidence > threshold
            labels = torch.where(weak_is_first, probs[0].argmax(1), probs[1].argmax(1))

        # The strong global view of each sample is the one that is not its weak anchor.
        strong_global = torch.where(weak_is_first[:, None], student_logits[1], student_logits[0])
        targets = [strong_global] + list(student_logits[2:])
        if keep.any():
            loss = sum(F.cross_entropy(at_least_float32(t)[keep], labels[keep]) for t in targets) / len(targets)
        else:  # nothing passed: a zero that keeps the graph, so every rank still runs backward
            loss = sum(t.sum() for t in targets) * 0.0
        return {"loss": loss, "threshold": threshold, "kept_fraction": keep.float().mean()}
