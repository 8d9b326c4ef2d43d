"""Per-stage latency: `with timer.stage("prefill"): ...` records milliseconds per stage for one sample.

On CUDA, stages are timed with CUDA events and read after one synchronisation at the end of the
sample, so timing does not serialise the stages it measures; on the CPU, time.perf_counter.
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from typing import Iterator

STAGES = ("vision", "select", "prefill", "decode", "mask")


class TimedSpan:
    """What one `timer.stage(name)` block added to its timer; `retract()` takes it back (once).

    Used where a stage is timed before it is known whether it counts: the encode's full vision tower,
    which selecting inside the tower replaces with a pruned run.
    """

    def __init__(self, timer: "StageTimer", name: str) -> None:
        self.timer, self.name = timer, name
        self.cpu_ms = 0.0
        self.event: tuple[str, object, object] | None = None
        self.retracted = False

    def retract(self) -> None:
        if self.retracted:
            return
        self.retracted = True
        if self.event is not None and self.event in self.timer._events:
            self.timer._events.remove(self.event)
        self.timer._cpu_ms[self.name] -= self.cpu_ms


class StageTimer:
    def __init__(self, device: str = "cpu") -> None:
        self.cuda = str(device).startswith("cuda")
        self._cpu_ms: dict[str, float] = defaultdict(float)
        self._events: list[tuple[str, object, object]] = []

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[TimedSpan]:
        span = TimedSpan(self, name)
        if self.cuda:
            import torch

            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            try:
                yield span
            finally:
                end.record()
                span.event = (name, start, end)
                self._events.append(span.event)
        else:
            t0 = time.perf_counter()
            try:
                yield span
            finally:
                span.cpu_ms = (time.perf_counter() - t0) * 1000.0
                self._cpu_ms[name] += span.cpu_ms

    def result(self) -> dict[str, float]:
        """Milliseconds per stage (all of STAGES present; 0.0 where a stage did not run)."""
        ms = dict(self._cpu_ms)
        if self._events:
            import torch

            torch.cuda.synchronize()
            for name, start, end in self._events:
                ms[name] = ms.get(name, 0.0) + start.elapsed_time(end)  # type: ignore[attr-defined]
        out = {s: float(ms.get(s, 0.0)) for s in STAGES}
        for name, value in ms.items():
            out.setdefault(name, float(value))
        out["total"] = float(sum(out[s] for s in STAGES))
        return out
