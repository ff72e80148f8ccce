"""The same models, batches and optimiser in the frameworks users would otherwise use: PyTorch eager and Keras 3.

Each `*_runner` builds its model once, trains two warm-up steps, and returns `run(steps) -> steps/s`, which
continues training from the same uint8 Fashion-MNIST arrays in the same shuffled batch order, with Adam 1e-3
and softmax cross-entropy.
With `record=True` it also captures every conv layer's activation on the ten probes after every step,
the way users of each framework do it:

* PyTorch: forward hooks on the conv nonlinearities, one no-grad forward of the probes after each update,
  outputs copied to host numpy arrays (kept in memory: no file, which favours PyTorch).
* Keras: the reference experiment's method, one `predict()` of a sub-model per conv layer after each
  `train_on_batch`.

Both frameworks are optional (`pip install 'emergence[bench]'`); `available()` says which are installed.
"""

from __future__ import annotations

import importlib.util
import os
import time
from typing import Callable

import numpy as np

ARCHITECTURES = {
    # (conv channels, 'same' padding?, pool after these conv indices, dense hidden sizes, conv activation)
    "learn_to_see": ((4, 4, 8, 8, 16, 16), True, (1, 3), (64, 32), "tanh"),
    "keras_fashion": ((32, 64), False, (0, 1), (64,), "relu"),
}


def available() -> dict[str, str | None]:
    """framework -> version, or None when not installed."""
    out: dict[str, str | None] = {}
    for name in ("torch", "keras"):
        if importlib.util.find_spec(name) is None:
            out[name] = None
            continue
        if name == "keras":
            os.environ.setdefault("KERAS_BACKEND", "jax")
        module = __import__(name)
        out[name] = module.__version__
    return out


Runner = Callable[[int], float]


def _runner(step: Callable[[int], None], batches: int, warmup: int = 2, sync: Callable[[], None] | None = None) -> Runner:
    position = [0]

    def advance() -> None:
        step(position[0] % batches)
        position[0] += 1

    for _ in range(warmup):
        advance()

    def run(steps: int) -> float:
        t = time.perf_counter()
        for _ in range(steps):
            advance()
        if sync is not None:
            sync()
        return steps / (time.perf_counter() - t)

    return run


def torch_runner(experiment: str, train_x: np.ndarray, train_y: np.ndarray, perm: np.ndarray, batch: int,
                 probes: np.ndarray, record: bool) -> Runner:
    import torch
    from torch import nn

    chans, same, pool_after, hidden, act = ARCHITECTURES[experiment]
    layers: list[nn.Module] = []
    taps: list[nn.Module] = []
    c_in, size = train_x.shape[-1], train_x.shape[1]
    for i, c in enumerate(chans):
        a = nn.Tanh() if act == "tanh" else nn.ReLU()
        layers += [nn.Conv2d(c_in, c, 3, padding=1 if same else 0), a]
        taps.append(a)
        size = size if same else size - 2
        if i in pool_after:
            layers.append(nn.MaxPool2d(2))
            size //= 2
        c_in = c
    layers.append(nn.Flatten())
    width = c_in * size * size
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, 10))
    device = "cuda" if torch.cuda.is_available() else "cpu"  # the data set lives there, as ours does
    model = nn.Sequential(*layers).to(device)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    loss_fn = nn.CrossEntropyLoss()
    x_all = torch.from_numpy(train_x).permute(0, 3, 1, 2).to(device)  # uint8 NCHW; batches are converted per step
    y_all = torch.from_numpy(train_y.astype(np.int64)).to(device)
    probe_x = torch.from_numpy(probes).permute(0, 3, 1, 2).float().div(255).to(device)
    captured: list[np.ndarray] = []
    if record:
        for t in taps:
            t.register_forward_hook(lambda m, i, o: captured.append(o.detach().cpu().numpy().copy()) if not torch.is_grad_enabled() else None)

    def step(i: int) -> None:
        idx = torch.from_numpy(perm[i * batch : (i + 1) * batch]).to(device)
        xb = x_all[idx].float().div(255)
        opt.zero_grad()
        loss = loss_fn(model(xb), y_all[idx])
        loss.backward()
        opt.step()
        loss.item()  # the loss reaches the host every step, as ours does
        if record:
            with torch.no_grad():
                model(probe_x)
            captured.clear()  # kept only for this step: memory stays flat

    return _runner(step, len(perm) // batch, sync=torch.cuda.synchronize if device == "cuda" else None)


def keras_runner(experiment: str, train_x: np.ndarray, train_y: np.ndarray, perm: np.ndarray, batch: int,
                 probes: np.ndarray, record: bool) -> Runner:
    os.environ.setdefault("KERAS_BACKEND", "jax")
    import keras

    chans, same, pool_after, hidden, act = ARCHITECTURES[experiment]
    inputs = keras.Input(train_x.shape[1:])
    x = inputs
    conv_outputs = []
    for i, c in enumerate(chans):
        x = keras.layers.Conv2D(c, 3, padding="same" if same else "valid", activation=act)(x)
        conv_outputs.append(x)
        if i in pool_after:
            x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Flatten()(x)
    for h in hidden:
        x = keras.layers.Dense(h, activation="relu")(x)
    model = keras.Model(inputs, keras.layers.Dense(10)(x))
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    subs = [keras.Model(inputs, out) for out in conv_outputs] if record else []
    probe_x = probes.astype(np.float32) / 255

    def step(i: int) -> None:
        idx = perm[i * batch : (i + 1) * batch]
        model.train_on_batch(train_x[idx].astype(np.float32) / 255, train_y[idx])
        for sub in subs:
            sub.predict(probe_x, verbose=0)

    return _runner(step, len(perm) // batch)
