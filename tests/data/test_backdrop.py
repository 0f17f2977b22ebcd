"""Random backdrops: each view's strokes in their own colour over their own background."""
import numpy as np
import pytest
import torch
from PIL import Image

from tests.parts import train_transform
from twist.config import ConfigError, load_config
from twist.data import DigitsSource
from twist.data.backdrop import MIN_CONTRAST, RandomBackdrop, smooth_background, stroke_colour
from twist.data.transforms import IMAGENET_MEAN, IMAGENET_STD, build_classification_transforms


def _digit(size=24) -> Image.Image:
    return DigitsSource("train").load(0)[0].resize((size, size), Image.BILINEAR)


def _seeded(transform, img, seed):
    torch.manual_seed(seed)
    return np.asarray(transform(img), dtype=np.float64)


def test_a_backdrop_is_the_blend_of_its_background_and_stroke_colour():
    img = _digit()
    coverage = np.asarray(img, dtype=np.float64)[..., None] / 255.0
    backdrop = RandomBackdrop(1.0)
    # The same seed draws the same background and colour: a blank image shows the background alone,
    # a fully covered one the colour alone, and the digit is their blend by its coverage.
    background = _seeded(backdrop, Image.new("L", img.size, 0), seed=5)
    colour = _seeded(backdrop, Image.new("L", img.size, 255), seed=5)
    painted = _seeded(backdrop, img, seed=5)
    # (each of the three images is rounded to uint8 and clipped to 0..255, hence the tolerance)
    np.testing.assert_allclose(painted, background * (1 - coverage) + colour * coverage, atol=2.5)
    # The colour is one colour, with the contrast the scenes have against the background's mean.
    assert np.ptp(colour.reshape(-1, 3), axis=0).max() == 0
    assert abs(colour.mean() - background.mean()) >= MIN_CONTRAST - 1
    assert background.std() > 5  # not flat


def test_two_views_get_their_own_backdrop_and_a_seed_repeats_one():
    img, backdrop = _digit(), RandomBackdrop(1.0)
    torch.manual_seed(0)
    first, second = np.asarray(backdrop(img)), np.asarray(backdrop(img))
    assert np.abs(first.astype(int) - second.astype(int)).mean() > 10
    np.testing.assert_array_equal(_seeded(backdrop, img, 0), first)


def test_probability_zero_leaves_the_image_as_it_is():
    img = _digit()
    np.testing.assert_array_equal(np.asarray(RandomBackdrop(0.0)(img)), np.asarray(img.convert("RGB")))


def test_stroke_colour_falls_back_to_black_or_white():
    rng = np.random.default_rng(0)
    for level in (10.0, 128.0, 240.0):
        colour = stroke_colour(rng, np.full((4, 4, 3), level))
        assert abs(colour.mean() - level) >= MIN_CONTRAST
    assert smooth_background(rng, 16, 0.0, grid=2).shape == (16, 16, 3)


def _unnormalised(view):
    return view * torch.tensor(IMAGENET_STD)[:, None, None] + torch.tensor(IMAGENET_MEAN)[:, None, None]


@pytest.mark.parametrize("backdrop, coloured", [(0.0, False), (1.0, True)])
def test_the_small_gray_views_are_coloured_only_with_a_backdrop(backdrop, coloured):
    cfg = load_config(None, ["data.dataset=digits", "data.image_size=24", "augment.pipeline=small_gray",
                             f"augment.backdrop={backdrop}"])
    torch.manual_seed(0)
    views = train_transform(cfg)(DigitsSource("train").load(3)[0])
    for view in views:
        raw = _unnormalised(view)
        assert (not torch.allclose(raw[0], raw[1], atol=1e-4)) == coloured
    train, _ = build_classification_transforms("small_gray", 24, (0.5, 1.0), 0.0, backdrop=backdrop)
    raw = _unnormalised(train(DigitsSource("train").load(3)[0]))
    assert (not torch.allclose(raw[0], raw[2], atol=1e-4)) == coloured


def test_backdrop_needs_the_small_gray_pipeline():
    with pytest.raises(ConfigError, match="'augment.backdrop' paints grayscale strokes"):
        load_config(None, ["data.dataset=synthetic", "augment.backdrop=0.5"])
