// test_autograd.cpp — Var semantics, backward() and every bad-input error path of the ops.
//
// Covers: leaves and parameters, requires_grad propagation, no graph under NoGrad or without a
// grad-requiring input, detach, zero_grad, seeds, fan-in, a 10,000-op chain (backward is
// iterative), accumulation across backward calls; then each op's InvalidArgument with a message
// naming the op and the offending shapes or values.
#include <doctest/doctest.h>

#include <cmath>
#include <initializer_list>
#include <string>
#include <thread>
#include <vector>

#include "autograd.hpp"

using namespace edgetune;

namespace {

Matrix randn(Index rows, Index cols, std::uint64_t seed) {
    Rng rng(seed);
    Matrix m(rows, cols);
    for (Index i = 0; i < m.size(); ++i) m.data()[i] = rng.normal();
    return m;
}

// What `f` throws: the message of an InvalidArgument, or a marker for anything else.
template <typename F>
std::string invalid_argument_message(F&& f) {
    try {
        f();
    } catch (const InvalidArgument& e) {
        return e.what();
    } catch (const std::exception& e) {
        return std::string("<not an InvalidArgument: ") + e.what() + ">";
    }
    return "<no exception>";
}

bool contains_all(const std::string& text, std::initializer_list<const char*> parts) {
    for (const char* p : parts)
        if (text.find(p) == std::string::npos) return false;
    return true;
}

}  // namespace

// Checks that `expr` throws InvalidArgument whose message contains every given fragment.
#define CHECK_INVALID(expr, ...)                                                       \
    do {                                                                               \
        const std::string message_ = invalid_argument_message([&] { (void)(expr); });  \
        CHECK_MESSAGE(contains_all(message_, {__VA_ARGS__}), "message: " << message_); \
    } while (false)

// ---- leaves ----------------------------------------------------------------------------

TEST_CASE("Var: a default-constructed Var is empty") {
    const Var v;
    CHECK_FALSE(v.defined());
    CHECK_FALSE(v.requires_grad());
    CHECK_FALSE(v.has_grad());
}

TEST_CASE("Var: a leaf holds its value and needs no grad unless it is a parameter") {
    const Matrix m = randn(2, 3, 1);
    const Var leaf(m);
    CHECK(leaf.defined());
    CHECK(leaf.value() == m);
    CHECK(leaf.rows() == 2);
    CHECK(leaf.cols() == 3);
    CHECK_FALSE(leaf.requires_grad());
    const Var p = Var::parameter(m);
    CHECK(p.requires_grad());
    CHECK_FALSE(p.has_grad());
    CHECK(p.grad().size() == 0);
}

TEST_CASE("Var: copies share one node; value_mut updates in place") {
    Var a = Var::parameter(Matrix::Zero(2, 2));
    const Var b = a;
    a.value_mut()(0, 1) = 5.0f;
    CHECK(b.value()(0, 1) == 5.0f);
    CHECK(a.identity() == b.identity());
}

TEST_CASE("Var: set_requires_grad turns a constant into a parameter and back") {
    Var v(Matrix::Ones(1, 3));
    v.set_requires_grad(true);
    CHECK(v.requires_grad());
    CHECK(scale(v, 2.0f).requires_grad());
    v.set_requires_grad(false);
    CHECK_FALSE(scale(v, 2.0f).requires_grad());
}

TEST_CASE("item: returns the value of a [1 x 1] Var") {
    CHECK(Var(Matrix::Constant(1, 1, 4.5f)).item() == 4.5f);
}

// ---- graph recording -------------------------------------------------------------------

TEST_CASE("requires_grad propagates from any input to the op's output") {
    const Var p = Var::parameter(randn(2, 2, 2));
    const Var c(randn(2, 2, 3));
    CHECK(add(p, c).requires_grad());
    CHECK(add(c, p).requires_grad());
    CHECK(matmul(c, p).requires_grad());
    CHECK(sum(tanh(mul(c, p))).requires_grad());
    CHECK(concat_cols({c, c, p}).requires_grad());
}

TEST_CASE("no graph is recorded when no input requires grad") {
    const Var a(randn(2, 3, 4));
    const Var b(randn(3, 2, 5));
    CHECK_FALSE(matmul(a, b).requires_grad());
    CHECK_FALSE(cross_entropy(a, {0, 2}).requires_grad());
    CHECK_FALSE(concat_cols({a, a}).requires_grad());
    CHECK_FALSE(embedding(b, {0, 1}).requires_grad());
}

