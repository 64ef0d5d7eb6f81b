// test_training.cpp — the training policies of personalize/detail/training.hpp on in-memory
// Datasets, without a database: the validation split, row selection for every replay policy,
// the commit/rollback decision table, and the epoch loop's contract (N epochs in one call equal
// the same epochs over several calls that carry optimizer, schedule and RNG), and the JSON of
// TrainReport (to_json / from_json, common/json.hpp); the rules of the default options (auto lr,
// class balance, the few-shot split).
#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <limits>
#include <numeric>
#include <set>
#include <tuple>
#include <variant>

#include "detail/training.hpp"
#include "json.hpp"

using namespace edgetune;
using namespace edgetune::detail;

namespace {

// n rows, ids 1..n, label i % classes, features N(0, 1) [n x width] + 2 * label (separable).
Dataset make_dataset(std::size_t n, int classes, Index width, std::uint64_t seed) {
    Rng rng(seed);
    Dataset d;
    d.features.resize(static_cast<Index>(n), width);
    for (std::size_t i = 0; i < n; ++i) {
        d.ids.push_back(static_cast<std::int64_t>(i + 1));
        d.labels.push_back(static_cast<std::int32_t>(i % static_cast<std::size_t>(classes)));
        d.weights.push_back(1.0f);
        for (Index j = 0; j < width; ++j)
            d.features(static_cast<Index>(i), j) =
                rng.normal() + 2.0f * static_cast<float>(d.labels.back() == j % classes);
    }
    d.validation.assign(n, false);
    return d;
}

bool ascending(const std::vector<std::size_t>& v) {
    return std::is_sorted(v.begin(), v.end());
}

std::size_t count_old(const Dataset& d, const std::vector<std::size_t>& rows, std::int64_t upto) {
    return static_cast<std::size_t>(
        std::count_if(rows.begin(), rows.end(), [&](std::size_t r) { return d.ids[r] <= upto; }));
}

bool same_bits(const Matrix& a, const Matrix& b) {
    return a.rows() == b.rows() && a.cols() == b.cols() &&
           std::memcmp(a.data(), b.data(), sizeof(float) * static_cast<std::size_t>(a.size())) == 0;
}

}  // namespace

TEST_CASE("mark_validation: by content, about the fraction, never a class below the minimum") {
    const HeadSpec spec = HeadSpec::linear(3);
    Dataset d = make_dataset(600, 2, 4, 1);
    // Class 2 gets min_class_for_split - 1 rows: all of them must train.
    for (std::int64_t k = 0; k < min_class_for_split - 1; ++k) {
        d.ids.push_back(1000 + k);
        d.labels.push_back(2);
        d.weights.push_back(1.0f);
        d.features.conservativeResize(d.features.rows() + 1, Eigen::NoChange);
        d.features.row(d.features.rows() - 1).setConstant(static_cast<float>(k));
    }
    mark_validation(d, spec, 7, 0.25f);
    const auto held = std::count(d.validation.begin(), d.validation.end(), true);
    CHECK(held > 100);
    CHECK(held < 200);
    for (std::size_t i = 600; i < d.ids.size(); ++i) CHECK_FALSE(d.validation[i]);
    // Other ids, same content: the same side of the split.
    Dataset renamed = d;
    for (auto& id : renamed.ids) id += 12345;
    mark_validation(renamed, spec, 7, 0.25f);
    CHECK(renamed.validation == d.validation);
    // Another seed, another split; fraction 0 holds out nothing.
    Dataset other = d;
    mark_validation(other, spec, 8, 0.25f);
    CHECK(other.validation != d.validation);
    mark_validation(other, spec, 7, 0.0f);
    CHECK(std::count(other.validation.begin(), other.validation.end(), true) == 0);
}

