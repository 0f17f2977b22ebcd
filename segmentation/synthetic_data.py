"""Tiny synthetic segmentation sets in the layouts MMSegmentation's VOC and Cityscapes datasets read.

Each image holds a few filled shapes on a noisy background; every pixel's label is its shape's class
(background 0), with a 255 (ignore) outline around each shape as VOC has. Written under ``ROOT``:

- ``VOCdevkit/VOC2012/``: ``JPEGImages/*.jpg``, ``SegmentationClass/*.png`` and
  ``SegmentationClassAug/*.png`` (palette PNGs of class indices 0-20, 255 ignore) and
  ``ImageSets/Segmentation/{train,val,aug}.txt``;
- ``cityscapes/``: ``leftImg8bit/{train,val}/<city>/<name>_leftImg8bit.png`` and
  ``gtFine/{train,val}/<city>/<name>_gtFine_labelTrainIds.png`` (train ids 0-18, 255 ignore).

    python -m twist_segmentation.synthetic_data --root /tmp/segdata --images 4
"""
from __future__ import annotations

import argparse
import os

import numpy as np
from PIL import Image, ImageDraw

from twist.transfer.digit_scenes import voc_palette

VOC_CLASSES_USED = (15, 8, 12)      # person, cat, dog
CITYSCAPES_CLASSES_USED = (0, 11, 13)  # road, person, car
PALETTE = voc_palette()


def draw_scene(rng: np.random.Generator, height: int, width: int, classes: tuple[int, ...], background: int,
               outline: bool) -> tuple[Image.Image, np.ndarray]:
    image = Image.fromarray(rng.normal(100, 25, size=(height, width, 3)).clip(0, 255).astype(np.uint8))
    label = Image.new("L", (width, height), background)
    draw_image, draw_label = ImageDraw.Draw(image), ImageDraw.Draw(label)
    for _ in range(int(rng.integers(1, 4))):
        cls = classes[int(rng.integers(len(classes)))]
        w, h = int(rng.integers(width // 6, width // 2)), int(rng.integers(height // 6, height // 2))
        x0, y0 = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
        colour = tuple(int(v) for v in (np.array([40, 90, 160]) + 37 * cls) % 256)
        shape = [x0, y0, x0 + w, y0 + h]
        draw_image.ellipse(shape, fill=colour)
        draw_label.ellipse(shape, fill=cls, outline=255 if outline else cls, width=2 if outline else 1)
    return image, np.asarray(label)


def write_voc(root: str, splits: dict[str, int], size: int = 96, seed: int = 0) -> str:
    base = os.path.join(root, "VOCdevkit", "VOC2012")
    for sub in ("JPEGImages", "SegmentationClass", "SegmentationClassAug", os.path.join("ImageSets", "Segmentation")):
        os.makedirs(os.path.join(base, sub), exist_ok=True)
    rng = np.random.default_rng([seed, 2012])
    counter = 0
    for split, count in splits.items():
        names = []
        for _ in range(count):
            name = f"2012_{counter:06d}"
            counter += 1
            image, label = draw_scene(rng, size, size, VOC_CLASSES_USED, background=0, outline=True)
            image.save(os.path.join(base, "JPEGImages", f"{name}.jpg"), quality=95)
            png = Image.fromarray(label, mode="P")
            png.putpalette(PALETTE)
            folder = "SegmentationClassAug" if split == "aug" else "SegmentationClass"
            png.save(os.path.join(base, folder, f"{name}.png"))
            if split != "aug":  # VOC's own images are in both folders, as voc_aug.py leaves them
                png.save(os.path.join(base, "SegmentationClassAug", f"{name}.png"))
            names.append(name)
        with open(os.path.join(base, "ImageSets", "Segmentation", f"{split}.txt"), "w", encoding="utf-8") as f:
            f.write("\n".join(names) + "\n")
    return base


def write_cityscapes(root: str, splits: dict[str, int], height: int = 64, width: int = 128, seed: int = 0) -> str:
    base = os.path.join(root, "cityscapes")
    rng = np.random.default_rng([seed, 19])
    for split, count in splits.items():
        city = "synthcity"
        for folder in ("leftImg8bit", "gtFine"):
            os.makedirs(os.path.join(base, folder, split, city), exist_ok=True)
        for i in range(count):
            name = f"{city}_{i:06d}_000019"
            image, label = draw_scene(rng, height, width, CITYSCAPES_CLASSES_USED, background=0, outline=False)
            image.save(os.path.join(base, "leftImg8bit", split, city, f"{name}_leftImg8bit.png"))
            Image.fromarray(label, mode="L").save(
                os.path.join(base, "gtFine", split, city, f"{name}_gtFine_labelTrainIds.png"))
    return base


def write_all(root: str, images: int = 4, seed: int = 0) -> None:
    write_voc(root, {"train": images, "val": images, "aug": images}, seed=seed)
    write_cityscapes(root, {"train": images, "val": images}, seed=seed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True, help="where VOCdevkit/ and cityscapes/ are written")
    parser.add_argument("--images", type=int, default=4, help="images per split")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    write_all(args.root, args.images, args.seed)
    print(f"wrote {args.root}/VOCdevkit/VOC2012 and {args.root}/cityscapes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
