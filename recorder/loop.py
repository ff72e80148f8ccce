"""The built-in training loop, in blocks of steps (recorder/blocks.py), recording through the public `Recorder`.

It is the recorder API's first client: it calls `Recorder.write_block` with what its own jitted steps
capture, as a user's loop can. The host touches device values at one boundary only, the writer thread."""

from __future__ import annotations

import signal
from concurrent.futures import ThreadPoolExecutor

import jax
import jax.numpy as jnp
import numpy as np

from recorder.blocks import ANALYSE, BLOCK_SECONDS, FRAME, TRAIN, Block, BlockStep, compile_cuts, first_rows
from recorder.checkpoints import Checkpoints
from recorder.fletcher import on_device
from recorder.lifecycle import StopRequest
from recorder.parallel import SYNC_EVERY, gather, host, processes
from recorder.plan import RunPlan, epoch_permutation
from recorder.progress import Progress
from recorder.recorder import Recorder
from recorder.schedule import snapshot_steps
from recorder.train import EVAL_CHUNK, TrainState, evaluate, to_inputs


class TrainingLoop:
    """The built-in loop over a plan, advanced with `run(until)`. With a `Recorder` it records on the
    recorder's schedule; without one it only trains (`frames=True` still computes the frames, and drops
    them: what the benchmarks use to separate the probe forward from the writer). `evaluate=False` skips
    the held-out evaluations (benchmarks compare training with and without recording).

    With `checkpoints`, the state is checkpointed every `checkpoint_every` steps, each time once the run file
    holds every row up to that step. `run` returns early when `stop` is asked (a signal handler asks
    it) or, under on_nonfinite=stop, once the writer has seen a non-finite step."""

    def __init__(self, plan: RunPlan, rec: Recorder | None, frames: bool = False, evaluate: bool = True,
                 checkpoints: Checkpoints | None = None):
        self.plan, self.rec, self.frames, self.evaluate, self.checkpoints = plan, rec, frames, evaluate, checkpoints
        d, fns, put = plan.dataset, plan.fns, plan.placement.replicated
        self.train_x = put(d.train_images)  # uint8 on the device(s); batches are gathered there
        self.train_y = put(d.train_labels.astype(np.int32))
        self.test_x = put(d.test_images)
        self.test_y = put(d.test_labels.astype(np.int32))
        self.probe_x = to_inputs(put(d.test_images[plan.probe_idx]))
        self.analysis_x = None if plan.analysis_idx is None else to_inputs(put(d.test_images[plan.analysis_idx]))
        self.state = put(jax.tree.map(jnp.copy, fns.init_state))  # its own copy: the steps donate the state they get
        self.initial_params = put(jax.tree.map(jnp.copy, fns.init_state.params))  # W_0 of the per-layer measures
        self.snapshots = set(snapshot_steps(plan.config.snapshots, plan.total).tolist()) - {0, plan.total}
        self._snapshot_steps = np.asarray(sorted(self.snapshots), np.int64)
        self.data = (self.train_x, self.train_y, self.initial_params)
        self.blocks_probe_x = self.probe_x if rec is not None or frames else None
        self.blocks_analysis_x = self.analysis_x if rec is not None and len(rec.analysis_steps) else None
        c = plan.config
        self.blocks = BlockStep(fns.update, fns.frame_of, plan.block_steps, self.state, self.data, c.batch_size,
                                self.blocks_probe_x, self.blocks_analysis_x,
                                checksums=rec is not None and on_device(c.checksums, c.compression))
        self.step = 0
        self.stop = StopRequest()  # asked by a signal handler (recorder/lifecycle.py) or another process
        self._perm = (-1, np.zeros(0, np.int32))  # (epoch, its shuffle)

    def restore(self, step: int, state: TrainState) -> None:
        """Continues from `state`, the state after update `step` (a checkpoint's), placed as this plan says."""
        self.state, self.step = self.plan.placement.replicated(state), step

    def _shuffle(self, epoch: int) -> np.ndarray:
        """The training set's order in `epoch` (a function of seed and epoch), the last one asked kept."""
        if self._perm[0] != epoch:
            c = self.plan.config
            self._perm = (epoch, epoch_permutation(c.seed, epoch, len(self.plan.dataset.train_labels)))
        return self._perm[1]

    def _batch(self, step: int) -> np.ndarray:
        """Training-set indices of the batch of update `step` (the data order is a function of seed and step)."""
        b = self.plan.config.batch_size
        epoch, i = divmod(step - 1, self.plan.per_epoch)
        return self._shuffle(epoch)[i * b:(i + 1) * b]  # [B] int32, copied in at dispatch

    def _batches(self, first: int, last: int) -> np.ndarray:
        """[last - first + 1, B]: the batches of updates first..last, one slice of each epoch's shuffle they
        span (a block of 64 steps: a few µs, against 180 for 64 slices stacked)."""
        per, b = self.plan.per_epoch, self.plan.config.batch_size
        parts, step = [], first
        while step <= last:
            epoch, i = divmod(step - 1, per)
            end = min(last, (epoch + 1) * per)  # the last of these steps in step's epoch
            parts.append(self._shuffle(epoch)[i * b:(i + end - step + 1) * b].reshape(end - step + 1, b))
            step = end + 1
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def compile(self) -> None:
        """Compiles the block, the step-0 frame and the evaluation before training, at once on threads
        (XLA compiles without holding the GIL), so that training starts with nothing left to compile."""
        fns, state = self.plan.fns, self.state
        plan = self.plan.placement.argument(np.zeros((self.plan.block_steps, self.plan.config.batch_size + 4), np.int32))
        analysis_x = self.analysis_x if self.rec is not None and self.rec.should_analyse(0) else None
        chunk = np.zeros(EVAL_CHUNK, np.int32)  # every chunk has this shape (recorder/train.py `evaluate`)
        kinds = {TRAIN if self.rec is None and not self.frames else FRAME}
        if self.rec is not None:
            steps = range(self.step + 1, self.plan.total + 1)
            kinds = {self._kind(s) for s in steps} if len(steps) <= 10_000 else {TRAIN, FRAME, ANALYSE}
        jobs = [lambda v=v: self.blocks.compile(state, self.data, plan, self.blocks_probe_x, self.blocks_analysis_x, v)
                for v in self.blocks.variants(sorted(kinds))]
        if self.rec is not None:
            if self.plan.block_steps > 1:  # the cuts of the frame buffers (blocks.first_rows)
                jobs += [job for buffers in self.blocks.buffers() for job in compile_cuts(buffers)]
            jobs.append(lambda: fns.probe_frame.lower(state.params, state.model_state, self.probe_x, analysis_x).compile())
            if self.evaluate:
                jobs.append(lambda: fns.eval_chunk.lower(state.params, state.model_state, self.test_x, self.test_y,
                                                         chunk, chunk > 0).compile())
        with ThreadPoolExecutor(len(jobs)) as pool:
            for job in [pool.submit(j) for j in jobs]:
                job.result()

    def start(self) -> None:
        """Step 0: the initial model's frame."""
        if self.rec is not None:
            analysis_x = self.analysis_x if self.rec.should_analyse(0) else None
            self.rec.write(0, self.plan.fns.probe_frame(self.state.params, self.state.model_state, self.probe_x, analysis_x))
            self.rec.write_weights(0, self.plan.weights(self.state))

    def diverged(self) -> bool:
        """Whether the writer has seen a non-finite step and the config says to stop there."""
        return self.rec is not None and self.rec.nonfinite_step is not None and self.plan.config.on_nonfinite == "stop"

    def _stop_wanted(self, unfinished: bool = False) -> bool:
        """A stop was asked for or the run diverged (or, with `unfinished`, it is short of the plan's end). With
        several processes they decide together, once each has written all it was given (the same rows on
        every process), so that all of them stop at the same step."""
        if processes() == 1:
            return bool(self.stop) or self.diverged()
        if self.rec is not None:
            self.rec.wait()
        asked = (self.stop.signum or -1) if self.stop else 0  # -1: asked for without a signal
        wanted = gather([asked, self.diverged(), unfinished and self.step < self.plan.total])
        if not self.stop and wanted[:, 0].any():  # a stop asked of another process stops this one too
            rank = int(np.flatnonzero(wanted[:, 0])[0])
            code = int(wanted[rank, 0])
            self.stop.ask(f"{signal.Signals(code).name if code > 0 else 'a stop'} to process {rank}")
        return bool(wanted.any())

    def stopped_early(self) -> bool:
        """After `run`: whether it ended before the plan's end (all processes agree)."""
        return self._stop_wanted(unfinished=True)

    def should_stop(self, step: int) -> bool:
        """Whether to stop before update `step`; several processes decide only every SYNC_EVERY steps."""
        if processes() > 1 and (step - 1) % SYNC_EVERY:
            return False
        return self._stop_wanted()

    def run(self, until: int, progress: Progress | None = None) -> None:
        """Trains (and records) steps step+1 .. until, or fewer (see the class doc), a block at a time: the
        host acts (stops, evaluates, checkpoints, stores weights, updates the progress line) between blocks."""
        while self.step < until:
            if self.should_stop(self.step + 1):
                return
            first = self.step + 1
            last = min(first + self.block_length() - 1, until, self._next_event(first))
            self._run_block(first, last)
            self.step = last
            self._after_block(until, progress)

    def block_length(self) -> int:
        """Steps in the next block: about BLOCK_SECONDS of training at the pace the writer measures (one step
        until it has), at most K; K with several processes (their blocks must end at the same steps) or
        without a recorder."""
        k = self.plan.block_steps
        if self.rec is None or processes() > 1:
            return k
        per_step = self.rec.seconds_per_step
        return 1 if per_step is None else int(min(k, max(1, BLOCK_SECONDS // max(per_step, 1e-9))))

    def _next_event(self, first: int) -> int:
        """The first step >= `first` after which the host must act: an evaluation, a checkpoint, stored weights,
        the processes' agreement on stopping, or the plan's end."""
        c, rec = self.plan.config, self.rec
        periods = [c.eval_every if rec is not None and self.evaluate else 0,
                   c.checkpoint_every if self.checkpoints is not None and rec is not None else 0,
                   SYNC_EVERY if processes() > 1 else 0]
        out = [*([self.plan.total] if self.plan.total >= first else []), *(-(-first // p) * p for p in periods if p)]
        later = self._snapshot_steps[np.searchsorted(self._snapshot_steps, first):]
        return min(out + ([int(later[0])] if rec is not None and len(later) else []), default=first + self.plan.block_steps)

    def _kind(self, step: int) -> int:
        rec = self.rec
        if rec is None:
            return FRAME if self.frames else TRAIN
        return ANALYSE if rec.should_analyse(step) else FRAME if rec.should_record(step) else TRAIN

    def _run_block(self, first: int, last: int) -> None:
        """Dispatches steps first..last as one block and hands its results to the recorder (no wait)."""
        plan, rec = self.plan, self.rec
        steps = range(first, last + 1)
        kinds = [self._kind(s) for s in steps]
        host_plan = self.blocks.plan(steps, self._batches(first, last), kinds)
        self.state, metrics, frames, analysis = self.blocks(self.state, self.data, plan.placement.argument(host_plan),
                                                            len(steps), self.blocks_probe_x, self.blocks_analysis_x,
                                                            kinds[0])
        if rec is None:
            return
        frame_steps = tuple(s for s, k in zip(steps, kinds) if k >= FRAME)
        analysis_steps = tuple(s for s, k in zip(steps, kinds) if k == ANALYSE)
        scalars = {} if plan.learning_rates is None else {"learning_rate": plan.learning_rates[first - 1:last]}
        rec.write_block(Block(  # about the filled rows of the buffers leave the device (blocks.first_rows)
            tuple(steps), metrics, self.blocks.metric_names, frame_steps, first_rows(frames, len(frame_steps)),
            self.blocks.frame_layout, analysis_steps, first_rows(analysis, len(analysis_steps)),
            self.blocks.analysis_layout, scalars))

    def _after_block(self, until: int, progress: Progress | None) -> None:
        """What the host does once a block is dispatched: weights, evaluation, checkpoint, progress."""
        plan, rec, c, step = self.plan, self.rec, self.plan.config, self.step
        if rec is None:
            return
        if step in self.snapshots:  # the first and the last are written by start() and at the end
            rec.write_weights(step, plan.weights(self.state))
        if self.evaluate and (c.eval_every and step % c.eval_every == 0 or step == plan.total):
            loss, acc = evaluate(plan.fns, self.state, self.test_x, self.test_y, count=plan.eval_count)
            rec.log_eval(step, loss=loss, accuracy=acc)
        if c.checkpoint_every and step % c.checkpoint_every == 0 and step < until:
            self.checkpoint(wait=False)
        if progress is not None:
            latest = rec.latest_train
            progress.update(latest.get("step", 0), latest.get("loss"), latest.get("accuracy"))

    def checkpoint(self, wait: bool = True) -> int | None:
        """Checkpoints the current state once the run file holds every row up to it, unless a non-finite
        value was seen (the last finite checkpoint is kept). Returns the step checkpointed, or None. With
        `wait=False` (one process) the checkpoint is queued behind the rows on the writer thread and the loop
        goes on at once; returns the step it will checkpoint."""
        if self.checkpoints is None or self.rec is None:
            return None
        if not wait and processes() == 1:  # several processes save on the main thread: orbax may sync them
            step, ckpts, rec = self.step, self.checkpoints, self.rec

            def save(leaves: list[np.ndarray]) -> None:  # on the writer thread, the file flushed up to `step`
                if rec.nonfinite_step is None:
                    ckpts.save_leaves(step, leaves)

            rec.after_written(save, ckpts.device_copy(self.state))
            return step
        self.rec.wait()  # every row up to self.step is in the file: resuming from this step leaves no gap
        if self.rec.nonfinite_step is not None:
            return None
        self.checkpoints.save(self.step, self.state)
        return self.step

    def test(self) -> tuple[float, float]:
        """The full test split (syncs: the end of the run)."""
        loss, acc = (float(host(v)) for v in evaluate(self.plan.fns, self.state, self.test_x, self.test_y))
        if self.rec is not None:
            self.rec.log_test(loss=loss, accuracy=acc, count=len(self.plan.dataset.test_labels))
        return loss, acc
