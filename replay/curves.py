"""Loss and accuracy over training, labelled for exactly what each series is (PNG)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from replay.images import atomic_path
from runfile.reader import Run

SMOOTHING = 0.9  # EMA decay of the smoothed train line, bias-corrected at the start


def ema(values: np.ndarray, decay: float = SMOOTHING) -> np.ndarray:
    """Bias-corrected exponential moving average (the first point is the first value, not decay × 0)."""
    out = np.empty(len(values), np.float64)
    acc = 0.0
    for i, v in enumerate(np.asarray(values, np.float64)):
        acc = decay * acc + (1 - decay) * v
        out[i] = acc / (1 - decay ** (i + 1))
    return out


def write_curves(run: Run, path: Path) -> Path:
    """One run: every train batch (faint), its smoothed line, the held-out evaluations and the test result."""
    training = run.describe_training()  # the experiment named once, not "learn_to_see: learn_to_see (tanh) ..."
    title = training if training.startswith(run.experiment) else f"{run.experiment}: {training}"
    return _plot([("", run)], path, title + ("" if run.status == "completed" else f" [{run.describe_status()}]"))


def write_comparison_curves(runs: Sequence[tuple[str, Run]], path: Path) -> Path:
    """Several runs on the same axes, one colour each: smoothed train and held-out eval (where a run's train
    and eval curves drift apart, it overfits)."""
    return _plot(list(runs), path, "train (smoothed, solid) vs held-out eval (dashed, dots): "
                 + ", ".join(f"{tag} = {run.path.stem}" for tag, run in runs))


COLOURS = ("tab:blue", "tab:green", "tab:purple", "tab:brown")


def _plot(runs: list[tuple[str, Run]], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    single = len(runs) == 1
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), dpi=110)
    for ax, what in zip(axes, ("loss", "accuracy")):
        for (tag, run), colour in zip(runs, COLOURS):
            train, ev = run.train_metrics(), run.eval_metrics()
            test_loss, test_acc, test_count = run.test_metrics()
            name = f"{tag}: " if tag else ""
            t = getattr(train, what)
            if len(t):
                if single:
                    ax.plot(train.step, t, color=colour, alpha=0.25, lw=0.8,
                            label="train batch (parameters before its update)")
                ax.plot(train.step, ema(t), color=colour, lw=1.8, label=f"{name}train, smoothed (EMA {SMOOTHING})")
            e = getattr(ev, what)
            if len(e):
                ax.plot(ev.step, e, "o-" if single else "o--", color="tab:orange" if single else colour, ms=3.5,
                        lw=1.4, label=f"{name}eval: {run.eval_count} held-out test images")
            final = test_loss if what == "loss" else test_acc
            if test_count and np.isfinite(final):
                last = int(train.step[-1]) if len(train.step) else 0
                ax.plot([last], [final], "*", color="tab:red" if single else colour, ms=11,
                        label=f"{name}test: all {test_count} test images, end")
        ax.set_xlabel("step (parameter updates)")
        ax.set_ylabel(what)
        ax.grid(alpha=0.3)
        if what == "accuracy":
            ax.set_ylim(0, 1)
        ax.legend(fontsize=8 if single else 7, loc="upper right" if what == "loss" else "lower right")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path
