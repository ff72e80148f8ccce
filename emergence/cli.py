"""`emergence record | info`: parses arguments and calls importable functions; nothing else."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

USAGE_ERRORS = (ValueError, FileExistsError, FileNotFoundError, KeyError)


def _record(args: argparse.Namespace) -> int:
    from experiments import get_experiment
    from recorder.config import apply_overrides
    from recorder.run import record

    overrides = list(args.set or [])
    if args.data_dir:
        overrides.append(f"data_dir={args.data_dir}")
    config = apply_overrides(get_experiment(args.experiment), overrides)
    name = args.name or "-".join([args.experiment, *(o.partition("=")[2].replace("/", "_") for o in args.set or [])])
    path = Path(args.out) / f"{name}.h5"
    record(config, path, overwrite=args.overwrite, show_progress=not args.no_progress)
    print(path)
    return 0


def _info(args: argparse.Namespace) -> int:
    from replay.info import describe
    from replay.run_file import open_run

    for path in args.runs:
        with open_run(path) as run:
            print(describe(run))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from experiments import EXPERIMENTS

    parser = argparse.ArgumentParser(
        prog="emergence",
        description="Record how a CNN's conv features emerge during training, and replay them.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    rec = sub.add_parser(
        "record",
        help="train an experiment and record every conv layer on fixed probes into an HDF5 run file",
        description="Train EXPERIMENT and record every tapped conv layer at every scheduled step into "
        "OUT/NAME.h5. Config keys (see recorder/config.py): model, activation, dataset, data_dir, optimizer, "
        "learning_rate, momentum, batch_size, epochs, steps, seed, probes, schedule, dtype, compression, "
        "kernels, eval_every, eval_size, synthetic_size.",
    )
    rec.add_argument("experiment", help=f"one of: {', '.join(EXPERIMENTS)}")
    rec.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value (repeatable), "
                     "e.g. --set activation=relu --set schedule=every:5")
    rec.add_argument("--out", default="runs", help="output folder (default: runs)")
    rec.add_argument("--name", help="file name without .h5 (default: the experiment and the override values)")
    rec.add_argument("--data-dir", help="folder holding the dataset files (else standard places, then download)")
    rec.add_argument("--overwrite", action="store_true", help="replace an existing run file of the same name")
    rec.add_argument("--no-progress", action="store_true", help="no progress bar")
    rec.set_defaults(func=_record)

    info = sub.add_parser("info", help="describe run files: layers, shapes, steps, metrics, status",
                          description="Print what a run file holds: layers and shapes, recorded steps, "
                          "final metrics and status. Works on runs still recording and on killed runs.")
    info.add_argument("runs", nargs="+", metavar="RUN.h5")
    info.set_defaults(func=_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("\nemergence: interrupted; everything recorded so far is in the run file", file=sys.stderr)
        return 130
    except USAGE_ERRORS as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"emergence: error: {msg}", file=sys.stderr)
        return 2
    except RuntimeError as e:  # WriterError and friends: the message says what to do
        print(f"emergence: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
