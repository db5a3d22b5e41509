"""Where the repository's files are."""

from __future__ import annotations

from pathlib import Path

HELPERS_DIR = Path(__file__).resolve().parent
TEST_DIR = HELPERS_DIR.parent
ROOT = TEST_DIR.parent
PARAMS_FILE = ROOT / "config" / "segment.yaml"