TEST_CASE("select_rows: validation never trains, new rows always do, replay draws the old") {
    const HeadSpec spec = HeadSpec::linear(3);
    Dataset d = make_dataset(90, 3, 4, 2);
    for (std::size_t i = 0; i < d.ids.size(); i += 10) d.validation[i] = true;  // 9 rows
    const std::int64_t upto = 60;  // ids 1..60 old, 61..90 new
    std::set<std::size_t> validation_rows, new_rows;
    for (std::size_t i = 0; i < d.ids.size(); ++i) {
        if (d.validation[i])
            validation_rows.insert(i);
        else if (d.ids[i] > upto)
            new_rows.insert(i);
    }
    const std::size_t old_total = d.ids.size() - validation_rows.size() - new_rows.size();
    auto check_common = [&](const RowSelection& s) {
        CHECK(std::set<std::size_t>(s.validation.begin(), s.validation.end()) == validation_rows);
        CHECK(ascending(s.train));
        CHECK(std::set<std::size_t>(s.train.begin(), s.train.end()).size() == s.train.size());
        for (std::size_t r : s.train) CHECK_FALSE(d.validation[r]);
        for (std::size_t r : new_rows)
            CHECK(std::find(s.train.begin(), s.train.end(), r) != s.train.end());
    };
    Rng rng(3);
    SUBCASE("all") {
        const RowSelection s = select_rows(d, spec, upto, Replay::all(), rng);
        check_common(s);
        CHECK(count_old(d, s.train, upto) == old_total);
    }
    SUBCASE("none") {
        const RowSelection s = select_rows(d, spec, upto, Replay::none(), rng);
        check_common(s);
        CHECK(count_old(d, s.train, upto) == 0);
    }
    SUBCASE("reservoir: exactly size old rows, a different draw per rng state") {
        const RowSelection s = select_rows(d, spec, upto, Replay::reservoir(7), rng);
        check_common(s);
        CHECK(count_old(d, s.train, upto) == 7);
        Rng again(3);
        CHECK(select_rows(d, spec, upto, Replay::reservoir(7), again).train == s.train);
        Rng other(4);
        CHECK(select_rows(d, spec, upto, Replay::reservoir(7), other).train != s.train);
        Rng big(3);
        CHECK(count_old(d, select_rows(d, spec, upto, Replay::reservoir(1000), big).train, upto) ==
              old_total);
    }
    SUBCASE("class_balanced: up to size old rows per class") {
        const RowSelection s = select_rows(d, spec, upto, Replay::class_balanced(4), rng);
        check_common(s);
        std::vector<int> per_class(3, 0);
        for (std::size_t r : s.train)
            if (d.ids[r] <= upto) ++per_class[static_cast<std::size_t>(d.labels[r])];
        CHECK(per_class == std::vector<int>{4, 4, 4});
    }
    SUBCASE("a retrain from base (trained_upto = 0) trains every non-validation row") {
        Rng fresh(3);
        const RowSelection s = select_rows(d, spec, 0, Replay::none(), fresh);
        CHECK(s.train.size() == d.ids.size() - validation_rows.size());
        CHECK(fresh.state() == Rng(3).state());  // nothing old: no draw
    }
}

TEST_CASE("decide_untrained: nothing to train logs, or commits the base on a retrain") {
    using Outcome = TrainReport::Outcome;
    CHECK_FALSE(decide_untrained(false, false, false, false));
    CHECK_FALSE(decide_untrained(false, false, true, true));  // epochs = 0 retrains from base
    const auto empty = decide_untrained(true, true, false, false);
    REQUIRE(empty);
    CHECK(empty->action == Action::log_only);
    CHECK(empty->outcome == Outcome::nothing_to_do);
    CHECK(empty->reason == "the store holds no samples");
    const auto zero = decide_untrained(false, false, true, false);
    REQUIRE(zero);
    CHECK(zero->reason == "epochs = 0");
    const auto rebase = decide_untrained(false, true, false, true);
    REQUIRE(rebase);
    CHECK(rebase->action == Action::commit_base_covering);
    CHECK(rebase->outcome == Outcome::committed);
    CHECK(rebase->reason.find("no training samples") == 0);
    CHECK(rebase->reason.find(": committed the base head") != std::string::npos);
}

