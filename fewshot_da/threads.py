"""CPU threads of a command, one rule for every verb: --num-threads, else OMP_NUM_THREADS when set, else all cores
(split between a command's workers); and a one-line note when the load average leaves fewer cores free than that."""
import math
import os

from .errors import InputError


def cpu_cores() -> int:
    """Cores this process may run on (its affinity mask; os.cpu_count() off Linux)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def env_threads() -> int | None:
    """OMP_NUM_THREADS as a positive int, None when unset or empty; a one-line InputError when it is not a number."""
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    if not value:
        return None
    try:
        threads = int(value.split(",")[0])  # OpenMP allows a nesting list: its first level is ours
    except ValueError:
        threads = 0
    if threads < 1:
        raise InputError(f"OMP_NUM_THREADS={value!r} is not a positive integer; unset it or give --num-threads")
    return threads


def resolve_threads(num_threads: int | None = None) -> int | None:
    """The thread count a command was asked for: `num_threads` (>= 1), else OMP_NUM_THREADS, else None (all cores)."""
    if num_threads is not None:
        if int(num_threads) != num_threads or num_threads < 1:
            raise InputError(f"--num-threads {num_threads}: must be an integer >= 1")
        return int(num_threads)
    return env_threads()


def threads_per_worker(num_threads: int | None = None, workers: int = 1) -> int:
    """Threads each of `workers` processes or cases uses: the resolved count, else the cores split evenly."""
    resolved = resolve_threads(num_threads)
    return resolved if resolved is not None else max(1, cpu_cores() // max(1, int(workers)))


def busy_cores_note(threads: int, workers: int = 1, *, load: float | None = None,
                    cores: int | None = None) -> str | None:
    """One line when `workers` x `threads` exceed the cores the 1-minute load average leaves free (threads then
    wait on busy cores, several times slower), naming the --num-threads that fits; None when they fit."""
    cores = cpu_cores() if cores is None else int(cores)
    if load is None:
        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):  # pragma: no cover - no load average on this platform
            return None
    free = max(0.0, cores - load)
    wanted = int(threads) * max(1, int(workers))
    fits = max(1, math.floor((free + 0.5) / max(1, int(workers))))
    if wanted <= free + 0.5 or fits >= threads:
        return None
    each = " per worker" if workers > 1 else ""
    return (f"note: load average {load:.1f} on {cores} cores leaves {free:.1f} free, fewer than the {wanted} "
            f"thread(s) asked for; threads on busy cores run several times slower: use --num-threads {fits}{each}")


def use_threads(num_threads: int | None) -> int | None:
    """Apply a resolved count to torch's intra-op pool (None: leave torch's default); returns it."""
    if num_threads is not None:
        import torch

        torch.set_num_threads(int(num_threads))
    return num_threads
