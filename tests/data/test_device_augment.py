"""The on-device view pipeline against torchvision's per-image operations, and against the CPU
pipeline it replaces: same random draws, same pixels to a stated tolerance."""
import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image

from tests.parts import train_transform, view_planner, view_sizes
from twist.config import ConfigError, load_config
from twist.data.device_augment import (
    BRIGHTNESS,
    CONTRAST,
    HUE,
    JITTER,
    ORDER,
    PLAN_WIDTH,
    SATURATION,
    DeviceAugment,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    collate_planned,
    color_jitter,
    crop_and_resize,
    gaussian_blur,
)

CFG = ["data.dataset=synthetic", "data.image_size=64", "augment.local_crops=2", "augment.local_size=32"]


def _images(n=5, size=24, seed=0):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _smooth_photo(seed=0, size=(160, 120)):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize(size, Image.BICUBIC)


@pytest.mark.parametrize("ours, theirs, low, high", [
    (adjust_brightness, TF.adjust_brightness, 0.6, 1.4),
    (adjust_contrast, TF.adjust_contrast, 0.6, 1.4),
    (adjust_saturation, TF.adjust_saturation, 0.8, 1.2),
    (adjust_hue, TF.adjust_hue, -0.1, 0.1),
])
def test_colour_operations_equal_torchvisions_per_image(ours, theirs, low, high):
    x = _images()
    factors = torch.linspace(low, high, len(x))
    batched = ours(x, factors[:, None, None, None])
    for i, factor in enumerate(factors):
        torch.testing.assert_close(batched[i], theirs(x[i], float(factor)), rtol=0, atol=2e-5)


def test_jitter_applies_each_samples_own_order():
    x = _images(n=6)
    plan = torch.zeros(6, PLAN_WIDTH)
    plan[:, JITTER] = torch.tensor([1, 1, 1, 1, 1, 0.0])
    plan[:, BRIGHTNESS], plan[:, CONTRAST], plan[:, SATURATION], plan[:, HUE] = 1.3, 0.7, 1.15, 0.08
    orders = [torch.randperm(4, generator=torch.Generator().manual_seed(i)) for i in range(6)]
    plan[:, ORDER] = torch.stack(orders).float()
    out = color_jitter(x, plan)
    reference_ops = [lambda t: TF.adjust_brightness(t, 1.3), lambda t: TF.adjust_contrast(t, 0.7),
                     lambda t: TF.adjust_saturation(t, 1.15), lambda t: TF.adjust_hue(t, 0.08)]
    for i in range(5):
        expected = x[i]
        for op in orders[i].tolist():
            expected = reference_ops[op](expected)
        torch.testing.assert_close(out[i], expected, rtol=0, atol=5e-5)
    assert torch.equal(out[5], x[5])  # jitter off


def test_blur_with_per_sample_sigma_equals_torchvisions_gaussian_blur_with_repeated_edges():
    x = _images(n=4, size=20)
    sigma = torch.tensor([0.3, 1.0, 2.0, 0.0])
    out = gaussian_blur(x, sigma)
    radius = int(np.ceil(3 * 2.0))
    padded = torch.nn.functional.pad(x, [radius] * 4, mode="replicate")  # edges repeated, as PIL does
    for i in range(3):
        expected = TF.gaussian_blur(padded[i], [2 * radius + 1] * 2, [float(sigma[i])] * 2)
        torch.testing.assert_close(out[i], expected[:, radius:-radius, radius:-radius], rtol=0, atol=1e-5)
    torch.testing.assert_close(out[3], x[3])  # sigma 0: unchanged
    # images smaller than the kernel
    assert gaussian_blur(_images(n=2, size=4), torch.tensor([2.0, 1.0])).shape == (2, 3, 4, 4)


def test_crop_and_resize_is_close_to_antialiased_resized_crop():
    image = TF.to_image(_smooth_photo()).float() / 255
    boxes = [(10, 20, 90, 120), (0, 0, 120, 160), (50, 70, 30, 40), (5, 100, 12, 9)]  # top, left, height, width
    plan = torch.zeros(len(boxes), PLAN_WIDTH)
    plan[:, :4] = torch.tensor(boxes, dtype=torch.float32)
    out = crop_and_resize(image.expand(len(boxes), -1, -1, -1).contiguous(), plan, 48)
    for i, (top, left, height, width) in enumerate(boxes):
        expected = TF.resized_crop(image, top, left, height, width, [48, 48], antialias=True)
        assert (out[i] - expected).abs().mean() < 0.01, boxes[i]


def test_views_match_the_cpu_pipeline_for_the_same_sample_seed():
    """The draws line up: every view of every seed is close to the CPU pipeline's view of that seed
    (mean |difference| under 0.06 in normalised units, about 1/255 of the pixel range; the rest is
    PIL's uint8 rounding and its box-filter blur), and far from the view of a different seed."""
    cfg = load_config(None, CFG)
    plain, planner, augment = train_transform(cfg), view_planner(cfg), DeviceAugment(view_sizes(cfg))
    img = _smooth_photo()

    def device_views(seed):
        torch.manual_seed(seed)
        (images, plans), *_ = collate_planned([(planner(img), 0, 0)])
        return [v[0] for v in augment(images, plans)]

    for seed in range(8):
        torch.manual_seed(seed)
        cpu = plain(img)
        ours = device_views(seed)
        assert [v.shape for v in ours] == [v.shape for v in cpu]
        for view, (a, b) in enumerate(zip(cpu, ours)):
            assert (a - b).abs().mean() < 0.06, (seed, view)
    torch.manual_seed(0)
    cpu = plain(img)
    assert np.mean([(a - b).abs().mean() for a, b in zip(cpu, device_views(1))]) > 0.2


def test_images_above_the_size_cap_get_the_draws_of_the_full_size_image():
    cfg = load_config(None, CFG + ["augment.on_device_max_side=80"])
    planner = view_planner(cfg)
    full = view_planner(load_config(None, CFG + ["augment.on_device_max_side=4096"]))
    img = _smooth_photo(size=(400, 300))
    torch.manual_seed(3)
    image, plan = planner(img)
    torch.manual_seed(3)
    _, full_plan = full(img)
    assert image.shape == (3, 60, 80)
    torch.testing.assert_close(plan[:, [1, 3]], full_plan[:, [1, 3]] * 0.2)  # left, width
    torch.testing.assert_close(plan[:, [0, 2]], full_plan[:, [0, 2]] * 0.2)  # top, height
    torch.testing.assert_close(plan[:, 4:], full_plan[:, 4:])  # every other draw


def test_padding_repeats_the_border_so_edge_crops_do_not_read_zeros():
    small, large = torch.full((3, 4, 6), 200, dtype=torch.uint8), torch.zeros(3, 10, 12, dtype=torch.uint8)
    plan = torch.zeros(1, PLAN_WIDTH)
    (batch, _), *_ = collate_planned([((small, plan), 0, 0), ((large, plan), 1, 1)])
    assert batch.shape == (2, 3, 10, 12) and bool((batch[0] == 200).all())


def test_on_device_needs_the_barlow_pipeline():
    with pytest.raises(ConfigError, match="'augment.on_device' implements the 'barlow' pipeline"):
        load_config(None, ["data.dataset=digits", "augment.pipeline=small_gray", "augment.on_device=true"])