TEST_CASE("decide: the commit/rollback table, row by row") {
    using Outcome = TrainReport::Outcome;
    const Metrics good{.loss = 0.5, .accuracy = 0.9, .balanced_accuracy = 0.9, .samples = 20};
    const Metrics bad{.loss = 0.9, .accuracy = 0.6, .balanced_accuracy = 0.6, .samples = 20};
    const Metrics nan{.loss = std::nan(""), .accuracy = 0, .balanced_accuracy = 0, .samples = 20};
    RunFacts f{.from_base = false, .classifies = true, .tolerance = 0.02f, .steps = 12};
    f.before = good;
    f.after = good;

    SUBCASE("completed: commit the trained head") {
        const Decision d = decide(f);
        CHECK(d.action == Action::commit_trained);
        CHECK(d.outcome == Outcome::committed);
        CHECK(d.reason == "completed");
        f.before.reset();
        f.after.reset();
        CHECK(decide(f).reason == "completed (no validation samples: unguarded)");
        f.stop = {LoopStop::Why::budget, "max_steps reached"};
        CHECK(decide(f).action == Action::commit_trained);
        CHECK(decide(f).reason == "max_steps reached");
    }
    SUBCASE("cancelled: incremental keeps the old head, from base commits the base") {
        f.stop = {LoopStop::Why::cancelled, ""};
        f.after.reset();
        Decision d = decide(f);
        CHECK(d.action == Action::log_only);
        CHECK(d.outcome == Outcome::cancelled);
        CHECK(d.reason == "cancelled after 12 steps; the last committed head is kept");
        f.from_base = true;
        d = decide(f);
        CHECK(d.action == Action::commit_base);
        CHECK(d.outcome == Outcome::cancelled);
    }
    SUBCASE("diverged, NaN parameters, NaN optimizer state, NaN validation loss") {
        f.after.reset();
        f.stop = {LoopStop::Why::diverged, "loss became nan at step 3 (epoch 1)"};
        CHECK_FALSE(f.healthy());
        Decision d = decide(f);
        CHECK(d.action == Action::log_only);
        CHECK(d.outcome == Outcome::rolled_back);
        CHECK(d.reason == "loss became nan at step 3 (epoch 1)");
        f.stop = {};
        f.params_finite = false;
        CHECK(decide(f).reason == "a parameter became NaN/Inf");
        f.params_finite = true;
        f.optimizer_finite = false;
        CHECK(decide(f).reason == "the optimizer state became NaN/Inf");
        f.optimizer_finite = true;
        f.after = nan;
        CHECK(decide(f).outcome == Outcome::rolled_back);
        CHECK(decide(f).reason == "validation loss is not finite");
        f.from_base = true;
        d = decide(f);
        CHECK(d.action == Action::commit_base);
        CHECK(d.outcome == Outcome::committed);
        CHECK(d.drop_after);
        CHECK(d.reason.find("validation loss is not finite; committed the base head") == 0);
    }
    SUBCASE("the guard: worse rolls back an incremental run, never a retrain from base") {
        f.after = bad;
        Decision d = decide(f);
        CHECK(d.action == Action::log_only);
        CHECK(d.outcome == Outcome::rolled_back);
        CHECK(d.reason.find("validation got worse: {\"loss\":0.5") == 0);
        f.from_base = true;
        CHECK(decide(f).action == Action::commit_trained);
        // ... unless it is a backbone upgrade guarded against the previous backbone's head.
        f.guard_from_base = true;
        CHECK(decide(f).action == Action::log_only);
        CHECK(decide(f).outcome == Outcome::rolled_back);
        f.after = good;
        CHECK(decide(f).action == Action::commit_trained);
        f.after = bad;
        f.guard_from_base = false;
        f.from_base = false;
        // Classification needs both signals: lower accuracy with a better loss is not worse.
        f.after = Metrics{.loss = 0.4, .accuracy = 0.6, .balanced_accuracy = 0.6, .samples = 20};
        CHECK(decide(f).action == Action::commit_trained);
        // Within the tolerance is not worse.
        f.after = Metrics{.loss = 0.6, .accuracy = 0.89, .balanced_accuracy = 0.89, .samples = 20};
        CHECK(decide(f).action == Action::commit_trained);
        // Regression: the loss rising by more than the tolerance fraction is worse.
        f.classifies = false;
        f.before = Metrics{.loss = 1.0, .accuracy = 0, .balanced_accuracy = 0, .samples = 20};
        f.after = Metrics{.loss = 1.01, .accuracy = 0, .balanced_accuracy = 0, .samples = 20};
        CHECK(decide(f).action == Action::commit_trained);
        f.after = Metrics{.loss = 1.03, .accuracy = 0, .balanced_accuracy = 0, .samples = 20};
        CHECK(decide(f).outcome == Outcome::rolled_back);
    }
    SUBCASE("few-shot classes: validation and their shots weigh each class the same") {
        // Six held-out classes lose 5 points to a one-shot class that goes from never predicted
        // to right: (6 * 0.85 + 1) / 7 > (6 * 0.9 + 0) / 7.
        f.before->classes = 6;
        f.after = Metrics{
            .loss = 0.6, .accuracy = 0.85, .balanced_accuracy = 0.85, .samples = 20, .classes = 6};
        f.shots_before =
            Metrics{.loss = 9.0, .accuracy = 0, .balanced_accuracy = 0, .samples = 1, .classes = 1};
        f.shots_after =
            Metrics{.loss = 0.1, .accuracy = 1, .balanced_accuracy = 1, .samples = 1, .classes = 1};
        const Decision d = decide(f);
        CHECK(d.action == Action::commit_trained);
        CHECK(d.reason.find("judged on their 1 training shots: accuracy 0.000000 -> 1.000000") !=
              std::string::npos);
        // Old classes collapsing outweigh the one new class: rolled back, and the reason says
        // what was weighed.
        f.after = Metrics{
            .loss = 3.0, .accuracy = 0.3, .balanced_accuracy = 0.3, .samples = 20, .classes = 6};
        const Decision worse = decide(f);
        CHECK(worse.outcome == Outcome::rolled_back);
        CHECK(worse.reason.find("validation got worse (with the few-shot classes' shots): ") == 0);
        // A guarded upgrade compares with the previous backbone's head: the split alone.
        f.after = Metrics{
            .loss = 0.6, .accuracy = 0.85, .balanced_accuracy = 0.85, .samples = 20, .classes = 6};
        f.from_base = true;
        f.guard_from_base = true;
        CHECK(decide(f).reason.find("validation got worse: ") == 0);
    }
}

