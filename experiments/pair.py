"""Two runs that differ in one thing, recorded and compared: what relu_vs_tanh, optimizers and overfitting share.

Each experiment names its two variants (label -> config overrides on top of a base experiment) and the
config keys it varies (which `--set` may then not touch). Both runs use the same seed, so the same initial
weights, batch order, picture probes and analysis images; `emergence compare` then measures them side by
side. A complete run file recorded with the very same config is reused unless --overwrite.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Callable

from compare import CompareOptions, compare
from experiments.configs import get_experiment
from recorder.config import RunConfig, apply_overrides
from recorder.plan import json_config
from recorder.run import record
from runfile.reader import RunFileError, open_run


@dataclasses.dataclass(frozen=True)
class Pair:
    name: str  # the experiment, and the comparison's folder
    base: str  # the experiment both runs start from
    variants: dict[str, list[str]]  # label -> overrides that make that run
    varied: tuple[str, ...]  # config keys the variants set: not allowed in --set
    file_name: Callable[[str], str] = lambda label: label  # label -> run file name without .h5
    common: tuple[str, ...] = ()  # overrides of the base experiment for both runs, before --set

    def configs(self, overrides: list[str]) -> dict[str, RunConfig]:
        bad = [s for s in overrides if s.partition("=")[0].strip() in self.varied]
        if bad:
            raise ValueError(f"{', '.join(self.varied)} is what this experiment varies; leave {', '.join(bad)} "
                             "out of --set")
        base = apply_overrides(get_experiment(self.base), [*self.common, *overrides])
        return {label: apply_overrides(dataclasses.replace(base, experiment=self.name), changes)
                for label, changes in self.variants.items()}


def reusable(path: Path, config: RunConfig) -> bool:
    """Whether `path` is a complete run of `config` with analysis statistics (then it is not recorded again)."""
    try:
        with open_run(path) as run:
            return run.status == "completed" and run.has_analysis and run.config == json_config(config)
    except (OSError, RunFileError, FileNotFoundError):
        return False


def run(pair: Pair, out: Path, overrides: list[str], overwrite: bool = False, show_progress: bool = True,
        log: Callable[[str], None] = print) -> Path:
    """Records both runs (unless reusable) and compares them; returns the report's path."""
    paths = []
    for label, config in pair.configs(overrides).items():
        path = out / f"{pair.file_name(label)}.h5"
        if not overwrite and reusable(path, config):
            log(f"reusing {path} (complete, same config; --overwrite records it again)")
        else:
            record(config, path, overwrite=True, show_progress=show_progress)
        paths.append(path)
    report = compare(paths, out / pair.name, CompareOptions(), log=lambda s: log(f"  {s}"))
    return report.report


def main(pair: Pair, doc: str, argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog=f"python -m experiments.{pair.name}", description=doc.split("\n")[0])
    ap.add_argument("--out", default="runs", help="folder for both run files and the comparison (default: runs)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help=f"config override applied to both runs ({', '.join(pair.varied)} is set by the experiment)")
    ap.add_argument("--overwrite", action="store_true", help="record both runs again even if complete files exist")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    try:
        report = run(pair, Path(args.out), args.set, args.overwrite, not args.no_progress)
    except (ValueError, FileNotFoundError) as e:
        print(f"{pair.name}: error: {e}", file=sys.stderr)
        return 2
    print(report)
    return 0
