from twist.data.datasets import (
    CorruptImageError,
    DatasetError,
    DigitsSource,
    EvalDataset,
    ImageFolderSource,
    SyntheticSource,
    ViewsDataset,
    build_source,
    collate_views,
)
from twist.data.samplers import EpochSampler
from twist.data.transforms import build_eval_transform, build_train_transform

__all__ = ["CorruptImageError", "DatasetError", "DigitsSource", "EvalDataset", "ImageFolderSource",
           "SyntheticSource", "ViewsDataset", "build_source", "collate_views", "EpochSampler",
           "build_eval_transform", "build_train_transform"]
