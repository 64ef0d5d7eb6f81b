// test_ops.cpp — every autograd op: its gradient against finite differences, and its value.
//
// Each op has one gradient test through gradcheck() (random projection, central differences
// in double, inputs kept away from kinks); gradcheck() also verifies that backward ADDS into
// existing gradients, that a graph can be backpropagated twice, that constant inputs get no
// gradient and that the op computes the same value under NoGrad. Value tests pin a few ops to
// hand-computed results or to PyTorch 1.13 (float64) outputs, including extreme logits.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <vector>

#include "autograd.hpp"
#include "gradcheck.hpp"

using namespace edgetune;

namespace {

Matrix randn(Index rows, Index cols, std::uint64_t seed, float stddev = 1.0f) {
    Rng rng(seed);
    Matrix m(rows, cols);
    for (Index i = 0; i < m.size(); ++i) m.data()[i] = stddev * rng.normal();
    return m;
}

Matrix uniform(Index rows, Index cols, std::uint64_t seed, float lo, float hi) {
    Rng rng(seed);
    Matrix m(rows, cols);
    for (Index i = 0; i < m.size(); ++i) m.data()[i] = rng.uniform(lo, hi);
    return m;
}

// A row-major matrix from a literal list of values.
Matrix mat(Index rows, Index cols, std::initializer_list<float> values) {
    REQUIRE(static_cast<Index>(values.size()) == rows * cols);
    Matrix m(rows, cols);
    Index i = 0;
    for (float v : values) m.data()[i++] = v;
    return m;
}

// |a - b| <= tol * max(1, |b|) for every element (isApprox is a norm over the whole matrix).
bool elementwise_close(const Matrix& a, const Matrix& b, float tol = 1e-6f) {
    if (a.rows() != b.rows() || a.cols() != b.cols()) return false;
    const Matrix bound = tol * b.cwiseAbs().cwiseMax(1.0f);
    const Matrix diff = (a - b).cwiseAbs();
    if ((diff.array() <= bound.array()).all()) return true;
    MESSAGE("got\n" << a << "\nwant\n" << b);
    return false;
}

Var param(Index rows, Index cols, std::uint64_t seed, float stddev = 1.0f) {
    return Var::parameter(randn(rows, cols, seed, stddev));
}

Var constant(Index rows, Index cols, std::uint64_t seed, float stddev = 1.0f) {
    return Var(randn(rows, cols, seed, stddev));
}

using Inputs = std::vector<Var>;

// Shorthand for options with one domain per input.
GradCheckOptions domains(std::vector<InputDomain> per_input) {
    GradCheckOptions opts;
    opts.domains = std::move(per_input);
    return opts;
}

constexpr InputDomain kAny = InputDomain::any;
constexpr InputDomain kAwayFromZero = InputDomain::away_from_zero;
constexpr InputDomain kPositive = InputDomain::positive;

}  // namespace

// ---- elementwise arithmetic ------------------------------------------------------------

TEST_CASE("add: gradient matches finite differences and accumulates") {
    const auto r = gradcheck([](const Inputs& v) { return add(v[0], v[1]); },
                             {param(3, 4, 1), param(3, 4, 2)});
    CHECK_MESSAGE(r.ok, r.message);
}

TEST_CASE("add: a constant operand receives no gradient") {
    const auto r = gradcheck([](const Inputs& v) { return add(v[0], v[1]); },
                             {param(3, 4, 1), constant(3, 4, 2)});
    CHECK_MESSAGE(r.ok, r.message);
}

TEST_CASE("sub: gradient matches finite differences and accumulates") {
    const auto r = gradcheck([](const Inputs& v) { return sub(v[0], v[1]); },
                             {param(3, 4, 3), param(3, 4, 4)});
    CHECK_MESSAGE(r.ok, r.message);
}

TEST_CASE("mul: gradient matches finite differences and accumulates") {
    const auto r = gradcheck([](const Inputs& v) { return mul(v[0], v[1]); },
                             {param(3, 4, 5), param(3, 4, 6)});
    CHECK_MESSAGE(r.ok, r.message);
}

TEST_CASE("mul: the same Var on both sides gives 2x (fan-in is summed)") {
    const auto r = gradcheck([](const Inputs& v) { return mul(v[0], v[0]); }, {param(2, 5, 7)});
    CHECK_MESSAGE(r.ok, r.message);
}

TEST_CASE("div: gradient matches finite differences for a positive denominator") {
    const auto r = gradcheck([](const Inputs& v) { return div(v[0], v[1]); },
                             {param(3, 4, 8), param(3, 4, 9)}, domains({kAny, kPositive}));
    CHECK_MESSAGE(r.ok, r.message);
}

