#!/usr/bin/python3
"""train_cnn.py: a small CNN backbone trained in PyTorch, for `edgetune import` and examples/enroll.

The "bring your own backbone" path end to end: a model trained elsewhere (here PyTorch 1.13 on
the developer's machine), exported to ONNX, converted once, then personalized on the device.

Trains on the first 50000 Fashion-MNIST training images of classes 0-5 (the protocol of
examples/enroll, whose device data are the last 10000, never seen here), 3 epochs of Adam,
then exports examples/data/cnn-0-5.onnx (batch axis dynamic, opset 13, BatchNorm kept as nodes
so the converter folds it) and prints the test accuracy on classes 0-5.

  conv 3x3 1->16 + BN + ReLU, max pool 2 -> conv 3x3 16->32 + BN + ReLU, max pool 2
  -> conv 3x3 32->64 + BN + ReLU -> global average pool -> Linear 64->128 + ReLU (features)
  -> Linear 128->6 (the shipped classifier)

Then:
  edgetune import examples/data/cnn-0-5.onnx out/cnn-0-5.etb --output /features/Relu \
      --mean 0.2860 --std 0.3530 --head-output output --head out/cnn-0-5-head.etk
  enroll --backbone out/cnn-0-5.etb

Usage: /usr/bin/python3 examples/train_cnn.py [--epochs N] [--out PATH]
"""
import argparse
import gzip
import os
import time

import numpy as np
import torch
from torch import nn

DATA = "/usr/share/datasets/fashion-mnist"
MEAN, STD = 0.2860, 0.3530


def read_idx(name):
    with gzip.open(os.path.join(DATA, name), "rb") as f:
        data = f.read()
    if name.endswith("images-idx3-ubyte.gz"):
        return np.frombuffer(data, np.uint8, offset=16).reshape(-1, 1, 28, 28)
    return np.frombuffer(data, np.uint8, offset=8)


class Features(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 128)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.fc(x))


class Cnn(nn.Module):
    def __init__(self, classes=6):
        super().__init__()

        def block(cin, cout):
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                    nn.ReLU()]

        self.body = nn.Sequential(*block(1, 16), nn.MaxPool2d(2), *block(16, 32),
                                  nn.MaxPool2d(2), *block(32, 64), nn.AdaptiveAvgPool2d(1),
                                  nn.Flatten())
        self.features = Features()
        self.classifier = nn.Linear(128, classes)

    def forward(self, x):
        return self.classifier(self.features(self.body(x)))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "data",
                                                 "cnn-0-5.onnx"))
    args = p.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(2)
    images, labels = read_idx("train-images-idx3-ubyte.gz")[:50000], read_idx(
        "train-labels-idx1-ubyte.gz")[:50000]
    keep = labels < 6
    x = (torch.tensor(images[keep], dtype=torch.float32) / 255 - MEAN) / STD
    y = torch.tensor(labels[keep], dtype=torch.int64)
    tx, ty = read_idx("t10k-images-idx3-ubyte.gz"), read_idx("t10k-labels-idx1-ubyte.gz")
    tkeep = ty < 6
    test_x = (torch.tensor(tx[tkeep], dtype=torch.float32) / 255 - MEAN) / STD
    test_y = torch.tensor(ty[tkeep], dtype=torch.int64)

    model = Cnn()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for epoch in range(args.epochs):
        model.train()
        start, perm, total = time.time(), torch.randperm(len(y)), 0.0
        for i in range(0, len(y), 64):
            idx = perm[i:i + 64]
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        model.eval()
        with torch.no_grad():
            acc = (model(test_x).argmax(1) == test_y).float().mean().item()
        print(f"epoch {epoch + 1}/{args.epochs}  loss {total / len(y):.4f}  "
              f"test accuracy (classes 0-5) {100 * acc:.2f}%  ({time.time() - start:.0f} s)")
    model.eval()
    torch.onnx.export(model, test_x[:1], args.out, opset_version=13, input_names=["input"],
                      output_names=["output"],
                      dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
                      training=torch.onnx.TrainingMode.PRESERVE)
    print(f"wrote {args.out} ({os.path.getsize(args.out)} bytes); features: /features/relu/Relu "
          f"(128), shipped classifier: output (6)")


if __name__ == "__main__":
    main()
