"""bench/gpu_check.py cannot reach a GPU here; its dry run (--device cpu) drives the same code:
engines against a CPU fp32 reference on real photos, agreement verdicts, timing, exit status."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).parent.parent / "bench" / "gpu_check.py"


def test_dry_run_reports_agreement_per_variant_and_fails_on_disagreement(tmp_path):
    # bf16 cannot share 100.1 % of pixels with fp32: that variant must be reported and fail the
    # run, while fp32 and ONNX Runtime agree.
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--models", "tiny", "--short-sides",
         "160", "--modes", "panoptic", "--frames", "1", "--fp16-min-pixels", "100.1",
         "--cache-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=500,
    )
    rows = {line.split("|")[1].strip(): line for line in run.stdout.splitlines()
            if line.startswith("| ") and not line.startswith("| variant")}
    assert run.returncode == 1, run.stdout + run.stderr
    assert set(rows) == {"torch fp32", "torch bf16", "onnxruntime CPU"}
    assert "| 100.000 | 4/4 |" in rows["torch fp32"] and rows["torch fp32"].endswith("| ok |")
    assert rows["onnxruntime CPU"].endswith("| ok |") and "| 4/4 |" in rows["onnxruntime CPU"]
    assert "DISAGREE" in rows["torch bf16"] and "under 100.1 %" in rows["torch bf16"]
    assert "1 disagreement(s)" in run.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: the check runs for real")
def test_without_a_gpu_it_says_so_and_exits_2():
    run = subprocess.run([sys.executable, str(SCRIPT), "--device", "cuda:0"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "no CUDA device" in run.stdout
