"""The training pool gives every meter its own update, in a thread or a child process."""

from __future__ import annotations

import asyncio
import functools
import os
import time
from concurrent.futures.process import BrokenProcessPool

import numpy as np
import pytest

from gridsim.config import RunConfig
from gridsim.learning.batched import TrainConfig
from gridsim.learning.model import initial_parameters
from gridsim.meter.training_pool import MeterAnswer, TrainingPool
from gridsim.run import meter_windows

METERS = [0, 3, 5, 8]
CFG = RunConfig(meters=10, days=10, test_days=3, seed=4)


async def _round(pool: TrainingPool, round_: int) -> dict[int, MeterAnswer]:
    model = initial_parameters(CFG.seed)
    plan = TrainConfig(local_epochs=1, batch_size=32, lr=0.003)
    answers = await asyncio.gather(
        *(
            pool.submit(m, round_=round_, train=True, model=model, plan=plan, expected=4)
            for m in METERS
        )
    )
    return dict(zip(METERS, answers, strict=True))


@pytest.mark.parametrize("children", [1, 2, 3])
def test_child_processes_train_the_same_updates_as_a_thread(children: int) -> None:
    data = functools.partial(meter_windows, METERS, CFG)
    here = TrainingPool(data(), seed=CFG.seed)
    child = TrainingPool(data(), seed=CFG.seed, child_threads=1, children=children)
    try:
        child.warm_up()
        for round_ in (0, 1):
            a = asyncio.run(_round(here, round_))
            b = asyncio.run(_round(child, round_))
            for m in METERS:
                assert a[m].delta is not None and b[m].delta is not None
                assert np.abs(a[m].delta).max() > 0
                # Same data, seed and round: the same update, up to float
                # reassociation between torch's thread counts.
                np.testing.assert_allclose(a[m].delta, b[m].delta, rtol=1e-4, atol=1e-6)
                assert a[m].n_samples == b[m].n_samples == here.data.n_train
            assert not np.allclose(a[METERS[0]].delta, a[METERS[1]].delta)
    finally:
        child.close()


def test_a_dead_child_fails_the_batch_and_the_next_batch_starts_a_new_one() -> None:
    data = functools.partial(meter_windows, METERS, CFG)
    pool = TrainingPool(data(), seed=CFG.seed, child_threads=1, children=2)
    try:
        pool.warm_up()
        executors = pool._executors
        assert executors is not None and len(executors) == 2
        for proc in executors[1]._processes.values():  # a crash we cause for real: kill -9
            proc.kill()
            proc.join()
        with pytest.raises(BrokenProcessPool):
            asyncio.run(_round(pool, 0))
        answers = asyncio.run(_round(pool, 1))
        assert all(a.delta is not None for a in answers.values())
    finally:
        pool.close()


def test_children_train_at_the_niceness_asked_for() -> None:
    pool = TrainingPool(
        meter_windows(METERS, CFG), seed=CFG.seed, child_threads=1, children=2, child_nice=5
    )
    try:
        pool.warm_up()
        mine = os.nice(0)
        assert [ex.submit(os.nice, 0).result() for ex in pool._children()] == [mine + 5] * 2
    finally:
        pool.close()


def test_a_batch_starts_training_when_its_last_meter_joins_even_if_the_loop_stays_busy() -> None:
    # Under SecAgg+ the agents keep the event loop busy for whole iterations right
    # after a round's announcement; the batch must not wait for a turn on the loop.
    # (In a thread, so its progress shows in this process's CPU time.)
    pool = TrainingPool(meter_windows(METERS, CFG), seed=CFG.seed)
    model = initial_parameters(CFG.seed)
    plan = TrainConfig(local_epochs=1, batch_size=32, lr=0.003)

    async def one_round(round_: int, busy: bool) -> tuple[float, bool]:
        cpu = time.process_time()
        joined = [
            pool.submit(m, round_=round_, train=True, model=model, plan=plan, expected=4)
            for m in METERS
        ]
        progressed = False
        if busy:
            # No await until the training has used most of what a batch takes
            # (sleeping, so its thread gets the GIL), or a minute has passed.
            give_up = time.monotonic() + 60
            while not progressed and time.monotonic() < give_up:
                time.sleep(0.01)  # noqa: ASYNC251 (blocking the loop is the point)
                progressed = time.process_time() - cpu > 0.8 * batch_cpu
        answers = await asyncio.gather(*joined)
        assert all(a.delta is not None and np.abs(a.delta).max() > 0 for a in answers)
        return time.process_time() - cpu, progressed

    try:
        pool.warm_up()
        batch_cpu, _ = asyncio.run(one_round(0, busy=False))
        _, progressed = asyncio.run(one_round(1, busy=True))
    finally:
        pool.close()
    assert progressed
