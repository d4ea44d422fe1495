# callgate: `make serve` runs the gateway, `make test` runs every check. Both start from a clean clone.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SYSTEM_PACKAGES := sip-tester baresip-core sox espeak-ng libopus0 kamailio postgresql chromium redis-server
SYSTEM_COMMANDS := sipp baresip sox espeak-ng kamailio chromium redis-server

.PHONY: serve test lint typecheck pytest bench system-deps clean

# llama.cpp has no binary wheel on PyPI: pip compiles it, and left to itself tunes it to the
# build machine's own CPU (a "native" build); such a build crashed on an AVX-512 Xeon. This baseline
# (x86-64-v3: AVX2, FMA, F16C, BMI2; no AVX-512), the one verified on that Xeon, runs on any
# x86-64 CPU of the last decade; the llm worker refuses older ones with a clear message. The
# wheel is built once per version and flags and kept outside the clone, never taken from
# pip's cache, which cannot tell a native build from this one. The version is pyproject's pin.
# pipecat-ai: the Smart Turn weights come from its wheel, and tests/interop drives it.
PIPECAT_PIN      := pipecat-ai==1.14.0
LLAMA_VERSION    := $(shell sed -n 's/.*"llama-cpp-python\[server\]==\([0-9.]*\)".*/\1/p' pyproject.toml)
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX512=OFF -DLLAVA_BUILD=OFF
LLAMA_WHEELS     := $(HOME)/.cache/callgate/llama-cpp-python/$(LLAMA_VERSION)-$(shell printf '%s' '$(LLAMA_CMAKE_ARGS)' | sha1sum | cut -c1-10)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	@if ! ls $(LLAMA_WHEELS)/llama_cpp_python-*.whl >/dev/null 2>&1; then \
	   echo "building llama.cpp $(LLAMA_VERSION) for a portable x86-64 baseline (once; ~5 min on 2 cores)"; \
	   CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/pip wheel --quiet --no-deps --no-cache-dir \
	     -w $(LLAMA_WHEELS) 'llama-cpp-python==$(LLAMA_VERSION)'; \
	 fi
	$(BIN)/pip install --quiet --force-reinstall --no-deps $(LLAMA_WHEELS)/llama_cpp_python-*.whl
	$(BIN)/pip install --quiet -e '.[local,llama,test]'
	# The Smart Turn end-of-turn weights (BSD-2-Clause) ship only inside the pipecat-ai wheel.
	# Only that file is read (engines/turn_model.py), and pipecat's own dependencies pin soxr
	# below what media/resample.py needs, so the wheel is installed without them.
	$(BIN)/pip install --quiet --no-deps '$(PIPECAT_PIN)'
	touch $(STAMP)

# Pipecat, the third agent framework of tests/interop, in an environment of its own:
# pipecat-ai pins soxr~=1.0.0 and callgate needs soxr>=1.1. Its test runs it as a client.
PIPECAT_VENV := .venv-pipecat
$(PIPECAT_VENV)/.installed: Makefile
	$(PYTHON) -m venv $(PIPECAT_VENV)
	$(PIPECAT_VENV)/bin/pip install --quiet --upgrade pip
	$(PIPECAT_VENV)/bin/pip install --quiet '$(PIPECAT_PIN)'
	touch $@

serve: $(STAMP)
	$(BIN)/callgate serve

# The SIP and media peers the end-to-end tests call, and the PostgreSQL server and browser
# the record and console tests drive: installed from Debian when missing.
system-deps:
	@missing=""; for c in $(SYSTEM_COMMANDS); do command -v $$c >/dev/null || missing=yes; done; \
	 ldconfig -p | grep -q libopus.so.0 || missing=yes; \
	 ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || missing=yes; \
	 if [ -n "$$missing" ]; then \
	   SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	   $$SUDO apt-get update -qq && \
	   DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $(SYSTEM_PACKAGES); \
	 fi

lint: $(STAMP)
	$(BIN)/ruff check src tests $(wildcard bench)

typecheck: $(STAMP)
	$(BIN)/mypy --strict src

# Timing-precision tests first, in a process of their own; then everything else.
pytest: $(STAMP) $(PIPECAT_VENV)/.installed system-deps
	$(BIN)/python -m pytest -q -m timing
	$(BIN)/python -m pytest -q -m "not timing"

test: system-deps lint typecheck pytest

bench: $(STAMP) system-deps
	$(BIN)/python -m bench.setup_rate
	$(BIN)/python -m bench.capacity
	$(BIN)/python -m bench.voice_latency
	$(BIN)/python -m bench.cluster
	$(BIN)/python -m bench.observe_cost

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
