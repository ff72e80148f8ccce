"""overfitting: the Keras Fashion-MNIST CNN on 1,000 training images for 40 epochs, without and with
regularisation (dropout 0.5 on the dense layers' inputs, random shifts and flips), then compared.

On so few images the plain run's training loss goes to ~0 while its held-out loss turns and climbs: the
curves drift apart (each run's curves.png, and the eval columns of the report). The regularised run trains
on a new variant of each image every step and keeps the two closer. Same seed, subset, probes and analysis
images.

    .venv/bin/python -m experiments.overfitting [--out runs] [--set key=value ...] [--overwrite]

Writes runs/overfitting-plain.h5, runs/overfitting-regularised.h5 (600 steps each, a few minutes on 2 CPU
cores) and runs/overfitting/ (report.md, metrics.json, plots, side-by-side GIFs).
"""

from __future__ import annotations

import sys

from experiments import pair

PAIR = pair.Pair("overfitting", "keras_fashion",
                 {"plain": [], "regularised": ["dropout=0.5", "augment=shift,flip"]},
                 ("train_size", "dropout", "augment"), file_name=lambda label: f"overfitting-{label}",
                 common=("train_size=1000", "epochs=40", "eval_every=15", "schedule=log:200"))


def main(argv: list[str] | None = None) -> int:
    return pair.main(PAIR, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
