"""Many bags in one `fcclip-ros bag` command: which output each input gets, what `--resume` does
with each, the bags run one after another in this process, and the summary of a run.

The unit of work is a whole bag: each keeps the guarantees of one run (complete only when every
frame was processed, else resumable). fleet_ray runs the same plan on Ray workers.
"""

from __future__ import annotations

import glob
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from fcclip_ros.engine import Engine
from fcclip_ros.ros.bag.job import BagCompleteError, BagJob, BagOptions, BagReport
from fcclip_ros.ros.bag.reader import BagError
from fcclip_ros.ros.bag.resume import NothingToResumeError, discard_killed_run

GLOB_CHARACTERS = "*?["


def expand_inputs(given: list[Path]) -> list[Path]:
    """The inputs as given, a quoted glob pattern (that names no existing path) replaced by what
    it matches, in sorted order."""
    inputs: list[Path] = []
    for path in given:
        pattern = str(path)
        if path.exists() or not any(character in pattern for character in GLOB_CHARACTERS):
            inputs.append(path)
            continue
        matches = sorted(glob.glob(pattern))
        if not matches:
            raise BagError(f"{pattern}: matches no file or folder")
        inputs += [Path(match) for match in matches]
    return inputs


def output_name(source: Path) -> str:
    """An input's output folder name: the file's stem (drive_0.mcap: drive_0), or the folder's
    name (drive/: drive)."""
    return source.stem if source.suffix == ".mcap" else source.name


def output_folders(inputs: list[Path], out: Path) -> list[Path]:
    """One input: OUT itself. Several: OUT/<output name> each, refused when two inputs would
    share one (the same path twice, or the same name in different folders)."""
    if len(inputs) == 1:
        return [out]
    taken: dict[str, Path] = {}
    for source in inputs:
        name = output_name(source)
        if name in taken:
            same = taken[name].resolve() == source.resolve()
            raise BagError(f"{taken[name]} and {source} " + (
                "are the same input" if same else
                f"would both write {out / name}: rename one, or run them with different --out"))
        taken[name] = source
    return [out / output_name(source) for source in inputs]


def open_job(source: Path, out: Path, options: BagOptions, settings: dict[str, Any],
             resume: bool) -> BagJob:
    """The job of one bag. `resume`: continue what `out` holds, or start afresh when it holds
    nothing to continue from (absent, or a run killed before its first checkpoint); raises
    BagCompleteError when it is already complete with the same input and settings."""
    if resume and out.exists():
        try:
            return BagJob(source, out, options, settings, resume=True)
        except NothingToResumeError:
            discard_killed_run(out)
            out.rmdir()  # OSError when anything else is there: not ours to remove
    return BagJob(source, out, options, settings)


@dataclass
class PlannedBag:
    """One input of the run and what happens to it."""
    index: int
    source: Path
    out: Path
    frames_total: int = 0
    complete: bool = False  # already complete (--resume): nothing to do
    job: BagJob | None = None  # made while planning; the run in this process uses it

    @property
    def name(self) -> str:
        return self.out.name


def plan(inputs: list[Path], out: Path, options: BagOptions, settings: dict[str, Any],
         resume: bool) -> list[PlannedBag]:
    """Every input checked and its output decided before any work (BagError names the bag)."""
    planned = []
    for index, (source, folder) in enumerate(zip(inputs, output_folders(inputs, out),
                                                 strict=True)):
        bag = PlannedBag(index, source, folder)
        try:
            bag.job = open_job(source, folder, options, settings, resume)
        except BagCompleteError:
            bag.complete = True
        except BagError as error:
            raise BagError(f"{source}: {error}") from error
        else:
            bag.frames_total = bag.job.report.frames_total
        planned.append(bag)
    return planned


@dataclass
class BagOutcome:
    """How one bag's run ended (the last attempt), where it ran and how long it took."""
    frames_total: int = 0
    frames_done: int = 0
    frames_failed: int = 0
    frames_processed: int = 0  # by this attempt (not copied from an earlier run)
    seconds: float = 0.0  # all attempts
    busy_seconds: float = 0.0  # the last attempt's time in the job (no model loading)
    attempts: int = 1
    worker: str = "this process"
    node: str = "-"
    error: str = ""  # why it failed (resumable); "" when it ran to its end or was stopped
    interrupted: bool = False
    failures: list[str] = field(default_factory=list)
    depth_notes: list[str] = field(default_factory=list)
    damaged: dict[str, int] = field(default_factory=dict)
    recovered: str = ""

    @classmethod
    def of(cls, report: BagReport, frames_before: int, busy_seconds: float,
           **where: Any) -> BagOutcome:
        return cls(frames_total=report.frames_total, frames_done=report.frames_done,
                   frames_failed=report.frames_failed,
                   frames_processed=report.frames_done - frames_before,
                   seconds=busy_seconds, busy_seconds=busy_seconds,
                   interrupted=report.interrupted, failures=list(report.failures),
                   depth_notes=list(report.depth_notes), damaged=dict(report.damaged), **where)

    @property
    def status(self) -> str:
        if self.error:
            return "failed (resumable)"
        if self.interrupted:
            return "interrupted (resumable)"
        return "complete"


def run_job(job: BagJob, engine: Engine, on_frame: Callable[[int], None],
            **where: Any) -> BagOutcome:
    """Runs one bag's job to its end, a stop, or a failure (kept in the outcome)."""
    before = job.report.frames_done
    started = time.monotonic()
    try:
        report = job.run(engine, on_frame=on_frame)
    except BagError as error:
        return BagOutcome(frames_total=job.report.frames_total, frames_done=job.report.frames_done,
                          seconds=time.monotonic() - started, error=str(error), **where)
    return BagOutcome.of(report, before, time.monotonic() - started, recovered=job.recovered,
                         **where)


