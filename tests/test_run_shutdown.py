"""How a run stops its aggregator and meters on Ctrl-C."""

import asyncio

from gridsim.run import _cancel_and_wait


def test_a_task_that_swallows_its_cancellation_is_cancelled_again() -> None:
    swallowed = 0

    async def stubborn() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                if swallowed:
                    raise
                swallowed += 1  # as asyncio.wait_for on Python 3.11 can in a race

    async def scenario() -> asyncio.Task[None]:
        task = asyncio.create_task(stubborn())
        await asyncio.sleep(0)
        await asyncio.wait_for(_cancel_and_wait(task, patience_s=0.05), 10)
        return task

    task = asyncio.run(scenario())
    assert task.cancelled() and swallowed == 1


def test_a_task_that_fails_while_stopping_does_not_hide_the_shutdown() -> None:
    async def fails_on_cancel() -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            raise RuntimeError("broke while stopping") from None

    async def scenario() -> asyncio.Task[None]:
        task = asyncio.create_task(fails_on_cancel())
        await asyncio.sleep(0)
        await _cancel_and_wait(task, patience_s=0.05)
        return task

    task = asyncio.run(scenario())
    assert isinstance(task.exception(), RuntimeError)
