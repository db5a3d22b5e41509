"""The test folder's layout: test modules share code only through test/helpers/."""

from __future__ import annotations

import re

import pytest
from helpers.paths import HELPERS_DIR, TEST_DIR

pytestmark = pytest.mark.fast

# Also in code that tests hand to a subprocess as a string.
IMPORT_OF_A_TEST_MODULE = re.compile(r"^\s*(?:from|import)\s+(?:test_\w+|conftest)\b", re.M)


def test_no_test_module_or_helper_imports_a_test_module_or_conftest():
    offenders = [
        f"{path.relative_to(TEST_DIR)}: {match.group().strip()}"
        for path in sorted(TEST_DIR.rglob("*.py"))
        for match in IMPORT_OF_A_TEST_MODULE.finditer(path.read_text())
    ]
    assert offenders == []


def test_shared_helpers_sit_in_test_helpers_and_test_modules_directly_in_test():
    beside_the_tests = [path.name for path in TEST_DIR.glob("*.py")
                        if path.name != "conftest.py" and not path.name.startswith("test_")]
    assert beside_the_tests == [], "shared helpers belong in test/helpers/"
    folders = [path.name for path in TEST_DIR.iterdir()
               if path.is_dir() and path.name not in ("helpers", "__pycache__")]
    assert folders == [], "shared helpers belong in test/helpers/"
    assert (HELPERS_DIR / "__init__.py").is_file()
    assert list(HELPERS_DIR.rglob("test_*.py")) == [], "test modules belong directly in test/"
