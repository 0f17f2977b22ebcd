"""Digit scenes: a small real-image detection and segmentation set made from scikit-learn's digits.

Each scene is an RGB canvas holding a few of the bundled 8x8 handwritten digits, each resized to
its own size and drawn in its own colour at a random place where it overlaps no other, over a
background of smooth colour gradients and noise (so that foreground is not a threshold away).
Every label comes from the digit's own strokes:

- semantic map: class ``d + 1`` where digit ``d``'s stroke coverage is at least one half,
  background 0 where no digit is drawn, and 255 (ignore) in the thin anti-aliased rim between them,
  as Pascal VOC marks object boundaries;
- instances: one mask per digit (its stroke pixels), with the tight box around that mask.

Scenes of the ``train`` split are made only from the ``train`` digits, those of ``val`` only from
the held-out ``val`` digits (the fixed partition of :class:`twist.data.datasets.DigitsSource`).

Digit ``d`` is written under the ``d``-th Pascal VOC class name (aeroplane for 0, ..., cow for 9):
the first ten of both MMSegmentation's VOC classes (after background) and Detectron2's, so that
both read the files with a class list cut to those ten. The same seed writes byte-identical files.
"""
from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass, field
from xml.etree import ElementTree

import numpy as np
from PIL import Image

from twist.atomic import atomic_write
from twist.data.backdrop import paint, smooth_background, stroke_colour
from twist.data.datasets import DigitsSource

VOC_NAMES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow")
DIGIT_CLASSES = tuple(str(d) for d in range(10))
IGNORE = 255
STROKE_COVERAGE = 0.5   # a pixel belongs to a digit from this stroke coverage on
RIM_COVERAGE = 0.15     # below this the pixel is background; in between, ignored
SPLIT_STREAM = {"train": 0, "val": 1}


@dataclass(frozen=True)
class SceneSpec:
    """How scenes are drawn."""

    canvas: int = 112                      # side of the square canvas, in pixels
    digits_per_scene: tuple[int, int] = (2, 5)
    digit_size: tuple[int, int] = (22, 46)  # side of a resized digit, in pixels
    gap: int = 2                            # free pixels between two digits' squares
    noise_std: float = 10.0
    background_grid: int = 4                # the background's colour gradients: a grid of this many colours a side


@dataclass
class Instance:
    digit: int
    mask: np.ndarray                   # bool, canvas x canvas
    box: tuple[int, int, int, int]     # x0, y0, x1, y1: the mask's tight box, x1 and y1 exclusive
    source_index: int                  # which image of the digit pool was drawn
    square: tuple[int, int, int]       # x, y, side of the square it was drawn in


@dataclass
class Scene:
    image: np.ndarray                  # uint8, canvas x canvas x 3
    semantic: np.ndarray               # uint8, canvas x canvas: 0 background, d + 1 digit d, 255 ignore
    instances: list[Instance] = field(default_factory=list)


def digit_coverage(digit: np.ndarray, size: int) -> np.ndarray:
    """An 8x8 digit (uint8, 0..255) resized to ``size`` px as stroke coverage in [0, 1]."""
    resized = Image.fromarray(digit).resize((size, size), Image.BILINEAR)
    return np.asarray(resized, dtype=np.float64) / 255.0


def free_place(rng: np.random.Generator, taken: list[tuple[int, int, int, int]], size: int, spec: SceneSpec,
               tries: int = 50) -> tuple[int, int] | None:
    """The top-left corner of a ``size`` square that keeps ``spec.gap`` pixels from every taken square."""
    for _ in range(tries):
        x, y = (int(v) for v in rng.integers(0, spec.canvas - size + 1, size=2))
        if all(x + size + spec.gap <= x0 or x0 + s + spec.gap <= x or y + size + spec.gap <= y0
               or y0 + s + spec.gap <= y for x0, y0, s, _ in taken):
            return x, y
    return None


