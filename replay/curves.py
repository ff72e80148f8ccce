"""Loss and accuracy over training, labelled for exactly what each series is (PNG)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from replay.images import atomic_path
from runfile.reader import Run

def centred_half_width(n: int) -> int:
    """Half the window of `centred` for a series of n batches: 2k + 1 batches, about 1/30 of the run, 11 at least."""
    return max(5, round(n / 60))


def centred(values: np.ndarray, half: int | None = None) -> np.ndarray:
    """The mean over a centred window of 2·half + 1 batches, shrinking at the ends; non-finite values are left out.
    Unlike an exponential average it does not lag: a fast drop is drawn where it happened, under the eval points."""
    x = np.asarray(values, np.float64)
    half = centred_half_width(len(x)) if half is None else half
    ok = np.isfinite(x)
    sums = np.concatenate([[0.0], np.cumsum(np.where(ok, x, 0.0))])
    counts = np.concatenate([[0], np.cumsum(ok)])
    i = np.arange(len(x))
    lo, hi = np.maximum(i - half, 0), np.minimum(i + half + 1, len(x))
    n = counts[hi] - counts[lo]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, (sums[hi] - sums[lo]) / np.maximum(n, 1), np.nan)


def smoothing_label(n: int) -> str:
    return f"centred mean of {2 * centred_half_width(n) + 1} batches (no lag)"


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
                ax.plot(train.step, centred(t), color=colour, lw=1.8, label=f"{name}train, {smoothing_label(len(t))}")
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
