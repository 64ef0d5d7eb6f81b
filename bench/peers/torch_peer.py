#!/usr/bin/env python3
"""torch_peer.py — the PyTorch 1.13 peer of edgetune_bench (bench/bench.cpp).

Runs the same tasks with the same shapes, optimizer, data sizes and timing protocol:
warm-up of at least 5 calls and 0.2 s (which also sizes a run), then 7 runs of ~0.2 s; the
value of a run is its mean time per call; median, min and max over runs are reported.
  head_linear / head_mlp / head_vocab   training steps (forward, cross-entropy, backward, Adam)
  personalize_e2e   cold start to committed checkpoint with Python's sqlite3 (--phase setup|run)
  ingest            the same inserts with Python's sqlite3 (WAL, synchronous=NORMAL / FULL)
  predict           single-sample top-3 through backbone + head
  cnn_features      the imported Fashion-MNIST CNN's features per image (batch 1 and 64)
Single-threaded: torch.set_num_threads(1); bench/run also sets OMP/OPENBLAS_NUM_THREADS=1.
Usage: /usr/bin/python3 bench/peers/torch_peer.py --task NAME [--tiny] [--json] [--dir D]
"""
import argparse
import gzip
import io
import json
import math
import os
import resource
import sqlite3
import sys
import time

_t_import = time.perf_counter()
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

IMPORT_SECONDS = time.perf_counter() - _t_import
torch.set_num_threads(1)

FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
HEADS = {  # name: (in, hidden, out, batch); hidden 0 = a linear head
    "head_linear": (512, 0, 10, 32),
    "head_mlp": (512, 256, 10, 64),
    "head_vocab": (128, 0, 10000, 64),
}
SINK = 0.0


def time_calls(call, tiny, runs=7, run_seconds=0.2, warmup_seconds=0.2):
    """Per-call wall and process-CPU seconds of each timed run, and calls per run (the
    protocol of bench.cpp's time_calls)."""
    if tiny:
        c0, t0 = time.process_time(), time.perf_counter()
        call()
        return [time.perf_counter() - t0], [time.process_time() - c0], 1
    n = 0
    w0 = time.perf_counter()
    while True:
        call()
        n += 1
        if n >= 5 and time.perf_counter() - w0 >= warmup_seconds:
            break
    per_call = (time.perf_counter() - w0) / n
    iters = max(1, round(run_seconds / per_call))
    wall, cpu = [], []
    for _ in range(runs):
        c0, t0 = time.process_time(), time.perf_counter()
        for _ in range(iters):
            call()
        wall.append((time.perf_counter() - t0) / iters)
        cpu.append((time.process_time() - c0) / iters)
    return wall, cpu, iters


def summarize(name, unit, values, higher_is_better=False, **extra):
    v = sorted(values)
    n = len(v)
    median = v[n // 2] if n % 2 else 0.5 * (v[n // 2 - 1] + v[n // 2])
    row = {"name": name, "unit": unit, "higher_is_better": higher_is_better,
           "median": median, "min": v[0], "max": v[-1], "runs": n}
    row.update(extra)
    return row


def timed_row(name, timings):
    wall, cpu, calls = timings
    c = summarize(name, "us", [s * 1e6 for s in cpu])
    return summarize(name, "us", [s * 1e6 for s in wall], cpu_median=c["median"],
                     cpu_min=c["min"], calls_per_run=calls)


# ---- head tasks ------------------------------------------------------------------------

def make_model(d_in, hidden, d_out):
    if hidden == 0:
        return nn.Linear(d_in, d_out)
    return nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, d_out))


def run_head(name, tiny):
    d_in, hidden, d_out, batch = HEADS[name]
    torch.manual_seed(7)
    model = make_model(d_in, hidden, d_out)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(1234)
    pool = 2 * batch if tiny else 1024
    xs = [x.contiguous() for x in torch.rand(pool, d_in, generator=g).split(batch)]
    ys = [y.contiguous() for y in torch.randint(0, d_out, (pool,), generator=g).split(batch)]
    k = [0]

    def step():
        global SINK
        i = k[0] % len(xs)
        k[0] += 1
        opt.zero_grad()
        loss = F.cross_entropy(model(xs[i]), ys[i])
        loss.backward()
        opt.step()
        SINK += loss.item()

    return [timed_row(name, time_calls(step, tiny))]


# ---- data ------------------------------------------------------------------------------

