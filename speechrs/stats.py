"""Counters the engine keeps and the server exposes in Prometheus' text format."""

import bisect
import threading


class Histogram:
    """Observations counted into buckets with upper bounds `bounds` (and +Inf), with their sum; thread-safe (the
    worker observes, the event loop reads)."""

    def __init__(self, bounds: tuple[float, ...]):
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        with self._lock:
            self.counts[bisect.bisect_left(self.bounds, value)] += 1
            self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def prometheus(self, name: str, help_text: str) -> list[str]:
        with self._lock:
            counts, total = list(self.counts), self.sum
        lines = [f"# HELP {name} {help_text}", f"# TYPE {name} histogram"]
        cumulative = 0
        for bound, n in zip((*self.bounds, float("inf")), counts, strict=True):
            cumulative += n
            le = "+Inf" if bound == float("inf") else f"{bound:g}"
            lines.append(f'{name}_bucket{{le="{le}"}} {cumulative}')
        return [*lines, f"{name}_sum {total:.6f}", f"{name}_count {cumulative}"]
