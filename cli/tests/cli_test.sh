#!/bin/sh
# cli_test.sh — end-to-end tests of the `edgetune` CLI: one scenario per run, in a fresh
# temporary directory, on inputs written by cli_fixture. Checks exit codes, outputs and that
# bad input gives exactly one line on stderr.
# Usage: cli_test.sh SCENARIO EDGETUNE CLI_FIXTURE [KEYBOARD]
#   SCENARIO: help workflow errors idx forget_export classes no_surprise setup reports recipe
#   words scale keyboard; KEYBOARD: the examples/keyboard program (the keyboard scenario).
set -u
# meson passes the executables relative to the build directory: make them absolute first.
absolute() { (cd "$(dirname "$1")" && printf '%s/%s' "$(pwd)" "$(basename "$1")"); }
scenario=$1
E=$(absolute "$2")
fixture=$(absolute "$3")
keyboard=$([ $# -ge 4 ] && absolute "$4")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work" || exit 1
"$fixture" . || { echo "FAIL: cli_fixture" >&2; exit 1; }

failures=0
fail() {
    echo "FAIL [$scenario]: $*" >&2
    failures=$((failures + 1))
}
# run STATUS COMMAND...: runs it (stdout -> out.txt, stderr -> err.txt), checks the status.
run() {
    expected=$1
    shift
    "$@" >out.txt 2>err.txt
    status=$?
    if [ "$status" -ne "$expected" ]; then
        fail "'$*' exited $status, expected $expected"
        sed 's/^/  stdout: /' out.txt >&2
        sed 's/^/  stderr: /' err.txt >&2
    fi
}
expect_out() {
    grep -qF -- "$1" out.txt || { fail "stdout lacks '$1'"; sed 's/^/  stdout: /' out.txt >&2; }
}
# The whole of stderr is exactly this one line.
expect_error() {
    printf '%s\n' "$1" | cmp -s - err.txt || { fail "stderr is not '$1'"; sed 's/^/  stderr: /' err.txt >&2; }
}
# stderr is one line starting with this prefix.
expect_error_prefix() {
    [ "$(wc -l <err.txt)" -eq 1 ] && grep -qF -- "$1" err.txt ||
        { fail "stderr is not one line starting '$1'"; sed 's/^/  stderr: /' err.txt >&2; }
}

# A database is created once with its backbone and class count (NEW); it records them, so
# every later command names only the database (DB).
NEW="--db user.db --backbone backbone.etb --classes 3"
DB="--db user.db"

case "$scenario" in
help)
    run 0 "$E" --help
    expect_out "usage: edgetune COMMAND --db FILE [options]"
    for c in info add train predict forget class export; do
        run 0 "$E" "$c" --help
        expect_out "usage: edgetune $c --db FILE"
    done
    run 0 "$E" help train
    expect_out "--replay POLICY"
    run 2 "$E"
    run 2 "$E" frobnicate
    expect_error "edgetune: unknown command 'frobnicate' (see edgetune --help)"
    run 2 "$E" train $DB --epochz 3
    expect_error "edgetune: train: unknown option '--epochz' (see edgetune train --help)"
    run 2 "$E" info $DB stray
    expect_error "edgetune: info: unexpected argument 'stray' (see edgetune info --help)"
    ;;
workflow)
    run 0 "$E" add $NEW --csv train.csv
    expect_out "added 120 samples (ids 1-120); user.db holds 120"
    run 0 "$E" info $DB
    expect_out "samples      120"
    expect_out "      0  0          40"
    expect_out "checkpoints  1"
    run 0 "$E" train $DB --epochs 30 --lr 0.05 --seed 1
    expect_out "outcome     committed"
    grep -q "^epoch 30/30" err.txt || fail "no progress line for epoch 30 on stderr"
    run 0 "$E" predict $DB --csv test.csv --labelled
    accuracy=$(sed -n 's/^top-1 accuracy \([0-9]*\)\..*/\1/p' out.txt)
    [ "${accuracy:-0}" -ge 90 ] || fail "predict accuracy ${accuracy:-?}% < 90%"
    run 0 "$E" predict $DB --csv rows.csv --k 2
    [ "$(grep -c '^line [0-9]*: [0-2] ([0-9.]*%), [0-2] ([0-9.]*%)$' out.txt)" -eq 6 ] ||
        fail "predict --k 2 did not print 6 rows of 2 labels"
    run 0 "$E" add $DB --csv more.csv
    expect_out "added 30 samples (ids 121-150); user.db holds 150"
    run 0 "$E" train $DB --epochs 10 --optimizer sgd --lr 0.1 --replay reservoir:20 --json --quiet
    expect_out '"outcome":"committed"'
    [ -s err.txt ] && fail "--quiet still wrote to stderr"
    run 0 "$E" train $DB --quiet
    expect_out "nothing to do: nothing new: the committed head has trained on all 150 stored samples (--again trains on them anyway)"
    run 0 "$E" train $DB --quiet --json
    expect_out '"outcome":"nothing_to_do"'
    run 0 "$E" train $DB --max-steps 3 --replay balanced:5 --quiet --again
    expect_out "max_steps reached"
    expect_out "steps       3 in"
    printf '0,2,0,0,0\n' >one.csv
    run 0 sh -c "\"$E\" add $DB --csv - <one.csv"
    expect_out "added 1 sample (ids 151-151)"
    run 0 "$E" info $DB --runs 2
    expect_out "runs         last 2 of the training log"
    grep -q "^  #[0-9]* .*  committed  *3  " out.txt || fail "the last run (3 steps) is not listed"
    ;;