TEST_CASE("run_epochs: N epochs in one call equal the same epochs over several calls") {
    const Index width = 6;
    const Dataset d = make_dataset(70, 3, width, 5);
    std::vector<std::size_t> rows(d.ids.size());
    std::iota(rows.begin(), rows.end(), std::size_t{0});
    struct Case {
        const char* name;
        HeadSpec spec;
        TrainOptions o;
    };
    const Case cases[] = {
        {"adam + cosine + clip",
         HeadSpec::mlp({8}, 3),
         {.batch = 16,
          .optimizer = AdamOptions{.lr = 1e-2f},
          .schedule = CosineSchedule{.total_steps = 40},
          .clip_norm = 0.5f}},
        {"sgd momentum + plateau + base pull",
         HeadSpec::linear(3),
         {.batch = 8,
          .optimizer = SgdOptions{.lr = 0.05f, .momentum = 0.9f},
          .schedule = PlateauSchedule{.factor = 0.5f, .patience = 0},
          .base_pull = 0.1f}},
    };
    for (const Case& c : cases) {
        INFO(c.name);
        auto run = [&](std::vector<int> chunks) {
            Rng init(11);
            Head head(c.spec, width, init);
            Rng base_init(12);
            const Head base(c.spec, width, base_init);
            std::vector<bool> seen(3, false);
            const LossTerms terms = prepare_loss(head, seen, d, rows, c.o, base);
            TrainLoop loop = start_loop(head, c.o, nullptr, Rng(13), rows);
            for (int n : chunks)
                CHECK(run_epochs(loop, head, d, terms, c.o, n, Clock::now(), 0).why ==
                      LoopStop::Why::none);
            return std::make_tuple(head.tensors(), loop.optimizer->state(), loop.rng.state(),
                                   loop.order, loop.loss_curve, loop.steps, loop.last_epoch,
                                   loop.optimizer->lr());
        };
        const auto one = run({6});
        for (const std::vector<int>& split : {std::vector<int>{1, 5}, {2, 2, 2}, {3, 0, 3}}) {
            const auto many = run(split);
            const auto& [t1, s1, r1, o1, c1, n1, e1, lr1] = one;
            const auto& [t2, s2, r2, o2, c2, n2, e2, lr2] = many;
            REQUIRE(t1.size() == t2.size());
            for (std::size_t k = 0; k < t1.size(); ++k)
                CHECK(same_bits(t1[k].second, t2[k].second));
            REQUIRE(s1.slots.size() == s2.slots.size());
            for (std::size_t k = 0; k < s1.slots.size(); ++k)
                for (std::size_t j = 0; j < s1.slots[k].size(); ++j)
                    CHECK(same_bits(s1.slots[k][j], s2.slots[k][j]));
            CHECK(r1 == r2);
            CHECK(o1 == o2);
            CHECK(c1 == c2);
            CHECK(n1 == n2);
            CHECK(e1 == e2);
            CHECK(lr1 == lr2);
        }
        // The training did something: 6 epochs of ceil(70 / batch) steps, a falling loss.
        const auto& [t, s, r, o, curve, steps, epochs, lr] = one;
        CHECK(epochs == 6);
        CHECK(steps == 6 * ((70 + c.o.batch - 1) / c.o.batch));
        CHECK(curve.back() < curve.front());
    }
}

