// open_world.cpp — open-world enrollment on Fashion-MNIST: classes added at run time, and an
// honest "unknown" for the classes nobody enrolled.
//
// A database is created with classes 0-5 (HeadSpec::linear(6)) and trained on the device's
// stored samples of them. Then classes 6, 7, 8, 9 are enrolled one at a time, at run time:
// add_class(name), k shots of the class, one incremental update (reservoir replay, class-balanced
// loss, the calibrated "unknown" at the equal-error point of the held-out samples). The same
// sequence runs on a database created with 10 classes from the start (linear(10), same data,
// same seeds), and, as a reference, a 10-class head trained once on everything.
//
// While a class is not enrolled yet its test images are strangers: after each enrollment that
// leaves some (6; 6-7; 6-8 enrolled) the example measures on the test set, for enrolled images
// versus strangers, the false-accept rate on strangers (FAR), the false-reject rate on enrolled
// images (FRR) and the equal error rate of the score (EER, threshold-free), for
//   calibrated   predict()'s unknown: the cosine of the input to the head's top class prototype
//                at the threshold train() calibrated on held-out samples (score: verify())
//   softmax      a fixed threshold on the head's top probability (0.5, 0.9)
//   cosine NCM   no head: the best cosine to a class prototype (mean direction of the class's
//                stored samples), at the calibrated threshold
// A "genuine" here is an enrolled-class image whatever class the head gives it: this is the
// known-versus-stranger decision, not the 1:1 check.
//
// Data as examples/enroll: the backbone (MLP 784-256-128) trains on the first 50000 training
// images of classes 0-5 (or --backbone PATH, e.g. `train_backbone --classes 0-5`); the device's
// stored samples and shots come from the last 10000 training images (shots of class c are its
// first k images there), accuracy from the test set.
//
// Exits non-zero unless, for every k, the grown head's all-class accuracy is within 1 point of
// the head created with 10 classes. --small (CI): weaker backbone (6000 images, 2 epochs), 40
// stored samples per class, k = 1 and 5, 2000 test images.
//
// Usage: open_world [--backbone PATH] [--out-dir DIR] [--small] [--new-share S] [--epochs N]
//                   [--far F]
// --far F calibrates at a target false-accept rate F instead of the equal-error point.
#include "args.hpp"
#include "pretrain.hpp"

#include <algorithm>
#include <cmath>
#include <filesystem>

using namespace pretrain;

