// open_world.cpp — edgetune_open_world: the cost of the open-world calls, through the public
// API in a release build, on samples that are 128-float feature vectors (an external backbone):
//   add_class    p50 / max of add_class() on a linear head of D = 128 grown from 99 to 100 ..
//                149 classes (the served head is rebuilt with one more column each time)
//   predict      p50 of predict() on the 100-class head trained with and without an "unknown"
//                calibration (rejection on: cosine scores against the class prototypes)
// Not a test: numbers depend on the machine.
// Usage: edgetune_open_world [--dir SCRATCH]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "personalize.hpp"

namespace {

using namespace edgetune;
using Clock = std::chrono::steady_clock;

double micros(Clock::time_point a, Clock::time_point b) {
    return std::chrono::duration<double, std::micro>(b - a).count();
}

double p50(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}

std::vector<Sample> samples(int classes, int per_class, Rng& rng) {
    std::vector<Sample> out;
    for (int c = 0; c < classes; ++c)
        for (int i = 0; i < per_class; ++i) {
            Sample s;
            for (int j = 0; j < 128; ++j)
                s.input.push_back((j % classes == c ? 3.0f : 0.0f) + 0.3f * rng.normal());
            s.label = c;
            out.push_back(std::move(s));
        }
    return out;
}

// predict() p50 in microseconds over `queries`.
double predict_p50(const Personalizer& p, const std::vector<Sample>& queries) {
    std::vector<double> t;
    for (const Sample& q : queries) {
        const auto a = Clock::now();
        (void)p.predict(q, 1);
        t.push_back(micros(a, Clock::now()));
    }
    return p50(t);
}

}  // namespace

int main(int argc, char** argv) {
    std::string dir = std::filesystem::temp_directory_path().string();
    if (argc == 3 && std::strcmp(argv[1], "--dir") == 0) dir = argv[2];
    const std::string db = dir + "/edgetune-open-world.db";
    for (const char* s : {"", "-wal", "-shm", "-reserve"}) std::filesystem::remove(db + s);
    Rng rng(1);
    auto p = Personalizer::open(db, {.backbone = Backbone::external(128, "open-world-bench"),
                                     .head = HeadSpec::linear(99)});
    p->add(samples(99, 10, rng));
    std::vector<double> add;
    for (int i = 0; i < 50; ++i) {
        const auto a = Clock::now();
        p->add_class("class " + std::to_string(99 + i));
        add.push_back(micros(a, Clock::now()));
    }
    std::printf("add_class  D=128 C=100..149: p50 %.1f us, max %.1f us\n", p50(add),
                *std::max_element(add.begin(), add.end()));
    p.reset();
    for (const char* s : {"", "-wal", "-shm", "-reserve"}) std::filesystem::remove(db + s);
    p = Personalizer::open(db, {.backbone = Backbone::external(128, "open-world-bench"),
                                .head = HeadSpec::linear(100)});
    p->add(samples(100, 10, rng));
    const std::vector<Sample> queries = samples(100, 2, rng);
    p->train({.epochs = 1});
    const double off = predict_p50(*p, queries);
    p->add(samples(100, 1, rng));
    const TrainReport r = p->train({.epochs = 1, .unknown = Unknown::at_far(0.01)});
    const double on = predict_p50(*p, queries);
    std::printf("predict    D=128 C=100: rejection off p50 %.1f us, on p50 %.1f us (%s)\n", off, on,
                r.calibration ? "calibrated" : r.calibration_note.c_str());
    p.reset();
    for (const char* s : {"", "-wal", "-shm", "-reserve"}) std::filesystem::remove(db + s);
    return 0;
}
