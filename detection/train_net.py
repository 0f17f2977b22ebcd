"""Train and evaluate a Detectron2 detector from converted TWIST weights.

    python -m twist_detection.train_net --config-file detection/configs/voc_faster_rcnn_R_50_FPN_24k.yaml \
        --num-gpus 8 MODEL.WEIGHTS r50.pkl OUTPUT_DIR runs/voc/trial0 SEED 0

Detectron2's ``DefaultTrainer`` with the evaluator each dataset calls for (Pascal VOC's for
``voc_*``, COCO's for ``coco_*``), multi-GPU and multi-node through detectron2's own launcher
(``--num-gpus``, ``--num-machines``, ``--machine-rank``, ``--dist-url``). Datasets are read from
``$DETECTRON2_DATASETS`` (detectron2's built-in layout, and the digit scenes of
``twist_detection.digit_scenes``). The ``*_C4_*`` configs' ROI head, ``Res5ROIHeadsExtraNorm``, is
registered on import (``twist_detection.roi_heads``). Before any process starts, the run is
refused when ``MODEL.WEIGHTS`` is empty (pass ``--scratch`` to train from random weights), when the
weights file names Python objects beyond arrays (detectron2 itself would unpickle it in full), when
its backbone tensors do not fit the config's ResNet, when the weights are torchvision-style and the
config lacks the keys they need, or when a dataset folder is missing. What detectron2 loads instead
(with ``--resume``, the run's last checkpoint; a URL's download) is read the same way first. Final
AP/AP50/AP75 land in ``OUTPUT_DIR/metrics.json`` and ``OUTPUT_DIR/log.txt``.
"""
from __future__ import annotations

import os
import sys
from urllib.parse import urlparse

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.data import MetadataCatalog
from detectron2.engine import DefaultTrainer, default_argument_parser, default_setup, launch
from detectron2.evaluation import COCOEvaluator, PascalVOCDetectionEvaluator

from twist.engine.checkpoint import CheckpointError
from twist_detection.checks import check_weights_fit_config, dataset_problems, read_weights
from twist_detection.digit_scenes import PREFIX as DIGIT_SCENES
from twist_detection.digit_scenes import register_digit_scenes
from twist_detection.roi_heads import Res5ROIHeadsExtraNorm  # noqa: F401  (registers the C4 configs' ROI head)


class Trainer(DefaultTrainer):
    def resume_or_load(self, resume=True):
        check_file_to_load(self.checkpointer, self.cfg.MODEL.WEIGHTS, resume)
        super().resume_or_load(resume=resume)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        kind = MetadataCatalog.get(dataset_name).evaluator_type
        if kind == "pascal_voc":
            return PascalVOCDetectionEvaluator(dataset_name)
        if kind == "coco":
            return COCOEvaluator(dataset_name, output_dir=output_folder or os.path.join(cfg.OUTPUT_DIR, "inference"))
        raise ValueError(f"no evaluator for dataset '{dataset_name}' (evaluator type {kind!r}); expected a voc_* "
                         f"or coco_* dataset")


def config_value(cfg, dotted: str):
    """``cfg.A.B.C`` for ``"A.B.C"``, or None where a key is missing."""
    node = cfg
    for part in dotted.split("."):
        node = getattr(node, part, None)
    return node


def build_config(args):
    """The merged config, checked; raises ``SystemExit`` with the reason when the run must not start."""
    cfg = get_cfg()
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    weights = cfg.MODEL.WEIGHTS
    if args.scratch and weights:
        raise SystemExit(f"train_net: --scratch and MODEL.WEIGHTS {weights} contradict each other; drop one")
    if not args.scratch and not weights:
        raise SystemExit("train_net: MODEL.WEIGHTS is empty: pass MODEL.WEIGHTS <file converted by twist-convert> "
                         "or --scratch to train from random initialisation")
    if weights and not os.path.isfile(weights) and "://" not in weights:
        raise SystemExit(f"train_net: MODEL.WEIGHTS '{weights}' does not exist")
    if weights:
        try:
            check_weights_fit_config(weights, lambda key: config_value(cfg, key), args.config_file)
        except (ValueError, CheckpointError) as err:
            raise SystemExit(f"train_net: {err}") from None
    root = os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))
    names = list(cfg.DATASETS.TEST) if args.eval_only else list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST)
    problems = dataset_problems(names, root)
    if problems:
        raise SystemExit(f"train_net: datasets not found under DETECTRON2_DATASETS={root}: " + "; ".join(problems))
    if any(name.startswith(DIGIT_SCENES) for name in names):
        register_digit_scenes(root)
    return cfg


def check_file_to_load(checkpointer: DetectionCheckpointer, weights: str, resume: bool) -> None:
    """Read the file ``checkpointer.resume_or_load`` will load without running code from it, where
    build_config has not: the run's last checkpoint (with ``--resume``) or a URL's download."""
    path = checkpointer.get_checkpoint_file() if resume and checkpointer.has_checkpoint() else weights
    if not path or path == weights and os.path.isfile(weights):
        return
    local = checkpointer.path_manager.get_local_path(urlparse(path)._replace(query="").geturl())
    try:
        read_weights(local)
    except CheckpointError as err:
        raise SystemExit(f"train_net: {err}") from None


def main(args):
    cfg = build_config(args)
    cfg.freeze()
    default_setup(cfg, args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        checkpointer = DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR)
        check_file_to_load(checkpointer, cfg.MODEL.WEIGHTS, args.resume)
        checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        return Trainer.test(cfg, model)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def parse_args(argv=None):
    parser = default_argument_parser()
    parser.add_argument("--scratch", action="store_true", help="train from random initialisation (no MODEL.WEIGHTS)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse_args()
    build_config(arguments)  # refuse a bad run here, before any worker starts
    launch(main, arguments.num_gpus, num_machines=arguments.num_machines, machine_rank=arguments.machine_rank,
           dist_url=arguments.dist_url, args=(arguments,))
    sys.exit(0)
