# The same targets serve developers and CI.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
CONFIG ?= examples/gateway.yaml
STAMP := $(VENV)/.installed

.PHONY: run test lint bench deps venv clean wheel deb

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,dev]'
	touch $(STAMP)

venv: $(STAMP)

# Debian packages the tests need: Postfix (a real instance for the recipes, smtp-sink,
# smtp-source), swaks, miltertest (a second milter client), openssl (DKIM keys, test
# certificates), libmagic, systemd (systemd-analyze scores and verifies the units),
# Debian's python3.11 (the interpreter of the Debian package's environment), chromium
# (the review UI's browser tests drive it through Playwright; no browser download),
# unrar-free (the inspector opens RAR archives with it), p7zip-full and LibreOffice Writer
# (the tests make real 7z, .doc and .rtf fixtures with them).
deps:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  missing=""; \
	  command -v smtp-sink >/dev/null || [ -x /usr/sbin/smtp-sink ] || missing="$$missing postfix"; \
	  command -v swaks >/dev/null || missing="$$missing swaks"; \
	  command -v miltertest >/dev/null || missing="$$missing miltertest"; \
	  command -v openssl >/dev/null || missing="$$missing openssl"; \
	  command -v promtool >/dev/null || missing="$$missing prometheus"; \
	  [ -e /usr/lib/x86_64-linux-gnu/libmagic.so.1 ] || [ -e /usr/lib/aarch64-linux-gnu/libmagic.so.1 ] || missing="$$missing libmagic1"; \
	  command -v systemd-analyze >/dev/null || missing="$$missing systemd"; \
	  [ -x /usr/bin/python3.11 ] || missing="$$missing python3.11"; \
	  [ -x /usr/bin/chromium ] || missing="$$missing chromium"; \
	  [ -e /usr/share/tesseract-ocr/5/tessdata/ind.traineddata ] || missing="$$missing tesseract-ocr tesseract-ocr-ind tesseract-ocr-eng"; \
	  command -v qpdf >/dev/null && command -v img2pdf >/dev/null && [ -e /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || missing="$$missing qpdf img2pdf fonts-dejavu-core"; \
	  command -v unrar-free >/dev/null && command -v 7z >/dev/null && command -v soffice >/dev/null || missing="$$missing unrar-free p7zip-full libreoffice-writer-nogui"; \
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
	$(BIN)/python -m bench.bench_detection
	$(BIN)/python -m bench.bench_ocr --pages 20 --compare-pages 5
	$(BIN)/python -m bench.bench_policy --rounds 3000
	$(BIN)/python -m bench.bench_quarantine
	$(BIN)/python bench/run.py
	$(BIN)/python -m bench.bench_postfix --count 1000
	$(BIN)/python -m bench.bench_milter_codec --seconds 3

# The wheel: code, the shipped policy and the templates `milter init` writes.
wheel: $(STAMP)
	$(BIN)/pip wheel -q --no-deps -w build/dist .

# build/milter_VERSION_ARCH.deb: a venv of Debian's python3.11 under /opt/milter, the
# units, sysusers.d and tmpfiles.d (packaging/build-deb.sh says why not dh-virtualenv).
deb: $(STAMP)
	PIP=$(BIN)/pip packaging/build-deb.sh build

clean:
	rm -rf $(VENV) var build *.egg-info
