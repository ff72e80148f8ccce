"""`emergence sweep`: every combination of a grid of config values, recorded, then one report over them.

    emergence sweep learn_to_see --grid activation=tanh,relu,gelu --grid seed=0,1,2 [--jobs 2] [--set steps=100]

Each combination is one run file, `OUT/NAME/<key>=<value>-....h5`; a complete file recorded with the very
same config is reused. Runs that differ only in values that are not static to the compiled step (the seed:
initial weights, data order, augmentation draws) compile the same programs: with JAX's persistent
compilation cache (on in the CLI) every distinct static config is compiled once. `--jobs J` records J runs at
a time, each in its own process (`emergence record`); the default 1 records them one after another in this
process.

The report (compare/sweep.py) is written to `OUT/NAME/report.md` and `sweep.json`.
"""

from __future__ import annotations

import dataclasses
import itertools
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from experiments.configs import get_experiment
from experiments.pair import reusable
from recorder.config import RunConfig, apply_overrides, override_keys
from recorder.run import record


@dataclasses.dataclass(frozen=True)
class SweepRun:
    values: dict[str, str]  # grid key -> value
    config: RunConfig
    path: Path


def parse_grid(items: list[str]) -> dict[str, list[str]]:
    """`["activation=tanh,relu", "seed=0,1"]` -> {"activation": ["tanh", "relu"], "seed": ["0", "1"]}."""
    grid: dict[str, list[str]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip()
        if not sep or not values.strip():
            raise ValueError(f"--grid {item!r} is not of the form key=v1,v2,...")
        if key not in override_keys():
            raise ValueError(f"--grid: unknown config key {key!r}; valid keys: {', '.join(override_keys())}")
        if key in grid:
            raise ValueError(f"--grid {key} given twice")
        grid[key] = [v.strip() for v in values.split(",") if v.strip()]
    if not grid:
        raise ValueError("a sweep needs at least one --grid key=v1,v2,...")
    return grid


def plan_sweep(experiment: str, grid: dict[str, list[str]], overrides: list[str], folder: Path) -> list[SweepRun]:
    """Every combination of `grid` over the experiment with `overrides` (validated before anything runs)."""
    clash = [o for o in overrides if o.partition("=")[0].strip() in grid]
    if clash:
        raise ValueError(f"--set {', '.join(clash)}: that key is swept by --grid")
    base = apply_overrides(get_experiment(experiment), overrides)
    runs = []
    for combo in itertools.product(*grid.values()):
        values = dict(zip(grid, combo))
        config = apply_overrides(base, [f"{k}={v}" for k, v in values.items()])
        name = "-".join(f"{k}={v}".replace("/", "_") for k, v in values.items())
        runs.append(SweepRun(values, config, folder / f"{name}.h5"))
    return runs


def record_sweep(runs: list[SweepRun], experiment: str, overrides: list[str], jobs: int = 1, overwrite: bool = False,
                 show_progress: bool = True, log: Callable[[str], None] = print) -> list[str]:
    """Records every run not reusable; returns one line per run saying what happened."""
    done, todo = [], []
    for r in runs:
        if not overwrite and reusable(r.path, r.config):
            done.append(f"{r.path.name}: reused (complete, same config)")
        else:
            todo.append(r)
    if jobs <= 1:
        for r in todo:
            t = time.perf_counter()
            result = record(r.config, r.path, overwrite=True, show_progress=show_progress, log=log)
            done.append(f"{r.path.name}: recorded in {time.perf_counter() - t:.0f} s, test accuracy "
                        f"{result.test_accuracy:.4f}")
        return done
    pending, active = list(todo), []
    while pending or active:
        while pending and len(active) < jobs:
            r = pending.pop(0)
            sets = [*overrides, *(f"{k}={v}" for k, v in r.values.items())]
            cmd = [sys.executable, "-m", "emergence", "record", experiment, "--out", str(r.path.parent), "--name",
                   r.path.stem, "--overwrite", "--no-progress", *itertools.chain(*(("--set", s) for s in sets))]
            active.append((r, subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True),
                           time.perf_counter()))
        time.sleep(0.2)
        for item in list(active):
            r, proc, t = item
            if proc.poll() is None:
                continue
            active.remove(item)
            _, err = proc.communicate()  # reads and closes the pipe
            if proc.returncode != 0:
                raise RuntimeError(f"sweep: recording {r.path.name} failed ({proc.returncode}): "
                                   f"{err.strip().splitlines()[-1] if err.strip() else 'no message'}")
            done.append(f"{r.path.name}: recorded in {time.perf_counter() - t:.0f} s (its own process)")
    return done