TEST_CASE("run_epochs: budgets and cancellation stop between steps and say why") {
    const Dataset d = make_dataset(40, 2, 4, 6);
    std::vector<std::size_t> rows(d.ids.size());
    std::iota(rows.begin(), rows.end(), std::size_t{0});
    Rng init(1);
    Head head(HeadSpec::linear(2), 4, init);
    std::vector<bool> seen(2, false);
    TrainOptions o{.max_steps = 6, .batch = 10};
    const LossTerms terms = prepare_loss(head, seen, d, rows, o, head);
    TrainLoop loop = start_loop(head, o, nullptr, Rng(2), rows);
    LoopStop stop = run_epochs(loop, head, d, terms, o, 5, Clock::now(), 0);
    CHECK(stop.why == LoopStop::Why::budget);
    CHECK(stop.reason == "max_steps reached");
    CHECK(loop.steps == 6);
    CHECK(loop.last_epoch == 2);
    std::atomic<bool> cancel{true};
    o.stop = &cancel;
    o.max_steps = 0;
    stop = run_epochs(loop, head, d, terms, o, 1, Clock::now(), 0);
    CHECK(stop.why == LoopStop::Why::cancelled);
    CHECK(loop.steps == 6);
    // A non-finite loss stops before the update: nothing changes.
    Dataset poisoned = d;
    poisoned.features.setConstant(std::numeric_limits<float>::infinity());
    o.stop = nullptr;
    const auto before = head.tensors();
    TrainLoop wild = start_loop(head, o, nullptr, Rng(2), rows);
    stop = run_epochs(wild, head, poisoned, terms, o, 1, Clock::now(), 0);
    CHECK(stop.why == LoopStop::Why::diverged);
    CHECK(stop.reason.find("loss became") == 0);
    CHECK(stop.reason.find("at step 1 (epoch 1)") != std::string::npos);
    CHECK(wild.steps == 0);
    for (std::size_t k = 0; k < before.size(); ++k)
        CHECK(same_bits(before[k].second, head.tensors()[k].second));
}

TEST_CASE("TrainReport: from_json reads back what to_json wrote") {
    TrainReport r;
    r.outcome = TrainReport::Outcome::rolled_back;
    r.reason = "validation got worse: \"quoted\", back\\slash,\ttab";
    r.steps = 123;
    r.epochs = 7;
    r.train_samples = 90;
    r.validation_samples = 10;
    r.loss_curve = {1.5f, 0.25f, std::nanf("")};
    r.before = Metrics{.loss = 0.5, .accuracy = 0.75, .balanced_accuracy = 0.625, .samples = 10};
    r.after = Metrics{.loss = INFINITY, .accuracy = 0.5, .balanced_accuracy = 0.5, .samples = 10};
    r.duration = std::chrono::milliseconds(4321);
    r.retrained_from_base = true;
    const std::string json = r.to_json();
    const TrainReport back = TrainReport::from_json(json);
    CHECK(back.to_json() == json);
    CHECK(back.outcome == r.outcome);
    CHECK(back.reason == r.reason);
    CHECK(back.steps == 123);
    CHECK(back.epochs == 7);
    CHECK(back.train_samples == 90);
    CHECK(back.validation_samples == 10);
    REQUIRE(back.loss_curve.size() == 3);
    CHECK(back.loss_curve[1] == 0.25f);
    CHECK(std::isnan(back.loss_curve[2]));  // written as null
    REQUIRE(back.before);
    CHECK(back.before->balanced_accuracy == 0.625);
    REQUIRE(back.after);
    CHECK(std::isnan(back.after->loss));
    CHECK(back.duration.count() == 4321);
    CHECK(back.retrained_from_base);
    // No before/after: absent, not empty.
    const TrainReport plain = TrainReport::from_json(TrainReport{}.to_json());
    CHECK_FALSE(plain.before);
    CHECK_FALSE(plain.after);
    CHECK(plain.outcome == TrainReport::Outcome::nothing_to_do);
}

