"""`emergence compare`: one run's dynamics dashboard, or two runs side by side and measured.

    from compare import CompareOptions, compare
    compare(["runs/learn_to_see-tanh.h5", "runs/learn_to_see-relu.h5"], "runs/relu_vs_tanh")

Writes into the output folder: `report.md`, `metrics.json`, `dynamics_A.png` (and `_B`), `activity.png`, and
for two runs `curves.png` (both runs' smoothed train and held-out eval curves on shared axes),
`cross_similarity.png`, `layer_map.png` and one `<layer>_side_by_side.gif` per layer both runs
have. Similarity between two runs is computed only when both recorded the very same analysis probe set
(equal SHA-256); otherwise the comparison is refused, and `--force` keeps only the pictures and the per-run
dynamics.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Callable

import numpy as np

from compare import plots
from compare.dynamics import LayerDynamics, run_dynamics
from compare.measures import RunMeasures, measure_run
from compare.finiteness import flag_order, nonfinite_layers
from compare.tables import (convergence_order, finite_median, fmt, measures_json, measures_table, num,
                            two_measures_table)
from compare.weight_change import weight_change, weight_series, weight_settled
from compare.side_by_side import PairFrames, check_shared, shared_steps
from compare.cross import cross_similarity, probe_set_mismatch
from replay.animate import write_animation
from replay.curves import write_comparison_curves
from replay.gif import frame_duration_ms
from replay.grid import GridStyle
from replay.scales import ScaleSpec, spec_for
from replay.images import atomic_path
from replay.render import DEFAULT_MAX_MB
from runfile.reader import Run, open_run
from recorder.snapshots import MEASURE_IMAGES, SnapshotError
from replay.selection import StepRange, select_frames

SATURATING = ("tanh", "sigmoid")


@dataclasses.dataclass(frozen=True)
class CompareOptions:
    force: bool = False  # compare runs whose analysis probe sets differ: pictures only, no similarity
    layers: tuple[str, ...] | None = None
    every: int = 1
    zoom: int = 1
    fps: float = 20.0
    max_mb: float | None = DEFAULT_MAX_MB  # per side-by-side GIF; None or 0: no limit
    gifs: bool = True
    measures: bool = True  # per-channel measures and linear probes, re-running the model (compare/measures.py)
    measure_images: int = MEASURE_IMAGES  # held-out images they run on (half fit the probes, half evaluate them)
    scales: tuple[ScaleSpec, ...] = ()  # colour scales of the side-by-side GIFs, as replay's --scale
    shared_scale: bool = False  # one scale for both halves of a layer's GIF (the range holding both own scales)

    def __post_init__(self) -> None:  # refused before anything is computed or written
        for spec in self.scales if self.shared_scale else ():
            check_shared(spec)


@dataclasses.dataclass
class CompareReport:
    out: Path
    report: Path
    metrics: dict[str, Any]
    files: list[Path]
    notes: list[str]


def activity_summary(d: LayerDynamics) -> tuple[str, float]:
    """The activity figure that matters for this activation: saturation for tanh/sigmoid, dead units otherwise;
    ("nonfinite", the share of non-finite values or NaN) when the final step holds non-finite data."""
    f = d.finiteness
    if f is not None and len(f.bad) and f.bad[-1]:
        return "nonfinite", float(f.fraction[-1]) if f.fraction is not None else float("nan")
    if d.activation in SATURATING:
        return "saturated", d.final_activity("saturated_fraction")
    return "dead", d.final_activity("dead_fraction")


def activity_cell(d: LayerDynamics) -> str:
    kind, value = activity_summary(d)
    if kind == "nonfinite":
        return "non-finite" + (f" ({value:.0%} of values)" if math.isfinite(value) else "")
    return f"{kind} {fmt(value)}"


def fmt_change(v: float | None) -> str:
    """A relative weight change: exactly 0 (nothing moved) written as 0, else three significant digits."""
    return "-" if v is None else "0" if v == 0 else f"{v:.3g}"


def _dynamics_json(dyn: dict[str, LayerDynamics]) -> dict[str, Any]:
    out = {}
    for name, d in dyn.items():
        kind, value = activity_summary(d)
        out[name] = {
            "activation": d.activation, "t50": d.t50, "t90": d.t90, "init_vs_final": num(d.init_vs_final),
            f"final_{kind}_fraction": num(value), "flags": d.flags,
            "steps": d.steps.tolist(), "drift": [num(v) for v in d.drift], "progress": [num(v) for v in d.progress],
            "shuffled_null": [num(v) for v in d.null],
            "activity": {k: [num(x) for x in v] for k, v in d.activity.items()},
        }
    return out


def _nonfinite(runs: list[tuple[str, Run]], metrics: dict[str, Any], log: Callable[[str], None]) -> list[str]:
    """The report's first lines when any layer of the runs held non-finite data (also logged at once, and in
    metrics.json under "nonfinite"): which layer, from which step; every measure below excludes those steps."""
    found = {tag: nonfinite_layers(run) for tag, run in runs}
    parts = [f"{tag} {name} {f.describe()}" for tag, layers in found.items() for name, f in layers.items()]
    metrics["nonfinite"] = {tag: {name: f.as_json() for name, f in layers.items()} for tag, layers in found.items()}
    if not parts:
        return []
    line = "Non-finite data (those steps are excluded from every measure below): " + "; ".join(parts)
    log(line)
    return [f"**{line}**", ""]


def _run_facts(tag: str, run: Run) -> str:
    c = run.facts()
    _, acc, count = run.test_metrics()
    probe = run.analysis_probe_set() if run.has_analysis else None
    analysed = f"{len(run.analysis_steps)} analysed steps, {len(probe['indices'])} analysis images (sha256 " \
               f"{probe['sha256'][:12]})" if probe else "no analysis probe set"
    test = f"test accuracy {acc:.4f} ({count} images)" if count else f"status {run.describe_status()}"
    return (f"| {tag} | `{run.path.name}` | {c['model']} | {c['activation']} | {c['dataset']}, seed {c['seed']} | "
            f"{test} | {run.num_frames} frames; {analysed} |")


RULES = """## Definitions