errors)
    run 1 "$E" add $NEW --csv bad_width.csv
    expect_error "edgetune: add: line 3: expected 5 values, got 3"
    [ -e user.db ] && fail "a rejected add created the database"
    run 1 "$E" add $NEW --csv bad_label.csv
    expect_error "edgetune: add: line 2: label 7 out of range for 3 classes"
    run 1 "$E" add $NEW --csv bad_number.csv
    expect_error "edgetune: add: line 1: value 1 'abc' is not a number"
    run 1 "$E" add $NEW --csv nan.csv
    expect_error "edgetune: add: line 3: value 3 is nan (not finite)"
    run 1 "$E" add $NEW --csv missing.csv
    expect_error "edgetune: add: cannot read 'missing.csv'"
    run 1 "$E" train $DB
    expect_error "edgetune: train: database 'user.db' does not exist (\`edgetune add --backbone FILE --classes N\` creates it)"
    run 2 "$E" add --db user.db --backbone backbone.etb --csv train.csv
    expect_error "edgetune: add: missing option --classes (creating a database) (see edgetune add --help)"
    run 2 "$E" add --db user.db --classes 3 --csv train.csv
    expect_error "edgetune: add: missing option --backbone (see edgetune add --help)"
    run 2 "$E" train $DB --replay reservoir
    expect_error "edgetune: train: --replay reservoir:N needs a sample count N > 0, got 'reservoir' (see edgetune train --help)"
    run 2 "$E" train $DB --epochs abc
    expect_error "edgetune: train: --epochs: expected an integer, got 'abc' (see edgetune train --help)"
    run 2 "$E" train $DB --optimizer rmsprop
    expect_error "edgetune: train: --optimizer: expected adam, adamw or sgd, got 'rmsprop' (see edgetune train --help)"
    run 1 "$E" add --db user.db --backbone missing.etb --classes 3 --csv train.csv
    expect_error "edgetune: add: backbone 'missing.etb' does not exist"
    run 1 "$E" add --db user.db --backbone corrupt.etb --classes 3 --csv train.csv
    expect_error_prefix "edgetune: add: "
    run 0 "$E" add $NEW --csv train.csv
    run 1 "$E" add --db user.db --classes 4 --csv train.csv
    expect_error "edgetune: add: 'user.db' holds a linear head created with 3 classes (3 classes now); --classes 4 was given (--head and --classes only apply when a database is created; leave them out)"
    run 0 "$E" info $DB
    expect_out "samples      120"
    printf '1,2,3\n' >short.csv
    run 1 "$E" predict $DB --csv short.csv
    expect_error "edgetune: predict: line 1: expected 4 values, got 3"
    run 1 "$E" predict $DB --csv train.csv
    expect_error "edgetune: predict: line 2: expected 4 values, got 5 (rows that start with a label need --labelled)"
    run 1 "$E" export $DB --out no/such/dir/head.ckpt
    expect_error_prefix "edgetune: export: "
    ;;
