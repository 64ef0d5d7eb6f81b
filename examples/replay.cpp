// replay.cpp — incremental updates on a stream of local data, and what replay buys.
//
// A device receives ten sessions of new Fashion-MNIST images whose classes drift: session s
// brings classes s and s+1 (mod 10), so each class shows up in two consecutive sessions and
// then stops arriving. After every session the head (linear, over a frozen 10-class backbone)
// is updated three ways, each in its own Personalizer database:
//   (a) new only      — the session's samples (Replay::none()),
//   (b) reservoir     — the session's samples + a uniform replay of `replay` stored samples,
//   (c) retrain all   — every stored sample (Replay::all), whose cost grows with the store.
// After each update it measures test accuracy on every class seen so far and on the "old"
// ones (seen before, absent from this session), and the update's duration.
//
// Data: the backbone trains on the first 50000 training images (train_backbone's code path,
// or a file from train_backbone); the stream comes from the last 10000, in file order.
// Prints a table, writes replay.svg (accuracy and time per update), and exits non-zero unless
// (b) forgets less than (a): its mean old-class accuracy over sessions 2-10 is at least 10
// points higher.
//
// Usage: replay [--backbone PATH] [--out-dir DIR] [--replay N] [--epochs N] [--lr LR]
//               [--balance 0|1] [--validation FRACTION] [--small] [--defaults]
// --defaults trains with all-default options (PersonalizerOptions and TrainOptions as declared:
// only the backbone, the head, the replay policy and the session's seed are set; --epochs,
// --lr, --balance and --validation are ignored): what an app gets without tuning.
//
// The backbone is trained by pretrain.cpp, the code path of examples/train_backbone.
#include "args.hpp"
#include "pretrain.hpp"
#include "svg.hpp"

#include <filesystem>

using namespace pretrain;

namespace {

constexpr int sessions = 10;

// Test samples of the given classes.
std::vector<edgetune::Sample> test_samples(const fmnist::Dataset& test,
                                           const std::vector<std::int32_t>& classes) {
    return to_samples(fmnist::select_classes(test, classes));
}

struct Measure {
    double seen = 0.0, old = -1.0;  // accuracy in [0, 1]; old < 0: no old classes yet
    double update_ms = 0.0;         // CPU time of train() (wall time is noisy on a busy machine)
    std::int64_t train_samples = 0;
    bool committed = true;
};

}  // namespace

