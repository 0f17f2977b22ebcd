"""``twist-trials``: N seeded downstream trials of one config, and their summary (mean ± std).

    twist-trials run --engine detectron2 --config CFG --weights W.pkl --trials 5 --output-dir DIR [KEY VALUE ...]
    twist-trials run --engine detectron2 --config CFG --pretrained runs/r50/checkpoint.pth --output-dir DIR
    twist-trials run --engine mmseg --config CFG --weights W.pth --output-dir DIR -- --data-root ROOT key=value
    twist-trials summarize DIR [--trials trial0_seed0 trial1_seed1 ... | --seeds 0 1 ...]

``run`` records its trials in DIR/trials.json and refuses a rerun in DIR under another engine,
config, weights (path or contents) or overrides. ``--pretrained`` runs the whole pipeline: convert
the pretraining checkpoint (validated, weights-only) into DIR, run the trials, write
DIR/summary.json and DIR/summary.md.
``--dry-run`` makes every check the real run makes before its first trial, prints every command it
would run, and runs and writes nothing. ``summarize`` reads the trials DIR/trials.json lists (or those
named) and no other folder. A trial counts only when its final evaluation is complete and holds no
NaN; a summary with a failed trial says so in its first line. Exit status: 0 when every trial
succeeded, 1 when one failed, 2 when the input is wrong (one line says what).
"""
from __future__ import annotations

import argparse
import os
import sys

from twist.trials import (
    ENGINES,
    MANIFEST,
    SUMMARY_MD,
    TrialsError,
    TrialsSetup,
    check_setup,
    chosen_trials,
    engine_named,
    ignored_folders,
    read_manifest,
    read_trials,
    run_trials,
    write_summary,
)

