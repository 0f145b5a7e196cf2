#!/usr/bin/env bash
# System libraries that napari/Qt need on a headless machine (Xvfb, OpenGL, the xcb platform plugin),
# MMseqs2, which clusters sequences for the homology-aware splits, and the compiler that builds the
# bf16 attention kernel.
#   bash scripts/install_system_deps.sh          # installs only what is missing
#   bash scripts/install_system_deps.sh --check  # lists what is missing; exit 1 if anything is
# Debian/Ubuntu only (apt-get); elsewhere it says so and exits 0 so that installs keep going.
# Runs apt-get directly as root, through sudo otherwise, never interactively.
set -euo pipefail

PACKAGES=(
    xvfb xauth                      # a virtual X display: real rendering for screenshots without a screen
    libgl1 libegl1                  # OpenGL for vispy, napari's canvas
    libxkbcommon-x11-0 libdbus-1-3  # Qt's xcb platform plugin
    libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0
    libxcb-xinerama0 libxcb-xfixes0 libxcb-shape0 libxcb-cursor0
    mmseqs2                         # sequence clustering for homology-aware splits (core/inputs/homology.py; its tests require it)
    g++ ninja-build                 # build the bf16 attention kernel (core/plm/bf16_attention.cpp) with torch's extension builder
)

check_only=0
[ "${1:-}" = "--check" ] && check_only=1

if ! command -v dpkg-query >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1; then
    echo "install_system_deps: no apt-get/dpkg here; install the equivalents of: ${PACKAGES[*]}" >&2
    exit 0
fi

missing=()
for pkg in "${PACKAGES[@]}"; do
    # dpkg-query fails for unknown packages and prints a status other than "installed" for removed ones
    status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
    [ "$status" = "install ok installed" ] || missing+=("$pkg")
done

if [ ${#missing[@]} -eq 0 ]; then
    echo "install_system_deps: all ${#PACKAGES[@]} packages present"
    exit 0
fi
if [ "$check_only" = 1 ]; then
    echo "install_system_deps: missing: ${missing[*]}"
    exit 1
fi

if [ "$(id -u)" = 0 ]; then
    SUDO=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO=(sudo -n)
else
    echo "install_system_deps: missing ${missing[*]}; run this script as root (or with passwordless sudo)" >&2
    exit 1
fi

echo "install_system_deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -q
"${SUDO[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