- **Similarity** is debiased linear CKA (unbiased HSIC estimator) between centred Gram matrices of the
  layer's activations on the analysis images, computed in float32 with precision "highest" inside the
  training step and in float64 here. ≈ 0 means unrelated, 1 identical up to rotation and scale.
- **drift(t)** = CKA(layer at t, same layer at the run's last analysed step). **progress(t)** =
  (drift(t) − drift(0)) / (1 − drift(0)).
- **t50 / t90**: the first analysed step from which progress stays ≥ 0.5 / ≥ 0.9 until the end (the layer
  "settled"). Resolution: the spacing of the analysed steps. "-" = undefined (the layer did not change, or its
  Gram is zero).
- **Baselines** on the dynamics plots: the dotted line is CKA(init, final); the thin line is CKA(t, final) with
  the images of the final step shuffled (what no correspondence looks like at this n).
- **w50 / w90**: the first step from which the layer's weight change from initialisation (recorded every step
  in the training step) stays at or above 50% / 90% of its final value: when the weights had travelled that
  share of their way.
- **weight change** = ‖W_last − W_first‖ / ‖W_first‖ over the parameters of the module that computes the layer
  (kernel, bias, BatchNorm scale and offset), between the first and last weights the file stores (step 0, or
  the weights it was initialised from, and the end); 0 for a frozen layer, "-" when the file stores no weights
  (recorded before schema 5) or the layer names no module.
- **Per channel** (from the weights the file stores, re-running the model on held-out images; see
  compare/channels.py): ρ = correlation of a channel's response (every value of its map on every measure
  image) with its own response at the last stored step (0 while the channel is constant, e.g. a dead relu
  channel); its progress (ρ(t) − ρ(0)) / (1 − ρ(0)); **s50 / s90**
  = the first stored step from which that progress stays ≥ 0.5 / 0.9 (median [quartiles] over the channels
  that changed); **selectivity** = (μmax − μ−max) / (μmax + μ−max) of the class-conditional mean responses
  (Morcos et al. 2018; of |a| for activations that take both signs), mean over channels; **dead** = 0 on every
  image everywhere, **saturated** (tanh, sigmoid) = more than 90% of values with |a| > 0.99, at the last
  stored step.
- **Linear probe** (Alain & Bengio 2016): held-out accuracy of a closed-form ridge classifier on the layer's
  flattened activations (λ by leave-one-out on the fit images); fit and evaluation images are disjoint,
  class-balanced halves of the measure images; "pixels" is the same probe on the input.