def load_images(n):
    """First n Fashion-MNIST training images in [0, 1] and labels (generated if absent)."""
    try:
        with gzip.open(os.path.join(FASHION_MNIST, "train-images-idx3-ubyte.gz")) as f:
            head = f.read(16)
            assert int.from_bytes(head[0:4], "big") == 0x803
            rows, cols = int.from_bytes(head[8:12], "big"), int.from_bytes(head[12:16], "big")
            pixels = np.frombuffer(f.read(n * rows * cols), dtype=np.uint8)
        with gzip.open(os.path.join(FASHION_MNIST, "train-labels-idx1-ubyte.gz")) as f:
            assert int.from_bytes(f.read(8)[0:4], "big") == 0x801
            labels = np.frombuffer(f.read(n), dtype=np.uint8)
        x = (pixels.astype(np.float32) / np.float32(255.0)).reshape(n, rows * cols)
        return x, labels.astype(np.int64), "fashion-mnist"
    except (OSError, AssertionError):
        rng = np.random.default_rng(99)
        return (rng.random((n, 784), dtype=np.float32), rng.integers(0, 10, n),
                "generated (dataset-fashion-mnist not installed)")


def remove_db(path):
    for suffix in ("", "-wal", "-shm", "-journal"):
        try:
            os.remove(path + suffix)
        except FileNotFoundError:
            pass


def connect(path, synchronous="NORMAL"):
    con = sqlite3.connect(path, isolation_level=None)  # explicit BEGIN/COMMIT below
    con.execute("PRAGMA journal_mode=WAL")
    con.execute(f"PRAGMA synchronous={synchronous}")
    con.execute("PRAGMA foreign_keys=ON")
    return con


SCHEMA = """
CREATE TABLE IF NOT EXISTS samples(id INTEGER PRIMARY KEY, created_at INTEGER NOT NULL,
    input BLOB NOT NULL, label INTEGER NOT NULL, weight REAL NOT NULL DEFAULT 1.0);
CREATE TABLE IF NOT EXISTS features(sample_id INTEGER PRIMARY KEY
    REFERENCES samples(id) ON DELETE CASCADE, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS checkpoints(id INTEGER PRIMARY KEY, created_at INTEGER NOT NULL,
    step INTEGER NOT NULL, payload BLOB NOT NULL);
"""


# ---- ingest ----------------------------------------------------------------------------

def add_rows(con, xs, labels):
    """One transaction: validate (finite, width) and insert; returns ids."""
    now = int(time.time() * 1000)
    rows = []
    for x, y in zip(xs, labels):
        if x.shape != (784,) or not np.isfinite(x).all() or not 0 <= y < 10:
            raise ValueError("bad sample")
        rows.append((now, x.tobytes(), int(y)))
    con.execute("BEGIN IMMEDIATE")
    cur = con.executemany("INSERT INTO samples(created_at, input, label) VALUES (?, ?, ?)", rows)
    con.execute("COMMIT")
    return cur.lastrowid


def run_ingest(tiny, scratch):
    total, per_batch = (200, 100) if tiny else (10000, 100)
    rng = np.random.default_rng(5)
    xs = list(rng.random((total, 784), dtype=np.float32))
    labels = rng.integers(0, 10, total)
    db = os.path.join(scratch, "torch_ingest.db")
    rates, cpu_rates = [], []
    for _ in range(1 if tiny else 3):
        remove_db(db)
        con = connect(db)
        con.executescript(SCHEMA)
        c0, t0 = time.process_time(), time.perf_counter()
        for at in range(0, total, per_batch):
            add_rows(con, xs[at:at + per_batch], labels[at:at + per_batch])
        rates.append(total / (time.perf_counter() - t0))
        cpu_rates.append(total / (time.process_time() - c0))
        assert con.execute("SELECT count(*) FROM samples").fetchone()[0] == total
        con.close()
    rows = [summarize("ingest_batch", "samples/s", rates, True, samples=total, batch=per_batch,
                      cpu_median=summarize("", "", cpu_rates)["median"])]
    for name, sync, adds in (("ingest_add", "NORMAL", 5 if tiny else 1000),
                             ("ingest_add_full", "FULL", 5 if tiny else 200)):
        remove_db(db)
        con = connect(db, sync)
        con.executescript(SCHEMA)
        for i in range(5):
            add_rows(con, xs[i:i + 1], labels[i:i + 1])
        us = []
        for i in range(5, 5 + adds):
            t0 = time.perf_counter()
            add_rows(con, xs[i:i + 1], labels[i:i + 1])
            us.append((time.perf_counter() - t0) * 1e6)
        con.close()
        p99 = sorted(us)[min(len(us) - 1, max(0, math.ceil(0.99 * len(us)) - 1))]
        rows.append(summarize(name, "us", us, p99_us=p99, adds=adds,
                              durability=f"synchronous={sync}"))
    remove_db(db)
    return rows


# ---- personalize_e2e and predict -------------------------------------------------------

def make_backbone():
    return nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU())


def e2e_size(tiny):
    return (64, 1) if tiny else (1000, 10)


