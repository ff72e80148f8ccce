"""Reads damaged copies of a run file through the CLI, one forked child per case (tests/test_fuzz.py).

usage: python tests/fuzz_reader.py BASE.h5 WORK_DIR TIMEOUT_S  -> one JSON line per case on stdout
Each case: a copy of BASE cut at an offset or with one byte inverted, then `emergence info` and, if that
succeeds, `emergence replay` on it. A child that is still running after TIMEOUT_S is killed (reported).
"""

import json
import os
import signal
import sys
import time

import numpy as np

from emergence.cli import main
import replay.render  # noqa: F401  (imported once, before forking)


def cases(size: int) -> list[tuple[str, int]]:
    rng = np.random.default_rng(1)
    cut = [("cut", int(o)) for o in np.linspace(64, size - 1, 20).astype(int)]
    return cut + [("flip", int(o)) for o in rng.choice(size, 20, replace=False)]


def run_case(path: str, out: str, log: str) -> int:
    sys.stdout = sys.stderr = open(log, "w")
    code = main(["info", path])
    if code == 0:
        code = main(["replay", path, "--out", out])
    sys.stdout.flush()
    return code


def drive(base: str, work: str, timeout: float) -> None:
    data = open(base, "rb").read()
    for kind, offset in cases(len(data)):
        path, log = os.path.join(work, "case.h5"), os.path.join(work, "case.log")
        damaged = bytearray(data[:offset] if kind == "cut" else data)
        if kind == "flip":
            damaged[offset] ^= 0xFF
        with open(path, "wb") as f:
            f.write(damaged)
        t0 = time.monotonic()
        pid = os.fork()
        if pid == 0:
            os._exit(run_case(path, os.path.join(work, "out"), log))
        status, timed_out = 0, False
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() - t0 > timeout:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                timed_out = True
                break
            time.sleep(0.01)
        print(json.dumps({"kind": kind, "offset": offset, "seconds": time.monotonic() - t0, "timed_out": timed_out,
                          "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else 0,
                          "code": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
                          "output": open(log).read() if os.path.exists(log) else ""}), flush=True)


if __name__ == "__main__":
    drive(sys.argv[1], sys.argv[2], float(sys.argv[3]))
