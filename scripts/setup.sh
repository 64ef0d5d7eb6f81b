#!/usr/bin/env bash
# setup.sh — install what edgetune needs from Debian's packages (idempotent; quick when all
# is present). Usage: scripts/setup.sh [--tests] [extra-package ...]   (as root, or with sudo)
# Without --tests: what the library, the examples and the demo need. --tests adds what only the
# test command needs (the ONNX converter's packages, the aarch64 cross toolchain and qemu).
set -euo pipefail
tests=0
if [ "${1:-}" = --tests ]; then
    tests=1
    shift
fi

packages=(g++ meson ninja-build pkg-config cmake python3 clang-format
          libeigen3-dev libfmt-dev libsqlite3-dev libcereal-dev doctest-dev zlib1g-dev
          dataset-fashion-mnist fortunes "$@")
# tools/onnx_import.py and its tests; /usr/bin/time for the CLI's bounded-memory test (cli_scale)
[ "$tests" -eq 1 ] && packages+=(python3-onnx python3-numpy time)
# The aarch64 pass of scripts/test.sh (cross/aarch64-linux-gnu.ini): the cross toolchain,
# qemu-user, and the target's -dev packages. Header-only Eigen, cereal and doctest are the
# host's (do not add libcereal-dev:arm64).
[ "$tests" -eq 1 ] && packages+=(crossbuild-essential-arm64 qemu-user libsqlite3-dev:arm64
                                 libfmt-dev:arm64 zlib1g-dev:arm64)

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
if printf '%s\n' "${missing[@]}" | grep -q ':arm64$' &&
    ! dpkg --print-foreign-architectures | grep -qx arm64; then
    "${sudo_cmd[@]}" dpkg --add-architecture arm64  # before the one apt-get update
fi
"${sudo_cmd[@]}" apt-get update -q
DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -q --no-install-recommends \
    "${missing[@]}"
