#!/usr/bin/env bash
# Install interplm-plugins into the current Python (3.11+), with PyMOL and napari.
#   bash scripts/install.sh          # the tool, PyMOL and napari (and, as root on Debian, their system libraries)
#   bash scripts/install.sh --test   # the same plus the test tools and the system libraries
#                                    # that headless Qt/napari tests need (apt-get, as root)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
want_test=0
[ "${1:-}" = "--test" ] && want_test=1

# PyMOL's renderer links libGL and napari needs Xvfb/xcb on a headless machine: the tests must have
# them; a plain install tries (apt-get as root) and carries on with a warning where it cannot.
if [ "$want_test" = 1 ]; then
    bash scripts/install_system_deps.sh
else
    bash scripts/install_system_deps.sh || echo "install: system libraries not installed (see above); PyMOL rendering needs libGL" >&2
fi

pip_install() { "$PY" -m pip install --disable-pip-version-check -q "$@"; }
# torch first and pinned: this CPU wheel is on local disk; an unpinned torch pulls a multi-GB CUDA build.
"$PY" -c "import torch, sys; sys.exit(0 if torch.__version__.startswith('2.13.0') else 1)" 2>/dev/null \
    || pip_install "torch==2.13.0"
extras="all"
[ "$want_test" = 1 ] && extras="all,test"
pip_install -e ".[${extras}]"
"$PY" -c "import interplm_plugins, esm, torch; print('interplm-plugins', interplm_plugins.__version__, '| torch', torch.__version__)"
