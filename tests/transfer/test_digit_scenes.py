"""The digit-scene generator: labels that agree with the digits drawn, the split kept, byte-identical
files for one seed, and the real loaders (MMSegmentation's VOC dataset; Detectron2's VOC and COCO
loaders when Detectron2 is installed) reading what it writes."""
import hashlib
import json
import os
from xml.etree import ElementTree

import numpy as np
import pytest
from PIL import Image

from twist.data.datasets import DigitsSource
from twist.transfer.digit_scenes import (
    IGNORE,
    RIM_COVERAGE,
    STROKE_COVERAGE,
    VOC_NAMES,
    SceneSpec,
    coco_rle,
    digit_coverage,
    draw_scene,
    make_scenes,
    write_digit_scenes,
)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    return write_digit_scenes(str(root), train=6, val=4, seed=3), root


def test_every_label_comes_from_the_digit_drawn_there():
    source = DigitsSource("val")
    scenes = make_scenes("val", 12, seed=1)
    assert sum(len(s.instances) for s in scenes) >= 24
    for scene in scenes:
        expected = np.zeros_like(scene.semantic)
        for inst in scene.instances:
            x, y, side = inst.square
            assert inst.digit == source.labels[inst.source_index]
            coverage = digit_coverage(source.images[inst.source_index], side)
            stroke = np.zeros(scene.semantic.shape, dtype=bool)
            stroke[y:y + side, x:x + side] = coverage >= STROKE_COVERAGE
            assert np.array_equal(inst.mask, stroke)
            rows, cols = np.nonzero(inst.mask)
            assert inst.box == (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1)
            window = expected[y:y + side, x:x + side]
            window[(coverage >= RIM_COVERAGE) & (coverage < STROKE_COVERAGE)] = IGNORE
            window[coverage >= STROKE_COVERAGE] = inst.digit + 1
        assert np.array_equal(scene.semantic, expected)
        masks = np.stack([inst.mask for inst in scene.instances])
        assert masks.sum(axis=0).max() == 1  # no two digits share a pixel


def test_a_solid_digit_is_drawn_in_one_colour_over_a_background_that_is_not_flat():
    pool, labels = np.full((1, 8, 8), 255, dtype=np.uint8), np.array([7])
    scene = draw_scene(np.random.default_rng(0), pool, labels, SceneSpec(digits_per_scene=(3, 3)))
    assert len(scene.instances) == 3
    free = np.ones(scene.semantic.shape, dtype=bool)
    for inst in scene.instances:
        x, y, side = inst.square
        assert inst.box == (x, y, x + side, y + side) and inst.mask.sum() == side * side
        inside = scene.image[inst.mask].reshape(-1, 3)
        assert (inside.max(axis=0) - inside.min(axis=0)).max() <= 1  # one colour, up to rounding
        free &= ~inst.mask
    assert set(np.unique(scene.semantic)) == {0, 8}
    assert scene.image[free].std(axis=0).min() > 20  # gradients: no threshold separates digits from it


def test_train_scenes_use_only_train_digits_and_val_scenes_only_val_digits():
    for split in ("train", "val"):
        pool = {im.tobytes() for im in DigitsSource(split).images}
        other = {im.tobytes() for im in DigitsSource("val" if split == "train" else "train").images}
        for scene in make_scenes(split, 8, seed=2):
            for inst in scene.instances:
                drawn = DigitsSource(split).images[inst.source_index].tobytes()
                assert drawn in pool and drawn not in other


def _digests(root) -> dict[str, str]:
    return {os.path.relpath(os.path.join(d, f), root): hashlib.sha256(open(os.path.join(d, f), "rb").read()).hexdigest()
            for d, _, files in os.walk(root) for f in files}


def test_the_same_seed_writes_byte_identical_files(tmp_path, written):
    _, root = written
    write_digit_scenes(str(tmp_path / "again"), train=6, val=4, seed=3)
    write_digit_scenes(str(tmp_path / "other"), train=6, val=4, seed=4)
    assert _digests(root) == _digests(tmp_path / "again")
    assert _digests(root) != _digests(tmp_path / "other")


def _decode_rle(rle: dict) -> np.ndarray:
    height, width = rle["size"]
    flat = np.zeros(height * width, dtype=bool)
    position, value = 0, False
    for count in rle["counts"]:
        flat[position:position + count] = value
        position, value = position + count, not value
    assert position == height * width
    return flat.reshape((width, height)).T


