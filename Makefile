# Developer shortcuts. CI (.ci/run) runs `lint` and the README's test command on a clean clone.
PY ?= python
.PHONY: install lint fmt test test-all bench-smoke

install:
	$(PY) -m pip install torch==2.13.0 -e ".[test]"

lint:
	ruff check .

fmt:
	ruff check --fix .

test:
	$(PY) -m pytest -q tests

test-all:
	$(PY) -m pytest -q tests -m "slow or not slow"

bench-smoke:
	OMP_NUM_THREADS=1 $(PY) benchmarks/proxy.py --name smoke --steps 4 --pool-size 16 --n 2 --ft-n 1 --ft-steps 2 \
		--test-n 200 --calib-batches 1 --threads 1 --hidden 16 --layers 1 --rank 4 --runs /tmp/ghn-smoke \
		--out /tmp/ghn-smoke/smoke.json
