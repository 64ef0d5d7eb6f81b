// enroll.cpp — few-shot enrollment (the face/voice-enrollment mechanism) on Fashion-MNIST:
// a backbone pretrained on classes 0-5 learns classes 6-9 on the device from k shots each.
//
// The device already holds a larger stored set of the old classes (`stored` per class) and a
// head trained on it ("before"). Then k shots of each new class arrive and the head is updated
// (a) with only the new shots, or (b) with the new shots plus a reservoir replay of stored old
// samples, using class-balanced loss weights (what makes a handful of shots count next to many
// stored samples). Both a linear head and a prototype head (nearest-class-mean initialization
// on L2-normalized features) are shown. Accuracy is measured on the Fashion-MNIST test set for
// the new classes, the old classes and all ten, averaged over `episodes` draws of the shots,
// next to the zero-training baseline: cosine prototypes of the same stored samples and shots.
//
// Data: the backbone trains on the first 50000 training images of classes 0-5 (the code path
// of train_backbone, or a file from `train_backbone --classes 0-5`); the device's data (stored
// old samples, shots) come from the last 10000 training images, which it never saw. Shots of
// episode e are the images e*k .. e*k+k-1 of their class there, in file order, so
// bench/peers/enroll_torch.py uses the very same ones.
//
// Prints a table, writes enroll.svg (bar charts), and exits non-zero unless, at k = 5 with
// replay, new-class accuracy is well above chance (>= 25%; a 10-way guess gets 10%) and
// old-class accuracy stays within 15 points of before and above "new only" (for each head).
// --json prints the k = 5 replay numbers as one JSON line on stdout (the table then goes to
// stderr) in the form enroll_torch.py prints. --small (CI) uses a weaker backbone (6000
// images, 2 epochs), fewer stored samples, k = 1 and 5 and 3000 test images.
//
// Usage: enroll [--backbone PATH] [--out-dir DIR] [--episodes N] [--json] [--small]
//               [--epochs N] [--lr LR] [--base-lr LR] [--temperature T] [--balance 0|1]
//               [--validation FRACTION] [--new-share S] [--normalize 0|1] [--defaults]
// --new-share S gives the shots a share S of every batch of the update (TrainOptions::new_share;
// its default when not given).
// --normalize 0 gives the prototype head raw (not L2-normalized) features.
// --defaults trains with all-default options (PersonalizerOptions and TrainOptions as declared:
// only the backbone, the head, the replay policy and the episode's seed are set; the other
// flags are ignored): what an app gets without tuning, next to the tuned run without the flag.
// It exits 0 whatever the checks say (the guard's roll-backs change what they compare).
//
// The backbone is trained by pretrain.cpp, the code path of examples/train_backbone.
#include "args.hpp"
#include "json.hpp"
#include "pretrain.hpp"
#include "svg.hpp"

#include <cmath>
#include <filesystem>

using namespace pretrain;

namespace {

constexpr std::int32_t first_new_class = 6;

struct Accuracy {
    double new_classes = 0.0, old_classes = 0.0, all = 0.0;  // in [0, 1]
    Accuracy& operator+=(const Accuracy& a) {
        new_classes += a.new_classes;
        old_classes += a.old_classes;
        all += a.all;
        return *this;
    }
    Accuracy operator/(double n) const { return {new_classes / n, old_classes / n, all / n}; }
};

// The committed head on the test set: new, old, and all classes (weighted by test counts).
Accuracy measure(const edgetune::Personalizer& p, const std::vector<edgetune::Sample>& test_new,
                 const std::vector<edgetune::Sample>& test_old) {
    Accuracy a;
    a.new_classes = p.evaluate(test_new).accuracy;
    a.old_classes = p.evaluate(test_old).accuracy;
    a.all = (a.new_classes * static_cast<double>(test_new.size()) +
             a.old_classes * static_cast<double>(test_old.size())) /
            static_cast<double>(test_new.size() + test_old.size());
    return a;
}

struct Setup {
    int stored_per_class = 100;  // old-class samples already on the device
    std::int64_t replay = 200;   // reservoir size for (b)
    std::vector<int> shots = {1, 5, 20};
    int episodes = 3;
    int base_epochs = 10;    // training on the stored old samples ("before")
    int enroll_epochs = 30;  // the enrollment update
    std::int64_t batch = 32;
    float lr = 1e-3f;       // the enrollment update
    float base_lr = 1e-3f;  // the training on the stored old samples
};

struct Row {
    std::string head;
    int k = 0;  // 0: before enrollment
    std::string replay;
    Accuracy accuracy;
    double train_ms = 0.0;  // mean CPU time of the enrollment update (train())
    int rolled_back = 0;    // updates the validation guard refused (--validation > 0 only)
};

std::string json_accuracy(const Accuracy& a) {
    return "{\"new\":" + edgetune::json_number(100.0 * a.new_classes, 2) +
           ",\"old\":" + edgetune::json_number(100.0 * a.old_classes, 2) +
           ",\"all\":" + edgetune::json_number(100.0 * a.all, 2) + "}";
}

}  // namespace

