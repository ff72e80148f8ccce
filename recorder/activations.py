"""Nonlinearities selectable by name.

The recorder stores values *after* these functions, so their names also travel into the run file
(replay picks a colour scale from them: tanh lives in [-1, 1], sigmoid in [0, 1], the rest are unbounded).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

Activation = Callable[[jax.Array], jax.Array]

ACTIVATIONS: dict[str, Activation] = {
    "tanh": jnp.tanh,
    "relu": jax.nn.relu,
    "gelu": jax.nn.gelu,
    "sigmoid": jax.nn.sigmoid,
    "elu": jax.nn.elu,
    "leaky_relu": jax.nn.leaky_relu,
    "silu": jax.nn.silu,
    "identity": lambda x: x,
}


def get_activation(name: str) -> Activation:
    """Returns the activation called `name`; raises ValueError listing the valid names otherwise."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(
            f"unknown activation {name!r}; expected one of: {', '.join(sorted(ACTIVATIONS))}"
        ) from None