TEST_CASE("NoGrad: ops record no graph while a scope is alive; scopes nest") {
    const Var p = Var::parameter(randn(2, 3, 6));
    CHECK_FALSE(NoGrad::active());
    {
        NoGrad outer;
        CHECK(NoGrad::active());
        const Var y = relu(matmul(p, Var(randn(3, 2, 7))));
        CHECK_FALSE(y.requires_grad());
        CHECK(y.value().allFinite());
        {
            NoGrad inner;
            CHECK(NoGrad::active());
        }
        CHECK(NoGrad::active());  // the inner scope restores, not clears
        CHECK_FALSE(add(p, p).requires_grad());
    }
    CHECK_FALSE(NoGrad::active());
    CHECK(add(p, p).requires_grad());
}

TEST_CASE("detach: a new constant leaf with the same value and no link to the graph") {
    const Var p = Var::parameter(randn(2, 2, 8));
    const Var y = tanh(p);
    Var d = y.detach();
    CHECK_FALSE(d.requires_grad());
    CHECK(d.value() == y.value());
    CHECK(d.identity() != y.identity());
    d.value_mut()(0, 0) = 100.0f;
    CHECK(y.value()(0, 0) != 100.0f);  // the value was copied
    // A loss through the detached branch only sends no gradient to p.
    const Var q = Var::parameter(Matrix::Ones(2, 2));
    backward(sum(mul(d, q)));
    CHECK(q.has_grad());
    CHECK_FALSE(p.has_grad());
}

// ---- backward --------------------------------------------------------------------------

TEST_CASE("backward: a scalar root seeds 1; leaf gradients equal the derivative") {
    const Var x = Var::parameter((Matrix(1, 3) << 1, -2, 3).finished());
    backward(sum(square(x)));
    REQUIRE(x.has_grad());
    CHECK(x.grad() == (Matrix(1, 3) << 2, -4, 6).finished());
}

TEST_CASE("backward: a non-scalar root needs a seed of its shape") {
    const Var x = Var::parameter(randn(2, 3, 9));
    const Var y = tanh(x);
    CHECK_INVALID(backward(y), "[backward]", "[2 x 3]");
    CHECK_INVALID(backward(y, Matrix::Ones(3, 2)), "[backward]", "[3 x 2]", "[2 x 3]");
    CHECK_INVALID(backward(sum(y), Matrix::Ones(2, 3)), "[backward]");
    CHECK_FALSE(x.has_grad());  // nothing was written by the failed calls
    backward(y, Matrix::Ones(2, 3));
    CHECK(x.grad().isApprox((1.0f - y.value().array().square()).matrix()));
}

TEST_CASE("backward: a Var used twice receives the sum of both paths (fan-in)") {
    const Var x = Var::parameter((Matrix(1, 2) << 3, -1).finished());
    backward(sum(add(mul(x, x), x)));  // d/dx (x^2 + x) = 2x + 1
    CHECK(x.grad() == (Matrix(1, 2) << 7, -1).finished());
    // A diamond: y feeds two branches that meet again.
    const Var w = Var::parameter(Matrix::Constant(1, 1, 2.0f));
    const Var y = scale(w, 3.0f);
    backward(sum(add(square(y), neg(y))));  // d/dw (9w^2 - 3w) = 18w - 3
    CHECK(w.grad()(0, 0) == doctest::Approx(33.0f));
}

TEST_CASE("backward: calling it twice accumulates leaf gradients 2x") {
    const Var x = Var::parameter(randn(3, 2, 10));
    const Var w = Var::parameter(randn(2, 4, 11));
    const Var loss = mean(tanh(matmul(x, w)));
    backward(loss);
    const Matrix gx = x.grad(), gw = w.grad();
    backward(loss);
    CHECK(x.grad().isApprox(2.0f * gx));
    CHECK(w.grad().isApprox(2.0f * gw));
    // A fresh graph over the same leaves accumulates as well.
    backward(mean(tanh(matmul(x, w))));
    CHECK(w.grad().isApprox(3.0f * gw));
}