int main(int argc, char** argv) try {
    std::string backbone_path, out_dir = ".";
    bool small = false, json = false;
    int episodes = 0, enroll_epochs = 0;
    float lr = 0.0f, base_lr = 0.0f, temperature = 0.1f;
    bool balance = true;
    float validation = 0.0f;
    float new_share = edgetune::TrainOptions{}.new_share;  // of the enrollment update
    bool normalize = true;                                 // prototype head: L2-normalized features
    bool defaults = false;  // all-default options (see the file's top)
    for (examples::Args a(argc, argv); a.next();) {
        if (a.is("--small")) {
            small = true;
        } else if (a.is("--json")) {
            json = true;
        } else if (a.is("--backbone")) {
            backbone_path = a.text();
        } else if (a.is("--out-dir")) {
            out_dir = a.text();
        } else if (a.is("--episodes")) {
            episodes = a.integer();
        } else if (a.is("--epochs")) {
            enroll_epochs = a.integer();
        } else if (a.is("--lr")) {
            lr = a.real();
        } else if (a.is("--temperature")) {
            temperature = a.real();
        } else if (a.is("--balance")) {
            balance = a.text() != "0";
        } else if (a.is("--validation")) {
            validation = a.real();
        } else if (a.is("--base-lr")) {
            base_lr = a.real();
        } else if (a.is("--new-share")) {
            new_share = a.real();
        } else if (a.is("--normalize")) {
            normalize = a.text() != "0";
        } else if (a.is("--defaults")) {
            defaults = true;
        } else {
            std::fprintf(stderr,
                         "usage: enroll [--backbone PATH] [--out-dir DIR] [--episodes N] "
                         "[--json] [--small] [--new-share S] [--normalize 0|1] [--defaults]\n");
            return 2;
        }
    }
    // With --json the table goes to stderr and stdout carries only the JSON line.
    FILE* out = json ? stderr : stdout;
    Setup setup;
    if (small) {
        setup.stored_per_class = 40;
        setup.replay = 80;
        setup.shots = {1, 5};
    }
    if (episodes > 0) setup.episodes = episodes;
    if (enroll_epochs > 0) setup.enroll_epochs = enroll_epochs;
    if (lr > 0.0f) setup.lr = lr;
    if (base_lr > 0.0f) setup.base_lr = base_lr;
    std::filesystem::create_directories(out_dir);

    const auto start = Clock::now();
    const fmnist::Dataset train = fmnist::load(fmnist::Split::train);
    const fmnist::Dataset test = fmnist::load(fmnist::Split::test, {.limit = small ? 3000 : 0});
    std::vector<std::int32_t> old_classes, new_classes;
    for (std::int32_t c = 0; c < fmnist::num_classes; ++c)
        (c < first_new_class ? old_classes : new_classes).push_back(c);

    // 1. The backbone: pretrained on the old classes only.
    std::shared_ptr<const edgetune::Backbone> backbone;
    if (!backbone_path.empty()) {
        backbone = edgetune::Backbone::load(backbone_path);
        std::fprintf(out, "backbone: %s (digest %s)\n", backbone_path.c_str(),
                     backbone->digest().c_str());
    } else {
        std::vector<std::size_t> rows(static_cast<std::size_t>(small ? 6000 : backbone_images));
        for (std::size_t i = 0; i < rows.size(); ++i) rows[i] = i;
        BackboneTraining opts{.classes = old_classes, .epochs = small ? 2 : 5, .verbose = !json};
        std::fprintf(out, "pretraining the backbone on classes 0-5 (%zu images, %d epochs)\n",
                     rows.size(), opts.epochs);
        const auto bb_start = Clock::now();
        backbone = train_fashion_backbone(fmnist::select_rows(train, rows), test, opts).backbone;
        std::fprintf(out, "backbone trained in %.1f s\n", seconds_since(bb_start));
    }

    // 2. The device's data: the last 10000 training images.
    std::vector<std::size_t> device_rows;
    for (std::size_t i = static_cast<std::size_t>(backbone_images); i < train.size(); ++i)
        device_rows.push_back(i);
    const fmnist::Dataset device = fmnist::select_rows(train, device_rows);
    const auto device_class_rows = rows_per_class(device);
    std::vector<edgetune::Sample> stored;
    for (std::int32_t c : old_classes)
        for (int j = 0; j < setup.stored_per_class; ++j) {
            const std::size_t row =
                device_class_rows[static_cast<std::size_t>(c)].at(static_cast<std::size_t>(j));
            stored.push_back(to_samples(fmnist::select_rows(device, {row}))[0]);
        }
    const auto test_new = to_samples(fmnist::select_classes(test, new_classes));
    const auto test_old = to_samples(fmnist::select_classes(test, old_classes));
    std::fprintf(out,
                 "device: %zu stored samples of classes 0-5; test: %zu images of new classes "
                 "6-9, %zu of old classes 0-5\n",
                 stored.size(), test_new.size(), test_old.size());

    struct HeadChoice {
        std::string name;
        edgetune::HeadSpec spec;
    };
    edgetune::HeadSpec prototype = edgetune::HeadSpec::prototype(10, temperature);
    prototype.normalize = normalize;
    const std::vector<HeadChoice> heads = {
        {"linear", edgetune::HeadSpec::linear(10)},
        {"prototype", defaults ? edgetune::HeadSpec::prototype(10) : prototype}};
    struct Policy {
        std::string name;
        edgetune::Replay replay;
    };
    const std::vector<Policy> policies = {
        {"new only", edgetune::Replay::none()},
        {"replay " + std::to_string(setup.replay), edgetune::Replay::reservoir(setup.replay)}};

    // NOTE: validation_fraction = 0 by default: a validation split holds out some of the few
    // shots, and the guard then judges on one or two samples per new class (it also rolls back
    // "new only" updates that forget, rightly). --validation 0.2 shows it; the table then
    // counts the rolled-back updates. Enrollment is measured on the test set instead.
    auto options = [&](const edgetune::HeadSpec& spec) {
        if (defaults) return edgetune::PersonalizerOptions{.backbone = backbone, .head = spec};
        return edgetune::PersonalizerOptions{
            .backbone = backbone, .head = spec, .seed = 7, .validation_fraction = validation};
    };
    const edgetune::TrainOptions base_train =
        defaults ? edgetune::TrainOptions{.seed = 1}
                 : edgetune::TrainOptions{.epochs = setup.base_epochs,
                                          .batch = setup.batch,
                                          .optimizer = edgetune::AdamOptions{.lr = setup.base_lr},
                                          .seed = 1};

    // The shots of episode e: images e*k .. e*k+k-1 of each new class.
    auto episode_shots = [&](int k, int e) {
        std::vector<edgetune::Sample> shots;
        for (std::int32_t c : new_classes)
            for (int j = 0; j < k; ++j)
                shots.push_back(to_samples(
                    fmnist::select_rows(device, {device_class_rows[static_cast<std::size_t>(c)].at(
                                                    static_cast<std::size_t>(e * k + j))}))[0]);
        return shots;
    };

    std::vector<Row> rows;
    for (const HeadChoice& head : heads) {
        // 3. "Before": the head trained on the stored old samples, saved as the base database
        // that every enrollment run starts from (a file copy).
        const std::string base_db = out_dir + "/enroll_" + head.name + "_base.db";
        remove_db(base_db);
        {
            auto p = edgetune::Personalizer::open(base_db, options(head.spec));
            p->add(stored);
            const auto report = p->train(base_train);
            if (report.outcome != edgetune::TrainReport::Outcome::committed)
                throw edgetune::Error("base training of the " + head.name +
                                      " head did not commit: " + report.reason);
            rows.push_back({head.name, 0, "before", measure(*p, test_new, test_old), 0.0});
        }
        for (int k : setup.shots)
            for (const Policy& policy : policies) {
                Row row{head.name, k, policy.name, {}, 0.0};
                for (int e = 0; e < setup.episodes; ++e) {
                    const std::string db = out_dir + "/enroll_run.db";
                    remove_db(db);
                    std::filesystem::copy_file(base_db, db);
                    auto p = edgetune::Personalizer::open(db, options(head.spec));
                    p->add(episode_shots(k, e));
                    edgetune::TrainOptions enroll = base_train;
                    enroll.replay = policy.replay;
                    enroll.seed = static_cast<std::uint64_t>(100 + e);
                    if (!defaults) {
                        enroll.epochs = setup.enroll_epochs;
                        enroll.optimizer = edgetune::AdamOptions{.lr = setup.lr};
                        enroll.balance_classes = balance;
                        enroll.new_share = new_share;
                    }
                    const std::clock_t train_start = std::clock();
                    const auto report = p->train(enroll);
                    row.train_ms += 1000.0 * cpu_seconds_since(train_start);
                    if (report.outcome == edgetune::TrainReport::Outcome::rolled_back)
                        ++row.rolled_back;
                    else if (report.outcome != edgetune::TrainReport::Outcome::committed)
                        throw edgetune::Error("enrollment did not commit: " + report.reason);
                    row.accuracy += measure(*p, test_new, test_old);
                    p.reset();
                    remove_db(db);
                }
                row.accuracy = row.accuracy / setup.episodes;
                row.train_ms /= setup.episodes;
                rows.push_back(row);
            }
    }

    // The zero-training baseline: cosine prototypes of the stored samples and the shots (nearest
    // class mean by cosine; HeadSpec::cosine_prototype trained with epochs = 0, no step).
    for (int k : setup.shots) {
        Row row{"cosine NCM", k, "0 steps", {}, 0.0};
        for (int e = 0; e < setup.episodes; ++e) {
            const std::string db = out_dir + "/enroll_run.db";
            remove_db(db);
            auto p = edgetune::Personalizer::open(
                db, options(edgetune::HeadSpec::cosine_prototype(10, temperature)));
            p->add(stored);
            p->add(episode_shots(k, e));
            edgetune::TrainOptions zero_steps = base_train;
            zero_steps.epochs = 0;
            if (p->train(zero_steps).outcome != edgetune::TrainReport::Outcome::committed)
                throw edgetune::Error("the cosine prototypes did not commit");
            row.accuracy += measure(*p, test_new, test_old);
            p.reset();
            remove_db(db);
        }
        row.accuracy = row.accuracy / setup.episodes;
        rows.push_back(row);
    }

    if (defaults)
        std::fprintf(out,
                     "\nFew-shot enrollment of classes 6-9 (test accuracy %%, mean of %d "
                     "episodes; %d stored samples per old class; all-default options)\n",
                     setup.episodes, setup.stored_per_class);
    else
        std::fprintf(out,
                     "\nFew-shot enrollment of classes 6-9 (test accuracy %%, mean of %d "
                     "episodes; %d stored samples per old class; Adam lr %g, batch %ld, %d "
                     "epochs, %s, prototype T %g%s)\n",
                     setup.episodes, setup.stored_per_class, static_cast<double>(setup.lr),
                     static_cast<long>(setup.batch), setup.enroll_epochs,
                     balance ? "class-balanced loss" : "unweighted loss",
                     static_cast<double>(temperature), normalize ? "" : " on raw features");
    std::fprintf(out, "%-10s %5s  %-12s %7s %7s %7s %10s\n", "head", "shots", "update", "new",
                 "old", "all", "CPU ms");
    for (const Row& r : rows)
        std::fprintf(
            out, "%-10s %5s  %-12s %7.1f %7.1f %7.1f %10s%s\n", r.head.c_str(),
            r.k == 0 ? "-" : std::to_string(r.k).c_str(), r.replay.c_str(),
            100.0 * r.accuracy.new_classes, 100.0 * r.accuracy.old_classes, 100.0 * r.accuracy.all,
            r.k == 0 ? "" : std::to_string(std::lround(r.train_ms)).c_str(),
            r.rolled_back > 0 ? ("  (" + std::to_string(r.rolled_back) + " rolled back)").c_str()
                              : "");

    // One panel per (head, k): groups new/old/all, bars before / new only / replay.
    std::vector<edgetune::svg::Chart> panels;
    for (const HeadChoice& head : heads)
        for (int k : setup.shots) {
            edgetune::svg::BarChart chart{.title = head.name + " head, " + std::to_string(k) +
                                                   " shot" + (k > 1 ? "s" : "") + " per new class",
                                          .y_label = "test accuracy (%)",
                                          .series = {"before"},
                                          .groups = {{"new 6-9", {}}, {"old 0-5", {}}, {"all", {}}},
                                          .y_max = 100.0};
            for (const Row& r : rows) {
                if (r.head != head.name || (r.k != k && r.k != 0)) continue;
                if (r.k != 0) chart.series.push_back(r.replay);
                chart.groups[0].values.push_back(100.0 * r.accuracy.new_classes);
                chart.groups[1].values.push_back(100.0 * r.accuracy.old_classes);
                chart.groups[2].values.push_back(100.0 * r.accuracy.all);
            }
            panels.push_back(chart);
        }
    const std::string svg_path = out_dir + "/enroll.svg";
    edgetune::svg::write_file(svg_path, panels, {.columns = static_cast<int>(setup.shots.size())});
    std::fprintf(out, "bar charts in %s; total time %.1f s\n", svg_path.c_str(),
                 seconds_since(start));

    auto find = [&](const std::string& head, int k, const std::string& replay) -> const Row& {
        for (const Row& r : rows)
            if (r.head == head && r.k == k && r.replay == replay) return r;
        throw edgetune::Error("no result for " + head + " " + std::to_string(k) + " " + replay);
    };
    const std::string replay_name = policies[1].name;
    if (json)
        std::printf(
            "{\"framework\":\"edgetune\",\"k\":5,\"stored_per_class\":%d,\"replay\":%ld,"
            "\"episodes\":%d,\"linear\":%s,\"prototype\":%s}\n",
            setup.stored_per_class, static_cast<long>(setup.replay), setup.episodes,
            json_accuracy(find("linear", 5, replay_name).accuracy).c_str(),
            json_accuracy(find("prototype", 5, replay_name).accuracy).c_str());

    // Success: at k = 5 with replay, new classes are learned (chance is 10% for a 10-way
    // guess), old classes are kept (within 15 points of before, and better than without
    // replay).
    bool ok = true;
    for (const HeadChoice& head : heads) {
        const Accuracy before = find(head.name, 0, "before").accuracy;
        const Accuracy after = find(head.name, 5, replay_name).accuracy;
        const Accuracy new_only = find(head.name, 5, policies[0].name).accuracy;
        const bool good = after.new_classes >= 0.25 &&
                          after.old_classes >= before.old_classes - 0.15 &&
                          after.old_classes > new_only.old_classes;
        std::fprintf(out,
                     "%s head, k=5 with replay: new %.1f%% (need >= 25%%), old %.1f%% (before "
                     "%.1f%%, may drop at most 15 points; new only: %.1f%%): %s\n",
                     head.name.c_str(), 100.0 * after.new_classes, 100.0 * after.old_classes,
                     100.0 * before.old_classes, 100.0 * new_only.old_classes,
                     good ? "ok" : "FAILED");
        ok = ok && good;
    }
    // NOTE: with --defaults the validation guard rolls back the "new only" updates that forget
    // (their old-class accuracy stays at "before"), so the comparison above does not apply:
    // the run reports, it does not judge.
    if (defaults) return 0;
    return ok ? 0 : 1;
} catch (const std::exception& e) {
    std::fprintf(stderr, "enroll: %s\n", e.what());
    return 1;
}
