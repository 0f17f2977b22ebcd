"""The `barlow` view pipeline split in two: random draws and decoding on CPU workers, pixels on the device.

A worker decodes the image, caps its longer side (``augment.on_device_max_side``) and draws every
random parameter of every view, in the order and from the distributions of the CPU pipeline
(``twist.data.transforms``): crop box, flip, jitter on/off with its four factors and their order,
grayscale, blur sigma, solarisation. It returns the uint8 image and a small float "plan" per view.
On the device, :class:`DeviceAugment` turns a padded batch of images and their plans into the views,
batched: crop and resize (``roi_align``, which averages over each output pixel's footprint, so it
anti-aliases when it shrinks), flip, colour jitter in each sample's own order, grayscale, Gaussian
blur (per-sample sigma, one grouped convolution), solarisation, normalisation.

The colour operations follow torchvision's tensor definitions; the crop and the blur are close to,
not bit-equal with, the PIL operations of the CPU pipeline (tests/data/test_device_augment.py
measures both).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms as T
from torchvision.ops import roi_align
from torchvision.transforms.functional import pil_to_tensor

from twist.data.datasets import split_skipped
from twist.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from twist.data.view_specs import AugmentConfig, ViewSpec

# Plan columns, one row per view.
TOP, LEFT, HEIGHT, WIDTH, FLIP, JITTER, BRIGHTNESS, CONTRAST, SATURATION, HUE = range(10)
ORDER = slice(10, 14)  # the jitter operations' order: a permutation of (brightness, contrast, saturation, hue)
GRAY, BLUR, SIGMA, SOLARIZE = 14, 15, 16, 17
PLAN_WIDTH = 18
_JITTER = T.ColorJitter(0.4, 0.4, 0.2, 0.1)
_BLUR_SIGMA = (0.1, 2.0)


class ViewPlanner:
    """Worker side: ``img -> (uint8 image (3, H, W), plan (views, PLAN_WIDTH))`` for the given view specs.

    Each spec gives a view's crop scale and its blur and solarize probabilities; the draws consume torch's global
    generator exactly as the CPU pipeline's transforms do, view by view.
    """

    def __init__(self, specs: list[ViewSpec], augment: AugmentConfig):
        self.specs, self.augment = specs, augment

    def __call__(self, img: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
        img = img.convert("RGB")
        plan = torch.zeros(len(self.specs), PLAN_WIDTH)
        for row, spec in zip(plan, self.specs):
            scale, blur, solarize = spec.scale, spec.blur, spec.solarize
            # Drawn on the full-size image, as the CPU pipeline draws them; scaled below if it shrinks.
            row[TOP], row[LEFT], row[HEIGHT], row[WIDTH] = torch.tensor(
                T.RandomResizedCrop.get_params(img, list(scale), [3 / 4, 4 / 3]), dtype=torch.float32)
            row[FLIP] = float(torch.rand(1) < self.augment.hflip)
            if self.augment.color_jitter >= torch.rand(1):  # T.RandomApply's test
                order, b, c, s, h = T.ColorJitter.get_params(_JITTER.brightness, _JITTER.contrast,
                                                             _JITTER.saturation, _JITTER.hue)
                row[JITTER], row[BRIGHTNESS], row[CONTRAST], row[SATURATION], row[HUE] = 1.0, b, c, s, h
                row[ORDER] = order.float()
            row[GRAY] = float(torch.rand(1) < self.augment.grayscale)
            if blur > 0 and torch.rand(()).item() < blur:  # RandomGaussianBlur's draws
                row[BLUR] = 1.0
                row[SIGMA] = _BLUR_SIGMA[0] + (_BLUR_SIGMA[1] - _BLUR_SIGMA[0]) * torch.rand(()).item()
            if solarize > 0 and torch.rand(()).item() < solarize:
                row[SOLARIZE] = 1.0
        max_side = self.augment.on_device_max_side
        if max(img.size) > max_side:
            factor = max_side / max(img.size)
            size = (max(1, round(img.width * factor)), max(1, round(img.height * factor)))
            plan[:, [LEFT, WIDTH]] *= size[0] / img.width
            plan[:, [TOP, HEIGHT]] *= size[1] / img.height
            img = img.resize(size, Image.BICUBIC)
        return pil_to_tensor(img), plan


def build_view_planner(augment: AugmentConfig, views: list[ViewSpec]) -> ViewPlanner:
    """The planner of ``build_train_transform(augment, views)``'s views, for the `barlow` pipeline."""
    if augment.pipeline != "barlow":
        raise ValueError(f"augment.on_device implements the 'barlow' pipeline, not '{augment.pipeline}'")
    return ViewPlanner(views, augment)