TEST_CASE("div: gradient matches finite differences for a negative denominator") {
    const auto r = gradcheck([](const Inputs& v) { return div(v[0], neg(v[1])); },
                             {param(3, 4, 10), param(3, 4, 11)}, domains({kAny, kPositive}));
    CHECK_MESSAGE(r.ok, r.message);
}

TEST_CASE("neg: gradient matches finite differences and accumulates") {
    const auto r = gradcheck([](const Inputs& v) { return neg(v[0]); }, {param(3, 4, 12)});
    CHECK_MESSAGE(r.ok, r.message);
}

TEST_CASE("scale: gradient matches finite differences and accumulates") {
    const auto r = gradcheck([](const Inputs& v) { return scale(v[0], -2.5f); }, {param(3, 4, 13)});
    CHECK_MESSAGE(r.ok, r.message);
}

// ---- matmul and bias -------------------------------------------------------------------

TEST_CASE("matmul: gradient matches finite differences and accumulates") {
    const auto r = gradcheck([](const Inputs& v) { return matmul(v[0], v[1]); },
                             {param(3, 5, 14), param(5, 2, 15)});
    CHECK_MESSAGE(r.ok, r.message);
}

TEST_CASE("matmul: gradient with one constant operand, and for a vector times a matrix") {
    const auto w_only = gradcheck([](const Inputs& v) { return matmul(v[0], v[1]); },
                                  {constant(4, 3, 16), param(3, 6, 17)});
    CHECK_MESSAGE(w_only.ok, w_only.message);
    const auto x_only = gradcheck([](const Inputs& v) { return matmul(v[0], v[1]); },
                                  {param(1, 3, 18), constant(3, 1, 19)});
    CHECK_MESSAGE(x_only.ok, x_only.message);
}

TEST_CASE("matmul: value equals the hand-computed product") {
    const Var a(mat(2, 3, {1, 2, 3, 4, 5, 6}));
    const Var b(mat(3, 2, {7, 8, 9, 10, 11, 12}));
    CHECK(matmul(a, b).value() == mat(2, 2, {58, 64, 139, 154}));
}

TEST_CASE("add_row: gradient matches finite differences and accumulates") {
    const auto r = gradcheck([](const Inputs& v) { return add_row(v[0], v[1]); },
                             {param(4, 3, 20), param(1, 3, 21)});
    CHECK_MESSAGE(r.ok, r.message);
}

TEST_CASE("add_row: the row is added to every row") {
    const Var x(mat(2, 2, {1, 2, 3, 4}));
    const Var row(mat(1, 2, {10, 20}));
    CHECK(add_row(x, row).value() == mat(2, 2, {11, 22, 13, 24}));
}

TEST_CASE("linear: gradient matches finite differences and accumulates") {
    const auto with_bias = gradcheck([](const Inputs& v) { return linear(v[0], v[1], v[2]); },
                                     {param(4, 3, 60), param(3, 5, 61), param(1, 5, 62)});
    CHECK_MESSAGE(with_bias.ok, with_bias.message);
    const auto no_bias = gradcheck([](const Inputs& v) { return linear(v[0], v[1]); },
                                   {param(4, 3, 63), param(3, 5, 64)});
    CHECK_MESSAGE(no_bias.ok, no_bias.message);
    // Frozen features: only the weight and bias need gradients.
    const auto frozen_x = gradcheck([](const Inputs& v) { return linear(v[0], v[1], v[2]); },
                                    {constant(4, 3, 65), param(3, 5, 66), param(1, 5, 67)});
    CHECK_MESSAGE(frozen_x.ok, frozen_x.message);
}

TEST_CASE("linear: the same bits as add_row(matmul(x, W), b)") {
    const Var x(mat(2, 3, {1, 2, 3, 4, 5, 6}));
    const Var w(mat(3, 2, {7, 8, 9, 10, 11, 12}));
    const Var b(mat(1, 2, {0.5f, -1}));
    CHECK(linear(x, w, b).value() == mat(2, 2, {58.5f, 63, 139.5f, 153}));
    CHECK(linear(x, w).value() == matmul(x, w).value());
    const Var xr = constant(7, 33, 68), wr = param(33, 19, 69), br = param(1, 19, 70);
    CHECK(linear(xr, wr, br).value() == add_row(matmul(xr, wr), br).value());
}

// ---- reductions ------------------------------------------------------------------------

TEST_CASE("sum: gradient matches finite differences and accumulates") {
    const auto r = gradcheck([](const Inputs& v) { return sum(v[0]); }, {param(3, 4, 22)});
    CHECK_MESSAGE(r.ok, r.message);
}

