"""relu vs tanh: the learn_to_see CNN trained twice, identical but for the conv nonlinearity, then compared.

Same seed (so the same initial weights and batch order), same picture probes and the same 128 analysis
images; only `activation` differs. Then `emergence compare` measures, per layer, when each run settled
(t50/t90), how similar the two runs' layers are over training and at the end, how far each layer's weights
moved, and how many units saturated (tanh) or died (relu).

    .venv/bin/python -m experiments.relu_vs_tanh [--out runs] [--set key=value ...] [--overwrite]

Writes runs/learn_to_see-tanh.h5, runs/learn_to_see-relu.h5 (about 3 minutes each on 2 CPU cores; a
complete run file already there with the same config is reused unless --overwrite) and
runs/relu_vs_tanh/ (report.md, metrics.json, plots, six side-by-side GIFs).
"""

from __future__ import annotations

import sys

from experiments import pair

ACTIVATIONS = ("tanh", "relu")
PAIR = pair.Pair("relu_vs_tanh", "learn_to_see", {a: [f"activation={a}"] for a in ACTIVATIONS}, ("activation",),
                 file_name=lambda label: f"learn_to_see-{label}")


def main(argv: list[str] | None = None) -> int:
    return pair.main(PAIR, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
