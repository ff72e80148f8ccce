"""`emergence record | resume | repair | info | verify | replay | compare | sweep | serve`: parses arguments and calls importable functions; nothing else."""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
from pathlib import Path
from typing import Any, Sequence

USAGE_ERRORS = (ValueError, FileExistsError, FileNotFoundError, KeyError)
SCALE_HELP = ("colour scale override (repeatable): S for [-S, S], LO:HI, 'channel' (per-channel percentile rule), "
              "'step' (each frame its own scale, said on it), 'symlog[:C]' or 'auto' (replay/scales.py)")
INFO_FULL_CHECK_BYTES = 200 * 1024**2  # `info` reads every chunk of files up to this size, the rest but frames


def enable_compilation_cache() -> None:
    """Keeps compiled XLA programs on disk ($EMERGENCE_CACHE/jax, or ~/.cache/emergence/jax), so that a second
    run of the same model skips most start-up compilation (measured: building learn_to_see 17.9 s -> 1.2 s).
    Entries are keyed by JAX version, flags and device, so a stale one is never used.
    EMERGENCE_COMPILATION_CACHE=0 turns it off; a JAX_COMPILATION_CACHE_DIR of your own is kept (JAX reads it)."""
    if os.environ.get("EMERGENCE_COMPILATION_CACHE", "1") == "0" or os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return
    import jax

    from recorder.data.sources import cache_root

    jax.config.update("jax_compilation_cache_dir", str(cache_root() / "jax"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def training_process(program: bool = True) -> None:
    """What a process that trains sets up before JAX starts its backend: the compilation cache and, where the
    process is emergence's own (`program`: started as `emergence ...`, not `main([...])` called from another
    program, whose memory stays its own business), freed host memory kept for reuse (recorder/host_memory.py)."""
    if program:
        from recorder.host_memory import keep_freed_memory

        keep_freed_memory()
    enable_compilation_cache()


def _record(args: argparse.Namespace) -> int:
    training_process(args.program)
    from experiments import PROGRAMS, get_experiment, run_program
    from recorder.config import apply_overrides
    from recorder.run import record, resume

    if args.experiment in PROGRAMS:
        return _record_program(args, run_program)

    overrides = list(args.set or [])
    if args.data_dir:
        overrides.append(f"data_dir={args.data_dir}")
    config = apply_overrides(get_experiment(args.experiment), overrides)
    config = dataclasses.replace(config, devices=_join(args, config.devices))
    name = args.name or "-".join([args.experiment, *(o.partition("=")[2].replace("/", "_") for o in args.set or [])])
    path = Path(args.out) / f"{name}.h5"
    if args.resume and path.exists():
        resume(path, show_progress=not args.no_progress)
    else:
        record(config, path, overwrite=args.overwrite, show_progress=not args.no_progress)
    print(path)
    return 0


def _record_program(args: argparse.Namespace, run_program: Any) -> int:
    """`emergence record relu_vs_tanh` and the other several-run experiments: their own program, same options."""
    unsupported = [flag for flag, given in (("--name", args.name), ("--resume", args.resume),
                                            ("--coordinator", args.coordinator)) if given]
    if unsupported:
        raise ValueError(f"{args.experiment} records several runs, named by the experiment; {', '.join(unsupported)} "
                         "applies to a single run")
    argv = ["--out", args.out] + [a for s in args.set or [] for a in ("--set", s)]
    argv += ["--set", f"data_dir={args.data_dir}"] if args.data_dir else []
    argv += ["--overwrite"] * args.overwrite + ["--no-progress"] * args.no_progress
    return run_program(args.experiment, argv)


def _join(args: argparse.Namespace, devices: int) -> int:
    """Before JAX starts: joins a multi-process run (--coordinator, or EMERGENCE_COORDINATOR) or asks for
    `devices` CPU devices; returns the device count to use (at least one per process)."""
    from recorder.parallel import start_processes, use_host_devices

    coordinator = args.coordinator or os.environ.get("EMERGENCE_COORDINATOR")
    if not coordinator:
        use_host_devices(devices)
        return devices
    count = int(args.num_processes or os.environ.get("EMERGENCE_NUM_PROCESSES", "0"))
    rank = int(args.process_id if args.process_id is not None else os.environ.get("EMERGENCE_PROCESS_ID", "-1"))
    if count < 2 or rank < 0:
        raise ValueError("--coordinator needs --num-processes P (>= 2) and --process-id I (or EMERGENCE_NUM_PROCESSES "
                         "and EMERGENCE_PROCESS_ID)")
    devices = max(devices, count)
    start_processes(coordinator, count, rank, devices)
    return devices


def _resume(args: argparse.Namespace) -> int:
    training_process(args.program)
    from recorder.run import resume
    from runfile.reader import open_run

    overrides = list(args.set or [])
    devices = [o.partition("=")[2] for o in overrides if o.partition("=")[0].strip() == "devices"]
    if not devices:
        with open_run(args.run) as run:
            devices = [run.config.get("devices", 1)]
    wanted = int(devices[-1]) if str(devices[-1]).isdigit() else 1
    joined = _join(args, wanted)
    if joined != wanted:
        overrides.append(f"devices={joined}")
    resume(args.run, overrides, show_progress=not args.no_progress)
    print(args.run)
    return 0


def _repair(args: argparse.Namespace) -> int:
    from runfile.repair import repair

    for path in args.runs:
        print(repair(path))
    return 0


def _info(args: argparse.Namespace) -> int:
    from replay.info import describe
    from runfile.reader import open_run
    from runfile.verify import verify

    code = 0
    for path in args.runs:
        with open_run(path) as run:
            print(describe(run))
            quick = Path(path).stat().st_size > INFO_FULL_CHECK_BYTES  # else every chunk: ~0.7 s for 50 MB
            verdict = verify(run, quick=quick)
            if verdict.ok:
                print(f"integrity   {'metadata and every chunk but the frames' if quick else 'every chunk'} "
                      f"read back{' (`emergence verify` reads the frames too)' if quick else ''}")
            else:
                damage = "; ".join(d.describe() for d in verdict.damaged)
                print(f"status      DAMAGED: {damage}")
                print(f"emergence: error: {path}: damaged: {damage}", file=sys.stderr)
                code = 1
    return code


def _verify(args: argparse.Namespace) -> int:
    from runfile.reader import open_run
    from runfile.verify import verify

    code = 0
    for path in args.runs:
        with open_run(path) as run:
            verdict = verify(run, quick=args.quick)
        print(verdict.describe())
        if not verdict.ok:
            print(f"emergence: error: {path}: damaged (see above)", file=sys.stderr)
            code = 1
    return code


def _replay(args: argparse.Namespace) -> int:
    from replay.render import ReplayOptions, replay
    from replay.scales import parse_scale
    from replay.selection import StepRange, parse_step_range

    options = ReplayOptions(
        layers=tuple(args.layers.split(",")) if args.layers else None,
        every=args.every,
        steps=parse_step_range(args.steps) if args.steps else StepRange(),
        channels=args.channels,
        probes=args.probes,
        zoom=args.zoom,
        fps=args.fps,
        max_mb=args.max_mb,
        transpose=args.transpose,
        wrap=not args.no_wrap,
        scales=tuple(parse_scale(s) for s in args.scale or ()),
        metrics_stamp=not args.no_metrics,
        mp4=args.mp4,
        snapshot_steps=tuple(args.step or ()),
        distributions=not args.no_distributions,
        channel_distributions=tuple(n for n in (args.channel_distributions or "").split(",") if n),
        geometry=not args.no_geometry,
        clock=not args.no_clock,
        maximise=None if args.maximise is None else tuple(n for n in args.maximise.split(",") if n and n != "all"),
    )
    out = Path(args.out) if args.out else Path(args.run).with_suffix("")
    report = replay(args.run, out, options, log=lambda line: print(f"  {line}"))
    for note in report.notes:
        print(f"note: {note}")
    print(f"{report.index}  ({len(report.animations)} animations, {len(report.pictures)} pictures, {report.seconds:.1f} s)")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from compare import CompareOptions, compare
    from replay.scales import parse_scale

    runs = [args.run_a] + ([args.run_b] if args.run_b else [])
    options = CompareOptions(force=args.force, layers=tuple(args.layers.split(",")) if args.layers else None,
                             every=args.every, zoom=args.zoom, fps=args.fps, max_mb=args.max_mb, gifs=not args.no_gifs,
                             measures=not args.no_measures, scales=tuple(parse_scale(s) for s in args.scale or ()),
                             shared_scale=args.shared_scale,
                             **({"measure_images": args.measure_images} if args.measure_images else {}))
    if args.out:
        out = Path(args.out)
    elif args.run_b:
        out = Path(args.run_a).parent / f"{Path(args.run_a).stem}_vs_{Path(args.run_b).stem}"
    else:
        out = Path(args.run_a).with_suffix("") / "dynamics"
    for tag, path in zip("AB", runs):
        print(f"{tag}  {path}")
    report = compare(runs, out, options, log=lambda line: print(f"  {line}"))
    for note in report.notes:
        print(f"note: {note}")
    print(report.report)
    return 0


def _sweep(args: argparse.Namespace) -> int:
    training_process(args.program)
    from compare.sweep import sweep_report
    from experiments.launchers import RayOptions, SlurmOptions, sbatch_script
    from experiments.sweep import parse_grid, plan_sweep, record_sweep, tasks_of

    grid = parse_grid(args.grid or [])
    name = args.name or "-".join(["sweep", args.experiment, *grid])
    folder = Path(args.out) / name
    overrides = list(args.set or [])
    runs = plan_sweep(args.experiment, grid, overrides, folder)
    if args.dry_run and args.launcher != "slurm":
        raise ValueError("--dry-run prints the sbatch script of --launcher slurm")
    print(f"sweep: {len(runs)} runs of {args.experiment} -> {folder}")
    ray = RayOptions(args.address, args.cpus_per_run, args.gpus_per_run, args.retries)
    slurm = SlurmOptions(args.partition, args.time_min, int(args.gpus_per_run), max(1, int(args.cpus_per_run)),
                         args.parallel, args.slurm_cluster)
    if args.dry_run:
        print(sbatch_script(tasks_of(runs, args.experiment, overrides), slurm, folder / "slurm-logs", folder.name))
        return 0
    record_sweep(runs, args.experiment, overrides, args.jobs, args.overwrite, not args.no_progress and args.launcher == "local",
                 log=lambda line: print(f"  {line}", flush=True), launcher=args.launcher, ray=ray, slurm=slurm,
                 stage=args.stage)
    print(sweep_report([(r.values, r.path) for r in runs], folder, f"{args.experiment}, {', '.join(args.grid)}"))
    return 0


def _serve(args: argparse.Namespace) -> int:
    from viewer import serve

    serve(args.runs_dir, args.host, args.port, args.open)
    return 0


def _process_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--coordinator", metavar="HOST:PORT", help="join a multi-process run (jax.distributed) whose "
                   "process 0 listens there; or EMERGENCE_COORDINATOR. Only process 0 writes the run file")
    p.add_argument("--num-processes", type=int, metavar="P", help="processes in the run (EMERGENCE_NUM_PROCESSES)")
    p.add_argument("--process-id", type=int, metavar="I", help="this process, 0..P-1 (EMERGENCE_PROCESS_ID)")


LIGHT_COMMANDS = ("info", "replay", "serve", "verify")  # read files only: their parser does not import JAX (start-up)


def _sweep_parser(sub: Any, experiments: Sequence[str]) -> None:
    swp = sub.add_parser(
        "sweep", help="record every combination of a grid of config values, then report over them",
        description="Record EXPERIMENT for every combination of the --grid values (complete runs with the same "
        "config are reused), then write OUT/NAME/report.md: per run test accuracy and t50/t90; for seeds of the "
        "same config the same-layer similarity and the layer-matching accuracy (compare/sweep.py).")
    swp.add_argument("experiment", help=f"one of: {', '.join(experiments)}")
    swp.add_argument("--grid", action="append", metavar="KEY=V1,V2", help="a swept config key (repeatable), e.g. "
                     "--grid activation=tanh,relu --grid seed=0,1,2")
    swp.add_argument("--set", action="append", metavar="KEY=VALUE", help="a fixed override for every run")
    swp.add_argument("--jobs", type=int, default=1, help="local: runs recorded at a time, each in its own process")
    swp.add_argument("--launcher", choices=("local", "ray", "slurm"), default="local", help="where runs are recorded: "
                     "this machine (default), a Ray cluster, or a SLURM job array through submitit (pip install "
                     "'emergence[cluster]'); every worker must see --out and run this package")
    swp.add_argument("--address", help="ray: the cluster's address (HOST:PORT; default RAY_ADDRESS, else a local "
                     "Ray instance)")
    swp.add_argument("--cpus-per-run", type=float, default=1.0, help="ray and slurm: CPUs each run asks for")
    swp.add_argument("--gpus-per-run", type=float, default=0.0, help="ray and slurm: GPUs each run asks for")
    swp.add_argument("--retries", type=int, default=2, help="ray: tries after a task's process dies or its run "
                     "fails (each resumes from the run's checkpoint)")
    swp.add_argument("--partition", help="slurm: the partition")
    swp.add_argument("--time-min", type=int, default=60, help="slurm: time limit of each run in minutes (a "
                     "timed-out or preempted run is requeued and resumes)")
    swp.add_argument("--parallel", type=int, default=16, help="slurm: array tasks running at once")
    swp.add_argument("--slurm-cluster", choices=("slurm", "local"), default="slurm", help="slurm: 'local' runs the "
                     "same job array with submitit's local executor, without SLURM (a test of the setup)")
    swp.add_argument("--dry-run", action="store_true", help="slurm: print the sbatch script and submit nothing")
    swp.add_argument("--stage", metavar="DIR", help="record each run in DIR on the worker's local disk ($VARS are "
                     "expanded there, e.g. '$SLURM_TMPDIR') and publish it into the sweep's folder whole, by an atomic "
                     "rename, when it completes or stops; meanwhile NAME.progress.json there says how far it is. For "
                     "NFS and Lustre, where a run file cannot be read while it is written")
    swp.add_argument("--out", default="runs", help="output folder (default: runs)")
    swp.add_argument("--name", help="sweep folder name (default: sweep-EXPERIMENT-KEYS)")
    swp.add_argument("--overwrite", action="store_true", help="record every run again")
    swp.add_argument("--no-progress", action="store_true", help="no progress bars")
    swp.set_defaults(func=_sweep)


def _record_parser(sub: Any, experiments: Sequence[str], config_keys: Sequence[str], programs: Sequence[str]) -> None:
    rec = sub.add_parser(
        "record",
        help="train an experiment and record every conv layer on fixed probes into an HDF5 run file",
        description="Train EXPERIMENT and record every tapped conv layer at every scheduled step into "
        f"OUT/NAME.h5. Config keys (see recorder/config.py): {', '.join(config_keys)}. The experiments that "
        f"record several runs and compare them ({', '.join(programs)}) write their files and report under OUT.",
    )
    rec.add_argument("experiment", help=f"one of: {', '.join(experiments)}; several runs: {', '.join(programs)}")
    rec.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value (repeatable), "
                     "e.g. --set activation=relu --set schedule=every:5")
    rec.add_argument("--out", default="runs", help="output folder (default: runs)")
    rec.add_argument("--name", help="file name without .h5 (default: the experiment and the override values)")
    rec.add_argument("--data-dir", help="folder holding the dataset files (else standard places, then download)")
    rec.add_argument("--overwrite", action="store_true", help="replace an existing run file of the same name")
    _process_arguments(rec)
    rec.add_argument("--no-progress", action="store_true", help="no progress bar")
    rec.add_argument("--resume", action="store_true", help="if OUT/NAME.h5 exists, continue it (as emergence resume) "
                     "instead of refusing; else record it")
    rec.set_defaults(func=_record)