- A layer is **no change** only when the weights (< 5% moved), the channels (every ρ(start, end) ≥ 0.995)
  and the similarity (CKA) all say so.
- **saturated**: fraction of activations with |a| > 0.99 (tanh, sigmoid); **dead**: fraction of units
  (position, channel) exactly 0 on every analysis image (relu and other activations), at the last analysed step.
"""


def compare(paths: list[str | Path], out: str | Path, options: CompareOptions = CompareOptions(),
            log: Callable[[str], None] = lambda s: None) -> CompareReport:
    if len(paths) not in (1, 2):
        raise ValueError(f"compare takes one run (its dynamics) or two runs, got {len(paths)}")
    out = Path(out)
    runs = [open_run(p) for p in paths]
    try:
        if len(runs) == 1:
            return _dashboard(runs[0], out, options, log)
        return _two_runs(runs[0], runs[1], out, options, log)
    finally:
        for r in runs:
            r.close()


def _layers(options: CompareOptions, available: list[str]) -> list[str]:
    if not options.layers:
        return available
    missing = [n for n in options.layers if n not in available]
    if missing:
        raise ValueError(f"--layers {', '.join(missing)}: not in both runs; available: {', '.join(available)}")
    return list(options.layers)


def _dashboard(run: Run, out: Path, options: CompareOptions, log: Callable[[str], None]) -> CompareReport:
    if not run.has_analysis:
        raise ValueError(f"{run.missing_analysis()}; it is needed to see the run's dynamics")
    out.mkdir(parents=True, exist_ok=True)
    layers = _layers(options, run.layers)
    nonfinite_metrics: dict[str, Any] = {}
    first = _nonfinite([("A", run)], nonfinite_metrics, log)
    dyn = run_dynamics(run, layers)
    notes: list[str] = []
    measured = _measure(run, layers, notes, log, options.measure_images) if options.measures else None
    if measured is not None:
        _reconcile(dyn, measured)  # before anything reports the flags
    series = weight_series(run, layers)
    files = [plots.plot_dynamics(dyn, f"{run.path.name}: {run.facts()['activation']}", out / "dynamics_A.png"),
             plots.plot_activity({"A": dyn}, out / "activity.png")]
    metrics = {"runs": {"A": str(run.path)}, **nonfinite_metrics, "dynamics": {"A": _dynamics_json(dyn)}}
    lines = [f"# Dynamics of `{run.path.name}`", "", *first, "| run | file | model | activation | data | result | recorded |",
             "|---|---|---|---|---|---|---|", _run_facts("A", run), "",
             "| layer | t50 | t90 | CKA(init, final) | weight change | w50 | w90 | final activity | flags |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, d in dyn.items():
        change, w50, w90 = d.weight_change, weight_settled(series[name], 0.5), weight_settled(series[name], 0.9)
        metrics["dynamics"]["A"][name].update(weight_change=change, w50=w50, w90=w90)
        lines.append(f"| {name} | {fmt(d.t50)} | {fmt(d.t90)} | {fmt(d.init_vs_final)} | {fmt_change(change)} | "
                     f"{fmt(w50)} | {fmt(w90)} | {activity_cell(d)} | {'; '.join(d.flags) or ''} |")
    order = [convergence_order("t90 (CKA to the final step)", {n: d.t90 for n, d in dyn.items()}),
             convergence_order("w90 (weights)", {n: weight_settled(series[n], 0.9) for n in dyn})]
    if measured is not None:
        order.append(convergence_order("s90 (channel responses, median over channels)",
                                       {n: _median_settle(l.settle(0.9)) for n, l in measured.layers.items()}))
    lines += ["", "Convergence order, one sentence per measure (each sees a different thing, so they may disagree; "
              "see Definitions):", "", *[f"- {o}" for o in order]]
    metrics["convergence_order"] = order
    if any(series.values()):
        files.append(plots.plot_weights({k: v for k, v in series.items() if v}, run.path.name, out / "weights.png"))
        lines += ["", "![weights](weights.png)"]
    if measured is not None:
        lines += ["", *measures_table(measured)]
        metrics["measures"] = {"A": measures_json(measured)}
        files.append(plots.plot_channels(measured.layers, f"{run.path.name}: per-channel measures",
                                         out / "channels.png"))
        files.append(plots.plot_probes({"A": measured}, out / "probes.png"))
        lines += ["", "![channels](channels.png)", "", "![probes](probes.png)"]
    lines += [f"Note: {n}" for n in notes]
    lines += ["", "![dynamics](dynamics_A.png)", "", "![activity](activity.png)", "", RULES]
    return _finish(out, lines, metrics, files, notes, log)


def _median_settle(steps: list[int | None]) -> float | None:
    known = [s for s in steps if s is not None]
    return float(np.median(known)) if known else None


def _measure(run: Run, layers: list[str], notes: list[str], log: Callable[[str], None],
             n: int = MEASURE_IMAGES) -> RunMeasures | None:
    """The run's per-channel measures and linear probes, or None with a note saying why they are missing."""
    try:
        return measure_run(run, layers, n, log=log)
    except SnapshotError as e:
        notes.append(f"per-channel measures and linear probes skipped: {e}")
        return None


