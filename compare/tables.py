"""The report's numbers as text: formatting, and the per-channel and linear-probe tables with their baselines.

Every linear-probe accuracy is shown with its 95% Wilson interval on the evaluation images, next to two
baselines: the same probe at initialisation (what the architecture gives before any learning) and on the
raw pixels (depth 0). A gain is marked "n.s." when the two intervals overlap: no significant difference at
that many images.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from compare.channels import distribution
from compare.linear_probes import ProbeResult, overlap
from compare.measures import LayerMeasures, RunMeasures


def fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return "NaN" if not math.isfinite(v) else f"{v:.{digits}f}"
    return str(v)


def num(v: float) -> float | None:
    return float(v) if np.isfinite(v) else None  # JSON has no NaN: null, with the reason in "flags"


def spread(values: list[int | None]) -> str:
    d = distribution(values)
    if d is None:
        return "-"
    return f"{d[0]:g} [{d[1]:g}–{d[2]:g}]" + (f" ({d[3]} of {len(values)})" if d[3] < len(values) else "")


def finite_mean(x: np.ndarray) -> float:
    """The mean of the finite entries (NaN when there are none; no warning)."""
    x = np.asarray(x, np.float64)
    x = x[np.isfinite(x)]
    return float(x.mean()) if len(x) else float("nan")


# Student's t, 97.5% quantile, for 1 to 30 degrees of freedom (beyond: the normal's 1.96)
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def mean_interval(values: list[float | None]) -> dict[str, Any] | None:
    """Mean of the finite values and its 95% interval (Student's t over the n values: seeds as samples), or
    None without any; a single value has no interval."""
    x = np.asarray([v for v in values if v is not None and np.isfinite(v)], np.float64)
    if not len(x):
        return None
    mean = float(x.mean())
    if len(x) == 1:
        return {"mean": mean, "interval95": None, "n": 1}
    half = (T975[len(x) - 2] if len(x) - 1 <= len(T975) else 1.96) * float(x.std(ddof=1)) / np.sqrt(len(x))
    return {"mean": mean, "interval95": [mean - half, mean + half], "n": int(len(x))}


def interval_cell(m: dict[str, Any] | None, digits: int = 3) -> str:
    if m is None:
        return "-"
    if m["interval95"] is None:
        return f"{m['mean']:.{digits}f} (n = 1)"
    lo, hi = m["interval95"]
    return f"{m['mean']:.{digits}f} [{lo:.{digits}f}–{hi:.{digits}f}]"


def finite_median(x: np.ndarray) -> float:
    """The median of the finite entries (NaN when there are none; no warning)."""
    x = np.asarray(x, np.float64)
    x = x[np.isfinite(x)]
    return float(np.median(x)) if len(x) else float("nan")


def convergence_order(measure: str, settled: dict[str, int | float | None]) -> str:
    """One sentence: the layers' settling steps under one measure, in depth order, and whether they settle
    bottom-up (each layer no earlier than the one below it); layers that never settled are left out."""
    known = [(name, v) for name, v in settled.items() if v is not None and np.isfinite(v)]
    if len(known) < 2:
        return f"{measure}: too few layers settled to order them."
    steps = ", ".join(f"{name} {v:g}" for name, v in known)
    early = [(below, above) for (below, a), (above, b) in zip(known, known[1:]) if b < a]
    if not early:
        return f"{measure}: {steps}: bottom-up (no layer settles before the one below it)."
    return (f"{measure}: {steps}: not bottom-up (" + "; ".join(f"{above} before {below}" for below, above in early)
            + ").")


def accuracy_cell(p: ProbeResult | None, nonfinite: bool = False) -> str:
    """'0.812 [0.787–0.835]': the accuracy and its 95% interval; 'non-finite' or '-' when there is none."""
    if p is None:
        return "non-finite" if nonfinite else "-"
    lo, hi = p.interval
    return f"{p.accuracy:.3f} [{lo:.3f}–{hi:.3f}]"


def gain_cell(before: ProbeResult | None, after: ProbeResult | None) -> str:
    """'+0.031' or '+0.004 n.s.' (the intervals overlap); '-' without both."""
    if before is None or after is None:
        return "-"
    return f"{after.accuracy - before.accuracy:+.3f}" + (" n.s." if overlap(before, after) else "")


def _gain_json(before: ProbeResult | None, after: ProbeResult | None) -> dict[str, Any] | None:
    if before is None or after is None:
        return None
    return {"gain": after.accuracy - before.accuracy, "significant": not overlap(before, after)}


def _ends(l: LayerMeasures) -> tuple[ProbeResult | None, ProbeResult | None, bool]:
    bad = l.nonfinite if l.nonfinite is not None else np.zeros(len(l.steps), bool)
    return l.probes[0], l.probes[-1], bool(bad[-1])


def measures_table(m: RunMeasures) -> list[str]:
    first, last = int(m.steps[0]), int(m.steps[-1])
    pixels = m.input_probe
    lines = [f"Per channel and linear probes, from the weights stored at {len(m.steps)} steps ({first}–{last}), on "
             f"{m.measure_set}; linear probes fit on {m.n_fit} and evaluated on {m.n_eval} of them, at "
             f"{int(m.probed.sum())} of the steps; accuracies with their 95% Wilson intervals, gains marked n.s. "
             "where the intervals overlap.", "",
             f"| layer | channels | median ρ(step {first}, end) | s50 | s90 | selectivity {first} → {last} | "
             f"linear probe at step {first} | at step {last} | gain over step {first} | gain over pixels | "
             "control: fit on shuffled labels |",
             "|---|---|---|---|---|---|---|---|---|---|---|",
             f"| pixels | | | | | | {accuracy_cell(pixels)} | {accuracy_cell(pixels)} | | | |"]
    for name, l in m.layers.items():
        init, end, bad = _ends(l)
        lines.append(f"| {name} | {l.correlation.shape[1]} | {fmt(finite_median(l.correlation[0]))} | "
                     f"{spread(l.settle(0.5))} | {spread(l.settle(0.9))} | {fmt(finite_mean(l.selectivity[0]))} → "
                     f"{fmt(finite_mean(l.selectivity[-1]))} | {accuracy_cell(init)} | {accuracy_cell(end, bad)} | "
                     f"{gain_cell(init, end)} | {gain_cell(pixels, end)} | {accuracy_cell(l.control)} |")
    init, end = m.logits_probe[0], m.logits_probe[-1]
    lines.append(f"| logits | | | | | | {accuracy_cell(init)} | {accuracy_cell(end, end is None)} | "
                 f"{gain_cell(init, end)} | {gain_cell(pixels, end)} | |")
    lines += ["", f"The control fits the same probe at step {last} on a fixed shuffle of the fit labels and evaluates it "
              f"on the true ones: chance is {1 / m.num_classes:.3f}. Above chance, the probe would find structure "
              "that is not in the labels; below chance is the known bias of fitting on balanced shuffled labels, and "
              "says the same intervals understate the probe's own variability."]
    return lines


def two_measures_table(measured: dict[str, RunMeasures], layers: list[str]) -> list[str]:
    tags = list(measured)
    lines = ["Per channel and linear probes (see Definitions): " + "; ".join(
        f"{t}: weights stored at {len(m.steps)} steps, {m.measure_set}, probes fit on {m.n_fit} and evaluated on "
        f"{m.n_eval}" for t, m in measured.items()) + "; accuracies with 95% Wilson intervals, gains over "
        "initialisation marked n.s. where the intervals overlap.", "",
        "| layer | " + " | ".join(f"s90 {t} | selectivity {t} (end) | linear probe {t} at init | at end | gain {t}"
                                  for t in tags) + " |",
        "|---|" + "---|---|---|---|---|" * len(tags),
        "| pixels | " + " | ".join(f" | | {accuracy_cell(m.input_probe)} | {accuracy_cell(m.input_probe)} | "
                                   for m in measured.values()) + " |"]
    for name in layers:
        cells = []
        for m in measured.values():
            l = m.layers[name]
            init, end, bad = _ends(l)
            cells.append(f"{spread(l.settle(0.9))} | {fmt(finite_mean(l.selectivity[-1]))} | {accuracy_cell(init)} | "
                         f"{accuracy_cell(end, bad)} | {gain_cell(init, end)}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("| logits | " + " | ".join(
        f" | | {accuracy_cell(m.logits_probe[0])} | {accuracy_cell(m.logits_probe[-1], m.logits_probe[-1] is None)} | "
        f"{gain_cell(m.logits_probe[0], m.logits_probe[-1])}" for m in measured.values()) + " |")
    return lines


def measures_json(m: RunMeasures) -> dict[str, Any]:
    def probe_json(p: ProbeResult | None) -> dict[str, Any] | None:
        return None if p is None else {"accuracy": p.accuracy, "interval95": list(p.interval), "n_eval": p.n_eval}

    return {"steps": m.steps.tolist(), "measure_set": m.measure_set, "n_fit": m.n_fit, "n_eval": m.n_eval,
            "probed_steps": m.steps[m.probed].tolist(), "pixels_probe": probe_json(m.input_probe),
            "logits_probe": [probe_json(p) for p in m.logits_probe],
            "logits_gain": {"over_init": _gain_json(m.logits_probe[0], m.logits_probe[-1]),
                            "over_pixels": _gain_json(m.input_probe, m.logits_probe[-1])},
            "layers": {n: {"correlation": [[num(x) for x in row] for row in l.correlation],
                           "s50": l.settle(0.5), "s90": l.settle(0.9),
                           "selectivity": [[num(x) for x in row] for row in l.selectivity],
                           "preferred_class": l.preferred.tolist(), "activity": l.activity,
                           "probe": [probe_json(p) for p in l.probes],
                           "shuffled_label_control": probe_json(l.control),
                           "probe_gain": {"over_init": _gain_json(l.probes[0], l.probes[-1]),
                                          "over_pixels": _gain_json(m.input_probe, l.probes[-1])},
                           "nonfinite_steps": [] if l.nonfinite is None else l.steps[l.nonfinite].tolist(),
                           "flags": l.flags()}
                       for n, l in m.layers.items()}}