TEST_CASE("mean: gradient matches finite differences and accumulates") {
    const auto r = gradcheck([](const Inputs& v) { return mean(v[0]); }, {param(3, 4, 23)});
    CHECK_MESSAGE(r.ok, r.message);
}

TEST_CASE("sum_rows: gradient matches finite differences and accumulates") {
    const auto r = gradcheck([](const Inputs& v) { return sum_rows(v[0]); }, {param(4, 3, 24)});
    CHECK_MESSAGE(r.ok, r.message);
}

TEST_CASE("sum_cols: gradient matches finite differences and accumulates") {
    const auto r = gradcheck([](const Inputs& v) { return sum_cols(v[0]); }, {param(4, 3, 25)});
    CHECK_MESSAGE(r.ok, r.message);
}

TEST_CASE("reductions: values and shapes") {
    const Var a(mat(2, 3, {1, 2, 3, 4, 5, 6}));
    CHECK(sum(a).item() == 21.0f);
    CHECK(mean(a).item() == doctest::Approx(3.5f));
    CHECK(sum_rows(a).value() == mat(1, 3, {5, 7, 9}));
    CHECK(sum_cols(a).value() == mat(2, 1, {6, 15}));
}

// ---- nonlinearities --------------------------------------------------------------------

TEST_CASE("relu: gradient matches finite differences away from the kink") {
    const auto r = gradcheck([](const Inputs& v) { return relu(v[0]); }, {param(4, 5, 26)},
                             domains({kAwayFromZero}));
    CHECK_MESSAGE(r.ok, r.message);
}

TEST_CASE("leaky_relu: gradient matches finite differences away from the kink") {
    const auto default_slope = gradcheck([](const Inputs& v) { return leaky_relu(v[0]); },
                                         {param(4, 5, 27)}, domains({kAwayFromZero}));
    CHECK_MESSAGE(default_slope.ok, default_slope.message);
    const auto steep = gradcheck([](const Inputs& v) { return leaky_relu(v[0], 0.3f); },
                                 {param(4, 5, 28)}, domains({kAwayFromZero}));
    CHECK_MESSAGE(steep.ok, steep.message);
}

TEST_CASE("relu and leaky_relu: values") {
    const Var x(mat(1, 4, {-2, -0.5f, 0, 3}));
    CHECK(relu(x).value() == mat(1, 4, {0, 0, 0, 3}));
    CHECK(leaky_relu(x).value().isApprox(mat(1, 4, {-0.02f, -0.005f, 0, 3})));
    CHECK(leaky_relu(x, 0.5f).value() == mat(1, 4, {-1, -0.25f, 0, 3}));
}

TEST_CASE("tanh: gradient matches finite differences and accumulates") {
    const auto r = gradcheck([](const Inputs& v) { return tanh(v[0]); }, {param(4, 5, 29, 1.5f)});
    CHECK_MESSAGE(r.ok, r.message);
}

TEST_CASE("sigmoid: gradient matches finite differences and accumulates") {
    const auto r =
        gradcheck([](const Inputs& v) { return sigmoid(v[0]); }, {param(4, 5, 30, 2.0f)});
    CHECK_MESSAGE(r.ok, r.message);
}

TEST_CASE("sigmoid: values, finite and saturated for large |x|") {
    const Matrix s = sigmoid(Var(mat(1, 4, {0, 2, -100, 100}))).value();
    CHECK(s(0, 0) == 0.5f);
    CHECK(s(0, 1) == doctest::Approx(1.0 / (1.0 + std::exp(-2.0))));
    CHECK(s(0, 2) >= 0.0f);
    CHECK(s(0, 2) < 1e-30f);
    CHECK(s(0, 3) == 1.0f);
}

TEST_CASE("gelu: gradient matches finite differences and accumulates") {
    const auto r = gradcheck([](const Inputs& v) { return gelu(v[0]); }, {param(4, 5, 31, 1.5f)});
    CHECK_MESSAGE(r.ok, r.message);
}

TEST_CASE("gelu: values equal PyTorch's exact (erf) gelu") {
    const Matrix g = gelu(Var(mat(1, 4, {1, -1, 2, -3}))).value();
    CHECK(g(0, 0) == doctest::Approx(0.8413447461).epsilon(1e-6));
    CHECK(g(0, 1) == doctest::Approx(-0.1586552539).epsilon(1e-5));
    CHECK(g(0, 2) == doctest::Approx(1.9544997361).epsilon(1e-6));
    CHECK(g(0, 3) == doctest::Approx(-0.0040496941).epsilon(1e-4));
}

