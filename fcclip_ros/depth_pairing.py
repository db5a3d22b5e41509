"""Which depth frame goes with a colour frame. ROS-free: the node feeds it from its subscriptions,
`fcclip-ros bag` from a recording read in log order.

Depth and colour come on separate topics, at their own rates and in either order. A colour frame
is entered when it *arrives* (`add_colour`), before the network runs: from then on it collects
its candidates, the depth frames already kept and those arriving later. So however long the
network takes, the frame's depth is still there when the result is ready. It pairs with the depth
of the same stamp, else the nearest stamp within `max_delay_s` (a gap of exactly `max_delay_s`
pairs, one nanosecond more does not; 0 = exact stamps only; on a tie the later depth).

A colour frame's choice is final once a depth with the same stamp or a later one has come
("covered"), or `wait_s` after the colour frame arrived. Clocks are the caller's: the node passes
monotonic nanoseconds, the bag log time, so the same rules decide live and recorded streams.

Memory: depth frames are kept for `window_s` of stamps behind the newest one and at most
`max_bytes` in all (the oldest go first); a waiting colour frame holds only its best candidate,
and is forgotten once decided and taken, or `wait_s` past its arrival when nobody took it.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any

NS = 1_000_000_000
DEFAULT_WINDOW_S = 1.0
DEFAULT_MAX_BYTES = 256 * 1024 * 1024


class PendingDepth:
    """A colour frame waiting for its depth: the best candidate so far."""

    __slots__ = ("arrival_ns", "best", "colour_frame", "covered", "gap_ns", "stamp_ns")

    def __init__(self, stamp_ns: int, arrival_ns: int, no_match_gap_ns: int) -> None:
        self.stamp_ns, self.arrival_ns = stamp_ns, arrival_ns
        self.colour_frame = ""  # the colour frame's header frame_id, set by its user
        self.best: Any = None
        self.gap_ns = no_match_gap_ns  # the best candidate's gap; above max_delay: none yet
        self.covered = False  # a depth stamped at or after this frame has come

    def offer(self, stamp_ns: int, frame: Any, max_delay_ns: int) -> None:
        gap = abs(stamp_ns - self.stamp_ns)
        later = stamp_ns >= self.stamp_ns
        if gap <= max_delay_ns and (gap < self.gap_ns or (gap == self.gap_ns and later)):
            self.best, self.gap_ns = frame, gap
        self.covered = self.covered or later


class DepthPairing:
    """One camera's recent depth frames and the colour frames waiting for theirs. Thread-safe:
    the node adds frames from its executor while the inference worker waits."""

    def __init__(self, max_delay_s: float, wait_s: float, window_s: float = DEFAULT_WINDOW_S,
                 max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        if max_delay_s < 0 or wait_s < 0 or window_s < 0:
            raise ValueError("max_delay_s, wait_s and window_s must be >= 0")
        self.max_delay_ns = round(max_delay_s * NS)
        self.wait_ns = round(wait_s * NS)
        self.window_ns = max(round(window_s * NS), self.max_delay_ns)
        self.max_bytes = max_bytes
        self._depth: deque[tuple[int, Any, int]] = deque()  # (stamp, frame, bytes), by arrival
        self._bytes = 0
        self._newest = -(2**63)
        self._waiting: list[PendingDepth] = []
        self._changed = threading.Condition()
        self._stopped = False

    def add_depth(self, stamp_ns: int, frame: Any, now_ns: int, size_bytes: int = 0) -> None:
        """A depth frame has come; `size_bytes` counts against `max_bytes`."""
        with self._changed:
            self._depth.append((stamp_ns, frame, size_bytes))
            self._bytes += size_bytes
            self._newest = max(self._newest, stamp_ns)
            while self._depth and (self._bytes > self.max_bytes
                                   or self._depth[0][0] < self._newest - self.window_ns):
                self._bytes -= self._depth.popleft()[2]
            for pending in self._waiting:
                pending.offer(stamp_ns, frame, self.max_delay_ns)
            self._forget_decided(now_ns)
            self._changed.notify_all()

    def add_colour(self, stamp_ns: int, now_ns: int) -> PendingDepth:
        """Enter a colour frame as it arrives; `take` or `wait` gives its depth later."""
        pending = PendingDepth(stamp_ns, now_ns, self.max_delay_ns + 1)
        with self._changed:
            for stamp, frame, _ in self._depth:
                pending.offer(stamp, frame, self.max_delay_ns)
            self._forget_decided(now_ns)
            if not self._decided(pending, now_ns):
                self._waiting.append(pending)
        return pending

    def decided(self, pending: PendingDepth, now_ns: int) -> bool:
        """Whether a depth arriving after `now_ns` can no longer change the choice."""
        with self._changed:
            return self._decided(pending, now_ns)

    def take(self, pending: PendingDepth) -> Any | None:
        """The depth frame chosen for the colour frame (None: none within max_delay_s)."""
        with self._changed:
            if pending in self._waiting:
                self._waiting.remove(pending)
            return pending.best

    def wait(self, pending: PendingDepth, clock_ns: Any) -> Any | None:
        """`take`, after waiting (with `clock_ns()` the clock of `add_colour`) until the choice
        is decided, `stop()` is called, or `wait_s` after the colour frame arrived."""
        with self._changed:
            while not self._stopped:
                now = clock_ns()
                if self._decided(pending, now):
                    break
                self._changed.wait((pending.arrival_ns + self.wait_ns - now) / NS)
        return self.take(pending)

    def stop(self) -> None:
        """Wake a waiting worker: `wait` returns at once until `start()`."""
        with self._changed:
            self._stopped = True
            self._changed.notify_all()

    def start(self) -> None:
        """Begin afresh: no frames kept, none waiting."""
        with self._changed:
            self._stopped = False
            self._depth.clear()
            self._bytes = 0
            self._newest = -(2**63)
            self._waiting.clear()

    @property
    def kept_bytes(self) -> int:
        return self._bytes

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def _decided(self, pending: PendingDepth, now_ns: int) -> bool:
        return (pending.gap_ns == 0 or pending.covered
                or now_ns - pending.arrival_ns >= self.wait_ns)

    def _forget_decided(self, now_ns: int) -> None:
        """A decided colour frame needs no more offers; its choice stays with it for `take`
        (and goes with it when nobody takes it: a frame dropped for a newer one)."""
        self._waiting = [p for p in self._waiting if not self._decided(p, now_ns)]
