"""optimizers: learn_to_see trained with SGD + momentum and with Adam from the same seed, then compared.

Same initial weights, batch order, probes and analysis images; only the optimiser (and its learning rate)
differs: Adam at 1e-3 (the reference), SGD with momentum 0.9 at 0.05. The report shows which layers each
optimiser moves, how far and when they settle, beside the side-by-side GIFs.

What it shows on Fashion-MNIST: from learn_to_see's Normal(0, 0.01) kernels the signal through six tanh convs is
so small that plain gradients barely move the convs (SGD: conv1's weights change by 1e-4 of their norm in 290
steps, test accuracy 0.10; the same at learning rates 0.2 and 0.5), while Adam's per-parameter step sizes move
every layer about 5x its initial norm (test 0.80). Features fail to emerge, and the pictures show it.

    .venv/bin/python -m experiments.optimizers [--out runs] [--set key=value ...] [--overwrite]

Writes runs/optimizers-adam.h5, runs/optimizers-sgd.h5 (about 3 minutes each on 2 CPU cores) and
runs/optimizers/ (report.md, metrics.json, plots, six side-by-side GIFs).
"""

from __future__ import annotations

import sys

from experiments import pair

PAIR = pair.Pair("optimizers", "learn_to_see",
                 {"adam": ["optimizer=adam", "learning_rate=1e-3"],
                  "sgd": ["optimizer=sgd", "learning_rate=0.05", "momentum=0.9"]},
                 ("optimizer", "learning_rate", "momentum"), file_name=lambda label: f"optimizers-{label}")


def main(argv: list[str] | None = None) -> int:
    return pair.main(PAIR, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