TEST_CASE("exp: gradient matches finite differences and accumulates") {
    const auto r = gradcheck([](const Inputs& v) { return exp(v[0]); }, {param(4, 5, 32)});
    CHECK_MESSAGE(r.ok, r.message);
}

TEST_CASE("log: gradient matches finite differences for positive inputs") {
    const auto r = gradcheck([](const Inputs& v) { return log(v[0]); }, {param(4, 5, 33)},
                             domains({kPositive}));
    CHECK_MESSAGE(r.ok, r.message);
}

TEST_CASE("square: gradient matches finite differences and accumulates") {
    const auto r = gradcheck([](const Inputs& v) { return square(v[0]); }, {param(4, 5, 34)});
    CHECK_MESSAGE(r.ok, r.message);
}

TEST_CASE("sqrt: gradient matches finite differences for positive inputs") {
    const auto r = gradcheck([](const Inputs& v) { return sqrt(v[0]); }, {param(4, 5, 35)},
                             domains({kPositive}));
    CHECK_MESSAGE(r.ok, r.message);
}

TEST_CASE("exp, log, square, sqrt: values") {
    const Var x(mat(1, 3, {0.25f, 1, 4}));
    CHECK(exp(x).value().isApprox(mat(1, 3, {std::exp(0.25f), std::exp(1.0f), std::exp(4.0f)})));
    CHECK(log(x).value().isApprox(mat(1, 3, {std::log(0.25f), 0, std::log(4.0f)})));
    CHECK(square(x).value() == mat(1, 3, {0.0625f, 1, 16}));
    CHECK(sqrt(x).value() == mat(1, 3, {0.5f, 1, 2}));
}

// ---- shape ops -------------------------------------------------------------------------

TEST_CASE("concat_cols: gradient matches finite differences, constant parts get none") {
    const auto r = gradcheck(
        [](const Inputs& v) {
            return concat_cols({v[0], v[1], v[2]});
        },
        {param(3, 2, 36), constant(3, 1, 37), param(3, 3, 38)});
    CHECK_MESSAGE(r.ok, r.message);
}

TEST_CASE("concat_cols: the same Var twice sums both halves of the gradient") {
    const auto r = gradcheck(
        [](const Inputs& v) {
            return concat_cols({v[0], v[0]});
        },
        {param(2, 3, 39)});
    CHECK_MESSAGE(r.ok, r.message);
}

TEST_CASE("slice_cols: gradient matches finite differences and accumulates") {
    const auto r =
        gradcheck([](const Inputs& v) { return slice_cols(v[0], 1, 3); }, {param(3, 5, 40)});
    CHECK_MESSAGE(r.ok, r.message);
}

TEST_CASE("slice_cols: two slices of one Var sum into its gradient") {
    const auto r = gradcheck(
        [](const Inputs& v) { return mul(slice_cols(v[0], 0, 3), slice_cols(v[0], 2, 3)); },
        {param(3, 5, 41)});
    CHECK_MESSAGE(r.ok, r.message);
}

TEST_CASE("reshape: gradient matches finite differences and accumulates") {
    const auto r =
        gradcheck([](const Inputs& v) { return reshape(v[0], 3, 4); }, {param(2, 6, 42)});
    CHECK_MESSAGE(r.ok, r.message);
    const auto flat = gradcheck([](const Inputs& v) { return mul(reshape(v[0], 1, 12), v[1]); },
                                {param(4, 3, 43), param(1, 12, 44)});
    CHECK_MESSAGE(flat.ok, flat.message);
}

TEST_CASE("concat_cols, slice_cols, reshape: values are row-major") {
    const Var a(mat(2, 2, {1, 2, 3, 4}));
    const Var b(mat(2, 1, {5, 6}));
    const Var c = concat_cols({a, b});
    CHECK(c.value() == mat(2, 3, {1, 2, 5, 3, 4, 6}));
    CHECK(slice_cols(c, 1, 2).value() == mat(2, 2, {2, 5, 4, 6}));
    CHECK(reshape(c, 3, 2).value() == mat(3, 2, {1, 2, 5, 3, 4, 6}));
    CHECK(reshape(c, 1, 6).value() == mat(1, 6, {1, 2, 5, 3, 4, 6}));
}

// ---- embedding -------------------------------------------------------------------------

TEST_CASE("embedding: gradient w.r.t. the table matches, repeated ids sum") {
    const IdList ids = {1, 3, 1, 1, 0, 3};  // rows 2 and 4 unused
    const auto r =
        gradcheck([&](const Inputs& v) { return embedding(v[0], ids); }, {param(5, 3, 45)});
    CHECK_MESSAGE(r.ok, r.message);
}

