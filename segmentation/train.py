"""Train and validate an MMSegmentation model from converted TWIST weights, over mmengine's Runner.

    python -m twist_segmentation.train segmentation/configs/fpn_r50_twist_4xb4-20k_voc12aug-512x512.py \
        --weights r50_mmseg.pth --work-dir runs/seg/voc --data-root data/VOCdevkit/VOC2012
    torchrun --nproc_per_node=4 -m twist_segmentation.train CONFIG --weights W --work-dir D --launcher pytorch

The run is refused before it starts when there are no weights (pass ``--scratch`` to train from
random initialisation), when the weights file is missing or does not fit the config's backbone
(missing, unexpected and misshapen keys are listed), or when a dataset folder, split file, image or
label file is missing; a label map with values outside the classes stops the run naming the file.
``--resume`` continues from the work directory's last checkpoint. Before the first iteration the
backbone is checked to hold exactly the weights' tensors after mmseg's own initialisation (their
digests go to ``WORK_DIR/initial_backbone.json``). The final validation's mIoU, aAcc and mAcc are
written to ``WORK_DIR/final_metrics.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch
from mmengine.config import DictAction

from twist.atomic import atomic_write
from twist.mmseg_compat import ensure_mmseg_importable
from twist_segmentation.checks import DatasetLayoutError, check_datasets

FINAL_METRICS = "final_metrics.json"
INITIAL_BACKBONE = "initial_backbone.json"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="an mmengine config, e.g. from segmentation/configs/")
    parser.add_argument("--work-dir", required=True, help="checkpoints, logs and final_metrics.json go here")
    weights = parser.add_mutually_exclusive_group()
    weights.add_argument("--weights", help="backbone weights converted by `twist-convert --to mmseg`")
    weights.add_argument("--scratch", action="store_true", help="train from random initialisation")
    parser.add_argument("--data-root", help="the dataset root of every dataloader (else the config's data_root)")
    parser.add_argument("--resume", action="store_true", help="continue from the work directory's last checkpoint")
    parser.add_argument("--launcher", choices=["none", "pytorch", "slurm"], default="none")
    parser.add_argument("--cfg-options", nargs="+", action=DictAction, default={}, metavar="KEY=VALUE",
                        help="config overrides, e.g. randomness.seed=0 train_cfg.max_iters=2")
    return parser.parse_args(argv)


def _loader_datasets(cfg):
    for name in ("train_dataloader", "val_dataloader", "test_dataloader"):
        loader = cfg.get(name)
        if loader:
            dataset = loader["dataset"]
            yield from (dataset["datasets"] if dataset.get("type") == "ConcatDataset" else [dataset])


def _replace_sync_bn(node) -> None:
    if isinstance(node, dict):
        if node.get("type") == "SyncBN":
            node["type"] = "BN"
        for value in node.values():
            _replace_sync_bn(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            _replace_sync_bn(value)


def check_weights_fit(cfg, path: str) -> None:
    """The weights must fill the config's backbone exactly: mmengine would load a mismatch with a warning.

    The file is read weights-only; the backbone is built on the meta device and only names and shapes
    are compared (loading onto meta tensors would warn once per tensor)."""
    from mmseg.registry import MODELS

    from twist.convert.conversion import ConversionError, compare, shapes_of
    from twist.engine.checkpoint import CheckpointError, describe_tensors, load_weights_only, nonfinite_tensors

    backbone_cfg = dict(cfg.model.backbone)
    backbone_cfg.pop("init_cfg", None)
    backbone_cfg["norm_cfg"] = dict(type="BN", requires_grad=True)  # the names are those of SyncBN too
    with torch.device("meta"):
        backbone = MODELS.build(backbone_cfg)
    try:
        state = load_weights_only(path)
    except CheckpointError as err:
        raise SystemExit(f"train: {err}") from None
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict):
        raise SystemExit(f"train: weights '{path}' hold a {type(state).__name__}, not a dict of tensors")
    bad = nonfinite_tensors(state)
    if bad:
        raise SystemExit(f"train: weights '{path}' have NaN or inf in {describe_tensors(bad)}: convert a checkpoint "
                         f"saved before the run diverged")
    try:
        compare(shapes_of(backbone), state, f"the {backbone_cfg['type']} backbone of {cfg.filename}")
    except ConversionError as err:
        raise SystemExit(f"train: weights '{path}': {err}. Convert the checkpoint with `twist-convert --to mmseg` "
                         f"and use a config whose backbone matches it (style='pytorch' ResNet, or the w2 widths)"
                         ) from None


def build_config(args):
    from mmengine.config import Config

    if not os.path.isfile(args.config):
        raise SystemExit(f"train: config '{args.config}' does not exist")
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    cfg.work_dir = args.work_dir
    cfg.launcher = args.launcher
    cfg.resume = args.resume
    if args.launcher != "none" and not torch.cuda.is_available():
        # Several CPU processes (a dry run of a cluster job): NCCL and SyncBN need GPUs.
        cfg.env_cfg.dist_cfg.backend = "gloo"
        cfg.model_wrapper_cfg = dict(type="MMDistributedDataParallel", device_ids=None, broadcast_buffers=False)
        _replace_sync_bn(cfg.model)
        print("train: no GPU: processes talk over gloo and every SyncBN is a per-process BN", file=sys.stderr)
    if not args.weights and not args.scratch:
        raise SystemExit("train: no backbone weights: pass --weights <file from `twist-convert --to mmseg`> or "
                         "--scratch to train from random initialisation")
    if args.weights:
        if not os.path.isfile(args.weights):
            raise SystemExit(f"train: weights file '{args.weights}' does not exist")
        cfg.model.backbone.init_cfg = dict(type="Pretrained", checkpoint=os.path.abspath(args.weights))
        check_weights_fit(cfg, args.weights)
    else:
        cfg.model.backbone.init_cfg = None
    if args.data_root:
        for dataset in _loader_datasets(cfg):
            dataset["data_root"] = args.data_root
    try:
        check_datasets(cfg)
    except DatasetLayoutError as err:
        raise SystemExit(f"train: {err}") from None
    return cfg


def mmengine_checkpoint_globals() -> list:
    """What mmengine pickles into its own checkpoints besides tensors: the message hub's history
    buffers (numpy arrays and scalars, and the statistics methods they name through ``getattr``).

    torch >= 2.6 loads weights-only by default, so mmengine cannot reload its own ``iter_N.pth``.
    These are allowed only while a run resumes from a checkpoint in its own work directory (see
    ``resuming_runner``); every other load stays weights-only with torch's defaults.
    """
    import codecs

    import numpy as np
    from mmengine.logging import HistoryBuffer

    multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
    dtypes = [type(np.dtype(t)) for t in ("float64", "float32", "float16", "int64", "int32", "uint8", "bool")]
    return [HistoryBuffer, multiarray._reconstruct, multiarray.scalar, np.ndarray, np.dtype, *dtypes, getattr,
            codecs.encode]


def resuming_runner():
    """mmengine's Runner, resuming only from checkpoints inside its work directory, with the globals above."""
    from mmengine.runner import Runner

    class ResumingRunner(Runner):
        def resume(self, filename, *args, **kwargs):
            own = os.path.realpath(self.work_dir) + os.sep
            if not os.path.realpath(filename).startswith(own):
                raise SystemExit(f"train: refusing to resume from '{filename}': only checkpoints this run wrote in "
                                 f"its work directory '{self.work_dir}' are unpickled beyond weights")
            with torch.serialization.safe_globals(mmengine_checkpoint_globals()):
                return super().resume(filename, *args, **kwargs)

    return ResumingRunner


