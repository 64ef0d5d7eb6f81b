#!/usr/bin/env python3
"""enroll_torch.py — examples/enroll's few-shot enrollment (k = 5, with replay) in PyTorch 1.13.

The peer of `enroll --json`: same data, architecture, hyperparameters and protocol, so the two
JSON lines can be compared side by side (new-class accuracy should agree within ~2 points;
the runs differ in random initialization, shuffling and replay draws, not in method).

  1. Backbone: MLP 784 -> 256 -> 128 (ReLU after each layer) + Linear(128, 10), trained on the
     first 50000 training images of classes 0-5, Adam lr 1e-3, batch 64, 5 epochs, shuffled.
  2. Device data: the last 10000 training images. Stored: the first 100 images of each class
     0-5 there (file order). Episode e's shots: images e*k .. e*k+k-1 of each class 6-9 there.
  3. Head (linear: nn.Linear(128, 10); prototype: L2-normalized features, unseen classes have
     weight 0 and bias -1/T, a class seen for the first time starts at W_c = 2 mu_c / T,
     b_c = -|mu_c|^2 / T with T = 0.1), trained on the stored samples: Adam lr 1e-3, batch 32,
     10 epochs ("before").
  4. Enrollment: the shots + a uniform draw of 200 stored samples, class-balanced
     cross-entropy weights (w_c = n / (classes present * n_c)), Adam lr 1e-3 continuing the
     optimizer state of step 3, batch 32, 30 epochs.
  5. Test accuracy on classes 6-9 (new), 0-5 (old) and all, mean over the episodes.

Prints one JSON line: {"framework":"pytorch","k":5,...,"linear":{"new":..,"old":..,"all":..},
"prototype":{...}} (accuracies in %). Single-threaded (torch.set_num_threads(1)).
Usage: /usr/bin/python3 bench/peers/enroll_torch.py [--episodes 3] [--seed 1] [--small]
"""
import argparse
import copy
import gzip
import json
import struct
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

DATA = "/usr/share/datasets/fashion-mnist"
BACKBONE_IMAGES = 50000
OLD = list(range(6))
NEW = list(range(6, 10))


def read_idx(split):
    """(images float32 [n x 784] in [0, 1], labels int64 [n]) with the IDX headers checked."""
    prefix = f"{DATA}/{'train' if split == 'train' else 't10k'}"
    with gzip.open(prefix + "-images-idx3-ubyte.gz", "rb") as f:
        magic, n, rows, cols = struct.unpack(">IIII", f.read(16))
        assert magic == 0x803 and rows == 28 and cols == 28, "bad image file"
        images = np.frombuffer(f.read(n * 784), dtype=np.uint8).reshape(n, 784)
    with gzip.open(prefix + "-labels-idx1-ubyte.gz", "rb") as f:
        magic, m = struct.unpack(">II", f.read(8))
        assert magic == 0x801 and m == n, "bad label file"
        labels = np.frombuffer(f.read(n), dtype=np.uint8)
    return torch.from_numpy(images.astype(np.float32) / 255.0), torch.from_numpy(labels.astype(np.int64))


def train_backbone(x, y, epochs, gen):
    net = torch.nn.Sequential(torch.nn.Linear(784, 256), torch.nn.ReLU(),
                              torch.nn.Linear(256, 128), torch.nn.ReLU())
    classifier = torch.nn.Linear(128, 10)
    opt = torch.optim.Adam(list(net.parameters()) + list(classifier.parameters()), lr=1e-3)
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=gen)
        for at in range(0, len(y), 64):
            idx = order[at:at + 64]
            opt.zero_grad()
            loss = F.cross_entropy(classifier(net(x[idx])), y[idx])
            loss.backward()
            opt.step()
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


