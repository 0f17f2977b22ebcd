"""Tiny synthetic detection sets in the layouts detectron2's built-in datasets read.

Each image holds one to three filled shapes (rectangle, ellipse, triangle) on a noisy background;
the shape decides the class. Written under ``ROOT`` (point ``DETECTRON2_DATASETS`` at it):

- ``VOC2007/`` (``trainval`` and ``test``) and ``VOC2012/`` (``trainval``): ``JPEGImages``,
  ``Annotations`` (VOC XML) and ``ImageSets/Main/<split>.txt``; classes are VOC class names;
- ``coco/``: ``train2017/``, ``val2017/`` and ``annotations/instances_{train,val}2017.json`` with
  boxes and polygon masks, under COCO's own 80 categories (detectron2 checks them against its metadata).

    python -m twist_detection.synthetic_data --root /tmp/d2data --images 8
"""
from __future__ import annotations

import argparse
import json
import math
import os
from xml.etree import ElementTree

import numpy as np
from PIL import Image, ImageDraw

COCO_CATEGORIES = [
    (1, "person"), (2, "bicycle"), (3, "car"), (4, "motorcycle"), (5, "airplane"), (6, "bus"), (7, "train"),
    (8, "truck"), (9, "boat"), (10, "traffic light"), (11, "fire hydrant"), (13, "stop sign"), (14, "parking meter"),
    (15, "bench"), (16, "bird"), (17, "cat"), (18, "dog"), (19, "horse"), (20, "sheep"), (21, "cow"), (22, "elephant"),
    (23, "bear"), (24, "zebra"), (25, "giraffe"), (27, "backpack"), (28, "umbrella"), (31, "handbag"), (32, "tie"),
    (33, "suitcase"), (34, "frisbee"), (35, "skis"), (36, "snowboard"), (37, "sports ball"), (38, "kite"),
    (39, "baseball bat"), (40, "baseball glove"), (41, "skateboard"), (42, "surfboard"), (43, "tennis racket"),
    (44, "bottle"), (46, "wine glass"), (47, "cup"), (48, "fork"), (49, "knife"), (50, "spoon"), (51, "bowl"),
    (52, "banana"), (53, "apple"), (54, "sandwich"), (55, "orange"), (56, "broccoli"), (57, "carrot"),
    (58, "hot dog"), (59, "pizza"), (60, "donut"), (61, "cake"), (62, "chair"), (63, "couch"), (64, "potted plant"),
    (65, "bed"), (67, "dining table"), (70, "toilet"), (72, "tv"), (73, "laptop"), (74, "mouse"), (75, "remote"),
    (76, "keyboard"), (77, "cell phone"), (78, "microwave"), (79, "oven"), (80, "toaster"), (81, "sink"),
    (82, "refrigerator"), (84, "book"), (85, "clock"), (86, "vase"), (87, "scissors"), (88, "teddy bear"),
    (89, "hair drier"), (90, "toothbrush"),
]
SHAPES = ("rectangle", "ellipse", "triangle")
VOC_CLASS_OF_SHAPE = {"rectangle": "tvmonitor", "ellipse": "bird", "triangle": "sheep"}
COCO_ID_OF_SHAPE = {"rectangle": 72, "ellipse": 37, "triangle": 38}
COLOURS = {"rectangle": (220, 60, 50), "ellipse": (60, 200, 80), "triangle": (70, 90, 230)}


def _polygon(shape: str, box: tuple[int, int, int, int]) -> list[tuple[float, float]]:
    x0, y0, x1, y1 = box
    if shape == "rectangle":
        return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
    if shape == "triangle":
        return [((x0 + x1) / 2, y0), (x1, y1), (x0, y1)]
    cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
    return [(cx + rx * math.cos(2 * math.pi * k / 24), cy + ry * math.sin(2 * math.pi * k / 24)) for k in range(24)]


def _area(points: list[tuple[float, float]]) -> float:
    xs, ys = np.array([p[0] for p in points]), np.array([p[1] for p in points])
    return float(abs(np.dot(xs, np.roll(ys, 1)) - np.dot(ys, np.roll(xs, 1))) / 2)


