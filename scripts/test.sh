#!/usr/bin/env bash
# Runs every check: lint and types, the Rust tests, and the Python test suite
# (which starts its own Mosquitto brokers on free ports).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
venv=${GRIDSIM_VENV:-$HOME/.cache/gridsim/venv}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/gridsim/target}
export PATH="$venv/bin:$HOME/.cargo/bin:$PATH"

echo "== lint"
ruff check gridsim tests
ruff format --check gridsim tests
mypy gridsim
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --features python -q -- -D warnings

echo "== cargo test"
cargo test --workspace -q

echo "== pytest"
python -m pytest "$@"
