"""Batches the local training of all meters of one process.

Meters are separate agents in the protocol, but their compute is shared: each
agent asks the pool for its update, the pool waits until every local meter that
takes part in the round has asked (or a short linger passes, for meters that
are offline), trains all of them in one batched step and hands each agent its
own result.

Where the batch runs: in a thread of this process, or (``child_threads=``) in
``children`` child processes with their own interpreters, each of which gets a
copy of its share of the meters' data and trains their rows of every batch. Batched
training issues thousands of small torch operations, each of which gives up the
GIL and must win it back; in a process whose event loop is busy with hundreds of
agents' SecAgg+ messages, and whose cores are busy with their key agreements, a
0.55-s epoch took 2-5 s (measured on the 2-core development machine). A child
process has its own GIL, and with one thread it leaves the other core to the
agents: torch's OpenMP workers spin at every barrier and, when a core is taken,
stall there. Two single-threaded children, each with half of the meters, train
a batch of 500 in 0.61 s where one child with two threads takes 0.76 s and one
thread 1.31 s (2-core development machine), and they have no barriers to stall at
when the agents take a core.
"""

from __future__ import annotations

import asyncio
import atexit
import dataclasses
import gc
import itertools
import logging
import multiprocessing as mp
import os
import pickle
import resource
import shutil
import signal
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, Final, cast

import numpy as np
import numpy.typing as npt
import torch

from gridsim.learning.batched import BatchedTrainer, EvalSums, TrainConfig
from gridsim.learning.model import Forecaster, ParamLayout, initial_parameters
from gridsim.learning.windows import MeterWindows
from gridsim.lifetime import die_with_parent
from gridsim.privacy import gaussian_noise
from gridsim.privacy.ddgauss import DDGaussCodec, rotation_signs

log = logging.getLogger(__name__)

TRAINING_SWITCH_INTERVAL_S: Final = 0.0005
"""The interpreter's thread switch interval while a batch trains (default 0.005)."""


@dataclasses.dataclass(frozen=True)
class MeterAnswer:
    delta: npt.NDArray[np.float32] | None  # None when the round only evaluates
    n_samples: int
    train_loss: float
    train_s: float
    eval: EvalSums
    # Distributed DP: the DDGauss encoding (rotated, rounded, noised, mod 2**bits)
    # that secure aggregation sums; the delta itself then never leaves the meter.
    encoded: npt.NDArray[np.uint32] | None = None


@dataclasses.dataclass(frozen=True)
class DDGaussEncoding:
    """A round's DDGauss encoding: the codec, and the session the rotation is drawn for."""

    codec: DDGaussCodec
    session: str


@dataclasses.dataclass(frozen=True)
class _Job:
    """What a batch computes: picklable, so a child process can run it."""

    round: int
    train: bool
    model: npt.NDArray[np.float32]
    plan: TrainConfig
    ddgauss: DDGaussEncoding | None


@dataclasses.dataclass
class _Batch:
    round: int
    train: bool
    model: npt.NDArray[np.float32]
    plan: TrainConfig
    expected: int
    ddgauss: DDGaussEncoding | None = None
    waiting: dict[int, asyncio.Future[MeterAnswer]] = dataclasses.field(default_factory=dict)
    arrived: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    launched: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    opened: float = dataclasses.field(default_factory=time.perf_counter)
    # Set by TrainingPool._launch: when it started, and the running work.
    gathered: float = 0.0
    work: asyncio.Future[list[MeterAnswer]] | None = None


def privatize(delta: npt.NDArray[np.float32], plan: TrainConfig) -> npt.NDArray[np.float32]:
    """Each meter's DP step on its own update: clip its L2 norm, then (local mode) noise it.

    Noise comes from :func:`~gridsim.privacy.gaussian_noise` (exact discrete
    Gaussian on a fine grid, from the Rust CSPRNG sampler), never rounded floats.
    """
    out = delta.astype(np.float64)
    if plan.clip_norm > 0:
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        out *= np.minimum(1.0, plan.clip_norm / np.maximum(norms, 1e-30))
    if plan.local_noise > 0:
        out += gaussian_noise(plan.local_noise, out.size).reshape(out.shape)
    return out.astype(np.float32)


