// test_train_api.cpp — what an app says about a training run through TrainOptions and
// Personalizer: the optimizer state an update starts from, a restart from the base head,
// zero-step prototype enrollment (Euclidean and cosine), runs interrupted and resumed bit for
// bit (also across a reopen), and evaluate with top-k and per-class accuracy.
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <numeric>

#include "personalize.hpp"
#include "test_util.hpp"

using namespace edgetune;
using namespace edgetune_test;

namespace {

using Tensors = std::vector<std::pair<std::string, Matrix>>;
constexpr Index input_dim = 6;
const char* const resume_key = "personalize.resume";

std::shared_ptr<const Backbone> backbone() {
    Rng rng(2);
    BackboneNet net({.input = InputSpec::float_vector(input_dim), .hidden = {5}}, rng);
    return Backbone::freeze(net);
}

Sample sample(int label, std::uint64_t seed) {
    Rng rng(seed);
    Sample s{.label = label};
    for (Index j = 0; j < input_dim; ++j)
        s.input.push_back(rng.normal() + (j % 3 == label ? 2.0f : 0.0f));
    return s;
}

std::vector<Sample> samples(int per_class, std::uint64_t seed, int classes = 3) {
    std::vector<Sample> out;
    for (int i = 0; i < per_class; ++i)
        for (int c = 0; c < classes; ++c)
            out.push_back(sample(c, seed + static_cast<std::uint64_t>(i * classes + c)));
    return out;
}

std::unique_ptr<Personalizer> open_db(const std::string& path,
                                      HeadSpec head = HeadSpec::linear(3)) {
    return Personalizer::open(path, {.backbone = backbone(), .head = head, .seed = 3});
}

// The optimizer state stored with the committed head.
OptimizerState stored_optimizer(const Personalizer& p) {
    return decode_checkpoint(p.head_checkpoint()).optimizer;
}

}  // namespace

TEST_CASE("optimizer_start: continue keeps Adam's moments and step count, fresh restarts them") {
    const TrainOptions first{.epochs = 3, .batch = 4, .tolerance = 1.0f};
    auto run = [&](OptimizerSpec opt, OptimizerStart start, Tensors& head, OptimizerState& state) {
        TempDb db("optstart");
        auto p = open_db(db.path);
        p->add(samples(6, 100));
        TrainOptions o = first;
        o.optimizer = opt;
        const TrainReport r1 = p->train(o);
        REQUIRE(r1.outcome == TrainReport::Outcome::committed);
        p->add(samples(3, 500));
        o.optimizer_start = start;
        const TrainReport r2 = p->train(o);
        REQUIRE(r2.outcome == TrainReport::Outcome::committed);
        head = p->head_parameters();
        state = stored_optimizer(*p);
        return std::pair{r1.steps, r2.steps};
    };
    Tensors cont, fresh;
    OptimizerState cont_state, fresh_state;
    const auto [a1, a2] =
        run(AdamOptions{.lr = 1e-2f}, OptimizerStart::continue_stored, cont, cont_state);
    const auto [b1, b2] = run(AdamOptions{.lr = 1e-2f}, OptimizerStart::fresh, fresh, fresh_state);
    REQUIRE(a1 == b1);
    REQUIRE(a2 == b2);
    // Documented: continue counts both updates' steps in Adam's t, fresh only its own.
    CHECK(cont_state.kind == "adam");
    CHECK(cont_state.step == a1 + a2);
    CHECK(fresh_state.step == b2);
    CHECK_FALSE(same_tensor_bits(cont, fresh));
    // Plain SGD keeps no state: both choices give the same head, bit for bit.
    Tensors sgd_cont, sgd_fresh;
    OptimizerState unused;
    run(SgdOptions{.lr = 0.05f}, OptimizerStart::continue_stored, sgd_cont, unused);
    run(SgdOptions{.lr = 0.05f}, OptimizerStart::fresh, sgd_fresh, unused);
    CHECK(same_tensor_bits(sgd_cont, sgd_fresh));
}

