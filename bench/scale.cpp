// scale.cpp — edgetune_scale: how the cost of each Personalizer call grows with the store.
//
// For N = 1k, 10k, 100k (and 1M with --million: ~1.2 GB of disk) samples of 128 floats
// through a 128 -> 128 backbone into a 10-class linear head, measured through the public API
// in a release build:
//   ingest       samples/s of add() in batches of 1,000 while the store fills to N
//   bytes        database bytes per stored sample (main file after close)
//   add_p50/p99  single add() latency, default durability, on the full store
//   open         Personalizer::open on the closed store, in a fresh process
//   predict      the first predict() after that open
//   train0       train() with 0 epochs: the fixed overhead of a call
//   reservoir    train() on 50 new samples + Replay::reservoir(200), 5 epochs of batch 32
//   all          train() with Replay::all(), 1 epoch
//   rss_*        peak RSS of the process that ran open + train0 + reservoir, and of `all`
//   retention    add() of 1,000 into a full Retention::reservoir(N) store
// Each measurement that needs a cold process runs in a forked child, so peak RSS is its own.
// Then the growth factor per 10x N of every row. Not a test: numbers depend on the machine.
// Usage: edgetune_scale [--dir SCRATCH] [--million] [--sizes 1000,10000]
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "personalize.hpp"