TEST_CASE("zero_grad: drops the gradient; the next backward starts from zero") {
    const Var x = Var::parameter(randn(2, 2, 12));
    const Var loss = sum(scale(x, 3.0f));
    backward(loss);
    backward(loss);
    CHECK(x.grad() == Matrix::Constant(2, 2, 6.0f));
    Var handle = x;
    handle.zero_grad();
    CHECK_FALSE(x.has_grad());
    CHECK(x.grad().size() == 0);
    backward(loss);
    CHECK(x.grad() == Matrix::Constant(2, 2, 3.0f));
}

TEST_CASE("grad_mut: an optimizer may edit the gradient; backward adds to the edit") {
    Var x = Var::parameter(Matrix::Ones(1, 2));
    backward(sum(x));
    x.grad_mut()(0, 1) = 10.0f;
    backward(sum(x));
    CHECK(x.grad() == (Matrix(1, 2) << 2, 11).finished());
}

TEST_CASE("backward: a chain of 1,000,000 ops neither overflows the stack nor frees recursively") {
    const Var x = Var::parameter(Matrix::Constant(1, 3, 0.5f));
    const Var c(Matrix::Constant(1, 3, 0.25f));
    Var h = x;
    for (int i = 0; i < 1000000; ++i) h = (i % 2 == 0) ? scale(h, -1.0f) : add(h, c);
    backward(sum(h));
    CHECK(x.grad() == Matrix::Ones(1, 3));  // 500,000 sign flips
    CHECK(h.value() == Matrix::Constant(1, 3, 0.5f));
    // Dropping the last handle destroys the chain: Node's destructor unlinks iteratively.
    h = Var();
    CHECK(x.value() == Matrix::Constant(1, 3, 0.5f));
}

// ---- error paths: shapes ---------------------------------------------------------------

TEST_CASE("elementwise binary ops reject differing shapes, naming the op and both shapes") {
    const Var a(Matrix::Zero(2, 3));
    const Var b(Matrix::Zero(3, 2));
    CHECK_INVALID(add(a, b), "[add]", "[2 x 3]", "[3 x 2]");
    CHECK_INVALID(sub(a, b), "[sub]", "[2 x 3]", "[3 x 2]");
    CHECK_INVALID(mul(a, b), "[mul]", "[2 x 3]", "[3 x 2]");
    CHECK_INVALID(div(a, b), "[div]", "[2 x 3]", "[3 x 2]");
    CHECK_INVALID(mse(a, b), "[mse]", "[2 x 3]", "[3 x 2]");
    CHECK_INVALID(bce_with_logits(a, b), "[bce_with_logits]", "[2 x 3]", "[3 x 2]");
}

TEST_CASE("matmul rejects mismatched inner dimensions, naming both shapes") {
    const Var x(Matrix::Zero(32, 512));
    const Var w(Matrix::Zero(256, 10));
    CHECK_INVALID(matmul(x, w), "[matmul]", "[32 x 512]", "[256 x 10]");
}

TEST_CASE("add_row rejects a row that does not broadcast") {
    const Var x(Matrix::Zero(4, 3));
    CHECK_INVALID(add_row(x, Var(Matrix::Zero(1, 4))), "[add_row]", "[1 x 4]", "[4 x 3]");
    CHECK_INVALID(add_row(x, Var(Matrix::Zero(2, 3))), "[add_row]", "[2 x 3]");
}

TEST_CASE("linear rejects a weight or bias that does not match, naming the shapes") {
    const Var x(Matrix::Zero(32, 512));
    CHECK_INVALID(linear(x, Var(Matrix::Zero(256, 10))), "[linear]", "[32 x 512]", "[256 x 10]");
    const Var w(Matrix::Zero(512, 10));
    CHECK_INVALID(linear(x, w, Var(Matrix::Zero(1, 9))), "[linear]", "bias [1 x 9]", "[1 x 10]");
    CHECK_INVALID(linear(x, w, Var(Matrix::Zero(2, 10))), "[linear]", "bias [2 x 10]");
}

TEST_CASE("concat_cols rejects parts with differing rows and an empty list") {
    const Var a(Matrix::Zero(2, 3));
    const Var b(Matrix::Zero(3, 3));
    CHECK_INVALID(concat_cols({a, b}), "[concat_cols]", "[3 x 3]");
    CHECK_INVALID(concat_cols({}), "[concat_cols]");
}

