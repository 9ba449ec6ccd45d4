"""Shared by the benchmark scripts: the best wall time of repeated calls, a timed `graft` process."""
import subprocess
import sys
import time


def best(fn, repeat: int = 7) -> float:
    """Best of `repeat` calls, in seconds (the least disturbed by the rest of the machine)."""
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def graft_seconds(*args, env=None) -> float:
    """Wall seconds of one fresh `graft` process (its imports included, as a user pays them)."""
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "graftkit.cli.main", *map(str, args)], capture_output=True, text=True,
                       env=env)
    if r.returncode:
        sys.exit(f"graft {' '.join(map(str, args))} failed:\n{r.stderr[-3000:]}")
    return time.perf_counter() - t
