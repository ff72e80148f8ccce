"""2×2 max-pooling (stride 2) whose gradient is XLA's, computed without XLA's slow CPU select-and-scatter.

`nnx.max_pool` differentiates through `reduce_window`, whose gradient is XLA's select-and-scatter: on the CPU
it took 86 ms of a learn_to_see step at 28×28×4, batch 1024 (benchmarks/README.md). Here the forward pass is
a reshape and a max over each 2×2 window, and the custom gradient sends each window's incoming gradient to the
first maximal element in row-major window order, which is exactly the element select-and-scatter picks
(ties included: background pixels make ties common). Plain autodiff of the reshape-max would instead split
the gradient between tied elements and change training, so it is not used.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from recorder import fastconv


def _windows(x: jax.Array) -> jax.Array:  # [B, H, W, C] -> [B, H/2, W/2, C, 4] in (dy, dx) order
    b, h, w, c = x.shape
    return x.reshape(b, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 5, 2, 4).reshape(b, h // 2, w // 2, c, 4)


@jax.custom_vjp
def max_pool_2x2(x: jax.Array) -> jax.Array:
    """[B, H, W, C] -> [B, H/2, W/2, C] (H and W even)."""
    b, h, w, c = x.shape
    return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def _fwd(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    return max_pool_2x2(x), x


def _bwd(x: jax.Array, g: jax.Array) -> tuple[jax.Array]:
    b, h, w, c = x.shape
    first = jnp.argmax(_windows(x), axis=-1)  # the first maximum, like select-and-scatter with `ge`
    grads = jax.nn.one_hot(first, 4, dtype=g.dtype) * g[..., None]  # [B, H/2, W/2, C, 4]
    grads = grads.reshape(b, h // 2, w // 2, c, 2, 2).transpose(0, 1, 4, 2, 5, 3)
    return (grads.reshape(b, h, w, c),)


max_pool_2x2.defvjp(_fwd, _bwd)


def pool(x: jax.Array) -> jax.Array:
    """2×2 max-pool, stride 2; odd trailing rows/columns are dropped, as 'VALID' pooling does. XLA's own
    `reduce_window` where `conv_impl` says so (recorder/fastconv.py `cpu_paths`: not on GPU/TPU by default)."""
    if not fastconv.cpu_paths():
        return nnx.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")
    h, w = (x.shape[1] // 2) * 2, (x.shape[2] // 2) * 2
    return max_pool_2x2(x[:, :h, :w])
