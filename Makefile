# make run   : install, build the demo model, start qwen_server (SmolLM2 on CPU) + the gateway
# make test  : install (with Chromium for the browser test and nginx for the proxy test) and run the whole test suite
VENV  ?= .venv
PY    := $(VENV)/bin/python
# CPU build here; on a GPU machine: make TORCH=torch (or the CUDA build that matches your driver)
TORCH ?= torch==2.13.0
QWEN_PORT ?= 5001
CHAT_PORT ?= 5000

.PHONY: install models run test chromium nginx bench

$(VENV)/.installed: requirements.txt requirements-dev.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check "$(TORCH)" -r requirements-dev.txt
	touch $@

install: $(VENV)/.installed

models: install
	$(PY) tools/make_models.py

run: models
	@echo "Gateway on http://127.0.0.1:$(CHAT_PORT)/  (Qwen server on :$(QWEN_PORT), model SmolLM2-135M-Instruct)"
	$(PY) qwen_server.py -m models/smollm2-135m-instruct --engine transformers --port $(QWEN_PORT) & \
	  QPID=$$!; trap 'kill $$QPID' EXIT INT TERM; \
	  QWEN_URL=http://127.0.0.1:$(QWEN_PORT) $(PY) chat.py --port $(CHAT_PORT)

chromium:
	@command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)

# Debian's nginx for tests/test_nginx.py (deploy/nginx-dual-ai-chat.conf run for real)
nginx:
	@command -v nginx >/dev/null || test -x /usr/sbin/nginx || (apt-get update -qq && apt-get install -y -qq nginx >/dev/null)

test: models chromium nginx
	$(PY) -m pytest -q tests

bench: models
	$(PY) bench/gateway_overhead.py && $(PY) bench/history.py && $(PY) bench/stream_overhead.py
