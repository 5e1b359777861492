# Source this to run cargo by hand with the same environment the Makefile uses:
#   source scripts/env.sh && cargo test
VENV="${DATANET_CACHE:-$HOME/.cache/datanet}/torch-2.13.0"
export VIRTUAL_ENV="$VENV"
export PATH="$VENV/bin:$HOME/.cargo/bin:$PATH"
export LIBTORCH_USE_PYTORCH=1
export DATANET_PYTHON="$VENV/bin/python"
