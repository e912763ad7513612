# polymodal: `make demo` and `make test` are all a fresh machine needs.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup demo test test-all lint bench clean chromium speech

setup: $(STAMP)

# Reinstall only when the project metadata changes; the stamp keeps `make setup` fast and idempotent.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: setup
	$(PY) -m polymodal demo

# The browser test drives Debian's chromium (never a browser downloaded by Playwright). This target
# never fails: without chromium, tests/test_browser.py skips and says why.
chromium:
	@if [ -x /usr/bin/chromium ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing chromium for the browser test (apt-get)"; \
		apt-get install -y -qq chromium >/dev/null 2>&1 || \
		{ apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq chromium >/dev/null 2>&1; } || \
		echo "chromium: apt-get failed; tests/test_browser.py will skip"; \
	else echo "chromium: /usr/bin/chromium missing (sudo apt-get install -y chromium); tests/test_browser.py will skip"; fi

# Spoken Shapes World synthesizes with Debian's espeak-ng (sox beside it for looking at audio). This target
# never fails: without espeak-ng, the speech tests (tests/test_speech_data.py) skip and say why.
speech:
	@if command -v espeak-ng >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing espeak-ng and sox for the speech tests (apt-get)"; \
		apt-get install -y -qq espeak-ng sox >/dev/null 2>&1 || \
		{ apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq espeak-ng sox >/dev/null 2>&1; } || \
		echo "espeak-ng: apt-get failed; the speech tests will skip"; \
	else echo "espeak-ng: missing (sudo apt-get install -y espeak-ng sox); the speech tests will skip"; fi

test: setup chromium speech
	$(PY) -m pytest -q -m "not slow"

test-all: setup chromium speech
	$(PY) -m pytest -q

lint: setup
	$(PY) -m ruff check src tests bench docs

# Speed benchmarks (docs/benchmarks.md, plots in docs/), a few minutes each, one at a time. The long
# experiments (bench/transfer.py, bench/caption_table.py) are run by hand; their commands are in docs/.
# bench/gpu.sh needs a CUDA GPU and is run by hand there.
BENCHES := bench/encoder.py bench/cache.py bench/decode.py bench/scaling.py bench/ddp.py \
           bench/serve.py bench/export.py bench/retrieval.py bench/assistant_step.py

bench: setup
	for script in $(BENCHES); do echo "== $$script"; $(PY) $$script || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