class TrainingPool:
    def __init__(
        self,
        data: MeterWindows,
        *,
        seed: int,
        linger_s: float = 0.25,
        child_threads: int | None = None,
        children: int = 1,
        child_nice: int = 0,
    ) -> None:
        """``child_threads``: train in ``children`` child processes with that many
        torch threads each (0: torch's default), each child owning a contiguous share
        of the meters; None: in a thread of this process."""
        self.data = data
        self.seed = seed
        self.linger_s = linger_s
        self.child_threads = child_threads
        self.child_nice = child_nice
        n = len(data.meter_ids)
        # Child i owns rows bounds[i] .. bounds[i + 1] - 1 (none empty).
        parts = max(1, min(children, n))
        self._bounds = np.linspace(0, n, parts + 1).round().astype(np.int64)
        self._row = {int(m): i for i, m in enumerate(data.meter_ids)}
        self.layout_dim = ParamLayout(Forecaster()).dim
        # Simulation only (--verify): round -> meter -> quantised input, so the
        # aggregator can check its unmasked sum against the plain one.
        self.quantized: dict[int, dict[int, Any]] | None = None
        self._here = _Compute(data, seed)
        self._executors: list[ProcessPoolExecutor] | None = None
        self._data_dir: Path | None = None
        self.child_peak_rss_kb: dict[int, int] = {}
        """Peak resident memory (KiB) each training child reported, by pid."""
        self.child_cpu_s: dict[int, float] = {}
        """CPU seconds each training child (also one since replaced) reported last, by pid."""
        self._batches: dict[tuple[int, bool], _Batch] = {}
        # One batch at a time: the children's executors have one worker each and
        # take batches in order; in this process, one thread (see _launch).
        self._thread: ThreadPoolExecutor | None = None
        self._frozen = False
        self.trained_at: float | None = None
        """When (``time.perf_counter``) the last training batch finished."""
        self.on_trained: Callable[[float], None] | None = None
        """Called with :attr:`trained_at` when a training batch finishes (a
        ``--workers`` process passes it on to the aggregator's process)."""

    def _children(self) -> list[ProcessPoolExecutor]:
        """The child processes' executors, started (or restarted after a crash) on demand."""
        assert self.child_threads is not None
        if self._executors is None:
            limit_blas_threads(self.child_threads)
            ctx = mp.get_context("spawn")
            self._executors = [
                ProcessPoolExecutor(
                    1,
                    mp_context=ctx,
                    initializer=_child_init,
                    initargs=(
                        str(path),
                        self.seed,
                        self.child_threads,
                        self.child_nice,
                        os.getpid(),
                    ),
                )
                for path in self._data_files()
            ]
        return self._executors

    def _data_files(self) -> list[Path]:
        """Each child's meters' data, pickled once into a file of its own.

        The data travels pickled (0.2 s for 500 meters; generating it again in the
        child took 1 s), but not in the initializer's arguments: those go through a
        pipe that multiprocessing fills while the child is still importing torch,
        and a child that died then (Ctrl-C reaches the whole process group) left
        that write, and with it the run, blocked for ever.
        """
        if self._data_dir is None:
            self._data_dir = Path(tempfile.mkdtemp(prefix="gridsim-pool-"))
            weakref.finalize(self, shutil.rmtree, self._data_dir, True)
        paths = []
        for i, (lo, hi) in enumerate(itertools.pairwise(self._bounds.tolist())):
            path = self._data_dir / f"meters-{i}.pickle"
            if not path.exists():
                part = self.data.select(np.arange(lo, hi, dtype=np.int64))
                path.write_bytes(pickle.dumps(part, protocol=pickle.HIGHEST_PROTOCOL))
            paths.append(path)
        return paths

    def start_children(self) -> None:
        """Start the training children now, if this pool has any and they are not.

        Call it from the main thread: each child then starts with SIGINT ignored
        (inherited for the moment it is spawned), so a Ctrl-C that reaches the
        process group while a child still imports torch (seconds on a busy
        machine, before its initializer can ignore SIGINT) does not make it print
        a traceback; the parent handles Ctrl-C and closes the pool. (A Ctrl-C in the
        milliseconds the spawns take is lost.) From another thread, or after a
        crash, children start on their first batch, as before.
        """
        if self.child_threads is None:
            return
        fresh = self._executors is None
        children = self._children()
        if not fresh or threading.current_thread() is not threading.main_thread():
            return
        handler = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            for executor in children:
                executor.submit(os.getpid)  # spawns its process now
        finally:
            # (None: a handler installed from C, which Python cannot put back.)
            signal.signal(signal.SIGINT, signal.SIG_DFL if handler is None else handler)

    def warm_up(self) -> None:
        """Pay torch's first-call costs (seconds) now, before the meters register.

        With child processes this also starts them and hands them their data.
        """
        if self.child_threads is not None:
            started = [ex.submit(_child_warm_up) for ex in self._children()]
            for done in started:
                pid, cpu_s = done.result()
                self.child_cpu_s[pid] = cpu_s
        else:
            self._here.warm_up()

    def cpu_s(self) -> float:
        """CPU seconds this process and its training children have used so far.

        The children's share is as of their last batch (they report it with its
        answers), so a round's difference counts the batch it ran.
        """
        return time.process_time() + sum(self.child_cpu_s.values())

    def close(self) -> None:
        """Stop the child processes, if there are any."""
        executors, self._executors = self._executors, None
        for executor in executors or []:
            executor.shutdown(wait=True, cancel_futures=True)
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.shutdown(wait=True, cancel_futures=True)

    def local(self, meters: list[int]) -> list[int]:
        return [m for m in meters if m in self._row]

    def submit(
        self,
        meter: int,
        *,
        round_: int,
        train: bool,
        model: npt.NDArray[np.float32],
        plan: TrainConfig,
        expected: int,
        ddgauss: DDGaussEncoding | None = None,
    ) -> asyncio.Future[MeterAnswer]:
        """Join this round's batch; the future resolves to this meter's update once
        the batch has run (with ``ddgauss``, also to the update's DDGauss encoding,
        computed for the whole batch at once).

        Synchronous, and the meter that completes the batch hands it to the
        training at once: under SecAgg+ the agents' sharing work fills whole
        iterations of the event loop (500 meters' key agreements, a third of a
        second), and a batch that waited for its task's next turn started that
        much later.
        """
        key = (round_, train)
        batch = self._batches.get(key)
        if batch is None:
            batch = _Batch(round_, train, model, plan, max(expected, 1), ddgauss)
            self._batches[key] = batch
            asyncio.get_running_loop().create_task(self._run_batch(key, batch))
        fut = batch.waiting.get(meter)
        if fut is None:
            fut = asyncio.get_running_loop().create_future()
            batch.waiting[meter] = fut
            batch.arrived.set()
            if len(batch.waiting) >= batch.expected:
                self._launch(key, batch)
        return fut

    def gathering(self, round_: int) -> bool:
        """Whether ``round_``'s training batch is still waiting for meters to join."""
        batch = self._batches.get((round_, True))
        return batch is not None and not batch.launched.is_set()

    async def launched(self, round_: int) -> None:
        """Wait until ``round_``'s training batch has started (its last meter joined,
        or the wait for missing ones ended); at once when none is gathering.

        SecAgg+ agents wait here before their key agreements: a sharing request can
        arrive before the other meters of the process have read the round's
        announcement, and every agent's sharing done first (0.6 ms each) delays the
        batch, while one core idles, by as much.
        """
        batch = self._batches.get((round_, True))
        if batch is not None:
            await batch.launched.wait()

    def _launch(self, key: tuple[int, bool], batch: _Batch) -> None:
        """Start training ``batch`` with the meters it has now (once)."""
        if batch.work is not None:
            return
        del self._batches[key]
        batch.launched.set()
        meters = sorted(batch.waiting)  # fixed from here: the batch left _batches
        rows = np.array([self._row[m] for m in meters], dtype=np.int64)
        job = _Job(batch.round, batch.train, batch.model, batch.plan, batch.ddgauss)
        batch.gathered = time.perf_counter()
        loop = asyncio.get_running_loop()
        if self.child_threads is None:
            if self._thread is None:
                self._thread = ThreadPoolExecutor(1, thread_name_prefix="gridsim-train")
            batch.work = loop.run_in_executor(self._thread, self._here.run_quickly, job, rows)
            return
        # Each child trains its own meters' rows (in its local numbering).
        owner = np.searchsorted(self._bounds, rows, side="right") - 1
        children = self._children()
        parts = [(i, np.flatnonzero(owner == i)) for i in range(len(children))]
        parts = [(i, part) for i, part in parts if len(part)]
        try:
            submitted = [
                children[i].submit(_child_run, job, rows[part] - self._bounds[i])
                for i, part in parts
            ]
        except BrokenProcessPool as exc:
            failed = loop.create_future()
            failed.set_exception(exc)
            batch.work = failed
            return
        batch.work = loop.create_task(self._collect(len(rows), parts, submitted))

    async def _collect(
        self,
        n: int,
        parts: list[tuple[int, npt.NDArray[np.int64]]],
        submitted: list[Future[Any]],
    ) -> list[MeterAnswer]:
        """The children's answers to one batch, in the batch's order."""
        done = await asyncio.gather(*(asyncio.wrap_future(f) for f in submitted))
        answers: list[MeterAnswer | None] = [None] * n
        for (_, part), (got, (pid, peak_kb, cpu_s)) in zip(parts, done, strict=True):
            self.child_peak_rss_kb[pid] = peak_kb
            self.child_cpu_s[pid] = cpu_s
            for i, answer in zip(part.tolist(), got, strict=True):
                answers[i] = answer
        assert all(a is not None for a in answers)
        return cast(list[MeterAnswer], answers)

    async def _run_batch(self, key: tuple[int, bool], batch: _Batch) -> None:
        # Wait for every expected meter, but not for ever: a meter may be offline.
        while len(batch.waiting) < batch.expected:
            batch.arrived.clear()
            try:
                async with asyncio.timeout(self.linger_s):  # cancellable, unlike wait_for
                    await batch.arrived.wait()
            except TimeoutError:
                break
        self._launch(key, batch)  # unless its last meter has launched it
        assert batch.work is not None
        meters = sorted(batch.waiting)
        try:
            answers = await batch.work
        except Exception as exc:
            if isinstance(exc, BrokenProcessPool):
                # A child died (killed, out of memory): the next batch starts anew.
                self.close()
            log.exception("local training of %d meters failed", len(meters))
            for fut in batch.waiting.values():
                if not fut.done():
                    fut.set_exception(exc)
            return
        if batch.train:
            self.trained_at = time.perf_counter()
            if self.on_trained is not None:
                self.on_trained(self.trained_at)
        log.debug(
            "round %d: batch of %d meters gathered in %.3f s, %s in %.3f s",
            batch.round,
            len(meters),
            batch.gathered - batch.opened,
            "trained" if batch.train else "evaluated",
            time.perf_counter() - batch.gathered,
        )
        if not self._frozen:
            # torch finishes its lazy imports in the first batch. From then on the
            # process's long-lived objects (torch, the data, the agents) stay out of
            # the collector's full collections, which otherwise re-scan them many
            # times per round while hundreds of agents allocate messages. The
            # young generation is collected every 50,000 allocations instead of
            # 700: a round's messages die by reference count long before, and
            # collecting them every 700 cost 0.3 core-s per round of 500 meters
            # (plain round 2.87 -> 2.61 core-s, secure 6.05 -> 5.67 with two
            # other changes, on the Intel machine).
            self._frozen = True
            gc.freeze()
            gc.set_threshold(50_000, 20, 20)
            # Thawed at exit, so the interpreter's last collection still frees them.
            atexit.register(gc.unfreeze)
        for meter, answer in zip(meters, answers, strict=True):
            fut = batch.waiting[meter]
            if not fut.done():
                fut.set_result(answer)


