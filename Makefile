# Conveyor: `make run` starts the stack on this machine, `make test` runs every test, `make bench`
# measures throughput and latency, `make soak` runs long with kills. Each sets up .venv first (and Debian's python3-venv if it is missing; `make test` also Debian's chromium).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
ARGS   ?=
# The suite runs on this many pytest-xdist workers, a test module to a worker (a module's stack fixture is
# shared by its tests); 0 runs it in this one process.
WORKERS ?= 2

.PHONY: run test bench soak lint venv clean chromium

venv: $(STAMP)

$(STAMP): pyproject.toml
	@if ! $(PYTHON) -c 'import ensurepip, venv' >/dev/null 2>&1; then \
		echo "python3-venv is missing: installing it from Debian"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq python3-venv; \
	fi
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

run: $(STAMP)
	$(BIN)/conveyor up $(ARGS)

# The suite starts hundreds of service processes: their bytecode is compiled once here, even where
# PYTHONDONTWRITEBYTECODE keeps each of them from writing it.
test: $(STAMP) chromium
	@$(BIN)/python -m compileall -q -j0 gateway receptionist registry scheduler handler logging_service shared >/dev/null
	$(BIN)/python -m pytest -n $(WORKERS) --dist loadfile $(ARGS)

# The dashboard's browser tests drive Debian's Chromium (never a downloaded browser). Without it, and
# unable to install it, they skip (or fail under CONVEYOR_REQUIRE_BACKENDS=1).
chromium:
	@if ! test -x /usr/bin/chromium; then \
		echo "chromium is missing (the dashboard's browser tests): installing it from Debian"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		{ $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium; } \
			|| echo "could not install chromium: the browser tests will be skipped"; \
	fi

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/conveyor bench $(ARGS)

# Not in CI: 10 minutes on the embedded default, then 10 on PostgreSQL + Redis with kills (see README).
soak: $(STAMP)
	$(BIN)/conveyor soak $(ARGS)

clean:
	rm -rf $(VENV) var .pytest_cache *.egg-info