TEST_CASE("from_base: retrains from the base head on what is stored, as one run over it all") {
    const TrainOptions o{
        .epochs = 3, .batch = 4, .optimizer = AdamOptions{.lr = 1e-2f}, .tolerance = 1.0f};
    TempDb a("frombase-a"), b("frombase-b");
    auto p = open_db(a.path);
    p->add(samples(6, 100));
    REQUIRE(p->train(o).outcome == TrainReport::Outcome::committed);
    p->add(samples(3, 500));
    REQUIRE(p->train(o).outcome == TrainReport::Outcome::committed);
    TrainOptions restart = o;
    restart.from_base = true;
    const TrainReport r = p->train(restart);
    CHECK(r.outcome == TrainReport::Outcome::committed);
    CHECK(r.retrained_from_base);
    CHECK(r.train_samples + r.validation_samples == 27);
    // The same as a store that was given everything at once and trained once.
    auto q = open_db(b.path);
    q->add(samples(6, 100));
    q->add(samples(3, 500));
    REQUIRE(q->train(o).outcome == TrainReport::Outcome::committed);
    CHECK(same_tensor_bits(p->head_parameters(), q->head_parameters()));
    CHECK(stored_optimizer(*p).step == r.steps);
}

TEST_CASE("epochs = 0 enrolls prototypes without a gradient step: Euclidean and cosine") {
    const auto bb = backbone();
    const std::vector<Sample> shots = samples(3, 40);  // < 5 per class: no validation split
    Matrix f = bb->features(std::span<const Sample>(shots));
    for (Index i = 0; i < f.rows(); ++i) f.row(i) /= f.row(i).norm();
    Matrix mu = Matrix::Zero(3, f.cols());
    for (Index i = 0; i < f.rows(); ++i)
        mu.row(shots[static_cast<std::size_t>(i)].label) += f.row(i);
    mu /= 3.0f;
    const float t = 0.5f;
    for (const bool cosine : {false, true}) {
        CAPTURE(cosine);
        TempDb db("zerostep");
        const HeadSpec spec = cosine ? HeadSpec::cosine_prototype(3, t) : HeadSpec::prototype(3, t);
        auto p = open_db(db.path, spec);
        p->add(shots);
        const TrainReport r = p->train({.epochs = 0});
        CHECK(r.outcome == TrainReport::Outcome::committed);
        CHECK(r.steps == 0);
        const Tensors head = p->head_parameters();
        const Matrix& w = head[0].second;  // [F x C]
        const Matrix& bias = head[1].second;
        for (Index c = 0; c < 3; ++c) {
            const Eigen::RowVectorXf expect_w =
                cosine ? Eigen::RowVectorXf(mu.row(c) / (mu.row(c).norm() * t))
                       : Eigen::RowVectorXf(mu.row(c) * (2.0f / t));
            const float expect_b = cosine ? 0.0f : -mu.row(c).squaredNorm() / t;
            CHECK((w.col(c).transpose() - expect_w).cwiseAbs().maxCoeff() < 1e-5f);
            CHECK(std::abs(bias(0, c) - expect_b) < 1e-5f);
        }
        // predict: softmax of cos(f, mu_c) / T (cosine) or (1 - |f - mu_c|^2) / T (Euclidean).
        const Sample probe = sample(1, 999);
        Eigen::RowVectorXf g = bb->features(std::span<const Sample>(&probe, 1)).row(0);
        g /= g.norm();
        Eigen::RowVectorXf z(3);
        for (Index c = 0; c < 3; ++c)
            z[c] = cosine ? g.dot(mu.row(c)) / (mu.row(c).norm() * t)
                          : (1.0f - (g - mu.row(c)).squaredNorm()) / t;
        const Eigen::RowVectorXf e = (z.array() - z.maxCoeff()).exp().matrix();
        for (const Prediction& pr : p->predict(probe, 3))
            CHECK(std::abs(pr.probability - e[pr.label] / e.sum()) < 1e-5f);
    }
    // A linear head has nothing to enroll: epochs = 0 is still nothing to do.
    TempDb db("zerostep-linear");
    auto p = open_db(db.path);
    p->add(shots);
    CHECK(p->train({.epochs = 0}).outcome == TrainReport::Outcome::nothing_to_do);
    // The two prototype kinds are different heads: a store of one refuses the other.
    TempDb e("zerostep-spec");
    open_db(e.path, HeadSpec::prototype(3));
    CHECK(contains(thrown<InvalidArgument>([&] { open_db(e.path, HeadSpec::cosine_prototype(3)); }),
                   "was created with head"));
    HeadSpec bad = HeadSpec::linear(3);
    bad.cosine = true;
    TempDb f2("zerostep-bad");
    CHECK(contains(thrown<InvalidArgument>([&] { open_db(f2.path, bad); }), "cosine"));
}

