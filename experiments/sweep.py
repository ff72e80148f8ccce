"""`emergence sweep`: every combination of a grid of config values, recorded, then one report over them.

    emergence sweep learn_to_see --grid activation=tanh,relu,gelu --grid seed=0,1,2 [--jobs 2] [--set steps=100]

Each combination is one run file, `OUT/NAME/<key>=<value>-....h5`; a complete file recorded with the very
same config is reused. Runs that differ only in values that are not static to the compiled step (the seed:
initial weights, data order, augmentation draws) compile the same programs: with JAX's persistent
compilation cache (on in the CLI) every distinct static config is compiled once. `--jobs J` records J runs at
a time, each in its own process (`emergence record`); the default 1 records them one after another in this
process. `--launcher ray|slurm` runs each grid point as a Ray task or a SLURM array task
(experiments/launchers.py). Whatever the launcher, a complete run is reused and a killed one resumed.

The report (compare/sweep.py) is written to `OUT/NAME/report.md` and `sweep.json`.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from pathlib import Path
from typing import Callable

from experiments.configs import get_experiment
from experiments.launchers import (LAUNCHERS, RayOptions, SlurmOptions, Task, clear, run_local, run_ray, run_slurm,
                                   task_state, with_stop_file)
from recorder.config import RunConfig, apply_overrides, override_keys
from recorder.run import record, resume


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


def tasks_of(runs: list[SweepRun], experiment: str, overrides: list[str]) -> list[Task]:
    return [Task(experiment, (*overrides, *(f"{k}={v}" for k, v in r.values.items())), str(r.path.resolve()))
            for r in runs]


def record_sweep(runs: list[SweepRun], experiment: str, overrides: list[str], jobs: int = 1, overwrite: bool = False,
                 show_progress: bool = True, log: Callable[[str], None] = lambda s: None, launcher: str = "local",
                 ray: RayOptions = RayOptions(), slurm: SlurmOptions = SlurmOptions(), stage: str | None = None) -> list[str]:
    """Records every run that is not complete (resuming those a killed try left); returns one line per run saying
    what happened, and logs each as it finishes. `launcher`: local (this machine; `jobs` at a time, each in its
    own process, or one after another in this process), ray or slurm (experiments/launchers.py). `stage`: record
    on each worker's local disk there and publish into the sweep's folder (experiments/launchers.py)."""
    if launcher not in LAUNCHERS:
        raise ValueError(f"--launcher {launcher!r}: expected one of {', '.join(LAUNCHERS)}")
    tasks = tasks_of(runs, experiment, overrides)
    if stage:
        tasks = [dataclasses.replace(t, stage=stage, fresh_since=time.time() if overwrite else None) for t in tasks]
    if overwrite:
        clear(tasks)
    if runs:
        tasks = with_stop_file(tasks, runs[0].path.parent)
    for folder in {r.path.parent for r in runs}:
        folder.mkdir(parents=True, exist_ok=True)
    if launcher == "ray":
        return run_ray(tasks, ray, log)
    if launcher == "slurm":
        folder = runs[0].path.parent
        return run_slurm(tasks, slurm, folder / "slurm-logs", folder.name, log)
    if jobs > 1 or stage:
        return run_local(tasks, jobs, log)
    lines = []
    for r, task in zip(runs, tasks):  # in this process: no start-up per run, compiled programs shared
        t = time.perf_counter()
        state = task_state(task)
        if state == "complete":
            lines.append(f"{r.path.name}: reused (complete, same config)")
        elif state == "resumable":
            result = resume(r.path, show_progress=show_progress, log=log)
            lines.append(f"{r.path.name}: resumed from its checkpoint and completed in {time.perf_counter() - t:.0f} s, "
                         f"test accuracy {result.test_accuracy:.4f}")
        else:
            result = record(r.config, r.path, overwrite=True, show_progress=show_progress, log=log)
            lines.append(f"{r.path.name}: recorded in {time.perf_counter() - t:.0f} s, test accuracy "
                         f"{result.test_accuracy:.4f}")
        log(lines[-1])
    return lines