TEST_CASE("TrainReport: from_json refuses malformed reports, naming what is wrong") {
    TrainReport committed;
    committed.outcome = TrainReport::Outcome::committed;
    committed.reason = "completed";
    committed.steps = 3;
    const std::string good = committed.to_json();
    auto error = [](const std::string& json) {
        try {
            TrainReport::from_json(json);
        } catch (const CorruptData& e) {
            return std::string(e.what());
        }
        return std::string("(no error)");
    };
    auto replaced = [&](const std::string& from, const std::string& to) {
        std::string s = good;
        const auto at = s.find(from);
        REQUIRE(at != std::string::npos);
        return s.replace(at, from.size(), to);
    };
    CHECK(error(good) == "(no error)");
    CHECK(error("") == "[json] unexpected end at byte 0");
    CHECK(error(good.substr(0, good.size() - 1)).find("[json] expected '}'") == 0);
    CHECK(error(good + "x") == "[json] trailing characters at byte " + std::to_string(good.size()));
    CHECK(error("[1,2]") == "[TrainReport.from_json] not a JSON object");
    CHECK(error(replaced("\"steps\":3", "\"stepz\":3")) == "[TrainReport.from_json] no \"steps\"");
    CHECK(error(replaced("\"steps\":3", "\"steps\":-3")).find("\"steps\" = -3 is not an integer") !=
          std::string::npos);
    CHECK(error(replaced("\"steps\":3", "\"steps\":2.5")).find("\"steps\" = 2.5") !=
          std::string::npos);
    CHECK(error(replaced("\"steps\":3", "\"steps\":\"3\"")) ==
          "[TrainReport.from_json] \"steps\" is not a number");
    CHECK(error(replaced("committed", "comitted")) ==
          "[TrainReport.from_json] unknown \"outcome\" \"comitted\"");
    CHECK(error(replaced("\"loss_curve\":[]", "\"loss_curve\":{}")) ==
          "[TrainReport.from_json] \"loss_curve\" is not an array");
    CHECK(error(replaced("\"retrained_from_base\":false", "\"retrained_from_base\":0")) ==
          "[TrainReport.from_json] \"retrained_from_base\" is not true or false");
    CHECK(error(replaced("\"steps\":3", "\"steps\":3,\"steps\":4")).find("repeated key") !=
          std::string::npos);
    CHECK(error(replaced("completed", "bad\\q")).find("bad escape \\q") != std::string::npos);
    CHECK(error(std::string(100, '[')).find("nesting deeper than 64") != std::string::npos);
}

TEST_CASE("json: the writer's strings and numbers parse back") {
    const std::string text = std::string("a\"b\\c\nd\x01") + "e";
    const Json s = parse_json(json_string(text));
    CHECK(s.kind == Json::Kind::string);
    CHECK(s.string == text);
    CHECK(json_number(0.1234567) == "0.123457");
    CHECK(json_number(12.345, 2) == "12.35");
    CHECK(json_number(std::nan("")) == "null");
    CHECK(json_number(-INFINITY, 2) == "null");
    CHECK(parse_json("-1.5e3").number == -1500.0);
    CHECK(parse_json(" {\"a\" : [true, false, null]} ").find("a")->array.size() == 3);
}