def collate_planned(items: list):
    """Pad the uint8 images of a batch to a common size and stack the plans.

    Images sit top-left; the padding repeats their last row and column, so that sampling at a crop
    that touches the image's border reads the border, as it would at the edge of the tensor. Skipped
    images are listed last, as by ``collate_views``.
    """
    kept, skipped = split_skipped(items)
    if not kept:
        return None, None, None, skipped
    images = [item[0][0] for item in kept]
    height, width = max(i.shape[1] for i in images), max(i.shape[2] for i in images)
    batch = torch.zeros(len(images), 3, height, width, dtype=torch.uint8)
    for target, image in zip(batch, images):
        h, w = image.shape[1:]
        target[:, :h, :w] = image
        target[:, :h, w:] = image[:, :, -1:]
        target[:, h:, :] = target[:, h - 1:h, :]
    plans = torch.stack([item[0][1] for item in kept])
    labels = torch.tensor([item[1] for item in kept])
    indices = torch.tensor([item[2] for item in kept])
    return (batch, plans), labels, indices, skipped


def _grayscale(x: torch.Tensor) -> torch.Tensor:
    return (0.2989 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)  # torchvision's weights


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (factor * x + (1 - factor) * other).clamp(0, 1)


def _rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(1)
    high, low = x.max(dim=1).values, x.min(dim=1).values
    chroma = high - low
    saturation = chroma / torch.where(high == 0, torch.ones_like(high), high)
    safe = torch.where(chroma == 0, torch.ones_like(chroma), chroma)
    hue = torch.where(high == r, ((g - b) / safe) % 6, torch.where(high == g, (b - r) / safe + 2, (r - g) / safe + 4))
    hue = torch.where(chroma == 0, torch.zeros_like(hue), hue) / 6
    return torch.stack([hue % 1.0, saturation, high], dim=1)


def _hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    h, s, v = x.unbind(1)
    sector = torch.floor(h * 6)
    frac = h * 6 - sector
    sector = sector.long() % 6
    p, q, t = v * (1 - s), v * (1 - s * frac), v * (1 - s * (1 - frac))
    table = torch.stack([torch.stack(c, dim=1) for c in
                         [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]], dim=1)  # (B,6,3,H,W)
    index = sector[:, None, None].expand(-1, 1, 3, -1, -1)
    return table.gather(1, index).squeeze(1)


def adjust_brightness(x, factor):
    return (x * factor).clamp(0, 1)


def adjust_contrast(x, factor):
    mean = _grayscale(x).mean(dim=(1, 2, 3), keepdim=True)
    return _blend(x, mean, factor)


def adjust_saturation(x, factor):
    return _blend(x, _grayscale(x), factor)


def adjust_hue(x, shift):
    hsv = _rgb_to_hsv(x)
    hsv = torch.cat([(hsv[:, :1] + shift) % 1.0, hsv[:, 1:]], dim=1)
    return _hsv_to_rgb(hsv)


_OPERATIONS = [(adjust_brightness, BRIGHTNESS), (adjust_contrast, CONTRAST), (adjust_saturation, SATURATION),
               (adjust_hue, HUE)]