TEST_CASE("embedding: gathers rows; backward scatter-adds one count per occurrence") {
    const Var table = Var::parameter(mat(3, 2, {1, 2, 3, 4, 5, 6}));
    const Var out = embedding(table, {2, 0, 2});
    CHECK(out.value() == mat(3, 2, {5, 6, 1, 2, 5, 6}));
    backward(sum(out));
    CHECK(table.grad() == mat(3, 2, {1, 1, 0, 0, 2, 2}));
}

// ---- dropout ---------------------------------------------------------------------------

TEST_CASE("dropout: gradient matches finite differences with the same mask each evaluation") {
    // The Rng is seeded inside f, so every evaluation (analytic and numeric) draws one mask.
    const auto f = [](const Inputs& v) {
        Rng rng(7);
        return dropout(v[0], 0.4f, rng, true);
    };
    const Var x = param(5, 6, 46);
    const Matrix out = f({x}).value();
    const Index dropped = (out.array() == 0.0f).count();
    REQUIRE(dropped > 0);           // the mask matters for this check ...
    REQUIRE(dropped < out.size());  // ... and is not all zeros
    const auto r = gradcheck(f, {x});
    CHECK_MESSAGE(r.ok, r.message);
}

TEST_CASE("dropout: kept elements are scaled by 1/(1-p); same seed, same mask") {
    const Var x(Matrix::Ones(100, 100));
    Rng rng_a(3), rng_b(3), rng_c(4);
    const Matrix a = dropout(x, 0.25f, rng_a, true).value();
    const Matrix b = dropout(x, 0.25f, rng_b, true).value();
    const Matrix c = dropout(x, 0.25f, rng_c, true).value();
    CHECK(a == b);
    CHECK(a != c);
    const double dropped = static_cast<double>((a.array() == 0.0f).count()) / 1e4;
    CHECK(dropped == doctest::Approx(0.25).epsilon(0.1));
    CHECK(((a.array() == 0.0f) || (a.array() == 1.0f / 0.75f)).all());
}

TEST_CASE("dropout: identity when not training or p == 0") {
    const Var x = param(3, 4, 47);
    Rng rng(5);
    CHECK(dropout(x, 0.5f, rng, false).value() == x.value());
    CHECK(dropout(x, 0.0f, rng, true).value() == x.value());
    const auto r = gradcheck(
        [](const Inputs& v) {
            Rng inner(1);
            return dropout(v[0], 0.5f, inner, false);
        },
        {x});
    CHECK_MESSAGE(r.ok, r.message);
}

// ---- softmax family --------------------------------------------------------------------

TEST_CASE("softmax: gradient matches finite differences and accumulates") {
    const auto r =
        gradcheck([](const Inputs& v) { return softmax(v[0]); }, {param(3, 5, 48, 2.0f)});
    CHECK_MESSAGE(r.ok, r.message);
}

TEST_CASE("log_softmax: gradient matches finite differences and accumulates") {
    const auto r =
        gradcheck([](const Inputs& v) { return log_softmax(v[0]); }, {param(3, 5, 49, 2.0f)});
    CHECK_MESSAGE(r.ok, r.message);
}

TEST_CASE("softmax: rows sum to 1 and match exp(z) / sum exp(z)") {
    const Matrix p = softmax(Var(randn(4, 6, 50, 3.0f))).value();
    for (Index i = 0; i < p.rows(); ++i) CHECK(p.row(i).sum() == doctest::Approx(1.0f));
    const Matrix q = softmax(Var(mat(1, 3, {0, std::log(2.0f), std::log(3.0f)}))).value();
    CHECK(q.isApprox(mat(1, 3, {1.0f / 6, 2.0f / 6, 3.0f / 6})));
}

TEST_CASE("log_softmax: values equal PyTorch's") {
    const Matrix lp = log_softmax(Var(mat(2, 3, {2, 1, 0, 0.5f, -1, 3}))).value();
    const Matrix want = mat(2, 3,
                            {-0.4076059644f, -1.4076059644f, -2.4076059644f,  //
                             -2.5956743294f, -4.0956743294f, -0.0956743294f});
    CHECK(lp.isApprox(want, 1e-6f));
}