TEST_CASE("auto_lr: the rule of TrainOptions::optimizer, and explicit lrs untouched") {
    const auto adam_lr = [](const OptimizerSpec& s) { return std::get<AdamOptions>(s).lr; };
    // The default is the sentinel, resolved per head.
    CHECK(adam_lr(TrainOptions{}.optimizer) == auto_lr);
    const OptimizerSpec automatic = TrainOptions{}.optimizer;
    CHECK(adam_lr(resolve_optimizer(automatic, HeadSpec::linear(10))) == 1e-3f);
    CHECK(adam_lr(resolve_optimizer(automatic, HeadSpec::mlp({8}, 100))) == 1e-3f);
    CHECK(adam_lr(resolve_optimizer(automatic, HeadSpec::regression(3000))) == 1e-3f);
    // Prototype heads: x clamp(3 / T, 1, 100).
    CHECK(adam_lr(resolve_optimizer(automatic, HeadSpec::prototype(10))) == doctest::Approx(3e-2f));
    CHECK(adam_lr(resolve_optimizer(automatic, HeadSpec::cosine_prototype(10, 1.0f))) ==
          doctest::Approx(3e-3f));
    CHECK(adam_lr(resolve_optimizer(automatic, HeadSpec::prototype(10, 10.0f))) == 1e-3f);
    CHECK(adam_lr(resolve_optimizer(automatic, HeadSpec::prototype(10, 1e-3f))) ==
          doctest::Approx(0.1f));
    // A classifier wider than narrow_head: Adam and AdamW become SGD with momentum 0.9.
    for (const OptimizerSpec& adam_kind :
         {automatic, OptimizerSpec(AdamWOptions{.lr = auto_lr, .weight_decay = 0.5f})}) {
        const OptimizerSpec wide = resolve_optimizer(adam_kind, HeadSpec::linear(narrow_head + 1));
        REQUIRE(std::holds_alternative<SgdOptions>(wide));
        CHECK(std::get<SgdOptions>(wide).lr == 5e-3f);
        CHECK(std::get<SgdOptions>(wide).momentum == 0.9f);
    }
    CHECK(std::holds_alternative<AdamOptions>(
        resolve_optimizer(automatic, HeadSpec::linear(narrow_head))));
    // AdamW keeps its other options; SGD keeps its momentum, its lr 1e-2 (5e-3 when wide).
    const OptimizerSpec adamw =
        resolve_optimizer(AdamWOptions{.lr = auto_lr, .weight_decay = 0.5f}, HeadSpec::linear(3));
    CHECK(std::get<AdamWOptions>(adamw).lr == 1e-3f);
    CHECK(std::get<AdamWOptions>(adamw).weight_decay == 0.5f);
    const OptimizerSpec sgd = SgdOptions{.lr = auto_lr, .momentum = 0.5f};
    CHECK(std::get<SgdOptions>(resolve_optimizer(sgd, HeadSpec::linear(3))).lr == 1e-2f);
    CHECK(std::get<SgdOptions>(resolve_optimizer(sgd, HeadSpec::linear(3))).momentum == 0.5f);
    CHECK(std::get<SgdOptions>(resolve_optimizer(sgd, HeadSpec::linear(5000))).lr == 5e-3f);
    // Explicit lrs stay as given on any head, Adam stays Adam on a wide head.
    const OptimizerSpec explicit_adam = AdamOptions{.lr = 1e-3f};
    CHECK(adam_lr(resolve_optimizer(explicit_adam, HeadSpec::linear(5000))) == 1e-3f);
    CHECK(adam_lr(resolve_optimizer(AdamOptions{.lr = 0.0f}, HeadSpec::prototype(4))) == 0.0f);
    // The default options pass validation; a negative lr that is not the sentinel does not.
    CHECK_NOTHROW(validate_train_options(TrainOptions{}));
    CHECK_THROWS_AS(validate_train_options({.optimizer = AdamOptions{.lr = -1.0f}}),
                    InvalidArgument);
    // start_loop builds the resolved optimizer: SGD for a 200-word head, at 5e-3.
    Rng init(3);
    Head wide_head(HeadSpec::linear(200), 4, init);
    const TrainLoop loop = start_loop(wide_head, TrainOptions{}, nullptr, Rng(1), {});
    CHECK(loop.optimizer->kind() == "sgd");
    CHECK(loop.optimizer->lr() == 5e-3f);
}

TEST_CASE("balance_classes unset: on for narrow classifiers, off for wide ones; set: as set") {
    CHECK_FALSE(TrainOptions{}.balance_classes.has_value());
    CHECK(balances_classes({}, HeadSpec::linear(2)));
    CHECK(balances_classes({}, HeadSpec::prototype(narrow_head)));
    CHECK_FALSE(balances_classes({}, HeadSpec::linear(narrow_head + 1)));
    CHECK_FALSE(balances_classes({}, HeadSpec::regression(2)));
    CHECK_FALSE(balances_classes({.balance_classes = false}, HeadSpec::linear(2)));
    CHECK(balances_classes({.balance_classes = true}, HeadSpec::linear(5000)));
    // prepare_loss follows the rule: weights on a narrow head by default, none when wide.
    const Dataset d = make_dataset(30, 3, 4, 9);
    std::vector<std::size_t> rows = {0, 1, 2, 3, 6, 9};  // class 0 four times
    Rng init(4);
    Head narrow(HeadSpec::linear(3), 4, init);
    const Head base(HeadSpec::linear(3), 4, init);
    std::vector<bool> seen(3, false);
    CHECK(prepare_loss(narrow, seen, d, rows, {}, base).ce.class_weights.size() == 3);
    Head wide(HeadSpec::linear(narrow_head + 1), 4, init);
    const Head wide_base(HeadSpec::linear(narrow_head + 1), 4, init);
    std::vector<bool> wide_seen(narrow_head + 1, false);
    CHECK(prepare_loss(wide, wide_seen, d, rows, {}, wide_base).ce.class_weights.empty());
}

