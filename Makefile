# The two commands of the quick start: `make run` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
export VENV PYTHON

.PHONY: install run test lint bench bench-quick clean

install:
	@scripts/bootstrap.sh

run: install
	cd examples/chat && ../../$(PY) manage.py migrate --noinput -v 0 && \
	  ../../$(VENV)/bin/cdaphne -b 127.0.0.1 -p 8000 chat_project.asgi:application

test: install
	$(PY) -m pytest -q tests

lint: install
	$(VENV)/bin/ruff check python tests examples

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