TEST_CASE("log_softmax and softmax: stable and exact for logits of +-1000") {
    // PyTorch 1.13 (float32) gives exactly these values: the max is subtracted before the
    // log-sum-exp, so a row of equal logits of any magnitude gives -ln(C) to float precision.
    const Var z(mat(3, 3, {1000, -1000, 0, -1000, -1000, -1000, 1000, 1000, 1000}));
    const float ln3 = std::log(3.0f);
    const Matrix lp = log_softmax(z).value();
    REQUIRE(lp.allFinite());
    CHECK(elementwise_close(lp, mat(3, 3, {0, -2000, -1000, -ln3, -ln3, -ln3, -ln3, -ln3, -ln3})));
    const Matrix p = softmax(z).value();
    REQUIRE(p.allFinite());
    CHECK(p(0, 0) == 1.0f);
    CHECK(p(0, 1) < 1e-30f);  // exp(-2000); Eigen's vectorized exp may give a denormal, not 0
    CHECK(elementwise_close(p.bottomRows(2), Matrix::Constant(2, 3, 1.0f / 3)));
    // The loss and its gradient stay finite and exact too.
    const Var zp = Var::parameter(z.value());
    const Var loss = cross_entropy(zp, {1, 2, 0});
    CHECK(loss.item() == doctest::Approx((2000.0 + 2 * std::log(3.0)) / 3).epsilon(1e-6));
    backward(loss);
    REQUIRE(zp.grad().allFinite());
    CHECK(elementwise_close(zp.grad().bottomRows(1), mat(1, 3, {-2.0f / 9, 1.0f / 9, 1.0f / 9})));
}

// ---- losses: cross_entropy and nll -----------------------------------------------------

namespace {
const IdList kLabels = {0, 3, 1, 4, 3};  // 5 rows, 5 classes
}

TEST_CASE("cross_entropy: gradient matches finite differences (plain)") {
    const auto r = gradcheck([](const Inputs& v) { return cross_entropy(v[0], kLabels); },
                             {param(5, 5, 51, 1.5f)});
    CHECK_MESSAGE(r.ok, r.message);
}

TEST_CASE("cross_entropy: gradient matches finite differences with label smoothing") {
    const auto r = gradcheck(
        [](const Inputs& v) {
            return cross_entropy(
                v[0], kLabels,
                {.label_smoothing = 0.2f, .class_weights = {}, .sample_weights = {}});
        },
        {param(5, 5, 52, 1.5f)});
    CHECK_MESSAGE(r.ok, r.message);
}

TEST_CASE("cross_entropy: gradient matches finite differences with class weights") {
    // Class 3 has weight 0: its rows contribute nothing.
    const CrossEntropyOptions opts{.class_weights = {1.0f, 2.0f, 0.5f, 0.0f, 3.0f},
                                   .sample_weights = {}};
    const auto r = gradcheck([&](const Inputs& v) { return cross_entropy(v[0], kLabels, opts); },
                             {param(5, 5, 53, 1.5f)});
    CHECK_MESSAGE(r.ok, r.message);
}

TEST_CASE("cross_entropy: gradient matches finite differences with sample weights") {
    const CrossEntropyOptions opts{.class_weights = {},
                                   .sample_weights = {1.0f, 0.5f, 2.0f, 0.0f, 1.5f}};
    const auto r = gradcheck([&](const Inputs& v) { return cross_entropy(v[0], kLabels, opts); },
                             {param(5, 5, 54, 1.5f)});
    CHECK_MESSAGE(r.ok, r.message);
}

TEST_CASE("cross_entropy: gradient matches with smoothing, class and sample weights together") {
    const CrossEntropyOptions opts{.label_smoothing = 0.1f,
                                   .class_weights = {1.0f, 2.0f, 0.5f, 0.25f, 3.0f},
                                   .sample_weights = {1.0f, 0.5f, 2.0f, 1.0f, 1.5f}};
    const auto r = gradcheck([&](const Inputs& v) { return cross_entropy(v[0], kLabels, opts); },
                             {param(5, 5, 55, 1.5f)});
    CHECK_MESSAGE(r.ok, r.message);
}

TEST_CASE("cross_entropy: values equal PyTorch's (plain, smoothing, class weights)") {
    const Var z(mat(3, 3, {2, 1, 0, 0, 0, 0, 0.5f, -1, 3}));
    const IdList y = {0, 1, 2};
    const std::vector<float> w = {1.0f, 2.0f, 0.5f};
    CHECK(cross_entropy(z, y).item() == doctest::Approx(0.5339641941756241));
    CHECK(cross_entropy(z, y, {.label_smoothing = 0.1f, .class_weights = {}, .sample_weights = {}})
              .item() == doctest::Approx(0.6395197497311798));
    CHECK(cross_entropy(z, y, {.class_weights = w, .sample_weights = {}}).item() ==
          doctest::Approx(0.7579050589965118));
    CHECK(cross_entropy(z, y, {.label_smoothing = 0.2f, .class_weights = w, .sample_weights = {}})
              .item() == doctest::Approx(0.9702597431751915));
    // One row of uniform logits: ln(C).
    CHECK(cross_entropy(Var(Matrix::Zero(1, 10)), {7}).item() == doctest::Approx(std::log(10.0)));
}