def _resume_parser(sub: Any, resumable: Sequence[str]) -> None:
    res = sub.add_parser(
        "resume", help="continue a killed, interrupted, failed or diverged run from its last checkpoint, or extend one",
        description="Continue RUN.h5 from the last checkpoint (RUN.ckpt/, taken every checkpoint_every steps and "
        "whenever a run stops) whose steps the file holds completely. A killed file is repaired first; rows after "
        "the checkpoint are dropped and recorded again, so the finished file equals an uninterrupted run's (bitwise "
        "on the CPU). A completed run is extended with --set epochs=N or steps=N.")
    res.add_argument("run", metavar="RUN.h5")
    res.add_argument("--set", action="append", metavar="KEY=VALUE", help=f"any of {', '.join(resumable)} "
                     "(other keys would change what the recorded steps mean)")
    res.add_argument("--no-progress", action="store_true", help="no progress bar")
    _process_arguments(res)
    res.set_defaults(func=_resume)


def _repair_parser(sub: Any) -> None:
    rep_ = sub.add_parser(
        "repair", help="make a killed run's file an ordinary closed HDF5 file (marked killed at step N)",
        description="Clear the open-for-write flags that a killed recorder leaves in RUN.h5 (so h5py, h5dump, "
        "MATLAB and every other HDF5 reader open it again), cut rows to the last complete ones and mark the run "
        "'killed at step N'. Refuses a file that a live process is writing. `emergence resume` repairs by itself.")
    rep_.add_argument("runs", nargs="+", metavar="RUN.h5")
    rep_.set_defaults(func=_repair)