idx)
    run 0 "$E" add $NEW --idx-images images.idx.gz --idx-labels labels.idx --limit 45
    expect_out "added 45 samples (ids 1-45); user.db holds 45"
    run 1 "$E" add $DB --idx-images images.idx.gz --idx-labels labels_short.idx
    expect_error "edgetune: add: 'images.idx.gz' has 60 images but 'labels_short.idx' has 59 labels"
    run 1 "$E" add $DB --idx-images labels.idx --idx-labels labels.idx
    expect_error "edgetune: add: 'labels.idx' is not an IDX image file (magic 0x00000801)"
    run 2 "$E" add $DB --idx-images images.idx.gz
    expect_error_prefix "edgetune: add: give --csv FILE"
    run 2 "$E" add $DB --csv train.csv --limit 3
    expect_error "edgetune: add: --limit applies to IDX input only (see edgetune add --help)"
    run 0 "$E" train $DB --epochs 40 --lr 0.05 --quiet
    expect_out "outcome     committed"
    ;;
forget_export)
    run 0 "$E" add $NEW --csv train.csv
    run 0 "$E" train $DB --epochs 20 --quiet
    run 0 "$E" forget $DB --ids 1-5,7 --epochs 10 --quiet
    expect_out "forgot 6 samples; user.db holds 114"
    expect_out "retrained from the base head"
    run 1 "$E" forget $DB 7 200
    expect_error "edgetune: forget: 2 of the 2 ids are not stored: 7, 200"
    run 1 "$E" forget $DB 8 300 --epochs 10 --quiet
    expect_out "forgot 1 samples; user.db holds 113"
    expect_error "edgetune: forget: 1 of the 2 ids are not stored: 300"
    run 2 "$E" forget $DB
    expect_error "edgetune: forget: no sample ids given (--ids 3,7,10-12 or ids as arguments) (see edgetune forget --help)"
    run 2 "$E" forget $DB --ids 9-3
    expect_error "edgetune: forget: bad sample id '9-3' (expected N or N-M, ids > 0) (see edgetune forget --help)"
    run 0 "$E" info $DB
    expect_out "samples      113"
    run 0 "$E" export $DB --out head.ckpt
    expect_out "wrote head.ckpt"
    expect_out "[16 x 3]"
    [ -s head.ckpt ] || fail "export wrote no file"
    ;;
classes)
    run 0 "$E" add $NEW --csv train.csv
    run 0 "$E" train $DB --epochs 20 --quiet
    run 0 "$E" class $DB list
    expect_out "     2  2                              40 samples"
    run 0 "$E" class $DB add "Zoë"
    expect_out "added class 3 'Zoë'; user.db has 4 classes"
    run 1 "$E" class $DB add "Zoë"
    expect_error "edgetune: class: [sample_store.add_class] class name 'Zoë' is taken"
    run 0 "$E" class $DB rename 3 zoe
    expect_out "class 3 is now 'zoe'"
    run 0 "$E" class $DB list
    expect_out "     3  zoe                             0 samples"
    run 0 "$E" class $DB remove 0 --epochs 5
    expect_out "removed class 0; user.db holds 80 samples in 3 classes"
    run 0 "$E" class $DB list
    expect_out "     0  1                              40 samples"
    run 1 "$E" class $DB remove 7
    expect_error "edgetune: class: [sample_store.remove_class] no class with label 7 (the store has 3 classes)"
    run 2 "$E" class $DB frobnicate
    expect_error "edgetune: class: unknown subcommand 'frobnicate' (add, list, rename or remove) (see edgetune class --help)"
    run 2 "$E" class $DB rename 1
    expect_error "edgetune: class: 'class rename' takes 2 arguments, got 1 (see edgetune class --help)"
    ;;