def draw_image(rng: np.random.Generator, size: int) -> tuple[Image.Image, list[dict]]:
    """An image and its objects: ``{"shape", "box" (x0, y0, x1, y1), "polygon"}``."""
    pixels = rng.normal(110, 20, size=(size, size, 3)).clip(0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    objects = []
    for _ in range(int(rng.integers(1, 4))):
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        w, h = (int(v) for v in rng.integers(size // 5, size // 2, size=2))
        x0, y0 = int(rng.integers(0, size - w)), int(rng.integers(0, size - h))
        box = (x0, y0, x0 + w, y0 + h)
        polygon = _polygon(shape, box)
        draw.polygon(polygon, fill=COLOURS[shape])
        objects.append({"shape": shape, "box": box, "polygon": polygon})
    return image, objects


def _voc_xml(name: str, size: int, objects: list[dict]) -> bytes:
    root = ElementTree.Element("annotation")
    ElementTree.SubElement(root, "filename").text = f"{name}.jpg"
    dims = ElementTree.SubElement(root, "size")
    for tag, value in (("width", size), ("height", size), ("depth", 3)):
        ElementTree.SubElement(dims, tag).text = str(value)
    for obj in objects:
        node = ElementTree.SubElement(root, "object")
        ElementTree.SubElement(node, "name").text = VOC_CLASS_OF_SHAPE[obj["shape"]]
        ElementTree.SubElement(node, "pose").text = "Unspecified"  # VOC's evaluator reads all three
        ElementTree.SubElement(node, "truncated").text = "0"
        ElementTree.SubElement(node, "difficult").text = "0"
        box = ElementTree.SubElement(node, "bndbox")
        x0, y0, x1, y1 = obj["box"]
        # VOC boxes are 1-based and inclusive.
        for tag, value in (("xmin", x0 + 1), ("ymin", y0 + 1), ("xmax", x1), ("ymax", y1)):
            ElementTree.SubElement(box, tag).text = str(value)
    return ElementTree.tostring(root)


def write_voc(root: str, year: str, splits: dict[str, int], size: int, seed: int) -> None:
    base = os.path.join(root, f"VOC{year}")
    for sub in ("JPEGImages", "Annotations", os.path.join("ImageSets", "Main")):
        os.makedirs(os.path.join(base, sub), exist_ok=True)
    rng = np.random.default_rng([seed, int(year)])
    counter = 0
    for split, count in splits.items():
        names = []
        for _ in range(count):
            name = f"{year}_{counter:06d}"
            counter += 1
            image, objects = draw_image(rng, size)
            image.save(os.path.join(base, "JPEGImages", f"{name}.jpg"), quality=95)
            with open(os.path.join(base, "Annotations", f"{name}.xml"), "wb") as f:
                f.write(_voc_xml(name, size, objects))
            names.append(name)
        with open(os.path.join(base, "ImageSets", "Main", f"{split}.txt"), "w", encoding="utf-8") as f:
            f.write("\n".join(names) + "\n")


def write_coco(root: str, splits: dict[str, int], size: int, seed: int) -> None:
    base = os.path.join(root, "coco")
    os.makedirs(os.path.join(base, "annotations"), exist_ok=True)
    rng = np.random.default_rng([seed, 2017])
    image_id = annotation_id = 1
    for split, count in splits.items():
        folder = os.path.join(base, f"{split}2017")
        os.makedirs(folder, exist_ok=True)
        images, annotations = [], []
        for _ in range(count):
            image, objects = draw_image(rng, size)
            file_name = f"{image_id:012d}.jpg"
            image.save(os.path.join(folder, file_name), quality=95)
            images.append({"id": image_id, "file_name": file_name, "width": size, "height": size})
            for obj in objects:
                x0, y0, x1, y1 = obj["box"]
                annotations.append({
                    "id": annotation_id, "image_id": image_id, "category_id": COCO_ID_OF_SHAPE[obj["shape"]],
                    "bbox": [x0, y0, x1 - x0, y1 - y0], "area": _area(obj["polygon"]), "iscrowd": 0,
                    "segmentation": [[round(c, 2) for point in obj["polygon"] for c in point]],
                })
                annotation_id += 1
            image_id += 1
        data = {"info": {"description": "twist synthetic shapes"}, "licenses": [], "images": images,
                "annotations": annotations,
                "categories": [{"id": i, "name": n, "supercategory": "thing"} for i, n in COCO_CATEGORIES]}
        with open(os.path.join(base, "annotations", f"instances_{split}2017.json"), "w", encoding="utf-8") as f:
            json.dump(data, f)


def write_all(root: str, images: int = 8, size: int = 128, seed: int = 0) -> None:
    write_voc(root, "2007", {"trainval": images, "test": images}, size, seed)
    write_voc(root, "2012", {"trainval": images}, size, seed)
    write_coco(root, {"train": images, "val": images}, size, seed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True, help="where VOC2007/, VOC2012/ and coco/ are written")
    parser.add_argument("--images", type=int, default=8, help="images per split")
    parser.add_argument("--size", type=int, default=128, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    write_all(args.root, args.images, args.size, args.seed)
    print(f"wrote VOC2007, VOC2012 and coco under {args.root}; export DETECTRON2_DATASETS={args.root}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
