#!/usr/bin/env bash
# setup.sh — install what edgetune needs from Debian's packages (idempotent; quick when all
# is present). Usage: scripts/setup.sh [extra-package ...]   (run as root, or with sudo)
set -euo pipefail

packages=(g++ meson ninja-build pkg-config cmake python3 clang-format
          libeigen3-dev libfmt-dev libsqlite3-dev libcereal-dev doctest-dev zlib1g-dev
          dataset-fashion-mnist fortunes
          python3-onnx python3-numpy  # tests/test_onnx_import.py (the ONNX converter)
          "$@")

missing=()
for p in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$p")
    fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "setup: installing ${missing[*]}"
sudo_cmd=()
[ "$(id -u)" -ne 0 ] && sudo_cmd=(sudo)
"${sudo_cmd[@]}" apt-get update -q
DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -q --no-install-recommends \
    "${missing[@]}"