no_surprise)
    # Nothing is destroyed by surprise: another backbone is refused without a write, read-only
    # commands never write, a backbone change needs --upgrade-backbone; bounded --ids.
    run 0 "$E" add $NEW --csv train.csv
    run 0 "$E" train $DB --epochs 20 --quiet
    before=$(cksum <user.db)
    OTHER="--db user.db --backbone backbone2.etb"
    for c in info train; do
        run 1 "$E" $c $OTHER
        expect_error_prefix "edgetune: $c: 'user.db' holds the features and head of backbone '$PWD/backbone.etb' (digest "
        grep -qF "the backbone given, 'backbone2.etb', is another one (digest " err.txt ||
            fail "the mismatch error does not name the backbone given"
    done
    run 0 "$E" info $DB
    run 0 "$E" predict $DB --csv rows.csv
    run 0 "$E" export $DB --out head.ckpt
    [ "$(cksum <user.db)" = "$before" ] || fail "a refused open or a read-only command changed user.db"
    run 0 "$E" train $OTHER --quiet --upgrade-backbone --epochs 20
    expect_error_prefix "edgetune: note: 'user.db' was trained with another backbone"
    run 0 "$E" info $OTHER
    run 0 "$E" info $DB
    expect_out "backbone     $PWD/backbone2.etb"
    run 2 "$E" forget $DB --ids 1-9223372036854775807
    expect_error "edgetune: forget: id range '1-9223372036854775807' makes more than 10000000 ids (see edgetune forget --help)"
    run 2 "$E" forget $DB --ids 1-6000000,1-6000000
    expect_error "edgetune: forget: id range '1-6000000' makes more than 10000000 ids (see edgetune forget --help)"
    run 2 "$E" forget $DB --ids +-1
    expect_error "edgetune: forget: bad sample id '+-1' (expected N or N-M, ids > 0) (see edgetune forget --help)"
    run 1 "$E" add $DB --csv plus_minus.csv
    expect_error_prefix "edgetune: add: line 2"
    ;;
reports)
    # Reports people read (classes by name, per-class accuracy, confusions, runs as a table) and
    # the same as JSON, checked against each other by a parser.
    run 0 "$E" add $NEW --csv train.csv
    run 0 "$E" class $DB rename 1 dog
    run 0 "$E" train $DB --epochs 1 --lr 0.002 --quiet --json
    python3 -c '
import json, sys
r = json.load(open("out.txt"))
assert r["outcome"] == "committed" and r["steps"] > 0, r
assert r["train_samples"] + r["validation_samples"] == 120, r
' || fail "train --json is not the report"
    run 0 "$E" predict $DB --csv test.csv --labelled --k 2
    expect_out "per class:"
    expect_out "      1  dog        20    "
    expect_out "top-2 accuracy"
    grep -q "^line [0-9]*: \(0\|dog\|2\) ([0-9.]*%), \(0\|dog\|2\) ([0-9.]*%)  \[label \(0\|dog\|2\)\]$" out.txt ||
        fail "predict rows do not name the classes"
    grep -q "^  \(0\|dog\|2\) -> \(0\|dog\|2\): [0-9]* ([0-9.]*%)$" out.txt ||
        fail "no most-confused pair listed (a barely trained head confuses some rows)"
    run 0 "$E" predict $DB --csv test.csv --labelled --k 2 --json
    python3 -c '
import json
d = json.load(open("out.txt"))
rows = d["rows"]
assert len(rows) == 60 and all(len(r["top"]) == 2 for r in rows)
right = sum(r["top"][0]["label"] == r["label"] for r in rows)
assert abs(d["accuracy"] - right / 60) < 1e-6, (d["accuracy"], right)
assert right < 60, "expected some confusions from a barely trained head"
topk = sum(r["label"] in (t["label"] for t in r["top"]) for r in rows)
assert abs(d["top_k_accuracy"] - topk / 60) < 1e-6 and d["top_k"] == 2
names = {c["label"]: c["name"] for c in d["classes"]}
assert names == {0: "0", 1: "dog", 2: "2"}, names
for c in d["classes"]:
    mine = [r for r in rows if r["label"] == c["label"]]
    assert c["samples"] == len(mine)
    assert abs(c["accuracy"] - sum(r["top"][0]["label"] == r["label"] for r in mine) / len(mine)) < 1e-6