def _info_parser(sub: Any) -> None:
    info = sub.add_parser("info", help="describe run files: layers, shapes, steps, metrics, status",
                          description="Print what a run file holds: layers and shapes, recorded steps, "
                          "final metrics and status. Works on runs still recording and on killed runs.")
    info.add_argument("runs", nargs="+", metavar="RUN.h5")
    info.set_defaults(func=_info)


def _verify_parser(sub: Any) -> None:
    ver = sub.add_parser("verify", help="read every chunk of run files back and name what is damaged",
                         description="Read every metadata object and every chunk of each run file (HDF5 checks "
                         "each chunk's Fletcher-32 checksum, schema 7) and name each damaged dataset with the steps "
                         "its damaged rows hold. Exit status 1 if anything is damaged.")
    ver.add_argument("runs", nargs="+", metavar="RUN.h5")
    ver.add_argument("--quick", action="store_true", help="skip the frames' and Grams' chunks (what info checks)")
    ver.set_defaults(func=_verify)


def _replay_parser(sub: Any) -> None:
    rep = sub.add_parser(
        "replay", help="render a run file: one GIF per layer, curves, filters, snapshots and index.html",
        description="Render RUN.h5 into OUT (default: the run file's path without .h5): one animated GIF per "
        "recorded layer (probe images on top, one tile per channel and probe, the true step stamped on every "
        "frame), loss/accuracy curves, the recorded kernels, optional snapshots, and index.html showing them all. "
        "Colour scales are fixed for the whole run: tanh [-1, 1], sigmoid [0, 1], unbounded activations "
        "[-S, S] with S the 99.9th percentile of |a| over all recorded steps of the layer (see replay/scales.py). "
        "Works on runs still recording and on killed runs.")
    rep.add_argument("run", metavar="RUN.h5")
    rep.add_argument("--out", help="output folder (default: RUN without .h5)")
    rep.add_argument("--layers", help="comma-separated layers (default: all recorded)")
    rep.add_argument("--every", type=int, default=1, metavar="K", help="every K-th selected frame (the last always kept)")
    rep.add_argument("--steps", metavar="A:B", help="only recorded steps A to B, inclusive (either may be left out)")
    rep.add_argument("--channels", metavar="LIST", help="channels to show, e.g. 0:8 or 0,3,5 (each layer shows those it has)")
    rep.add_argument("--probes", metavar="LIST", help="probes to show, by position, e.g. 0,3 or 0:5")
    rep.add_argument("--zoom", type=int, default=1, help="integer enlargement of every tile (default 1: input size)")
    rep.add_argument("--fps", type=float, default=20.0, help="frames per second (default 20; browsers cap near 50)")
    rep.add_argument("--max-mb", type=float, default=8.0, metavar="MB", help="largest size of each animation "
                     "(default 8; 0: no limit); frames are thinned evenly to fit and the drop is reported")
    rep.add_argument("--no-wrap", action="store_true", help="one column of channel rows even for wide layers "
                     "(by default their rows are wrapped into side-by-side blocks, near square)")
    rep.add_argument("--transpose", action="store_true", help="one row per probe, one column per channel")
    rep.add_argument("--scale", action="append", metavar="[LAYER=]VALUE", help=SCALE_HELP)
    rep.add_argument("--step", type=int, action="append", metavar="N", help="also write snapshot PNGs of every "
                     "layer at recorded step N, and of each probe's feature maps (repeatable)")
    rep.add_argument("--maximise", nargs="?", const="all", metavar="LAYERS", help="also render feature "
                     "visualisation GIFs: the input that maximises each channel (and each class: 'logits') at every "
                     "step whose weights the run stores (record with --set snapshots=N for many); default all layers "
                     "and the logits; needs the run's dataset and a model emergence builds")
    rep.add_argument("--no-distributions", action="store_true", help="skip distributions.png (each layer's "
                     "histogram at every step, from the stored frames)")
    rep.add_argument("--channel-distributions", metavar="LAYERS", help="also write distributions_<layer>.png for "
                     "these layers (comma-separated): one row per stored channel, its histogram at every step")
    rep.add_argument("--no-geometry", action="store_true", help="skip geometry_<layer>.gif (the analysis images' PCA "
                     "at every analysed step)")
    rep.add_argument("--no-clock", action="store_true", help="leave out index.html's one clock for every animation "
                     "(clock/: the GIFs' bytes again, in scripts a page opened from disk may load, about 1.35 times "
                     "the GIFs' size)")
    rep.add_argument("--no-metrics", action="store_true", help="stamp only the step, not the accuracies")
    rep.add_argument("--mp4", action="store_true", help="also write MP4s (needs imageio's ffmpeg plugin: "
                     "pip install 'emergence[video]')")
    rep.set_defaults(func=_replay)


