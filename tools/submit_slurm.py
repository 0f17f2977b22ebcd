"""Submit a multi-node TWIST pretraining job to SLURM with submitit, requeued on preemption or timeout.

    python tools/submit_slurm.py --nodes 2 --gpus-per-node 8 --partition gpu --timeout-min 4320 \\
        --config configs/pretrain/resnet50_multicrop_selflabel.yaml --output-dir /runs/r50_mc data.path=/data/imagenet

One task per GPU. Each task sets the ``torch.distributed`` variables from SLURM's (the first node is
the rendezvous) and calls the same ``train`` as ``twist-train``. When SLURM preempts the job or its
time runs out, submitit calls ``checkpoint`` below, which resubmits the same job; the new job finds
``checkpoint.pth`` in the output directory and continues from the last saved step. Set
``train.checkpoint_every`` so that little work is lost between saves.
"""
from __future__ import annotations

import argparse
import os
import sys

RENDEZVOUS_PORT = 29517


class TrainingJob:
    """A picklable callable that submitit runs on every task, and resubmits when interrupted."""

    def __init__(self, config: str, output_dir: str, overrides: list[str]):
        self.config, self.output_dir, self.overrides = config, output_dir, list(overrides)

    def __call__(self) -> None:
        import submitit

        from twist.config import load_config
        from twist.engine.trainer import train

        job = submitit.JobEnvironment()
        os.environ.update(MASTER_ADDR=job.hostnames[0], MASTER_PORT=str(RENDEZVOUS_PORT),
                          RANK=str(job.global_rank), WORLD_SIZE=str(job.num_tasks), LOCAL_RANK=str(job.local_rank))
        train(load_config(self.config, self.overrides), self.output_dir)

    def checkpoint(self):
        """Called by submitit on preemption or timeout: run the same job again; it resumes by itself."""
        import submitit

        return submitit.helpers.DelayedSubmission(TrainingJob(self.config, self.output_dir, self.overrides))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--gpus-per-node", type=int, default=8)
    parser.add_argument("--cpus-per-task", type=int, default=10)
    parser.add_argument("--partition", default=None)
    parser.add_argument("--timeout-min", type=int, default=60 * 72)
    parser.add_argument("--job-dir", default=None, help="submitit logs (default: OUTPUT_DIR/slurm)")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        import submitit
    except ImportError:
        print("submit_slurm: submitit is not installed; pip install 'twist[slurm]'", file=sys.stderr)
        return 2
    from twist.config import ConfigError, load_config
    from twist.shipped_configs import resolve_config_path

    try:
        load_config(args.config, args.overrides)  # fail here, not on the cluster
    except ConfigError as err:
        print(f"submit_slurm: error: {err}", file=sys.stderr)
        return 2
    executor = submitit.AutoExecutor(folder=args.job_dir or os.path.join(args.output_dir, "slurm"))
    executor.update_parameters(nodes=args.nodes, tasks_per_node=args.gpus_per_node, gpus_per_node=args.gpus_per_node,
                               cpus_per_task=args.cpus_per_task, timeout_min=args.timeout_min,
                               slurm_partition=args.partition, slurm_signal_delay_s=120, name="twist")
    # the job (and each requeue) reads the config from its own working directory: pass an absolute path
    config = os.path.abspath(resolve_config_path(args.config))
    job = executor.submit(TrainingJob(config, args.output_dir, args.overrides))
    print(f"submitted job {job.job_id}; logs in {executor.folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
