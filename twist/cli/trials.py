"""``twist-trials``: N seeded downstream trials of one config, and their summary (mean ± std).

    twist-trials run --engine detectron2 --config CFG --weights W.pkl --trials 5 --output-dir DIR [KEY VALUE ...]
    twist-trials run --engine detectron2 --config CFG --pretrained runs/r50/checkpoint.pth --output-dir DIR
    twist-trials run --engine mmseg --config CFG --weights W.pth --output-dir DIR -- --data-root ROOT key=value
    twist-trials summarize DIR

``--pretrained`` runs the whole pipeline: convert the pretraining checkpoint (validated, weights-only)
into DIR, run the trials, write DIR/summary.json and DIR/summary.md. ``--dry-run`` prints every
command it would run and runs none.
"""
from __future__ import annotations

import argparse
import os
import sys

from twist.trials import ENGINES, TrialsError, collect_trials, engine_named, run_trials, write_summary

CONVERT_SUFFIX = {"detectron2": ".pkl", "mmseg": ".pth"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="twist-trials", description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the trials (skips finished ones, resumes an interrupted one)")
    run.add_argument("--engine", required=True, choices=sorted(ENGINES))
    run.add_argument("--config", required=True, help="the engine's config file")
    weights = run.add_mutually_exclusive_group(required=True)
    weights.add_argument("--weights", help="converted weights (twist-convert's output)")
    weights.add_argument("--pretrained", help="a pretraining checkpoint: converted into OUTPUT_DIR first")
    weights.add_argument("--scratch", action="store_true", help="train from random initialisation")
    run.add_argument("--teacher", action="store_true", help="with --pretrained: convert the EMA teacher")
    run.add_argument("--trust-checkpoint", action="store_true", help="with --pretrained: allow full unpickling")
    run.add_argument("--trials", type=int, default=5)
    run.add_argument("--seeds", type=int, nargs="+", help="one seed per trial (default 0, 1, ..., trials-1)")
    run.add_argument("--num-gpus", type=int, default=1, help="GPUs per trial (trials run one after another)")
    run.add_argument("--output-dir", required=True)
    run.add_argument("--dry-run", action="store_true", help="print every command and run none")
    run.add_argument("overrides", nargs=argparse.REMAINDER,
                     help="passed to every trial: detectron2 KEY VALUE pairs; mmseg key=value config options and "
                          "train.py flags such as --data-root (after --)")
    summarize = sub.add_parser("summarize", help="(re)write summary.json and summary.md of a trials folder")
    summarize.add_argument("output_dir", metavar="DIR")
    summarize.add_argument("--engine", choices=sorted(ENGINES),
                           help="the engine that wrote the trials (default: recognised from their files)")
    return parser


def _convert_pretrained(args, dry_run: bool) -> str:
    out = os.path.join(args.output_dir, "weights" + CONVERT_SUFFIX[args.engine])
    flags = (["--teacher"] if args.teacher else []) + (["--trust-checkpoint"] if args.trust_checkpoint else [])
    print(("[dry run] " if dry_run else "") + " ".join(["twist-convert", "--to", args.engine, args.pretrained, out,
                                                         *flags]))
    if dry_run or os.path.isfile(out):
        return out
    from twist.convert import convert, write
    from twist.models.pretrained import load_backbone_weights

    conversion = convert(load_backbone_weights(args.pretrained, args.teacher, args.trust_checkpoint), args.engine)
    os.makedirs(args.output_dir, exist_ok=True)
    write(conversion, out, args.pretrained)
    for note in conversion.notes:
        print(f"  config needs: {note}")
    return out


def guess_engine(output_dir: str) -> str:
    """mmseg when a trial folder holds mmseg's outputs, else detectron2."""
    import glob

    mmseg_files = glob.glob(os.path.join(output_dir, "trial*", "final_metrics.json")) + glob.glob(
        os.path.join(output_dir, "trial*", "*", "vis_data"))
    return "mmseg" if mmseg_files else "detectron2"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from twist.engine.checkpoint import CheckpointError

    try:
        engine = engine_named(args.engine or guess_engine(args.output_dir))
        if args.command == "summarize":
            trials = collect_trials(engine, args.output_dir)
            summary = write_summary(args.output_dir, trials, f"{args.engine} trials in {args.output_dir}")
            print(open(os.path.join(args.output_dir, "summary.md"), encoding="utf-8").read())
            return 0 if summary["num_succeeded"] == summary["num_trials"] else 1
        overrides = args.overrides[1:] if args.overrides[:1] == ["--"] else args.overrides
        seeds = args.seeds or list(range(args.trials))
        if len(seeds) != args.trials:
            raise TrialsError(f"--seeds gives {len(seeds)} seeds for --trials {args.trials}")
        if not os.path.isfile(args.config):
            raise TrialsError(f"config '{args.config}' does not exist")
        weights = None if args.scratch else (_convert_pretrained(args, args.dry_run) if args.pretrained
                                             else args.weights)
        if weights is not None and not args.dry_run and not os.path.isfile(weights):
            raise TrialsError(f"weights '{weights}' do not exist")
        trials = run_trials(engine, args.config, weights, args.output_dir, seeds, args.num_gpus, overrides,
                            dry_run=args.dry_run)
        if args.dry_run:
            return 0
        summary = write_summary(args.output_dir, trials, f"{args.engine}: {args.config}")
        print(open(os.path.join(args.output_dir, "summary.md"), encoding="utf-8").read())
        failed = [t for t in trials if not t.metrics]
        if failed:
            raise TrialsError(f"{summary['num_succeeded']} of {len(trials)} trials succeeded; failed: "
                              + "; ".join(f"trial {t.index} (seed {t.seed}): {t.error}" for t in failed))
    except (TrialsError, CheckpointError) as err:
        print(f"twist-trials: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
