"""Typed, frozen configs that reproduce the classic experiments. `get_experiment(name)` returns one."""

from __future__ import annotations

from experiments.configs import EXPERIMENTS, get_experiment

__all__ = ["EXPERIMENTS", "get_experiment"]