def _compare_parser(sub: Any) -> None:
    cmp = sub.add_parser(
        "compare", help="one run's layer dynamics, or two runs' layers side by side and measured",
        description="With one run: per-layer drift to the final step, progress, t50/t90 (when each layer "
        "settled) and activity over time. With two runs: also one side-by-side GIF per shared layer (frames at "
        "the steps recorded in both), the same-layer similarity between the runs over time, and the A x B layer "
        "map at the last shared analysed step. Similarity is debiased linear CKA on the runs' analysis probe "
        "set; runs whose sets differ are refused unless --force (which skips the similarity between them). "
        "Writes report.md, metrics.json and PNG plots.")
    cmp.add_argument("run_a", metavar="A.h5")
    cmp.add_argument("run_b", metavar="B.h5", nargs="?")
    cmp.add_argument("--out", help="output folder (default: A_vs_B beside A, or A/dynamics for one run)")
    cmp.add_argument("--force", action="store_true", help="compare runs with different analysis probe sets: "
                     "pictures and per-run dynamics only")
    cmp.add_argument("--layers", help="comma-separated layers (default: all layers both runs have)")
    cmp.add_argument("--every", type=int, default=1, metavar="K", help="every K-th shared frame in the GIFs")
    cmp.add_argument("--zoom", type=int, default=1)
    cmp.add_argument("--fps", type=float, default=20.0)
    cmp.add_argument("--max-mb", type=float, default=8.0, metavar="MB", help="largest size of each side-by-side GIF "
                     "(default 8; 0: no limit)")
    cmp.add_argument("--scale", action="append", metavar="[LAYER=]VALUE", help=SCALE_HELP + "; both runs alike")
    cmp.add_argument("--shared-scale", action="store_true", help="one fixed colour scale for both halves of each "
                     "side-by-side GIF: the range holding both runs' own scales (default: each run its own)")
    cmp.add_argument("--no-gifs", action="store_true", help="measurements and plots only")
    cmp.add_argument("--no-measures", action="store_true", help="skip the per-channel measures and linear probes "
                     "(they re-run the model at every stored weight step on the held-out measure images)")
    cmp.add_argument("--measure-images", type=int, metavar="N", help="class-balanced held-out test "
                     "images for those measures, none a picture probe; the probes fit on half and are evaluated on "
                     "the other half (default 4000: accuracies to about ±0.018; 2000: ±0.026, about 2.5x faster)")
    cmp.set_defaults(func=_compare)