def e2e_setup(scratch, tiny):
    """Not timed: the backbone file and a database holding the raw samples."""
    os.makedirs(scratch, exist_ok=True)
    db = os.path.join(scratch, "torch_e2e.db")
    remove_db(db)
    torch.manual_seed(11)
    torch.save(make_backbone().state_dict(), os.path.join(scratch, "backbone.pt"))
    x, y, source = load_images(e2e_size(tiny)[0])
    con = connect(db)
    con.executescript(SCHEMA)
    add_rows(con, list(x), y)
    con.close()
    return source


def e2e_run(scratch, tiny):
    """Timed: load the backbone, compute and cache features, train, commit a checkpoint."""
    n_expected, epochs = e2e_size(tiny)
    c0, t0 = time.process_time(), time.perf_counter()
    backbone = make_backbone()
    backbone.load_state_dict(torch.load(os.path.join(scratch, "backbone.pt")))
    backbone.eval().requires_grad_(False)
    load_s = time.perf_counter() - t0
    con = connect(os.path.join(scratch, "torch_e2e.db"))
    # Features of every sample lacking them, 256 at a time, cached in the database.
    while True:
        missing = con.execute("SELECT s.id, s.input FROM samples s LEFT JOIN features f "
                              "ON f.sample_id = s.id WHERE f.sample_id IS NULL "
                              "ORDER BY s.id LIMIT 256").fetchall()
        if not missing:
            break
        x = torch.from_numpy(np.frombuffer(bytearray(b"".join(r[1] for r in missing)), dtype=np.float32)
                             .reshape(len(missing), 784))
        if not torch.isfinite(x).all():
            raise ValueError("non-finite input")
        with torch.no_grad():
            feats = backbone(x).numpy()
        con.execute("BEGIN IMMEDIATE")
        con.executemany("INSERT OR REPLACE INTO features(sample_id, value) VALUES (?, ?)",
                        [(r[0], f.tobytes()) for r, f in zip(missing, feats)])
        con.execute("COMMIT")
    features_s = time.perf_counter() - t0 - load_s
    # Training reads the cached features, never the backbone.
    rows = con.execute("SELECT f.value, s.label FROM features f JOIN samples s "
                       "ON s.id = f.sample_id ORDER BY s.id").fetchall()
    feats = torch.from_numpy(np.frombuffer(bytearray(b"".join(r[0] for r in rows)), dtype=np.float32)
                             .reshape(len(rows), 128))
    labels = torch.tensor([r[1] for r in rows], dtype=torch.int64)
    torch.manual_seed(0)
    head = nn.Linear(128, 10)
    opt = torch.optim.Adam(head.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    steps, last_loss = 0, float("nan")
    for _ in range(epochs):
        perm = torch.randperm(len(rows), generator=gen)
        total = 0.0
        batches = 0
        for at in range(0, len(rows), 32):
            idx = perm[at:at + 32]
            opt.zero_grad()
            loss = F.cross_entropy(head(feats[idx]), labels[idx])
            value = loss.item()
            if not math.isfinite(value):
                raise RuntimeError("diverged")
            loss.backward()
            opt.step()
            steps += 1
            total += value
            batches += 1
        last_loss = total / batches
    # Commit: head + optimizer state in one checkpoint row.
    buf = io.BytesIO()
    torch.save({"head": head.state_dict(), "optimizer": opt.state_dict(), "step": steps}, buf)
    con.execute("BEGIN IMMEDIATE")
    con.execute("INSERT INTO checkpoints(created_at, step, payload) VALUES (?, ?, ?)",
                (int(time.time() * 1000), steps, buf.getvalue()))
    con.execute("COMMIT")
    train_s = time.perf_counter() - t0 - load_s - features_s
    con.close()  # SQLite checkpoints the WAL into the file
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    assert len(rows) == n_expected
    return summarize("personalize_e2e", "s", [seconds], cpu_median=cpu, load_s=load_s,
                     open_features_s=features_s, train_commit_s=train_s,
                     close_s=seconds - load_s - features_s - train_s,
                     peak_rss_kib_self=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                     steps=steps, samples=len(rows), final_loss=last_loss,
                     import_seconds=IMPORT_SECONDS)


def run_e2e(tiny, scratch, phase):
    if phase == "setup":
        e2e_setup(scratch, tiny)
        return []
    if phase == "run":
        return [e2e_run(scratch, tiny)]
    seconds, cpu, last = [], [], None
    for _ in range(1 if tiny else 3):
        e2e_setup(scratch, tiny)
        last = e2e_run(scratch, tiny)
        seconds.append(last["median"])
        cpu.append(last["cpu_median"])
    remove_db(os.path.join(scratch, "torch_e2e.db"))
    row = summarize("personalize_e2e", "s", seconds)
    row.update({k: v for k, v in last.items() if k not in row})
    row["cpu_median"] = summarize("", "", cpu)["median"]
    return [row]


def run_predict(tiny):
    torch.manual_seed(11)
    backbone = make_backbone().eval().requires_grad_(False)
    head = nn.Linear(128, 10).eval().requires_grad_(False)
    x, _, _ = load_images(16)
    inputs = [torch.from_numpy(row.copy()).reshape(1, 784) for row in x]
    k = [0]

    def call():
        global SINK
        xi = inputs[k[0] % len(inputs)]
        k[0] += 1
        with torch.no_grad():
            probs = torch.softmax(head(backbone(xi)), dim=1)
            top = torch.topk(probs, 3, dim=1)
        SINK += top.values[0, 0].item()
        return list(zip(top.indices[0].tolist(), top.values[0].tolist()))

    return [timed_row("predict", time_calls(call, tiny))]


# ---- cnn_features ------------------------------------------------------------------------

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")


def load_cnn():
    """examples/train_cnn.py's model with the weights of examples/data/cnn-0-5.onnx (the file
    edgetune imported), BatchNorm folded into the convolutions as the import does, eval mode."""
    import onnx
    from onnx import numpy_helper
    sys.path.insert(0, os.path.join(ROOT, "examples"))
    from train_cnn import Cnn
    model = Cnn().eval()
    graph = onnx.load(os.path.join(ROOT, "examples", "data", "cnn-0-5.onnx")).graph
    state = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in graph.initializer}
    missing = model.load_state_dict({k: v for k, v in state.items()
                                     if k in model.state_dict()}, strict=False).missing_keys
    assert all(k.endswith("num_batches_tracked") for k in missing), missing
    body = list(model.body)
    fused = []
    for i, m in enumerate(body):
        if isinstance(m, nn.BatchNorm2d):
            fused[-1] = torch.nn.utils.fusion.fuse_conv_bn_eval(fused[-1], m)
        else:
            fused.append(m)
    model.body = nn.Sequential(*fused)
    return lambda x: model.features(model.body(x))