namespace {

constexpr std::int32_t old_classes = 6;  // 0-5 exist when the database is created

struct Setup {
    int stored_per_class = 100;  // old-class samples already on the device
    std::int64_t replay = 200;   // reservoir of the enrollment updates
    std::vector<int> shots = {1, 5, 20};
    int base_epochs = 10;
    int enroll_epochs = 30;
    std::int64_t batch = 32;
    float lr = 1e-3f;
    float validation = 0.2f;  // held out per class (classes with >= 5 samples): calibration
    edgetune::Unknown unknown = edgetune::Unknown::at_equal_error();
    float new_share = edgetune::TrainOptions{}.new_share;
};

// What every run reads: the device's samples and the test set with its features.
struct Data {
    std::shared_ptr<const edgetune::Backbone> backbone;
    std::vector<edgetune::Sample> stored;               // classes 0-5, stored_per_class each
    fmnist::Dataset device;                             // the last 10000 training images
    std::vector<std::vector<std::size_t>> device_rows;  // per class, file order
    std::vector<edgetune::Sample> test;
    Matrix test_features;  // [test x F]
};

// The k shots of class c: its first k device images.
std::vector<edgetune::Sample> shots_of(const Data& data, std::int32_t c, int k) {
    const auto& rows = data.device_rows[static_cast<std::size_t>(c)];
    return to_samples(
        fmnist::select_rows(data.device, std::vector<std::size_t>(rows.begin(), rows.begin() + k)));
}

std::vector<edgetune::Sample> test_below(const Data& data, std::int32_t classes) {
    std::vector<edgetune::Sample> out;
    for (const auto& s : data.test)
        if (s.label < classes) out.push_back(s);
    return out;
}

// One rejection rule on the test set: strangers accepted, enrolled images rejected, and the
// EER of its score.
struct OpenSet {
    std::string rule;
    double far = 0.0, frr = 0.0, eer = 0.0;
};

// Equal error rate of scores (accept: score >= t): genuine vs impostor, at the threshold where
// the two error rates are closest.
double equal_error_rate(std::vector<float> genuine, std::vector<float> impostor) {
    std::sort(genuine.begin(), genuine.end());
    std::sort(impostor.begin(), impostor.end());
    auto above = [](const std::vector<float>& v, float t) {
        return static_cast<double>(v.end() - std::lower_bound(v.begin(), v.end(), t)) /
               static_cast<double>(v.size());
    };
    double best_gap = 2.0, eer = 1.0;
    for (const auto* v : {&genuine, &impostor})
        for (float t : *v) {
            const double far = above(impostor, t), frr = 1.0 - above(genuine, t);
            if (std::abs(far - frr) < best_gap) {
                best_gap = std::abs(far - frr);
                eer = 0.5 * (far + frr);
            }
        }
    return eer;
}

// FAR/FRR of `score >= t` and the EER of the score; `enrolled[i]`: test image i is not a
// stranger.
OpenSet rule_of(std::string name, const std::vector<float>& score,
                const std::vector<bool>& enrolled, float t) {
    std::vector<float> genuine, impostor;
    for (std::size_t i = 0; i < score.size(); ++i)
        (enrolled[i] ? genuine : impostor).push_back(score[i]);
    auto rate = [t](const std::vector<float>& v, bool accepted) {
        return static_cast<double>(std::count_if(v.begin(), v.end(),
                                                 [&](float s) { return (s >= t) == accepted; })) /
               static_cast<double>(v.size());
    };
    return {std::move(name), rate(impostor, true), rate(genuine, false),
            equal_error_rate(genuine, impostor)};
}

Matrix unit_rows(Matrix m) {
    for (Index i = 0; i < m.rows(); ++i)
        if (const float n = m.row(i).norm(); n > 0.0f) m.row(i) /= n;
    return m;
}

// The open-set rules on the whole test set for a head that knows classes 0 .. n-1, trained on
// `known` (its stored samples). The calibrated rule is predict()'s own answer.
std::vector<OpenSet> open_set(const edgetune::Personalizer& p, const Data& data,
                              const std::vector<edgetune::Sample>& known, std::int32_t n,
                              const edgetune::Calibration& cal) {
    const std::size_t count = data.test.size();
    std::vector<bool> enrolled(count);
    std::vector<float> calibrated(count), softmax(count), ncm(count);
    // The head's logits [test x n] (linear: features * W + b), for its top class.
    const auto params = p.head_parameters();
    const Matrix logits = (data.test_features * params[0].second).rowwise() +
                          Eigen::RowVectorXf(params[1].second.row(0));
    // Cosine prototypes of the known classes [n x F].
    const Matrix known_features = unit_rows(data.backbone->features(known));
    Matrix protos = Matrix::Zero(n, known_features.cols());
    for (std::size_t i = 0; i < known.size(); ++i)
        protos.row(known[i].label) += known_features.row(static_cast<Index>(i));
    const Matrix cosines = unit_rows(data.test_features) * unit_rows(protos).transpose();
    std::int64_t disagree = 0;
    for (std::size_t i = 0; i < count; ++i) {
        const auto r = static_cast<Index>(i);
        enrolled[i] = data.test[i].label < n;
        const edgetune::Prediction top = p.predict(data.test[i], 1)[0];
        Index best = 0;
        logits.row(r).maxCoeff(&best);
        const edgetune::Verification v = p.verify(data.test[i], static_cast<std::int32_t>(best));
        calibrated[i] = v.score;
        disagree += top.unknown != !v.accept;
        softmax[i] = top.probability;
        ncm[i] = cosines.row(r).maxCoeff();
    }
    if (disagree > 0)
        std::printf("  (%ld of %zu images: predict's unknown and verify of the top class differ)\n",
                    static_cast<long>(disagree), count);
    const auto t = static_cast<float>(cal.threshold);
    char name[64];
    std::snprintf(name, sizeof name, "calibrated, cos >= %.3f", static_cast<double>(t));
    std::vector<OpenSet> out{rule_of(name, calibrated, enrolled, t)};
    for (float fixed : {0.5f, 0.9f}) {
        std::snprintf(name, sizeof name, "softmax p >= %.1f", static_cast<double>(fixed));
        out.push_back(rule_of(name, softmax, enrolled, fixed));
    }
    std::snprintf(name, sizeof name, "cosine NCM, cos >= %.3f", static_cast<double>(t));
    out.push_back(rule_of(name, ncm, enrolled, t));
    return out;
}

// After each enrollment: test accuracy on the enrolled classes and on the class just enrolled.
struct Stage {
    std::int32_t classes = 0;
    double enrolled_accuracy = 0.0, new_accuracy = 0.0;
    bool rolled_back = false;
    std::optional<edgetune::Calibration> calibration{};
    std::string calibration_note{};
    std::vector<OpenSet> open{};  // grown head, strangers left only
};

struct Sequence {
    std::string head;
    std::vector<Stage> stages;
};

edgetune::TrainOptions base_options(const Setup& s) {
    return {.epochs = s.base_epochs,
            .batch = s.batch,
            .optimizer = edgetune::AdamOptions{.lr = s.lr},
            .seed = 1,
            .unknown = s.unknown};
}

edgetune::TrainOptions enroll_options(const Setup& s, std::int32_t c) {
    edgetune::TrainOptions o = base_options(s);
    o.epochs = s.enroll_epochs;
    o.replay = edgetune::Replay::reservoir(s.replay);
    o.balance_classes = true;
    o.new_share = s.new_share;
    o.seed = static_cast<std::uint64_t>(100 + c);
    return o;
}

// Classes 0-5 stored and trained, then 6-9 enrolled one update at a time. grown: the database
// starts with 6 classes and add_class makes each new one; else it has 10 from the start.
Sequence enroll_sequence(const Setup& setup, const Data& data, int k, bool grown,
                         const std::string& db) {
    remove_db(db);
    auto p = edgetune::Personalizer::open(
        db, {.backbone = data.backbone,
             .head = edgetune::HeadSpec::linear(grown ? old_classes : fmnist::num_classes),
             .seed = 7,
             .validation_fraction = setup.validation});
    p->add(data.stored);
    if (p->train(base_options(setup)).outcome != edgetune::TrainReport::Outcome::committed)
        throw edgetune::Error("the base training on classes 0-5 did not commit");
    Sequence seq{grown ? "grown 6 -> 10" : "10 from the start", {}};
    std::vector<edgetune::Sample> known = data.stored;
    for (std::int32_t c = old_classes; c < fmnist::num_classes; ++c) {
        if (grown && p->add_class(fmnist::class_names[static_cast<std::size_t>(c)]) != c)
            throw edgetune::Error("add_class gave another label than " + std::to_string(c));
        const auto shots = shots_of(data, c, k);
        p->add(shots);
        known.insert(known.end(), shots.begin(), shots.end());
        const edgetune::TrainReport report = p->train(enroll_options(setup, c));
        Stage st{.classes = c + 1,
                 .rolled_back = report.outcome == edgetune::TrainReport::Outcome::rolled_back,
                 .calibration = report.calibration,
                 .calibration_note = report.calibration_note};
        const auto test_known = test_below(data, c + 1);
        st.enrolled_accuracy = p->evaluate(test_known).accuracy;
        std::vector<edgetune::Sample> test_new;
        for (const auto& s : test_known)
            if (s.label == c) test_new.push_back(s);
        st.new_accuracy = p->evaluate(test_new).accuracy;
        // A committed head keeps the last calibration; a rolled-back update leaves the head
        // (and its threshold) of the previous stage, which knows one class less.
        if (grown && c + 1 < fmnist::num_classes && report.calibration && !st.rolled_back)
            st.open = open_set(*p, data, known, c + 1, *report.calibration);
        seq.stages.push_back(std::move(st));
    }
    p.reset();
    remove_db(db);
    return seq;
}

// The reference: a 10-class head trained once on the stored samples and all the shots.
double trained_at_once(const Setup& setup, const Data& data, int k, const std::string& db) {
    remove_db(db);
    auto p = edgetune::Personalizer::open(db, {.backbone = data.backbone,
                                               .head = edgetune::HeadSpec::linear(10),
                                               .seed = 7,
                                               .validation_fraction = setup.validation});
    p->add(data.stored);
    for (std::int32_t c = old_classes; c < fmnist::num_classes; ++c) p->add(shots_of(data, c, k));
    edgetune::TrainOptions o = base_options(setup);
    o.balance_classes = true;
    p->train(o);
    const double accuracy = p->evaluate(data.test).accuracy;
    p.reset();
    remove_db(db);
    return accuracy;
}

Data load_data(const Setup& setup, const std::string& backbone_path, bool small) {
    Data data;
    const fmnist::Dataset train = fmnist::load(fmnist::Split::train);
    const fmnist::Dataset test = fmnist::load(fmnist::Split::test, {.limit = small ? 2000 : 0});
    if (!backbone_path.empty()) {
        data.backbone = edgetune::Backbone::load(backbone_path);
        std::printf("backbone: %s (digest %s)\n", backbone_path.c_str(),
                    data.backbone->digest().c_str());
    } else {
        std::vector<std::size_t> rows(static_cast<std::size_t>(small ? 6000 : backbone_images));
        for (std::size_t i = 0; i < rows.size(); ++i) rows[i] = i;
        BackboneTraining opts{
            .classes = {0, 1, 2, 3, 4, 5}, .epochs = small ? 2 : 5, .verbose = false};
        std::printf("pretraining the backbone on classes 0-5 (%zu images, %d epochs)\n",
                    rows.size(), opts.epochs);
        data.backbone =
            train_fashion_backbone(fmnist::select_rows(train, rows), test, opts).backbone;
    }
    std::vector<std::size_t> device_rows;
    for (std::size_t i = static_cast<std::size_t>(backbone_images); i < train.size(); ++i)
        device_rows.push_back(i);
    data.device = fmnist::select_rows(train, device_rows);
    data.device_rows = rows_per_class(data.device);
    for (std::int32_t c = 0; c < old_classes; ++c) {
        const auto& rows = data.device_rows[static_cast<std::size_t>(c)];
        // The stored samples come after the first 20 of each class (the largest shot count).
        const auto from = rows.begin() + 20;
        const auto stored = to_samples(fmnist::select_rows(
            data.device, std::vector<std::size_t>(from, from + setup.stored_per_class)));
        data.stored.insert(data.stored.end(), stored.begin(), stored.end());
    }
    data.test = to_samples(test);
    data.test_features = data.backbone->features(test.images);
    return data;
}

void print_accuracy(const std::vector<Sequence>& seqs, int k, double at_once) {
    std::printf("\nk = %d shots: test accuracy (%%) on the enrolled classes after each update\n",
                k);
    std::printf("%-20s %8s %8s %8s %8s %8s  %s\n", "head", "0-6", "0-7", "0-8", "0-9 (all)",
                "new 6-9", "rolled back");
    for (const Sequence& s : seqs) {
        std::printf("%-20s", s.head.c_str());
        double new_sum = 0.0;
        int rolled = 0;
        for (const Stage& st : s.stages) {
            std::printf(" %8.1f", 100.0 * st.enrolled_accuracy);
            new_sum += st.new_accuracy;
            rolled += st.rolled_back;
        }
        std::printf(" %8.1f  %d of %zu\n", 100.0 * new_sum / static_cast<double>(s.stages.size()),
                    rolled, s.stages.size());
    }
    std::printf("%-20s %8s %8s %8s %8.1f   (one training on everything)\n", "10 at once", "", "",
                "", 100.0 * at_once);
}

void print_open_set(const Sequence& grown, int k) {
    std::printf("k = %d, strangers = the classes not enrolled yet (test images):\n", k);
    std::printf("  %-9s %-26s %8s %8s %8s   %s\n", "enrolled", "rule", "FAR %", "FRR %", "EER %",
                "held-out calibration (FAR / FRR / EER %)");
    for (const Stage& st : grown.stages) {
        if (st.classes >= fmnist::num_classes) continue;
        const std::string enrolled = "0-" + std::to_string(st.classes - 1);
        if (st.open.empty()) {
            std::printf(
                "  %-9s no table: %s\n", enrolled.c_str(),
                st.rolled_back ? "the update was rolled back" : st.calibration_note.c_str());
            continue;
        }
        for (std::size_t i = 0; i < st.open.size(); ++i) {
            const OpenSet& o = st.open[i];
            std::printf("  %-9s %-26s %8.1f %8.1f %8.1f", i == 0 ? enrolled.c_str() : "",
                        o.rule.c_str(), 100.0 * o.far, 100.0 * o.frr, 100.0 * o.eer);
            if (i == 0)
                std::printf("   %.1f / %.1f / %.1f (%ld genuine, %ld impostor)",
                            100.0 * st.calibration->far, 100.0 * st.calibration->frr,
                            100.0 * st.calibration->eer, static_cast<long>(st.calibration->genuine),
                            static_cast<long>(st.calibration->impostor));
            std::printf("\n");
        }
    }
}

}  // namespace

