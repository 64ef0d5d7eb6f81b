// ops.cpp — every autograd op: forward value and backward closure side by side.
//
// Ordered from simple to complex: elementwise arithmetic, matmul and bias, reductions,
// nonlinearities, shape ops, embedding, dropout, softmax family, losses. A closure reads its
// inputs through `self.inputs` and its upstream gradient from `self.grad`, and only ever ADDS
// into input gradients (accumulate_grad / grad_for_update). Composite ops (softmax, mse) have no
// backward of their own.
#include <algorithm>
#include <cmath>
#include <initializer_list>

#include "detail/gemm.hpp"
#include "detail/node.hpp"

namespace edgetune {

namespace {

using Backward = std::function<void(Node&)>;

[[noreturn]] void fail(const char* op, const std::string& message) {
    throw InvalidArgument(std::string("[") + op + "] " + message);
}

void check_same_shape(const char* op, const Var& a, const Var& b) {
    if (a.rows() != b.rows() || a.cols() != b.cols())
        fail(op, "shapes differ: " + shape_str(a.value()) + " vs " + shape_str(b.value()));
}

// An expression's value in a cached buffer (see buffers.cpp): every op value comes from here
// or from acquire_buffer(), never from a plain Matrix temporary.
template <typename Expr>
Matrix evaluate(const Eigen::MatrixBase<Expr>& e) {
    Matrix m = acquire_buffer(e.rows(), e.cols());
    m.noalias() = e.derived();  // m is fresh: never an operand
    return m;
}

// op(a) op(b) [m x n] into a new buffer, or added into dst (see detail/gemm.hpp for op()).
GemmArgs product_args(const Matrix& a, bool trans_a, const Matrix& b, bool trans_b) {
    return {.trans_a = trans_a,
            .trans_b = trans_b,
            .m = trans_a ? a.cols() : a.rows(),
            .n = trans_b ? b.rows() : b.cols(),
            .k = trans_a ? a.rows() : a.cols(),
            .a = a.data(),
            .b = b.data(),
            .c = nullptr,
            .accumulate = false};
}

Matrix product(const Matrix& a, bool trans_a, const Matrix& b, bool trans_b) {
    GemmArgs g = product_args(a, trans_a, b, trans_b);
    Matrix out = acquire_buffer(g.m, g.n);
    g.c = out.data();
    gemm(g);
    return out;
}

// node.grad += op(a) op(b) (or = when the node has no gradient yet); a no-op for nodes that
// need no gradient. Neither a nor b may be node.grad.
void accumulate_product(Node& node, const Matrix& a, bool trans_a, const Matrix& b, bool trans_b) {
    if (!node.requires_grad) return;
    GemmArgs g = product_args(a, trans_a, b, trans_b);
    g.accumulate = node.has_grad;
    ensure_grad_storage(node);
    g.c = node.grad.data();
    gemm(g);
    node.has_grad = true;
}

// Wraps `value` in a node; records inputs and the backward closure only if some input
// requires grad and no NoGrad scope is active.
Var make_op(Matrix value, std::initializer_list<const Var*> inputs, Backward backward_fn) {
    auto node = std::make_shared<Node>();
    node->value = std::move(value);
    bool needs_grad = false;
    if (!NoGrad::active())
        for (const Var* in : inputs) needs_grad = needs_grad || in->requires_grad();
    if (needs_grad) {
        node->requires_grad = true;
        node->inputs.reserve(inputs.size());
        for (const Var* in : inputs) node->inputs.push_back(detail::NodeAccess::node(*in));
        node->backward_fn = std::move(backward_fn);
    }
    return detail::NodeAccess::wrap(std::move(node));
}

Node& in0(Node& self) {
    return *self.inputs[0];
}
Node& in1(Node& self) {
    return *self.inputs[1];
}

}  // namespace

// ---- elementwise arithmetic ------------------------------------------------------------

// a, b [n x d] -> [n x d]
Var add(const Var& a, const Var& b) {
    check_same_shape("add", a, b);
    return make_op(evaluate(a.value() + b.value()), {&a, &b}, [](Node& self) {
        accumulate_grad(in0(self), self.grad);
        accumulate_grad(in1(self), self.grad);
    });
}

Var sub(const Var& a, const Var& b) {
    check_same_shape("sub", a, b);
    return make_op(evaluate(a.value() - b.value()), {&a, &b}, [](Node& self) {
        accumulate_grad(in0(self), self.grad);
        accumulate_grad(in1(self), -self.grad);
    });
}

Var mul(const Var& a, const Var& b) {
    check_same_shape("mul", a, b);
    return make_op(evaluate(a.value().cwiseProduct(b.value())), {&a, &b}, [](Node& self) {
        accumulate_grad(in0(self), self.grad.cwiseProduct(in1(self).value));
        accumulate_grad(in1(self), self.grad.cwiseProduct(in0(self).value));
    });
}

Var div(const Var& a, const Var& b) {
    check_same_shape("div", a, b);
    return make_op(evaluate(a.value().cwiseQuotient(b.value())), {&a, &b}, [](Node& self) {
        const Matrix& bv = in1(self).value;
        accumulate_grad(in0(self), self.grad.cwiseQuotient(bv));
        // d(a/b)/db = -a/b^2 = -out/b
        accumulate_grad(in1(self), (-self.grad.array() * self.value.array() / bv.array()).matrix());
    });
}

Var neg(const Var& a) {
    return make_op(evaluate(-a.value()), {&a},
                   [](Node& self) { accumulate_grad(in0(self), -self.grad); });
}

Var scale(const Var& a, float s) {
    return make_op(evaluate(a.value() * s), {&a},
                   [s](Node& self) { accumulate_grad(in0(self), self.grad * s); });
}

// ---- matmul and bias -------------------------------------------------------------------

// a [n x k] x b [k x m] -> [n x m]
Var matmul(const Var& a, const Var& b) {
    if (a.cols() != b.rows())
        fail("matmul",
             "inner dimensions differ: " + shape_str(a.value()) + " x " + shape_str(b.value()));
    return make_op(product(a.value(), false, b.value(), false), {&a, &b}, [](Node& self) {
        Node& na = in0(self);
        Node& nb = in1(self);
        accumulate_product(na, self.grad, false, nb.value, true);  // [n x m] x [m x k]
        accumulate_product(nb, na.value, true, self.grad, false);  // [k x n] x [n x m]
    });
}

// x [n x d] + row [1 x d] -> [n x d]
Var add_row(const Var& x, const Var& row) {
    if (row.rows() != 1 || row.cols() != x.cols())
        fail("add_row", "row " + shape_str(row.value()) + " does not broadcast over " +
                            shape_str(x.value()) + " (expected [1 x " + std::to_string(x.cols()) +
                            "])");
    Matrix out = evaluate(x.value());
    out.rowwise() += row.value().row(0);
    return make_op(std::move(out), {&x, &row}, [](Node& self) {
        accumulate_grad(in0(self), self.grad);
        accumulate_grad(in1(self), self.grad.colwise().sum());
    });
}

// x [n x k] W [k x m] (+ bias [1 x m] on every row) -> [n x m]. matmul and add_row fused: the
// product's buffer is the output, and the backward reads the upstream gradient in place where
// the two-op form copies it from one node into the other. Same bits as add_row(matmul(x, W), b).
Var linear(const Var& x, const Var& weight, const Var& bias) {
    if (x.cols() != weight.rows())
        fail("linear", "input " + shape_str(x.value()) + " does not match weight " +
                           shape_str(weight.value()));
    if (bias.defined() && (bias.rows() != 1 || bias.cols() != weight.cols()))
        fail("linear", "bias " + shape_str(bias.value()) + " does not match weight " +
                           shape_str(weight.value()) + " (expected [1 x " +
                           std::to_string(weight.cols()) + "])");
    Matrix out = product(x.value(), false, weight.value(), false);
    if (bias.defined()) out.rowwise() += bias.value().row(0);
    Backward backward_fn = [](Node& self) {
        Node& nx = in0(self);
        Node& nw = in1(self);
        accumulate_product(nx, self.grad, false, nw.value, true);  // [n x m] x [m x k]
        accumulate_product(nw, nx.value, true, self.grad, false);  // [k x n] x [n x m]
        if (self.inputs.size() == 3) accumulate_grad(*self.inputs[2], self.grad.colwise().sum());
    };
    if (bias.defined())
        return make_op(std::move(out), {&x, &weight, &bias}, std::move(backward_fn));
    return make_op(std::move(out), {&x, &weight}, std::move(backward_fn));
}

// ---- reductions ------------------------------------------------------------------------

// [n x d] -> [1 x 1]
Var sum(const Var& a) {
    return make_op(Matrix::Constant(1, 1, a.value().sum()), {&a}, [](Node& self) {
        Node& na = in0(self);
        accumulate_grad(na, Matrix::Constant(na.value.rows(), na.value.cols(), self.grad(0, 0)));
    });
}

// [n x d] -> [1 x 1]
Var mean(const Var& a) {
    if (a.value().size() == 0) fail("mean", "empty input " + shape_str(a.value()));
    return make_op(Matrix::Constant(1, 1, a.value().mean()), {&a}, [](Node& self) {
        Node& na = in0(self);
        const float g = self.grad(0, 0) / static_cast<float>(na.value.size());
        accumulate_grad(na, Matrix::Constant(na.value.rows(), na.value.cols(), g));
    });
}

// [n x d] -> [1 x d]
Var sum_rows(const Var& a) {
    return make_op(evaluate(a.value().colwise().sum()), {&a}, [](Node& self) {
        accumulate_grad(in0(self), self.grad.replicate(in0(self).value.rows(), 1));
    });
}

// [n x d] -> [n x 1]
Var sum_cols(const Var& a) {
    return make_op(evaluate(a.value().rowwise().sum()), {&a}, [](Node& self) {
        accumulate_grad(in0(self), self.grad.replicate(1, in0(self).value.cols()));
    });
}

// ---- nonlinearities --------------------------------------------------------------------
// NOTE: relu/leaky_relu use the subgradient 0 (resp. slope) at exactly 0, as PyTorch does.

Var relu(const Var& a) {
    return make_op(evaluate(a.value().cwiseMax(0.0f)), {&a}, [](Node& self) {
        accumulate_grad(
            in0(self),
            (self.grad.array() * (in0(self).value.array() > 0.0f).cast<float>()).matrix());
    });
}

Var leaky_relu(const Var& a, float slope) {
    Matrix out = evaluate(
        (a.value().array() > 0.0f).select(a.value().array(), a.value().array() * slope).matrix());
    return make_op(std::move(out), {&a}, [slope](Node& self) {
        accumulate_grad(
            in0(self),
            ((in0(self).value.array() > 0.0f).select(self.grad.array(), self.grad.array() * slope))
                .matrix());
    });
}

Var tanh(const Var& a) {
    return make_op(evaluate(a.value().array().tanh().matrix()), {&a}, [](Node& self) {
        accumulate_grad(in0(self),
                        (self.grad.array() * (1.0f - self.value.array().square())).matrix());
    });
}

// Written as 1/(1+exp(-x)): exp overflow gives inf and a result of exactly 0, never NaN.
Var sigmoid(const Var& a) {
    Matrix out = evaluate((1.0f / (1.0f + (-a.value().array()).exp())).matrix());
    return make_op(std::move(out), {&a}, [](Node& self) {
        const auto s = self.value.array();
        accumulate_grad(in0(self), (self.grad.array() * s * (1.0f - s)).matrix());
    });
}

// gelu(x) = x * Phi(x), Phi the standard normal CDF (erf form).
Var gelu(const Var& a) {
    constexpr float inv_sqrt2 = 0.70710678118654752f;
    constexpr float inv_sqrt_2pi = 0.39894228040143268f;
    Matrix out = evaluate(
        a.value().unaryExpr([](float x) { return 0.5f * x * (1.0f + std::erf(x * inv_sqrt2)); }));
    return make_op(std::move(out), {&a}, [](Node& self) {
        const Matrix& x = in0(self).value;
        // d/dx = Phi(x) + x * phi(x)
        accumulate_grad(in0(self), self.grad.cwiseProduct(x.unaryExpr([](float v) {
            return 0.5f * (1.0f + std::erf(v * inv_sqrt2)) +
                   v * inv_sqrt_2pi * std::exp(-0.5f * v * v);
        })));
    });
}

Var exp(const Var& a) {
    return make_op(evaluate(a.value().array().exp().matrix()), {&a}, [](Node& self) {
        accumulate_grad(in0(self), self.grad.cwiseProduct(self.value));
    });
}

Var log(const Var& a) {
    return make_op(evaluate(a.value().array().log().matrix()), {&a}, [](Node& self) {
        accumulate_grad(in0(self), self.grad.cwiseQuotient(in0(self).value));
    });
}

Var square(const Var& a) {
    return make_op(evaluate(a.value().array().square().matrix()), {&a}, [](Node& self) {
        accumulate_grad(in0(self), (2.0f * self.grad.array() * in0(self).value.array()).matrix());
    });
}

Var sqrt(const Var& a) {
    return make_op(evaluate(a.value().array().sqrt().matrix()), {&a}, [](Node& self) {
        accumulate_grad(in0(self), (0.5f * self.grad.array() / self.value.array()).matrix());
    });
}

// ---- shape ops -------------------------------------------------------------------------

// [n x d_0], [n x d_1], ... -> [n x sum d_i]
Var concat_cols(const std::vector<Var>& parts) {
    if (parts.empty()) fail("concat_cols", "no inputs");
    const Index rows = parts[0].rows();
    Index cols = 0;
    for (std::size_t i = 0; i < parts.size(); ++i) {
        if (parts[i].rows() != rows)
            fail("concat_cols", "input " + std::to_string(i) + " is " +
                                    shape_str(parts[i].value()) + ", input 0 has " +
                                    std::to_string(rows) + " rows");
        cols += parts[i].cols();
    }
    Matrix out = acquire_buffer(rows, cols);
    Index offset = 0;
    for (const Var& p : parts) {
        out.middleCols(offset, p.cols()) = p.value();
        offset += p.cols();
    }
    auto node = std::make_shared<Node>();
    node->value = std::move(out);
    bool needs_grad = false;
    if (!NoGrad::active())
        for (const Var& p : parts) needs_grad = needs_grad || p.requires_grad();
    if (needs_grad) {
        node->requires_grad = true;
        for (const Var& p : parts) node->inputs.push_back(detail::NodeAccess::node(p));
        node->backward_fn = [](Node& self) {
            Index off = 0;
            for (auto& in : self.inputs) {
                const Index c = in->value.cols();
                accumulate_grad(*in, self.grad.middleCols(off, c));
                off += c;
            }
        };
    }
    return detail::NodeAccess::wrap(std::move(node));
}

// [n x d] -> [n x count], columns [start, start + count)
Var slice_cols(const Var& a, Index start, Index count) {
    if (start < 0 || count < 0 || start + count > a.cols())
        fail("slice_cols", "columns [" + std::to_string(start) + ", " +
                               std::to_string(start + count) + ") out of range for " +
                               shape_str(a.value()));
    return make_op(evaluate(a.value().middleCols(start, count)), {&a}, [start, count](Node& self) {
        grad_for_update(in0(self)).middleCols(start, count) += self.grad;
    });
}

// Row-major reinterpretation: [n x d] -> [rows x cols] with rows * cols == n * d. Used to
// flatten a sequence of embeddings [batch*len x dim] into [batch x len*dim].
Var reshape(const Var& a, Index rows, Index cols) {
    if (rows < 0 || cols < 0 || rows * cols != a.value().size())
        fail("reshape", "cannot view " + shape_str(a.value()) + " as " + shape_str(rows, cols));
    Matrix out = evaluate(Eigen::Map<const Matrix>(a.value().data(), rows, cols));
    return make_op(std::move(out), {&a}, [](Node& self) {
        Node& na = in0(self);
        accumulate_grad(
            na, Eigen::Map<const Matrix>(self.grad.data(), na.value.rows(), na.value.cols()));
    });
}

// ---- embedding -------------------------------------------------------------------------

// table [V x d], ids -> [ids.size() x d]
Var embedding(const Var& table, const IdList& ids) {
    const Index vocab = table.rows();
    Matrix out = acquire_buffer(static_cast<Index>(ids.size()), table.cols());
    for (std::size_t i = 0; i < ids.size(); ++i) {
        if (ids[i] < 0 || ids[i] >= vocab)
            fail("embedding", "id " + std::to_string(ids[i]) + " at position " + std::to_string(i) +
                                  " out of range for a table of " + std::to_string(vocab) +
                                  " rows");
        out.row(static_cast<Index>(i)) = table.value().row(ids[i]);
    }
    return make_op(std::move(out), {&table}, [ids](Node& self) {
        Matrix& g = grad_for_update(in0(self));
        // Scatter-add: repeated ids receive the sum of their rows' gradients.
        for (std::size_t i = 0; i < ids.size(); ++i)
            g.row(ids[i]) += self.grad.row(static_cast<Index>(i));
    });
}

// ---- dropout ---------------------------------------------------------------------------

Var dropout(const Var& a, float p, Rng& rng, bool training) {
    if (!(p >= 0.0f && p < 1.0f)) fail("dropout", "p = " + std::to_string(p) + " outside [0, 1)");
    if (!training || p == 0.0f) return a;
    const float keep_scale = 1.0f / (1.0f - p);
    Matrix mask = acquire_buffer(a.rows(), a.cols());
    for (Index i = 0; i < mask.size(); ++i) mask.data()[i] = rng.uniform() < p ? 0.0f : keep_scale;
    Matrix out = evaluate(a.value().cwiseProduct(mask));
    return make_op(std::move(out), {&a}, [mask = SavedMatrix(std::move(mask))](Node& self) {
        accumulate_grad(in0(self), self.grad.cwiseProduct(mask.m));
    });
}

// ---- softmax family --------------------------------------------------------------------

namespace {
// Row-wise log-softmax of z [n x C]: (z - max) - log(sum(exp(z - max))).
// NOTE: subtract the max and the log-sum separately; folding them into one log-sum-exp first
// loses the small log-sum in the large max's rounding (logits of 1000 are off by 1e-4).
Matrix row_log_softmax(const Matrix& z) {
    const Eigen::VectorXf m = z.rowwise().maxCoeff();
    Matrix shifted = acquire_buffer(z.rows(), z.cols());
    shifted.noalias() = z.colwise() - m;
    const Eigen::VectorXf log_sum = shifted.array().exp().rowwise().sum().log().matrix();
    shifted.colwise() -= log_sum;
    return shifted;
}
}  // namespace

// logits [n x C] -> log-probabilities [n x C]. Fused: the backward is
// g - softmax * rowsum(g), using softmax = exp(output).
Var log_softmax(const Var& logits) {
    if (logits.cols() == 0) fail("log_softmax", "no classes in " + shape_str(logits.value()));
    Matrix out = row_log_softmax(logits.value());
    return make_op(std::move(out), {&logits}, [](Node& self) {
        const Eigen::VectorXf gsum = self.grad.rowwise().sum();
        accumulate_grad(
            in0(self),
            (self.grad.array() - self.value.array().exp().colwise() * gsum.array()).matrix());
    });
}

// Composite: exp(log_softmax(x)); rows sum to 1.
Var softmax(const Var& logits) {
    return exp(log_softmax(logits));
}

// ---- losses ----------------------------------------------------------------------------

namespace {

// The classification losses weight log-probability LP[i, c] by
//   a[i, c] = alpha[i] * [c == y_i] + beta[i] * w[c]
// with alpha[i] = (1 - eps) * w[y_i] * s_i / D, beta[i] = eps / C * s_i / D,
// D = sum_i w[y_i] * s_i (w: class weights or 1, s: sample weights or 1, eps: smoothing).
// loss = -sum a[i, c] LP[i, c]. This matches PyTorch's weighted, label-smoothed mean.
struct ClassCoefficients {
    Eigen::VectorXf alpha, beta;  // [n]
    Eigen::RowVectorXf w;         // [C]
};

ClassCoefficients class_coefficients(const char* op, Index n, Index classes, const IdList& labels,
                                     const CrossEntropyOptions& opts) {
    if (n == 0) fail(op, "empty batch");
    if (static_cast<Index>(labels.size()) != n)
        fail(op, std::to_string(labels.size()) + " labels for " + std::to_string(n) + " rows");
    if (!(opts.label_smoothing >= 0.0f && opts.label_smoothing < 1.0f))
        fail(op, "label_smoothing = " + std::to_string(opts.label_smoothing) + " outside [0, 1)");
    if (!opts.class_weights.empty() && static_cast<Index>(opts.class_weights.size()) != classes)
        fail(op, std::to_string(opts.class_weights.size()) + " class weights for " +
                     std::to_string(classes) + " classes");
    if (!opts.sample_weights.empty() && static_cast<Index>(opts.sample_weights.size()) != n)
        fail(op, std::to_string(opts.sample_weights.size()) + " sample weights for " +
                     std::to_string(n) + " rows");
    ClassCoefficients k;
    k.w = Eigen::RowVectorXf::Ones(classes);
    for (Index c = 0; c < static_cast<Index>(opts.class_weights.size()); ++c) {
        const float v = opts.class_weights[static_cast<std::size_t>(c)];
        if (!(v >= 0.0f) || !std::isfinite(v))
            fail(op, "class weight " + std::to_string(c) + " = " + std::to_string(v));
        k.w[c] = v;
    }
    k.alpha.resize(n);
    k.beta.resize(n);
    double denom = 0.0;
    for (Index i = 0; i < n; ++i) {
        const std::int32_t y = labels[static_cast<std::size_t>(i)];
        if (y < 0 || y >= classes)
            fail(op, "label " + std::to_string(y) + " at row " + std::to_string(i) +
                         " out of range for " + std::to_string(classes) + " classes");
        const float s = opts.sample_weights.empty() ? 1.0f : opts.sample_weights[i];
        if (!(s >= 0.0f) || !std::isfinite(s))
            fail(op, "sample weight " + std::to_string(i) + " = " + std::to_string(s));
        k.alpha[i] = (1.0f - opts.label_smoothing) * k.w[y] * s;
        k.beta[i] = opts.label_smoothing / static_cast<float>(classes) * s;
        denom += static_cast<double>(k.w[y]) * s;
    }
    if (!(denom > 0.0)) fail(op, "total weight of the batch is 0");
    k.alpha /= static_cast<float>(denom);
    k.beta /= static_cast<float>(denom);
    return k;
}

// -sum_{i,c} a[i,c] * LP[i,c], given LP only through LP[i, y_i] and sum_c w[c] LP[i,c].
float weighted_nll(const ClassCoefficients& k, const IdList& labels, const Matrix& lp) {
    double loss = 0.0;
    for (Index i = 0; i < lp.rows(); ++i) {
        loss -= static_cast<double>(k.alpha[i]) * lp(i, labels[static_cast<std::size_t>(i)]);
        if (k.beta[i] != 0.0f) loss -= static_cast<double>(k.beta[i]) * lp.row(i).dot(k.w);
    }
    return static_cast<float>(loss);
}

}  // namespace

// logits [n x C], labels [n] -> [1 x 1]. Fused with log_softmax.
// d loss / d z[i,k] = P[i,k] * sum_c a[i,c] - a[i,k]  (P = softmax(z)).
Var cross_entropy(const Var& logits, const IdList& labels, const CrossEntropyOptions& opts) {
    const Matrix& z = logits.value();
    ClassCoefficients k = class_coefficients("cross_entropy", z.rows(), z.cols(), labels, opts);
    // One [n x C] buffer: the shifted logits z - max, then (in place) their exp, then P.
    // NOTE: exp over the whole matrix in one coefficient-wise assignment (vectorized); a
    // rowwise().sum() of an exp expression on a row-major matrix runs a scalar expf per element.
    const Eigen::VectorXf m = z.rowwise().maxCoeff();
    Matrix p = acquire_buffer(z.rows(), z.cols());
    p.noalias() = z.colwise() - m;
    // The loss reads the shifted logits at the label (and their w-weighted sum when smoothing)
    // before p is overwritten: LP[i, c] = shifted[i, c] - log_sum[i].
    Eigen::VectorXf y_shifted(z.rows()), w_shifted(z.rows());
    for (Index i = 0; i < z.rows(); ++i) {
        y_shifted[i] = p(i, labels[static_cast<std::size_t>(i)]);
        w_shifted[i] = k.beta[i] != 0.0f ? p.row(i).dot(k.w) : 0.0f;
    }
    p.array() = p.array().exp();  // unnormalized softmax
    const Eigen::VectorXf log_sum = p.rowwise().sum().array().log().matrix();
    // loss = -sum_i alpha_i LP[i, y_i] + beta_i sum_c w_c LP[i, c].
    const float wsum = k.w.sum();
    double loss = 0.0;
    for (Index i = 0; i < z.rows(); ++i) {
        loss -= static_cast<double>(k.alpha[i]) * (y_shifted[i] - log_sum[i]);
        if (k.beta[i] != 0.0f)
            loss -= static_cast<double>(k.beta[i]) * (w_shifted[i] - wsum * log_sum[i]);
    }
    p.array().colwise() *= (-log_sum).array().exp();  // now P = softmax(z); kept for backward
    return make_op(Matrix::Constant(1, 1, static_cast<float>(loss)), {&logits},
                   [saved = SavedMatrix(std::move(p)), k = std::move(k), labels](Node& self) {
                       const Matrix& p = saved.m;
                       Node& in = in0(self);
                       if (!in.requires_grad) return;
                       const float g = self.grad(0, 0);
                       // d/dz[i,c] = g * (P[i,c] * (alpha_i + beta_i sum w) - a[i,c])
                       const Eigen::VectorXf total =
                           g * (k.alpha + k.beta * k.w.sum()).array().matrix();
                       accumulate_grad(in, (p.array().colwise() * total.array()).matrix());
                       for (Index i = 0; i < p.rows(); ++i) {
                           in.grad(i, labels[static_cast<std::size_t>(i)]) -= g * k.alpha[i];
                           if (k.beta[i] != 0.0f) in.grad.row(i) -= (g * k.beta[i]) * k.w;
                       }
                   });
}

// log_probs [n x C], labels [n] -> [1 x 1]; d loss / d LP[i,c] = -a[i,c].
Var nll(const Var& log_probs, const IdList& labels, const CrossEntropyOptions& opts) {
    const Matrix& lp = log_probs.value();
    ClassCoefficients k = class_coefficients("nll", lp.rows(), lp.cols(), labels, opts);
    const float loss = weighted_nll(k, labels, lp);
    return make_op(Matrix::Constant(1, 1, loss), {&log_probs},
                   [k = std::move(k), labels](Node& self) {
                       const float g = self.grad(0, 0);
                       Matrix& d = grad_for_update(in0(self));
                       for (Index i = 0; i < d.rows(); ++i) {
                           if (k.beta[i] != 0.0f) d.row(i) -= g * k.beta[i] * k.w;
                           d(i, labels[static_cast<std::size_t>(i)]) -= g * k.alpha[i];
                       }
                   });
}

// Composite: mean(square(pred - target)).
Var mse(const Var& pred, const Var& target) {
    check_same_shape("mse", pred, target);
    if (pred.value().size() == 0) fail("mse", "empty batch");
    return mean(square(sub(pred, target)));
}

// Fused, stable form: mean(max(x, 0) - x * t + log1p(exp(-|x|))).
// d/dx = (sigmoid(x) - t) / N, d/dt = -x / N.
Var bce_with_logits(const Var& logits, const Var& targets) {
    check_same_shape("bce_with_logits", logits, targets);
    const Matrix& x = logits.value();
    const Matrix& t = targets.value();
    if (x.size() == 0) fail("bce_with_logits", "empty batch");
    const double total =
        (x.array().max(0.0f) - x.array() * t.array() + (-x.array().abs()).exp().log1p())
            .cast<double>()
            .sum();
    const float loss = static_cast<float>(total / static_cast<double>(x.size()));
    return make_op(Matrix::Constant(1, 1, loss), {&logits, &targets}, [](Node& self) {
        const Matrix& xv = in0(self).value;
        const Matrix& tv = in1(self).value;
        const float g = self.grad(0, 0) / static_cast<float>(xv.size());
        accumulate_grad(in0(self),
                        ((1.0f / (1.0f + (-xv.array()).exp()) - tv.array()) * g).matrix());
        accumulate_grad(in1(self), (xv * -g));
    });
}

}  // namespace edgetune
