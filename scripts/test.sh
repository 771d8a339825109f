#!/usr/bin/env bash
# Quick start, command 2: set up, then run the whole test suite (slow end-to-end tests included).
# Extra arguments go to pytest, e.g. scripts/test.sh -m "not slow".
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-1} VLLM_HOST_IP=127.0.0.1
rc=0
.venv/bin/python -m pytest "$@" || rc=$?
# 5 = no tests collected (e.g. a -k that matches nothing): not a failure of the code.
if [[ $rc == 5 ]]; then echo "test: no tests collected"; exit 0; fi
exit $rc