def test_voc_and_coco_files_hold_the_scenes_labels(written):
    paths, _ = written
    scenes = make_scenes("val", 4, seed=3)
    names = open(os.path.join(paths["voc"], "ImageSets", "Segmentation", "val.txt")).read().split()
    coco = json.load(open(os.path.join(paths["coco"], "annotations", "instances_val2017.json")))
    assert [c["name"] for c in coco["categories"]] == [str(d) for d in range(10)]
    for i, (name, scene) in enumerate(zip(names, scenes)):
        png = Image.open(os.path.join(paths["voc"], "SegmentationClass", f"{name}.png"))
        assert png.mode == "P" and np.array_equal(np.asarray(png), scene.semantic)
        xml = ElementTree.parse(os.path.join(paths["voc"], "Annotations", f"{name}.xml"))
        objects = [(o.find("name").text, *(int(o.find(f"bndbox/{k}").text) for k in ("xmin", "ymin", "xmax", "ymax")))
                   for o in xml.findall("object")]
        assert objects == [(VOC_NAMES[t.digit], t.box[0] + 1, t.box[1] + 1, t.box[2], t.box[3])
                           for t in scene.instances]
        annotations = [a for a in coco["annotations"] if a["image_id"] == i + 1]
        assert [a["category_id"] for a in annotations] == [t.digit + 1 for t in scene.instances]
        for ann, inst in zip(annotations, scene.instances):
            assert np.array_equal(_decode_rle(ann["segmentation"]), inst.mask)
            assert ann["bbox"] == [inst.box[0], inst.box[1], inst.box[2] - inst.box[0], inst.box[3] - inst.box[1]]


def test_rle_starts_with_a_run_of_zeros():
    mask = np.zeros((3, 2), dtype=bool)
    mask[0, 0] = mask[2, 1] = True
    assert coco_rle(mask) == {"counts": [0, 1, 4, 1], "size": [3, 2]}
    assert np.array_equal(_decode_rle(coco_rle(mask)), mask)


def test_mmsegmentation_voc_dataset_reads_the_scenes(written):
    pytest.importorskip("mmseg", reason="the seg extra is not installed")
    from twist.mmseg_compat import ensure_mmseg_importable

    ensure_mmseg_importable()
    from mmseg.datasets import PascalVOCDataset
    from mmseg.utils import register_all_modules

    register_all_modules(init_default_scope=True)
    paths, _ = written
    dataset = PascalVOCDataset(data_root=paths["voc"], data_prefix=dict(img_path="JPEGImages",
                                                                        seg_map_path="SegmentationClass"),
                               ann_file="ImageSets/Segmentation/train.txt",
                               metainfo=dict(classes=("background", *VOC_NAMES)),
                               pipeline=[dict(type="LoadImageFromFile"), dict(type="LoadAnnotations")])
    scenes = make_scenes("train", 6, seed=3)
    assert len(dataset) == 6
    for i in (0, 5):
        item = dataset[i]
        assert np.array_equal(item["gt_seg_map"], scenes[i].semantic)
        assert item["img"].shape == (*scenes[i].semantic.shape, 3)


def test_detectron2_voc_and_coco_loaders_read_the_scenes(written):
    pytest.importorskip("detectron2", reason="Detectron2 is not installed")
    from detectron2.data.datasets import load_coco_json, load_voc_instances
    from detectron2.structures import BoxMode
    from pycocotools import mask as mask_util

    paths, _ = written
    scenes = make_scenes("val", 4, seed=3)
    voc = load_voc_instances(paths["voc"], "val", VOC_NAMES)
    coco = load_coco_json(os.path.join(paths["coco"], "annotations", "instances_val2017.json"),
                          os.path.join(paths["coco"], "val2017"), dataset_name="twist_digit_scenes_val_test")
    assert len(voc) == len(coco) == 4
    for scene, from_voc, from_coco in zip(scenes, voc, coco):
        assert [a["category_id"] for a in from_voc["annotations"]] == [t.digit for t in scene.instances]
        boxes = [tuple(map(float, t.box)) for t in scene.instances]
        assert [tuple(a["bbox"]) for a in from_voc["annotations"]] == boxes
        assert all(a["bbox_mode"] == BoxMode.XYXY_ABS for a in from_voc["annotations"])
        assert [a["category_id"] for a in from_coco["annotations"]] == [t.digit for t in scene.instances]
        for ann, inst in zip(from_coco["annotations"], scene.instances):
            segm = ann["segmentation"]
            rle = mask_util.frPyObjects(segm, *segm["size"]) if isinstance(segm["counts"], list) else segm
            assert np.array_equal(mask_util.decode(rle).astype(bool), inst.mask)
