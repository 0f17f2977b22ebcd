"""``twist-convert``: carry a pretrained backbone into Detectron2, MMSegmentation, torchvision or timm.

    twist-convert --to {detectron2,mmseg,torchvision,timm} INPUT OUTPUT [--teacher] [--trust-checkpoint]
    twist-convert --inspect INPUT [--teacher] [--trust-checkpoint]

INPUT is a run's checkpoint.pth (student, or the EMA teacher with --teacher), backbone.pth or
teacher_backbone.pth, the authors' checkpoints (with --trust-checkpoint: they hold an argparse
Namespace), or a plain state dict, also under other codebases' prefixes. Files are read weights-only.
Every output is validated against the target's names and shapes before it is written, atomically,
and never over INPUT.
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter

from twist.atomic import OutputError
from twist.convert import TARGETS, convert, write
from twist.engine.checkpoint import CheckpointError
from twist.models.pretrained import STRIPPED_PREFIXES, load_backbone_weights


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="twist-convert", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="example: twist-convert --to detectron2 runs/r50/checkpoint.pth r50.pkl")
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--to", choices=TARGETS, help="the library to convert for")
    action.add_argument("--inspect", action="store_true", help="describe INPUT and write nothing")
    parser.add_argument("input", metavar="INPUT")
    parser.add_argument("output", metavar="OUTPUT", nargs="?")
    parser.add_argument("--teacher", action="store_true", help="take the EMA teacher's backbone")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="allow full unpickling of a file that is not weights-only (only for files you trust: "
                             "unpickling can run code)")
    return parser


def describe(weights) -> str:
    arch = weights.architecture
    stem = ("3x3 small-input stem" if arch.small_input else "7x7 stem") if arch.family == "resnet" else (
        f"{'4' if arch.small_input else '16'}-px patches, {arch.image_size} px position grid")
    params = sum(v.numel() for k, v in weights.state_dict.items() if not k.endswith("num_batches_tracked"))
    dtypes = Counter(str(v.dtype).replace("torch.", "") for v in weights.state_dict.values())
    lines = [
        f"file:            {weights.path}",
        f"loaded:          {'with full unpickling (--trust-checkpoint)' if weights.trusted_load else 'weights-only'}",
        f"backbone from:   {weights.where}   (search order: teacher_backbone, teacher with --teacher; else "
        f"backbone, state_dict, model, the file itself)",
        f"prefixes:        {', '.join(weights.stripped_prefixes) or 'none'} stripped   (tried: "
        f"{', '.join(STRIPPED_PREFIXES)})",
        f"architecture:    {arch.name} ({arch.family}, {stem})",
        f"tensors:         {len(weights.state_dict)} ({params / 1e6:.2f} M parameters; "
        f"{', '.join(f'{n} {d}' for d, n in dtypes.most_common())})",
    ]
    if weights.dropped_keys:
        shown = ", ".join(weights.dropped_keys[:6]) + (" ..." if len(weights.dropped_keys) > 6 else "")
        lines.append(f"dropped:         {len(weights.dropped_keys)} non-backbone tensors ({shown})")
    if isinstance(weights.checkpoint, dict):
        lines.append(f"file entries:    {', '.join(sorted(map(str, weights.checkpoint))[:12])}")
    first = list(weights.state_dict.items())[:4] + list(weights.state_dict.items())[-2:]
    lines += [f"  {k:<40}{tuple(v.shape)}" for k, v in first]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.to and not args.output:
        parser.error("--to needs an OUTPUT path")
    if args.inspect and args.output:
        parser.error("--inspect writes nothing; drop OUTPUT")
    try:
        weights = load_backbone_weights(args.input, teacher=args.teacher, trust=args.trust_checkpoint)
        if args.inspect:
            print(describe(weights))
            return 0
        conversion = convert(weights, args.to)
        write(conversion, args.output, args.input)
    except (CheckpointError, OutputError) as err:
        print(f"twist-convert: error: {err}", file=sys.stderr)
        return 2
    arch = weights.architecture
    print(f"{args.input} [{weights.where}] -> {args.output}: {arch.name}, {len(conversion.state_dict)} tensors for "
          f"{args.to}, checked against {conversion.validated_against}")
    if conversion.notes:
        print(f"set in your {args.to} config:" if args.to in ("detectron2", "mmseg") else "to load it:")
        for note in conversion.notes:
            print(f"  {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