def color_jitter(x: torch.Tensor, plan: torch.Tensor) -> torch.Tensor:
    """Each sample's four operations in its own order; samples with the jitter off pass unchanged.

    ``plan`` lives on the host (see :class:`DeviceAugment`): which samples each operation touches is
    decided there, and only their indices and factors go to ``x``'s device.
    """
    on = plan[:, JITTER].bool()
    if not on.any():
        return x
    order = plan[:, ORDER].long()
    x = x.clone()
    for position in range(4):
        for op_index, (operation, column) in enumerate(_OPERATIONS):
            chosen = (on & (order[:, position] == op_index)).nonzero().squeeze(1)
            if len(chosen):
                factor = plan[chosen, column].to(x.device, non_blocking=True)[:, None, None, None]
                on_device = chosen.to(x.device, non_blocking=True)
                x[on_device] = operation(x[on_device], factor)
    return x


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-sample sigma (0 = unchanged), one grouped separable convolution.

    ``sigma`` lives on the host: the kernels (B x K numbers) are built there and copied over. The
    border is extended by repeating the edge pixels, as PIL's blur does (and unlike reflection, this
    works on views smaller than the kernel).
    """
    radius = max(1, math.ceil(3 * float(sigma.max())))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    safe = sigma.float().clamp_min(1e-3)[:, None]
    kernel = torch.exp(-0.5 * (offsets[None] / safe) ** 2)
    kernel = kernel / kernel.sum(dim=1, keepdim=True)
    identity = (offsets == 0).float().expand_as(kernel)
    kernel = torch.where((sigma > 0)[:, None], kernel, identity).to(x.device, x.dtype, non_blocking=True)
    batch, channels, height, width = x.shape
    weights = kernel.repeat_interleave(channels, dim=0)  # (B*C, K)
    flat = F.pad(x.reshape(1, batch * channels, height, width), (radius, radius, radius, radius), mode="replicate")
    flat = F.conv2d(flat, weights[:, None, None, :], groups=batch * channels)
    flat = F.conv2d(flat, weights[:, None, :, None], groups=batch * channels)
    return flat.reshape(batch, channels, height, width)


def crop_and_resize(images: torch.Tensor, plan: torch.Tensor, size: int) -> torch.Tensor:
    """The plan's box of each image, resized to ``size`` x ``size`` (values in [0, 1])."""
    top, left, height, width = plan[:, TOP], plan[:, LEFT], plan[:, HEIGHT], plan[:, WIDTH]
    boxes = torch.stack([torch.arange(len(plan), device=plan.device, dtype=plan.dtype),
                         left, top, left + width, top + height], dim=1)
    boxes = boxes.to(images.device, images.dtype, non_blocking=True)
    out = roi_align(images, boxes, output_size=size, spatial_scale=1.0, sampling_ratio=-1, aligned=True)
    return out.clamp(0, 1)


class DeviceAugment(torch.nn.Module):
    """Device side: ``(uint8 images (B, 3, H, W), plans (B, V, PLAN_WIDTH)) -> V normalised views``.

    The images are on the device, the plans stay on the host where the workers made them: every
    decision (which samples flip, blur, take each jitter operation in which order) is read there, so
    the augmentation never waits for the device (a host read of a device tensor would stall until the
    previous step's work has finished) and only a few small tensors are copied over.
    """

    def __init__(self, sizes: list[int]):
        super().__init__()
        self.sizes = sizes
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor, plans: torch.Tensor) -> list[torch.Tensor]:
        if plans.shape[1] != len(self.sizes):
            raise ValueError(f"plans describe {plans.shape[1]} views, the config {len(self.sizes)}")
        plans = plans.cpu()
        images = images.float() / 255

        def mask(plan, column):
            return plan[:, column].bool().to(images.device, non_blocking=True)[:, None, None, None]

        views = []
        for v, size in enumerate(self.sizes):
            plan = plans[:, v]
            x = crop_and_resize(images, plan, size)
            x = torch.where(mask(plan, FLIP), x.flip(-1), x)
            x = color_jitter(x, plan)
            x = torch.where(mask(plan, GRAY), _grayscale(x).expand_as(x), x)
            if plan[:, BLUR].any():
                x = gaussian_blur(x, plan[:, SIGMA] * plan[:, BLUR])
            x = torch.where(mask(plan, SOLARIZE) & (x >= 0.5), 1 - x, x)
            views.append((x - self.mean) / self.std)
        return views