TEST_CASE("cross_entropy: an integer sample weight equals repeating the row") {
    const Matrix z = randn(3, 4, 56);
    Matrix repeated(5, 4);
    repeated << z.row(0), z.row(0), z.row(0), z.row(1), z.row(2);
    const CrossEntropyOptions weighted{.label_smoothing = 0.1f,
                                       .class_weights = {1.0f, 0.5f, 2.0f, 1.0f},
                                       .sample_weights = {3.0f, 1.0f, 1.0f}};
    const CrossEntropyOptions plain{
        .label_smoothing = 0.1f, .class_weights = {1.0f, 0.5f, 2.0f, 1.0f}, .sample_weights = {}};
    CHECK(cross_entropy(Var(z), {2, 0, 3}, weighted).item() ==
          doctest::Approx(cross_entropy(Var(repeated), {2, 2, 2, 0, 3}, plain).item()));
}

TEST_CASE("cross_entropy: stable for logits of +-1000") {
    const Var z(mat(2, 2, {1000, -1000, -1000, 1000}));
    CHECK(cross_entropy(z, {0, 1}).item() == doctest::Approx(0.0));
    CHECK(cross_entropy(z, {1, 0}).item() == doctest::Approx(2000.0));
}

TEST_CASE("cross_entropy: equals nll(log_softmax) for every option") {
    const Matrix z = randn(5, 5, 57, 2.0f);
    const CrossEntropyOptions opts{.label_smoothing = 0.15f,
                                   .class_weights = {1.0f, 2.0f, 0.5f, 0.25f, 3.0f},
                                   .sample_weights = {1.0f, 0.5f, 2.0f, 1.0f, 1.5f}};
    CHECK(cross_entropy(Var(z), kLabels, opts).item() ==
          doctest::Approx(nll(log_softmax(Var(z)), kLabels, opts).item()));
    CHECK(cross_entropy(Var(z), kLabels).item() ==
          doctest::Approx(nll(log_softmax(Var(z)), kLabels).item()));
}

TEST_CASE("nll: gradient matches finite differences (plain and with every option)") {
    const auto plain =
        gradcheck([](const Inputs& v) { return nll(v[0], kLabels); }, {param(5, 5, 58)});
    CHECK_MESSAGE(plain.ok, plain.message);
    const CrossEntropyOptions opts{.label_smoothing = 0.1f,
                                   .class_weights = {1.0f, 2.0f, 0.5f, 0.25f, 3.0f},
                                   .sample_weights = {1.0f, 0.5f, 2.0f, 1.0f, 1.5f}};
    const auto weighted =
        gradcheck([&](const Inputs& v) { return nll(v[0], kLabels, opts); }, {param(5, 5, 59)});
    CHECK_MESSAGE(weighted.ok, weighted.message);
}

TEST_CASE("nll: gradient through log_softmax matches finite differences") {
    const auto r = gradcheck(
        [](const Inputs& v) {
            return nll(log_softmax(v[0]), kLabels,
                       {.label_smoothing = 0.1f, .class_weights = {}, .sample_weights = {}});
        },
        {param(5, 5, 60, 1.5f)});
    CHECK_MESSAGE(r.ok, r.message);
}

TEST_CASE("nll: value is the mean negative log-probability at the labels") {
    const Var lp(mat(2, 3, {-1, -2, -3, -4, -5, -6}));
    CHECK(nll(lp, {2, 0}).item() == doctest::Approx((3.0 + 4.0) / 2));
    CHECK(nll(lp, {2, 0}, {.class_weights = {1.0f, 1.0f, 3.0f}, .sample_weights = {}}).item() ==
          doctest::Approx((3 * 3.0 + 4.0) / 4));
}

// ---- losses: mse and bce_with_logits ---------------------------------------------------

TEST_CASE("mse: gradient matches finite differences w.r.t. prediction and target") {
    const auto r = gradcheck([](const Inputs& v) { return mse(v[0], v[1]); },
                             {param(4, 3, 61), param(4, 3, 62)});
    CHECK_MESSAGE(r.ok, r.message);
    const auto pred_only = gradcheck([](const Inputs& v) { return mse(v[0], v[1]); },
                                     {param(4, 3, 63), constant(4, 3, 64)});
    CHECK_MESSAGE(pred_only.ok, pred_only.message);
}

TEST_CASE("mse: value is the mean squared difference") {
    const Var pred(mat(2, 2, {1, 2, 3, 4}));
    const Var target(mat(2, 2, {0, 0, 0, 8}));
    CHECK(mse(pred, target).item() == doctest::Approx((1 + 4 + 9 + 16) / 4.0));
}

