"""(c) Requests per second through the device queue at 1, 4 and 16 concurrent clients, batching on/off.

In process (HTTP comes later): each client thread submits one image at a time and waits for its result,
as a Worker thread would. "off" is the same queue with max_batch 1, so only batching differs.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from benchmarks.common import densenet2d
from inference.batching import BatchingConfig, DeviceQueue
from inference.runners import TorchRunner


def run(*, quick: bool, threads: int, device: torch.device, clients: tuple[int, ...] = (1, 4, 16)) -> dict[str, Any]:
    torch.set_num_threads(threads)
    size = 128 if quick else 256
    requests_per_client = {1: 8, 4: 4, 16: 2} if quick else {1: 24, 4: 12, 16: 6}
    runner = TorchRunner(densenet2d(), device)
    configs = {
        "off": BatchingConfig(max_batch=1, max_wait_ms=0),
        "on": BatchingConfig(max_batch=8, max_wait_ms=10),
    }
    image = torch.randn(1, 1, size, size)
    runner(image)
    results: dict[str, Any] = {}
    for label, config in configs.items():
        for n in clients:
            queue = DeviceQueue(str(device), max_pending=1024)
            queue.register("densenet", runner, config)
            count = requests_per_client[n] * n
            latencies: list[float] = []

            def client(
                _: int, queue: DeviceQueue = queue, latencies: list[float] = latencies, each: int = count // n
            ) -> None:
                for _ in range(each):
                    start = time.perf_counter()
                    queue.submit("densenet", image)
                    latencies.append(time.perf_counter() - start)

            start = time.perf_counter()
            with ThreadPoolExecutor(n) as pool:
                list(pool.map(client, range(n)))
            elapsed = time.perf_counter() - start
            queue.close()
            latencies.sort()
            results[f"{label}_{n}"] = {
                "batching": label,
                "clients": n,
                "requests": count,
                "rps": round(count / elapsed, 3),
                "p50_latency_s": round(latencies[len(latencies) // 2], 4),
                "p95_latency_s": round(
                    latencies[int(len(latencies) * 0.95) - 1 if len(latencies) > 1 else 0], 4
                ),
                "mean_batch": round(sum(queue.batch_sizes) / len(queue.batch_sizes), 2),
            }
    ratios = {
        f"on_over_off_{n}_clients": results[f"on_{n}"]["rps"] / results[f"off_{n}"]["rps"] for n in clients
    }
    return {
        "model": f"densenet121_2d_{size}^2",
        "device": str(device),
        "threads": threads,
        "precision": "fp32",
        "batching_on": {"max_batch": 8, "max_wait_ms": 10},
        "runs": results,
        "ratios": ratios,
    }
