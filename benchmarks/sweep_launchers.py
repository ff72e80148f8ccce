"""The same sweep through every launcher: wall time, launcher overhead per run, and whether the files agree.

    .venv/bin/python benchmarks/sweep_launchers.py [--runs 8] [--steps 40]

One `tiny` sweep (seeds × tanh/relu, `--runs` runs of `--steps` steps) recorded, each time into a fresh folder,
by `emergence sweep` with:
* local, one process: every run in the sweep's own process, one after another (no start-up per run);
* local --jobs 2: two runs at a time, each in its own `emergence` process;
* ray, one machine: a Ray instance started by the sweep (two CPUs: two runs at a time);
* ray, head + worker: `ray start --head` and a second node started apart, one CPU each, through --address;
* slurm, submitit's local executor (every array task at once: no SLURM here).

Launcher overhead per run = (wall − in-process wall / c) × c / runs, with c the runs at a time (at most the
machine's cores, which bound how many recordings run at full speed at once): what each
run costs beyond recording it in-process (process and JAX start-up, compilation without the in-process
cache of compiled programs, scheduling). Each folder's files are compared with the in-process ones by
runfile/identity.py (everything but wall times and writer identity, bitwise).
"""

from __future__ import annotations

import argparse
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BIN = Path(sys.executable).parent


def sweep(out: Path, runs: int, steps: int, extra: list[str], env: dict[str, str]) -> float:
    seeds = ",".join(str(s) for s in range(max(1, runs // 2)))
    t = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "emergence", "sweep", "tiny", "--grid", f"seed={seeds}", "--grid",
                           "activation=tanh,relu", "--set", f"steps={steps}", "--out", str(out), "--name", "s",
                           "--no-progress", *extra], capture_output=True, text=True, env=env, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"sweep {' '.join(extra)} failed: {done.stderr[-2000:]}")
    return time.perf_counter() - t


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    from runfile.identity import differences

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token", "RAY_TMPDIR": str(tmp / "ray"),
               "RAY_AUTH_TOKEN": secrets.token_hex(32)}  # the cluster's own token (none need exist in ~/.ray)
        (tmp / "ray").mkdir()
        base = sweep(tmp / "inproc", args.runs, args.steps, [], env)
        reference = sorted((tmp / "inproc" / "s").glob("*.h5"))
        cases = [("local --jobs 2", ["--jobs", "2"], 2), ("ray, one machine", ["--launcher", "ray", "--cpus-per-run", "1"], 2),
                 ("ray, head + worker node", None, 2),
                 ("slurm (submitit local executor)", ["--launcher", "slurm", "--slurm-cluster", "local"], args.runs)]
        rows.append(("local, one process", base, 1, 0.0, len(reference)))
        for k, (name, extra, c) in enumerate(cases):
            out = tmp / f"case{k}"
            stop = None
            if extra is None:
                port = free_port()
                address = f"127.0.0.1:{port}"
                common = ["--num-cpus", "1", "--disable-usage-stats"]
                subprocess.run([str(BIN / "ray"), "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
                                "--include-dashboard", "false", *common], check=True, env=env, capture_output=True)
                subprocess.run([str(BIN / "ray"), "start", "--address", address, "--node-ip-address", "127.0.0.1",
                                *common], check=True, env=env, capture_output=True)
                extra = ["--launcher", "ray", "--address", address]
                stop = [str(BIN / "ray"), "stop", "--force"]
            try:
                wall = sweep(out, args.runs, args.steps, extra, env)
            finally:
                if stop:
                    subprocess.run(stop, env=env, capture_output=True)
            same = sum(not differences(r, out / "s" / r.name) for r in reference)
            e = min(c, os.cpu_count() or 1)  # runs that can go at once at full speed on this machine's cores
            rows.append((name, wall, c, (wall - base / e) * e / len(reference), same))
    print(f"{len(reference)} runs of tiny, {args.steps} steps each; this machine: {os.cpu_count()} cores")
    print("| launcher | wall | runs at a time | launcher overhead per run | files identical to in-process |")
    print("|---|---|---|---|---|")
    for name, wall, c, overhead, same in rows:
        print(f"| {name} | {wall:.1f} s | {c} | {overhead:+.1f} s | {same} of {len(reference)} |")


if __name__ == "__main__":
    main()
