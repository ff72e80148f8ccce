"""The comparison's PNG plots: per-run dynamics with baselines, activity, cross-run similarity, layer map."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from compare.dynamics import LayerDynamics
from replay.images import atomic_path


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    _plt().close(fig)
    return path


def _colours(n: int) -> list:
    import matplotlib

    cmap = matplotlib.colormaps["viridis"]
    return [cmap(0.9 * i / max(n - 1, 1)) for i in range(n)]


def plot_dynamics(dyn: dict[str, LayerDynamics], title: str, path: Path) -> Path:
    """Left: drift to the final step, with the init-vs-final and shuffled-null baselines. Right: progress."""
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.4), dpi=110)
    for colour, d in zip(_colours(len(dyn)), dyn.values()):
        ax1.plot(d.steps, d.drift, "-", color=colour, lw=1.6, label=d.layer)
        ax1.axhline(d.init_vs_final, color=colour, ls=":", lw=0.9)
        ax1.plot(d.steps, d.null, "-", color=colour, lw=0.6, alpha=0.5)
        ax2.plot(d.steps, d.progress, "-", color=colour, lw=1.6, label=d.layer)
        for t, marker in ((d.t50, "o"), (d.t90, "s")):
            if t is not None:
                ax2.plot([t], [d.progress[list(d.steps).index(t)]], marker, color=colour, ms=5)
    ax1.set_title("debiased CKA to the final step (dotted: init vs final; thin: shuffled-image null)", fontsize=9)
    ax1.set_xlabel("step")
    ax1.set_ylabel("debiased linear CKA")
    ax1.grid(alpha=0.3)
    ax1.legend(fontsize=8)
    ax2.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax2.axhline(0.9, color="grey", lw=0.8, ls="--")
    ax2.set_title("progress from initialisation (circle: t50, square: t90)", fontsize=9)
    ax2.set_xlabel("step")
    ax2.set_ylabel("(CKA(t, final) - CKA(0, final)) / (1 - CKA(0, final))")
    ax2.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


ACTIVITY_PANELS = (("saturated_fraction", "saturated (|a| > 0.99)"), ("dead_fraction", "dead units (0 on all images)"),
                   ("zero_fraction", "zeros (sparsity)"), ("std", "std of activations"))


def plot_activity(runs: dict[str, dict[str, LayerDynamics]], path: Path) -> Path:
    """One panel per statistic; one line per (run, layer); runs told apart by line style."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(ACTIVITY_PANELS), figsize=(4.2 * len(ACTIVITY_PANELS), 3.8), dpi=100)
    styles = ["-", "--", ":"]
    for (name, label), ax in zip(ACTIVITY_PANELS, axes):
        for style, (run_name, dyn) in zip(styles, runs.items()):
            for colour, d in zip(_colours(len(dyn)), dyn.values()):
                if name in d.activity:
                    ax.plot(d.steps, d.activity[name], style, color=colour, lw=1.3, label=f"{run_name} {d.layer}")
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=6, ncol=2)
    return _save(fig, path)


def plot_cross(steps: np.ndarray, series: dict[str, np.ndarray], title: str, path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for colour, (layer, values) in zip(_colours(len(series)), series.items()):
        ax.plot(steps, values, "-", color=colour, lw=1.6, label=layer)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xlabel("step (the same number of updates in both runs)")
    ax.set_ylabel("debiased linear CKA(A, B), same layer")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_layer_map(matrix: np.ndarray, rows: list[str], cols: list[str], title: str, path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(1.0 + 0.75 * len(cols), 1.0 + 0.65 * len(rows)), dpi=110)
    im = ax.imshow(matrix, cmap="magma", vmin=0, vmax=1)
    ax.set_xticks(range(len(cols)), cols, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    for i in range(len(rows)):
        for j in range(len(cols)):
            v = matrix[i, j]
            ax.text(j, i, "NaN" if not np.isfinite(v) else f"{v:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if not np.isfinite(v) or v < 0.6 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_title(title, fontsize=9)
    return _save(fig, path)


def plot_weights(series: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]], title: str, path: Path) -> Path:
    """Per layer over training (`series`: layer -> measure -> (steps, values)): how far the weights are from
    their initial values, and the size of each update relative to the weights (log scale)."""
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.4), dpi=110)
    for colour, (layer, s) in zip(_colours(len(series)), series.items()):
        if "weight_change" in s:
            ax1.plot(*s["weight_change"], "-", color=colour, lw=1.6, label=layer)
        if "update_ratio" in s:
            steps, values = s["update_ratio"]
            ax2.plot(steps, np.where(values > 0, values, np.nan), "-", color=colour, lw=1.0, label=layer)
    ax1.set_title("weight change from initialisation, ‖W_t − W_0‖ / ‖W_0‖", fontsize=9)
    ax2.set_title("update size, ‖W_t − W_t−1‖ / ‖W_t‖ (log; gaps: no update)", fontsize=9)
    ax2.set_yscale("log")
    for ax in (ax1, ax2):
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def plot_channels(layers: dict, title: str, path: Path) -> Path:
    """One panel per layer (`layers`: name -> compare.measures.LayerMeasures): each channel's correlation with its
    own final response over the stored steps, and the layer's mean class selectivity."""
    plt = _plt()
    n = len(layers)
    cols = min(n, 3)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), dpi=110, squeeze=False)
    for ax, (name, m) in zip(axes.ravel(), layers.items()):
        steps = np.maximum(m.steps, 0.5)  # step 0 drawn at 0.5 on the log axis
        ax.plot(steps, m.correlation, "-", color="#3b6ea8", lw=0.8, alpha=0.7)
        ax.plot(steps, np.nanmean(m.selectivity, axis=1), "-", color="#c0392b", lw=1.8, label="mean selectivity")
        for level in (0.5, 0.9):
            ax.axhline(level, color="grey", lw=0.6, ls="--")
        ax.set_xscale("log")
        ax.set_ylim(-1.02, 1.02)
        ax.set_title(f"{name}: {m.correlation.shape[1]} channels", fontsize=9)
        ax.set_xlabel("step (0 drawn at 0.5)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    axes[0, 0].set_ylabel("blue: ρ(channel at t, itself at the end)")
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def plot_probes(runs: dict, path: Path) -> Path:
    """Linear-probe accuracy per layer in depth order at the first and the last stored step, one colour per run
    (`runs`: tag -> compare.measures.RunMeasures), with the pixels' own accuracy as depth 0."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 4.2), dpi=110)
    for colour, (tag, m) in zip(["#1f4e79", "#c0392b", "#2e7d32"], runs.items()):
        names = ["pixels", *m.layers, "logits"]
        x = np.arange(len(names))
        first = [m.input_probe.accuracy, *(l.probe_accuracy[0] for l in m.layers.values()), m.logits_probe[0].accuracy]
        last = [m.input_probe.accuracy, *(l.probe_accuracy[-1] for l in m.layers.values()),
                m.logits_probe[-1].accuracy]
        ax.plot(x, last, "o-", color=colour, lw=1.8, label=f"{tag}: step {int(m.steps[-1])}")
        ax.plot(x, first, "o--", color=colour, lw=0.9, alpha=0.6, label=f"{tag}: step {int(m.steps[0])}")
        ax.set_xticks(x, names, fontsize=8)
    ax.set_ylabel(f"held-out accuracy (fit {m.n_fit}, evaluated on {m.n_eval} images)")
    ax.set_title("linear probes (ridge classifier on the flattened activations)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)
