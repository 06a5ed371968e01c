# The same targets serve developers and CI.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
CONFIG ?= examples/gateway.yaml
STAMP := $(VENV)/.installed

.PHONY: run test lint bench deps venv clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,dev]'
	touch $(STAMP)

venv: $(STAMP)

# Debian packages the tests need: Postfix (a real instance for the recipes, smtp-sink,
# smtp-source), swaks, miltertest (a second milter client), openssl (DKIM keys, test
# certificates), libmagic.
deps:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  missing=""; \
	  command -v smtp-sink >/dev/null || [ -x /usr/sbin/smtp-sink ] || missing="$$missing postfix"; \
	  command -v swaks >/dev/null || missing="$$missing swaks"; \
	  command -v miltertest >/dev/null || missing="$$missing miltertest"; \
	  command -v openssl >/dev/null || missing="$$missing openssl"; \
	  [ -e /usr/lib/x86_64-linux-gnu/libmagic.so.1 ] || [ -e /usr/lib/aarch64-linux-gnu/libmagic.so.1 ] || missing="$$missing libmagic1"; \
	  if [ -n "$$missing" ]; then \
	    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections; \
	    DEBIAN_FRONTEND=noninteractive apt-get update -q && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	  fi; \
	fi

run: $(STAMP)
	mkdir -p var
	$(BIN)/milter -c $(CONFIG) serve

test: deps $(STAMP)
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check milter tests bench
	$(BIN)/ruff format --check milter
	$(BIN)/mypy milter

bench: deps $(STAMP)
	$(BIN)/python -m bench.bench_inspect --rounds 300 --big
	$(BIN)/python -m bench.bench_policy --rounds 3000
	$(BIN)/python -m bench.bench_quarantine
	$(BIN)/python bench/run.py
	$(BIN)/python -m bench.bench_postfix --count 1000
	$(BIN)/python -m bench.bench_milter_codec --seconds 3

clean:
	rm -rf $(VENV) var build *.egg-info
