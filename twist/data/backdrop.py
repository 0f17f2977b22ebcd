"""Random backdrops: a light-on-dark image's strokes painted in a random colour over a random background.

The digit scenes (:mod:`twist.transfer.digit_scenes`) are drawn this way, and :class:`RandomBackdrop`
draws each augmented view this way, so that pretraining on plain digits meets colour and clutter
without any scene in its data. Two views of one digit get different colours and backgrounds: the
only thing they share is the digit's shape (background augmentation, as in Ryali et al. 2021,
"Characterizing and improving the robustness of self-supervised learning through background
augmentations").
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

MIN_CONTRAST = 70.0   # the strokes' mean brightness differs from the background's by at least this


def smooth_background(rng: np.random.Generator, side: int, noise_std: float, grid: int = 4) -> np.ndarray:
    """Smooth colour gradients (a ``grid`` x ``grid`` of random colours, bicubically upsampled) plus pixel noise."""
    colours = rng.uniform(30, 225, size=(grid, grid, 3)).astype(np.uint8)
    smooth = np.asarray(Image.fromarray(colours).resize((side, side), Image.BICUBIC), dtype=np.float64)
    return smooth + rng.normal(0.0, noise_std, size=smooth.shape)


def stroke_colour(rng: np.random.Generator, behind: np.ndarray) -> np.ndarray:
    """A random colour whose brightness differs from the background ``behind`` it by at least MIN_CONTRAST."""
    level = float(behind.mean())
    for _ in range(100):
        colour = rng.uniform(0, 255, size=3)
        if abs(float(colour.mean()) - level) >= MIN_CONTRAST:
            return colour
    return np.full(3, 0.0 if level > 127 else 255.0)


def paint(pixels: np.ndarray, coverage: np.ndarray, colour: np.ndarray) -> None:
    """Blend ``colour`` into ``pixels`` (H x W x 3, float) by the stroke ``coverage`` (H x W, 0..1), in place."""
    pixels[...] = pixels * (1 - coverage[..., None]) + colour * coverage[..., None]


class RandomBackdrop:
    """With probability ``p``, paint a grayscale image's strokes (its brightness, as coverage) in a random
    colour over a random smooth background; the result is RGB either way.

    The randomness comes from torch's generator, so the views stay a function of the sample's seed.
    """

    def __init__(self, p: float, noise_std: float = 10.0, grid: int = 2):
        # grid 2: gradients about as wide as the view, as a digit scene's behind a digit of the view's size
        self.p, self.noise_std, self.grid = p, noise_std, grid

    def __call__(self, img: Image.Image) -> Image.Image:
        if self.p <= 0 or float(torch.rand(())) >= self.p:
            return img.convert("RGB")
        rng = np.random.default_rng(int(torch.randint(0, 2**62, ())))
        coverage = np.asarray(img.convert("L"), dtype=np.float64) / 255.0
        height, width = coverage.shape
        pixels = smooth_background(rng, max(height, width), self.noise_std, self.grid)[:height, :width]
        paint(pixels, coverage, stroke_colour(rng, pixels))
        return Image.fromarray(np.clip(np.round(pixels), 0, 255).astype(np.uint8))
