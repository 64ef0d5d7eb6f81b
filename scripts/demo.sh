#!/usr/bin/env bash
# demo.sh — the main job: set up, build, pretrain a Fashion-MNIST backbone on classes 0-5 (once),
# then enroll classes 6-9 from a few shots on the device and show accuracy before and after.
# Everything runs offline; output and SVG charts go to out/. Every step says what it is doing
# as it starts, and the build shows ninja's progress line by line.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== demo: checking the Debian packages edgetune needs (installs what is missing)"
bash scripts/setup.sh
if [ ! -f build/build.ninja ]; then
    echo "== configuring a release build in build/ (meson)"
    log=$(mktemp)
    meson setup build -Dbuildtype=release >"$log" 2>&1 || { cat "$log"; exit 1; }
    rm -f "$log"
fi
targets=(examples/train_backbone examples/enroll)
echo "== building ${targets[*]} (ninja -j2; a few minutes on a fresh clone)"
# One line per finished compile step, so a long build is never silent.
status=0
ninja -C build -j2 "${targets[@]}" 2>&1 |
    { grep --line-buffered -E '^\[[0-9]+/[0-9]+\]|error|FAILED|no work to do' || true; } |
    sed -u 's/^/   /' || status=$?
[ "$status" -eq 0 ] || { echo "demo: the build failed (above)"; exit 1; }
mkdir -p out
if [ ! -f out/backbone-0-5.etb ]; then
    echo "== pretraining the frozen backbone on Fashion-MNIST classes 0-5 (once)"
    ./build/examples/train_backbone --classes 0-5 --out out/backbone-0-5.etb
fi
echo "== enrolling classes 6-9 on the device from k shots"
./build/examples/enroll --backbone out/backbone-0-5.etb --out-dir out
