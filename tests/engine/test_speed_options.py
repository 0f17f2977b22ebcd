"""Each speed option gives the result of the plain path: the same weights after a short run (to
float tolerance where the arithmetic is reordered, exactly where it is not)."""
import os

import numpy as np
import pytest
import torch

from twist.config import load_config
from twist.engine.checkpoint import load_weights_only
from twist.engine.logging import read_log
from twist.engine.trainer import train

STEPS = ["train.epochs=1", "data.num_samples=24"]  # 3 steps of batch 8


def _run(path, overrides):
    train(load_config(None, overrides), str(path))
    state = load_weights_only(os.path.join(path, "checkpoint.pth"))["model"]
    losses = [r["loss"] for r in read_log(os.path.join(path, "log.jsonl")) if r.get("kind") == "train"]
    return state, losses


def _assert_close(a, b, rtol, atol):
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key].float(), b[key].float(), rtol=rtol, atol=atol, msg=key)


@pytest.fixture
def plain(tmp_path, tiny_overrides):
    return _run(tmp_path / "plain", tiny_overrides + STEPS)


@pytest.mark.parametrize("option", ["train.channels_last=true", "train.compile=true"])
def test_option_gives_the_plain_result(option, plain, tmp_path, tiny_overrides):
    state, losses = _run(tmp_path / "option", tiny_overrides + STEPS + [option])
    np.testing.assert_allclose(losses, plain[1], rtol=1e-4)
    _assert_close(state, plain[0], rtol=1e-3, atol=1e-5)


def test_bf16_autocast_stays_near_fp32(tmp_path, tiny_overrides):
    # 32 px, not the tiny runs' 16: at 16 px ResNet-18's layer4 sees 1x1 maps, where the bf16 weight
    # gradient of its strided 3x3 convolution on the CPU came out non-finite in some test orders.
    sized = tiny_overrides + STEPS + ["data.image_size=32"]
    plain = _run(tmp_path / "plain", sized)
    state, losses = _run(tmp_path / "bf16", sized + ["train.precision=bf16"])
    # The first step starts from the same weights; bf16 matmuls (8-bit mantissa) move the loss, a
    # difference of entropies of scale log C = 2.1 here, by about 0.01.
    np.testing.assert_allclose(losses[0], plain[1][0], atol=0.03)
    assert losses[0] != plain[1][0]  # autocast really ran in bf16
    assert all(np.isfinite(losses))
    assert all(v.dtype == plain[0][k].dtype for k, v in state.items())  # master weights stay float32


def test_workers_persistent_and_pinned_give_identical_weights(tmp_path, tiny_overrides):
    """Two epochs, so that persistent workers carry over an epoch boundary; the views are a pure
    function of (seed, epoch, index), so the weights are bit-identical to the main-process loader."""
    base = tiny_overrides + ["data.num_samples=16"]
    inline = _run(tmp_path / "inline", base)[0]
    workers = _run(tmp_path / "workers", base + ["data.num_workers=2", "data.persistent_workers=true",
                                                 "data.pin_memory=true", "data.prefetch_factor=1"])[0]
    for key in inline:
        assert torch.equal(inline[key], workers[key]), key


def test_on_device_augmentation_trains_multi_crop_and_is_independent_of_the_workers(tmp_path, tiny_overrides):
    """The parameters are drawn per sample on the workers, so the weights do not depend on their number;
    tests/data/test_device_augment.py compares the views themselves with the CPU pipeline's."""
    base = tiny_overrides + ["data.num_samples=16", "data.image_size=32", "augment.on_device=true",
                             "augment.local_crops=2", "augment.local_size=16"]
    inline, losses = _run(tmp_path / "inline", base)
    workers = _run(tmp_path / "workers", base + ["data.num_workers=2"])[0]
    assert len(losses) == 4 and np.isfinite(losses).all()
    for key in inline:
        assert torch.equal(inline[key], workers[key]), key
