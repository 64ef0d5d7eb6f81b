// test_threads.cpp — the Personalizer under concurrency: add() and predict() from other threads
// while a background training runs, commits seen atomically by readers, concurrent train() and
// forget() calls serialized. Built to run under ThreadSanitizer (-Db_sanitize=thread): the
// checks here are about data races as much as about results.
//
// NOTE: doctest assertions are made on the main thread only; worker threads count failures.
#include "personalize.hpp"

#include <doctest/doctest.h>

#include <unistd.h>
#include "test_util.hpp"

#include <atomic>
#include <cstring>
#include <filesystem>
#include <string>
#include <thread>

using namespace edgetune;
using namespace edgetune_test;
using namespace std::chrono_literals;

namespace {

using Tensors = std::vector<std::pair<std::string, Matrix>>;

// Gaussian clusters in 8-D, one per class, classes interleaved.
std::vector<Sample> blobs(int per_class, std::uint64_t seed) {
    Rng centers_rng(11);
    Matrix centers(4, 8);
    for (Index i = 0; i < centers.size(); ++i) centers.data()[i] = 3.0f * centers_rng.normal();
    Rng rng(seed);
    std::vector<Sample> out;
    for (int k = 0; k < per_class; ++k)
        for (Index c = 0; c < 4; ++c) {
            Sample s;
            for (Index j = 0; j < 8; ++j) s.input.push_back(centers(c, j) + 0.3f * rng.normal());
            s.label = static_cast<std::int32_t>(c);
            out.push_back(std::move(s));
        }
    return out;
}

std::unique_ptr<Personalizer> open(const std::string& path,
                                   Retention retention = Retention::unlimited()) {
    static const std::shared_ptr<const Backbone> backbone = [] {
        Rng rng(3);
        BackboneNet net({.input = InputSpec::float_vector(8), .hidden = {24, 16}}, rng);
        return Backbone::freeze(net);
    }();
    return Personalizer::open(
        path,
        {.backbone = backbone, .head = HeadSpec::linear(4), .retention = retention, .seed = 7});
}

bool same_bytes(const Tensors& a, const Tensors& b) {
    if (a.size() != b.size()) return false;
    for (std::size_t i = 0; i < a.size(); ++i)
        if (a[i].first != b[i].first || a[i].second.size() != b[i].second.size() ||
            std::memcmp(a[i].second.data(), b[i].second.data(),
                        sizeof(float) * static_cast<std::size_t>(a[i].second.size())) != 0)
            return false;
    return true;
}

const TrainOptions quick{.epochs = 10, .optimizer = AdamOptions{.lr = 0.02f}};

}  // namespace

TEST_CASE("add and predict from two threads while a background training runs") {
    TempDb db("add-predict");
    auto p = open(db.path);
    p->add(blobs(25, 1));  // 100 samples
    REQUIRE(p->train(quick).outcome == TrainReport::Outcome::committed);
    const auto test = blobs(5, 2);
    // Cached features are keyed by digest + kernel variant (Backbone::feature_key).
    const std::string digest = p->store().get_meta("personalize.feature_key").value_or("");

    std::atomic<int> errors{0};
    std::atomic<int> predictions{0};
    std::atomic<bool> stop_predicting{false};
    // Slowed down a little so that the adds and predictions overlap the run.
    auto bg = p->train_async(
        {.epochs = 40,
         .batch = 8,
         .optimizer = AdamOptions{.lr = 0.01f},
         .on_progress = [](const Progress&) { std::this_thread::sleep_for(100us); }});
    std::thread adder([&] {
        try {
            for (int k = 0; k < 20; ++k) {
                const auto batch = blobs(1, 100 + static_cast<std::uint64_t>(k));  // 4 samples
                if (k % 2 == 0) {
                    if (p->add(batch).size() != 4) ++errors;
                } else {
                    for (const Sample& s : batch)
                        if (p->add(s) <= 0) ++errors;
                }
            }
        } catch (...) {
            ++errors;
        }
    });
    std::thread predictor([&] {
        try {
            for (std::size_t n = 0; !stop_predicting || n < 50; ++n) {
                const auto top = p->predict(test[n % test.size()], 2);
                if (top.size() != 2 || !(top[0].probability >= top[1].probability)) ++errors;
                if (n % 16 == 0 &&
                    p->evaluate(test).samples != static_cast<std::int64_t>(test.size()))
                    ++errors;
                if (n % 16 == 8) (void)p->sample_count();
                ++predictions;
            }
        } catch (...) {
            ++errors;
        }
    });
    // The main thread watches the progress meanwhile.
    std::int64_t last_step = 0;
    while (!bg->done()) {
        const Progress pr = bg->progress();
        if (pr.step < last_step) ++errors;
        last_step = pr.step;
        std::this_thread::sleep_for(1ms);
    }
    adder.join();
    const TrainReport r = bg->wait();
    stop_predicting = true;
    predictor.join();

    CHECK(errors == 0);
    CHECK(predictions >= 50);
    INFO(r.to_json());
    CHECK((r.outcome == TrainReport::Outcome::committed ||
           r.outcome == TrainReport::Outcome::rolled_back));
    CHECK(p->sample_count() == 100 + 80);
    CHECK(p->store().ids_missing_features(digest, 1000).empty());
    CHECK(p->store().integrity_check() == "ok");
    // What the background run did not see is new for the next run.
    const auto next = p->train({.epochs = 1, .replay = Replay::reservoir(1)});
    CHECK(next.train_samples >= 1);
    CHECK(next.train_samples <= 1 + 80);
}

