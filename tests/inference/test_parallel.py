"""parallel_map: in order, on torch's thread count by default, every call done before an error is raised."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from inference.parallel import parallel_map


def test_results_in_order_on_several_threads():
    names = set()

    def slow_square(n: int) -> int:
        names.add(threading.current_thread().name)
        time.sleep(0.01 * (5 - n))  # later items finish first
        return n * n

    assert parallel_map(slow_square, range(5), workers=3) == [0, 1, 4, 9, 16]
    assert len(names) > 1 and all(name.startswith("radinfer-cpu") for name in names)


def test_default_workers_follow_torch_threads_and_one_runs_inline():
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert parallel_map(lambda _: threading.current_thread().name, range(3)) == [threading.current_thread().name] * 3
    finally:
        torch.set_num_threads(previous)
    assert parallel_map(str, []) == []


def test_every_call_finishes_before_the_first_error_is_raised():
    done = []

    def work(n: int) -> int:
        if n == 1:
            raise ValueError("item 1")
        time.sleep(0.02)
        done.append(n)
        return n

    with pytest.raises(ValueError, match="item 1"):
        parallel_map(work, range(4), workers=2)
    assert sorted(done) == [0, 2, 3]
