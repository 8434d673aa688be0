# One command for the demo, one for the tests; each sets up its own venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# the CPU build of torch lies on this machine's disk; an unpinned torch pulls a multi-GB CUDA build
TORCH_SPEC ?= torch==2.13.0
DEMO_DIR ?= .cache/demo

.PHONY: test test-tools lint demo bench clean

$(VENV)/.base:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	touch $@

$(VENV)/.test: $(VENV)/.base pyproject.toml
	$(PY) -m pip install -q -e '.[test,dev]'
	touch $@

$(VENV)/.demo: $(VENV)/.base pyproject.toml
	$(PY) -m pip install -q -e '.[demo]'
	touch $@

# ruff (lint rules and format) and mypy (settings in pyproject.toml); `make test` runs these first
lint: $(VENV)/.test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# Debian packages the tests use where the machine allows (root and apt): espeak-ng speaks the sentences whose
# pauses segment timestamps are checked against; chromium runs the page at / headless. Without them, those tests
# are skipped and say why.
TEST_PACKAGES = espeak-ng chromium
test-tools:
	@missing=""; for p in $(TEST_PACKAGES); do command -v $$p >/dev/null || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
			echo "installing$$missing (apt)"; \
			apt-get install -y -q $$missing >/dev/null 2>&1 || \
				(apt-get update -q >/dev/null 2>&1 && apt-get install -y -q $$missing >/dev/null 2>&1) || \
				echo "note: could not install$$missing; the tests that need them will be skipped"; \
		else echo "note:$$missing not installed and no root apt here; the tests that need them will be skipped"; fi; \
	fi

test: lint test-tools
	$(PY) -m pytest -q

$(DEMO_DIR)/voxtral-native/params.json: $(VENV)/.demo tests/tiny.py
	$(PY) tests/tiny.py $(DEMO_DIR)

$(DEMO_DIR)/dia-v01/config.json: $(VENV)/.demo tests/tiny_dia.py
	$(PY) tests/tiny_dia.py $(DEMO_DIR)

demo: $(DEMO_DIR)/voxtral-native/params.json $(DEMO_DIR)/dia-v01/config.json
	@echo "== speechrs transcribe (tiny random-weight Voxtral, native layout: the text is noise) =="
	$(VENV)/bin/speechrs transcribe tests/data/clip_en_16k.wav -m $(DEMO_DIR)/voxtral-native --language en --max-tokens 32
	@echo "== the same weights in the HF layout, as JSON with usage =="
	$(VENV)/bin/speechrs transcribe tests/data/clip_en_16k.wav -m $(DEMO_DIR)/voxtral-hf --language en --max-tokens 32 --format json
	@echo "== subtitles: split at pauses into segments, each with its start and end (SubRip) =="
	$(VENV)/bin/speechrs transcribe tests/data/clip_en_16k.wav -m $(DEMO_DIR)/voxtral-native --language en --max-tokens 16 -o $(DEMO_DIR)/clip.srt
	cat $(DEMO_DIR)/clip.srt
	@echo "== speechrs quantize: int8 codes written once, then loaded from the directory (the load line says int8) =="
	rm -rf $(DEMO_DIR)/voxtral-int8
	$(VENV)/bin/speechrs quantize $(DEMO_DIR)/voxtral-native -o $(DEMO_DIR)/voxtral-int8 --quantize int8
	$(VENV)/bin/speechrs transcribe tests/data/clip_en_16k.wav -m $(DEMO_DIR)/voxtral-int8 --language en --max-tokens 16
	@echo "== speechrs speak (tiny random-weight Dia v0.1 + random DAC in descript's layout: the audio is noise) =="
	$(VENV)/bin/speechrs speak "[S1] Hello there. [S2] Hi! (laughs)" -m $(DEMO_DIR)/dia-v01 --dac $(DEMO_DIR)/dac-descript --seed 0 --max-tokens 256 -o $(DEMO_DIR)/out.wav
	@echo "== the 0626 generation (HF layout) with transformers' DAC layout, greedy =="
	$(VENV)/bin/speechrs speak "[S1] Hello there. [S2] Hi! (laughs)" -m $(DEMO_DIR)/dia-0626 --dac $(DEMO_DIR)/dac-hf --temperature 0 --max-tokens 256 -o $(DEMO_DIR)/out-0626.wav
	@echo "== streamed: audio written while the decoder runs (pieces of 16, 32, then 64 frames) =="
	$(VENV)/bin/speechrs speak "[S1] Hello there. [S2] Hi! (laughs)" -m $(DEMO_DIR)/dia-0626 --dac $(DEMO_DIR)/dac-hf --temperature 0 --max-tokens 256 --stream -o $(DEMO_DIR)/out-stream.wav

bench: $(VENV)/.test
	$(PY) benchmarks/bench_voxtral.py
	$(PY) benchmarks/bench_dia.py

clean:
	rm -rf $(VENV) .cache
