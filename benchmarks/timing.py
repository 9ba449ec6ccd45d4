"""Shared by the benchmark scripts: the best wall time of repeated calls."""
import time


def best(fn, repeat: int = 7) -> float:
    """Best of `repeat` calls, in seconds (the least disturbed by the rest of the machine)."""
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)
