#!/usr/bin/env bash
# Installs the pinned PyTorch wheel (libtorch for tch) into a cache folder keyed by version, and,
# with --interop, the Python reference clients (transformers, peft) used by the interoperability test.
# With --browser, only Debian's chromium for the status-page test (see below).
# Reused when present; safe to run again. Prints the venv path on its last line.
set -euo pipefail
# --browser: only the headless browser the status-page test drives (Debian's chromium), best effort:
# without root or apt the test skips and says so.
if [ "${1:-}" = "--browser" ]; then
  command -v chromium >/dev/null 2>&1 && exit 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing chromium (headless status-page test)" >&2
    (DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium) >&2 ||
      echo "setup: chromium not installed; the status-page browser check will skip" >&2
  else
    echo "setup: no root or apt-get; the status-page browser check will skip" >&2
  fi
  exit 0
fi
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
CACHE="${DATANET_CACHE:-$HOME/.cache/datanet}"
VENV="$CACHE/torch-$TORCH_VERSION"
PY="${PYTHON:-python3}"
if [ ! -f "$VENV/.torch-ok" ]; then
  echo "setup: installing torch==$TORCH_VERSION into $VENV (about 4.7 GB, once)" >&2
  rm -rf "$VENV"
  mkdir -p "$CACHE"
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check --upgrade pip >&2
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "torch==$TORCH_VERSION" "numpy<3" >&2
  "$VENV/bin/python" -c "import torch; assert torch.__version__.startswith('$TORCH_VERSION'), torch.__version__" >&2
  touch "$VENV/.torch-ok"
fi
if [ "${1:-}" = "--interop" ] && [ ! -f "$VENV/.interop-ok" ]; then
  echo "setup: installing transformers, peft and safetensors into $VENV (interop test clients)" >&2
  # Versions the interop test was checked with; torch stays pinned so the resolver cannot replace it.
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "torch==$TORCH_VERSION" \
    "transformers==5.24.0" "peft==0.21.2" "safetensors==0.8.0" "accelerate==1.15.0" >&2
  "$VENV/bin/python" -c "import transformers, peft" >&2
  touch "$VENV/.interop-ok"
fi
echo "$VENV"
