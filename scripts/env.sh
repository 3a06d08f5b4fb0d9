# Source me. Makes sure the Python environment exists and is active, then returns.
#
# Heavy dependencies (PyTorch and its CUDA wheels, ~6 GB) live in a virtual environment cached
# outside the clone, keyed by a hash of requirements.lock and the interpreter version, so a rerun
# or a fresh clone on the same machine reuses it. The clone gets a thin .venv of its own whose
# site-packages chain to the cached one, with this checkout installed editable (the `lineinspect`
# console script) - two clones never fight over one editable install.
set -euo pipefail
LI_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LI_PY="${LINEINSPECT_PYTHON:-python3}"
command -v "$LI_PY" >/dev/null || { echo "lineinspect: no $LI_PY on PATH (need Python 3.11+)" >&2; return 1; }
LI_PYVER="$("$LI_PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
LI_HASH="$( (cat "$LI_ROOT/requirements.lock"; echo "$LI_PYVER") | sha256sum | cut -c1-12)"
LI_CACHE="${LINEINSPECT_CACHE:-$HOME/.cache/lineinspect}"
LI_BASE="$LI_CACHE/venv-$LI_HASH"
mkdir -p "$LI_CACHE"
if [ ! -f "$LI_BASE/.complete" ]; then
  echo "lineinspect: building the cached environment $LI_BASE (first run on this machine: a few minutes)" >&2
  (
    exec 9>"$LI_CACHE/.lock-$LI_HASH"; flock 9
    if [ ! -f "$LI_BASE/.complete" ]; then
      rm -rf "$LI_BASE"
      "$LI_PY" -m venv "$LI_BASE"
      "$LI_BASE/bin/pip" install -q --upgrade "pip>=24" setuptools wheel
      "$LI_BASE/bin/pip" install -q --progress-bar off -r "$LI_ROOT/requirements.lock"
      touch "$LI_BASE/.complete"
    fi
  )
fi
LI_VENV="$LI_ROOT/.venv"
LI_BASE_SITE="$("$LI_BASE/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
if [ ! -f "$LI_VENV/.base-$LI_HASH" ]; then
  rm -rf "$LI_VENV"
  "$LI_PY" -m venv --without-pip "$LI_VENV"
  LI_SITE="$("$LI_VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  echo "import site; site.addsitedir('$LI_BASE_SITE')" > "$LI_SITE/00-lineinspect-base.pth"
  touch "$LI_VENV/.base-$LI_HASH"
fi
# Path-based editable install (a .pth naming this checkout): new packages and modules are seen at
# once, unlike setuptools' default finder, which snapshots the package list at install time.
if [ ! -x "$LI_VENV/bin/lineinspect" ] || [ "$LI_ROOT/pyproject.toml" -nt "$LI_VENV/bin/lineinspect" ]; then
  "$LI_BASE/bin/pip" --python "$LI_VENV/bin/python" install -q --no-deps --no-build-isolation \
    --config-settings editable_mode=compat -e "$LI_ROOT" >"$LI_VENV/install.log" 2>&1 \
    || { cat "$LI_VENV/install.log" >&2; echo "lineinspect: editable install failed" >&2; return 1; }
fi
export VIRTUAL_ENV="$LI_VENV"
export PATH="$LI_VENV/bin:$PATH"
# pytriton's Python-backend stub must link this interpreter's libpython, not Debian's.
export LD_LIBRARY_PATH="$("$LI_VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_config_var("LIBDIR"))')${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export LINEINSPECT_DATA="${LINEINSPECT_DATA:-$LI_ROOT/../shared/data}"
export PYTHONUNBUFFERED=1
