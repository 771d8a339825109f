#!/usr/bin/env bash
# Quick start, command 1: set up, then run the default training job (or pass a config / options).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/ringrl train "$@"