namespace edgetune::bench {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

constexpr Index width = 128;
constexpr int classes = 10;

double since(Clock::time_point t0) {
    return std::chrono::duration<double>(Clock::now() - t0).count();
}

double peak_rss_mib() {
    rusage u{};
    getrusage(RUSAGE_SELF, &u);
    return static_cast<double>(u.ru_maxrss) / 1024.0;  // Linux: KiB
}

std::shared_ptr<const Backbone> backbone() {
    Rng rng(5);
    BackboneNet net({.input = InputSpec::float_vector(width), .hidden = {width}}, rng);
    return Backbone::freeze(net);
}

std::vector<Sample> samples(std::size_t n, Rng& rng) {
    std::vector<Sample> out(n);
    for (Sample& s : out) {
        s.label = static_cast<std::int32_t>(rng.below(classes));
        s.input.resize(static_cast<std::size_t>(width));
        for (Index j = 0; j < width; ++j)
            s.input[static_cast<std::size_t>(j)] =
                (j % classes == s.label ? 1.0f : 0.0f) + rng.normal();
    }
    return out;
}

std::unique_ptr<Personalizer> open_db(const fs::path& db, Retention retention = {}) {
    return Personalizer::open(db.string(), {.backbone = backbone(),
                                            .head = HeadSpec::linear(classes),
                                            .retention = retention,
                                            .seed = 1});
}

using Results = std::map<std::string, double>;

// Runs `work` in a forked child and returns what it wrote into its Results.
Results in_child(const std::function<void(Results&)>& work) {
    int fds[2];
    if (pipe(fds) != 0) throw Error("[scale] pipe failed");
    const pid_t pid = fork();
    if (pid == 0) {
        close(fds[0]);
        Results r;
        int code = 0;
        try {
            work(r);
        } catch (const std::exception& e) {
            std::fprintf(stderr, "scale: %s\n", e.what());
            code = 1;
        }
        std::string text;
        for (const auto& [k, v] : r) text += k + " " + std::to_string(v) + "\n";
        if (write(fds[1], text.data(), text.size()) != static_cast<ssize_t>(text.size())) code = 1;
        _exit(code);
    }
    close(fds[1]);
    std::string text;
    char buf[4096];
    for (ssize_t got; (got = read(fds[0], buf, sizeof buf)) > 0;)
        text.append(buf, static_cast<std::size_t>(got));
    close(fds[0]);
    int status = 0;
    waitpid(pid, &status, 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) throw Error("[scale] a child failed");
    Results r;
    char key[64];
    double v = 0;
    for (const char* p = text.c_str(); std::sscanf(p, "%63s %lf", key, &v) == 2;) {
        r[key] = v;
        p = std::strchr(p, '\n');
        if (!p) break;
        ++p;
    }
    return r;
}

void remove_db(const fs::path& db) {
    for (const char* suffix : {"", "-wal", "-shm"}) fs::remove(db.string() + suffix);
}

// Fills the store to n samples; ingest rate, bytes per sample, single-add latencies.
void build(const fs::path& db, std::size_t n, Results& r) {
    remove_db(db);
    Rng rng(n);
    double seconds = 0;
    {
        auto p = open_db(db);
        for (std::size_t at = 0; at < n; at += 1000) {
            const std::vector<Sample> batch = samples(std::min<std::size_t>(1000, n - at), rng);
            const auto t0 = Clock::now();
            p->add(batch);
            seconds += since(t0);
        }
        p->train({.epochs = 1, .seed = 1, .replay = Replay::all()});
        std::vector<double> lat;
        for (const Sample& s : samples(200, rng)) {
            const auto t0 = Clock::now();
            p->add(s);
            lat.push_back(since(t0) * 1e6);
        }
        std::sort(lat.begin(), lat.end());
        r["add_p50_us"] = lat[lat.size() / 2];
        r["add_p99_us"] = lat[lat.size() * 99 / 100];
    }
    r["ingest_per_s"] = static_cast<double>(n) / seconds;
    r["bytes_per_sample"] = static_cast<double>(fs::file_size(db)) / static_cast<double>(n);
}

// A cold process: open, first predict, train() overhead, a reservoir update; its peak RSS.
void cold_update(const fs::path& db, std::size_t n, Results& r) {
    Rng rng(n + 1);
    const std::vector<Sample> fresh = samples(50, rng);
    auto t0 = Clock::now();
    auto p = open_db(db);
    r["open_ms"] = since(t0) * 1e3;
    t0 = Clock::now();
    p->predict(fresh[0], 3);
    r["predict_ms"] = since(t0) * 1e3;
    t0 = Clock::now();
    p->train({.epochs = 0, .seed = 2});
    r["train0_ms"] = since(t0) * 1e3;
    p->add(fresh);
    t0 = Clock::now();
    const TrainReport rep = p->train({.epochs = 5, .seed = 3, .replay = Replay::reservoir(200)});
    r["reservoir_ms"] = since(t0) * 1e3;
    r["reservoir_steps"] = static_cast<double>(rep.steps);
    r["rss_update_mib"] = peak_rss_mib();
}

void train_all(const fs::path& db, Results& r) {
    auto p = open_db(db);
    const auto t0 = Clock::now();
    const TrainReport rep = p->train({.epochs = 1, .seed = 4, .replay = Replay::all()});
    r["all_ms"] = since(t0) * 1e3;
    r["all_steps"] = static_cast<double>(rep.steps);
    r["rss_all_mib"] = peak_rss_mib();
}

void retention(const fs::path& db, std::size_t n, Results& r) {
    auto p = open_db(db, Retention::reservoir(static_cast<std::int64_t>(n), 9));
    Rng rng(n + 2);
    const std::vector<Sample> batch = samples(1000, rng);
    const auto t0 = Clock::now();
    p->add(batch);
    r["retention_ms"] = since(t0) * 1e3;
}

int run(int argc, char** argv) {
    fs::path dir = "scale-tmp";
    std::vector<std::size_t> sizes{1000, 10000, 100000};
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        if (a == "--dir" && i + 1 < argc) {
            dir = argv[++i];
        } else if (a == "--million") {
            sizes.push_back(1000000);
        } else if (a == "--sizes" && i + 1 < argc) {
            sizes.clear();
            for (const char* p = argv[++i]; *p;) {
                char* end = nullptr;
                sizes.push_back(std::strtoull(p, &end, 10));
                p = *end == ',' ? end + 1 : end;
            }
        } else {
            std::fprintf(stderr, "usage: edgetune_scale [--dir D] [--million] [--sizes a,b]\n");
            return 2;
        }
    }
    fs::create_directories(dir);
    const std::vector<std::string> rows{"ingest_per_s",   "bytes_per_sample", "add_p50_us",
                                        "add_p99_us",     "open_ms",          "predict_ms",
                                        "train0_ms",      "reservoir_ms",     "all_ms",
                                        "rss_update_mib", "rss_all_mib",      "retention_ms"};
    std::vector<Results> results;
    for (std::size_t n : sizes) {
        const fs::path db = dir / ("scale-" + std::to_string(n) + ".db");
        std::fprintf(stderr, "scale: N = %zu ...\n", n);
        Results r = in_child([&](Results& out) { build(db, n, out); });
        for (auto& [k, v] : in_child([&](Results& out) { cold_update(db, n, out); })) r[k] = v;
        for (auto& [k, v] : in_child([&](Results& out) { train_all(db, out); })) r[k] = v;
        for (auto& [k, v] : in_child([&](Results& out) { retention(db, n, out); })) r[k] = v;
        remove_db(db);
        results.push_back(r);
    }
    std::printf("%-18s", "row");
    for (std::size_t n : sizes) std::printf("%12zu", n);
    std::printf("   growth per 10x N\n");
    for (const std::string& row : rows) {
        std::printf("%-18s", row.c_str());
        for (const Results& r : results) std::printf("%12.1f", r.at(row));
        std::printf("  ");
        for (std::size_t i = 1; i < results.size(); ++i) {
            const double decades =
                std::log10(static_cast<double>(sizes[i]) / static_cast<double>(sizes[i - 1]));
            std::printf(" %6.2fx",
                        std::pow(results[i].at(row) / results[i - 1].at(row), 1.0 / decades));
        }
        std::printf("\n");
    }
    return 0;
}

}  // namespace
}  // namespace edgetune::bench

int main(int argc, char** argv) {
    try {
        return edgetune::bench::run(argc, argv);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "edgetune_scale: %s\n", e.what());
        return 1;
    }
}
