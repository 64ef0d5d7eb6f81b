// test_initial_head.cpp — starting a Personalizer from a head the app ships
// (PersonalizerOptions::initial_head, HeadWeights): the given weights are the base head exactly,
// survive reopening and exact unlearning, are checked at the door, follow the documented layout
// for every head kind, and an imported ONNX classifier (tests/fixtures/lenet-head.etk) gives
// PyTorch's logits through predict().
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "personalize.hpp"
#include "test_util.hpp"

using namespace edgetune;
using namespace edgetune_test;

namespace {

using Tensors = std::vector<std::pair<std::string, Matrix>>;

std::shared_ptr<const Backbone> backbone(Index d = 6, Index f = 5) {
    Rng rng(2);
    BackboneNet net({.input = InputSpec::float_vector(d), .hidden = {f}}, rng);
    return Backbone::freeze(net);
}

Matrix random_matrix(Index r, Index c, std::uint64_t seed) {
    Rng rng(seed);
    Matrix m(r, c);
    for (Index i = 0; i < m.size(); ++i) m.data()[i] = rng.normal();
    return m;
}

HeadWeights linear_weights(Index f, Index classes) {
    return {.tensors = {{"net.0.weight", random_matrix(f, classes, 11)},
                        {"net.0.bias", random_matrix(1, classes, 12)}},
            .backbone_digest = {}};
}

Sample sample(int label, std::uint64_t seed, Index d = 6) {
    Rng rng(seed);
    Sample s{.label = label};
    for (Index j = 0; j < d; ++j) s.input.push_back(rng.normal() + (j % 3 == label ? 2.0f : 0.0f));
    return s;
}

// softmax of one row, in double.
std::vector<double> softmax(const Eigen::RowVectorXf& z) {
    const double mx = z.maxCoeff();
    std::vector<double> p(static_cast<std::size_t>(z.size()));
    double total = 0;
    for (Index c = 0; c < z.size(); ++c)
        total += p[static_cast<std::size_t>(c)] = std::exp(z[c] - mx);
    for (double& v : p) v /= total;
    return p;
}

}  // namespace

TEST_CASE("initial head: the given weights are the base head, bit for bit, and predict uses them") {
    TempDb db("initial-head");
    const auto bb = backbone();
    const HeadWeights w = linear_weights(bb->feature_dim(), 3);
    auto p = Personalizer::open(
        db.path, {.backbone = bb, .head = HeadSpec::linear(3), .seed = 1, .initial_head = w});
    CHECK(same_tensor_bits(p->head_parameters(), w.tensors));
    // Step 0: predict's probabilities are softmax(features * W + b).
    const Sample s = sample(1, 5);
    const Matrix f = bb->features(std::span<const Sample>(&s, 1));
    const Eigen::RowVectorXf logits =
        f.row(0) * w.tensors[0].second + Eigen::RowVectorXf(w.tensors[1].second.row(0));
    const std::vector<double> want = softmax(logits);
    for (const Prediction& pr : p->predict(s, 3))
        CHECK(pr.probability ==
              doctest::Approx(want[static_cast<std::size_t>(pr.label)]).epsilon(1e-5));

    // Reopened without the option, the database keeps it as its base.
    p.reset();
    p = Personalizer::open(db.path, {.backbone = bb, .head = HeadSpec::linear(3), .seed = 1});
    CHECK(same_tensor_bits(p->head_parameters(), w.tensors));

    // Train, then forget everything: exact unlearning returns to the shipped head, not a random
    // one.
    std::vector<Sample> samples;
    for (int i = 0; i < 30; ++i) samples.push_back(sample(i % 3, 100 + i));
    const std::vector<std::int64_t> ids = p->add(samples);
    REQUIRE(p->train({.epochs = 3, .seed = 2}).outcome == TrainReport::Outcome::committed);
    CHECK_FALSE(same_tensor_bits(p->head_parameters(), w.tensors));
    p->forget(ids, {.epochs = 3, .seed = 2});
    CHECK(same_tensor_bits(p->head_parameters(), w.tensors));
}

TEST_CASE("initial head: a head that does not fit is refused at the door, and no file is made") {
    const auto bb = backbone();
    auto refused = [&](HeadSpec spec, const HeadWeights& w) {
        TempDb db("initial-head-bad");
        const std::string message = thrown<InvalidArgument>([&] {
            Personalizer::open(db.path,
                               {.backbone = bb, .head = spec, .seed = 1, .initial_head = w});
        });
        CHECK_FALSE(std::filesystem::exists(db.path));
        return message;
    };
    HeadWeights wide = linear_weights(bb->feature_dim() + 1, 3);
    std::string m = refused(HeadSpec::linear(3), wide);
    CHECK(contains(m, "[Personalizer.open] initial_head does not fit"));
    CHECK(contains(m, "net.0.weight"));
    CHECK(contains(m, "[6 x 3]"));  // what was given
    CHECK(contains(m, "[5 x 3]"));  // what the head needs

    m = refused(HeadSpec::linear(4), linear_weights(bb->feature_dim(), 3));
    CHECK(contains(m, "[5 x 4]"));

    HeadWeights renamed = linear_weights(bb->feature_dim(), 3);
    renamed.tensors[1].first = "bias";
    CHECK(contains(refused(HeadSpec::linear(3), renamed), "'bias'"));

    HeadWeights nan = linear_weights(bb->feature_dim(), 3);
    nan.tensors[0].second(2, 1) = std::nanf("");
    CHECK(contains(refused(HeadSpec::linear(3), nan), "'net.0.weight' holds NaN or Inf"));

    HeadWeights other = linear_weights(bb->feature_dim(), 3);
    other.backbone_digest = "0123456789abcdef";
    m = refused(HeadSpec::linear(3), other);
    CHECK(contains(m, "trained on backbone 0123456789abcdef, not on " + bb->digest()));
}