namespace {

// The interrupted-run protocol: a committed first update, new samples, then the run under test:
// Adam, warmup + cosine, reservoir replay, several epochs with a partial last batch.
TrainOptions resumable_options() {
    return {.epochs = 4,
            .batch = 4,
            .optimizer = AdamOptions{.lr = 2e-2f},
            .schedule = WarmupSchedule{.warmup_steps = 3,
                                       .start_factor = 0.1f,
                                       .then = CosineSchedule{.total_steps = 20, .min_lr = 1e-4f}},
            .seed = 9,
            .replay = Replay::reservoir(7),
            .tolerance = 1.0f,
            .resume_every = 3};
}

std::unique_ptr<Personalizer> prepared(const std::string& path) {
    auto p = open_db(path);
    p->add(samples(8, 100));
    TrainOptions first = resumable_options();
    first.resume_every = 0;
    REQUIRE(p->train(first).outcome == TrainReport::Outcome::committed);
    p->add(samples(3, 700));
    return p;
}

// The resumable run, cancelled after `steps` steps.
TrainReport cancelled_after(Personalizer& p, std::int64_t steps) {
    std::atomic<bool> stop{false};
    std::int64_t count = 0;
    TrainOptions o = resumable_options();
    o.stop = &stop;
    o.on_progress = [&](const Progress&) {
        if (++count == steps) stop = true;
    };
    return p.train(o);
}

}  // namespace

TEST_CASE("resume: a run cancelled at a random step ends bit-identical to an uninterrupted one") {
    TempDb ref_db("resume-ref");
    auto ref = prepared(ref_db.path);
    const TrainReport full = ref->train(resumable_options());
    REQUIRE(full.outcome == TrainReport::Outcome::committed);
    REQUIRE(full.steps > 6);
    CHECK_FALSE(full.resumed);
    CHECK(ref->store().get_meta(resume_key).value_or("") == "");  // a finished run keeps none
    Rng pick(17);
    for (int trial = 0; trial < 4; ++trial) {
        const auto cancel_at = static_cast<std::int64_t>(1 + pick.below(full.steps - 1));
        const bool reopen = trial % 2 == 1;
        CAPTURE(cancel_at);
        CAPTURE(reopen);
        TempDb db("resume");
        auto p = prepared(db.path);
        const TrainReport cut = cancelled_after(*p, cancel_at);
        REQUIRE(cut.outcome == TrainReport::Outcome::cancelled);
        CHECK(cut.steps == cancel_at);
        CHECK(p->store().get_meta(resume_key).value_or("") != "");
        if (reopen) {  // a process restart: only the database survives
            p.reset();
            p = open_db(db.path);
        }
        const TrainReport rest = p->train(resumable_options());
        CHECK(rest.resumed);
        CHECK(rest.outcome == TrainReport::Outcome::committed);
        CHECK(rest.steps == full.steps);
        CHECK(rest.loss_curve == full.loss_curve);
        CHECK(same_tensor_bits(p->head_parameters(), ref->head_parameters()));
        CHECK(stored_optimizer(*p).step == stored_optimizer(*ref).step);
        CHECK(p->store().get_meta(resume_key).value_or("") == "");
    }
}

TEST_CASE("resume: a run killed mid-way resumes from its last record after a reopen") {
    TempDb ref_db("killed-ref");
    auto ref = prepared(ref_db.path);
    REQUIRE(ref->train(resumable_options()).outcome == TrainReport::Outcome::committed);
    TempDb db("killed");
    {
        auto p = prepared(db.path);
        TrainOptions o = resumable_options();
        // Dies at step 8: the last record was written at step 6 (resume_every = 3).
        std::int64_t count = 0;
        o.on_progress = [&](const Progress&) {
            if (++count == 8) throw std::runtime_error("killed");
        };
        CHECK_THROWS_AS(p->train(o), std::runtime_error);
    }
    auto p = open_db(db.path);
    const TrainReport rest = p->train(resumable_options());
    CHECK(rest.resumed);
    CHECK(same_tensor_bits(p->head_parameters(), ref->head_parameters()));
}

