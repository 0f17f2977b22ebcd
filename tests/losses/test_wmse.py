"""W-MSE against its formula written here in float64, whitening by an explicit inverse of the factor."""
from itertools import combinations

import numpy as np
import pytest
import torch

from twist.losses import WhiteningError, WMSELoss, cholesky_whiten


def reference_whiten(x: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    centred = x - x.mean(0)
    cov = centred.T @ centred / (x.shape[0] - 1)
    cov = (1 - eps) * cov + eps * torch.eye(x.shape[1], dtype=x.dtype)
    return centred @ torch.linalg.inv(torch.linalg.cholesky(cov)).T


def reference_loss(views, w_size, w_iter, generator, eps=0.0, normalize=True):
    batch = views[0].shape[0]
    total, pairs = 0.0, list(combinations(range(len(views)), 2))
    for _ in range(w_iter):
        order = torch.randperm(batch, generator=generator).view(-1, w_size)
        whitened = [torch.empty_like(v) for v in views]
        for rows in order:
            for k, v in enumerate(views):
                whitened[k][rows] = reference_whiten(v[rows], eps)
        for i, j in pairs:
            a, b = whitened[i], whitened[j]
            if normalize:
                a, b = a / a.norm(dim=1, keepdim=True), b / b.norm(dim=1, keepdim=True)
                total = total + (2 - 2 * (a * b).sum(1).mean())
            else:
                total = total + ((a - b) ** 2).mean()
    return total / (w_iter * len(pairs))


def test_whitened_sub_batches_have_identity_covariance():
    rng = np.random.default_rng(0)
    x = torch.tensor(rng.normal(size=(64, 6)) @ rng.normal(size=(6, 6)) + 5)
    w = cholesky_whiten(x)
    covariance = (w - w.mean(0)).T @ (w - w.mean(0)) / 63
    torch.testing.assert_close(covariance, torch.eye(6, dtype=torch.float64), rtol=0, atol=1e-10)
    torch.testing.assert_close(w, reference_whiten(x), rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("views, w_size, w_iter, eps, normalize", [(2, 16, 1, 0.0, True), (4, 8, 2, 0.1, True),
                                                                  (3, 32, 1, 0.0, False)])
def test_value_and_gradient_match_the_formula(views, w_size, w_iter, eps, normalize):
    rng = np.random.default_rng(views + w_size)
    base = rng.normal(size=(32, 5))
    data = [base + 0.5 * rng.normal(size=(32, 5)) for _ in range(views)]
    ours = [torch.tensor(z, requires_grad=True) for z in data]
    theirs = [torch.tensor(z, requires_grad=True) for z in data]
    loss = WMSELoss(w_size, w_iter, eps, normalize)(ours, torch.Generator().manual_seed(5))["loss"]
    expected = reference_loss(theirs, w_size, w_iter, torch.Generator().manual_seed(5), eps, normalize)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-10)
    loss.backward()
    expected.backward()
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-8, atol=1e-11)


def test_keys_make_the_sub_batches_independent_of_the_row_order():
    rng = np.random.default_rng(1)
    views = [torch.tensor(rng.normal(size=(16, 3))) for _ in range(2)]
    keys = torch.arange(16)
    order = torch.randperm(16, generator=torch.Generator().manual_seed(2))
    loss = WMSELoss(8)(views, torch.Generator().manual_seed(0), keys=keys)["loss"]
    permuted = WMSELoss(8)([v[order] for v in views], torch.Generator().manual_seed(0), keys=keys[order])["loss"]
    assert permuted.item() == pytest.approx(loss.item(), rel=1e-12)


def test_a_singular_covariance_is_a_clear_error_not_a_nan():
    x = torch.ones(8, 3, dtype=torch.float64)
    x[:, 1] = torch.arange(8.0)  # two constant columns: rank-deficient
    with pytest.raises(WhiteningError, match=r"raise wmse.w_eps .* or use a larger wmse.w_size"):
        cholesky_whiten(x)
    assert torch.isfinite(cholesky_whiten(x, eps=0.01)).all()  # the suggested shrinkage works


def test_diverged_embeddings_are_named_as_such_not_as_a_singular_covariance():
    x = torch.randn(16, 3)
    x[4, 1] = float("nan")
    with pytest.raises(WhiteningError, match="NaN or infinite values: training diverged"):
        cholesky_whiten(x)


def test_runs_in_float32_under_half_precision_inputs():
    x = torch.randn(32, 4).to(torch.bfloat16)
    assert cholesky_whiten(x).dtype == torch.float32


def test_inside_bf16_autocast_the_whitening_is_the_float32_whitening():
    x = torch.randn(64, 16, generator=torch.Generator().manual_seed(0))
    expected = cholesky_whiten(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        whitened = cholesky_whiten(x)
    assert whitened.dtype == torch.float32
    torch.testing.assert_close(whitened, expected, rtol=1e-5, atol=1e-5)


def test_bad_w_size_is_a_clear_error():
    from twist.config import ConfigError, load_config

    with pytest.raises(ValueError, match=r"global batch \(12\) must be a multiple of wmse.w_size \(8\)"):
        WMSELoss(8)([torch.randn(12, 3), torch.randn(12, 3)], torch.Generator())
    with pytest.raises(ConfigError, match=r"'wmse.w_size' \(64\) must exceed 'wmse.out_dim' \(128\)"):
        load_config(None, ["data.dataset=synthetic", "method=wmse", "wmse.w_size=64"])
    with pytest.raises(ConfigError, match=r"'wmse.w_size' must lie in \[2, inf\]"):
        load_config(None, ["data.dataset=synthetic", "method=wmse", "wmse.w_size=1"])
