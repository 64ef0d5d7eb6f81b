// libtorch_peer.cpp — the libtorch (PyTorch 1.13 C++ frontend) peer of edgetune_bench.
//
// Built by bench/run with g++ against Debian's libtorch-dev (not part of the meson build, so
// the project never depends on libtorch). Same tasks, shapes, optimizer and timing protocol as
// bench/bench.cpp: warm-up of at least 5 calls and 0.2 s (which sizes a run), then 7 runs of
// ~0.2 s; a run's value is its mean time per call; median, min and max over runs.
//   head_linear / head_mlp / head_vocab   training steps (forward, cross-entropy, backward, Adam)
//   predict                               single-sample top-3 through backbone + head
// personalize_e2e, ingest and size are reported as not applicable (PyTorch's peer covers them).
// Single-threaded: at::set_num_threads(1).
#include <time.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;
volatile double g_sink = 0.0;

double seconds_since(Clock::time_point t0) {
    return std::chrono::duration<double>(Clock::now() - t0).count();
}

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

template <typename Call>
Timings time_calls(Call&& call, bool tiny) {
    Timings t;
    if (tiny) {
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
    } while (n < 5 || seconds_since(w0) < 0.2);
    const double per_call = seconds_since(w0) / static_cast<double>(n);
    t.calls_per_run = std::max(1L, std::lround(0.2 / per_call));
    const auto iters = static_cast<double>(t.calls_per_run);
    for (int r = 0; r < 7; ++r) {
        const double c0 = cpu_seconds();
        const auto t0 = Clock::now();
        for (long i = 0; i < t.calls_per_run; ++i) call();
        t.wall.push_back(seconds_since(t0) / iters);
        t.cpu.push_back((cpu_seconds() - c0) / iters);
    }
    return t;
}

struct Stats {
    double median, min, max;
};
Stats stats_us(std::vector<double> s) {
    for (double& v : s) v *= 1e6;
    std::sort(s.begin(), s.end());
    const std::size_t n = s.size();
    return {n % 2 ? s[n / 2] : 0.5 * (s[n / 2 - 1] + s[n / 2]), s.front(), s.back()};
}

std::string timed_row(const std::string& name, const Timings& t) {
    const Stats wall = stats_us(t.wall), cpu = stats_us(t.cpu);
    char buf[512];
    std::snprintf(buf, sizeof buf,
                  "{\"name\": \"%s\", \"unit\": \"us\", \"higher_is_better\": false, "
                  "\"median\": %.6g, \"min\": %.6g, \"max\": %.6g, \"runs\": %zu, "
                  "\"cpu_median\": %.6g, \"cpu_min\": %.6g, \"calls_per_run\": %ld}",
                  name.c_str(), wall.median, wall.min, wall.max, t.wall.size(), cpu.median, cpu.min,
                  t.calls_per_run);
    return buf;
}

struct HeadShape {
    const char* name;
    int64_t in, hidden, out, batch;
};

std::string run_head(const HeadShape& shape, bool tiny) {
    torch::manual_seed(7);
    torch::nn::Sequential model;
    if (shape.hidden == 0) {
        model->push_back(torch::nn::Linear(shape.in, shape.out));
    } else {
        model->push_back(torch::nn::Linear(shape.in, shape.hidden));
        model->push_back(torch::nn::ReLU());
        model->push_back(torch::nn::Linear(shape.hidden, shape.out));
    }
    torch::optim::Adam opt(model->parameters(), torch::optim::AdamOptions(1e-3));
    const int64_t pool = tiny ? 2 * shape.batch : 1024;
    std::vector<torch::Tensor> xs, ys;
    for (int64_t at = 0; at < pool; at += shape.batch) {
        xs.push_back(torch::rand({shape.batch, shape.in}));
        ys.push_back(torch::randint(0, shape.out, {shape.batch}, torch::kInt64));
    }
    std::size_t k = 0;
    auto step = [&] {
        const std::size_t i = k++ % xs.size();
        opt.zero_grad();
        torch::Tensor loss = torch::nn::functional::cross_entropy(model->forward(xs[i]), ys[i]);
        loss.backward();
        opt.step();
        g_sink = g_sink + loss.item<float>();
    };
    return timed_row(shape.name, time_calls(step, tiny));
}

std::string run_predict(bool tiny) {
    torch::manual_seed(11);
    torch::nn::Sequential backbone(torch::nn::Linear(784, 256), torch::nn::ReLU(),
                                   torch::nn::Linear(256, 128), torch::nn::ReLU());
    torch::nn::Linear head(128, 10);
    backbone->eval();
    head->eval();
    std::vector<torch::Tensor> inputs;
    for (int i = 0; i < 16; ++i) inputs.push_back(torch::rand({1, 784}));
    std::size_t k = 0;
    auto call = [&] {
        torch::NoGradGuard no_grad;
        const torch::Tensor probs =
            torch::softmax(head->forward(backbone->forward(inputs[k++ % inputs.size()])), 1);
        const auto [values, indices] = torch::topk(probs, 3, 1);
        const auto* p = values.data_ptr<float>();
        const auto* ids = indices.data_ptr<int64_t>();
        g_sink = g_sink + p[0] + static_cast<double>(ids[0]);
    };
    return timed_row("predict", time_calls(call, tiny));
}

}  // namespace

int main(int argc, char** argv) {
    at::set_num_threads(1);
    std::string task = "all";
    bool tiny = false;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        if (a == "--task" && i + 1 < argc)
            task = argv[++i];
        else if (a == "--tiny")
            tiny = true;
        else if (a == "--json" || a == "--dir" || a == "--phase") {
            if (a != "--json") ++i;  // accepted for a uniform command line; output is JSON
        } else {
            std::fprintf(stderr, "usage: libtorch_peer [--task NAME|all] [--tiny] [--json]\n");
            return 2;
        }
    }
    const HeadShape heads[] = {{"head_linear", 512, 0, 10, 32},
                               {"head_mlp", 512, 256, 10, 64},
                               {"head_vocab", 128, 0, 10000, 64}};
    std::vector<std::string> rows;
    const std::vector<std::string> tasks =
        task == "all" ? std::vector<std::string>{"head_linear", "head_mlp", "head_vocab", "predict"}
                      : std::vector<std::string>{task};
    for (const std::string& t : tasks) {
        bool done = false;
        for (const HeadShape& h : heads)
            if (t == h.name) {
                rows.push_back(run_head(h, tiny));
                done = true;
            }
        if (done) continue;
        if (t == "predict") {
            rows.push_back(run_predict(tiny));
        } else if (t == "personalize_e2e" || t == "ingest" || t == "size" || t == "cnn_features" ||
                   t.find("_limit") != std::string::npos) {
            rows.push_back("{\"name\": \"" + t +
                           "\", \"missing\": \"not implemented for libtorch (the PyTorch peer "
                           "covers this row)\"}");
        } else {
            std::fprintf(stderr, "libtorch_peer: unknown task '%s'\n", t.c_str());
            return 2;
        }
    }
    std::printf(
        "{\"program\": \"libtorch\", \"version\": \"%s\", \"threads\": %d, \"tiny\": %s, "
        "\"rows\": [",
        TORCH_VERSION, at::get_num_threads(), tiny ? "true" : "false");
    for (std::size_t i = 0; i < rows.size(); ++i)
        std::printf("%s\n  %s", i ? "," : "", rows[i].c_str());
    std::printf("]}\n");
    return 0;
}
