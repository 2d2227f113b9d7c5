# Two entry points for a fresh clone (see README): `make demo` and `make test`; `make test-fast` runs the
# tests that need no Ray (the method, the data, the configs, the manifests) in a few minutes.
# Both create or refresh the local virtual environment .venv first.
VENV  := .venv
PY    := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test test-fast venv

venv: $(STAMP)

# torch first and pinned: it is the CPU build on this machine's disk, and with it installed
# no other dependency can pull a multi-GB CUDA build.
$(STAMP): pyproject.toml Makefile
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[cpu,test,bench]'
	$(PY) -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/cu-scale demo

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not ray"