TEST_CASE("resume: another sample, other options, a corrupt record or forget start afresh") {
    TempDb ref_db("afresh-ref");
    auto ref = prepared(ref_db.path);
    REQUIRE(ref->train(resumable_options()).outcome == TrainReport::Outcome::committed);
    auto cancelled_run = [](Personalizer& p) {
        REQUIRE(cancelled_after(p, 5).outcome == TrainReport::Outcome::cancelled);
        REQUIRE(p.store().get_meta(resume_key).value_or("") != "");
    };
    SUBCASE("other options") {
        TempDb db("afresh-options");
        auto p = prepared(db.path);
        cancelled_run(*p);
        TrainOptions other = resumable_options();
        other.seed = 10;
        const TrainReport r = p->train(other);
        CHECK_FALSE(r.resumed);
        CHECK(r.outcome == TrainReport::Outcome::committed);
    }
    SUBCASE("a corrupt record is ignored, the run starts over and matches the reference") {
        TempDb db("afresh-corrupt");
        auto p = prepared(db.path);
        cancelled_run(*p);
        std::string record = *p->store().get_meta(resume_key);
        record[record.size() / 2] = record[record.size() / 2] == '0' ? '1' : '0';
        p->store().set_meta(resume_key, record);
        const TrainReport r = p->train(resumable_options());
        CHECK_FALSE(r.resumed);
        CHECK(same_tensor_bits(p->head_parameters(), ref->head_parameters()));
    }
    SUBCASE("a sample added in between") {
        TempDb db("afresh-added");
        auto p = prepared(db.path);
        cancelled_run(*p);
        p->add(sample(2, 4242));
        CHECK_FALSE(p->train(resumable_options()).resumed);
    }
    SUBCASE("forget drops the record with the samples") {
        TempDb db("afresh-forget");
        auto p = prepared(db.path);
        cancelled_run(*p);
        const std::int64_t last = p->store().ids_after(0, 1000).back();
        p->forget(std::vector<std::int64_t>{last});
        CHECK(p->store().get_meta(resume_key).value_or("") == "");
    }
    CHECK(contains(thrown<InvalidArgument>([&] {
                       TempDb db("afresh-bad");
                       open_db(db.path)->train({.resume_every = -1});
                   }),
                   "resume_every"));
}

TEST_CASE("evaluate(samples, k): top-k and per-class accuracy from the head's logits") {
    TempDb db("evaluate-topk");
    const auto bb = backbone();
    Rng rng(5);
    Matrix w(bb->feature_dim(), 4), b(1, 4);
    for (Index i = 0; i < w.size(); ++i) w.data()[i] = rng.normal();
    for (Index i = 0; i < b.size(); ++i) b.data()[i] = rng.normal();
    auto p = Personalizer::open(
        db.path, {.backbone = bb,
                  .head = HeadSpec::linear(4),
                  .initial_head = HeadWeights{.tensors = {{"net.0.weight", w}, {"net.0.bias", b}},
                                              .backbone_digest = {}}});
    const std::vector<Sample> test = samples(7, 300);  // classes 0..2; class 3 absent
    const Matrix logits =
        (bb->features(std::span<const Sample>(test)) * w).rowwise() + Eigen::RowVectorXf(b.row(0));
    std::int64_t top2 = 0;
    std::vector<std::int64_t> total(4, 0), right(4, 0);
    for (std::size_t i = 0; i < test.size(); ++i) {
        const auto r = static_cast<Index>(i);
        const int y = test[i].label;
        int above = 0;
        for (Index c = 0; c < 4; ++c) above += logits(r, c) > logits(r, y);
        top2 += above < 2;
        ++total[static_cast<std::size_t>(y)];
        right[static_cast<std::size_t>(y)] += above == 0;
    }
    const Metrics m = p->evaluate(test, 2);
    CHECK(m.top_k == 2);
    CHECK(m.top_k_accuracy == doctest::Approx(static_cast<double>(top2) / 21.0));
    CHECK(m.class_samples == total);
    for (std::size_t c = 0; c < 3; ++c)
        CHECK(m.class_accuracy[c] ==
              doctest::Approx(static_cast<double>(right[c]) / static_cast<double>(total[c])));
    CHECK(std::isnan(m.class_accuracy[3]));
    const Metrics plain = p->evaluate(test);
    CHECK(m.accuracy == plain.accuracy);
    CHECK(m.loss == plain.loss);
    CHECK(plain.top_k == 0);
    CHECK(p->evaluate(test, 4).top_k_accuracy == 1.0);
    CHECK(contains(thrown<InvalidArgument>([&] { p->evaluate(test, 0); }), "k = 0"));
    TempDb r("evaluate-regression");
    auto q = Personalizer::open(r.path, {.backbone = bb, .head = HeadSpec::regression(2)});
    CHECK(contains(thrown<InvalidArgument>([&] { q->evaluate(std::vector<Sample>{}, 1); }),
                   "classification"));
}

