"""`emergence info RUN.h5`: what a run file holds, in a few lines."""

from __future__ import annotations

import json

import numpy as np

from runfile.reader import Run, step_summary


def _config_lines(run: Run, width: int = 110) -> list[str]:
    """Every config key the training line does not show, key=value, wrapped."""
    shown = set(run.facts())
    items = [f"{k}={v if isinstance(v, str) and v else json.dumps(v)}" for k, v in sorted(run.config.items())
             if k not in shown]
    lines: list[str] = []
    for item in items:
        if lines and len(lines[-1]) + len(item) + 2 <= width:
            lines[-1] += f", {item}"
        else:
            if lines:
                lines[-1] += ","
            lines.append(("config      " if not lines else " " * 12) + item)
    return lines


def _analysis_line(run: Run) -> str:
    if not run.has_analysis:
        return f"analysis    none: {run.missing_analysis()}"
    probe_set = run.analysis_probe_set()
    return (f"analysis    {len(probe_set['indices'])} held-out images of {probe_set['dataset']} at "
            f"{len(run.analysis_steps)} steps (what `emergence compare` measures similarity on)")


def _probes_line(run: Run) -> str:
    images, labels, indices = run.probes()
    where = (f"indices {list(map(int, indices))}" if (indices >= 0).all() else
             "indices not given" if (indices < 0).all() else f"indices {[int(i) if i >= 0 else '?' for i in indices]}")
    classes = ", ".join(run.class_names[int(l)] for l in labels)
    return f"probes      {len(labels)} images of {run.probe_dataset}, {where}: {classes}"


def describe(run: Run) -> str:
    steps = run.steps
    lines = [
        f"run         {run.path}",
        f"experiment  {run.experiment}: {run.describe_training()}",
        *_config_lines(run),
        f"status      {run.describe_status()}",
        f"frames      {len(steps)} of steps {step_summary(steps)} (schedule {run.schedule}, {run.planned_steps} steps planned)",
        _probes_line(run),
        "layers ([T, P, H, W, C]; values after the nonlinearity unless marked pre-activation):",
    ]
    for name in run.layers:
        kernel = "  + kernel" if name in run.kernel_layers else ""
        channels = run.layer_channels(name)
        if channels != list(range(run.layer_shape(name)[-1])):  # recorded with channels=
            full = next((t["shape"][-1] for t in run.summary.get("taps", []) if t["name"] == name and t.get("shape")), "?")
            kernel += f"  channels {step_summary(np.asarray(channels))} of {full}"
        lines.append(f"  {name:<12} {[len(steps), *run.layer_shape(name)]}  {run.activation_label(name)}{kernel}")
    train = run.train_metrics()
    if len(train.step):
        k = min(len(train.step), 10)
        lines.append(
            f"train       {len(train.step)} steps; last step {train.step[-1]}: loss {train.loss[-1]:.4f}, "
            f"accuracy {train.accuracy[-1]:.4f} (mean of the last {k}: {np.mean(train.accuracy[-k:]):.4f})"
        )
    ev = run.eval_metrics()
    if len(ev.step):
        lines.append(
            f"eval        {len(ev.step)} evaluations on {run.eval_count} held-out test images; at step {ev.step[-1]}: "
            f"loss {ev.loss[-1]:.4f}, accuracy {ev.accuracy[-1]:.4f}"
        )
    loss, acc, n = run.test_metrics()
    lines.append(_analysis_line(run))
    if n:
        lines.append(f"test        accuracy {acc:.4f}, loss {loss:.4f} on {n} images")
    else:
        lines.append("test        not measured yet" if run.state()[0] == "recording" else
                     "test        not measured (a loop of your own records it with rec.measure_test)")
    specs, stored = run.weight_specs, run.weight_steps
    if specs:
        count = {k: sum(int(np.prod(s["shape"])) for s in specs if s["kind"] == k) for k in ("Param", "BatchStat")}
        lines.append(f"weights     at steps {step_summary(stored)}: {count['Param']:,} parameters, {count['BatchStat']:,} running "
                     "statistics (init_from=RUN.h5[@STEP])")
    if run.initialised_from:
        lines.append(f"init        {run.initialised_from}")
    return "\n".join(lines)
