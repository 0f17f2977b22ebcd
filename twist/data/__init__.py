from twist.data.datasets import (
    CorruptImageError,
    DatasetError,
    DigitsSource,
    EvalDataset,
    ImageFolderSource,
    SourceConfig,
    SyntheticSource,
    ViewsDataset,
    build_source,
    collate_views,
)
from twist.data.samplers import EpochSampler
from twist.data.transforms import build_train_transform

__all__ = ["CorruptImageError", "DatasetError", "DigitsSource", "EvalDataset", "ImageFolderSource",
           "SourceConfig", "SyntheticSource", "ViewsDataset", "build_source", "collate_views", "EpochSampler",
           "build_train_transform"]