pairs = {}
for r in rows:
    if r["top"][0]["label"] != r["label"]:
        key = (r["label"], r["top"][0]["label"])
        pairs[key] = pairs.get(key, 0) + 1
assert {(c["label"], c["answered"]): c["rows"] for c in d["confusions"]} == pairs
counts = [c["rows"] for c in d["confusions"]]
assert counts == sorted(counts, reverse=True)
' || fail "predict --json is inconsistent"
    # A head calibrated for "unknown" answers it for inputs far from every class.
    run 0 "$E" train $DB --again --epochs 30 --lr 0.05 --unknown far:0.05 --quiet
    printf '0,0,0,0,3\n1,-2,-2,-2,-2\n0,2,0,0,0\n' >odd.csv
    run 0 "$E" predict $DB --csv odd.csv --labelled --k 1
    expect_out "line 1: unknown (best "
    expect_out "line 2: unknown (best "
    expect_out "line 3: 0 ("
    expect_out "  label  name  samples  accuracy  answered unknown"
    expect_out "      0  0           2   100.00%                 1"
    expect_out "  dog -> unknown: 1 (100.0%)"
    expect_out "answered unknown: 2 of 3 rows"
    run 0 "$E" info $DB
    expect_out "classes      3"
    expect_out "      1  dog        40"
    expect_out "  run   time (UTC)           outcome         steps   train   valid  before     after     reason"
    grep -q "^  #1 .* committed  *[0-9]*  *9[0-9]  *2[0-9]  .*-> .*completed" out.txt ||
        fail "the run is not a table row"
    run 0 "$E" info $DB --json
    python3 -c '
import json
d = json.load(open("out.txt"))
assert d["samples"] == 120 and [c["name"] for c in d["classes"]] == ["0", "dog", "2"]
assert [c["samples"] for c in d["classes"]] == [40, 40, 40]
assert d["backbone"]["features"] == 16 and len(d["backbone"]["digest"]) == 16
assert [c["kind"] for c in d["checkpoints"]] == ["base", "trained", "trained"]
assert len(d["runs"]) == 2 and d["runs"][0]["report"]["outcome"] == "committed"
' || fail "info --json is not what the database holds"
    ;;
recipe)
    # The training recipe: flags for the library's options, --recipe defaults, the recipe stored
    # with the head and used again by forget and class remove; bad values named.
    run 0 "$E" add $NEW --csv train.csv
    run 0 "$E" train $DB --recipe keyboard --quiet --json
    python3 -c '
import json
r = json.load(open("out.txt"))
assert r["outcome"] == "committed" and r["epochs"] == 4, r
# batch 64 over the training split (93 of 120; 27 validate): 2 steps an epoch
assert r["steps"] == 8 and r["train_samples"] == 93, r
' || fail "train --recipe keyboard did not train 4 epochs of batch 64"
    run 0 "$E" info $DB --json
    python3 -c '
import json
d = json.load(open("out.txt"))
assert d["recipe"] == {"batch": "64", "epochs": "4", "lr": "0.02", "momentum": "0.9",
                       "optimizer": "sgd", "replay": "reservoir:8000", "seed": "7"}, d["recipe"]
' || fail "the keyboard recipe is not stored with the head"
    # forget retrains from the base with the stored recipe (4 epochs, batch 64), not defaults.
    run 0 "$E" forget $DB 1 --quiet --json
    python3 -c '
import json
r = json.loads(open("out.txt").read().split("\n", 1)[1])
assert r["retrained_from_base"] and r["epochs"] == 4 and r["steps"] == 8, r
' || fail "forget did not retrain with the stored recipe"
    run 0 "$E" forget $DB 2 --epochs 2 --quiet --json
    python3 -c '
