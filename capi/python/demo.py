#!/usr/bin/env python3
"""demo.py — enrollment through the C ABI from a second language (Python ctypes, standing for
the JNI, Swift or Dart FFI layer of an app): enroll three people from 5 shots each, train the
head with a progress bar drawn from the ABI's progress callback, then recognize new shots.

The "people" are three clusters in the 4-D input space of the test backbone (make_backbones);
an app would feed its own backbone's inputs (face crops, voice frames) the same way.
Exits non-zero unless at least 90% of the new shots are recognized.
Usage: demo.py --lib libedgetune.so --backbone floats.etb --db DIR/demo.db
"""
import argparse
import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import edgetune  # noqa: E402

PEOPLE = ["ada", "grace", "linus"]


def shot(person, rng):
    """One 4-D input of person i: a bump of 2 on coordinate i, plus N(0, 0.3) noise."""
    return [(2.0 if k == person else 0.0) + rng.gauss(0.0, 0.3) for k in range(4)]


def progress_bar(total_epochs, width=30):
    """A callback for Personalizer.train: redraws one line on a terminal; in a log, one line
    every 10 epochs."""
    tty, shown = sys.stdout.isatty(), set()

    def show(step, epoch, loss):
        done = int(width * epoch / total_epochs)
        bar = (f"  train [{'#' * done}{'.' * (width - done)}] epoch {epoch:2d}/{total_epochs}"
               f" step {step:3d} loss {loss:.3f}")
        if tty:
            sys.stdout.write("\r" + bar)
        elif epoch % 10 == 0 and epoch not in shown:
            shown.add(epoch)
            sys.stdout.write(bar + "\n")
        sys.stdout.flush()
        return 0  # non-zero would cancel
    return show


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib", required=True)
    ap.add_argument("--backbone", required=True)
    ap.add_argument("--db", required=True)
    args = ap.parse_args()
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(args.db + suffix):
            os.remove(args.db + suffix)
    rng = random.Random(7)
    lib = edgetune.Library(args.lib)
    version, abi = lib.version()
    print(f"libedgetune {version} (C ABI {abi}) through ctypes")
    with lib.backbone(args.backbone) as bb, lib.open(args.db, bb, len(PEOPLE)) as p:
        rows, labels = [], []
        for i, name in enumerate(PEOPLE):
            for _ in range(5):
                rows.append(shot(i, rng))
                labels.append(i)
        ids = p.add(rows, labels)
        info = p.info()
        print(f"enrolled {len(PEOPLE)} people x 5 shots: ids {ids[0]}..{ids[-1]}, "
              f"{info.samples} stored, features {info.feature_width} wide")
        epochs = 40
        report = p.train(epochs=epochs, learning_rate=0.05, batch=8,
                         on_progress=progress_bar(epochs))
        print(f"{chr(10) if sys.stdout.isatty() else ''}  {report.outcome_name}: {report.steps} steps in {report.duration_ms} ms")
        right, total = 0, 0
        for i, name in enumerate(PEOPLE):
            for _ in range(10):
                (label, prob), *_ = p.predict(shot(i, rng), k=2)
                right += label == i
                total += 1
            top = p.predict(shot(i, rng), k=3)
            print(f"  a new shot of {name:6s} -> " +
                  ", ".join(f"{PEOPLE[lab]} {pr:.2f}" for lab, pr in top))
        try:
            p.predict([1.0, 2.0], k=1)
            raise SystemExit("FAIL: a 2-wide input was accepted")
        except edgetune.Error as e:
            print(f"  a wrong-width input is refused: {e.status}: {e}")
        accuracy = right / total
        print(f"recognized {right}/{total} new shots ({accuracy:.0%})")
        if accuracy < 0.9:
            raise SystemExit("FAIL: fewer than 90% of the new shots recognized")


if __name__ == "__main__":
    main()
