"""Kill, repair, resume: how much a killed run loses and whether it comes back exactly; what checkpoints cost.

    .venv/bin/python benchmarks/reliability.py [--kills 20] [--steps 40] [--experiment learn_to_see]

1. Records the experiment once, uninterrupted (the reference). Then, `--kills` times: starts the same
   recording as its own process (`emergence record`), kills it with SIGKILL at a random moment between its
   first frame and its last step, and measures how old the newest frame in the file was at the kill (an
   upper bound of the training time lost from the file; the loop may also have finished steps whose frames
   were still queued). Then repairs the file, opens it with plain h5py and Debian's `h5dump` (HDF5 1.10,
   when installed), resumes it, and compares it with the reference (`runfile/identity.py`).
2. Checkpoint cost: recorded steps/s of `TrainingLoop` with a checkpoint every K steps vs none, trials
   alternating in one process, medians and their ratio.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from experiments import get_experiment  # noqa: E402
from recorder.checkpoints import Checkpoints, checkpoint_dir  # noqa: E402
from recorder.config import apply_overrides  # noqa: E402
from runfile.repair import repair  # noqa: E402
from recorder.loop import TrainingLoop  # noqa: E402
from recorder.run import checkpoint_identity  # noqa: E402
from recorder.plan import make_plan  # noqa: E402
from recorder.run import resume  # noqa: E402
from runfile.identity import differences  # noqa: E402
from runfile.reader import open_run  # noqa: E402


def record_cmd(experiment: str, out: Path, name: str, sets: list[str]) -> list[str]:
    return [sys.executable, "-m", "emergence", "record", experiment, "--out", str(out), "--name", name,
            "--no-progress", *[x for s in sets for x in ("--set", s)]]


def newest_frame_age(path: Path, killed_at: float) -> tuple[int, float]:
    """(frames in the file, seconds between the newest frame reaching the host and the kill)."""
    with open_run(path) as run:
        n = run.num_frames
        started = run.writer_identity["started_unix"]
        return n, killed_at - (started + float(run.frame_wall_time[-1])) if n else float("nan")


def start_and_wait_for_first_frame(cmd: list[str], path: Path) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while True:
        time.sleep(0.05)
        try:
            with open_run(path) as run:
                if run.num_frames:
                    return proc
        except Exception:  # not created yet
            pass


def kills(experiment: str, sets: list[str], count: int, folder: Path, seed: int) -> list[dict]:
    ref = folder / "ref.h5"
    proc = start_and_wait_for_first_frame(record_cmd(experiment, folder, "ref", sets), ref)
    t0 = time.perf_counter()
    proc.wait()
    training = time.perf_counter() - t0  # from the first frame to the end
    rng = random.Random(seed)
    rows = []
    for k in range(count):
        path = folder / f"k{k}.h5"
        proc = start_and_wait_for_first_frame(record_cmd(experiment, folder, f"k{k}", sets), path)
        time.sleep(rng.uniform(0.0, 0.8 * training))
        if proc.poll() is not None:  # it finished first: nothing was killed
            print(f"kill {k + 1:2d}: the run had finished", flush=True)
            continue
        killed_at = time.time()
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        frames, age = newest_frame_age(path, killed_at)
        repair(path)
        with h5py.File(path, "r") as f:
            plain = f["status"][()] == b"killed"
        dump = None
        if shutil.which("h5dump"):
            dump = subprocess.run(["h5dump", "-o", os.devnull, str(path)], capture_output=True).returncode == 0
        t1 = time.perf_counter()
        resume(path, show_progress=False, log=lambda s: None)
        rows.append({"frames": frames, "age": age, "plain": plain, "h5dump": dump,
                     "identical": differences(ref, path) == [], "resume_s": time.perf_counter() - t1})
        r = rows[-1]
        print(f"kill {k + 1:2d}: {frames:4d} frames in the file, newest {age:5.2f} s old; plain h5py "
              f"{'ok' if plain else 'FAILED'}, h5dump {r['h5dump']}; resumed in {r['resume_s']:.1f} s, identical "
              f"{r['identical']}", flush=True)
        shutil.rmtree(checkpoint_dir(path), ignore_errors=True)
        path.unlink()
    return rows


def checkpoint_cost(experiment: str, sets: list[str], every: int, trials: int, folder: Path) -> dict[str, float]:
    config = apply_overrides(get_experiment(experiment), sets)
    plan = make_plan(config)
    rates: dict[str, list[float]] = {"no checkpoints": [], f"checkpoint every {every} steps": []}
    for trial in range(trials):
        for name in rates:
            path = folder / f"cost{trial}-{len(name)}.h5"
            every_now = every if name.startswith("checkpoint") else 0
            plan.config = apply_overrides(config, [f"checkpoint_every={every_now}"])
            ckpts = Checkpoints(path, plan.fns.init_state, checkpoint_identity(plan.config, path))
            rec = plan.recorder(path, overwrite=True)
            with rec:
                loop = TrainingLoop(plan, rec, evaluate=False, checkpoints=ckpts)
                loop.start()
                loop.run(2)  # compiled and warm before timing
                rec.wait()
                t = time.perf_counter()
                loop.run(plan.total)
                rec.wait()
                rates[name].append((plan.total - 2) / (time.perf_counter() - t))
            ckpts.close()
    return {name: statistics.median(v) for name, v in rates.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--experiment", default="learn_to_see")
    p.add_argument("--kills", type=int, default=20)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--every", type=int, default=10, help="checkpoint_every of the killed runs")
    p.add_argument("--cost-steps", type=int, default=100)
    p.add_argument("--cost-every", type=int, default=25)
    p.add_argument("--trials", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        sets = [f"steps={args.steps}", f"checkpoint_every={args.every}", "eval_every=10"]
        rows = kills(args.experiment, sets, args.kills, folder, args.seed)
        ages = [r["age"] for r in rows]
        print(f"\n| {args.experiment}, {args.steps} steps, checkpoint every {args.every} | result |\n|---|---|")
        print(f"| killed with SIGKILL at random moments | {len(rows)} |")
        print(f"| open in plain h5py after repair | {sum(r['plain'] for r in rows)}/{len(rows)} |")
        print(f"| read by h5dump (HDF5 1.10) after repair | "
              f"{sum(bool(r['h5dump']) for r in rows)}/{len(rows)}{'' if shutil.which('h5dump') else ' (not installed)'} |")
        print(f"| resumed to a file identical to the uninterrupted run | {sum(r['identical'] for r in rows)}/{len(rows)} |")
        print(f"| newest frame in the file at the kill: median / max age | {statistics.median(ages):.2f} s / {max(ages):.2f} s |")
        cost = checkpoint_cost(args.experiment, [f"steps={args.cost_steps}"], args.cost_every, args.trials, folder)
        base = cost["no checkpoints"]
        print(f"\n| {args.experiment}, {args.cost_steps} recorded steps, median of {args.trials} | steps/s | ratio |\n|---|---|---|")
        for name, rate in cost.items():
            print(f"| {name} | {rate:.2f} | {rate / base:.3f} |")


if __name__ == "__main__":
    main()
