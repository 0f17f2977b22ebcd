"""The synthetic VOC and COCO writer: detectron2's built-in layouts, consistent boxes and masks."""
import json
import os
from xml.etree import ElementTree

from PIL import Image

from twist_detection.checks import dataset_problems
from twist_detection.synthetic_data import COCO_CATEGORIES, VOC_CLASS_OF_SHAPE, write_all

VOC_CLASSES = {"aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
               "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor"}


def test_writes_every_split_the_configs_read(tmp_path):
    write_all(str(tmp_path), images=3, size=64, seed=1)
    names = ["voc_2007_trainval", "voc_2007_test", "voc_2012_trainval", "coco_2017_train", "coco_2017_val"]
    assert dataset_problems(names, str(tmp_path)) == []

    ids = (tmp_path / "VOC2007" / "ImageSets" / "Main" / "test.txt").read_text().split()
    assert len(ids) == 3
    for image_id in ids:
        assert Image.open(tmp_path / "VOC2007" / "JPEGImages" / f"{image_id}.jpg").size == (64, 64)
        tree = ElementTree.parse(tmp_path / "VOC2007" / "Annotations" / f"{image_id}.xml")
        objects = tree.findall("object")
        assert 1 <= len(objects) <= 3
        for obj in objects:
            assert obj.find("name").text in VOC_CLASSES and obj.find("name").text in VOC_CLASS_OF_SHAPE.values()
            box = [int(obj.find(f"bndbox/{k}").text) for k in ("xmin", "ymin", "xmax", "ymax")]
            assert 1 <= box[0] < box[2] <= 64 and 1 <= box[1] < box[3] <= 64


def test_coco_annotations_use_coco_categories_and_masks_inside_boxes(tmp_path):
    write_all(str(tmp_path), images=4, size=64, seed=2)
    data = json.loads((tmp_path / "coco" / "annotations" / "instances_val2017.json").read_text())
    assert [(c["id"], c["name"]) for c in data["categories"]] == COCO_CATEGORIES and len(COCO_CATEGORIES) == 80
    images = {im["id"]: im for im in data["images"]}
    assert len(images) == 4 and data["annotations"]
    for ann in data["annotations"]:
        x, y, w, h = ann["bbox"]
        polygon = ann["segmentation"][0]
        xs, ys = polygon[0::2], polygon[1::2]
        assert min(xs) >= x - 0.01 and max(xs) <= x + w + 0.01 and min(ys) >= y - 0.01 and max(ys) <= y + h + 0.01
        assert 0 < ann["area"] <= w * h + 1e-6 and ann["iscrowd"] == 0
        assert os.path.isfile(tmp_path / "coco" / "val2017" / images[ann["image_id"]]["file_name"])