int main(int argc, char** argv) try {
    std::string backbone_path, out_dir = ".";
    bool small = false;
    std::int64_t replay_size = 0;
    float validation = 0.0f;
    int epochs = 10;
    float lr = 1e-3f;
    bool balance = true, defaults = false;
    for (examples::Args a(argc, argv); a.next();) {
        if (a.is("--small")) {
            small = true;
        } else if (a.is("--backbone")) {
            backbone_path = a.text();
        } else if (a.is("--out-dir")) {
            out_dir = a.text();
        } else if (a.is("--replay")) {
            replay_size = a.integer64();
        } else if (a.is("--epochs")) {
            epochs = a.integer();
        } else if (a.is("--validation")) {
            validation = a.real();
        } else if (a.is("--lr")) {
            lr = a.real();
        } else if (a.is("--balance")) {
            balance = a.text() != "0";
        } else if (a.is("--defaults")) {
            defaults = true;
        } else {
            std::fprintf(stderr,
                         "usage: replay [--backbone PATH] [--out-dir DIR] [--replay N] "
                         "[--epochs N] [--lr LR] [--balance 0|1] [--validation FRACTION] "
                         "[--small] [--defaults]\n");
            return 2;
        }
    }
    const int per_class = small ? 30 : 100;  // images of each of the session's two classes
    if (replay_size <= 0) replay_size = small ? 60 : 200;
    std::filesystem::create_directories(out_dir);

    const auto start = Clock::now();
    const fmnist::Dataset train = fmnist::load(fmnist::Split::train);
    const fmnist::Dataset test = fmnist::load(fmnist::Split::test, {.limit = small ? 2000 : 0});

    std::shared_ptr<const edgetune::Backbone> backbone;
    if (!backbone_path.empty()) {
        backbone = edgetune::Backbone::load(backbone_path);
        std::printf("backbone: %s (digest %s)\n", backbone_path.c_str(),
                    backbone->digest().c_str());
    } else {
        std::vector<std::size_t> rows(static_cast<std::size_t>(small ? 6000 : backbone_images));
        for (std::size_t i = 0; i < rows.size(); ++i) rows[i] = i;
        BackboneTraining opts{.epochs = small ? 2 : 5};
        std::printf("pretraining the backbone on all classes (%zu images, %d epochs)\n",
                    rows.size(), opts.epochs);
        backbone = train_fashion_backbone(fmnist::select_rows(train, rows), test, opts).backbone;
    }

    // The stream: session s takes the next `per_class` unused device images of classes s and
    // s+1 (mod 10), in file order.
    std::vector<std::vector<std::size_t>> class_rows(fmnist::num_classes);
    for (std::size_t i = static_cast<std::size_t>(backbone_images); i < train.size(); ++i)
        class_rows[static_cast<std::size_t>(train.labels[i])].push_back(i);
    std::vector<std::size_t> used(fmnist::num_classes, 0);
    auto session_classes = [](int s) {
        return std::vector<std::int32_t>{s % fmnist::num_classes, (s + 1) % fmnist::num_classes};
    };

    struct Policy {
        std::string name;
        edgetune::Replay replay;
        std::unique_ptr<edgetune::Personalizer> p;
        std::vector<Measure> measures;
    };
    std::vector<Policy> policies;
    policies.push_back({"new only", edgetune::Replay::none(), nullptr, {}});
    policies.push_back({"reservoir " + std::to_string(replay_size),
                        edgetune::Replay::reservoir(replay_size),
                        nullptr,
                        {}});
    policies.push_back({"retrain all", edgetune::Replay::all(), nullptr, {}});
    // NOTE: validation_fraction = 0 by default, so that the three policies are compared on
    // what they learn; with a validation split (--validation 0.2) the guard rolls back the
    // updates that forget, which the table then marks with '*'.
    for (std::size_t i = 0; i < policies.size(); ++i) {
        const std::string db = out_dir + "/replay_" + std::to_string(i) + ".db";
        remove_db(db);
        const auto head = edgetune::HeadSpec::linear(fmnist::num_classes);
        policies[i].p = edgetune::Personalizer::open(
            db, defaults ? edgetune::PersonalizerOptions{.backbone = backbone, .head = head}
                         : edgetune::PersonalizerOptions{.backbone = backbone,
                                                         .head = head,
                                                         .seed = 7,
                                                         .validation_fraction = validation});
    }
    const edgetune::TrainOptions train_options =
        defaults ? edgetune::TrainOptions{}
                 : edgetune::TrainOptions{.epochs = epochs,
                                          .batch = 32,
                                          .optimizer = edgetune::AdamOptions{.lr = lr},
                                          .seed = 1,
                                          .balance_classes = balance};

    std::vector<std::int32_t> seen;
    for (int s = 0; s < sessions; ++s) {
        const std::vector<std::int32_t> now = session_classes(s);
        std::vector<std::size_t> rows;
        for (std::int32_t c : now) {
            const auto k = static_cast<std::size_t>(c);
            for (int j = 0; j < per_class; ++j) rows.push_back(class_rows[k].at(used[k]++));
            if (std::find(seen.begin(), seen.end(), c) == seen.end()) seen.push_back(c);
        }
        const auto samples = to_samples(fmnist::select_rows(train, rows));
        std::vector<std::int32_t> old;
        for (std::int32_t c : seen)
            if (std::find(now.begin(), now.end(), c) == now.end()) old.push_back(c);
        const auto test_seen = test_samples(test, seen);
        const auto test_old = test_samples(test, old);
        for (std::size_t i = 0; i < policies.size(); ++i) {
            Policy& policy = policies[i];
            policy.p->add(samples);
            edgetune::TrainOptions o = train_options;
            o.replay = policy.replay;
            o.seed = static_cast<std::uint64_t>(s + 1);

            Measure m;
            const std::clock_t update_start = std::clock();
            const auto report = policy.p->train(o);
            m.update_ms = 1000.0 * cpu_seconds_since(update_start);
            m.committed = report.outcome == edgetune::TrainReport::Outcome::committed;
            m.train_samples = report.train_samples;
            m.seen = policy.p->evaluate(test_seen).accuracy;
            if (!old.empty()) m.old = policy.p->evaluate(test_old).accuracy;
            policy.measures.push_back(m);
        }
    }

    if (defaults)
        std::printf(
            "\nIncremental updates: %d sessions of %d images (2 classes each, drifting); "
            "linear head, all-default options\n",
            sessions, 2 * per_class);
    else
        std::printf(
            "\nIncremental updates: %d sessions of %d images (2 classes each, drifting); "
            "linear head, Adam lr %g, batch 32, %d epochs per update, %s loss\n",
            sessions, 2 * per_class, static_cast<double>(lr), epochs,
            balance ? "class-balanced" : "unweighted");
    std::printf(
        "test accuracy %% on the classes seen so far / on the old ones (seen before, "
        "not in this session); CPU ms per update; samples trained on\n");
    std::printf("%-7s %-7s", "session", "classes");
    for (const Policy& policy : policies) std::printf(" | %-24s", policy.name.c_str());
    std::printf("\n%-15s", "");
    for (std::size_t i = 0; i < policies.size(); ++i)
        std::printf(" | %5s %5s %6s %6s", "seen", "old", "ms", "n");
    std::printf("\n");
    for (int s = 0; s < sessions; ++s) {
        const auto now = session_classes(s);
        std::printf("%7d %3d,%-3d", s + 1, now[0], now[1]);
        for (const Policy& policy : policies) {
            const Measure& m = policy.measures[static_cast<std::size_t>(s)];
            char old[16] = "    -";
            if (m.old >= 0.0) std::snprintf(old, sizeof old, "%5.1f", 100.0 * m.old);
            std::printf(" | %5.1f %s %6.1f %6ld%s", 100.0 * m.seen, old, m.update_ms,
                        static_cast<long>(m.train_samples), m.committed ? "" : "*");
        }
        std::printf("\n");
    }
    std::vector<double> mean_old(policies.size(), 0.0), total_ms(policies.size(), 0.0);
    for (std::size_t i = 0; i < policies.size(); ++i) {
        for (int s = 0; s < sessions; ++s) {
            const Measure& m = policies[i].measures[static_cast<std::size_t>(s)];
            if (s > 0) mean_old[i] += m.old / (sessions - 1);
            total_ms[i] += m.update_ms;
        }
        std::printf(
            "%-12s mean old-class accuracy (sessions 2-%d) %5.1f%%, final accuracy on "
            "all 10 classes %5.1f%%, total update time %.0f CPU ms\n",
            policies[i].name.c_str(), sessions, 100.0 * mean_old[i],
            100.0 * policies[i].measures.back().seen, total_ms[i]);
    }

    edgetune::svg::LineChart accuracy{.title = "Accuracy on the classes seen so far",
                                      .x_label = "session",
                                      .y_label = "test accuracy (%)",
                                      .y_min = 0.0,
                                      .y_max = 100.0};
    edgetune::svg::LineChart old_accuracy{.title = "Accuracy on old classes (forgetting)",
                                          .x_label = "session",
                                          .y_label = "test accuracy (%)",
                                          .y_min = 0.0,
                                          .y_max = 100.0};
    edgetune::svg::LineChart timing{
        .title = "CPU time per update", .x_label = "session", .y_label = "ms"};
    for (const Policy& policy : policies) {
        edgetune::svg::Series a{.name = policy.name}, o{.name = policy.name},
            t{.name = policy.name};
        for (int s = 0; s < sessions; ++s) {
            const Measure& m = policy.measures[static_cast<std::size_t>(s)];
            a.x.push_back(s + 1);
            a.y.push_back(100.0 * m.seen);
            if (m.old >= 0.0) {
                o.x.push_back(s + 1);
                o.y.push_back(100.0 * m.old);
            }
            t.x.push_back(s + 1);
            t.y.push_back(m.update_ms);
        }
        accuracy.series.push_back(a);
        old_accuracy.series.push_back(o);
        timing.series.push_back(t);
    }
    const std::string svg_path = out_dir + "/replay.svg";
    edgetune::svg::write_file(svg_path, {accuracy, old_accuracy, timing});
    std::printf("charts in %s; total time %.1f s\n", svg_path.c_str(), seconds_since(start));

    const double gain = mean_old[1] - mean_old[0];
    std::printf(
        "replay: %s keeps %.1f points more old-class accuracy than new only (need >= "
        "10): %s\n",
        policies[1].name.c_str(), 100.0 * gain, gain >= 0.10 ? "ok" : "FAILED");
    return gain >= 0.10 ? 0 : 1;
} catch (const std::exception& e) {
    std::fprintf(stderr, "replay: %s\n", e.what());
    return 1;
}
