"""How many torch threads to use on a CPU that other processes may be using too.

OpenMP threads wait for each other at every parallel region; when another process takes a core away, the other
thread spins until the first is scheduled again. Measured on a 2-core VM with a load average of ~7: SmolLM2 batched
generation took 80-90 s with 2 threads and 7.5-9 s with 1 thread. So: all cores when the machine is otherwise idle,
fewer when other processes are busy. FSLM_THREADS (settings.threads > 0) always wins.

"Busy" is read from /proc/stat over a quarter of a second, not from the load average: the 1-minute load average
still shows ~2 a minute after a heavy job ended, and a process started then would take 1 thread on an idle machine.
The load average is the fallback where /proc/stat does not exist.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from fslm.settings import get_settings


def pick_threads(requested: int | None = None, own: int = 0) -> int:
    """`own` is how many threads this process itself kept busy lately (it shows up in the load average too)."""
    if requested:
        return requested
    if get_settings().threads > 0:
        return get_settings().threads
    cores = os.cpu_count() or 1
    others = busy_cores(cores)
    if others is None:
        try:
            others = os.getloadavg()[0] - own
        except OSError:  # no load average on this platform
            return cores
    return max(1, min(cores, cores - round(max(0.0, others))))


def cpu_jiffies(stat: str | None = None) -> tuple[int, int] | None:
    """(busy, total) CPU time over all cores from /proc/stat's first line; None where there is none."""
    if stat is None:
        try:
            stat = Path("/proc/stat").read_text().split("\n", 1)[0]
        except OSError:
            return None
    fields = [int(x) for x in stat.split()[1:9]]  # user nice system idle iowait irq softirq steal
    if len(fields) < 4:
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields) - idle, sum(fields)


def busy_cores(cores: int, sample_s: float = 0.25, read=cpu_jiffies) -> float | None:
    """How many cores are busy right now (this process is idle while it asks, so: other processes)."""
    first = read()
    if first is None:
        return None
    time.sleep(sample_s)
    second = read()
    if second is None or second[1] <= first[1]:
        return None
    return cores * (second[0] - first[0]) / (second[1] - first[1])


def current_threads() -> int:
    """torch's intra-op threads in this process (what a measured speed was measured with)."""
    import torch

    return torch.get_num_threads()


def apply_threads(requested: int | None = None, busy: bool = False) -> int:
    """Set torch's intra-op threads from `pick_threads`; `busy`: this process has been computing with them."""
    import torch

    current = torch.get_num_threads()
    threads = pick_threads(requested, own=current if busy else 0)
    if threads != current:
        torch.set_num_threads(threads)
    return threads


def bf16_is_fast(cpuinfo: str | None = None) -> bool:
    """bf16 matmuls only pay on CPUs with native bf16 (AVX512-BF16 or AMX); on AVX2 they are emulated and slower than
    fp32 (measured here: SmolLM2 batch-16 decode 36 tok/s in bf16 vs 72 in fp32)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    flags = set(cpuinfo.split())
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def cpu_model(cpuinfo: str | None = None) -> str:
    """The CPU's model name and whether it has native bf16: seconds measured on two machines are not comparable, and
    a long run can span machines (a resumed session may land on another one)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            import platform

            return platform.processor() or platform.machine() or "unknown"
    name = next(
        (line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")), "unknown"
    )
    return f"{name} ({'native bf16' if bf16_is_fast(cpuinfo) else 'no native bf16'})"
