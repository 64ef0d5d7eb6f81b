// bench.cpp — edgetune_bench: the benchmark program behind bench/run.
//
// Each task runs with a warm-up and repeated timed runs and reports median, min and max (the
// same protocol as the peers in bench/peers/, so bench/run can print ratios):
//   warm-up: at least 5 calls and 0.2 s, which also sizes a run; then 7 runs of ~0.2 s each;
//   the value of a run is its mean time per call, in wall time and in process CPU time (on a
//   busy machine preemption inflates wall time; CPU time shows the work done).
// Tasks (exact shapes; a training step = forward, loss, backward, optimizer step):
//   head_linear   Linear 512->10, batch 32, cross-entropy, Adam lr 1e-3
//   head_mlp      512->256->ReLU->10, batch 64, cross-entropy, Adam
//   head_vocab    Linear 128->10000, batch 64, cross-entropy, Adam
//   *_limit       the same step as one hand-fused Eigen function (no autograd): the ceiling
//   personalize_e2e  cold start to committed checkpoint on 1,000 stored Fashion-MNIST samples
//   ingest        10,000 samples of 784 floats in batches of 100; single-sample add latency
//   predict       single-sample top-3 through backbone + head
//   cnn_features  an imported CNN's features (examples/data/cnn-0-5.etb), per image: one image
//                 per call, and batches of 64
//   size          the stripped shared library of every module and the stripped CLI (both
//                 built by bench/meson.build)
// Flags: --task NAME|all, --tiny (each task once at a tiny size: a CI smoke test, no timing
// meaning), --json, --dir SCRATCH (databases; use a real disk, fsync matters), --phase
// setup|run (personalize_e2e as two processes, so bench/run can measure the run's peak RSS).
// Limits: single-threaded on purpose (Eigen without OpenMP); compare ratios from one bench/run
// invocation on a quiet machine, not absolute numbers.
#include <fmt/format.h>
#include <sys/resource.h>
#include <time.h>

#include <Eigen/Core>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "autograd.hpp"
#include "bench_config.hpp"
#include "detail/adam_kernel.hpp"  // private to optim/: the limit row shares its kernels
#include "detail/gemm.hpp"         // private to autograd/
#include "fashion_mnist.hpp"
#include "json.hpp"
#include "optim.hpp"
#include "personalize.hpp"
#include "storage.hpp"

namespace edgetune::bench {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) {
    return std::chrono::duration<double>(Clock::now() - t0).count();
}

// Keeps results alive so the optimizer cannot drop the timed work.
volatile double g_sink = 0.0;

// ---------------------------------------------------------------------------------------
// Results

// One reported number with its spread. `extra` holds JSON values (already encoded).
struct Row {
    std::string name;  // "head_linear", "ingest_batch", ...
    std::string unit;  // "us", "s", "samples/s", "bytes"
    bool higher_is_better = false;
    double median = 0.0, min = 0.0, max = 0.0;
    int runs = 0;
    std::vector<std::pair<std::string, std::string>> extra;
    std::string missing;  // non-empty: the row could not be measured, and why
};

// Median, min and max of `values` (not empty).
Row summarize(std::string name, std::string unit, std::vector<double> values) {
    std::sort(values.begin(), values.end());
    Row row;
    row.name = std::move(name);
    row.unit = std::move(unit);
    const std::size_t n = values.size();
    row.median = n % 2 ? values[n / 2] : 0.5 * (values[n / 2 - 1] + values[n / 2]);
    row.min = values.front();
    row.max = values.back();
    row.runs = static_cast<int>(n);
    return row;
}

// Value at quantile q of sorted `values` (nearest rank).
double quantile(std::vector<double> values, double q) {
    std::sort(values.begin(), values.end());
    const auto rank = static_cast<std::size_t>(std::ceil(q * static_cast<double>(values.size())));
    return values[std::min(values.size() - 1, rank == 0 ? 0 : rank - 1)];
}

// ---------------------------------------------------------------------------------------
// Timing protocol (mirrored by bench/peers/torch_peer.py and libtorch_peer.cpp)

struct Budget {
    bool tiny = false;
    int runs = 7;
    double run_seconds = 0.2;
    double warmup_seconds = 0.2;
};

