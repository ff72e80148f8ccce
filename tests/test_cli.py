"""Bad input: one clear message, a non-zero exit, and nothing already recorded is lost."""

import pytest

from emergence.cli import main


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["record", "resnet50"], "unknown experiment 'resnet50'; expected one of: learn_to_see, keras_fashion, strided, vgg_bn, resnet8, cifar10_vgg, tiny"),
        (["record", "tiny", "--set", "colour=red"], "unknown config key 'colour'; valid keys:"),
        (["record", "tiny", "--set", "activation=swish"], "unknown activation 'swish'; expected one of:"),
        (["record", "tiny", "--set", "batch_size=100000"], "batch_size 100000 is larger than the 2048 training images"),
        (["info", "/nonexistent/run.h5"], "no run file at /nonexistent/run.h5"),
    ],
)
def test_errors_are_one_line_and_exit_nonzero(capsys, tmp_path, argv, message):
    code, _, err = run_cli(capsys, *argv, *(["--out", str(tmp_path)] if argv[0] == "record" else []))
    assert code == 2
    assert err.startswith("emergence: error: ") and message in err
    assert "Traceback" not in err


def test_missing_dataset_says_how_to_get_it(capsys, tmp_path, isolated_home):
    code, _, err = run_cli(capsys, "record", "learn_to_see", "--set", "dataset=mnist", "--out", str(tmp_path))
    assert code == 2 and "mnist not found" in err and "--data-dir" in err


def test_info_rejects_a_file_that_is_not_a_run(capsys, tmp_path):
    (tmp_path / "x.h5").write_bytes(b"not hdf5")
    code, _, err = run_cli(capsys, "info", str(tmp_path / "x.h5"))
    assert code == 2 and "not a readable HDF5 run file" in err


def test_record_then_info_then_refuse_overwrite(capsys, tmp_path):
    args = ["record", "tiny", "--out", str(tmp_path), "--no-progress", "--set", "steps=3", "--set", "synthetic_size=128"]
    code, out, _ = run_cli(capsys, *args)
    path = tmp_path / "tiny-3-128.h5"
    assert code == 0 and out.strip() == str(path)
    code, out, _ = run_cli(capsys, "info", str(path))
    assert code == 0 and "status      completed" in out and "conv1        [4, 10, 26, 26, 8]" in out
    before = path.read_bytes()
    code, _, err = run_cli(capsys, *args)
    assert code == 2 and "already exists; pass --overwrite" in err
    assert path.read_bytes() == before


@pytest.mark.parametrize("command", [[], ["record"], ["info"], ["resume"], ["repair"]])
def test_help(capsys, command):
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: emergence" in capsys.readouterr().out


def test_info_and_replay_start_without_jax(tmp_path):
    """The commands that only read a run file never import JAX (seconds of start-up): checked in a fresh
    interpreter, on a real run file."""
    import subprocess
    import sys

    from conftest import write_run
    import numpy as np

    path = tmp_path / "r.h5"
    write_run(path, {"conv1": np.zeros((3, 2, 4, 4, 2), np.float16)})
    for argv in (["info", str(path)], ["replay", str(path), "--out", str(tmp_path / "out")]):
        code = ("import sys; from emergence.cli import main; code = main(sys.argv[1:]); "
                "sys.exit(3 if 'jax' in sys.modules else code)")
        done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, (argv[0], done.returncode, done.stderr[-2000:])


def test_only_emergences_own_process_keeps_freed_memory(tmp_path):
    """`emergence record` started as a program sets malloc to keep freed memory (recorder/host_memory.py);
    `main([...])` called from another program leaves that program's memory alone. Checked in fresh
    interpreters, with a command that fails (an unknown experiment) right after that set-up."""
    import os
    import subprocess
    import sys

    code = ("import sys; from emergence.cli import main; import recorder.host_memory as m; "
            "how, sys.argv[1:] = sys.argv[1], sys.argv[2:]; "
            "code = main(None if how == 'program' else ['record', 'no_such_experiment']); "
            "print(code, m._applied)")
    for how, applied in (("program", "[True]"), ("called", "[]")):
        done = subprocess.run([sys.executable, "-c", code, how, "record", "no_such_experiment"], capture_output=True,
                              text=True, timeout=120, env={**os.environ, "EMERGENCE_KEEP_FREED_MEMORY": "1"})
        assert done.stdout.split() == ["2", applied], (how, done.stdout, done.stderr[-2000:])
