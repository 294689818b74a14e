# Source this file: it installs everything (scripts/bootstrap.sh) and then
# activates the virtual environment in your shell, so `python -m gridsim`
# works right after:   source scripts/install.sh
_gridsim_root=$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")/.." && pwd)
if bash "$_gridsim_root/scripts/bootstrap.sh"; then
  # shellcheck disable=SC1091
  . "${GRIDSIM_VENV:-$HOME/.cache/gridsim/venv}/bin/activate"
  export PATH="$HOME/.cargo/bin:$PATH"
else
  echo "gridsim: installation failed (see above)" >&2
fi
unset _gridsim_root
