"""The command line shared by the own-loop examples (experiments/own_loop_nnx.py, own_loop_linen.py)."""

from __future__ import annotations

import argparse


def parse(description: str, argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", default="runs", help="folder of the run file (default: runs)")
    parser.add_argument("--steps", type=int, default=300, help="training steps (default 300)")
    parser.add_argument("--batch", type=int, default=128, help="batch size (default 128)")
    parser.add_argument("--dataset", default="fashion_mnist", help="fashion_mnist (default), mnist or synthetic")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing run file")
    return parser.parse_args(argv)
