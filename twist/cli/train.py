"""``twist-train``: pretrain TWIST from a YAML config with dotted overrides."""
from __future__ import annotations

import argparse
import sys
import time

import torch

from twist.atomic import OutputError, as_output_error
from twist.config import ConfigError, load_config
from twist.data import CorruptImageError, DatasetError
from twist.engine.checkpoint import CheckpointError, UnsafeCheckpointError
from twist.engine.run_lock import RunFolderLocked
from twist.engine.trainer import TrainingDiverged, train
from twist.losses import WhiteningError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="twist-train",
        description="Pretrain TWIST. Resumes by itself from OUTPUT_DIR/checkpoint.pth when it exists, under the "
                    "config it was written with: a change to any key but the few that docs/config.md lists "
                    "(more epochs, logging, workers, evaluation) is refused. One run at a time holds OUTPUT_DIR "
                    "(the lock file OUTPUT_DIR/twist-train.lock).",
        epilog="example: twist-train --config configs/demo/digits.yaml --output-dir runs/demo train.epochs=5")
    parser.add_argument("--config", required=True, help="YAML config file (see configs/)")
    parser.add_argument("--output-dir", required=True, help="where checkpoints, logs and metrics go")
    parser.add_argument("--max-steps", type=int, default=None,
                        help="stop (with a checkpoint) after this many optimiser steps in total")
    parser.add_argument("--restart", action="store_true",
                        help="start over in OUTPUT_DIR: its earlier run (checkpoint, logs, config, exports) is moved, "
                             "not deleted, to OUTPUT_DIR/previous/<date>/")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="dotted config overrides, e.g. optim.lr=0.3 train.epochs=10")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    start = time.perf_counter()
    try:
        cfg = load_config(args.config, args.overrides)
        result = train(cfg, args.output_dir, max_steps=args.max_steps, restart=args.restart)
    except UnsafeCheckpointError as err:  # twist-train resumes only from checkpoints it wrote: tensors and values
        print(f"twist-train: error: {err}. It is not a checkpoint twist-train wrote, so it should not be in the "
              f"run folder: move it out of '{args.output_dir}'", file=sys.stderr)
        return 2
    except (ConfigError, DatasetError, CorruptImageError, CheckpointError, TrainingDiverged, WhiteningError,
            RunFolderLocked, OutputError) as err:
        print(f"twist-train: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a write into the run folder that the system refused, wherever it was made
        if as_output_error(err, args.output_dir) is None:
            raise
        print(f"twist-train: error: {as_output_error(err, args.output_dir)}", file=sys.stderr)
        return 2
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    metrics = result.get("metrics")
    if metrics:
        print(format_metrics(metrics))
    if result["main"]:
        print(f"twist-train: at step {result['step']} after {format_duration(time.perf_counter() - start)} "
              f"(this invocation: set-up, training{', evaluation' if metrics else ''})")
    return 0


def format_duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def format_metrics(metrics: dict) -> str:
    rows = [("TWIST (head argmax)", metrics)]
    if "baseline" in metrics:
        rows.append((metrics["baseline"]["method"], metrics["baseline"]))
    lines = [f"{'method':<26}{'ACC':>8}{'NMI':>8}{'AMI':>8}{'ARI':>8}"]
    lines += [f"{name:<26}{m['acc']:>8.3f}{m['nmi']:>8.3f}{m['ami']:>8.3f}{m['ari']:>8.3f}" for name, m in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