// CPU time of the whole process. Single-threaded tasks: close to wall time on a quiet machine,
// and unaffected by preemption on a busy one (bench/run reports both).
double cpu_seconds() {
    timespec ts{};
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

// Per-call seconds of each timed run, wall clock and process CPU time.
struct Timings {
    std::vector<double> wall, cpu;
    long calls_per_run = 0;
};

// Times `call` (one step / one prediction). tiny: a single call, timed once.
template <typename Call>
Timings time_calls(Call&& call, const Budget& budget) {
    Timings t;
    if (budget.tiny) {
        const double c0 = cpu_seconds();
        const auto t0 = Clock::now();
        call();
        t.wall.push_back(seconds_since(t0));
        t.cpu.push_back(cpu_seconds() - c0);
        t.calls_per_run = 1;
        return t;
    }
    long n = 0;
    const auto w0 = Clock::now();
    do {
        call();
        ++n;
    } while (n < 5 || seconds_since(w0) < budget.warmup_seconds);
    const double per_call = seconds_since(w0) / static_cast<double>(n);
    t.calls_per_run = std::max(1L, std::lround(budget.run_seconds / per_call));
    const auto iters = static_cast<double>(t.calls_per_run);
    for (int r = 0; r < budget.runs; ++r) {
        const double c0 = cpu_seconds();
        const auto t0 = Clock::now();
        for (long i = 0; i < t.calls_per_run; ++i) call();
        t.wall.push_back(seconds_since(t0) / iters);
        t.cpu.push_back((cpu_seconds() - c0) / iters);
    }
    return t;
}

// A row in microseconds per call (wall), with the CPU-time median and min as extras.
Row timed_row(const std::string& name, const Timings& t) {
    std::vector<double> us, cpu_us;
    for (double s : t.wall) us.push_back(s * 1e6);
    for (double s : t.cpu) cpu_us.push_back(s * 1e6);
    Row row = summarize(name, "us", us);
    const Row cpu = summarize(name, "us", cpu_us);
    row.extra.emplace_back("cpu_median", json_number(cpu.median));
    row.extra.emplace_back("cpu_min", json_number(cpu.min));
    row.extra.emplace_back("calls_per_run", std::to_string(t.calls_per_run));
    return row;
}

// ---------------------------------------------------------------------------------------
// Head tasks: random frozen features, cycled through a pool of 1024 rows.

struct HeadShape {
    const char* name;
    Index in, hidden, out, batch;  // hidden == 0: a linear head
};
constexpr HeadShape head_linear_shape{"head_linear", 512, 0, 10, 32};
constexpr HeadShape head_mlp_shape{"head_mlp", 512, 256, 10, 64};
constexpr HeadShape head_vocab_shape{"head_vocab", 128, 0, 10000, 64};

struct Batch {
    Matrix x;  // [batch x in], uniform in [0, 1) like post-ReLU features
    IdList y;  // [batch] in [0, out)
};

std::vector<Batch> make_batches(const HeadShape& shape, bool tiny) {
    Rng rng(1234);
    const Index pool = tiny ? 2 * shape.batch : 1024;
    std::vector<Batch> batches(static_cast<std::size_t>(pool / shape.batch));
    for (Batch& b : batches) {
        b.x.resize(shape.batch, shape.in);
        for (Index i = 0; i < b.x.size(); ++i) b.x.data()[i] = rng.uniform();
        for (Index i = 0; i < shape.batch; ++i)
            b.y.push_back(
                static_cast<std::int32_t>(rng.below(static_cast<std::uint64_t>(shape.out))));
    }
    return batches;
}

// The engine: Linear/mlp module, cross_entropy, backward(), Adam — what an app writes.
Row run_head(const HeadShape& shape, const Budget& budget) {
    Rng rng(7);
    std::shared_ptr<Layer> model;
    if (shape.hidden == 0)
        model = std::make_shared<Linear>(shape.in, shape.out, rng);
    else
        model = mlp({shape.in, shape.hidden, shape.out}, rng);
    Adam opt(model->parameters(), {.lr = 1e-3f});
    const std::vector<Batch> batches = make_batches(shape, budget.tiny);
    std::vector<Var> xs;
    for (const Batch& b : batches) xs.emplace_back(b.x);
    std::size_t k = 0;
    auto step = [&] {
        const std::size_t i = k++ % batches.size();
        opt.zero_grad();
        Var loss = cross_entropy(model->forward(xs[i]), batches[i].y);
        backward(loss);
        opt.step();
        g_sink = g_sink + loss.item();
    };
    return timed_row(shape.name, time_calls(step, budget));
}

// Adam with torch.optim.Adam's update (bias corrections in double, as optim/ does), through the
// engine's own element kernel (optim/detail/adam_kernel.hpp, AVX2+FMA chosen at run time like
// gemm).
struct FusedAdam {
    Matrix m, v;
    std::int64_t t = 0;

    void step(Matrix& p, const Matrix& g, float lr) {
        constexpr float beta1 = 0.9f, beta2 = 0.999f, eps = 1e-8f;
        if (t == 0) {
            m.setZero(p.rows(), p.cols());
            v.setZero(p.rows(), p.cols());
        }
        ++t;
        const double bias1 = 1.0 - std::pow(double{beta1}, static_cast<double>(t));
        const double bias2 = 1.0 - std::pow(double{beta2}, static_cast<double>(t));
        adam_step({.p = p.data(),
                   .m = m.data(),
                   .v = v.data(),
                   .v_max = nullptr,
                   .g = g.data(),
                   .n = p.size(),
                   .beta1 = beta1,
                   .beta2 = beta2,
                   .l2 = 0.0f,
                   .step_size = static_cast<float>(lr / bias1),
                   .bias2_sqrt = static_cast<float>(std::sqrt(bias2)),
                   .eps = eps});
    }
};

// In place: logits z [n x C] -> dloss/dz of the mean cross-entropy; returns the loss.
// Stable: each row is max-subtracted before exp.
float softmax_ce_grad(Matrix& z, const IdList& y) {
    const Index n = z.rows();
    const float inv_n = 1.0f / static_cast<float>(n);
    double loss = 0.0;
    for (Index i = 0; i < n; ++i) {
        const auto label = static_cast<Index>(y[static_cast<std::size_t>(i)]);
        const float mx = z.row(i).maxCoeff();
        const float z_label = z(i, label);
        z.row(i) = (z.row(i).array() - mx).exp().matrix();
        const float total = z.row(i).sum();
        loss += std::log(static_cast<double>(total)) + mx - z_label;
        z.row(i) *= inv_n / total;
        z(i, label) -= inv_n;
    }
    return static_cast<float>(loss / static_cast<double>(n));
}

// dst = op(a) op(b) (op: transposed when the flag is set), through the engine's own matrix
// kernel (autograd/detail/gemm.hpp: AVX2+FMA chosen at run time where the CPU has it). The limit's
// products then run on the same instructions as the engine's, so engine/limit measures what
// the graph costs rather than which instruction set each side was compiled for.
void product_into(Matrix& dst, const Matrix& a, bool trans_a, const Matrix& b, bool trans_b) {
    dst.resize(trans_a ? a.cols() : a.rows(), trans_b ? b.rows() : b.cols());
    gemm({.trans_a = trans_a,
          .trans_b = trans_b,
          .m = dst.rows(),
          .n = dst.cols(),
          .k = trans_a ? a.rows() : a.cols(),
          .a = a.data(),
          .b = b.data(),
          .c = dst.data(),
          .accumulate = false});
}

// The hand-fused limit: the same step with preallocated buffers and no graph. Init as
// PyTorch's nn.Linear (U(-1/sqrt(in), 1/sqrt(in))).
class FusedHead {
public:
    FusedHead(const HeadShape& shape, Rng& rng) : hidden_(shape.hidden > 0) {
        const Index first_out = hidden_ ? shape.hidden : shape.out;
        w1_ = init_matrix(shape.in, first_out, Init::torch_default, rng);
        b1_ = init_matrix(shape.in, first_out, Init::torch_default, rng).topRows(1);
        if (hidden_) {
            w2_ = init_matrix(shape.hidden, shape.out, Init::torch_default, rng);
            b2_ = init_matrix(shape.hidden, shape.out, Init::torch_default, rng).topRows(1);
        }
    }

    // x [n x in], y [n] -> loss; one forward, backward and Adam step.
    float step(const Matrix& x, const IdList& y, float lr) {
        if (!hidden_) {
            product_into(z_, x, false, w1_, false);
            z_.rowwise() += b1_.row(0);
            const float loss = softmax_ce_grad(z_, y);  // z_ now holds dz
            product_into(dw1_, x, true, z_, false);
            db1_.noalias() = z_.colwise().sum();
            adam_w1_.step(w1_, dw1_, lr);
            adam_b1_.step(b1_, db1_, lr);
            return loss;
        }
        product_into(h_, x, false, w1_, false);
        h_.rowwise() += b1_.row(0);
        h_ = h_.cwiseMax(0.0f);
        product_into(z_, h_, false, w2_, false);
        z_.rowwise() += b2_.row(0);
        const float loss = softmax_ce_grad(z_, y);
        product_into(dw2_, h_, true, z_, false);
        db2_.noalias() = z_.colwise().sum();
        product_into(dh_, z_, false, w2_, true);
        dh_ = (h_.array() > 0.0f).select(dh_, 0.0f);
        product_into(dw1_, x, true, dh_, false);
        db1_.noalias() = dh_.colwise().sum();
        adam_w1_.step(w1_, dw1_, lr);
        adam_b1_.step(b1_, db1_, lr);
        adam_w2_.step(w2_, dw2_, lr);
        adam_b2_.step(b2_, db2_, lr);
        return loss;
    }

private:
    bool hidden_;
    Matrix w1_, b1_, w2_, b2_;
    Matrix h_, z_, dh_, dw1_, db1_, dw2_, db2_;
    FusedAdam adam_w1_, adam_b1_, adam_w2_, adam_b2_;
};

Row run_head_limit(const HeadShape& shape, const Budget& budget) {
    Rng rng(7);
    FusedHead head(shape, rng);
    const std::vector<Batch> batches = make_batches(shape, budget.tiny);
    std::size_t k = 0;
    auto step = [&] {
        const Batch& b = batches[k++ % batches.size()];
        g_sink = g_sink + head.step(b.x, b.y, 1e-3f);
    };
    return timed_row(std::string(shape.name) + "_limit", time_calls(step, budget));
}

// ---------------------------------------------------------------------------------------
// Data for the storage tasks: Fashion-MNIST (IDX in gzip), or generated if not installed.

struct Images {
    Index n = 0, width = 0;     // width = rows * cols of one image
    std::vector<float> pixels;  // [n x width], scaled to [0, 1]
    IdList labels;
    std::string source;
};

// The first `n` training images and labels (examples/data: the project's one IDX reader).
std::optional<Images> read_fashion_mnist(std::size_t n) {
    fashion_mnist::Dataset d;
    try {
        d = fashion_mnist::load(fashion_mnist::Split::train,
                                {.limit = static_cast<std::int64_t>(n)});
    } catch (const StorageError&) {
        return std::nullopt;  // not installed
    }
    if (d.size() < n) return std::nullopt;
    Images im;
    im.n = static_cast<Index>(n);
    im.width = d.images.cols();
    im.pixels.assign(d.images.data(), d.images.data() + d.images.size());
    im.labels = d.labels;
    im.source = "fashion-mnist";
    return im;
}

Images load_images(std::size_t n) {
    if (auto im = read_fashion_mnist(n)) return *im;
    Images im;  // NOTE: only when dataset-fashion-mnist is absent (e.g. a bare CI image)
    im.n = static_cast<Index>(n);
    im.width = 784;
    Rng rng(99);
    im.pixels.resize(n * 784);
    for (float& p : im.pixels) p = rng.uniform();
    for (std::size_t i = 0; i < n; ++i)
        im.labels.push_back(static_cast<std::int32_t>(rng.below(10)));
    im.source = "generated (dataset-fashion-mnist not installed)";
    return im;
}

long peak_rss_kib() {
    rusage usage{};
    getrusage(RUSAGE_SELF, &usage);
    return usage.ru_maxrss;
}

void remove_db(const fs::path& db) {
    for (const char* suffix : {"", "-wal", "-shm", "-journal"})
        fs::remove(fs::path(db.string() + suffix));
}

std::vector<Sample> as_samples(const Images& im) {
    std::vector<Sample> out(static_cast<std::size_t>(im.n));
    for (std::size_t i = 0; i < out.size(); ++i) {
        const float* row = im.pixels.data() + i * static_cast<std::size_t>(im.width);
        out[i].input.assign(row, row + im.width);
        out[i].label = im.labels[i];
    }
    return out;
}

// ---------------------------------------------------------------------------------------
// ingest: add_batch of 100 samples of 784 floats (samples/s); single add latency.

std::vector<Sample> random_samples(std::size_t n, Rng& rng) {
    std::vector<Sample> out(n);
    for (Sample& s : out) {
        s.input.resize(784);
        for (float& v : s.input) v = rng.uniform();
        s.label = static_cast<std::int32_t>(rng.below(10));
    }
    return out;
}

StoreOptions ingest_options(Durability durability) {
    StoreOptions o;
    o.input = InputSpec::float_vector(784);
    o.label = LabelSpec::classes(10);
    o.durability = durability;
    return o;
}

// Latency of one add() each, after a few warm-up adds, on a fresh store.
std::vector<double> single_add_latencies(const fs::path& db, Durability durability, int adds,
                                         Rng& rng) {
    remove_db(db);
    SampleStore store = SampleStore::open(db.string(), ingest_options(durability));
    const std::vector<Sample> samples = random_samples(static_cast<std::size_t>(adds) + 5, rng);
    for (std::size_t i = 0; i < 5; ++i) store.add(samples[i]);
    std::vector<double> us;
    for (std::size_t i = 5; i < samples.size(); ++i) {
        const auto t0 = Clock::now();
        store.add(samples[i]);
        us.push_back(seconds_since(t0) * 1e6);
    }
    remove_db(db);
    return us;
}

std::vector<Row> run_ingest(const Budget& budget, const fs::path& dir) {
    const std::size_t total = budget.tiny ? 200 : 10000, per_batch = 100;
    const int runs = budget.tiny ? 1 : 3;
    Rng rng(5);
    const std::vector<Sample> samples = random_samples(total, rng);
    const fs::path db = dir / "ingest.db";
    std::vector<double> rates, cpu_rates;
    for (int r = 0; r < runs; ++r) {
        remove_db(db);
        SampleStore store = SampleStore::open(db.string(), ingest_options(Durability::normal));
        const double c0 = cpu_seconds();
        const auto t0 = Clock::now();
        for (std::size_t at = 0; at < total; at += per_batch)
            store.add_batch(std::span(samples).subspan(at, per_batch));
        rates.push_back(static_cast<double>(total) / seconds_since(t0));
        cpu_rates.push_back(static_cast<double>(total) / (cpu_seconds() - c0));
        if (store.count() != static_cast<std::int64_t>(total))
            throw Error("[bench ingest] stored " + std::to_string(store.count()) + " samples");
    }
    remove_db(db);
    std::vector<Row> rows;
    rows.push_back(summarize("ingest_batch", "samples/s", rates));
    rows.back().higher_is_better = true;
    rows.back().extra.emplace_back("cpu_median", json_number(summarize("", "", cpu_rates).median));
    rows.back().extra.emplace_back("samples", std::to_string(total));
    rows.back().extra.emplace_back("batch", std::to_string(per_batch));

    // Single adds: Durability::normal is the default (survives an app crash; WAL, no fsync per
    // commit); Durability::full also survives a power loss (fsync per commit), for reference.
    for (const auto& [name, durability, adds] :
         {std::tuple{"ingest_add", Durability::normal, budget.tiny ? 5 : 1000},
          std::tuple{"ingest_add_full", Durability::full, budget.tiny ? 5 : 200}}) {
        const std::vector<double> us = single_add_latencies(db, durability, adds, rng);
        Row row = summarize(name, "us", us);
        row.extra.emplace_back("p99_us", json_number(quantile(us, 0.99)));
        row.extra.emplace_back("adds", std::to_string(adds));
        row.extra.emplace_back("durability", json_string(durability == Durability::normal
                                                             ? "normal (WAL, synchronous=NORMAL)"
                                                             : "full (fsync per commit)"));
        rows.push_back(std::move(row));
    }
    return rows;
}
// ---------------------------------------------------------------------------------------
// personalize_e2e and predict: a frozen 784->256->128 backbone, a 10-class linear head.

BackboneConfig backbone_config() {
    BackboneConfig c;
    c.input = InputSpec::float_vector(784);
    c.hidden = {256, 128};
    c.activation = Activation::relu;
    return c;
}

std::shared_ptr<const Backbone> make_backbone() {
    Rng rng(11);
    BackboneNet net(backbone_config(), rng);
    return Backbone::freeze(net);
}

struct E2eSize {
    std::size_t samples;
    int epochs;
};
E2eSize e2e_size(bool tiny) {
    return tiny ? E2eSize{64, 1} : E2eSize{1000, 10};
}

// Not timed: the backbone file and a database holding the stored samples (raw inputs only).
void e2e_setup(const fs::path& dir, bool tiny) {
    fs::create_directories(dir);
    remove_db(dir / "e2e.db");
    make_backbone()->save((dir / "backbone.etb").string());
    const Images im = load_images(e2e_size(tiny).samples);
    StoreOptions o;
    o.input = InputSpec::float_vector(im.width);
    o.label = LabelSpec::classes(10);
    SampleStore store = SampleStore::open((dir / "e2e.db").string(), o);
    store.add_batch(as_samples(im));
}

// Timed: load the backbone, open the store (features computed and cached), train, commit.
Row e2e_run(const fs::path& dir, bool tiny) {
    const E2eSize size = e2e_size(tiny);
    const double c0 = cpu_seconds();
    const auto t0 = Clock::now();
    std::shared_ptr<const Backbone> backbone = Backbone::load((dir / "backbone.etb").string());
    const double load_s = seconds_since(t0);
    PersonalizerOptions po;
    po.backbone = backbone;
    po.head = HeadSpec::linear(10);
    po.validation_fraction = 0.0f;  // train on all samples, as the peer does
    auto p = Personalizer::open((dir / "e2e.db").string(), po);  // computes + caches features
    const double open_s = seconds_since(t0) - load_s;
    TrainOptions to;
    to.epochs = size.epochs;
    to.batch = 32;
    to.optimizer = AdamOptions{.lr = 1e-3f};
    const TrainReport report = p->train(to);  // reads cached features, trains, commits
    const double train_s = seconds_since(t0) - load_s - open_s;
    p.reset();  // closes the database (SQLite checkpoints the WAL into the file)
    const double seconds = seconds_since(t0);
    const double cpu = cpu_seconds() - c0;
    if (report.outcome != TrainReport::Outcome::committed)
        throw Error("[bench personalize_e2e] training not committed: " + report.reason);
    Row row = summarize("personalize_e2e", "s", {seconds});
    row.extra.emplace_back("cpu_median", json_number(cpu));
    row.extra.emplace_back("load_s", json_number(load_s));
    row.extra.emplace_back("open_features_s", json_number(open_s));
    row.extra.emplace_back("train_commit_s", json_number(train_s));
    row.extra.emplace_back("close_s", json_number(seconds - load_s - open_s - train_s));
    row.extra.emplace_back("peak_rss_kib_self", std::to_string(peak_rss_kib()));
    row.extra.emplace_back("steps", std::to_string(report.steps));
    row.extra.emplace_back("samples", std::to_string(report.train_samples));
    row.extra.emplace_back("final_loss",
                           json_number(report.loss_curve.empty() ? NAN : report.loss_curve.back()));
    row.extra.emplace_back("data",
                           json_string(read_fashion_mnist(1) ? "fashion-mnist" : "generated"));
    return row;
}

std::vector<Row> run_e2e(const Budget& budget, const fs::path& dir, const std::string& phase) {
    if (phase == "setup") {
        e2e_setup(dir, budget.tiny);
        return {};
    }
    if (phase == "run") return {e2e_run(dir, budget.tiny)};
    // In-process: setup + run, repeated (each run needs a fresh, never-trained database).
    std::vector<double> seconds, cpu;
    Row last;
    for (int r = 0; r < (budget.tiny ? 1 : 3); ++r) {
        e2e_setup(dir, budget.tiny);
        last = e2e_run(dir, budget.tiny);
        seconds.push_back(last.median);
        cpu.push_back(std::stod(last.extra.at(0).second));  // "cpu_median" comes first
    }
    remove_db(dir / "e2e.db");
    Row row = summarize("personalize_e2e", "s", seconds);
    row.extra = last.extra;
    row.extra.at(0).second = json_number(summarize("", "", cpu).median);
    return {row};
}

Row run_predict(const Budget& budget, const fs::path& dir) {
    const fs::path db = dir / "predict.db";
    remove_db(db);
    PersonalizerOptions po;
    po.backbone = make_backbone();
    po.head = HeadSpec::linear(10);
    auto p = Personalizer::open(db.string(), po);
    const Images im = load_images(16);
    std::vector<Sample> inputs = as_samples(im);
    std::size_t k = 0;
    auto call = [&] {
        const auto top = p->predict(inputs[k++ % inputs.size()], 3);
        g_sink = g_sink + top[0].probability;
    };
    const Timings times = time_calls(call, budget);
    p.reset();
    remove_db(db);
    return timed_row("predict", times);
}

// cnn_features: the Fashion-MNIST CNN of examples/train_cnn.py, imported from its ONNX file
// (examples/data/cnn-0-5.etb), frozen features of one image per call and, per image, of batches
// of 64 (what add() of a batch runs). bench/peers/torch_peer.py runs the same weights.
std::vector<Row> run_cnn_features(const Budget& budget) {
    const auto backbone = Backbone::load(EDGETUNE_BENCH_CNN);
    Rng rng(3);
    Matrix x(64, backbone->config().input.size);
    for (Index i = 0; i < x.size(); ++i) x.data()[i] = rng.uniform();
    const Matrix one = x.topRows(1);
    std::vector<Row> rows;
    for (const auto& [name, batch] : {std::pair{"cnn_features", &one}, {"cnn_features_b64", &x}}) {
        Timings t = time_calls([&] { g_sink = g_sink + backbone->features(*batch)(0, 0); }, budget);
        const auto n = static_cast<double>(batch->rows());
        for (double& v : t.wall) v /= n;
        for (double& v : t.cpu) v /= n;
        rows.push_back(timed_row(name, t));
        rows.back().extra.emplace_back("per", json_string("image"));
    }
    return rows;
}

// ---------------------------------------------------------------------------------------
// size: the stripped shared library and CLI (bench/meson.build strips them next to this program).

Row size_row(const std::string& name, const fs::path& file) {
    Row row;
    row.name = name;
    row.unit = "bytes";
    std::error_code ec;
    const auto bytes = fs::file_size(file, ec);
    if (ec) {
        row.missing = "not built: " + file.string();
        return row;
    }
    row.median = row.min = row.max = static_cast<double>(bytes);
    row.runs = 1;
    row.extra.emplace_back("path", json_string(file.string()));
    return row;
}

std::vector<Row> run_size() {
    std::vector<Row> rows{size_row("size_lib", EDGETUNE_BENCH_SIZE_LIB)};
    rows.push_back(size_row("size_cli", EDGETUNE_BENCH_SIZE_CLI));
    return rows;
}

// ---------------------------------------------------------------------------------------
// Command line and output

const std::vector<std::string> all_tasks = {"head_linear",
                                            "head_linear_limit",
                                            "head_mlp",
                                            "head_mlp_limit",
                                            "head_vocab",
                                            "head_vocab_limit",
                                            "personalize_e2e",
                                            "ingest",
                                            "predict",
                                            "cnn_features",
                                            "size"};

std::vector<Row> run_task(const std::string& task, const Budget& budget, const fs::path& dir,
                          const std::string& phase) {
    for (const HeadShape& s : {head_linear_shape, head_mlp_shape, head_vocab_shape}) {
        if (task == s.name) return {run_head(s, budget)};
        if (task == std::string(s.name) + "_limit") return {run_head_limit(s, budget)};
    }
    if (task == "size") return run_size();
    if (task == "ingest") return run_ingest(budget, dir);
    if (task == "personalize_e2e") return run_e2e(budget, dir, phase);
    if (task == "predict") return {run_predict(budget, dir)};
    if (task == "cnn_features") return run_cnn_features(budget);
    throw InvalidArgument("[edgetune_bench] unknown task '" + task + "'");
}

// Eigen's own list, plus what it leaves out (AVX2, FMA change its GEMM kernels).
std::string simd_in_use() {
    std::string s = Eigen::SimdInstructionSetsInUse();
#ifdef __AVX2__
    s += ", AVX2";
#endif
#ifdef __FMA__
    s += ", FMA";
#endif
    return s;
}

bool openmp_enabled() {
#ifdef _OPENMP
    return true;
#else
    return false;
#endif
}

void print_json(const std::vector<Row>& rows, const Budget& budget) {
    std::string out = "{\"program\": \"edgetune\"";
    out += ", \"compiler\": " + json_string(EDGETUNE_BENCH_COMPILER);
    out += ", \"flags\": " + json_string(EDGETUNE_BENCH_FLAGS);
    out += ", \"buildtype\": " + json_string(EDGETUNE_BENCH_BUILDTYPE);
    out += ", \"simd\": " + json_string(simd_in_use());
    out += ", \"matmul_kernel\": " + json_string(matmul_kernel());
    out += fmt::format(", \"eigen_threads\": {}, \"openmp\": {}, \"tiny\": {}", Eigen::nbThreads(),
                       openmp_enabled(), budget.tiny);
    out += ", \"rows\": [";
    for (std::size_t i = 0; i < rows.size(); ++i) {
        const Row& r = rows[i];
        out += i ? ",\n  {" : "\n  {";
        out += "\"name\": " + json_string(r.name);
        if (!r.missing.empty()) {
            out += ", \"missing\": " + json_string(r.missing) + "}";
            continue;
        }
        out += ", \"unit\": " + json_string(r.unit);
        out += fmt::format(", \"higher_is_better\": {}", r.higher_is_better);
        out += ", \"median\": " + json_number(r.median) + ", \"min\": " + json_number(r.min) +
               ", \"max\": " + json_number(r.max) + ", \"runs\": " + std::to_string(r.runs);
        for (const auto& [k, v] : r.extra) out += ", " + json_string(k) + ": " + v;
        out += "}";
    }
    out += "]}\n";
    std::fputs(out.c_str(), stdout);
}

void print_text(const Row& r) {
    if (!r.missing.empty()) {
        fmt::print("{:<20} MISSING: {}\n", r.name, r.missing);
    } else {
        fmt::print("{:<20} median {:>12.4g} {:<9} (min {:.4g}, max {:.4g}; {} runs)", r.name,
                   r.median, r.unit, r.min, r.max, r.runs);
        for (const auto& [k, v] : r.extra) fmt::print(" {}={}", k, v);
        fmt::print("\n");
    }
    std::fflush(stdout);
}

int usage(int code) {
    std::string tasks;
    for (const auto& t : all_tasks) tasks += " " + t;
    fmt::print(code ? stderr : stdout,
               "usage: edgetune_bench [--task NAME|all] [--tiny] [--json] [--dir SCRATCH]\n"
               "                      [--phase setup|run]   (personalize_e2e only)\n"
               "tasks:{}\n",
               tasks);
    return code;
}

int main_impl(int argc, char** argv) {
    Eigen::setNbThreads(1);  // a no-op without OpenMP; single-threaded either way
    Budget budget;
    bool json = false;
    std::string task = "all", phase;
    fs::path dir = fs::temp_directory_path() / "edgetune-bench";
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        auto value = [&]() -> std::string {
            if (i + 1 >= argc) throw InvalidArgument("[edgetune_bench] " + a + " needs a value");
            return argv[++i];
        };
        if (a == "--task")
            task = value();
        else if (a == "--tiny")
            budget.tiny = true;
        else if (a == "--json")
            json = true;
        else if (a == "--dir")
            dir = value();
        else if (a == "--phase")
            phase = value();
        else if (a == "--help" || a == "-h")
            return usage(0);
        else
            return usage(2);
    }
    if (!phase.empty() && phase != "setup" && phase != "run") return usage(2);
    fs::create_directories(dir);

    if (!json)
        fmt::print(
            "edgetune_bench: {} {} ({}), SIMD {}, matmul+Adam kernels {}, Eigen threads {}, OpenMP "
            "{}{}\n",
            EDGETUNE_BENCH_COMPILER, EDGETUNE_BENCH_FLAGS, EDGETUNE_BENCH_BUILDTYPE, simd_in_use(),
            matmul_kernel(), Eigen::nbThreads(), openmp_enabled() ? "on" : "off",
            budget.tiny ? ", tiny (no timing meaning)" : "");
    std::vector<Row> rows;
    for (const std::string& t : task == "all" ? all_tasks : std::vector<std::string>{task}) {
        for (Row& r : run_task(t, budget, dir, phase)) {
            if (!json) print_text(r);
            rows.push_back(std::move(r));
        }
    }
    if (json) print_json(rows, budget);
    return 0;
}

}  // namespace
}  // namespace edgetune::bench

int main(int argc, char** argv) {
    try {
        return edgetune::bench::main_impl(argc, argv);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "edgetune_bench: %s\n", e.what());
        return 1;
    }
}
