"""Typed, frozen configs that reproduce the classic experiments. `get_experiment(name)` returns one.

PROGRAMS are the experiments that record several runs and compare them (each a module with `main(argv)`);
`emergence record NAME` runs them as it runs a single experiment."""

from __future__ import annotations

import importlib

from experiments.configs import EXPERIMENTS, PROGRAMS, get_experiment

__all__ = ["EXPERIMENTS", "PROGRAMS", "get_experiment", "run_program"]


def run_program(name: str, argv: list[str]) -> int:
    """Runs the several-run experiment `name` (experiments/NAME.py) with command-line arguments `argv`."""
    return int(importlib.import_module(f"experiments.{name}").main(argv))
