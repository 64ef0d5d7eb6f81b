// test_alloc_faults.cpp — the N-th C++ allocation (operator new) failing inside open, add, train
// and forget: each call succeeds or throws (std::bad_alloc or an edgetune::Error), and
// afterwards the database reopens intact with its samples. (SQLite's own allocator is failed
// the same way in test_reliability.cpp.) Its own program: it replaces the global operator new.
#include <doctest/doctest.h>

#include <cstdio>
#include <cstdlib>
#include <functional>
#include <new>

#include "personalize.hpp"
#include "test_util.hpp"

namespace {

// Armed: the fail_at-th allocation from now throws std::bad_alloc (once).
std::int64_t fail_at = 0, count = 0;
bool fired = false;

void arm(std::int64_t n) {
    count = 0;
    fired = false;
    fail_at = n;
}

}  // namespace

void* operator new(std::size_t size) {
    if (fail_at > 0 && ++count == fail_at) {
        fired = true;
        fail_at = 0;
        throw std::bad_alloc();
    }
    if (void* p = std::malloc(size == 0 ? 1 : size)) return p;
    throw std::bad_alloc();
}
// NOTE: GCC sees free() after a `new` expression and warns; this operator new is malloc.
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
void operator delete(void* p) noexcept {
    std::free(p);
}
void operator delete(void* p, std::size_t) noexcept {
    std::free(p);
}

using namespace edgetune;
using namespace edgetune_test;

namespace {

std::shared_ptr<const Backbone> backbone() {
    static const auto bb = [] {
        Rng rng(3);
        BackboneNet net({.input = InputSpec::float_vector(6), .hidden = {8}}, rng);
        return Backbone::freeze(net);
    }();
    return bb;
}

std::vector<Sample> samples(int first, int n) {
    std::vector<Sample> out;
    for (int i = first; i < first + n; ++i) {
        Rng rng(static_cast<std::uint64_t>(i) + 1);
        Sample s{.label = i % 3};
        for (int j = 0; j < 6; ++j)
            s.input.push_back(rng.normal() + (j % 3 == s.label ? 2.f : 0.f));
        out.push_back(s);
    }
    return out;
}

PersonalizerOptions options() {
    return {.backbone = backbone(), .head = HeadSpec::linear(3), .seed = 1};
}

const TrainOptions quick{.epochs = 2, .batch = 8, .seed = 1};

}  // namespace

TEST_CASE("allocation faults: open, add, train and forget with the n-th operator new failing") {
    using Step = std::function<void(std::unique_ptr<Personalizer>&, const std::string&)>;
    const std::vector<std::pair<const char*, Step>> steps = {
        {"open", [](auto& p, const std::string& db) { p = Personalizer::open(db, options()); }},
        {"add", [](auto& p, const std::string&) { p->add(samples(100, 3)); }},
        {"train", [](auto& p, const std::string&) { p->train(quick); }},
        {"forget",
         [](auto& p, const std::string&) { p->forget(std::vector<std::int64_t>{2}, quick); }},
    };
    for (const auto& [name, run] : steps) {
        int runs = 0, threw = 0;
        for (std::int64_t n = 1; n < 100000; n += n < 200 ? 1 : n / 50) {
            TempDb db("cxx-alloc-fault");
            {
                auto p = Personalizer::open(db.path, options());
                p->add(samples(0, 24));
                p->train(quick);
            }
            std::unique_ptr<Personalizer> p;
            if (std::string(name) != "open") p = Personalizer::open(db.path, options());
            arm(n);
            std::string error;
            try {
                run(p, db.path);
            } catch (const std::bad_alloc&) {
                error = "bad_alloc";
            } catch (const Error& e) {
                error = e.what();
            }
            const bool hit = fired;
            arm(0);
            ++runs;
            if (!error.empty()) ++threw;
            p.reset();
            auto q = Personalizer::open(db.path, options());
            CHECK(q->store().integrity_check() == "ok");
            CHECK(q->sample_count() >= 23);
            CHECK(q->sample_count() <= 27);
            if (!hit) break;  // the call needed fewer than n allocations: every point was failed
        }
        std::printf("alloc faults: %-6s failing the n-th operator new: %d runs, %d threw\n", name,
                    runs, threw);
    }
}