TEST_CASE("readers see either the old or the new head, never a mix") {
    TempDb db("atomic");
    auto p = open(db.path);
    p->add(blobs(25, 1));
    REQUIRE(p->train(quick).outcome == TrainReport::Outcome::committed);
    const Tensors before = p->head_parameters();
    std::vector<Tensors> seen;
    std::atomic<bool> done{false};
    std::thread reader([&] {
        while (!done) seen.push_back(p->head_parameters());
    });
    const TrainReport r = p->train({.epochs = 20, .optimizer = AdamOptions{.lr = 0.01f}});
    done = true;
    reader.join();
    const Tensors after = p->head_parameters();
    REQUIRE(r.outcome == TrainReport::Outcome::committed);
    REQUIRE(!same_bytes(before, after));
    int old_heads = 0, new_heads = 0;
    for (const Tensors& t : seen) {
        old_heads += same_bytes(t, before);
        new_heads += same_bytes(t, after);
    }
    CHECK(old_heads + new_heads == static_cast<int>(seen.size()));
}

TEST_CASE("train, train_async and forget from several threads are serialized") {
    TempDb db("serialize");
    auto p = open(db.path);
    const auto ids = p->add(blobs(25, 1));
    REQUIRE(p->train(quick).outcome == TrainReport::Outcome::committed);
    std::atomic<int> errors{0};
    std::vector<TrainReport> reports(3);
    auto bg = p->train_async({.epochs = 5, .batch = 8});
    std::thread a([&] {
        try {
            reports[0] = p->train({.epochs = 5, .batch = 8, .seed = 1});
        } catch (...) {
            ++errors;
        }
    });
    std::thread b([&] {
        try {
            const std::vector<std::int64_t> gone(ids.begin(), ids.begin() + 8);
            reports[1] = p->forget(gone, quick);
        } catch (...) {
            ++errors;
        }
    });
    std::thread c([&] {
        try {
            for (int k = 0; k < 10; ++k) p->predict(blobs(1, 50)[0], 1);
        } catch (...) {
            ++errors;
        }
    });
    std::string failure;  // the threads must be joined before any assertion
    try {
        reports[2] = bg->wait();
    } catch (const std::exception& e) {
        failure = e.what();
    }
    a.join();
    b.join();
    c.join();
    CHECK(failure == "");
    CHECK(errors == 0);
    CHECK(reports[1].retrained_from_base);
    CHECK(reports[1].outcome == TrainReport::Outcome::committed);
    CHECK(p->sample_count() == 92);
    // Every run is in the log: the first train, the background one, the other train, forget.
    CHECK(p->store().list_runs().size() == 4);
    // The head that serves is the one of the newest checkpoint.
    const auto latest = p->store().latest_checkpoint(CheckpointKind::trained);
    REQUIRE(latest);
    CHECK(same_bytes(decode_checkpoint(latest->payload).tensors, p->head_parameters()));
}

TEST_CASE("cancel from another thread; destroying a running job joins it") {
    TempDb db("cancel");
    auto p = open(db.path);
    p->add(blobs(25, 1));
    REQUIRE(p->train(quick).outcome == TrainReport::Outcome::committed);
    const Tensors before = p->head_parameters();
    auto bg = p->train_async({.epochs = 1000000, .batch = 4});
    std::thread canceller([&] {
        while (bg->progress().step == 0) std::this_thread::sleep_for(1ms);
        bg->cancel();
    });
    const TrainReport r = bg->wait();
    canceller.join();
    CHECK(r.outcome == TrainReport::Outcome::cancelled);
    CHECK(same_bytes(p->head_parameters(), before));
    {
        auto running = p->train_async({.epochs = 1000000, .batch = 4});
        std::this_thread::sleep_for(5ms);
    }
    CHECK(same_bytes(p->head_parameters(), before));
}

TEST_CASE("adds that evict old samples (retention) while background runs load the store") {
    // keep_newest evicts on every add past capacity: a run's reads race with the evictions.
    TempDb db("retention");
    auto p = open(db.path, Retention::keep_newest(60));
    p->add(blobs(15, 1));
    std::atomic<int> errors{0};
    std::atomic<bool> done{false};
    std::thread adder([&] {
        try {
            // A pause between adds, as an app has: a writer that never lets go of the lock
            // starves the run's commit past the busy timeout (SQLite's waiters poll, unfairly).
            for (std::uint64_t k = 0; !done || k < 30; ++k) {
                p->add(blobs(1, 200 + k));
                std::this_thread::sleep_for(500us);
            }
        } catch (...) {
            ++errors;
        }
    });
    std::string failure;
    int runs = 0;
    for (; runs < 15; ++runs) {
        auto bg = p->train_async({.epochs = 1, .batch = 16, .replay = Replay::reservoir(20)});
        try {
            const TrainReport r = bg->wait();
            if (r.outcome == TrainReport::Outcome::cancelled) ++errors;
        } catch (const std::exception& e) {
            failure = e.what();  // the adder must be joined before any assertion
            break;
        }
    }
    done = true;
    adder.join();
    CHECK(failure == "");
    CHECK(errors == 0);
    CHECK(p->sample_count() == 60);
    CHECK(p->store().list_runs().size() == static_cast<std::size_t>(runs));
}