TEST_CASE("initial head: the documented layout holds for mlp heads") {
    TempDb db("initial-head-mlp");
    const auto bb = backbone();
    const HeadWeights w{.tensors = {{"net.0.weight", random_matrix(5, 8, 1)},
                                    {"net.0.bias", random_matrix(1, 8, 2)},
                                    {"net.2.weight", random_matrix(8, 3, 3)},
                                    {"net.2.bias", random_matrix(1, 3, 4)}},
                        .backbone_digest = bb->digest()};
    auto p = Personalizer::open(
        db.path, {.backbone = bb, .head = HeadSpec::mlp({8}, 3), .seed = 1, .initial_head = w});
    CHECK(same_tensor_bits(p->head_parameters(), w.tensors));
}

TEST_CASE("initial head: a prototype head keeps its shipped classes and enrolls the zero ones") {
    TempDb db("initial-head-proto");
    const auto bb = backbone();
    HeadWeights w = linear_weights(bb->feature_dim(), 3);
    w.tensors[0].second.col(2).setZero();  // class 2: room for a class the user enrolls
    auto p = Personalizer::open(db.path, {.backbone = bb,
                                          .head = HeadSpec::prototype(3, 0.5f),
                                          .seed = 1,
                                          .validation_fraction = 0.0f,
                                          .initial_head = w});
    std::vector<Sample> shots;
    for (int i = 0; i < 4; ++i) shots.push_back(sample(2, 300 + i));
    p->add(shots);
    // lr 0: only the prototype initialization changes the head.
    REQUIRE(p->train({.epochs = 1, .optimizer = SgdOptions{.lr = 0.0f}, .seed = 1}).outcome ==
            TrainReport::Outcome::committed);
    const Tensors after = p->head_parameters();
    const Matrix& wa = after[0].second;
    CHECK(wa.leftCols(2) == w.tensors[0].second.leftCols(2));  // shipped classes untouched
    // Class 2 got its prototype: W_2 = 2 mu / T, b_2 = -|mu|^2 / T, mu the mean normalized shot.
    Matrix f = bb->features(std::span<const Sample>(shots));
    f.rowwise().normalize();
    const Eigen::RowVectorXf mu = f.colwise().mean();
    for (Index j = 0; j < mu.size(); ++j)
        CHECK(wa(j, 2) == doctest::Approx(2.0f * mu[j] / 0.5f).epsilon(1e-5));
    CHECK(after[1].second(0, 2) == doctest::Approx(-mu.squaredNorm() / 0.5f).epsilon(1e-5));
}

TEST_CASE("initial head: the imported LeNet's shipped classifier gives PyTorch's logits") {
    const auto bb = Backbone::load(fixture_path("lenet.etb"));
    const HeadWeights w = HeadWeights::load(fixture_path("lenet-head.etk"));
    CHECK(w.backbone_digest == bb->digest());
    REQUIRE(w.tensors.size() == 2);
    const auto classes = w.tensors[0].second.cols();
    // lenet.txt: "<node> <n> <input width> <feature width>", inputs, features, then the logits.
    std::ifstream in(fixture_path("lenet.txt"));
    REQUIRE(in.good());
    std::string node;
    Index n = 0, d = 0, f = 0;
    in >> node >> n >> d >> f;
    Matrix inputs(n, d), features(n, f), logits(n, classes);
    for (Index i = 0; i < inputs.size(); ++i) in >> inputs.data()[i];
    for (Index i = 0; i < features.size(); ++i) in >> features.data()[i];
    for (Index i = 0; i < logits.size(); ++i) in >> logits.data()[i];
    REQUIRE(!in.fail());

    TempDb db("initial-head-lenet");
    auto p = Personalizer::open(
        db.path, {.backbone = bb, .head = HeadSpec::linear(classes), .initial_head = w});
    for (Index i = 0; i < n; ++i) {
        Sample s;
        s.input.assign(inputs.row(i).data(), inputs.row(i).data() + d);
        const std::vector<double> want = softmax(logits.row(i));
        const auto top = p->predict(s, static_cast<int>(classes));
        for (const Prediction& pr : top)
            CHECK(pr.probability ==
                  doctest::Approx(want[static_cast<std::size_t>(pr.label)]).epsilon(1e-4));
        Index best = 0;
        logits.row(i).maxCoeff(&best);
        CHECK(top.front().label == best);
    }
    CHECK(contains(thrown<CorruptData>([&] { HeadWeights::load(fixture_path("lenet.etb")); }),
                   "not a head"));
}