def _serve_parser(sub: Any) -> None:
    srv = sub.add_parser(
        "serve", help="a live browser viewer of every run under a folder",
        description="Serve every run file under RUNS_DIR to a browser: the run list, every layer at one step "
        "cursor (every recorded step reachable), curves, kernels, and two runs side by side. Runs being recorded "
        "appear and grow live. Binds 127.0.0.1 by default.")
    srv.add_argument("runs_dir", metavar="RUNS_DIR", nargs="?", default="runs", help="folder of run files (default: runs)")
    srv.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; anything else is "
                     "reachable by other machines and prints a warning)")
    srv.add_argument("--port", type=int, default=8421, help="port (default 8421; 0 picks a free one)")
    srv.add_argument("--open", action="store_true", help="open the viewer in the default browser")
    srv.set_defaults(func=_serve)


def build_parser(light: bool = False) -> argparse.ArgumentParser:
    """The CLI's parser. `light`: the experiment and config-key lists in the help of `record` and `sweep` are
    left out, so that building it imports no JAX (for the commands that only read files)."""
    if light:
        experiments: Sequence[str] = ("see `emergence record --help`",)
        config_keys: Sequence[str] = ("see `emergence record --help`",)
        resumable: Sequence[str] = ("see `emergence resume --help`",)
        programs = ("see `emergence record --help`",)
    else:
        from experiments import EXPERIMENTS, PROGRAMS
        from recorder.config import RESUMABLE_KEYS, override_keys

        experiments, config_keys, resumable = tuple(EXPERIMENTS), override_keys(), RESUMABLE_KEYS
        programs: Sequence[str] = tuple(PROGRAMS)

    parser = argparse.ArgumentParser(
        prog="emergence",
        description="Record how a CNN's conv features emerge during training, and replay them.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _sweep_parser(sub, experiments)
    _record_parser(sub, experiments, config_keys, programs)
    _resume_parser(sub, resumable)
    _repair_parser(sub)
    _info_parser(sub)
    _verify_parser(sub)
    _replay_parser(sub)
    _compare_parser(sub)
    _serve_parser(sub)
    return parser


def _run_paths(args: argparse.Namespace) -> list[str]:
    """The run files a reading command was given (for messages about damaged files)."""
    if args.command in ("info", "repair"):
        return list(args.runs)
    if args.command == "replay":
        return [args.run]
    if args.command == "compare":
        return [args.run_a] + ([args.run_b] if args.run_b else [])
    return []


def _damaged(args: argparse.Namespace, e: Exception) -> int:
    """One line for an HDF5 read or write failure, naming the run files a reading command was given."""
    runs = _run_paths(args)
    text = str(e).strip("'\"")
    if runs:
        text = (f"{', '.join(runs)}: HDF5 could not read part of it ({text}); the file is damaged (a bad copy, a "
                "failing disk); what is still readable opens with `emergence info`")
    print(f"emergence: error: {text}", file=sys.stderr)
    return 1


def _several_processes() -> bool:
    """Whether this process joined a multi-process run (JAX started and jax.distributed is up)."""
    return "jax" in sys.modules and sys.modules["jax"].distributed.is_initialized()


TIED_TO = "EMERGENCE_TIED_TO"  # a parent's pid: this process gets SIGTERM when that parent dies (sweep tasks)


def _tie_to_parent() -> None:
    """With EMERGENCE_TIED_TO set to our parent's pid (experiments/launchers.py sets it), ask Linux for SIGTERM
    when the parent dies (PR_SET_PDEATHSIG), so a sweep task that dies outright does not leave its recorder
    running; a parent already gone by then ends this process at once. Set here, not by a preexec_fn: forking a
    process that runs JAX's threads is unsafe."""
    wanted = os.environ.pop(TIED_TO, None)
    if not wanted:
        return
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        return  # not Linux
    if str(os.getppid()) != wanted:
        sys.exit("emergence: the process that started this one is gone; not starting")


def main(argv: list[str] | None = None) -> int:
    _tie_to_parent()
    program = argv is None  # the process's own command line: this process is emergence's (not a caller's)
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(light=command in LIGHT_COMMANDS).parse_args(argv)
    args.program = program
    try:
        return args.func(args)
    except KeyboardInterrupt as e:
        print("\nemergence: interrupted; everything recorded so far is in the run file", file=sys.stderr)
        if type(e).__name__ != "RunInterrupted" and _several_processes():
            # stopped at once (a second Ctrl-C), out of step with the other processes: JAX's shutdown barrier
            # would wait for them forever. Leave now; they fail when this process's connections close.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(130)
        return 130
    except USAGE_ERRORS as e:
        if isinstance(e, KeyError) and "Unable to synchronously" in str(e):  # h5py's KeyError for damaged metadata
            return _damaged(args, e)
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"emergence: error: {msg}", file=sys.stderr)
        return 2
    except RuntimeError as e:  # WriterError, RunStopped and friends: the message says what to do
        print(f"emergence: error: {e}", file=sys.stderr)
        if program and type(e).__name__ == "WriterError":
            # HDF5 still holds the file it could not write (a full disk); its clean-up at interpreter exit can
            # crash on it. The file already keeps everything written before: leave without that clean-up.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(1)
        return 1
    except BrokenPipeError:  # the reader of our output left (`emergence info RUN.h5 | head`): not the file's fault
        try:
            sys.stdout = open(os.devnull, "w")  # nothing more reaches it, and the exit's flush must not fail again
        except OSError:
            pass
        return 141  # 128 + SIGPIPE, as a shell reports a command killed by it
    except OSError as e:  # HDF5 could not read or write a file: damaged, a full disk, no permission
        return _damaged(args, e)
    finally:
        if _several_processes():  # leave it before the interpreter's exit, Ctrl-C ignored while leaving
            from recorder.parallel import leave_processes

            leave_processes()


if __name__ == "__main__":
    sys.exit(main())
