"""Host memory as the operating system counts it, and a background sampler of its peak. Used by the load
benchmark and by the tests that bound a load's memory.

live_memory(): on Linux, the process's anonymous resident memory (RssAnon from /proc/self/status: heap and
copies, not the page cache that memory-mapped files use); where there is no /proc (macOS, Windows), psutil's
resident set size, an upper bound that also counts the mapped checkpoint pages the process has touched."""

from __future__ import annotations

import threading
import time

import psutil

# The environment a process measured for a memory bound runs in. glibc keeps freed blocks for reuse, so
# RssAnon can count memory no tensor holds any more; served from mmap (64 KiB and up), every freed tensor goes
# back to the system and RssAnon is what is alive. One thread: the same work, whatever the machine.
LIVE_MEMORY_ENV = {"OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "65536"}


def rss_anon() -> int:
    """Anonymous resident memory of this process in bytes (Linux)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no RssAnon in /proc/self/status (memory is measured on Linux only)")


def live_memory() -> int:
    """RssAnon where Linux gives it, else psutil's resident set size (see the module's docstring)."""
    try:
        return rss_anon()
    except (OSError, RuntimeError):
        return int(psutil.Process().memory_info().rss)


class PeakSampler(threading.Thread):
    """Samples live_memory() every `every` seconds in the background; .peak is the largest value seen.

        sampler = PeakSampler(); sampler.start(); ...work...; peak = sampler.stop()
    """

    def __init__(self, every: float = 0.02):
        super().__init__(daemon=True)
        self.every, self.peak, self._done = every, live_memory(), threading.Event()

    def run(self):
        while not self._done.is_set():
            self.peak = max(self.peak, live_memory())
            time.sleep(self.every)

    def stop(self) -> int:
        self._done.set()
        self.join()
        self.peak = max(self.peak, live_memory())
        return self.peak
