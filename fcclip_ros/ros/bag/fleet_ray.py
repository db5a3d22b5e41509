"""`fcclip-ros bag --ray`: the planned bags on Ray workers, each an actor that loads the model
once and runs one bag at a time; the driver hands a bag to each free worker and nothing more.

A worker whose process dies (SIGKILL, out of memory, a lost node) is restarted by Ray (its
`max_restarts`); the bag it was running is handed out again and resumes its partial output, up
to MAX_ATTEMPTS times. Workers are threaded actors (max_concurrency=2) so that `stop` reaches a
running bag: it finishes a valid, resumable file of the frames done.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayError

from fcclip_ros.engine import Engine, EngineConfig, EngineError, resolved_settings
from fcclip_ros.ros.bag.fleet import BagOutcome, FrameTally, PlannedBag, open_job, run_job
from fcclip_ros.ros.bag.job import BagOptions
from fcclip_ros.ros.bag.reader import BagError

MAX_ATTEMPTS = 3  # per bag: the first run and two after a worker died under it
WORKER_RESTARTS = 2  # per worker (Ray's max_restarts), then it is left out
POLL_S = 0.2  # how often the driver looks at finished bags and the progress board
LOCAL_OBJECT_STORE_BYTES = 256 * 2**20  # the local instance moves only small reports
CONNECT_TIMEOUT_S = 10


class RayUsageError(Exception):
    """The cluster cannot run the work as asked (resources, workers that disagree)."""


def connect(address: str | None) -> bool:
    """Joins the cluster at `address` (or $RAY_ADDRESS), else starts a local Ray instance with
    this machine's CPUs and GPUs; True when a local one was started."""
    address = address or os.environ.get("RAY_ADDRESS") or None
    options: dict[str, Any] = {"logging_level": "WARNING", "log_to_driver": False}
    if address is None:
        ray.init(address="local", include_dashboard=False,
                 object_store_memory=LOCAL_OBJECT_STORE_BYTES, **options)
        return True
    _check_reachable(address)
    try:
        ray.init(address=address, **options)
    except ConnectionError as error:
        raise RayUsageError(f"cannot join the Ray cluster at {address}: {error}") from error
    return False


def _check_reachable(address: str) -> None:
    """A host:port that accepts no connection is refused at once (ray.init would retry it for
    minutes)."""
    host, _, port = address.rpartition(":")
    if not (host and port.isdigit()) or "/" in host:
        return  # "auto", ray://...: Ray's to resolve
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as error:
        raise RayUsageError(f"no Ray cluster answers at {address} ({error})") from error


@dataclass(frozen=True)
class WorkerShape:
    count: int
    cpus: float
    gpus: float


