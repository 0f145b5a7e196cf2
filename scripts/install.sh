#!/usr/bin/env bash
# Install interplm-plugins (Python 3.11+) with PyMOL and napari, then optionally run a command in
# the environment it went into.
#   bash scripts/install.sh                          # the tool, PyMOL and napari (as root on Debian: their system libraries)
#   bash scripts/install.sh -- interplm demo         # ... then run the embedded default
#   bash scripts/install.sh --test -- python -m pytest -q   # plus the test tools and the system
#                                                    # libraries headless Qt/napari tests need (apt-get, as root)
#   bash scripts/install.sh --print-env              # only say which environment it would install into
#   PYTHON=/path/to/python3 bash scripts/install.sh  # start from another interpreter
#
# Which environment (PYTHON, default python3, decides):
#   - an active virtual environment or a conda environment: installed into it, as it is;
#   - an interpreter marked "externally managed" (PEP 668: Debian 12's, Ubuntu 24.04's system
#     python3, whose pip refuses to install): a virtual environment .venv in this checkout is made
#     (or reused) and everything goes there, torch pinned as anywhere else;
#   - any other interpreter (pyenv's, one built by hand, a python.org install): as it is. It is
#     the user's own, pip is allowed there and breaks nothing of the system's; a .venv on top
#     would only install torch and the rest a second time.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
want_test=0
print_env=0
run=()
while [ $# -gt 0 ]; do
    case "$1" in
        --test) want_test=1 ;;
        --print-env) print_env=1 ;;
        --) shift; run=("$@"); break ;;
        *) echo "install: unknown option $1 (use --test, --print-env, or -- COMMAND...)" >&2; exit 2 ;;
    esac
    shift
done
command -v "$PY" >/dev/null 2>&1 || { echo "install: no Python interpreter $PY (set PYTHON=/path/to/python3)" >&2; exit 2; }

# The environment choice, by the rules above: "<as-is|venv> <reason>".
choice=$("$PY" - <<'PYEOF'
import sys, sysconfig
from pathlib import Path
if sys.prefix != sys.base_prefix:
    print("as-is an active virtual environment")
elif (Path(sys.prefix) / "conda-meta").is_dir():
    print("as-is a conda environment")
elif (Path(sysconfig.get_path("stdlib")) / "EXTERNALLY-MANAGED").is_file():
    print("venv an externally managed interpreter (PEP 668)")
else:
    print("as-is a user-installed interpreter without a PEP 668 marker")
PYEOF
)
mode=${choice%% *}
reason=${choice#* }
VENV="$PWD/.venv"
if [ "$mode" = venv ]; then
    target="$VENV/bin/python"
else
    target=$("$PY" -c 'import sys; print(sys.executable)')
fi
if [ "$print_env" = 1 ]; then
    echo "install: environment $mode $target ($reason)"
    exit 0
fi

# PyMOL's renderer links libGL and napari needs Xvfb/xcb on a headless machine: the tests must have
# them; a plain install tries (apt-get as root) and carries on with a warning where it cannot.
if [ "$want_test" = 1 ]; then
    bash scripts/install_system_deps.sh
else
    bash scripts/install_system_deps.sh || echo "install: system libraries not installed (see above); PyMOL rendering needs libGL" >&2
fi

if [ "$mode" = venv ] && [ ! -x "$target" ]; then
    echo "install: $PY is $reason: making the virtual environment $VENV"
    if ! "$PY" -m venv "$VENV"; then
        rm -rf "$VENV"
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then  # Debian/Ubuntu ship venv separately
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv >/dev/null
            "$PY" -m venv "$VENV"
        else
            echo "install: cannot make a virtual environment: install python3-venv (apt-get install python3-venv) or use conda" >&2
            exit 1
        fi
    fi
fi
PY=$target

pip_install() { "$PY" -m pip install --disable-pip-version-check -q "$@"; }
# torch first and pinned: this CPU wheel is on local disk; an unpinned torch pulls a multi-GB CUDA build.
"$PY" -c "import torch, sys; sys.exit(0 if torch.__version__.startswith('2.13.0') else 1)" 2>/dev/null \
    || pip_install "torch==2.13.0"
extras="all"
[ "$want_test" = 1 ] && extras="all,test"
pip_install -e ".[${extras}]"
# esm.cpp, the embedding benchmark's C++ peer (its smoke run is in the tests): without its dependencies,
# because its metadata asks for numpy < 2 (its wheel runs with numpy 2) and pip would downgrade numpy.
[ "$want_test" = 1 ] && pip_install --no-deps "esm-cpp==0.2.1"
# dictionary_learning, the training benchmark's peer (its smoke run is in the tests): without its
# dependencies, which include nnsight, whose torchvision requirement would replace the CPU torch build.
[ "$want_test" = 1 ] && pip_install --no-deps "dictionary-learning==0.1.0"
"$PY" -c "import interplm_plugins, esm, torch; print('interplm-plugins', interplm_plugins.__version__, '| torch', torch.__version__)"
# The bf16 attention kernel (`--precision bf16` on CPUs with AVX512-BF16), built now into torch's extension
# cache rather than at first use; where it cannot be built, bf16 uses PyTorch's attention and this says why.
"$PY" -m interplm_plugins.core.plm.bf16_attention
if [ "$mode" = venv ]; then
    echo "install: installed into $VENV; use it with: source $VENV/bin/activate (then pymol, napari, interplm find the plugins)"
fi

# The command after --, with the environment's bin folder first on PATH (python, interplm, pymol, napari).
if [ ${#run[@]} -gt 0 ]; then
    bin=$(dirname "$PY")
    [ "$mode" = venv ] && export VIRTUAL_ENV="$VENV"
    PATH="$bin:$PATH" exec "${run[@]}"
fi
