# The two commands of the README, and a few conveniences. Every target sets up first
# (scripts/setup.sh is quick when nothing changed).
.PHONY: setup test test-fast demo lint bench

setup:
	@bash scripts/setup.sh

test: setup
	.venv/bin/python -m pytest

# Under 2 minutes on a 2-core CPU: the quick unit-test modules (marked fast) and ruff.
test-fast: setup
	.venv/bin/python -m pytest -m "fast and not slow"
	.venv/bin/python -m ruff check .

demo: setup
	@bash scripts/demo.sh

lint: setup
	.venv/bin/python -m ruff check .

bench: setup
	.venv/bin/python bench/bench_engine.py
	.venv/bin/python bench/bench_vocabulary.py
	.venv/bin/python bench/bench_node.py
	.venv/bin/python bench/bench_3d.py
	.venv/bin/python bench/bench_bag.py
