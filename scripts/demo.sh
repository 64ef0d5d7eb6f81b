#!/usr/bin/env bash
# demo.sh — the main job: set up, build, pretrain a Fashion-MNIST backbone on classes 0-5 (once),
# then enroll classes 6-9 from a few shots on the device and show accuracy before and after.
# Everything runs offline; output and SVG charts go to out/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ ! -f build/build.ninja ]; then
    meson setup build -Dbuildtype=release >/dev/null
fi
ninja -C build -j2 examples/train_backbone examples/enroll >/dev/null
mkdir -p out
if [ ! -f out/backbone-0-5.etb ]; then
    echo "== pretraining the frozen backbone on Fashion-MNIST classes 0-5 (once)"
    ./build/examples/train_backbone --classes 0-5 --out out/backbone-0-5.etb
fi
echo "== enrolling classes 6-9 on the device from k shots"
./build/examples/enroll --backbone out/backbone-0-5.etb --out-dir out
