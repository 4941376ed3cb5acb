# The two commands a newcomer needs: `make book` and `make test`. Both create .venv and install
# the pinned dependencies first, so they work on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install book test test-fast bench clean

install: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	# Build matplotlib's font cache now, so that its one-off notice never lands in a chapter's output.
	MPLBACKEND=Agg $(PY) -c "import matplotlib.pyplot"
	touch $@

book: install
	$(VENV)/bin/jupyter-book build --warningiserror --keep-going .
	@echo "book written to _build/html/index.html"

test: install
	$(PY) -m pytest

test-fast: install
	$(PY) -m pytest -m "not slow and not notebooks and not browser"

bench: install
	$(VENV)/bin/diffranb bench sim

clean:
	rm -rf _build .pytest_cache
