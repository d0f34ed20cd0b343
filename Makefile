VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast bench ablations clean

$(STAMP): setup.py requirements.txt Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet -e ".[test,wandb]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash train_scripts/train_shapes_cpu.sh

# Two workers: the tests are single-threaded (conftest), the machine has two cores. The
# slowest tests are listed at the end: they are what keeps the suite under 15 minutes or not.
test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadgroup --durations=15 tests

# The unit tier: everything but the tests conftest.py marks slow (multi-process, SLURM, full runs).
test-fast: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadgroup -m "not slow" tests

bench: $(STAMP)
	$(PY) bench/step_overhead.py

ablations: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m fastvideo_grpo.ablate --output outputs/ablations

# What the demo regenerates (the tiny model folder and its embeddings); never a training
# run's folder or checkpoints: outputs/ is also where the flagship configs write their runs.
clean:
	rm -rf outputs/tiny_hunyuan outputs/tiny_embeddings .pytest_cache