import json
r = json.loads(open("out.txt").read().split("\n", 1)[1])
assert r["epochs"] == 2 and r["steps"] == 4, r
' || fail "a flag given to forget does not override the stored recipe"
    run 0 "$E" info $DB
    expect_out '"epochs":"2"'
    # Another optimizer takes none of the stored one's settings (SGD's lr and momentum).
    run 0 "$E" forget $DB 3 --optimizer adam --quiet
    expect_out "retrained from the base head"
    run 0 "$E" info $DB
    expect_out 'recipe       {"batch":"64","epochs":"2","optimizer":"adam","replay":"reservoir:8000","seed":"7"}'
    # Every option reaches the library: a run with all of them commits.
    run 0 "$E" add $DB --csv more.csv
    run 0 "$E" train $DB --optimizer adamw --lr 0.01 --weight-decay 0.001 --schedule cosine \
        --warmup 3 --min-lr 1e-5 --clip 1 --balance on --base-pull 0.01 --label-smoothing 0.1 \
        --validation 0.25 --new-share 0.3 --unknown eer --tolerance 0.5 --epochs 8 --quiet
    expect_out "outcome     committed"
    expect_out "samples     107 training, 40 validation"
    run 0 "$E" train $DB --again --optimizer sgd --momentum 0.9 --schedule step:5:0.5 --quiet
    expect_out "outcome     committed"
    run 0 "$E" train $DB --again --recipe enroll --schedule exp:0.99 --lr 1e-50 --quiet
    expect_out "samples     147 training, 0 validation"
    for bad in "--recipe fast|--recipe: expected enroll, incremental or keyboard, got 'fast'" \
        "--schedule wobble|--schedule: expected constant, cosine[:STEPS], step:N[:GAMMA] or exp:GAMMA, got 'wobble'" \
        "--schedule step:5:0|--schedule step:N:GAMMA needs GAMMA > 0, got 'step:5:0'" \
        "--unknown far:1.5|--unknown: expected off, eer or far:F with F in (0, 1), got 'far:1.5'" \
        "--balance maybe|--balance: expected on or off, got 'maybe'" \
        "--label-smoothing 1|--label-smoothing = 1 must be < 1" \
        "--validation 2|--validation = 2 must be < 1" \
        "--warmup -1|--warmup = -1 must be >= 0" \
        "--optimizer sgd --momentum nan|--momentum: expected a number >= 0, got 'nan'" \
        "--momentum 0.9|--momentum applies to --optimizer sgd only (the optimizer is adam)"; do
        flag=${bad%%|*}
        run 2 "$E" train $DB --again $flag
        expect_error "edgetune: train: ${bad#*|} (see edgetune train --help)"
    done
    # --init-seed: recorded at creation; the same seed gives the same head, another another.
    for db in a b c; do
        seed=3
        [ "$db" = c ] && seed=4
        run 0 "$E" add --db $db.db --backbone backbone.etb --classes 3 --init-seed $seed --csv train.csv
        run 0 "$E" train --db $db.db --epochs 3 --quiet
        # (the head's predictions: an exported checkpoint also holds the run's duration)
        run 0 "$E" predict --db $db.db --csv rows.csv --json
        cp out.txt $db.json
    done
    cmp -s a.json b.json || fail "two databases created with --init-seed 3 trained to different heads"
    cmp -s a.json c.json && fail "--init-seed 3 and 4 gave the same head"
    run 1 "$E" info --db a.db --init-seed 4
    expect_error "edgetune: info: 'a.db' was created with --init-seed 3; --init-seed applies only when a database is created"
    # 1e-50 is a number (it underflows to 0), in a CSV as on the command line.
    printf '0,1e-50,0,0,2\n' >tiny.csv
    run 0 "$E" add $DB --csv tiny.csv
    expect_out "added 1 sample"
    ;;
