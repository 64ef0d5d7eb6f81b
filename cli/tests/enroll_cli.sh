#!/bin/sh
# enroll_cli.sh — examples/enroll's linear-head enrollment (k shots of classes 6-9 next to 100
# stored samples of each old class 0-5) done with the `edgetune` CLI alone, on the same samples
# (enroll_data.py), to compare the CLI's `train --recipe enroll` with the example's numbers.
# Prints the new-class, old-class and all-class test accuracy. Not part of the test command
# (it needs Fashion-MNIST and a backbone trained on classes 0-5).
#
# Usage: enroll_cli.sh EDGETUNE BACKBONE.etb WORK_DIR [K] [EPISODE]
#   e.g. enroll_cli.sh build/cli/edgetune fashion_0-5.etb /tmp/enroll 5 0
#   (BACKBONE from `examples/train_backbone --classes 0-5 --out fashion_0-5.etb`)
set -eu
E=$1
backbone=$2
work=$3
k=${4:-5}
episode=${5:-0}
here=$(dirname "$0")
"$here/enroll_data.py" "$work" --k "$k" --episode "$episode"
db="$work/enroll.db"
rm -f "$db" "$db-wal" "$db-shm" "$db-reserve"
# "before": the head trained on the stored old samples, as examples/enroll trains it.
# --init-seed 7: the example's PersonalizerOptions::seed (head initialization, validation split).
"$E" add --db "$db" --backbone "$backbone" --classes 10 --init-seed 7 --csv "$work/stored.csv"
"$E" train --db "$db" --epochs 10 --seed 1 --validation 0 --quiet
# The shots, then the enrollment update with the measured recipe (the example's episode seed).
"$E" add --db "$db" --csv "$work/shots.csv"
"$E" train --db "$db" --recipe enroll --seed $((100 + episode)) --quiet
accuracy() {
    "$E" predict --db "$db" --csv "$1" --labelled --k 1 --json |
        /usr/bin/python3 -c 'import json, sys; print("%.1f" % (100 * json.load(sys.stdin)["accuracy"]))'
}
new=$(accuracy "$work/test_new.csv")
old=$(accuracy "$work/test_old.csv")
all=$(/usr/bin/python3 -c "print('%.1f' % (($new * 4000 + $old * 6000) / 10000))")
echo "k=$k episode $episode: new $new%  old $old%  all $all%"
