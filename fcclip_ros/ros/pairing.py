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


def header_stamp_ns(header: Any) -> int:
    """A std_msgs/Header's stamp in nanoseconds: the key colour and depth are paired by."""
    return header.stamp.sec * 1_000_000_000 + header.stamp.nanosec


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


class RecordedDepth:
    """Pairs colour and depth frames of a recording read in log-time order: the same choice as
    DepthBuffer (same stamp, else the nearest within `max_delay_s`), decided without a clock. A
    colour frame is decided once a depth frame stamped at or after it has been read, once the
    recording has moved on by `horizon_ns` of log time, or at the end of the recording."""

    def __init__(self, max_delay_s: float, capacity: int = 16,
                 horizon_ns: int = 1_000_000_000) -> None:
        self.max_delay_ns = round(max_delay_s * 1e9)
        self.horizon_ns = horizon_ns
        self._recent: deque[tuple[int, Any]] = deque(maxlen=capacity)
        self._waiting: dict[int, list] = {}  # colour key -> [stamp, log time, best, gap, covered]

    def add_depth(self, stamp_ns: int, frame: Any) -> None:
        self._recent.append((stamp_ns, frame))
        for waiting in self._waiting.values():
            self._offer(waiting, stamp_ns, frame)

    def add_colour(self, key: int, stamp_ns: int, log_time: int) -> None:
        waiting = [stamp_ns, log_time, None, self.max_delay_ns + 1, False]
        for stamp, frame in self._recent:
            self._offer(waiting, stamp, frame)
        self._waiting[key] = waiting

    @staticmethod
    def _offer(waiting: list, stamp_ns: int, frame: Any) -> None:
        colour_stamp, _, _, best_gap, _ = waiting
        gap = abs(stamp_ns - colour_stamp)
        if gap < best_gap or (gap == best_gap and stamp_ns >= colour_stamp):
            waiting[2], waiting[3] = frame, gap
        waiting[4] = waiting[4] or stamp_ns >= colour_stamp

    def decided(self, key: int, log_time_now: int) -> bool:
        _, log_time, _, gap, covered = self._waiting[key]
        return gap == 0 or covered or log_time_now - log_time > self.horizon_ns

    def take(self, key: int) -> Any | None:
        """The depth frame of a colour frame (None: none within max_delay_s); forgets it."""
        return self._waiting.pop(key)[2]