def _reconcile(dyn: dict[str, LayerDynamics], measured: RunMeasures) -> None:
    """A layer is "no change" only when its channels agree too (see RULES); adds the channel flags."""
    for name, d in dyn.items():
        m = measured.layers.get(name)
        if m is None:
            continue
        rho = finite_median(m.correlation[0])
        changed = f"its channels' responses changed (median ρ(start, end) = {rho:.3f})"
        if not m.unchanged():
            d.flags = [f"similar geometry: {f.removeprefix('no change: ')}, yet {changed}" if f.startswith("no change")
                       else f"{f}, and {changed}" if f.startswith("similar geometry") else f for f in d.flags]
        d.flags = sorted(set(d.flags + m.flags()), key=flag_order)


def _two_runs(a: Run, b: Run, out: Path, options: CompareOptions, log: Callable[[str], None]) -> CompareReport:
    mismatch = probe_set_mismatch(a, b)
    if mismatch and not options.force:
        raise ValueError(f"{mismatch}; refusing to compare their layers. --force renders the side-by-side GIFs "
                         "and each run's own dynamics, and skips every similarity between the runs")
    notes = [f"similarity between the runs skipped (--force): {mismatch}"] if mismatch else []
    shared = [n for n in a.layers if n in b.layers]
    if not shared and options.layers is None:
        notes.append(f"the runs have no layer name in common (A: {', '.join(a.layers)}; B: {', '.join(b.layers)}): no "
                     "side-by-side GIFs or same-layer rows; the layer map relates every layer of A to every layer of B")
    layers = _layers(options, shared) if shared or options.layers is not None else []
    out.mkdir(parents=True, exist_ok=True)
    names = (a.path.stem, b.path.stem)
    files: list[Path] = []
    metrics: dict[str, Any] = {"runs": {"A": str(a.path), "B": str(b.path)}}
    first = _nonfinite([("A", a), ("B", b)], metrics, log)

    frame_steps = shared_steps(a, b)
    metrics["alignment"] = (f"frames at the {len(frame_steps)} steps recorded in both runs (the intersection of "
                            "their frame steps); each half of a side-by-side GIF shows its run after the same "
                            "number of updates")
    if options.gifs:
        positions = select_frames(frame_steps, StepRange(), options.every)
        style = GridStyle(zoom=options.zoom)
        for layer in layers:
            pair = PairFrames(a, b, layer, frame_steps, names, style, spec_for(layer, options.scales, layers),
                              options.shared_scale)
            anim = write_animation(pair, positions, out / f"{layer}_side_by_side.gif", frame_duration_ms(options.fps),
                                   int(options.max_mb * 1e6) if options.max_mb else None)
            files.append(anim.path)
            log(f"{anim.path.name}  {anim.frames} frames  {anim.bytes / 1e6:.2f} MB"
                + (f"  (dropped {anim.dropped} to fit --max-mb)" if anim.dropped else ""))

    files.append(write_comparison_curves([("A", a), ("B", b)], out / "curves.png"))
    own = {"A": layers or list(a.layers), "B": layers or list(b.layers)}  # each run's layers when none is shared
    dyn = {tag: run_dynamics(r, own[tag]) for tag, r in (("A", a), ("B", b)) if r.has_analysis}
    before = len(notes)
    measured: dict[str, RunMeasures] = {}
    if options.measures:
        measured = {tag: m for tag, r in (("A", a), ("B", b))
                    if (m := _measure(r, own[tag], notes, lambda line, t=tag: log(f"{t}: {line}"),
                                  options.measure_images)) is not None}
        for tag, m in measured.items():
            if tag in dyn:
                _reconcile(dyn[tag], m)  # before anything reports the flags
    for tag, d in dyn.items():
        files.append(plots.plot_dynamics(d, f"{tag}: {names[tag == 'B']}", out / f"dynamics_{tag}.png"))
        metrics.setdefault("dynamics", {})[tag] = _dynamics_json(d)
    if dyn:
        files.append(plots.plot_activity(dyn, out / "activity.png"))

    final_cka: dict[str, float] = {}
    if not mismatch:
        cross = cross_similarity(a, b, layers)
        final_cka = {layer: float(v[-1]) for layer, v in cross.same_layer.items()}
        if cross.same_layer:
            files.append(plots.plot_cross(cross.steps, cross.same_layer, f"same layer, A ({names[0]}) vs B ({names[1]})",
                                          out / "cross_similarity.png"))
        files.append(plots.plot_layer_map(cross.layer_map, [f"A {n}" for n in cross.map_rows],
                                          [f"B {n}" for n in cross.map_cols], f"debiased CKA at step {cross.map_step}",
                                          out / "layer_map.png"))
        metrics["cross"] = {"steps": cross.steps.tolist(),
                            "same_layer": {k: [num(x) for x in v] for k, v in cross.same_layer.items()},
                            "layer_map": {"step": cross.map_step, "rows": cross.map_rows, "cols": cross.map_cols,
                                          "matrix": [[num(x) for x in row] for row in cross.layer_map],
                                          "flags": cross.map_flags}}

    lines = [f"# `{names[0]}` (A) vs `{names[1]}` (B)", "", *first, "| run | file | model | activation | data | result | recorded |",
             "|---|---|---|---|---|---|---|", _run_facts("A", a), _run_facts("B", b), "",
             f"Alignment: {metrics['alignment']}.", ""]
    lines += [f"Note: {n}" for n in notes]
    head = ("| layer | t50 A | t50 B | t90 A | t90 B | final CKA(A, B) | weight change A | weight change B | "
            "activity A | activity B |")
    lines += [head, "|---|---|---|---|---|---|---|---|---|---|"]
    changes = {tag: {layer: dyn[tag][layer].weight_change if tag in dyn else weight_change(r, layer) for layer in layers}
               for tag, r in (("A", a), ("B", b))}
    metrics["weight_change"] = changes
    for layer in layers:
        da, db = dyn.get("A", {}).get(layer), dyn.get("B", {}).get(layer)
        acts = [activity_cell(d) if d else "-" for d in (da, db)]
        lines.append(f"| {layer} | {fmt(da.t50 if da else None)} | {fmt(db.t50 if db else None)} | "
                     f"{fmt(da.t90 if da else None)} | {fmt(db.t90 if db else None)} | "
                     f"{fmt(final_cka.get(layer)) if not mismatch else 'skipped'} | {fmt_change(changes['A'][layer])} | "
                     f"{fmt_change(changes['B'][layer])} | {acts[0]} | {acts[1]} |")
    if measured:
        metrics["measures"] = {tag: measures_json(m) for tag, m in measured.items()}
        files.append(plots.plot_probes(measured, out / "probes.png"))
        lines += ["", *two_measures_table(measured, layers)]
    lines += [f"Note: {n}" for n in notes[before:]]
    flagged = [f"- {tag} {n}: {'; '.join(d.flags)}" for tag, dd in dyn.items() for n, d in dd.items() if d.flags]
    if flagged:
        lines += ["", "Flags:", *flagged]
    lines += [""] + [f"![{f.stem}]({f.name})" for f in files if f.suffix in (".png", ".gif")] + ["", RULES]
    metrics["notes"] = notes
    return _finish(out, lines, metrics, files, notes, log)


def _finish(out: Path, lines: list[str], metrics: dict[str, Any], files: list[Path], notes: list[str],
            log: Callable[[str], None]) -> CompareReport:
    report = out / "report.md"
    with atomic_path(report) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    with atomic_path(out / "metrics.json") as tmp:
        tmp.write_text(json.dumps(metrics, indent=1))
    return CompareReport(out, report, metrics, files + [report, out / "metrics.json"], notes)
