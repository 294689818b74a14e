#!/usr/bin/env bash
# Installs everything gridsim needs on a Debian machine, idempotently:
#   system packages (Mosquitto, a C toolchain), Rust (when cargo is missing),
#   a Python virtual environment with the Python deps, and the Rust core built
#   into it. Re-running it is cheap: it only installs what is missing.
#
# The venv lives outside the clone (default ~/.cache/gridsim/venv, override with
# GRIDSIM_VENV) so CI and fresh clones reuse the ~3 GB torch download.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${GRIDSIM_VENV:-$HOME/.cache/gridsim/venv}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/gridsim/target}

say() { printf '\033[1m[gridsim setup]\033[0m %s\n' "$*"; }

# --- system packages ---------------------------------------------------------
apt_packages=(mosquitto build-essential pkg-config curl ca-certificates python3 python3-venv
              python3-dev procps)
missing=()
for p in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  say "installing Debian packages: ${missing[*]}"
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# Debian starts a system Mosquitto on 1883 after install; gridsim never needs it
# (runs start a private broker on a free port), so leave it as the admin set it.

# --- Rust ----------------------------------------------------------------------
if ! command -v cargo >/dev/null 2>&1; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  else
    say "installing Rust with rustup"
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -c rustfmt,clippy
    export PATH="$HOME/.cargo/bin:$PATH"
  fi
fi
# The Rust core needs rustc >= 1.89 (stable AVX-512 and VAES intrinsics).
rust_minor=$(rustc --version | sed -E 's/^rustc 1\.([0-9]+).*/\1/')
if [ "${rust_minor:-0}" -lt 89 ]; then
  if command -v rustup >/dev/null 2>&1; then
    say "rustc $(rustc --version | cut -d' ' -f2) is older than 1.89; updating the stable toolchain"
    rustup update stable && rustup default stable
  else
    echo "gridsim needs rustc >= 1.89, found $(rustc --version); please upgrade Rust" >&2
    exit 1
  fi
fi

# --- Python ---------------------------------------------------------------------
python=""
for candidate in python3.13 python3.12 python3.11 python3; do
  if command -v "$candidate" >/dev/null 2>&1 &&
     "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    python=$(command -v "$candidate"); break
  fi
done
[ -n "$python" ] || { echo "gridsim needs Python >= 3.11" >&2; exit 1; }
if [ ! -x "$venv/bin/python" ]; then
  say "creating the virtual environment $venv"
  mkdir -p "$(dirname "$venv")"
  "$python" -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip
fi

say "installing Python dependencies and building the Rust core (release)"
"$venv/bin/pip" install -q -e "$root[test,dev,embedded-broker]"
"$venv/bin/python" -c "import gridsim._core, torch, aiomqtt; print('gridsim core', gridsim._core.__version__, '| torch', torch.__version__)"
say "done. Activate with: source $venv/bin/activate"
