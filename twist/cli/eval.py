"""``twist-eval <protocol>``: evaluate a pretrained backbone (linear, knn, semisup) or the TWIST head (cluster)."""
from __future__ import annotations

import argparse
import sys

import torch

from twist.atomic import OutputError
from twist.config import ConfigError
from twist.data import CorruptImageError, DatasetError
from twist.engine.checkpoint import CheckpointError

PROTOCOL_HELP = {
    "linear": "linear classifier on the frozen backbone (the paper's linear probe)",
    "knn": "weighted k-nearest-neighbour classifier on L2-normalised features",
    "semisup": "fine-tune backbone and a linear head on a labelled subset (1%, 10%, or a fraction)",
    "cluster": "the TWIST head's argmax as an unsupervised classifier: NMI, AMI, ARI, ACC and figures",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="twist-eval",
        description="Evaluate a TWIST checkpoint. Data settings come from the pretraining config stored with "
                    "the checkpoint (or config.yaml beside it); --config and key=value overrides change any key "
                    "(see docs/evaluation.md). Results go to OUTPUT_DIR/results.json.",
        epilog="example: twist-eval knn --checkpoint runs/demo/checkpoint.pth --output-dir runs/demo/knn")
    sub = parser.add_subparsers(dest="protocol", required=True, metavar="protocol")
    for name, help_text in PROTOCOL_HELP.items():
        p = sub.add_parser(name, help=help_text.replace("%", "%%"), description=help_text)  # help is %-formatted
        p.add_argument("--checkpoint", help="a full checkpoint.pth or backbone-only weights (this project's, the "
                                            "authors', or a plain state dict with common SSL prefixes)")
        p.add_argument("--output-dir", required=True, help="where results.json, the log and figures go")
        p.add_argument("--config", help="an evaluation YAML config (e.g. configs/eval/imagenet_linear_resnet50.yaml)")
        p.add_argument("--teacher", action="store_true", help="evaluate the EMA teacher's weights")
        p.add_argument("--trust-checkpoint", action="store_true",
                       help="allow full unpickling of a checkpoint that is not weights-only (only for files you "
                            "trust: unpickling can run code)")
        p.add_argument("--wandb", choices=("online", "offline"),
                       help="also log the results to Weights & Biases in this mode (offline needs no network; "
                            "the 'wandb' extra)")
        p.add_argument("--wandb-project", default="twist", help="the W&B project (with --wandb)")
        p.add_argument("--wandb-entity", default="", help="the W&B entity (with --wandb; default: yours)")
        if name == "semisup":
            p.add_argument("--random-init", action="store_true",
                           help="train the network of model.* from random weights (the from-scratch baseline)")
        p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides, e.g. knn.k=10")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    random_init = getattr(args, "random_init", False)
    if bool(args.checkpoint) == random_init:
        print("twist-eval: error: give --checkpoint" + (" or --random-init (not both)" if args.protocol == "semisup"
                                                          else ""), file=sys.stderr)
        return 2
    from twist.eval import protocol_runner
    from twist.eval.session import open_session

    try:
        session = open_session(args.protocol, args.output_dir, args.checkpoint, args.teacher,
                               args.trust_checkpoint, args.config, args.overrides)
        results = protocol_runner(args.protocol)(session)
        if args.wandb and session.env.is_main:
            log_results_to_wandb(args, session.cfg, results)
    except (ConfigError, DatasetError, CorruptImageError, CheckpointError, OutputError) as err:
        print(f"twist-eval: error: {err}", file=sys.stderr)
        return 2
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    if session.env.is_main:
        print(format_results(results))
        print(f"results: {args.output_dir}/results.json")
    return 0


def log_results_to_wandb(args: argparse.Namespace, cfg: dict, results: dict) -> None:
    """One W&B run of job type ``eval-<protocol>``: the resolved config, the output folder's name, the figures."""
    from twist.engine.logging import WandbRun

    settings = {"wandb_project": args.wandb_project, "wandb_entity": args.wandb_entity, "wandb_mode": args.wandb}
    run = WandbRun(settings, {**cfg, "checkpoint": args.checkpoint}, args.output_dir, job_type=f"eval-{args.protocol}")
    try:
        run.log({"kind": "eval", **{key: value for key, value in results.items() if key != "baseline"}})
    finally:
        run.finish()


def format_results(results: dict) -> str:
    protocol = results["protocol"]
    source = results["checkpoint"] or "random initialisation"
    head = f"{protocol} | {results['backbone']} | {results['weights']} weights from {source}"
    if protocol == "cluster":
        rows = [("TWIST (head argmax)", results)]
        if "baseline" in results:
            rows.append((results["baseline"]["method"], results["baseline"]))
        lines = [f"{'method':<26}{'ACC':>8}{'NMI':>8}{'AMI':>8}{'ARI':>8}"]
        lines += [f"{name:<26}{m['acc']:>8.3f}{m['nmi']:>8.3f}{m['ami']:>8.3f}{m['ari']:>8.3f}" for name, m in rows]
        extra = f"acc_majority {results['acc_majority']:.3f}"
        if "acc_top5" in results:
            extra += f", acc_top5 {results['acc_top5']:.3f}"
        return "\n".join([head, *lines, extra])
    line = f"top-1 {results['top1']:.4f}  top-5 {results['top5']:.4f}  ({results['num_val']} val images)"
    if "best_top1" in results:
        line += f"  best top-1 {results['best_top1']:.4f} at epoch {results['best_epoch']}"
    if "baseline" in results:
        baseline = results["baseline"]
        line += f"\n{baseline['method']}: top-1 {baseline['top1']:.4f}  top-5 {baseline['top5']:.4f}"
    return f"{head}\n{line}"


if __name__ == "__main__":
    sys.exit(main())