words)
    # The keyboard flow with words: a token backbone's vocabulary recorded once, typed text in,
    # suggested words out.
    KB="--db kb.db --backbone tokens.etb --classes 8"
    run 1 "$E" add $KB --vocabulary words_short.vocab --text "the cat"
    expect_error "edgetune: add: 'words_short.vocab' has 3 words; the backbone's vocabulary has 8"
    run 1 "$E" add $KB --text "the cat"
    expect_error "edgetune: add: --text needs the backbone's vocabulary: give --vocabulary FILE once"
    [ -e kb.db ] && fail "a refused add created kb.db"
    run 1 "$E" add $NEW --vocabulary words.vocab --csv train.csv
    expect_error "edgetune: add: 'words.vocab': a vocabulary needs a token backbone; this one takes 4 floats"
    run 0 "$E" add $KB --vocabulary words.vocab --text "The cat sat on the mat. The dog sat on the mat."
    expect_out "added 14 samples (ids 1-14); kb.db holds 14"
    # An unknown word is <unk>: a context, never a label.
    run 0 "$E" add --db kb.db --text "the zebra sat"
    expect_out "added 3 samples (ids 15-17)"
    run 0 "$E" train --db kb.db --epochs 200 --lr 0.05 --validation 0 --quiet
    expect_out "outcome     committed"
    run 0 "$E" predict --db kb.db --text "the cat sat on the"
    expect_out 'after "the cat sat on the" (the model reads: sat on the): mat ('
    run 0 "$E" predict --db kb.db --text "The dog" --k 2 --json
    python3 -c '
import json
d = json.load(open("out.txt"))
assert d["context"] == "<s> the dog", d
assert [t["word"] for t in d["top"]][0] == "sat" and len(d["top"]) == 2, d
assert d["top"][0]["label"] == 4 and d["top"][0]["probability"] > 0.5, d
' || fail "predict --text --json does not suggest 'sat' after 'the dog'"
    run 0 "$E" info --db kb.db
    expect_out "      6  mat          2"
    expect_out "vocabulary   8 words"
    run 0 "$E" class --db kb.db list
    expect_out "     6  mat                             2 samples"
    run 2 "$E" predict --db kb.db --text "the" --csv rows.csv
    expect_error "edgetune: predict: give either --text or --csv (with --labelled), not both (see edgetune predict --help)"
    run 0 "$E" add $NEW --csv train.csv
    run 1 "$E" predict $DB --text "the cat"
    expect_error "edgetune: predict: --text needs the backbone's vocabulary: give --vocabulary FILE once"
    ;;
scale)
    # 60,000 images stream into the database in bounded memory, with a progress bar on a
    # terminal.
    "$fixture" . --big || fail "cli_fixture --big"
    BIG="--db big.db --backbone backbone784.etb --classes 10 --idx-images big_images.idx --idx-labels big_labels.idx"
    script -qec "/usr/bin/time -v -o time.txt \"$E\" add $BIG" /dev/null >out.txt 2>err.txt ||
        fail "add of 60000 images failed: $(cat out.txt err.txt)"
    expect_out "added 60000 samples (ids 1-60000); big.db holds 60000"
    expect_out "] 100% 60000/60000 images"
    rss=$(sed -n 's/^[[:space:]]*Maximum resident set size (kbytes): \([0-9]*\)$/\1/p' time.txt)
    [ -n "$rss" ] && [ "$rss" -lt 150000 ] || fail "peak RSS of the 60000-image add: ${rss:-?} KB (limit 150000)"
    echo "60000-image add: peak RSS ${rss:-?} KB" >&2
    run 0 "$E" add --db big.db --idx-images big_images.idx --idx-labels big_labels.idx --limit 10
    expect_out "added 10 samples (ids 60001-60010); big.db holds 60010"
    [ -s err.txt ] && fail "the progress bar was drawn while stderr is not a terminal"
    run 0 "$E" info --db big.db
    expect_out "samples      60010"
    ;;
