"""Peak resident memory of this process and all its descendants (vLLM's engine core, DeepSpeed workers), sampled
in a background thread: ``ru_maxrss`` of children only counts children that have already exited."""

from __future__ import annotations

import threading

import psutil


class PeakRSS:
    def __init__(self, interval_s: float = 0.2, pid: int | None = None):
        self.interval_s = interval_s
        self.root = psutil.Process(pid)
        self.peak_total = self.peak_self = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        try:
            own = self.root.memory_info().rss
            total = own + sum(c.memory_info().rss for c in self.root.children(recursive=True) if c.is_running())
        except psutil.Error:
            return
        self.peak_self = max(self.peak_self, own)
        self.peak_total = max(self.peak_total, total)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def __enter__(self) -> PeakRSS:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def gib(self) -> tuple[float, float]:
        """(this process, this process + descendants) in GiB."""
        return self.peak_self / 2**30, self.peak_total / 2**30
