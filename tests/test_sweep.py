"""`emergence sweep`: 2 activations x 2 seeds on tiny; the report's numbers recomputed from the run files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from compare.cross import cross_similarity, layer_map_at
from compare.sweep import sweep_report
from emergence.cli import main
from experiments.sweep import parse_grid
from runfile.reader import open_run

SETS = ["steps=12", "synthetic_size=256", "batch_size=32", "analysis_probes=32", "eval_size=40",
        "checkpoint_every=0"]


def _args(out, *extra):
    args = ["sweep", "tiny", "--grid", "activation=tanh,relu", "--grid", "seed=0,1", "--out", str(out),
            "--name", "s", "--no-progress", *extra]
    for s in SETS:
        args += ["--set", s]
    return args


def test_a_sweep_records_every_combination_and_its_report_matches_the_files(tmp_path, capsys):
    assert main(_args(tmp_path, "--jobs", "2")) == 0
    folder = tmp_path / "s"
    files = sorted(p.name for p in folder.glob("*.h5"))
    assert files == ["activation=relu-seed=0.h5", "activation=relu-seed=1.h5", "activation=tanh-seed=0.h5",
                     "activation=tanh-seed=1.h5"]
    data = json.loads((folder / "sweep.json").read_text())
    for run in data["runs"]:
        with open_run(folder / run["file"]) as r:
            assert r.config["activation"] == run["values"]["activation"] and str(r.config["seed"]) == run["values"]["seed"]
            assert run["test_accuracy"] == pytest.approx(r.test_metrics()[1])
    assert len(data["seeds"]) == 2
    for group in data["seeds"]:
        act = group["config"]["activation"]
        with open_run(folder / f"activation={act}-seed=0.h5") as a, open_run(folder / f"activation={act}-seed=1.h5") as b:
            cross = cross_similarity(a, b, a.layers)
            at_init = layer_map_at(a, b, 0)[0]
        assert cross.steps[0] == 0
        for layer in a.layers:
            assert group["same_layer_cka"][layer] == {"init": [pytest.approx(cross.same_layer[layer][0])],
                                                      "end": [pytest.approx(cross.same_layer[layer][-1])]}
        for when, m in (("init", at_init), ("end", cross.layer_map)):
            hits = sum(int(np.nanargmax(m[i]) == i) + int(np.nanargmax(m[:, i]) == i) for i in range(len(a.layers)))
            matching = group["layer_matching"][when]
            assert (matching["matches"], matching["compared"]) == (hits, 2 * len(a.layers))
        assert group["layer_matching_gain"] == pytest.approx(group["layer_matching"]["end"]["accuracy"]
                                                             - group["layer_matching"]["init"]["accuracy"])
        accs = [r["test_accuracy"] for r in data["runs"] if r["values"]["activation"] == act]
        mean, sd = np.mean(accs), np.std(accs, ddof=1)  # two seeds: Student's t with 1 degree of freedom
        assert group["test_accuracy"]["mean"] == pytest.approx(mean) and group["test_accuracy"]["n"] == 2
        assert group["test_accuracy"]["interval95"] == pytest.approx([mean - 12.706 * sd / np.sqrt(2),
                                                                      mean + 12.706 * sd / np.sqrt(2)])
    report = (folder / "report.md").read_text()
    assert "| config | seeds | test accuracy | conv1 t90 | conv2 t90 |" in report
    assert "| activation | seed | test accuracy | conv1 t50/t90 | conv2 t50/t90 |" in report
    assert "| conv1 CKA init → end | conv2 CKA init → end | layer matching init | layer matching end | gain |" in report
    capsys.readouterr()
    assert main(_args(tmp_path)) == 0  # everything complete with the same config: reused, nothing recorded
    assert capsys.readouterr().out.count("reused (complete, same config)") == 4


def test_two_identical_runs_match_perfectly_at_init_and_end_and_gain_nothing(two_runs, tmp_path):
    """The same file as two seeds: CKA 1 at every layer, every layer matched, a gain of 0 called n.s."""
    path = two_runs["tanh"]
    sweep_report([({"seed": "0"}, path), ({"seed": "1"}, path)], tmp_path, "identical")
    group = json.loads((tmp_path / "sweep.json").read_text())["seeds"][0]
    for ends in group["mean_same_layer_cka"].values():
        assert ends["init"] == pytest.approx(1.0) and ends["end"] == pytest.approx(1.0)
    assert group["layer_matching"]["init"]["accuracy"] == group["layer_matching"]["end"]["accuracy"] == 1.0
    assert group["layer_matching_gain"] == 0.0
    assert "| +0.000 n.s. |" in (tmp_path / "report.md").read_text()


def test_bad_grids_are_one_clear_error(tmp_path, capsys):
    with pytest.raises(ValueError, match="unknown config key 'colour'"):
        parse_grid(["colour=red,blue"])
    with pytest.raises(ValueError, match="not of the form"):
        parse_grid(["seed"])
    assert main(["sweep", "tiny", "--grid", "seed=0,1", "--set", "seed=3", "--out", str(tmp_path)]) == 2
    assert "swept by --grid" in capsys.readouterr().err