def tensor_digest(tensor: torch.Tensor) -> str:
    """SHA-256 of a tensor's dtype, shape and bytes: equal digests, equal tensors."""
    import hashlib

    data = tensor.detach().cpu().contiguous()
    header = f"{data.dtype}{tuple(data.shape)}".encode()
    return hashlib.sha256(header + data.numpy().tobytes()).hexdigest()


def backbone_start_check(weights: str):
    """A hook that, before the first iteration of a run that is not resumed, checks that the backbone
    mmseg built and initialised holds exactly the tensors of ``weights``, and records their digests in
    ``WORK_DIR/initial_backbone.json``. A conversion or an ``init_cfg`` that loads nothing (mmengine
    only warns) stops the run here instead of training from random weights under a pretrained name."""
    from mmengine.hooks import Hook
    from mmengine.model import is_model_wrapper

    from twist.engine.checkpoint import load_weights_only

    class BackboneStartsFromWeights(Hook):
        def before_train(self, runner):
            if runner.iter > 0:  # resumed: the backbone is the run's own checkpoint's
                return
            model = runner.model.module if is_model_wrapper(runner.model) else runner.model
            own = model.backbone.state_dict()
            expected = load_weights_only(weights)
            expected = expected.get("state_dict", expected)
            differ = [k for k, v in expected.items() if k not in own or not torch.equal(own[k].cpu(), v)]
            if differ:
                raise SystemExit(f"train: after initialisation, {len(differ)} of the {len(expected)} tensors of "
                                   f"'{weights}' are not in the backbone (the first: {', '.join(differ[:3])})")
            if runner.rank == 0:
                record = {"weights": os.path.abspath(weights), "tensors": len(expected),
                          "digests": {k: tensor_digest(own[k]) for k in sorted(expected)}}
                atomic_write(os.path.join(runner.work_dir, INITIAL_BACKBONE),
                             lambda f: json.dump(record, f, indent=2), binary=False)

    return BackboneStartsFromWeights()


def main(argv=None) -> int:
    args = parse_args(argv)
    ensure_mmseg_importable()
    from mmengine.hooks import Hook
    from mmseg.utils import register_all_modules

    import twist_segmentation.transforms  # noqa: F401  registers CheckLabelRange

    register_all_modules(init_default_scope=True)
    cfg = build_config(args)

    class FinalMetrics(Hook):
        last: dict = {}

        def after_val_epoch(self, runner, metrics=None):
            if metrics:
                FinalMetrics.last = {k: float(v) for k, v in metrics.items()}

    if args.launcher == "pytorch" and not torch.cuda.is_available() and not torch.distributed.is_initialized():
        # mmengine's own initialisation selects a CUDA device; on CPU the group is joined here, over gloo.
        torch.distributed.init_process_group("gloo")
    runner = resuming_runner().from_cfg(cfg)
    runner.register_hook(FinalMetrics(), priority="LOWEST")
    if args.weights:
        runner.register_hook(backbone_start_check(args.weights), priority="HIGHEST")
    runner.train()
    if runner.rank == 0:
        record = {"iteration": runner.iter, "metrics": FinalMetrics.last, "config": os.path.abspath(args.config),
                  "weights": os.path.abspath(args.weights) if args.weights else None}
        atomic_write(os.path.join(args.work_dir, FINAL_METRICS), lambda f: json.dump(record, f, indent=2), binary=False)
        print("final validation: " + ", ".join(f"{k} {v:.2f}" for k, v in FinalMetrics.last.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
