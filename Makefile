# callgate: `make serve` runs the gateway, `make test` runs every check. Both start from a clean clone.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SYSTEM_PACKAGES := sip-tester baresip-core sox espeak-ng libopus0 postgresql chromium
SYSTEM_COMMANDS := sipp baresip sox espeak-ng chromium

.PHONY: serve test lint typecheck pytest bench system-deps clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[local,llama,test]'
	touch $(STAMP)

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
pytest: $(STAMP) system-deps
	$(BIN)/python -m pytest -q -m timing
	$(BIN)/python -m pytest -q -m "not timing"

test: system-deps lint typecheck pytest

bench: $(STAMP) system-deps
	$(BIN)/python -m bench.setup_rate
	$(BIN)/python -m bench.capacity
	$(BIN)/python -m bench.voice_latency

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