def paint_digit(rng: np.random.Generator, pixels: np.ndarray, digit: np.ndarray, x: int, y: int,
                size: int) -> np.ndarray:
    """Draw an 8x8 ``digit`` as a ``size`` square at (x, y) of ``pixels`` in its own colour; returns its coverage."""
    coverage = digit_coverage(digit, size)
    window = pixels[y:y + size, x:x + size]
    paint(window, coverage, stroke_colour(rng, window))
    return coverage


def draw_scene(rng: np.random.Generator, digits: np.ndarray, labels: np.ndarray, spec: SceneSpec) -> Scene:
    """One scene from the digit pool ``digits`` (N x 8 x 8 uint8) with their ``labels``."""
    side = spec.canvas
    pixels = smooth_background(rng, side, spec.noise_std, spec.background_grid)
    semantic = np.zeros((side, side), dtype=np.uint8)
    taken: list[tuple[int, int, int, int]] = []
    instances = []
    for _ in range(int(rng.integers(spec.digits_per_scene[0], spec.digits_per_scene[1] + 1))):
        size = int(rng.integers(spec.digit_size[0], spec.digit_size[1] + 1))
        place = free_place(rng, taken, size, spec)
        if place is None:
            continue
        x, y = place
        pick = int(rng.integers(len(labels)))
        digit = int(labels[pick])
        taken.append((x, y, size, pick))
        coverage = paint_digit(rng, pixels, digits[pick], x, y, size)
        window = (slice(y, y + size), slice(x, x + size))
        mask = np.zeros((side, side), dtype=bool)
        mask[window] = coverage >= STROKE_COVERAGE
        rim = np.zeros_like(mask)
        rim[window] = (coverage >= RIM_COVERAGE) & ~mask[window]
        semantic[rim] = IGNORE
        semantic[mask] = digit + 1
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        box = (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)
        instances.append(Instance(digit, mask, box, pick, (x, y, size)))
    image = np.clip(np.round(pixels), 0, 255).astype(np.uint8)
    return Scene(image, semantic, instances)


def make_scenes(split: str, count: int, spec: SceneSpec = SceneSpec(), seed: int = 0) -> list[Scene]:
    """``count`` scenes of ``split`` ('train' or 'val'), drawn only from that split's digits."""
    source = DigitsSource(split)
    rng = np.random.default_rng([seed, SPLIT_STREAM[split]])
    return [draw_scene(rng, source.images, source.labels, spec) for _ in range(count)]


# ---- writing ------------------------------------------------------------------------------------------

def voc_palette() -> list[int]:
    """Pascal VOC's colour map: the bits of a class index spread over the three channels."""
    palette = []
    for index in range(256):
        r = g = b = 0
        value = index
        for bit in range(8):
            r |= ((value >> 0) & 1) << (7 - bit)
            g |= ((value >> 1) & 1) << (7 - bit)
            b |= ((value >> 2) & 1) << (7 - bit)
            value >>= 3
        palette += [r, g, b]
    return palette