keyboard)
    # The CLI takes over from examples/keyboard (its backbone, vocabulary and database).
    "$keyboard" --small >keyboard.log 2>&1 || { fail "examples/keyboard --small failed"; tail keyboard.log >&2; }
    run 1 "$E" info --db keyboard.db
    expect_error_prefix "edgetune: info: 'keyboard.db' does not record its backbone file"
    run 0 "$E" add --db keyboard.db --backbone keyboard.etb --vocabulary keyboard.vocab \
        --text "Keyboard, n.: A thing that learns the words you type."
    expect_out "added "
    run 0 "$E" info --db keyboard.db
    expect_out "vocabulary   1000 words"
    expect_out "      2  the    "
    run 0 "$E" train --db keyboard.db --recipe keyboard --quiet
    expect_out "steps       "
    run 0 "$E" predict --db keyboard.db --text "The words you"
    grep -q '^after "The words you" (the model reads: the words you): [^ ]* ([0-9.]*%), [^ ]* ([0-9.]*%), [^ ]* ([0-9.]*%)$' out.txt ||
        fail "no three suggested words after 'The words you'"
    ;;
setup)
    # The database records its setup: created once with --backbone/--classes, then --db only;
    # what it holds and what is given are named when they disagree; reading never writes.
    run 1 "$E" info --db none.db
    expect_error "edgetune: info: database 'none.db' does not exist (\`edgetune add --backbone FILE --classes N\` creates it)"
    [ -e none.db ] && fail "info created none.db"
    : >empty.db
    run 1 "$E" info --db empty.db
    expect_error "edgetune: info: 'empty.db' is an empty file, not an edgetune database"
    run 1 "$E" predict --db empty.db --csv rows.csv
    [ -s empty.db ] && fail "info or predict wrote into empty.db"
    [ -e empty.db-wal ] && fail "info or predict made empty.db a store"
    printf 'not a database\n' >text.db
    run 1 "$E" info --db text.db
    expect_error "edgetune: info: 'text.db' is not an edgetune database ([sample_store.read_meta 'text.db'] file is not a database (SQLite code 26))"
    run 0 "$E" add --db user.db --backbone backbone.etb --classes 3 --head prototype --csv train.csv
    for c in "train --epochs 10 --quiet" "predict --csv rows.csv" "forget 1 --quiet" \
        "export --out head.ckpt" "class list" "info"; do
        run 0 "$E" $c --db user.db
    done
    expect_out "head         prototype head created with 3 classes; 3 classes now"
    expect_out "backbone     $PWD/backbone.etb (digest "
    run 0 "$E" info --db user.db --head prototype --classes 3 --backbone backbone.etb
    run 1 "$E" train --db user.db --head linear
    expect_error "edgetune: train: 'user.db' holds a prototype head created with 3 classes (3 classes now); --head linear was given (--head and --classes only apply when a database is created; leave them out)"
    # The backbone file moved: the database says so; --backbone once records the new path.
    mv backbone.etb moved.etb
    run 1 "$E" info --db user.db
    expect_error_prefix "edgetune: info: 'user.db' was created with backbone '$PWD/backbone.etb' (digest "
    grep -qF "which does not exist any more; give --backbone FILE" err.txt || fail "no hint to give --backbone"
    run 0 "$E" info --db user.db --backbone moved.etb
    run 1 "$E" info --db user.db
    run 0 "$E" train --db user.db --backbone moved.etb --epochs 5 --quiet
    run 0 "$E" info --db user.db
    expect_out "backbone     $PWD/moved.etb (digest "
    # Another file at the recorded path is refused, never used.
    cp backbone2.etb moved.etb
    run 1 "$E" predict --db user.db --csv rows.csv
    expect_error_prefix "edgetune: predict: the backbone file '$PWD/moved.etb' recorded by 'user.db' has changed (digest "
    run 2 "$E" train --db user.db --upgrade-backbone
    expect_error "edgetune: train: --upgrade-backbone needs --backbone FILE (the new backbone) (see edgetune train --help)"
    ;;
*)
    echo "cli_test.sh: unknown scenario '$scenario'" >&2
    exit 2
    ;;
esac

if [ "$failures" -ne 0 ]; then
    echo "cli_test.sh $scenario: $failures check(s) failed" >&2
    exit 1
fi
echo "cli_test.sh $scenario: ok"
