#!/bin/bash
# One unattended run on a borrowed GPU machine with no network, inside a time limit:
#   bash tools/gpu_session.sh [BENCH_CONFIGS] [SECONDS] [LOG_DIR]
# 1. installs .whl/ (make gpu-wheels, made where the registries are reachable) into /tmp/site;
# 2. unless an earlier run on this machine built exllamav2 already: tools/gpu_check.py (JIT build with
#    -std=c++20 straight away, as CUDA 13 needs; then tests/gpu), and keeps its logs and the built
#    extension, xz-compressed in 15 MB parts, in LOG_DIR: `cat exllamav2_ext.so.xz.* | xz -d >
#    /tmp/site/exllamav2_ext.so` on the next machine lets exllamav2 import it instead of building (the
#    same torch and CUDA only);
# 3. bench/gpu_engines.py with BENCH_CONFIGS for the seconds left (each configuration's figures are
#    logged as they come, so a run cut short keeps them).
# Make-free on purpose: the machine may have no make. Exit status: gpu_check's (0 = every step passed).
set -o pipefail
CONFIGS=${1:-exllamav2:q4,exllamav2:fp16,transformers:eager,transformers:compile,exllamav2:q8,exllamav2:q6}
LIMIT=${2:-570}
LOG_DIR=${3:-.cache/gpu-session}
mkdir -p "$LOG_DIR"
export PYTHONUNBUFFERED=1 EXLLAMAV2_JIT_STD=${EXLLAMAV2_JIT_STD-c++20} MAX_JOBS=${MAX_JOBS:-$(nproc)}
export GPU_CHECK_TESTS_TIMEOUT=${GPU_CHECK_TESTS_TIMEOUT:-240}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
if [ ! -f /tmp/site/.installed ]; then
  python3 tools/gpu_check.py --glibc || exit 2  # pip would refuse llguidance's manylinux_2_31 wheel
  python3 -m pip install -q --disable-pip-version-check --no-index --no-deps --no-compile --upgrade \
    --target /tmp/site .whl/*.whl && touch /tmp/site/.installed || exit 2
fi
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
rc=0
if [ ! -f .cache/gpu-check/exllamav2.env ]; then
  python3 tools/gpu_check.py 2>&1 | tee "$LOG_DIR/gpu-check.log"; rc=$?
  cp .cache/gpu-check/tests.log .cache/gpu-check/figures.jsonl "$LOG_DIR/" 2>/dev/null
  for f in .cache/gpu-check/exllamav2-build-*.log; do  # '+' of c++20 is not a safe file name everywhere
    [ -f "$f" ] && tail -c 3000000 "$f" > "$LOG_DIR/$(basename "$f" | tr '+' 'p')"
  done
  so=$(find .cache/torch_extensions -name 'exllamav2_ext*.so' 2>/dev/null | head -1)
  [ -n "$so" ] && xz -T0 -1 -c "$so" | split -b 15000000 -d - "$LOG_DIR/exllamav2_ext.so.xz."
  [ -f .cache/gpu-check/exllamav2.env ] || exit $rc
fi
left=$((LIMIT - SECONDS))
echo "bench: $left s left"
set -a; . ./.cache/gpu-check/exllamav2.env; set +a
if [ $left -gt 60 ]; then
  timeout $left python3 -m bench.gpu_engines --configs "$CONFIGS" 2>&1 | tee "$LOG_DIR/bench.log"
fi
echo "gpu_session: done in $SECONDS s (gpu-check exit $rc)"
exit $rc
