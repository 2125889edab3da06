"""JobSignals wakes the coroutines waiting on one job, from any thread, and forgets them afterwards."""

from __future__ import annotations

import asyncio
import threading

from inference.jobs.signals import JobSignals


def test_notify_from_a_worker_thread_wakes_only_that_jobs_waiters() -> None:
    signals = JobSignals()

    async def scenario() -> tuple[bool, bool, bool]:
        with signals.watch("a") as first, signals.watch("a") as second, signals.watch("b") as other:
            thread = threading.Thread(target=signals.notify, args=("a",))
            thread.start()
            await asyncio.wait_for(asyncio.gather(first.wait(), second.wait()), timeout=10)
            thread.join()
            await asyncio.sleep(0)  # let any stray wake-up for "b" run
            return first.is_set(), second.is_set(), other.is_set()

    assert asyncio.run(scenario()) == (True, True, False)
    assert signals._waiting == {}  # nothing left behind once the requests are gone


def test_notify_without_waiters_or_after_their_loop_closed_is_harmless() -> None:
    signals = JobSignals()
    signals.notify("nobody")
    loop = asyncio.new_event_loop()
    entry = (loop, asyncio.Event())
    signals._waiting["gone"] = [entry]
    loop.close()
    signals.notify("gone")  # a closed loop raises RuntimeError inside; the worker must not see it
