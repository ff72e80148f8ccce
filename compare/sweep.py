"""The report over a sweep's runs (experiments/sweep.py): what each run reached, and how alike seeds are.

Per run: its grid values, test accuracy, and each layer's t50/t90 (compare/dynamics.py).

Seeds of the same config (runs whose grid values differ only in `seed`), for every pair of seeds A, B, from
the Grams both runs stored for the very same analysis images, at the last analysed step both have:

* **same-layer similarity**: debiased CKA(layer ℓ of A, layer ℓ of B), averaged over the pairs;
* **layer matching**: for each layer ℓ of A, whether the most similar layer of B (largest debiased CKA over
  B's layers) is ℓ itself, and the same from B to A; the accuracy is the share of such matches over all
  layers, directions and pairs, with its 95% Wilson interval (the matches are not independent, so it is
  optimistic).

Both are given at initialisation (the first analysed step both have, step 0) beside their final value, and
the gain: seeds of one architecture already look alike before any training (the architecture, the data and
the shared analysis images make them so), so only the gain is what training added.

The published figure nearest to layer matching: Kornblith et al. (2019, Table 2) identify corresponding layers
for 99.3% of the layers of ten architecturally identical 10-layer plain CNNs trained on CIFAR-10 from different
initialisations, with linear CKA, logits excluded, at the end of training; it is a different model, data set,
estimator (linear, not debiased, CKA) and image count than any run here, and they give no value at
initialisation.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any, Callable

import numpy as np

from compare.cross import cross_similarity, layer_map_at, layer_matching, probe_set_mismatch
from compare.dynamics import run_dynamics
from compare.finiteness import nonfinite_layers
from compare.linear_probes import wilson_interval
from compare.tables import finite_mean, interval_cell, mean_interval
from replay.images import atomic_path
from runfile.reader import open_run

SEED = "seed"


def _fmt(v: Any) -> str:
    return "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def _seed_group(group: tuple, members: list[tuple[str, Path]], layers: list[str], lines: list[str]) -> dict[str, Any]:
    """Same-layer CKA and layer matching between the seeds of one config, at initialisation and at the end;
    appends the table row (and notes) to `lines`, returns the sweep.json entry."""
    same: dict[str, dict[str, list[float]]] = {n: {"init": [], "end": []} for n in layers}
    counts = {"init": [0, 0], "end": [0, 0]}  # matches, layers considered
    notes = []
    for (sa, pa), (sb, pb) in itertools.combinations(members, 2):
        with open_run(pa) as a, open_run(pb) as b:
            mismatch = probe_set_mismatch(a, b)
            if mismatch:
                notes.append(f"seeds {sa} and {sb}: {mismatch}")
                continue
            cross = cross_similarity(a, b, layers)
            maps = {"init": layer_map_at(a, b, int(cross.steps[0]))[0], "end": cross.layer_map}
        for n in layers:
            same[n]["init"].append(float(cross.same_layer[n][0]))
            same[n]["end"].append(float(cross.same_layer[n][-1]))
        for when, matrix in maps.items():
            h, t = layer_matching(matrix, cross.map_rows, cross.map_cols)
            counts[when][0] += h
            counts[when][1] += t
    means = {n: {when: finite_mean(np.asarray(v)) if v else None for when, v in ends.items()} for n, ends in same.items()}
    matching = {when: _share(h, t) for when, (h, t) in counts.items()}
    gain = (matching["end"]["accuracy"] - matching["init"]["accuracy"]
            if matching["end"] and matching["init"] else None)
    label = ", ".join(f"{k}={v}" for k, v in group) or "(all)"
    lines.append(f"| {label} | {', '.join(s for s, _ in members)} | "
                 + " | ".join(f"{_fmt(means[n]['init'])} → {_fmt(means[n]['end'])}" for n in layers)
                 + f" | {_matching_cell(matching['init'])} | {_matching_cell(matching['end'])} | "
                 + (f"{gain:+.3f}" + (" n.s." if _overlap(matching) else "") if gain is not None else "-") + " |")
    lines += [f"Note: {n}" for n in notes]
    return {"config": dict(group), "seeds": [s for s, _ in members], "same_layer_cka": same,
            "mean_same_layer_cka": means, "layer_matching": matching, "layer_matching_gain": gain, "notes": notes}


def _share(hits: int, total: int) -> dict[str, Any] | None:
    if not total:
        return None
    return {"accuracy": hits / total, "matches": hits, "compared": total, "interval95": list(wilson_interval(hits / total, total))}


def _matching_cell(m: dict[str, Any] | None) -> str:
    if m is None:
        return "-"
    lo, hi = m["interval95"]
    return f"{m['accuracy']:.3f} [{lo:.3f}–{hi:.3f}] ({m['matches']}/{m['compared']})"


def _overlap(matching: dict[str, Any]) -> bool:
    (lo_a, hi_a), (lo_b, hi_b) = matching["init"]["interval95"], matching["end"]["interval95"]
    return lo_a <= hi_b and lo_b <= hi_a


def sweep_report(runs: list[tuple[dict[str, str], Path]], out: Path, title: str,
                 log: Callable[[str], None] = lambda s: None) -> Path:
    """Writes `out/report.md` and `out/sweep.json` over `runs` ([(grid values, run file)]); returns the report."""
    out.mkdir(parents=True, exist_ok=True)
    keys = list(runs[0][0])
    per_run, layers, nonfinite = [], None, []
    for values, path in runs:
        with open_run(path) as run:
            layers = layers or list(run.layers)
            dyn = run_dynamics(run, layers) if run.has_analysis else {}
            nonfinite += [f"{path.name} {name} {f.describe()}" for name, f in nonfinite_layers(run, layers).items()]
            _, acc, count = run.test_metrics()
            per_run.append({"values": values, "file": path.name, "test_accuracy": float(acc) if count else None,
                            "nonfinite": [n for n in nonfinite if n.startswith(path.name + " ")],
                            "t50": {n: d.t50 for n, d in dyn.items()}, "t90": {n: d.t90 for n, d in dyn.items()}})
    first = ([f"**Non-finite data (those steps are excluded from every measure below): {'; '.join(nonfinite)}**", ""]
             if nonfinite else [])
    if nonfinite:
        log(first[0].strip("*"))
    lines = [f"# Sweep: {title}", "", *first, f"{len(runs)} runs over {', '.join(keys)}.", "",
             "| " + " | ".join(keys) + " | test accuracy | " + " | ".join(f"{n} t50/t90" for n in layers) + " |",
             "|" + "---|" * (len(keys) + 1 + len(layers))]
    for r in per_run:
        lines.append("| " + " | ".join(r["values"][k] for k in keys) + f" | {_fmt(r['test_accuracy'])} | "
                     + " | ".join(f"{_fmt(r['t50'].get(n))}/{_fmt(r['t90'].get(n))}" for n in layers) + " |")
    seeds: list[dict[str, Any]] = []
    if SEED in keys and len({v[SEED] for v, _ in runs}) > 1:
        groups: dict[tuple, list[tuple[str, Path]]] = {}
        for values, path in runs:
            groups.setdefault(tuple((k, v) for k, v in values.items() if k != SEED), []).append((values[SEED], path))
        lines += ["", "## Seeds of the same config", "",
                  "Same-layer debiased CKA between seeds (mean over seed pairs) and layer matching (the share of "
                  "layers whose most similar layer in the other seed is itself, both directions, every pair, with "
                  "its 95% interval), each at initialisation → at the last analysed step both runs have, and the "
                  "gain that training added.", "",
                  "| config | seeds | " + " | ".join(f"{n} CKA init → end" for n in layers)
                  + " | layer matching init | layer matching end | gain |",
                  "|" + "---|" * (5 + len(layers))]
        for group, members in groups.items():
            if len(members) >= 2:
                seeds.append(_seed_group(group, members, layers, lines))
        lines += ["", "Across the seeds of each config: the mean and its 95% interval (Student's t over the seeds) of "
                  "the test accuracy and of each layer's t90 (the step by which its CKA to the final step reached "
                  "90%).", "",
                  "| config | seeds | test accuracy | " + " | ".join(f"{n} t90" for n in layers) + " |",
                  "|" + "---|" * (3 + len(layers))]
        by_file = {r["file"]: r for r in per_run}
        for group, members in groups.items():
            rows = [by_file[path.name] for _, path in members]
            acc = mean_interval([r["test_accuracy"] for r in rows])
            t90 = {n: mean_interval([r["t90"].get(n) for r in rows]) for n in layers}
            label = ", ".join(f"{k}={v}" for k, v in group) or "(all)"
            lines.append(f"| {label} | {len(members)} | {interval_cell(acc)} | "
                         + " | ".join(interval_cell(t90[n], 1) for n in layers) + " |")
            entry = next((e for e in seeds if e["config"] == dict(group)), None)
            if entry is None:
                seeds.append(entry := {"config": dict(group), "seeds": [s for s, _ in members]})
            entry.update({"test_accuracy": acc, "t90": t90})
    report = out / "report.md"
    with atomic_path(report) as tmp:
        tmp.write_text("\n".join(lines) + "\n\n" + (__doc__ or "").split("\n\n", 1)[1])
    with atomic_path(out / "sweep.json") as tmp:
        tmp.write_text(json.dumps({"runs": per_run, "seeds": seeds}, indent=1))
    log(str(report))
    return report