TEST_CASE("class_is_split: a class is split at >= 5 samples and >= 2 expected held out") {
    CHECK_FALSE(class_is_split(4, 0.9f));
    CHECK(class_is_split(5, 0.4f));
    CHECK_FALSE(class_is_split(5, 0.2f));  // 20% of 5 shots: kept whole
    CHECK_FALSE(class_is_split(9, 0.2f));
    CHECK(class_is_split(10, 0.2f));
    CHECK_FALSE(class_is_split(19, 0.1f));
    CHECK(class_is_split(20, 0.1f));
    CHECK_FALSE(class_is_split(1000, 0.0f));
    // mark_validation: a 9-sample class at the default fraction keeps all of them.
    Dataset d = make_dataset(209, 2, 4, 5);                   // classes 0 and 1, 105 and 104 rows
    for (std::size_t i = 0; i < 9; ++i) d.labels[i * 2] = 2;  // 9 rows of class 2
    mark_validation(d, HeadSpec::linear(3), 7, PersonalizerOptions{}.validation_fraction);
    for (std::size_t i = 0; i < 9; ++i) CHECK_FALSE(d.validation[i * 2]);
    CHECK(std::count(d.validation.begin(), d.validation.end(), true) > 20);
}

TEST_CASE("decide: few-shot classes and the validation split are judged together") {
    using Outcome = TrainReport::Outcome;
    // Six old classes on the split lose 10 points; four new classes, judged on their shots,
    // go from 0 to 90%: the class-balanced whole gained, the update commits.
    RunFacts f{.from_base = false, .classifies = true, .tolerance = 0.02f, .steps = 12};
    f.before = Metrics{
        .loss = 0.2, .accuracy = 0.9, .balanced_accuracy = 0.9, .samples = 30, .classes = 6};
    f.after = Metrics{
        .loss = 0.5, .accuracy = 0.8, .balanced_accuracy = 0.8, .samples = 30, .classes = 6};
    f.shots_before = Metrics{
        .loss = 3.0, .accuracy = 0.0, .balanced_accuracy = 0.0, .samples = 20, .classes = 4};
    f.shots_after = Metrics{
        .loss = 0.3, .accuracy = 0.9, .balanced_accuracy = 0.9, .samples = 20, .classes = 4};
    Decision d = decide(f);
    CHECK(d.action == Action::commit_trained);
    CHECK(d.outcome == Outcome::committed);
    // The split alone would have rolled it back.
    RunFacts alone = f;
    alone.shots_before.reset();
    alone.shots_after.reset();
    CHECK(decide(alone).outcome == Outcome::rolled_back);
    // The split's classes may not lose more than 0.25 for shots fitted perfectly.
    RunFacts forgot = f;
    forgot.after = Metrics{
        .loss = 2.0, .accuracy = 0.6, .balanced_accuracy = 0.6, .samples = 30, .classes = 6};
    forgot.shots_after = Metrics{
        .loss = 0.0, .accuracy = 1.0, .balanced_accuracy = 1.0, .samples = 20, .classes = 4};
    CHECK(decide(forgot).outcome == Outcome::rolled_back);
    forgot.after->balanced_accuracy = 0.7;  // a loss of 0.2: the joint gain decides
    CHECK(decide(forgot).outcome == Outcome::committed);
    // New classes that learned nothing: the whole lost (0.54 -> 0.48), the loss rose.
    f.shots_after = f.shots_before;
    d = decide(f);
    CHECK(d.outcome == Outcome::rolled_back);
    CHECK(d.reason.find("validation got worse (with the few-shot classes' shots): "
                        "{\"loss\":1.32,\"accuracy\":0.54,\"balanced_accuracy\":0.54") == 0);
}
