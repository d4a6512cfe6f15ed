# Two commands: `make run` and `make test`. Both build .venv from nothing when it is missing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run demo test stress stress-random stress-load lint bench bench-ts clean ts-client ts-types

RUN_STAMP := $(VENV)/.installed-run

# `make run`: the package and what running it needs, nothing else: its base dependencies and
# the lab extra (JupyterLab at /lab of the service, same server, same token).
$(RUN_STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[lab]'
	touch $(RUN_STAMP)

# `make test` and the rest: the test tools too ('.[test]' includes the lab extra, the qntx
# extra (grpcio, grpcio-tools: QNTX's plugin and its stubs) and Playwright).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# Enterprise Gateway 3 pins jupyter_client < 7 and jupyter_server < 2: the tests run it from a
# venv of its own, as a gateway host that has never seen kernel-bridge (tests/gateways.py);
# its kernels get the libraries the core tests use.
EG_STAMP := $(VENV)/eg/.installed
$(EG_STAMP): | $(STAMP)
	test -x $(VENV)/eg/bin/python || $(PY) -m venv $(VENV)/eg
	$(VENV)/eg/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/eg/bin/python -m pip install --quiet 'jupyter-enterprise-gateway>=3.2,<4' 'ipykernel>=6.29' pandas matplotlib
	touch $(EG_STAMP)

# The JupyterLab browser test (tests/lab) drives Debian's Chromium through Playwright, never a
# browser Playwright downloads: installed here when missing, as root on Debian (CI, this kind
# of machine); elsewhere make stops and names the package. CHROMIUM=/path/to/chrome make test
# points the test at another Chromium.
CHROMIUM ?= /usr/bin/chromium
$(CHROMIUM):
	@if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		echo "installing Debian's chromium for the JupyterLab browser test"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	else \
		echo "make test needs Chromium at $(CHROMIUM) for the JupyterLab browser test (tests/lab):" >&2; \
		echo "  Debian/Ubuntu: sudo apt-get install chromium  (Fedora: sudo dnf install chromium)" >&2; \
		echo "  or CHROMIUM=/path/to/chromium make test" >&2; \
		exit 1; \
	fi
	@test -x $(CHROMIUM) || { echo "$(CHROMIUM) is still missing after the install" >&2; exit 1; }

KB := $(BIN)/kernel-bridge
TOKEN := $(VENV)/token
PORT ?= 9000

# The token lives in a private file, not on a command line where `ps` would show it.
$(TOKEN): | $(RUN_STAMP)
	umask 077 && $(BIN)/python -c 'import secrets; print(secrets.token_hex(24))' > $(TOKEN)

# The HTTP service on http://127.0.0.1:$(PORT)/ until Ctrl-C; the README's curl lines call it.
run: $(RUN_STAMP) $(TOKEN)
	JUPYTER_TOKEN_FILE=$(TOKEN) $(KB) serve --port $(PORT)

# The command line, call by call.
demo: $(RUN_STAMP)
	@echo '== an execute: stdout and a returned value'
	$(KB) exec 'import math; print("computing..."); return {"tau": round(2 * math.pi, 6)}'
	@echo '== an evaluate'
	$(KB) eval '1 + 2 * 3'
	@echo '== a rich MIME result (the value travels as every MIME type IPython gives)'
	$(KB) exec 'from IPython.display import HTML; return HTML("<b>bold</b>")' --json | head -25
	@echo '== an error: exit status 1, with the traceback'
	-$(KB) exec 'items = [1, 2, 3]; items[10]'
	-$(KB) eval 'undefined_name + 1'
	@echo '== a timeout that really interrupts, even code that swallows KeyboardInterrupt: exit status 2'
	-printf 'while True:\n    try:\n        pass\n    except KeyboardInterrupt:\n        pass\n' | $(KB) exec - --timeout 2

lint: $(STAMP)
	$(BIN)/ruff check bridge kernels tests bench
	$(BIN)/ruff format --check bridge kernels tests bench
	$(BIN)/mypy

# The TypeScript client (clients/typescript): its npm packages (TypeScript, and Bun itself as a
# devDependency), then the build to dist/ (the tests run the built files under Node and Bun).
TS := clients/typescript
TS_STAMP := $(TS)/node_modules/.installed
$(TS_STAMP): $(TS)/package.json $(TS)/package-lock.json
	cd $(TS) && npm ci --no-audit --no-fund
	touch $(TS_STAMP)

ts-client: $(TS_STAMP)
	cd $(TS) && node_modules/.bin/tsc -p tsconfig.json && node_modules/.bin/tsc -p tsconfig.bench.json

# The contract, regenerated after a change to the service's models or routes: its OpenAPI
# document (python -m bridge.service: from the Python models, no server), then the TypeScript
# client's types generated from it by openapi-typescript (the `types` script of package.json).
# Both are committed; tests/clients/test_generated_types.py fails when either is stale.
ts-types: $(STAMP) $(TS_STAMP)
	$(BIN)/python -m bridge.service > $(TS)/openapi.json
	cd $(TS) && npm run --silent types

test: lint $(EG_STAMP) $(CHROMIUM) ts-client
	KERNEL_BRIDGE_CHROMIUM=$(CHROMIUM) $(BIN)/python -m pytest

# The randomized concurrency test (tests/server/test_server_random.py) with a random seed and
# for longer than `make test` gives it: KB_RANDOM_SEED=<seed> make stress replays a failure
# (the test prints its seed), KB_RANDOM_STEPS / KB_RANDOM_SECONDS set its length.
KB_RANDOM_STEPS ?= 400
KB_RANDOM_SECONDS ?= 600
stress: stress-random stress-load

stress-random: $(STAMP)
	KB_RANDOM_SEED=$${KB_RANDOM_SEED:-$$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')} \
	KB_RANDOM_STEPS=$(KB_RANDOM_STEPS) KB_RANDOM_SECONDS=$(KB_RANDOM_SECONDS) \
	$(BIN)/python -m pytest tests/server/test_server_random.py -p no:randomly -s

bench: $(STAMP)
	$(BIN)/python bench/kernel_start.py
	$(BIN)/python bench/execute.py
	$(BIN)/python bench/files.py
	$(BIN)/python bench/gateway.py
	$(BIN)/python bench/notebooks.py
	$(BIN)/python bench/http_service.py
	$(BIN)/python bench/http_in_process.py
	$(BIN)/python bench/backend.py
	$(BIN)/python bench/qntx.py
	$(BIN)/python bench/load.py --duration 12 --soak 60 --backends 20 --all
	$(MAKE) bench-ts

# Load as issue 20 asks (needs wrk: Debian's `wrk`): 60 s per concurrency level, a 10-minute
# mixed soak and 100 backends alive; about 20 minutes. The figures go in docs/performance.md.
stress-load: $(STAMP)
	@command -v wrk >/dev/null || { echo "make stress needs wrk (Debian: apt-get install wrk)" >&2; exit 1; }
	$(BIN)/python bench/load.py --duration 60 --soak 600 --backends 100 --all

# The TypeScript client against a raw fetch of the same routes, under Bun and under Node.
bench-ts: $(STAMP) ts-client
	KERNEL_BRIDGE_PYTHON=$(abspath $(BIN)/python) $(TS)/node_modules/.bin/bun bench/ts_client.ts
	KERNEL_BRIDGE_PYTHON=$(abspath $(BIN)/python) node $(TS)/dist/bench/ts_client.js

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache $(TS)/node_modules $(TS)/dist
