"""Which depth frame goes with a colour frame. No rclpy: the node feeds it from its subscriptions.

Depth and colour come on separate topics, at their own rates and in either order. Each camera
keeps its last `capacity` depth frames (bounded memory); the inference worker asks for the depth
of the colour frame it has just segmented, so the network's run time is the wait: usually the
depth is there by then. A colour frame pairs with the depth of the same stamp, or else the nearest
one within `max_delay_s`. While none is nearer than that, and no depth newer than the colour frame
has arrived yet (one could still come), the worker waits, but never past `max_delay_s` after the
colour frame arrived: then the frame is published in 2D only.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any


class DepthBuffer:
    """The recent depth frames of one camera, by header stamp (nanoseconds)."""

    def __init__(self, max_delay_s: float, capacity: int = 16) -> None:
        self.max_delay_ns = round(max_delay_s * 1e9)
        self._frames: deque[tuple[int, Any]] = deque(maxlen=capacity)
        self._arrived = threading.Condition()
        self._stopped = False

    def put(self, stamp_ns: int, frame: Any) -> None:
        with self._arrived:
            self._frames.append((stamp_ns, frame))
            self._arrived.notify_all()

    def match(self, stamp_ns: int, deadline: float | None = None) -> Any | None:
        """The depth frame for a colour frame stamped `stamp_ns`, or None; waits for one that
        may still come until `deadline` (time.monotonic()), see the module docstring."""
        with self._arrived:
            while True:
                best, may_improve = self._nearest(stamp_ns)
                if not may_improve or self._stopped:
                    return best
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return best
                self._arrived.wait(remaining)

    def _nearest(self, stamp_ns: int) -> tuple[Any | None, bool]:
        """(nearest frame within max_delay, whether a later arrival could beat it)."""
        best, best_gap, newest = None, self.max_delay_ns + 1, None
        for stamp, frame in self._frames:
            gap = abs(stamp - stamp_ns)
            if gap < best_gap or (gap == best_gap and stamp >= stamp_ns):
                best, best_gap = frame, gap
            newest = stamp if newest is None else max(newest, stamp)
        covered = newest is not None and newest >= stamp_ns
        return best, best_gap != 0 and not covered

    def stop(self) -> None:
        """Wake a waiting worker: match() returns at once until start()."""
        with self._arrived:
            self._stopped = True
            self._arrived.notify_all()

    def start(self) -> None:
        with self._arrived:
            self._stopped = False
            self._frames.clear()
