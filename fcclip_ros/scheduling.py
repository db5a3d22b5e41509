"""Which frame the model sees next. No rclpy: the node feeds it from its subscriptions.

A camera is faster than the model, so each camera keeps only its newest frame (a newer one
replaces it and the replaced one counts as skipped: never a backlog), and the inference worker
takes the waiting frames round robin, starting after the camera it served last, so a fast camera
cannot starve a slow one.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any


@dataclass
class SlotCounts:
    """What one camera's slot has seen since the node started."""

    received: int = 0
    skipped: int = 0  # replaced by a newer frame before the worker took them
    last_arrival: float | None = None  # time.monotonic() of the newest frame


class FrameScheduler:
    """Newest-frame slots, one per camera, and round-robin batches of their frames."""

    def __init__(self, cameras: int, batch_size: int = 1) -> None:
        if cameras < 1 or batch_size < 1:
            raise ValueError(f"need at least one camera and a batch of one, got {cameras}, "
                             f"{batch_size}")
        self.batch_size = min(batch_size, cameras)
        self._frames: list[Any] = [None] * cameras
        self.counts = [SlotCounts() for _ in range(cameras)]
        self._next = 0  # the camera to look at first
        self._ready = threading.Condition()
        self._stopped = False

    def put(self, camera: int, frame: Any) -> None:
        """Keep `frame` as the camera's newest; a frame still waiting there is skipped."""
        with self._ready:
            counts = self.counts[camera]
            counts.skipped += self._frames[camera] is not None
            counts.received += 1
            counts.last_arrival = time.monotonic()
            self._frames[camera] = frame
            self._ready.notify()

    def next_batch(self, timeout: float | None = None) -> list[tuple[int, Any]]:
        """Wait for frames, then take up to `batch_size` of them, one per camera, round robin.

        [(camera, frame), ...]; empty once stop() was called, or when `timeout` passed first.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._ready:
            while not self._stopped:
                order = [(self._next + i) % len(self._frames) for i in range(len(self._frames))]
                waiting = [camera for camera in order if self._frames[camera] is not None]
                if waiting:
                    batch = waiting[: self.batch_size]
                    self._next = (batch[-1] + 1) % len(self._frames)
                    taken = [(camera, self._frames[camera]) for camera in batch]
                    for camera in batch:
                        self._frames[camera] = None
                    return taken
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    break
                self._ready.wait(remaining)
        return []

    def stop(self) -> None:
        """Wake the worker and make next_batch() return [] until start()."""
        with self._ready:
            self._stopped = True
            self._ready.notify_all()

    def start(self) -> None:
        """Serve again (after stop()), from fresh frames only: waiting ones are dropped."""
        with self._ready:
            self._stopped = False
            self._frames = [None] * len(self._frames)