TEST_CASE("retention: a reservoir keeps every sample until an update has trained on it") {
    TempDb db("retention-protect");
    auto p = Personalizer::open(db.path, {.backbone = backbone(),
                                          .head = HeadSpec::linear(3),
                                          .retention = Retention::reservoir(6, 1),
                                          .seed = 3});
    // Before the first update nothing is trained on: the store grows past the capacity.
    p->add(samples(3, 100));
    CHECK(p->sample_count() == 9);
    const TrainReport first = p->train({.epochs = 1, .tolerance = 1.0f});
    REQUIRE(first.outcome == TrainReport::Outcome::committed);
    CHECK(first.train_samples + first.validation_samples == 9);
    // After it, new samples push out trained ones only, never each other.
    const std::vector<std::int64_t> fresh = p->add(samples(2, 500));
    CHECK(p->sample_count() == 6);
    for (const std::int64_t id : fresh) CHECK(p->store().get(id, Fields::no_input).has_value());
    const TrainReport second = p->train({.epochs = 1, .replay = Replay::none(), .tolerance = 1.0f});
    CHECK(second.train_samples + second.validation_samples == 6);
}

TEST_CASE("a bounded update reads the new, replayed and validation rows, never the whole store") {
    // Counted through SampleStore::rows_read (every sample and feature row any store reads).
    TempDb db("access");
    auto p = Personalizer::open(db.path, {.backbone = backbone(),
                                          .head = HeadSpec::linear(3),
                                          .seed = 3,
                                          .validation_fraction = 0.05f});
    constexpr std::int64_t stored = 3000, fresh = 30, replay = 40;
    for (std::uint64_t at = 0; at < stored; at += 300) p->add(samples(100, 1000 + at));
    auto rows_read_by = [](const auto& f) {
        const std::int64_t before = SampleStore::rows_read();
        const TrainReport r = f();
        return std::pair{SampleStore::rows_read() - before, r};
    };
    const auto [all_rows, all] =
        rows_read_by([&] { return p->train({.epochs = 1, .replay = Replay::all()}); });
    CHECK(all_rows >= 2 * stored);  // every sample row and every feature row
    REQUIRE(all.validation_samples > 0);
    p->add(samples(fresh / 3, 7));
    const auto [rows, r] = rows_read_by([&] {
        return p->train({.epochs = 2, .replay = Replay::reservoir(replay), .tolerance = 1.0f});
    });
    CHECK(r.outcome == TrainReport::Outcome::committed);
    // The new samples train unless held out; the draw is `replay` older samples.
    CHECK(r.train_samples + r.validation_samples >= fresh + replay);
    CHECK(r.train_samples <= fresh + replay);
    // A sample row and a feature row for each new, replayed and validation sample.
    CHECK(rows <= 2 * (fresh + replay + r.validation_samples));
    CHECK(rows < stored / 4);
    MESSAGE(rows, " rows read for ", fresh, " new, ", replay, " replayed and ",
            r.validation_samples, " validation samples (", stored + fresh, " stored)");
    // The stored split is the one a read of everything computes.
    const auto [none_rows, none] =
        rows_read_by([&] { return p->train({.epochs = 1, .replay = Replay::none()}); });
    const auto [again_rows, again] =
        rows_read_by([&] { return p->train({.epochs = 1, .replay = Replay::all()}); });
    CHECK(none.validation_samples == again.validation_samples);
    CHECK(none.validation_samples == r.validation_samples);
    CHECK(none_rows <= 2 * none.validation_samples);
    CHECK(again_rows >= 2 * (stored + fresh));
    // epochs = 0 on a linear head trains nothing, and reads nothing either.
    p->add(samples(2, 99));
    const auto [zero_rows, zero] = rows_read_by([&] { return p->train({.epochs = 0}); });
    CHECK(zero.outcome == TrainReport::Outcome::nothing_to_do);
    CHECK(zero.reason == "epochs = 0");
    CHECK(zero_rows == 0);
}

TEST_CASE("a bounded update validates on a bounded draw of a large split") {
    TempDb db("access-large");
    auto p = Personalizer::open(db.path, {.backbone = backbone(), .head = HeadSpec::linear(3)});
    for (std::uint64_t at = 0; at < 12000; at += 3000) p->add(samples(1000, 50000 + at));
    const TrainReport all = p->train({.epochs = 1, .replay = Replay::all()});
    REQUIRE(all.validation_samples > 2000);  // 20% of 12,000
    p->add(samples(10, 11));
    const std::int64_t before = SampleStore::rows_read();
    const TrainReport r =
        p->train({.epochs = 1, .replay = Replay::reservoir(50), .tolerance = 1.0f});
    const std::int64_t rows = SampleStore::rows_read() - before;
    CHECK(r.validation_samples <= 2000 + 30);  // the draw, and the new held-out samples
    CHECK(r.validation_samples >= 2000);
    CHECK(rows <= 2 * (30 + 50 + r.validation_samples));
}
