# Semantic FPN on digit scenes (twist.transfer.digit_scenes): the shipped VOC config, cut to what a
# 2-core CPU and 64 px scenes of 10 digit classes demand. Everything not set here (the FPN neck and
# head, SGD with momentum 0.9 and weight decay 5e-4, poly decay, the augmentation pipeline) is the
# VOC config's. Digits are written under the first ten VOC class names, so the real PascalVOCDataset
# reads them with its class list cut to background + those ten.
_base_ = ["../fpn_r50_twist_4xb4-20k_voc12aug-512x512.py"]
num_classes = 11
classes = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow")
crop_size = (64, 64)
scale = (256, 64)  # images are resized around 64 px (x0.5 to x2 when training), as 512 px for VOC
max_iters = 1000
data_root = "data/digit_scenes/VOCdevkit/VOC2012"

data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(depth=18),
    neck=dict(in_channels=[64, 128, 256, 512]),
    decode_head=dict(num_classes=num_classes),
)
train_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadAnnotations"),
    dict(type="CheckLabelRange", num_classes=num_classes),
    dict(type="RandomResize", scale=scale, ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type="RandomCrop", crop_size=crop_size, cat_max_ratio=0.75),
    dict(type="RandomFlip", prob=0.5),
    dict(type="PhotoMetricDistortion"),
    dict(type="PackSegInputs"),
]
test_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="Resize", scale=scale, keep_ratio=True),
    dict(type="LoadAnnotations"),
    dict(type="CheckLabelRange", num_classes=num_classes),
    dict(type="PackSegInputs"),
]
# The scenes have no SBD-like extra set: train.txt alone replaces the VOC config's train + aug.
train_dataloader = dict(
    batch_size=8, num_workers=0, persistent_workers=False,
    dataset=dict(_delete_=True, type="PascalVOCDataset", data_root=data_root, metainfo=dict(classes=classes),
                 data_prefix=dict(img_path="JPEGImages", seg_map_path="SegmentationClass"),
                 ann_file="ImageSets/Segmentation/train.txt", pipeline=train_pipeline),
)
val_dataloader = dict(
    batch_size=1, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, metainfo=dict(classes=classes), pipeline=test_pipeline),
)
test_dataloader = val_dataloader
param_scheduler = [dict(type="PolyLR", eta_min=1e-4, power=0.9, begin=0, end=max_iters, by_epoch=False)]
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
default_hooks = dict(logger=dict(interval=50), checkpoint=dict(interval=max_iters),
                     visualization=dict(type="SegVisualizationHook", draw=False))
env_cfg = dict(cudnn_benchmark=False)
