"""On-device data augmentation inside the jitted training step: random shifts and horizontal flips.

Each step's draws come from `fold_in(key(seed), step)`, so a run's augmented batches are a pure function of
its seed and step (a resumed run sees the very same ones) and cost no host work. Probe frames, evaluations
and the analysis images are never augmented.

- `shift`: each image moves by an independent whole number of pixels in [-MAX_SHIFT, MAX_SHIFT] along each
  axis; what moves in from outside is 0 (black), as in Keras' `RandomTranslation(fill_mode="constant")`.
- `flip`: each image is mirrored left-right with probability 1/2 (for digits this changes their meaning:
  use it on clothes, objects and shapes).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

AUGMENTATIONS = ("shift", "flip")
MAX_SHIFT = 2


def step_key(seed: int, step: jax.Array) -> jax.Array:
    return jax.random.fold_in(jax.random.key(seed), step)


def augment(x: jax.Array, key: jax.Array, kinds: Sequence[str]) -> jax.Array:
    """`x` [B, H, W, C] with the augmentations in `kinds` applied, drawn from `key`."""
    shift_key, flip_key = jax.random.split(key)
    b, h, w, _ = x.shape
    if "shift" in kinds:
        m = MAX_SHIFT
        padded = jnp.pad(x, ((0, 0), (m, m), (m, m), (0, 0)))
        offsets = jax.random.randint(shift_key, (b, 2), 0, 2 * m + 1)
        crop = lambda image, o: jax.lax.dynamic_slice(image, (o[0], o[1], 0), (h, w, image.shape[-1]))
        x = jax.vmap(crop)(padded, offsets)
    if "flip" in kinds:
        flip = jax.random.bernoulli(flip_key, 0.5, (b, 1, 1, 1))
        x = jnp.where(flip, x[:, :, ::-1], x)
    return x
