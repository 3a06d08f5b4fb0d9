"""Which clearly normal frames become training samples: at most one per camera per interval.

A line camera at 10 frames/s produces 36,000 clearly normal frames an hour. Keeping every one (the
store prunes to the newest ``keep_normal_cap`` per product) writes each full frame to the database
only to delete it a minute later, and leaves a retrain with the last minute of production instead
of a shift's worth of lighting, lots and wear. Spacing the samples by the frames' own capture
clock keeps the cap's worth of samples spread over time and the writes proportional to the cap,
not to the line rate. Capture time, not wall time: a replayed backlog samples as the line did.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable


class IntervalSampler:
    """Admits an event for a key when the key's last admitted event is at least ``every_s`` away
    on the events' own clock (either direction: a camera whose clock steps back is admitted again).

    ``every_s == 0`` admits everything. The key table is bounded (``max_keys``, least recently
    admitted dropped first), so hostile or ever-changing camera names cannot grow it without end;
    a dropped key is simply admitted again at its next event.
    """

    def __init__(self, every_s: float, max_keys: int = 4096) -> None:
        if not every_s >= 0:  # also refuses NaN
            raise ValueError(f"every_s must be >= 0, got {every_s}")
        if max_keys < 1:
            raise ValueError(f"max_keys must be >= 1, got {max_keys}")
        self.every_s = float(every_s)
        self.max_keys = max_keys
        self._last: OrderedDict[Hashable, float] = OrderedDict()

    def admit(self, key: Hashable, ts: float) -> bool:
        if self.every_s == 0:
            return True
        last = self._last.get(key)
        if last is not None and abs(ts - last) < self.every_s:
            return False
        self._last[key] = ts
        self._last.move_to_end(key)
        if len(self._last) > self.max_keys:
            self._last.popitem(last=False)
        return True

    def __len__(self) -> int:
        return len(self._last)
