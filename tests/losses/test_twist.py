import math

import pytest
import torch

from twist.losses import TwistLoss, sparse_pairs


def reference_twist_loss(logits, lam1, lam2, tau, eps):
    """The TWIST objective written out pair by pair, in float64, from the paper's formula."""
    logits = [f.double() for f in logits]
    pairs = [(0, 1)] + [(g, j) for j in range(2, len(logits)) for g in (0, 1)]
    total = {"consistency": 0.0, "sharpness": 0.0, "diversity": 0.0}
    for a, b in pairs:
        pa, pb = torch.softmax(logits[a], 1), torch.softmax(logits[b], 1)
        qa, qb = torch.softmax(logits[a] / tau, 1), torch.softmax(logits[b] / tau, 1)
        kl_ab = (pa * ((pa + eps).log() - (pb + eps).log())).sum(1).mean()
        kl_ba = (pb * ((pb + eps).log() - (pa + eps).log())).sum(1).mean()
        ent = lambda q: -(q * (q + eps).log()).sum(1).mean()  # noqa: E731
        ent_mean = lambda q: -(q.mean(0) * (q.mean(0) + eps).log()).sum()  # noqa: E731
        total["consistency"] = total["consistency"] + 0.5 * (kl_ab + kl_ba) / len(pairs)
        total["sharpness"] = total["sharpness"] + 0.5 * (ent(qa) + ent(qb)) / len(pairs)
        total["diversity"] = total["diversity"] + 0.5 * (ent_mean(qa) + ent_mean(qb)) / len(pairs)
    total["loss"] = total["consistency"] + (1 + lam1) * total["sharpness"] - lam2 * total["diversity"]
    return total


@pytest.mark.parametrize("num_views", [2, 4])
@pytest.mark.parametrize("lam1,lam2,tau", [(0.0, 1.0, 1.0), (-0.6, 1.0, 1.0), (0.5, 2.0, 0.5)])
def test_value_and_gradient_match_float64_formula(num_views, lam1, lam2, tau):
    torch.manual_seed(0)
    logits = [(3 * torch.randn(16, 7)).requires_grad_() for _ in range(num_views)]
    ref_logits = [f.detach().double().requires_grad_() for f in logits]
    terms = TwistLoss(lam1=lam1, lam2=lam2, tau=tau, eps=1e-5)(logits)
    expected = reference_twist_loss(ref_logits, lam1, lam2, tau, 1e-5)
    for key in ("loss", "consistency", "sharpness", "diversity"):
        assert terms[key].item() == pytest.approx(expected[key].item(), rel=1e-5, abs=1e-6), key
    grads = torch.autograd.grad(terms["loss"], logits)
    ref_grads = torch.autograd.grad(expected["loss"], ref_logits)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g.double(), r, rtol=1e-4, atol=1e-6)


def test_sparse_pairs_count_and_content():
    assert sparse_pairs(2) == [(0, 1)]
    pairs = sparse_pairs(14)  # 2 global + 12 local views, as in the multi-crop recipe
    assert len(pairs) == 2 * 14 - 3 == 25
    assert all(a in (0, 1) for a, _ in pairs)
    assert not any(a >= 2 and b >= 2 for a, b in pairs)
    with pytest.raises(ValueError, match="at least 2 views"):
        sparse_pairs(1)


def test_extremes_of_the_entropy_terms():
    loss = TwistLoss(eps=0.0)
    uniform = [torch.zeros(8, 5), torch.zeros(8, 5)]
    terms = loss(uniform)
    assert terms["sharpness"].item() == pytest.approx(math.log(5), rel=1e-6)
    assert terms["diversity"].item() == pytest.approx(math.log(5), rel=1e-6)
    assert terms["consistency"].item() == pytest.approx(0.0, abs=1e-7)
    # Confident, balanced one-hot predictions: no per-sample entropy, maximal batch diversity.
    one_hot = 50 * torch.eye(5).repeat(2, 1)
    terms = loss([one_hot, one_hot])
    assert terms["sharpness"].item() == pytest.approx(0.0, abs=1e-6)
    assert terms["diversity"].item() == pytest.approx(math.log(5), rel=1e-5)


def test_low_precision_logits_are_computed_in_float32():
    torch.manual_seed(0)
    logits = [torch.randn(8, 6), torch.randn(8, 6)]
    full = TwistLoss()(logits)["loss"]
    half = TwistLoss()([f.bfloat16() for f in logits])["loss"]
    assert half.dtype == torch.float32
    assert half.item() == pytest.approx(full.item(), abs=0.05)


def reference_teacher_loss(student, teacher, lam1, lam2, tau, eps):
    """The reference's teacher path, pair by pair in float64."""
    s = [torch.softmax(f.double() / tau, 1) for f in student]
    t = [torch.softmax(f.double() / tau, 1) for f in teacher]
    kls = [(t[a] * ((t[a] + eps).log() - (s[j] + eps).log())).sum(1).mean()
           for a in (0, 1) for j in range(len(s)) if j != a]
    eh = sum(-(q * (q + eps).log()).sum(1).mean() for q in s) / len(s)
    he = sum(-(q.mean(0) * (q.mean(0) + eps).log()).sum() for q in s) / len(s)
    return sum(kls) / len(kls) + (1 + lam1) * eh - lam2 * he


@pytest.mark.parametrize("num_views", [2, 8])
def test_teacher_variant_matches_float64_formula(num_views):
    torch.manual_seed(3)
    student = [(2 * torch.randn(12, 5)).requires_grad_() for _ in range(num_views)]
    teacher = [2 * torch.randn(12, 5) for _ in range(2)]
    out = TwistLoss(lam1=-0.6, lam2=1.0, tau=0.7)(student, teacher_logits=teacher)
    ref_student = [f.detach().double().requires_grad_() for f in student]
    expected = reference_teacher_loss(ref_student, teacher, -0.6, 1.0, 0.7, 1e-5)
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    grads = torch.autograd.grad(out["loss"], student)
    for g, r in zip(grads, torch.autograd.grad(expected, ref_student)):
        torch.testing.assert_close(g.double(), r, rtol=1e-4, atol=1e-6)


def test_pair_counts_of_the_recipes():
    from twist.losses import teacher_student_pairs

    assert len(sparse_pairs(2 + 12)) == 25            # ResNet-50 multi-crop
    assert len(teacher_student_pairs(2 + 6)) == 14    # DeiT-S
    assert len(teacher_student_pairs(2 + 10)) == 22   # ViT-B
    weights = [sum(v in p for p in sparse_pairs(14)) / (2 * 25) for v in range(14)]
    assert weights[0] == weights[1] == pytest.approx(13 / 50)  # (n-1) / (2(2n-3)) per global view
    assert all(w == pytest.approx(1 / 25) for w in weights[2:])  # 1 / (2n-3) per local view
    assert sum(weights) == pytest.approx(1.0)
