# The two commands of the quick start: `make run` and `make test`.
# Developer targets: `make lint`, `make test-asan`, `make fuzz`,
# `make fuzz-smoke` (these install their extra tools with scripts/devtools.sh).
VENV ?= .venv
PY := $(VENV)/bin/python
FUZZ_SECONDS ?= 60
FUZZ_SMOKE_SECONDS ?= 20
export VENV PYTHON FUZZ_SECONDS FUZZ_SMOKE_SECONDS

.PHONY: install run test test-py312 test-asyncio lint test-asan fuzz-build fuzz fuzz-smoke fuzz-seeds bench bench-quick clean

install:
	@scripts/bootstrap.sh

run: install
	cd examples/chat && ../../$(PY) manage.py migrate --noinput -v 0 && \
	  ../../$(VENV)/bin/cdaphne -b 127.0.0.1 -p 8000 chat_project.asgi:application

test: install
	$(PY) -m pytest -q tests

# The part of the suite that follows the Python version (the loop, its hops
# and timers, receive/send, CPython's, asgiref's and Django's own suites on
# our loop, the chat example) on CPython 3.12 in .venv-py312, when the
# machine has a 3.12 (CI: make test runs 3.13, its second run 3.11).
PY312 ?= $(firstword $(wildcard $(HOME)/.pyenv/versions/3.12*/bin/python3) $(shell command -v python3.12))
PY312_TESTS := tests/test_asyncio_suite.py tests/test_asyncio_apis.py tests/test_loop.py \
	tests/test_loop_hops.py tests/test_loop_methods.py tests/test_loop_sched.py \
	tests/test_loop_sigint.py tests/test_loop_suites.py tests/test_loop_timer_edits.py \
	tests/test_executor_hop.py tests/test_messages.py tests/test_receive_future.py \
	tests/test_receive_reuse.py tests/test_app_styles.py tests/test_chat_example.py
test-py312:
	@if [ -z "$(PY312)" ]; then echo "test-py312: no CPython 3.12 on this machine: not run"; exit 0; fi; \
	$(MAKE) --no-print-directory install VENV=.venv-py312 PYTHON=$(PY312) && \
	.venv-py312/bin/python -m pytest -q $(PY312_TESTS)

# CPython's test.test_asyncio on cdaphne's loop, one summary (make test runs
# it too, one pytest test per module): tests/asyncio_suite/run.py --help.
test-asyncio: install
	$(PY) tests/asyncio_suite/run.py

lint: install
	@scripts/devtools.sh lint
	$(VENV)/bin/ruff check python tests examples fuzz
	$(VENV)/bin/mypy
	clang-format-16 --dry-run -Werror csrc/*.c csrc/*.h fuzz/*.c

# The whole suite on an ASan+UBSan build of the extension (server
# subprocesses inherit it); the normal build is restored afterwards.
test-asan: install
	PY=$(PY) scripts/test-asan.sh

fuzz-build: install
	@scripts/devtools.sh fuzz
	PY=$(PY) fuzz/build.sh

# FUZZ_SECONDS per target, new coverage merged into fuzz/corpus/<target>.
fuzz: fuzz-build
	fuzz/run.sh fuzz

# CI: each target over its corpus, then FUZZ_SMOKE_SECONDS of new inputs.
fuzz-smoke: fuzz-build
	fuzz/run.sh smoke

fuzz-seeds: install
	$(PY) fuzz/seeds.py

bench: install
	$(PY) -m bench --full

bench-quick: install
	$(PY) -m bench --quick

# The sdist and one repaired wheel per CPython >= 3.11 found, into dist/
# (log with `auditwheel show`: build/dist.log).
.PHONY: dist
dist: install
	scripts/dist.sh

clean:
	rm -rf build python/cdaphne/*.so $(VENV)