def run_cnn_features(tiny):
    features = load_cnn()
    g = torch.Generator().manual_seed(3)
    x = torch.rand(64, 1, 28, 28, generator=g)
    mean, std = 0.2860, 0.3530  # the backbone file's normalization, done per call here too
    rows = []
    for name, batch in (("cnn_features", x[:1]), ("cnn_features_b64", x)):
        def call():
            global SINK
            with torch.no_grad():
                SINK += features((batch - mean) / std)[0, 0].item()
        wall, cpu, calls = time_calls(call, tiny)
        n = batch.shape[0]
        row = timed_row(name, ([w / n for w in wall], [c / n for c in cpu], calls))
        row["per"] = "image"
        rows.append(row)
    return rows


TASKS = ["head_linear", "head_mlp", "head_vocab", "personalize_e2e", "ingest", "predict",
         "cnn_features"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--task", default="all")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--dir", default="/tmp/edgetune-bench")
    ap.add_argument("--phase", choices=["setup", "run"])
    args = ap.parse_args()
    os.makedirs(args.dir, exist_ok=True)
    rows = []
    for task in TASKS if args.task == "all" else [args.task]:
        if task in HEADS:
            rows += run_head(task, args.tiny)
        elif task == "personalize_e2e":
            rows += run_e2e(args.tiny, args.dir, args.phase)
        elif task == "ingest":
            rows += run_ingest(args.tiny, args.dir)
        elif task == "predict":
            rows += run_predict(args.tiny)
        elif task == "cnn_features":
            rows += run_cnn_features(args.tiny)
        elif task.endswith("_limit") or task == "size":
            rows.append({"name": task, "missing": "not applicable to PyTorch"})
        else:
            sys.exit(f"torch_peer: unknown task '{task}'")
    if args.json:
        print(json.dumps({"program": "pytorch", "version": torch.__version__,
                          "threads": torch.get_num_threads(), "tiny": args.tiny,
                          "rows": rows}))
    else:
        print(f"torch_peer: PyTorch {torch.__version__}, threads {torch.get_num_threads()}")
        for r in rows:
            extra = {k: v for k, v in r.items()
                     if k not in ("name", "unit", "median", "min", "max", "runs")}
            if "missing" in r:
                print(f"{r['name']:<20} MISSING: {r['missing']}")
            else:
                print(f"{r['name']:<20} median {r['median']:>12.4g} {r['unit']:<9} "
                      f"(min {r['min']:.4g}, max {r['max']:.4g}; {r['runs']} runs) {extra}")


if __name__ == "__main__":
    main()