class Head(torch.nn.Module):
    """Linear or prototype head over frozen features (edgetune's HeadSpec.linear / .prototype)."""

    def __init__(self, kind, temperature=0.1):
        super().__init__()
        self.kind, self.t = kind, temperature
        self.linear = torch.nn.Linear(128, 10)
        self.seen = [False] * 10
        if kind == "prototype":
            with torch.no_grad():
                self.linear.weight.zero_()
                self.linear.bias.fill_(-1.0 / temperature)

    def prepare(self, f):
        return F.normalize(f, dim=1) if self.kind == "prototype" else f

    def forward(self, f):
        return self.linear(self.prepare(f))

    def init_prototypes(self, f, y):
        if self.kind != "prototype":
            return
        x = self.prepare(f)
        with torch.no_grad():
            for c in y.unique().tolist():
                if self.seen[c]:
                    continue
                mu = x[y == c].mean(0)
                self.linear.weight[c] = 2.0 * mu / self.t
                self.linear.bias[c] = -(mu * mu).sum() / self.t


def train_head(head, opt, f, y, epochs, balance, gen):
    head.init_prototypes(f, y)
    for c in y.unique().tolist():
        head.seen[c] = True
    weight = None
    if balance:
        counts = torch.bincount(y, minlength=10).double()
        present = (counts > 0).sum().double()
        weight = torch.ones(10, dtype=torch.float64)
        weight[counts > 0] = len(y) / (present * counts[counts > 0])
        weight = weight.float()
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=gen)
        for at in range(0, len(y), 32):
            idx = order[at:at + 32]
            opt.zero_grad()
            loss = F.cross_entropy(head(f[idx]), y[idx], weight=weight)
            loss.backward()
            opt.step()


def accuracy(head, f, y, classes):
    mask = torch.isin(y, torch.tensor(classes))
    with torch.no_grad():
        return (head(f[mask]).argmax(1) == y[mask]).double().mean().item()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--episodes", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--small", action="store_true", help="CI size, as enroll --small")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    start = time.time()

    small = args.small
    k, stored_per_class, replay = 5, (40 if small else 100), (80 if small else 200)
    x, y = read_idx("train")
    tx, ty = read_idx("test")
    if small:
        tx, ty = tx[:3000], ty[:3000]
    n_bb = 6000 if small else BACKBONE_IMAGES
    bb_mask = torch.isin(y[:n_bb], torch.tensor(OLD))
    net = train_backbone(x[:n_bb][bb_mask], y[:n_bb][bb_mask], 2 if small else 5, gen)
    bb_seconds = time.time() - start

    dx, dy = x[BACKBONE_IMAGES:], y[BACKBONE_IMAGES:]
    rows = {c: (dy == c).nonzero().flatten() for c in range(10)}
    stored = torch.cat([rows[c][:stored_per_class] for c in OLD])
    with torch.no_grad():
        dfeat = net(dx)
        tfeat = net(tx)

    result = {"framework": "pytorch", "k": k, "stored_per_class": stored_per_class,
              "replay": replay, "episodes": args.episodes}
    for kind in ("linear", "prototype"):
        # "Before": trained once on the stored samples; every episode starts from a copy of
        # the head and its optimizer state (edgetune copies the base database).
        base = Head(kind)
        base_opt = torch.optim.Adam(base.parameters(), lr=1e-3)
        train_head(base, base_opt, dfeat[stored], dy[stored], 10, False, gen)
        total = np.zeros(3)
        for e in range(args.episodes):
            head = copy.deepcopy(base)
            opt = torch.optim.Adam(head.parameters(), lr=1e-3)
            opt.load_state_dict(copy.deepcopy(base_opt.state_dict()))
            shots = torch.cat([rows[c][e * k:(e + 1) * k] for c in NEW])
            drawn = stored[torch.randperm(len(stored), generator=gen)[:replay]]
            rows_e = torch.cat([shots, drawn])
            train_head(head, opt, dfeat[rows_e], dy[rows_e], 30, True, gen)
            new, old = accuracy(head, tfeat, ty, NEW), accuracy(head, tfeat, ty, OLD)
            n_new = torch.isin(ty, torch.tensor(NEW)).sum().item()
            n_old = torch.isin(ty, torch.tensor(OLD)).sum().item()
            total += [new, old, (new * n_new + old * n_old) / (n_new + n_old)]
        total = 100.0 * total / args.episodes
        result[kind] = {"new": round(total[0], 2), "old": round(total[1], 2),
                        "all": round(total[2], 2)}
    print(f"backbone trained in {bb_seconds:.1f} s; total {time.time() - start:.1f} s",
          file=sys.stderr)
    print(json.dumps(result, separators=(",", ":")))


if __name__ == "__main__":
    main()
