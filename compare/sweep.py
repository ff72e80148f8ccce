"""The report over a sweep's runs (experiments/sweep.py): what each run reached, and how alike seeds are.

Per run: its grid values, test accuracy, and each layer's t50/t90 (compare/dynamics.py).

Seeds of the same config (runs whose grid values differ only in `seed`), for every pair of seeds A, B, from
the Grams both runs stored for the very same analysis images, at the last analysed step both have:

* **same-layer similarity**: debiased CKA(layer ℓ of A, layer ℓ of B), averaged over the pairs;
* **layer matching**: for each layer ℓ of A, whether the most similar layer of B (largest debiased CKA over
  B's layers) is ℓ itself, and the same from B to A; the accuracy is the share of such matches over all
  layers, directions and pairs. Kornblith et al. (2019) report 99.3% for linear CKA between CIFAR-10 CNNs
  trained from different seeds.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any, Callable

import numpy as np

from compare.cross import cross_similarity, probe_set_mismatch
from compare.dynamics import run_dynamics
from replay.images import atomic_path
from runfile.reader import open_run

SEED = "seed"


def _fmt(v: Any) -> str:
    return "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def layer_matching(layer_map: np.ndarray, rows: list[str], cols: list[str]) -> tuple[int, int]:
    """(matches, layers considered) in both directions of a CKA map between two runs of one architecture."""
    shared = [n for n in rows if n in cols]
    hits = total = 0
    for name in shared:
        i, j = rows.index(name), cols.index(name)
        for values, own in ((layer_map[i], j), (layer_map[:, j], i)):
            if np.all(np.isnan(values)):
                continue
            total += 1
            hits += int(np.nanargmax(values) == own)
    return hits, total


def sweep_report(runs: list[tuple[dict[str, str], Path]], out: Path, title: str,
                 log: Callable[[str], None] = lambda s: None) -> Path:
    """Writes `out/report.md` and `out/sweep.json` over `runs` ([(grid values, run file)]); returns the report."""
    out.mkdir(parents=True, exist_ok=True)
    keys = list(runs[0][0])
    per_run, layers = [], None
    for values, path in runs:
        with open_run(path) as run:
            layers = layers or list(run.layers)
            dyn = run_dynamics(run, layers) if run.has_analysis else {}
            _, acc, count = run.test_metrics()
            per_run.append({"values": values, "file": path.name, "test_accuracy": float(acc) if count else None,
                            "t50": {n: d.t50 for n, d in dyn.items()}, "t90": {n: d.t90 for n, d in dyn.items()}})
    lines = [f"# Sweep: {title}", "", f"{len(runs)} runs over {', '.join(keys)}.", "",
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
                  "Same-layer debiased CKA between seeds at the last analysed step both have (mean over seed pairs), "
                  "and layer matching: the share of layers whose most similar layer in the other seed is itself "
                  "(both directions, every pair).", "",
                  "| config | seeds | " + " | ".join(f"{n} CKA" for n in layers) + " | layer matching |",
                  "|" + "---|" * (3 + len(layers))]
        for group, members in groups.items():
            if len(members) < 2:
                continue
            same: dict[str, list[float]] = {n: [] for n in layers}
            hits = total = 0
            notes = []
            for (sa, pa), (sb, pb) in itertools.combinations(members, 2):
                with open_run(pa) as a, open_run(pb) as b:
                    mismatch = probe_set_mismatch(a, b)
                    if mismatch:
                        notes.append(f"seeds {sa} and {sb}: {mismatch}")
                        continue
                    cross = cross_similarity(a, b, layers)
                for n in layers:
                    same[n].append(float(cross.same_layer[n][-1]))
                h, t = layer_matching(cross.layer_map, cross.map_rows, cross.map_cols)
                hits, total = hits + h, total + t
            label = ", ".join(f"{k}={v}" for k, v in group) or "(all)"
            means = {n: float(np.nanmean(v)) if v else None for n, v in same.items()}
            accuracy = hits / total if total else None
            seeds.append({"config": dict(group), "seeds": [s for s, _ in members], "same_layer_cka": same,
                          "mean_same_layer_cka": means, "matches": hits, "compared": total,
                          "layer_matching": accuracy, "notes": notes})
            lines.append(f"| {label} | {', '.join(s for s, _ in members)} | "
                         + " | ".join(_fmt(means[n]) for n in layers)
                         + f" | {_fmt(accuracy)} ({hits}/{total}) |")
            lines += [f"Note: {n}" for n in notes]
    report = out / "report.md"
    with atomic_path(report) as tmp:
        tmp.write_text("\n".join(lines) + "\n\n" + (__doc__ or "").split("\n\n", 1)[1])
    with atomic_path(out / "sweep.json") as tmp:
        tmp.write_text(json.dumps({"runs": per_run, "seeds": seeds}, indent=1))
    log(str(report))
    return report