TEST_CASE("slice_cols rejects columns out of range") {
    const Var a(Matrix::Zero(2, 5));
    CHECK_INVALID(slice_cols(a, 3, 3), "[slice_cols]", "[2 x 5]");
    CHECK_INVALID(slice_cols(a, -1, 2), "[slice_cols]", "[2 x 5]");
    CHECK_INVALID(slice_cols(a, 0, 6), "[slice_cols]", "[2 x 5]");
    CHECK_INVALID(slice_cols(a, 6, 0), "[slice_cols]", "[2 x 5]");
    CHECK_INVALID(slice_cols(a, 1, -1), "[slice_cols]", "[2 x 5]");
    CHECK(slice_cols(a, 5, 0).cols() == 0);  // an empty slice at the end is in range
}

TEST_CASE("reshape rejects a different element count") {
    const Var a(Matrix::Zero(2, 6));
    CHECK_INVALID(reshape(a, 5, 2), "[reshape]", "[2 x 6]", "[5 x 2]");
    CHECK_INVALID(reshape(a, -3, -4), "[reshape]", "[2 x 6]");
}

TEST_CASE("item rejects a Var that is not [1 x 1]") {
    CHECK_INVALID(Var(Matrix::Zero(1, 2)).item(), "[item]", "[1 x 2]");
    CHECK_INVALID(Var(Matrix::Zero(0, 0)).item(), "[item]", "[0 x 0]");
}

// ---- error paths: ids, labels, options -------------------------------------------------

TEST_CASE("embedding rejects ids out of range, negative or >= vocab") {
    const Var table(Matrix::Zero(5, 2));
    CHECK_INVALID(embedding(table, {0, -1}), "[embedding]", "-1", "5");
    CHECK_INVALID(embedding(table, {5}), "[embedding]", "id 5", "5 rows");
    CHECK_INVALID(embedding(table, {1, 2, 100}), "[embedding]", "100");
}

TEST_CASE("cross_entropy and nll reject labels out of range") {
    const Var z(Matrix::Zero(3, 10));
    CHECK_INVALID(cross_entropy(z, {0, 12, 1}), "[cross_entropy]", "label 12", "10 classes");
    CHECK_INVALID(cross_entropy(z, {0, -1, 1}), "[cross_entropy]", "label -1");
    CHECK_INVALID(cross_entropy(z, {0, 10, 1}), "[cross_entropy]", "label 10");
    CHECK_INVALID(nll(z, {0, 12, 1}), "[nll]", "label 12", "10 classes");
    CHECK_INVALID(nll(z, {-3, 0, 1}), "[nll]", "label -3");
}

TEST_CASE("cross_entropy and nll reject a label count that differs from the rows") {
    const Var z(Matrix::Zero(3, 4));
    CHECK_INVALID(cross_entropy(z, {0, 1}), "[cross_entropy]", "2", "3");
    CHECK_INVALID(cross_entropy(z, {0, 1, 2, 3}), "[cross_entropy]", "4", "3");
    CHECK_INVALID(nll(z, {0}), "[nll]", "1", "3");
}

TEST_CASE("cross_entropy and nll reject class and sample weights of the wrong length") {
    const Var z(Matrix::Zero(3, 4));
    const IdList y = {0, 1, 2};
    CHECK_INVALID(cross_entropy(z, y, {.class_weights = {1.0f, 2.0f}, .sample_weights = {}}),
                  "[cross_entropy]", "2", "4");
    CHECK_INVALID(nll(z, y, {.class_weights = {1, 1, 1, 1, 1}, .sample_weights = {}}), "[nll]", "5",
                  "4");
    CHECK_INVALID(cross_entropy(z, y, {.class_weights = {}, .sample_weights = {1.0f}}),
                  "[cross_entropy]", "1", "3");
    CHECK_INVALID(nll(z, y, {.class_weights = {}, .sample_weights = {1, 1, 1, 1}}), "[nll]", "4",
                  "3");
}