def _save(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    atomic_write(path, lambda f: f.write(data))


def _encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def voc_annotation(name: str, scene: Scene) -> bytes:
    """The Pascal VOC XML of a scene's boxes (1-based, inclusive corners)."""
    side = scene.image.shape[0]
    root = ElementTree.Element("annotation")
    ElementTree.SubElement(root, "folder").text = "VOC2012"
    ElementTree.SubElement(root, "filename").text = f"{name}.jpg"
    dims = ElementTree.SubElement(root, "size")
    for tag, value in (("width", side), ("height", side), ("depth", 3)):
        ElementTree.SubElement(dims, tag).text = str(value)
    for inst in scene.instances:
        node = ElementTree.SubElement(root, "object")
        ElementTree.SubElement(node, "name").text = VOC_NAMES[inst.digit]
        ElementTree.SubElement(node, "pose").text = "Unspecified"
        ElementTree.SubElement(node, "truncated").text = "0"
        ElementTree.SubElement(node, "difficult").text = "0"
        box = ElementTree.SubElement(node, "bndbox")
        x0, y0, x1, y1 = inst.box
        for tag, value in (("xmin", x0 + 1), ("ymin", y0 + 1), ("xmax", x1), ("ymax", y1)):
            ElementTree.SubElement(box, tag).text = str(value)
    return ElementTree.tostring(root)


def coco_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed run-length encoding: runs over the column-major pixels, starting with zeros."""
    flat = mask.flatten(order="F").astype(np.int8)
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0]:
        counts = [0] + counts
    return {"counts": counts, "size": [int(mask.shape[0]), int(mask.shape[1])]}


def write_voc(base: str, scenes: dict[str, list[Scene]]) -> None:
    """``base`` laid out as VOC2012: JPEGImages, SegmentationClass(Aug), Annotations, ImageSets/{Segmentation,Main}."""
    palette = voc_palette()
    for split, items in scenes.items():
        names = [f"{split}_{i:06d}" for i in range(len(items))]
        for name, scene in zip(names, items):
            _save(os.path.join(base, "JPEGImages", f"{name}.jpg"),
                  _encode(Image.fromarray(scene.image), "JPEG", quality=95))
            label = Image.fromarray(scene.semantic, mode="P")
            label.putpalette(palette)
            png = _encode(label, "PNG")
            _save(os.path.join(base, "SegmentationClass", f"{name}.png"), png)
            _save(os.path.join(base, "SegmentationClassAug", f"{name}.png"), png)
            _save(os.path.join(base, "Annotations", f"{name}.xml"), voc_annotation(name, scene))
        listing = ("\n".join(names) + "\n").encode()
        for folder in ("Segmentation", "Main"):
            _save(os.path.join(base, "ImageSets", folder, f"{split}.txt"), listing)
    # The shipped VOC configs train on train.txt + aug.txt (SBD); the scenes have no extra set.
    _save(os.path.join(base, "ImageSets", "Segmentation", "aug.txt"), b"")


def write_coco(base: str, scenes: dict[str, list[Scene]]) -> None:
    """``base``/{split}2017/*.jpg and annotations/instances_{split}2017.json with RLE masks, categories 1..10."""
    categories = [{"id": d + 1, "name": DIGIT_CLASSES[d], "supercategory": "digit"} for d in range(10)]
    for split, items in scenes.items():
        images, annotations = [], []
        for i, scene in enumerate(items):
            side = scene.image.shape[0]
            file_name = f"{split}_{i:06d}.jpg"
            _save(os.path.join(base, f"{split}2017", file_name),
                  _encode(Image.fromarray(scene.image), "JPEG", quality=95))
            images.append({"id": i + 1, "file_name": file_name, "width": side, "height": side})
            for inst in scene.instances:
                x0, y0, x1, y1 = inst.box
                annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": inst.digit + 1,
                                    "bbox": [x0, y0, x1 - x0, y1 - y0], "area": int(inst.mask.sum()),
                                    "iscrowd": 0, "segmentation": coco_rle(inst.mask)})
        data = {"info": {"description": "twist digit scenes"}, "licenses": [], "images": images,
                "annotations": annotations, "categories": categories}
        _save(os.path.join(base, "annotations", f"instances_{split}2017.json"), json.dumps(data).encode())


def write_digit_scenes(root: str, train: int, val: int, spec: SceneSpec = SceneSpec(), seed: int = 0) -> dict:
    """Write ``train`` + ``val`` scenes under ``root``: ``VOCdevkit/VOC2012`` and ``coco``. Returns the paths."""
    scenes = {"train": make_scenes("train", train, spec, seed), "val": make_scenes("val", val, spec, seed)}
    voc, coco = os.path.join(root, "VOCdevkit", "VOC2012"), os.path.join(root, "coco")
    write_voc(voc, scenes)
    write_coco(coco, scenes)
    return {"voc": voc, "coco": coco, "train": train, "val": val}