class _Compute:
    """The batched training and evaluation itself, wherever it runs."""

    def __init__(self, data: MeterWindows, seed: int) -> None:
        self.data = data
        self.seed = seed
        self._trainers: dict[TrainConfig, BatchedTrainer] = {}

    def warm_up(self) -> None:
        """Evaluate and train once on one meter's data and throw the result away.

        torch's first call of a traced training step (vmap and grad tracing,
        kernel selection, thread pools) costs seconds; paid here, before the
        meters register, it stays out of the first round's deadline.
        """
        if not len(self.data.meter_ids):
            return
        trainer = BatchedTrainer(TrainConfig())
        model = initial_parameters(self.seed)
        data = self.data.select(np.zeros(1, dtype=np.int64))
        trainer.evaluate(model, data)
        trainer.train(model, data, seed=self.seed, round_=0)

    def run_quickly(self, batch: _Job, rows: npt.NDArray[np.int64]) -> list[MeterAnswer]:
        """:meth:`run` in a thread of a process whose event loop is busy.

        Batched training runs thousands of small torch ops, each of which
        releases the GIL and must win it back from the event loop. Under secure
        aggregation the loop is busy with hundreds of agents' messages, and at the
        default 5 ms switch interval every hand-back waits for it: training took
        3x as long. A shorter interval while the batch runs keeps the hand-backs
        short.
        """
        interval = sys.getswitchinterval()
        sys.setswitchinterval(min(interval, TRAINING_SWITCH_INTERVAL_S))
        try:
            return self.run(batch, rows)
        finally:
            sys.setswitchinterval(interval)

    def run(self, batch: _Job, rows: npt.NDArray[np.int64]) -> list[MeterAnswer]:
        data = self.data.select(rows)
        trainer = self._trainers.get(batch.plan)
        if trainer is None:
            trainer = self._trainers[batch.plan] = BatchedTrainer(batch.plan)
        evals = trainer.evaluate(batch.model, data)
        if not batch.train:
            return [MeterAnswer(None, 0, 0.0, 0.0, e) for e in evals]
        result = trainer.train(batch.model, data, seed=self.seed, round_=batch.round)
        delta = privatize(result.delta, batch.plan)
        encoded: npt.NDArray[np.uint32] | list[None] = [None] * len(rows)
        if batch.ddgauss is not None:
            codec = batch.ddgauss.codec
            signs = rotation_signs(batch.ddgauss.session, batch.round, codec.padded)
            encoded = codec.encode(delta, signs).values
        return [
            MeterAnswer(
                delta=delta[i],
                n_samples=int(result.n_samples[i]),
                train_loss=float(result.train_loss[i]),
                train_s=result.train_s,
                eval=evals[i],
                encoded=encoded[i],
            )
            for i in range(len(rows))
        ]


