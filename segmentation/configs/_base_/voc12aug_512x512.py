# Pascal VOC 2012 + SBD augmentation (10,582 training images = train.txt + aug.txt; 1,449 val),
# 512x512 crops, mmseg 1.x's pascal_voc12_aug settings: 4 images per GPU (x4 GPUs = 16).
# Prepare SegmentationClassAug and aug.txt with mmseg's tools/dataset_converters/voc_aug.py.
dataset_type = "PascalVOCDataset"
data_root = "data/VOCdevkit/VOC2012"
crop_size = (512, 512)
train_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadAnnotations"),
    dict(type="CheckLabelRange", num_classes=21),
    dict(type="RandomResize", scale=(2048, 512), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type="RandomCrop", crop_size=crop_size, cat_max_ratio=0.75),
    dict(type="RandomFlip", prob=0.5),
    dict(type="PhotoMetricDistortion"),
    dict(type="PackSegInputs"),
]
test_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="Resize", scale=(2048, 512), keep_ratio=True),
    dict(type="LoadAnnotations"),
    dict(type="CheckLabelRange", num_classes=21),
    dict(type="PackSegInputs"),
]
voc_train = dict(type=dataset_type, data_root=data_root,
                 data_prefix=dict(img_path="JPEGImages", seg_map_path="SegmentationClass"),
                 ann_file="ImageSets/Segmentation/train.txt", pipeline=train_pipeline)
voc_aug = dict(type=dataset_type, data_root=data_root,
               data_prefix=dict(img_path="JPEGImages", seg_map_path="SegmentationClassAug"),
               ann_file="ImageSets/Segmentation/aug.txt", pipeline=train_pipeline)
train_dataloader = dict(
    batch_size=4, num_workers=4, persistent_workers=True,
    sampler=dict(type="InfiniteSampler", shuffle=True),
    dataset=dict(type="ConcatDataset", datasets=[voc_train, voc_aug]),
)
val_dataloader = dict(
    batch_size=1, num_workers=4, persistent_workers=True,
    sampler=dict(type="DefaultSampler", shuffle=False),
    dataset=dict(type=dataset_type, data_root=data_root,
                 data_prefix=dict(img_path="JPEGImages", seg_map_path="SegmentationClass"),
                 ann_file="ImageSets/Segmentation/val.txt", pipeline=test_pipeline),
)
test_dataloader = val_dataloader
val_evaluator = dict(type="IoUMetric", iou_metrics=["mIoU"])
test_evaluator = val_evaluator
