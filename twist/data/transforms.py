"""Augmentation pipelines. Each training pipeline maps one image to a list of views.

All randomness comes from torch's global generator, which the dataset seeds per sample from
(run seed, epoch, index): the views of a sample are the same whatever the number of workers, and
a resumed run sees exactly the views an uninterrupted run would have seen.
"""
from __future__ import annotations

from typing import Callable

import torch
from PIL import Image, ImageFilter, ImageOps
from torchvision import transforms as T

from twist.data.backdrop import RandomBackdrop
from twist.data.view_specs import AugmentConfig, ViewSpec

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class RandomGaussianBlur:
    """PIL Gaussian blur with radius drawn from U(sigma_min, sigma_max), applied with probability p."""

    def __init__(self, p: float, sigma_min: float = 0.1, sigma_max: float = 2.0):
        self.p, self.sigma_min, self.sigma_max = p, sigma_min, sigma_max

    def __call__(self, img: Image.Image) -> Image.Image:
        if self.p <= 0 or torch.rand(()).item() >= self.p:
            return img
        radius = self.sigma_min + (self.sigma_max - self.sigma_min) * torch.rand(()).item()
        return img.filter(ImageFilter.GaussianBlur(radius=radius))


class RandomSolarize:
    """Invert pixels above 128 with probability p."""

    def __init__(self, p: float):
        self.p = p

    def __call__(self, img: Image.Image) -> Image.Image:
        if self.p <= 0 or torch.rand(()).item() >= self.p:
            return img
        return ImageOps.solarize(img, threshold=128)


class RandomStrokeWidth:
    """With probability ``p``, thicken or thin (even odds) a bright-on-dark image's strokes by one pixel each side.

    Handwriting varies in pen width as much as in shape; a 3x3 maximum (or minimum) filter changes the width
    and leaves the shape, so that views of one digit agree whatever its stroke.
    """

    def __init__(self, p: float):
        self.p = p

    def __call__(self, img: Image.Image) -> Image.Image:
        if self.p <= 0 or torch.rand(()).item() >= self.p:
            return img
        thicken = torch.rand(()).item() < 0.5
        return img.filter(ImageFilter.MaxFilter(3) if thicken else ImageFilter.MinFilter(3))


class ToThreeChannels:
    """Repeat a one-channel tensor to three, so grayscale data fits the standard RGB stems."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x.expand(3, -1, -1) if x.shape[0] == 1 else x


class MultiView:
    """Applies one pipeline per view and returns the list of views."""

    def __init__(self, pipelines: list[Callable[[Image.Image], torch.Tensor]]):
        self.pipelines = pipelines

    def __call__(self, img: Image.Image) -> list[torch.Tensor]:
        return [pipeline(img) for pipeline in self.pipelines]


def _barlow_view(size: int, scale: tuple[float, float], aug: AugmentConfig, blur: float,
                 solarize: float) -> T.Compose:
    return T.Compose([
        T.RandomResizedCrop(size, scale=scale, interpolation=T.InterpolationMode.BICUBIC),
        T.RandomHorizontalFlip(aug.hflip),
        T.RandomApply([T.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=aug.color_jitter),
        T.RandomGrayscale(aug.grayscale),
        RandomGaussianBlur(blur),
        RandomSolarize(solarize),
        T.ToTensor(),
        T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


def _small_gray_geometry(aug: AugmentConfig):
    if aug.translate == 0 and aug.shear == 0:  # the rotation alone, drawn as the shipped recipes were measured
        return T.RandomRotation(aug.rotation, interpolation=T.InterpolationMode.BILINEAR)
    return T.RandomAffine(aug.rotation, translate=(aug.translate, aug.translate), shear=aug.shear,
                          interpolation=T.InterpolationMode.BILINEAR)


def _small_gray_view(size: int, scale: tuple[float, float], aug: AugmentConfig, blur: float,
                     solarize: float) -> T.Compose:
    # Digits-like data: no hue or saturation to jitter, and small blur radii (the images are tiny).
    return T.Compose([
        T.RandomResizedCrop(size, scale=scale, ratio=(0.8, 1.25), interpolation=T.InterpolationMode.BILINEAR),
        T.RandomHorizontalFlip(aug.hflip),
        _small_gray_geometry(aug),
        *([RandomStrokeWidth(aug.stroke_width)] if aug.stroke_width > 0 else []),
        *([RandomBackdrop(aug.backdrop)] if aug.backdrop > 0 else []),
        T.RandomApply([T.ColorJitter(brightness=0.4, contrast=0.4)], p=aug.color_jitter),
        RandomGaussianBlur(blur, sigma_min=0.1, sigma_max=0.1 + size / 32),
        RandomSolarize(solarize),
        T.ToTensor(),
        ToThreeChannels(),
        T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


_VIEW_BUILDERS = {"barlow": _barlow_view, "small_gray": _small_gray_view}


def build_train_transform(augment: AugmentConfig, views: list[ViewSpec]) -> MultiView:
    """One pipeline of ``augment.pipeline`` per view of ``views`` (one stage of ``view_specs.view_stages``)."""
    builder = _VIEW_BUILDERS[augment.pipeline]
    return MultiView([builder(v.size, v.scale, augment, v.blur, v.solarize) for v in views])


_INTERPOLATION = {"bilinear": T.InterpolationMode.BILINEAR, "bicubic": T.InterpolationMode.BICUBIC}


def eval_transform(pipeline: str, size: int, interpolation: str = "bilinear") -> T.Compose:
    """The deterministic view of an image for evaluation.

    ``barlow``: resize the short side to size x 256/224, then centre-crop ``size`` (the ImageNet
    protocol: 256 then 224). ``small_gray``: resize the whole image to ``size`` x ``size``.
    """
    if pipeline == "small_gray":
        return T.Compose([
            T.Resize((size, size), interpolation=T.InterpolationMode.BILINEAR),
            T.ToTensor(), ToThreeChannels(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ])
    return T.Compose([
        T.Resize(int(round(size * 256 / 224)), interpolation=_INTERPOLATION[interpolation]),
        T.CenterCrop(size), T.ToTensor(), ToThreeChannels(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


def build_classification_transforms(pipeline: str, size: int, crop_scale: tuple[float, float], hflip: float,
                                    interpolation: str = "bilinear",
                                    backdrop: float = 0.0) -> tuple[T.Compose, T.Compose]:
    """(training view, evaluation view) of the supervised protocols (linear probe, fine-tuning).

    Training: random-resized crop of ``crop_scale`` and a horizontal flip with probability ``hflip``
    (the ImageNet protocol: scale (0.08, 1), p 0.5); for ``small_gray`` the crop's aspect ratio stays
    within 0.8-1.25, as in its pretraining views, and ``backdrop`` paints a view on a random backdrop
    with that probability (:class:`twist.data.backdrop.RandomBackdrop`).
    """
    ratio = (0.8, 1.25) if pipeline == "small_gray" else (3 / 4, 4 / 3)
    mode = T.InterpolationMode.BILINEAR if pipeline == "small_gray" else _INTERPOLATION[interpolation]
    train = T.Compose([
        T.RandomResizedCrop(size, scale=crop_scale, ratio=ratio, interpolation=mode),
        T.RandomHorizontalFlip(hflip),
        *([RandomBackdrop(backdrop)] if backdrop > 0 else []),
        T.ToTensor(), ToThreeChannels(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])
    return train, eval_transform(pipeline, size, interpolation)
