"""How many torch threads to use on a CPU that other processes may be using too.

OpenMP threads wait for each other at every parallel region; when another process takes a core away, the other
thread spins until the first is scheduled again. Measured on a 2-core VM with a load average of ~7: SmolLM2 batched
generation took 80-90 s with 2 threads and 7.5-9 s with 1 thread. So: all cores when the machine is otherwise idle,
fewer when the load average shows other busy processes. FSLM_THREADS (settings.threads > 0) always wins.
"""

from __future__ import annotations

import os

from fslm.settings import get_settings


def pick_threads(requested: int | None = None, own: int = 0) -> int:
    """`own` is how many threads this process itself kept busy lately (it shows up in the load average too)."""
    if requested:
        return requested
    if get_settings().threads > 0:
        return get_settings().threads
    cores = os.cpu_count() or 1
    try:
        others = os.getloadavg()[0] - own
    except OSError:  # no load average on this platform
        return cores
    return max(1, min(cores, cores - round(max(0.0, others))))


def apply_threads(requested: int | None = None, busy: bool = False) -> int:
    """Set torch's intra-op threads from `pick_threads`; `busy`: this process has been computing with them."""
    import torch

    current = torch.get_num_threads()
    threads = pick_threads(requested, own=current if busy else 0)
    if threads != current:
        torch.set_num_threads(threads)
    return threads