class FrameTally:
    """The frames done per bag, summed into one progress bar on stderr, shown from `start` on (a
    bag's count may go down when a retried bag resumes from its last checkpoint)."""

    def __init__(self, description: str) -> None:
        self.description = description
        self.bar: tqdm | None = None
        self.done: dict[int, int] = {}

    def start(self, total: int) -> None:
        self.bar = tqdm(total=total, unit="frame", desc=self.description, file=sys.stderr,
                        dynamic_ncols=True)

    def set(self, index: int, frames_done: int) -> None:
        self.done[index] = frames_done
        if self.bar is not None:
            self.bar.update(sum(self.done.values()) - self.bar.n)

    def say(self, line: str) -> None:
        """A line on stderr, above the bar."""
        if self.bar is None:
            print(line, file=sys.stderr)
        else:
            self.bar.write(line, file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class LocalRun:
    """The bags one after another in this process with one engine. `stop()` (safe from a signal
    handler) lets the bag in progress finish its file and starts no other."""

    def __init__(self, engine: Engine | None, tally: FrameTally) -> None:
        self.engine = engine
        self.tally = tally
        self.stopped = False
        self._job: BagJob | None = None

    def stop(self) -> None:
        self.stopped = True
        if self._job is not None:
            self._job.stop()

    def run(self, bags: list[PlannedBag]) -> dict[int, BagOutcome]:
        outcomes: dict[int, BagOutcome] = {}
        for bag in bags:
            if bag.complete or self.stopped:
                continue
            self._job = bag.job
            self.tally.set(bag.index, bag.job.report.frames_done)
            outcomes[bag.index] = run_job(bag.job, self.engine,
                                          lambda done, i=bag.index: self.tally.set(i, done))
        return outcomes


def summary(bags: list[PlannedBag], outcomes: dict[int, BagOutcome]) -> list[str]:
    """The table printed at the end: per bag its frames, failures, seconds and status; per
    worker its frames, frames/s and the node it ran on."""
    width = max([len(bag.name) for bag in bags] + [3])
    lines = [f"{'bag':<{width}}  {'frames':>11}  {'failed':>6}  {'seconds':>8}  {'tries':>5}  "
             f"status"]
    for bag in bags:
        outcome = outcomes.get(bag.index)
        if bag.complete:
            row = f"{'-':>11}  {'-':>6}  {'-':>8}  {'-':>5}  already complete"
        elif outcome is None:
            row = f"{f'0/{bag.frames_total}':>11}  {'-':>6}  {'-':>8}  {'-':>5}  not started"
        else:
            frames = f"{outcome.frames_done}/{outcome.frames_total}"
            row = (f"{frames:>11}  "
                   f"{outcome.frames_failed:>6}  {outcome.seconds:>8.1f}  {outcome.attempts:>5}  "
                   f"{outcome.status}")
        lines.append(f"{bag.name:<{width}}  {row}")
    workers: dict[tuple[str, str], list[float]] = {}
    for outcome in outcomes.values():
        frames_and_time = workers.setdefault((outcome.worker, outcome.node), [0, 0.0])
        frames_and_time[0] += outcome.frames_processed
        frames_and_time[1] += outcome.busy_seconds
    if not workers:
        return lines
    worker_width = max([len(worker) for worker, _ in workers] + [6])
    lines.append(f"{'worker':<{worker_width}}  {'frames':>6}  {'frames/s':>8}  node")
    for (worker, node), (frames, seconds) in sorted(workers.items()):
        rate = frames / seconds if seconds else 0.0
        lines.append(f"{worker:<{worker_width}}  {frames:>6}  {rate:>8.2f}  {node}")
    return lines


def notes(bags: list[PlannedBag], outcomes: dict[int, BagOutcome]) -> list[str]:
    """What each bag's run had to say: recovery, frames not segmented, no 3D, damage, why it
    failed."""
    lines = []
    for bag in bags:
        outcome = outcomes.get(bag.index)
        if outcome is None:
            continue
        prefix = f"{bag.name}: "
        if outcome.recovered:
            lines.append(prefix + outcome.recovered)
        lines += [f"{prefix}not segmented: {reason}" for reason in outcome.failures]
        lines += [f"{prefix}no 3D: {reason}" for reason in outcome.depth_notes]
        if outcome.frames_failed > len(outcome.failures):
            lines.append(f"{prefix}... {outcome.frames_failed - len(outcome.failures)} more "
                         "frames not segmented")
        lines += [f"{prefix}damaged input skipped: {lost} messages of {topic}"
                  for topic, lost in sorted(outcome.damaged.items())]
        if outcome.error:
            lines.append(prefix + outcome.error)
    return lines


def complete(bags: list[PlannedBag], outcomes: dict[int, BagOutcome]) -> int:
    """How many of the bags are complete now (before this run, or by it)."""
    return sum(bag.complete or (bag.index in outcomes and outcomes[bag.index].status == "complete")
               for bag in bags)


def exit_status(bags: list[PlannedBag], outcomes: dict[int, BagOutcome], stopped: bool) -> int:
    """130 stopped before every bag was complete (each resumable), 2 a bag failed (resumable),
    1 all done but some frames were not segmented or damaged input was skipped, 0 all done."""
    if stopped and complete(bags, outcomes) < len(bags):
        return 130
    if any(outcome.error for outcome in outcomes.values()):
        return 2
    if any(outcome.frames_failed or outcome.damaged for outcome in outcomes.values()):
        return 1
    return 0