def limit_blas_threads(threads: int) -> None:
    """Give processes started from now on ``threads`` OpenBLAS threads (numpy's BLAS).

    numpy's bundled OpenBLAS starts a thread per core when a process imports it, and
    its idle threads spin: in training children that are one per core already, the
    DDGauss rotations' matrix products left two spinning threads per child, 0.4
    CPU-s per round of 500 meters on 2 cores (the default round 2.1 -> 1.9 s). Read
    by OpenBLAS when a new process loads it (a spawned child), so this sets the
    environment variable this process passes on; one the user set is kept.
    """
    os.environ.setdefault("OPENBLAS_NUM_THREADS", str(max(1, threads)))


_CHILD: _Compute | None = None
"""The child process's compute (set by :func:`_child_init`)."""


def _child_init(data_path: str, seed: int, threads: int, nice: int, parent: int) -> None:
    global _CHILD
    # Ctrl-C reaches the whole process group; the parent handles it and closes
    # the pool, so the child finishes its batch quietly instead of printing a
    # traceback of its own.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A parent killed outright (kill -9) cannot close the pool: end with it. (The
    # executor starts its child from the thread that first submits to it, the
    # event loop's or a long-lived executor thread of it, never a passing one.)
    die_with_parent(parent)
    if nice > 0:
        os.nice(nice)
    if threads > 0:
        torch.set_num_threads(threads)
    with open(data_path, "rb") as f:
        data: MeterWindows = pickle.load(f)  # written by this process's parent
    _CHILD = _Compute(data, seed)


def _child_warm_up() -> tuple[int, float]:
    """Warm torch up; (this child's pid, the CPU seconds it has used)."""
    assert _CHILD is not None
    _CHILD.warm_up()
    return os.getpid(), time.process_time()


def _child_run(
    batch: _Job, rows: npt.NDArray[np.int64]
) -> tuple[list[MeterAnswer], tuple[int, int, float]]:
    """The batch's answers, and (this child's pid, its peak resident memory in KiB,
    the CPU seconds it has used)."""
    assert _CHILD is not None
    answers = _CHILD.run(batch, rows)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return answers, (os.getpid(), usage.ru_maxrss, time.process_time())