def worker_shape(workers: int | None, cpus: float, gpus: float | None, bags: int,
                 local: bool) -> WorkerShape:
    """How many workers, of what size: GPUs default to one per worker where the cluster has
    any; the count defaults to as many as the cluster holds now (at most one per bag). A local
    instance that cannot hold them is refused (a cluster may still grow: it is only told)."""
    resources = ray.cluster_resources()
    have_cpus, have_gpus = resources.get("CPU", 0), resources.get("GPU", 0)
    if gpus is None:
        gpus = 1.0 if have_gpus else 0.0
    if workers is None:
        fits = [int(have_cpus // cpus)] if cpus else []
        fits += [int(have_gpus // gpus)] if gpus else []
        workers = max(1, min([*fits, bags]))
    need_cpus, need_gpus = workers * cpus, workers * gpus
    if need_cpus > have_cpus or need_gpus > have_gpus:
        text = (f"{workers} workers need {need_cpus:g} CPUs and {need_gpus:g} GPUs; the Ray "
                f"cluster has {have_cpus:g} and {have_gpus:g}")
        if local:
            raise RayUsageError(f"{text}: lower --workers, --cpus-per-worker or "
                                "--gpus-per-worker")
        print(f"fcclip-ros bag: {text}; waiting for the cluster to provide them",
              file=sys.stderr)
    return WorkerShape(workers, cpus, gpus)


class ProgressBoard:
    """Frames done per bag, as the workers report them; the driver reads it for its bar."""

    def __init__(self) -> None:
        self.frames: dict[int, int] = {}

    def report(self, index: int, frames_done: int) -> None:
        self.frames[index] = frames_done

    def snapshot(self) -> dict[int, int]:
        return dict(self.frames)


class BagWorker:
    """A Ray actor running bags one at a time with one engine, loaded at its first bag. The
    settings are resolved where it runs (its device, its weight files). Each call carries what
    it needs, so that a worker Ray restarts after its process died needs nothing kept."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.node = ray.get_runtime_context().get_node_id()
        self._engine: Engine | None = None
        self._job = None
        self._stopped = False

    def settings(self, config: EngineConfig) -> dict[str, Any] | str:
        """The resolved engine settings, or why they cannot be resolved here."""
        try:
            return resolved_settings(config)
        except EngineError as error:
            return f"{self.name} on node {self.node}: {error}"

    def segment(self, index: int, source: str, out: str, config: EngineConfig,
                options: BagOptions, resume: bool, board: Any) -> BagOutcome:
        """Runs one bag, its progress reported to `board`; `resume`: continue its output (or
        start it when there is none)."""
        where = {"worker": self.name, "node": self.node}
        try:
            self._job = open_job(Path(source), Path(out), options, resolved_settings(config),
                                 resume)
            if self._engine is None:
                self._engine = Engine(config)
        except (BagError, EngineError, OSError) as error:
            return BagOutcome(error=str(error), **where)
        if self._stopped:
            return BagOutcome(frames_total=self._job.report.frames_total, interrupted=True,
                              **where)
        board.report.remote(index, self._job.report.frames_done)
        return run_job(self._job, self._engine, lambda done: board.report.remote(index, done),
                       **where)

    def stop(self) -> None:
        """Ends the bag in progress after whole frames (its file stays resumable)."""
        self._stopped = True
        if self._job is not None:
            self._job.stop()


@dataclass
class _Attempt:
    bag: PlannedBag
    worker: Any  # the actor handle
    number: int
    started: float


class RayRun:
    """The driver: workers made, their settings checked alike, bags handed to free workers,
    dead workers' bags handed out again. `stop()` (safe from a signal handler) asks every worker
    to end its bag."""

    def __init__(self, shape: WorkerShape, config: EngineConfig, tally: FrameTally) -> None:
        self.config = config
        self.tally = tally
        self.stopped = False
        self._stop_sent = False
        self._finished: set[int] = set()  # bags whose outcome is in: the board is behind
        self.board = ray.remote(ProgressBoard).options(num_cpus=0).remote()
        worker_class = ray.remote(BagWorker).options(
            num_cpus=shape.cpus, num_gpus=shape.gpus, max_concurrency=2,
            max_restarts=WORKER_RESTARTS, max_task_retries=0, scheduling_strategy="SPREAD")
        self.workers = [worker_class.remote(f"worker {number}")
                        for number in range(shape.count)]
        self.names = {worker: f"worker {number}" for number, worker in enumerate(self.workers)}

    def settings(self) -> dict[str, Any]:
        """The engine settings every worker resolves (they must agree: one fingerprint per bag,
        whichever worker writes it)."""
        found = ray.get([worker.settings.remote(self.config) for worker in self.workers])
        for result in found:
            if isinstance(result, str):
                raise RayUsageError(result)
        first = found[0]
        for number, other in enumerate(found[1:], start=1):
            differ = sorted(name for name in set(first) | set(other)
                            if first.get(name) != other.get(name))
            if differ:
                changes = "; ".join(f"{name}: {first.get(name)!r} on worker 0, "
                                    f"{other.get(name)!r} on worker {number}" for name in differ)
                raise RayUsageError(f"the workers resolve different settings ({changes}): give "
                                    "them explicitly (--device, --precision, --weights)")
        return first

    def stop(self) -> None:
        self.stopped = True

    def run(self, bags: list[PlannedBag], options: BagOptions,
            resume: bool) -> dict[int, BagOutcome]:
        queue = deque((bag, 1) for bag in bags if not bag.complete)
        free = list(self.workers)
        running: dict[Any, _Attempt] = {}
        # A call that returns once Ray has restarted a worker whose process died (it raises if
        # the worker is gone for good): until then the worker gets no bag.
        restarting: dict[Any, Any] = {}
        outcomes: dict[int, BagOutcome] = {}
        spent: dict[int, float] = {}  # seconds of the attempts so far, per bag
        while queue or running:
            if self.stopped:
                self._send_stop()
                queue.clear()
            while free and queue:
                (bag, number), worker = queue.popleft(), free.pop(0)
                ref = worker.segment.remote(bag.index, str(bag.source.resolve()),
                                            str(bag.out.resolve()), self.config, options,
                                            resume or number > 1, self.board)
                running[ref] = _Attempt(bag, worker, number, time.monotonic())
            if not (running or restarting):
                for bag, number in queue:
                    outcomes[bag.index] = BagOutcome(
                        attempts=number - 1, error="no worker left to run it (each died more "
                        f"than the {WORKER_RESTARTS} times Ray restarts one); --resume runs it")
                break
            waiting = [*running, *restarting]
            finished, _ = ray.wait(waiting, num_returns=len(waiting), timeout=POLL_S)
            self._show_progress()
            for ref in finished:
                if ref in restarting:
                    worker = restarting.pop(ref)
                    with contextlib.suppress(RayActorError):  # else: gone for good
                        ray.get(ref)
                        free.append(worker)
                    continue
                attempt = running.pop(ref)
                bag = attempt.bag
                spent[bag.index] = spent.get(bag.index, 0.0) + time.monotonic() - attempt.started
                try:
                    outcome = ray.get(ref)
                except RayActorError as error:
                    ready = attempt.worker.settings.options(max_task_retries=-1).remote(
                        self.config)
                    restarting[ready] = attempt.worker
                    outcome = self._worker_died(attempt, error, queue)
                except RayError as error:
                    free.append(attempt.worker)
                    outcome = BagOutcome(error=_last_line(error))
                else:
                    free.append(attempt.worker)
                if outcome is not None:
                    outcome.seconds, outcome.attempts = spent[bag.index], attempt.number
                    outcomes[bag.index] = outcome
                    self._finished.add(bag.index)
                    self.tally.set(bag.index, outcome.frames_done)
        return outcomes

    def _worker_died(self, attempt: _Attempt, error: RayActorError,
                     queue: deque) -> BagOutcome | None:
        """Hands the bag out again (it resumes its partial output); its outcome when it may not
        be."""
        bag, name = attempt.bag, self.names[attempt.worker]
        reason = f"{name} died while running it ({type(error).__name__})"
        if self.stopped:
            return BagOutcome(error=f"{reason}; stopped: --resume continues it", worker=name)
        if attempt.number >= MAX_ATTEMPTS:
            return BagOutcome(error=f"{reason} on attempt {attempt.number} of {MAX_ATTEMPTS}; "
                              "--resume continues it", worker=name)
        self.tally.say(f"fcclip-ros bag: {bag.name}: {reason}; trying again from its last "
                       f"checkpoint (attempt {attempt.number + 1} of {MAX_ATTEMPTS})")
        queue.appendleft((bag, attempt.number + 1))
        return None

    def _send_stop(self) -> None:
        if not self._stop_sent:
            self._stop_sent = True
            for worker in self.workers:
                worker.stop.remote()

    def _show_progress(self) -> None:
        try:
            frames = ray.get(self.board.snapshot.remote(), timeout=POLL_S * 5)
        except GetTimeoutError:
            return
        for index, done in frames.items():
            if index not in self._finished:
                self.tally.set(index, done)


def _last_line(error: Exception) -> str:
    lines = [line for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__
