#!/usr/bin/python3
"""enroll_data.py — writes the data of examples/enroll as CSV files for the `edgetune` CLI, so a
CLI enrollment can be compared with the example on the very same samples (cli/tests/enroll_cli.sh).

From Debian's dataset-fashion-mnist (/usr/share/datasets/fashion-mnist): the device's data are
training images 50000-59999; stored.csv holds the first STORED of each old class 0-5 there (in
file order), shots.csv the images e*k .. e*k+k-1 of each new class 6-9 (episode e), and
test_new.csv / test_old.csv the test images of the new and old classes. Rows: label, then the
784 pixels scaled to [0, 1] as float32 (pixel / 255, printed exactly).

Usage: enroll_data.py OUT_DIR [--k 5] [--episode 0] [--stored 100]
"""
import argparse
import gzip
import os

import numpy as np

DATA = "/usr/share/datasets/fashion-mnist"


def read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic = int.from_bytes(data[0:4], "big")
    dims = magic & 0xFF
    shape = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def write_csv(path, images, labels):
    pixels = images.reshape(len(images), -1).astype(np.float32) / np.float32(255)
    with open(path, "w") as out:
        for label, row in zip(labels, pixels):
            out.write(str(int(label)) + "," + ",".join("%.9g" % v for v in row) + "\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--episode", type=int, default=0)
    ap.add_argument("--stored", type=int, default=100)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    train_x = read_idx(DATA + "/train-images-idx3-ubyte.gz")
    train_y = read_idx(DATA + "/train-labels-idx1-ubyte.gz")
    test_x = read_idx(DATA + "/t10k-images-idx3-ubyte.gz")
    test_y = read_idx(DATA + "/t10k-labels-idx1-ubyte.gz")
    dev_x, dev_y = train_x[50000:], train_y[50000:]
    rows = {c: np.nonzero(dev_y == c)[0] for c in range(10)}
    stored = np.concatenate([rows[c][: a.stored] for c in range(6)])
    first = a.episode * a.k
    shots = np.concatenate([rows[c][first: first + a.k] for c in range(6, 10)])
    write_csv(a.out + "/stored.csv", dev_x[stored], dev_y[stored])
    write_csv(a.out + "/shots.csv", dev_x[shots], dev_y[shots])
    new = test_y >= 6
    write_csv(a.out + "/test_new.csv", test_x[new], test_y[new])
    write_csv(a.out + "/test_old.csv", test_x[~new], test_y[~new])


if __name__ == "__main__":
    main()