TEST_CASE("bce_with_logits: gradient matches finite differences w.r.t. logits and targets") {
    const auto r = gradcheck([](const Inputs& v) { return bce_with_logits(v[0], v[1]); },
                             {param(4, 3, 65, 2.0f), Var::parameter(uniform(4, 3, 66, 0, 1))});
    CHECK_MESSAGE(r.ok, r.message);
    const auto logits_only = gradcheck([](const Inputs& v) { return bce_with_logits(v[0], v[1]); },
                                       {param(4, 3, 67, 2.0f), Var(uniform(4, 3, 68, 0, 1))});
    CHECK_MESSAGE(logits_only.ok, logits_only.message);
}

TEST_CASE("bce_with_logits: values equal PyTorch's, stable at logits of +-100") {
    const Var x(mat(1, 5, {100, 100, -100, -100, 0}));
    const Var t(mat(1, 5, {1, 0, 0, 1, 0.3f}));
    const float loss = bce_with_logits(x, t).item();
    CHECK(std::isfinite(loss));
    CHECK(loss == doctest::Approx(40.13862943611199));
    // The gradient (sigmoid(x) - t) / N stays finite and exact at the extremes.
    const Var xp = Var::parameter(x.value());
    backward(bce_with_logits(xp, t));
    REQUIRE(xp.grad().allFinite());
    CHECK(xp.grad()(0, 0) == doctest::Approx(0.0));
    CHECK(xp.grad()(0, 1) == doctest::Approx(1.0 / 5));
    CHECK(xp.grad()(0, 2) == doctest::Approx(0.0));
    CHECK(xp.grad()(0, 3) == doctest::Approx(-1.0 / 5));
    CHECK(xp.grad()(0, 4) == doctest::Approx(0.2 / 5));
}

// ---- a composite -----------------------------------------------------------------------

TEST_CASE("a two-layer network: gradient matches finite differences for every parameter") {
    const auto f = [](const Inputs& v) {
        const Var h = tanh(add_row(matmul(v[0], v[1]), v[2]));
        return cross_entropy(add_row(matmul(h, v[3]), v[4]), {0, 2, 1, 2},
                             {.label_smoothing = 0.05f, .class_weights = {}, .sample_weights = {}});
    };
    const auto r = gradcheck(f, {constant(4, 3, 69), param(3, 5, 70, 0.7f), param(1, 5, 71),
                                 param(5, 3, 72, 0.7f), param(1, 3, 73)});
    CHECK_MESSAGE(r.ok, r.message);
}

// ---- the checker itself ----------------------------------------------------------------

TEST_CASE("gradcheck: reports a wrong gradient, naming the input and the element") {
    // x * detach(x) has the value of x^2 but the gradient x instead of 2x.
    const auto r = gradcheck([](const Inputs& v) { return add(v[0], mul(v[1], v[1].detach())); },
                             {param(2, 3, 80), param(2, 3, 81)});
    CHECK_FALSE(r.ok);
    CHECK(r.message.find("input 1 element (") != std::string::npos);
    CHECK(r.message.find("6 element(s) failed") != std::string::npos);
    CHECK(r.max_abs_error > 0.1);
    CHECK(r.max_rel_error == doctest::Approx(0.5).epsilon(0.01));
}

TEST_CASE("gradcheck: a kink inside the step fails unless inputs keep away from it") {
    const Var near_kink = Var::parameter(Matrix::Constant(2, 2, 0.001f));
    const auto f = [](const Inputs& v) { return relu(v[0]); };
    CHECK_FALSE(gradcheck(f, {near_kink}).ok);
    const auto r = gradcheck(f, {near_kink}, domains({kAwayFromZero}));
    CHECK_MESSAGE(r.ok, r.message);
    CHECK(near_kink.value() == Matrix::Constant(2, 2, 0.001f));  // the caller's Var is untouched
}

TEST_CASE("gradcheck: fails when no input requires grad, so a test cannot check nothing") {
    const auto r = gradcheck([](const Inputs& v) { return tanh(v[0]); }, {constant(2, 2, 82)});
    CHECK_FALSE(r.ok);
    CHECK(r.message.find("no input requires grad") != std::string::npos);
}

TEST_CASE("gradcheck: rejects a margin that does not exceed eps") {
    GradCheckOptions opts = domains({kPositive});
    opts.positive_min = 0.005f;
    CHECK_THROWS_AS(gradcheck([](const Inputs& v) { return log(v[0]); }, {param(2, 2, 83)}, opts),
                    InvalidArgument);
}
