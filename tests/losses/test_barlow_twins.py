"""Barlow Twins against its formula written here in float64 (numpy for the value, torch for the gradient)."""
import numpy as np
import pytest
import torch

from twist.losses import BarlowTwinsLoss


def reference_value(z1: np.ndarray, z2: np.ndarray, lam: float, eps: float = 1e-5) -> float:
    n = z1.shape[0]
    a = (z1 - z1.mean(axis=0)) / np.sqrt(z1.var(axis=0) + eps)  # biased variance, as a batch norm
    b = (z2 - z2.mean(axis=0)) / np.sqrt(z2.var(axis=0) + eps)
    c = a.T @ b / n
    total = 0.0
    for i in range(c.shape[0]):
        for j in range(c.shape[1]):
            total += (1 - c[i, j]) ** 2 if i == j else lam * c[i, j] ** 2
    return total


def reference_loss_torch(z1, z2, lam, eps=1e-5):
    def bn(z):
        return (z - z.mean(0)) / torch.sqrt(z.var(0, unbiased=False) + eps)

    c = bn(z1).T @ bn(z2) / z1.shape[0]
    off = c - torch.diag(torch.diagonal(c))
    return ((torch.diagonal(c) - 1) ** 2).sum() + lam * (off ** 2).sum()


@pytest.mark.parametrize("form", ["auto", "matrix", "gram"])
@pytest.mark.parametrize("n, d, lam", [(16, 8, 0.0051), (40, 5, 0.5), (7, 12, 0.02), (5, 24, 0.1)])
def test_value_and_gradient_match_the_formula(n, d, lam, form):
    """Both forms of ||C||^2 (the D x D matrix, the N x N Gram matrices), and the choice between them."""
    rng = np.random.default_rng(n + d)
    z1 = rng.normal(size=(n, d)) * 3 + 1
    z2 = 0.7 * z1 + rng.normal(size=(n, d))
    a = torch.tensor(z1, requires_grad=True)
    b = torch.tensor(z2, requires_grad=True)
    terms = BarlowTwinsLoss(lam, form=form)([a, b])
    assert terms["loss"].item() == pytest.approx(reference_value(z1, z2, lam), rel=1e-10)
    assert (terms["on_diagonal"] + lam * terms["off_diagonal"]).item() == pytest.approx(terms["loss"].item())
    terms["loss"].backward()
    a2 = torch.tensor(z1, requires_grad=True)
    b2 = torch.tensor(z2, requires_grad=True)
    reference_loss_torch(a2, b2, lam).backward()
    torch.testing.assert_close(a.grad, a2.grad, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(b.grad, b2.grad, rtol=1e-9, atol=1e-12)


def test_invariant_to_the_order_of_samples():
    rng = np.random.default_rng(3)
    z1, z2 = (torch.tensor(rng.normal(size=(32, 6))) for _ in range(2))
    order = torch.randperm(32, generator=torch.Generator().manual_seed(1))
    loss = BarlowTwinsLoss()([z1, z2])["loss"]
    shuffled = BarlowTwinsLoss()([z1[order], z2[order]])["loss"]
    assert shuffled.item() == pytest.approx(loss.item(), rel=1e-12)
    # ... but not to breaking the pairing between the views.
    assert BarlowTwinsLoss()([z1, z2[order]])["loss"].item() != pytest.approx(loss.item(), rel=1e-3)


def test_identical_views_with_decorrelated_dimensions_reach_zero():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8))
    q, _ = np.linalg.qr(x - x.mean(0))  # orthogonal columns that each sum to zero: C is the identity
    z = torch.tensor(q)
    for form in ("matrix", "gram"):  # the off-diagonal sum is ||C||^2 - sum C_ii^2: zero up to rounding
        assert BarlowTwinsLoss(eps=0.0, form=form)([z, z])["loss"].item() == pytest.approx(0.0, abs=1e-12)
        assert BarlowTwinsLoss(eps=0.0, form=form)([z, -z])["loss"].item() == pytest.approx(4.0 * 8)  # C = -I


def test_unknown_form_is_refused():
    with pytest.raises(ValueError, match="form must be auto, matrix or gram; got 'dense'"):
        BarlowTwinsLoss(form="dense")


def test_needs_two_views():
    with pytest.raises(ValueError, match="two views"):
        BarlowTwinsLoss()([torch.zeros(4, 2)] * 3)


def test_inside_bf16_autocast_the_loss_is_the_float32_loss():
    rng = np.random.default_rng(4)
    z1, z2 = (torch.tensor(rng.normal(size=(64, 48)), dtype=torch.float32) for _ in range(2))
    expected = BarlowTwinsLoss()([z1, z2])["loss"]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        terms = BarlowTwinsLoss()([z1, z2])
        gram_terms = BarlowTwinsLoss(form="gram")([z1, z2])
    torch.testing.assert_close(gram_terms["loss"], expected, rtol=1e-5, atol=1e-5)
    assert terms["loss"].dtype == torch.float32
    torch.testing.assert_close(terms["loss"], expected, rtol=1e-6, atol=1e-6)  # bf16 matmuls are off by ~1e-2


def test_standardisation_keeps_float32_precision_when_the_mean_dwarfs_the_spread():
    rng = np.random.default_rng(5)
    z = rng.normal(size=(256, 4)) + np.array([0.0, 200.0, 600.0, 6000.0])
    ours = BarlowTwinsLoss(eps=0.0).standardise(torch.tensor(z, dtype=torch.float32)).double()
    reference = torch.tensor((z - z.mean(0)) / z.std(0))
    torch.testing.assert_close(ours, reference, rtol=0, atol=2e-3)
