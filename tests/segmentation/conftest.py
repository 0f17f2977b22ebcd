import os

import pytest

pytest.importorskip("mmseg", reason="the seg extra (mmsegmentation on mmcv-lite) is not installed")

CONFIG_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "segmentation", "configs")


def small_run_options(config: str, iters: int = 2) -> list[str]:
    """cfg-options that shrink a shipped config to a CPU-sized run: 64 px crops, batch 2, no workers."""
    voc = "voc12aug" in config
    size = "(64,64)"
    train_sets = ["train_dataloader.dataset.datasets.0", "train_dataloader.dataset.datasets.1"] if voc else [
        "train_dataloader.dataset"]
    options = [f"train_cfg.max_iters={iters}", f"train_cfg.val_interval={iters}", f"param_scheduler.0.end={iters}",
               "default_hooks.checkpoint.interval=1", "default_hooks.logger.interval=1",
               f"model.data_preprocessor.size={size}", "train_dataloader.batch_size=2",
               "train_dataloader.num_workers=0", "train_dataloader.persistent_workers=False",
               "val_dataloader.num_workers=0", "val_dataloader.persistent_workers=False",
               "test_dataloader.num_workers=0", "test_dataloader.persistent_workers=False",
               "env_cfg.cudnn_benchmark=False"]
    for prefix in train_sets:  # pipeline: 3 RandomResize, 4 RandomCrop
        options += [f"{prefix}.pipeline.3.scale=(128,64)", f"{prefix}.pipeline.4.crop_size={size}"]
    for loader in ("val_dataloader", "test_dataloader"):  # pipeline: 1 Resize
        options.append(f"{loader}.dataset.pipeline.1.scale=(128,64)")
    return options
