"""The README's examples (your own model in the built-in loop; weights from elsewhere) run as written; the own-loop
example runs unchanged in tests/test_own_loop.py."""

import re
from pathlib import Path

from replay import open_run

README = Path(__file__).resolve().parents[1] / "README.md"


def test_custom_model_example_records(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    example = next(b for b in blocks if "register_model" in b)
    example = example.replace("epochs=1)", "epochs=1, synthetic_size=256)")  # keep the test fast
    monkeypatch.chdir(tmp_path)
    from recorder.models import MODELS

    try:
        exec(compile(example, "README.md", "exec"), {})
    finally:
        MODELS.pop("my_cnn", None)
    with open_run(tmp_path / "runs" / "mine.h5") as run:
        assert run.layers == ["features"] and run.status == "completed"
        assert run.layer_shape("features") == (10, 28, 28, 6)  # nnx.Conv pads SAME by default
        assert run.kernel_layers == ["features"]


def test_weights_from_elsewhere_example_saves_files_init_from_loads(tmp_path, monkeypatch, capsys):
    import numpy as np

    from recorder.models import build_model
    from recorder.summary import summarize
    from recorder.transfer import initialise
    from recorder.weights import flat_weights

    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    example = next(b for b in blocks if "my_weights.npz" in b)
    monkeypatch.chdir(tmp_path)
    exec(compile(example, "README.md", "exec"), {})
    assert "layers/0/conv/kernel (3, 3, 3, 16) Param" in capsys.readouterr().out
    source = {p: np.asarray(v) for p, (v, _) in flat_weights(build_model("vgg_bn", (32, 32, 3), 10, "relu", 0)).items()}
    for name in ("my_weights.npz", "my_weights.msgpack"):
        model = build_model("vgg_bn", (32, 32, 3), 10, "relu", seed=3)
        assert initialise(model, str(tmp_path / name), summarize(model, (32, 32, 3))).startswith("initialised from")
        loaded = {p: np.asarray(v) for p, (v, _) in flat_weights(model).items()}
        assert all(np.array_equal(loaded[p], source[p]) for p in source), name