TEST_CASE("cross_entropy and nll reject bad option values") {
    const Var z(Matrix::Zero(2, 3));
    const IdList y = {0, 1};
    CHECK_INVALID(
        cross_entropy(z, y, {.label_smoothing = 1.0f, .class_weights = {}, .sample_weights = {}}),
        "[cross_entropy]");
    CHECK_INVALID(
        cross_entropy(z, y, {.label_smoothing = -0.1f, .class_weights = {}, .sample_weights = {}}),
        "[cross_entropy]");
    CHECK_INVALID(cross_entropy(z, y, {.class_weights = {1.0f, -1.0f, 1.0f}, .sample_weights = {}}),
                  "[cross_entropy]");
    CHECK_INVALID(nll(z, y, {.class_weights = {}, .sample_weights = {1.0f, std::nanf("")}}),
                  "[nll]");
}

TEST_CASE("losses reject an empty batch (0 rows)") {
    const Var z(Matrix::Zero(0, 4));
    CHECK_INVALID(cross_entropy(z, {}), "[cross_entropy]");
    CHECK_INVALID(nll(z, {}), "[nll]");
    CHECK_INVALID(mse(z, z), "[mse]");
    CHECK_INVALID(bce_with_logits(z, z), "[bce_with_logits]");
}

TEST_CASE("dropout rejects p outside [0, 1)") {
    const Var x(Matrix::Ones(2, 2));
    Rng rng(1);
    CHECK_INVALID(dropout(x, 1.0f, rng, true), "[dropout]");
    CHECK_INVALID(dropout(x, -0.1f, rng, true), "[dropout]");
    CHECK_INVALID(dropout(x, std::nanf(""), rng, true), "[dropout]");
    CHECK_INVALID(dropout(x, 1.5f, rng, false), "[dropout]");  // checked in eval mode too
}

// ---- buffer cache ----------------------------------------------------------------------

namespace {
// One training-like step on a [64 x 1000] logit matrix (buffers well above the cache's
// 4 KiB floor): forward, backward, and the parameter gradient it leaves.
Matrix vocab_step(Var& w, const Var& x, const IdList& y) {
    w.zero_grad();
    backward(cross_entropy(relu(linear(x, w)), y));
    return w.grad();
}
}  // namespace

TEST_CASE("buffer cache: a step's buffers are reused by the next one and results are unchanged") {
    release_buffer_cache();
    REQUIRE(buffer_cache_bytes() == 0);
    Var w = Var::parameter(randn(32, 1000, 1) * 0.1f);
    const Var x(randn(64, 32, 2));
    IdList y;
    for (int i = 0; i < 64; ++i) y.push_back((i * 37) % 1000);

    const Matrix cold = vocab_step(w, x, y);  // every buffer freshly allocated
    const std::size_t after_first = buffer_cache_bytes();
    // The graph's [64 x 1000] value and gradient buffers are held now that the graph died.
    CHECK(after_first >= 3 * 64 * 1000 * sizeof(float));
    const Matrix warm = vocab_step(w, x, y);     // every buffer from the cache, contents stale
    CHECK(buffer_cache_bytes() == after_first);  // same shapes: nothing new was allocated
    CHECK(warm == cold);                         // stale contents never leak into results

    release_buffer_cache();
    CHECK(buffer_cache_bytes() == 0);
    CHECK(vocab_step(w, x, y) == cold);
}

TEST_CASE("buffer cache: it holds at most 64 MiB; small buffers are not cached") {
    release_buffer_cache();
    {
        // Three 24 MiB values die together: at most two fit under the cap.
        const Var a(Matrix::Zero(1024, 6144)), b(Matrix::Zero(1024, 6144)),
            c(Matrix::Zero(1024, 6144));
    }
    CHECK(buffer_cache_bytes() == 2 * std::size_t{24} << 20);
    { const Var small(Matrix::Zero(16, 16)); }  // 1 KiB: below the 4 KiB floor
    CHECK(buffer_cache_bytes() == 2 * std::size_t{24} << 20);
    release_buffer_cache();
    CHECK(buffer_cache_bytes() == 0);
}

TEST_CASE("buffer cache: each thread has its own, freed when the thread exits") {
    release_buffer_cache();
    std::size_t in_thread = 0;
    std::thread t([&] {
        { const Var v(Matrix::Zero(256, 256)); }
        in_thread = buffer_cache_bytes();
    });
    t.join();
    CHECK(in_thread == 256 * 256 * sizeof(float));
    CHECK(buffer_cache_bytes() == 0);  // nothing moved to this thread
}
