import numpy as np
import pytest
import torch

from twist.losses.self_label import SelfLabelLoss, quantile_threshold


def reference_self_label(logits, quantile, tau, anchors=None):
    """Sample by sample, in float64 numpy: the procedure of the reference's self-labeling stage."""
    logits = [view_logits.detach().double().numpy() for view_logits in logits]
    anchors = logits[:2] if anchors is None else [a.detach().double().numpy() for a in anchors]

    def softmax(x):
        e = np.exp(x - x.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    p0, p1 = softmax(anchors[0] / tau), softmax(anchors[1] / tau)
    conf = np.maximum(p0.max(1), p1.max(1))
    b = len(conf)
    threshold = sorted(conf, reverse=True)[min(int(np.floor(quantile * b)), b - 1)]
    per_view = []
    n = len(logits)
    for view in range(1, n):
        losses = []
        for i in range(b):
            weak = 0 if p0[i].max() > p1[i].max() else 1     # a tie goes to the second view, as in engine.py
            if conf[i] <= threshold:
                continue
            label = (p0 if weak == 0 else p1)[i].argmax()
            target_view = (1 - weak) if view == 1 else view
            row = logits[target_view][i]
            log_probs = row - row.max() - np.log(np.exp(row - row.max()).sum())
            losses.append(-log_probs[label])
        per_view.append(np.mean(losses))
    return float(np.mean(per_view)), threshold


@pytest.mark.parametrize("num_views,quantile,tau", [(2, 0.5, 1.0), (5, 0.5, 1.0), (5, 0.6, 0.5), (4, 0.9, 1.0)])
def test_loss_and_threshold_equal_the_samplewise_reference(num_views, quantile, tau):
    torch.manual_seed(1)
    logits = [3 * torch.randn(32, 6) for _ in range(num_views)]
    out = SelfLabelLoss(tau=tau)(logits, quantile)
    expected, threshold = reference_self_label(logits, quantile, tau)
    assert out["loss"].item() == pytest.approx(expected, rel=1e-5)
    assert out["threshold"].item() == pytest.approx(threshold, rel=1e-6)
    # The samples ranked above floor(quantile * B) pass: quantile is the kept fraction.
    assert out["kept_fraction"].item() == pytest.approx(int(quantile * 32) / 32)


def test_teacher_anchors_give_the_labels():
    torch.manual_seed(2)
    student = [torch.randn(16, 5, requires_grad=True) for _ in range(4)]
    teacher = [torch.randn(16, 5), torch.randn(16, 5)]
    out = SelfLabelLoss()(student, 0.5, anchor_logits=teacher)
    expected, _ = reference_self_label(student, 0.5, 1.0, anchors=teacher)
    assert out["loss"].item() == pytest.approx(expected, rel=1e-5)
    out["loss"].backward()
    assert all(s.grad is not None for s in student)


@pytest.mark.parametrize("teacher", [False, True])
def test_a_tie_in_confidence_makes_the_second_global_view_the_weak_anchor(teacher):
    """The reference picks the first view only when it is strictly more confident (``>``). Sample 0's two
    globals are permutations of each other (equal confidence, labels 0 and 1); sample 1 is less confident
    and sets the threshold, so sample 0 alone is kept. The local view tells the two labels apart."""
    globals_ = [torch.tensor([[4.0, 0.0, 1.0], [0.2, 0.0, 0.1]]), torch.tensor([[0.0, 4.0, 1.0], [0.0, 0.3, 0.1]])]
    local = torch.tensor([[3.0, -1.0, 0.0], [0.0, 0.0, 0.0]])
    logits = [globals_[0].clone(), globals_[1].clone(), local] if not teacher else \
        [torch.randn(2, 3), torch.randn(2, 3), local]
    assert torch.softmax(globals_[0][0], 0).max() == torch.softmax(globals_[1][0], 0).max()   # an exact tie
    out = SelfLabelLoss()(logits, 0.5, anchor_logits=globals_ if teacher else None)
    assert out["kept_fraction"].item() == 0.5
    strong = logits[0][0]     # the first global: the second is the weak anchor, its label is class 1
    expected = (torch.nn.functional.cross_entropy(strong[None], torch.tensor([1]))
                + torch.nn.functional.cross_entropy(local[:1], torch.tensor([1]))) / 2
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-6)


def test_nothing_kept_gives_a_zero_loss_with_a_graph():
    logits = [torch.zeros(4, 3, requires_grad=True), torch.zeros(4, 3, requires_grad=True)]
    out = SelfLabelLoss()(logits, 0.5)  # every confidence equals the threshold: none is strictly above
    assert out["loss"].item() == 0.0 and out["kept_fraction"].item() == 0.0
    out["loss"].backward()


def test_quantile_threshold_index():
    conf = torch.tensor([0.1, 0.9, 0.5, 0.7, 0.3])
    assert quantile_threshold(conf, 0.4).item() == pytest.approx(0.5)  # floor(0.4*5)=2 -> third largest
    assert quantile_threshold(conf, 1.0).item() == pytest.approx(0.1)  # clamped to the last