CONVERT_SUFFIX = {"detectron2": ".pkl", "mmseg": ".pth"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="twist-trials", description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
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
    run.add_argument("--trials", type=int, help="how many (default: one per --seeds, else 5)")
    run.add_argument("--seeds", type=int, nargs="+", help="one seed per trial, each >= 0 and its own (default 0, 1, "
                                                         "..., trials-1)")
    run.add_argument("--num-gpus", type=int, default=1, help="GPUs per trial (trials run one after another)")
    run.add_argument("--output-dir", required=True)
    run.add_argument("--dry-run", action="store_true",
                     help="make the checks the real run makes, print every command, run and write nothing")
    run.add_argument("overrides", nargs=argparse.REMAINDER,
                     help="passed to every trial: detectron2 KEY VALUE pairs; mmseg key=value config options and "
                          "train.py flags such as --data-root (after --)")
    summarize = sub.add_parser("summarize", help="(re)write summary.json and summary.md of a trials folder")
    summarize.add_argument("output_dir", metavar="DIR")
    summarize.add_argument("--engine", choices=sorted(ENGINES),
                           help="the engine that wrote the trials (default: the one trials.json records, else "
                                "recognised from their files)")
    chosen = summarize.add_mutually_exclusive_group()
    chosen.add_argument("--trials", nargs="+", metavar="FOLDER",
                        help="the trial folders in DIR to summarise (needed when DIR has no trials.json)")
    chosen.add_argument("--seeds", type=int, nargs="+", help="the trials trial0_seedS0, trial1_seedS1, ... of DIR")
    return parser


def _converted_path(args) -> str:
    return os.path.join(args.output_dir, "weights" + CONVERT_SUFFIX[args.engine])


def _convert_pretrained(args, out: str) -> None:
    """Convert ``--pretrained`` into ``out``; a dry run makes the same checks and writes nothing."""
    flags = (["--teacher"] if args.teacher else []) + (["--trust-checkpoint"] if args.trust_checkpoint else [])
    print(("[dry run] " if args.dry_run else "") + " ".join(["twist-convert", "--to", args.engine, args.pretrained,
                                                              out, *flags]))
    if os.path.isfile(out) and read_manifest(args.output_dir) is not None:
        return  # converted by an earlier run of this very setup: check_setup compared the checkpoints
    from twist.convert import convert, write
    from twist.convert.conversion import check_output_path
    from twist.models.pretrained import load_backbone_weights

    conversion = convert(load_backbone_weights(args.pretrained, args.teacher, args.trust_checkpoint), args.engine)
    if args.dry_run:
        if os.path.isdir(args.output_dir):  # else the real run makes it, and the checkpoint cannot be inside
            check_output_path(out, args.pretrained, conversion.suffixes, conversion.target)
        return
    os.makedirs(args.output_dir, exist_ok=True)
    write(conversion, out, args.pretrained)
    for note in conversion.notes:
        print(f"  config needs: {note}")


def guess_engine(output_dir: str) -> str:
    """mmseg when a trial folder holds mmseg's outputs, else detectron2."""
    import glob

    mmseg_files = glob.glob(os.path.join(output_dir, "trial*", "final_metrics.json")) + glob.glob(
        os.path.join(output_dir, "trial*", "*", "vis_data"))
    return "mmseg" if mmseg_files else "detectron2"


def checked_seeds(args) -> list[int]:
    """The seeds of the trials to run, from --trials and --seeds, refused in one line when they cannot be."""
    if args.trials is not None and args.trials < 1:
        raise TrialsError(f"--trials must be at least 1, got {args.trials}")
    for seed in args.seeds or []:
        if seed < 0:
            raise TrialsError(f"--seeds: {seed} is negative; detectron2 reads a negative SEED as 'pick one at "
                              f"random', so the trial's seed would be unknown")
        if args.seeds.count(seed) > 1:
            raise TrialsError(f"--seeds repeats {seed}: each trial needs a seed of its own")
    count = args.trials if args.trials is not None else len(args.seeds or range(5))
    seeds = args.seeds or list(range(count))
    if len(seeds) != count:
        raise TrialsError(f"--seeds gives {len(seeds)} seeds for --trials {count}")
    return seeds


def check_run_arguments(args) -> None:
    if args.num_gpus < 1:
        raise TrialsError(f"--num-gpus must be at least 1, got {args.num_gpus}")
    for given, flag in ((args.teacher, "--teacher"), (args.trust_checkpoint, "--trust-checkpoint")):
        if given and not args.pretrained:
            raise TrialsError(f"{flag} applies only with --pretrained (it says how to read the checkpoint to convert)")
    if os.path.isdir(args.config):
        raise TrialsError(f"config '{args.config}' is a folder, not a config file")
    if not os.path.isfile(args.config):
        raise TrialsError(f"config '{args.config}' does not exist")


def run(args) -> int:
    seeds = checked_seeds(args)
    check_run_arguments(args)
    overrides = args.overrides[1:] if args.overrides[:1] == ["--"] else args.overrides
    weights = None if args.scratch else (_converted_path(args) if args.pretrained else args.weights)
    setup = TrialsSetup(args.engine, args.config, weights, args.pretrained, overrides)
    check_setup(setup, args.output_dir)
    if args.pretrained:
        _convert_pretrained(args, weights)
    elif weights is not None and not os.path.isfile(weights):
        raise TrialsError(f"weights '{weights}' " + ("is a folder, not a weights file" if os.path.isdir(weights)
                                                     else "do not exist"))
    trials = run_trials(setup, args.output_dir, seeds, args.num_gpus, dry_run=args.dry_run)
    if args.dry_run:
        return 0
    return _summarise(args.output_dir, trials, f"{args.engine}: {args.config}")


def summarize(args) -> int:
    trials, manifest = chosen_trials(args.output_dir, args.trials, args.seeds)
    recorded = manifest["engine"] if manifest else None
    if args.engine and recorded and args.engine != recorded:
        raise TrialsError(f"--engine {args.engine}, but '{os.path.join(args.output_dir, MANIFEST)}' records "
                          f"trials of {recorded}")
    engine = engine_named(args.engine or recorded or guess_engine(args.output_dir))
    read_trials(engine, trials)
    return _summarise(args.output_dir, trials, f"{engine.name} trials in {args.output_dir}")


def _summarise(output_dir: str, trials, title: str) -> int:
    """Write and print the summary; the failed trials are named again last, on stderr, where they are seen."""
    ignored = ignored_folders(output_dir, trials)
    if ignored:
        print(f"ignored {len(ignored)} folder{'s' if len(ignored) > 1 else ''} that "
              f"{'are' if len(ignored) > 1 else 'is'} not one of the trials: {', '.join(ignored)}")
    summary = write_summary(output_dir, trials, title, ignored)
    with open(os.path.join(output_dir, SUMMARY_MD), encoding="utf-8") as f:
        print(f.read())
    if summary["failed"]:
        print(f"twist-trials: {summary['num_failed']} of {summary['num_trials']} trials failed: " + "; ".join(
            f"trial {t['trial']} (seed {t['seed']}): {t['error']}" for t in summary["failed"]), file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from twist.engine.checkpoint import CheckpointError

    try:
        return run(args) if args.command == "run" else summarize(args)
    except (TrialsError, CheckpointError, OSError) as err:  # an OSError names its path: a folder not writable
        print(f"twist-trials: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