int main(int argc, char** argv) try {
    std::string backbone_path, out_dir = ".";
    bool small = false;
    Setup setup;
    for (examples::Args a(argc, argv); a.next();) {
        if (a.is("--small")) {
            small = true;
        } else if (a.is("--backbone")) {
            backbone_path = a.text();
        } else if (a.is("--out-dir")) {
            out_dir = a.text();
        } else if (a.is("--new-share")) {
            setup.new_share = a.real();
        } else if (a.is("--epochs")) {
            setup.enroll_epochs = a.integer();
        } else if (a.is("--far")) {
            setup.unknown = edgetune::Unknown::at_far(a.real());
        } else {
            std::fprintf(stderr,
                         "usage: open_world [--backbone PATH] [--out-dir DIR] [--small] "
                         "[--new-share S] [--epochs N] [--far F]\n");
            return 2;
        }
    }
    if (small) {
        setup.stored_per_class = 40;
        setup.replay = 80;
        setup.shots = {1, 5};
    }
    std::filesystem::create_directories(out_dir);
    const auto start = Clock::now();
    const Data data = load_data(setup, backbone_path, small);
    std::printf(
        "device: %zu stored samples of classes 0-5; %zu test images; enrollment updates: "
        "reservoir %ld, Adam lr %g, %d epochs, class-balanced loss, new_share %g; unknown "
        "calibrated %s\n",
        data.stored.size(), data.test.size(), static_cast<long>(setup.replay),
        static_cast<double>(setup.lr), setup.enroll_epochs, static_cast<double>(setup.new_share),
        setup.unknown.kind == edgetune::Unknown::Kind::equal_error
            ? "at the equal-error point"
            : ("at FAR " + std::to_string(setup.unknown.far)).c_str());

    bool ok = true;
    const std::string db = out_dir + "/open_world.db";
    for (int k : setup.shots) {
        const std::vector<Sequence> seqs = {enroll_sequence(setup, data, k, true, db),
                                            enroll_sequence(setup, data, k, false, db)};
        print_accuracy(seqs, k, trained_at_once(setup, data, k, db));
        print_open_set(seqs[0], k);
        const double grown = seqs[0].stages.back().enrolled_accuracy;
        const double fixed = seqs[1].stages.back().enrolled_accuracy;
        const bool good = std::abs(grown - fixed) <= 0.01;
        std::printf(
            "k = %d: all-class accuracy grown %.1f%%, 10 from the start %.1f%% (must be "
            "within 1 point): %s\n",
            k, 100.0 * grown, 100.0 * fixed, good ? "ok" : "FAILED");
        ok = ok && good;
    }
    std::printf("total time %.1f s\n", seconds_since(start));
    return ok ? 0 : 1;
} catch (const std::exception& e) {
    std::fprintf(stderr, "open_world: %s\n", e.what());
    return 1;
}
