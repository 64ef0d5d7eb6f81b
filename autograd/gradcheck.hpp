// gradcheck.hpp — checks an op's backward against finite differences (public, header-only).
//
// Random projection, as in dlib's test_layer: for f(inputs) -> out, draw a seeded R with out's
// shape and let L = sum(out ⊙ R), accumulated in double. The analytic gradient of L is what
// backward(out, R) accumulates into the inputs; the numeric one is the central difference
// (L(x + h) - L(x - h)) / 2h, for every element of every input that requires grad. An element
// passes when |analytic - numeric| <= atol + rtol * |numeric|.
//
// Beyond the values, gradcheck() also verifies the contract every op must keep:
//   - the output requires grad when an input does, and the op computes the same value under
//     NoGrad (the numeric pass runs there, as inference would);
//   - inputs that do not require grad receive no gradient;
//   - backward ADDS into leaf gradients: a second backward over the same graph gives 2g, and a
//     backward into a gradient prefilled with a random G0 gives G0 + g (nothing overwrites).
//
// Limits: two forward passes per checked element, so keep inputs small (up to a few hundred
// elements). f must be deterministic: a dropout mask must come from an Rng seeded inside f.
// The forward pass runs in float32, which bounds the precision: the defaults suit values of
// order 1. Kinks (relu at 0) and domain edges (log at 0) must lie well beyond eps from every
// input element: see InputDomain. Usage:
//
//   GradCheckResult r = gradcheck([](const std::vector<Var>& v) { return matmul(v[0], v[1]); },
//                                 {Var::parameter(a), Var::parameter(b)});
//   if (!r.ok) std::cerr << r.message << "\n";
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

#include "autograd.hpp"

namespace edgetune {

// How gradcheck() adjusts an input's values before checking (the caller's Vars are untouched).
enum class InputDomain {
    any,             // used as given
    away_from_zero,  // |x| < m moves to sign(x) * (m + |x|), m = kink_margin: relu, abs
    positive,        // every x becomes |x| + positive_min: log, sqrt, div denominators
};

struct GradCheckOptions {
    double eps = 1e-2;   // central-difference half step h, in input units
    double atol = 1e-3;  // pass: |analytic - numeric| <= atol + rtol * |numeric|
    double rtol = 1e-2;
    std::uint64_t seed = 0x5eedULL;         // draws the projection R and the prefilled gradient G0
    InputDomain domain = InputDomain::any;  // applies to every input ...
    std::vector<InputDomain> domains{};     // ... except those given here (index-aligned)
    // Both must exceed eps. NOTE: near a pole (1/b, log) the central difference's error grows
    // like (eps / x)^2, so positive inputs start farther out than kinks need.
    float kink_margin = 0.1f;
    float positive_min = 0.25f;
    bool check_accumulation = true;
};

struct GradCheckResult {
    bool ok = false;
    double max_abs_error = 0.0;  // max |analytic - numeric| over all checked elements
    double max_rel_error = 0.0;  // max |a - n| / max(|a|, |n|) over elements where max > atol
    std::string message;         // empty when ok; else names the input index and the element
};

using GradCheckFn = std::function<Var(const std::vector<Var>& inputs)>;

namespace gradcheck_detail {

inline std::string element_str(std::size_t input, Index r, Index c) {
    return "input " + std::to_string(input) + " element (" + std::to_string(r) + ", " +
           std::to_string(c) + ")";
}

inline std::string num_str(double v) {
    std::ostringstream s;
    s.precision(7);
    s << v;
    return s.str();
}

// L = sum(out ⊙ R) in double.
inline double project(const Matrix& out, const Matrix& r) {
    double total = 0.0;
    for (Index i = 0; i < out.rows(); ++i)
        for (Index j = 0; j < out.cols(); ++j)
            total += static_cast<double>(out(i, j)) * static_cast<double>(r(i, j));
    return total;
}

inline Matrix random_normal(Index rows, Index cols, Rng& rng) {
    Matrix m(rows, cols);
    for (Index i = 0; i < m.size(); ++i) m.data()[i] = rng.normal();
    return m;
}

inline void apply_domain(Matrix& m, InputDomain domain, const GradCheckOptions& opts) {
    for (Index i = 0; i < m.size(); ++i) {
        float& x = m.data()[i];
        if (domain == InputDomain::positive) {
            x = std::fabs(x) + opts.positive_min;
        } else if (domain == InputDomain::away_from_zero && std::fabs(x) < opts.kink_margin) {
            const float moved = opts.kink_margin + std::fabs(x);
            x = std::signbit(x) ? -moved : moved;
        }
    }
}

// The leaf's gradient, or zeros of its shape when backward never reached it.
inline Matrix grad_or_zeros(const Var& v) {
    if (v.has_grad()) return v.grad();
    return Matrix::Zero(v.rows(), v.cols());
}

// Compares `got` with `want` elementwise to float32 rounding; fills `message` on mismatch.
inline bool same_to_rounding(const Matrix& got, const Matrix& want, const Matrix& scale,
                             std::size_t input, const std::string& what, std::string& message) {
    if (got.rows() != want.rows() || got.cols() != want.cols()) {
        message = "input " + std::to_string(input) + ": " + what + " has shape " + shape_str(got) +
                  ", expected " + shape_str(want);
        return false;
    }
    for (Index r = 0; r < got.rows(); ++r) {
        for (Index c = 0; c < got.cols(); ++c) {
            const double g = got(r, c), w = want(r, c);
            const double tol = 1e-5 * static_cast<double>(scale(r, c)) + 1e-6;
            if (!(std::fabs(g - w) <= tol)) {
                message = element_str(input, r, c) + ": " + what + " gave " + num_str(g) +
                          ", expected " + num_str(w) + " (backward must add into grads)";
                return false;
            }
        }
    }
    return true;
}

}  // namespace gradcheck_detail

namespace gradcheck_detail {

// Fresh leaves: the inputs' values moved into their domains, their requires_grad flags copied.
// Throws InvalidArgument for bad options or an empty input.
inline std::vector<Var> make_leaves(const std::vector<Var>& inputs, const GradCheckOptions& opts) {
    if (!(opts.eps > 0.0) || !(opts.atol >= 0.0) || !(opts.rtol >= 0.0))
        throw InvalidArgument("[gradcheck] eps must be > 0, atol and rtol >= 0");
    if (opts.domains.size() > inputs.size())
        throw InvalidArgument("[gradcheck] " + std::to_string(opts.domains.size()) +
                              " domains for " + std::to_string(inputs.size()) + " inputs");
    std::vector<Var> leaves;
    for (std::size_t k = 0; k < inputs.size(); ++k) {
        if (!inputs[k].defined())
            throw InvalidArgument("[gradcheck] input " + std::to_string(k) + " is empty");
        const InputDomain domain = k < opts.domains.size() ? opts.domains[k] : opts.domain;
        const float margin = domain == InputDomain::positive ? opts.positive_min : opts.kink_margin;
        if (domain != InputDomain::any && !(static_cast<double>(margin) > opts.eps))
            throw InvalidArgument("[gradcheck] input " + std::to_string(k) + ": margin " +
                                  num_str(margin) + " must exceed eps " + num_str(opts.eps));
        Matrix value = inputs[k].value();
        apply_domain(value, domain, opts);
        leaves.emplace_back(std::move(value), inputs[k].requires_grad());
    }
    return leaves;
}

// The leaves' gradients after one backward of `projection` through `out` (an empty Matrix for a
// leaf that does not require grad); "" or what is wrong in `message`.
inline std::vector<Matrix> analytic_grads(const Var& out, const Matrix& projection,
                                          const std::vector<Var>& leaves, std::string& message) {
    backward(out, projection);
    std::vector<Matrix> analytic;
    for (std::size_t k = 0; k < leaves.size(); ++k) {
        if (!leaves[k].requires_grad()) {
            if (leaves[k].has_grad()) {
                message =
                    "input " + std::to_string(k) + " does not require grad but received a gradient";
                return analytic;
            }
            analytic.emplace_back();
            continue;
        }
        analytic.push_back(grad_or_zeros(leaves[k]));
        if (analytic[k].rows() != leaves[k].rows() || analytic[k].cols() != leaves[k].cols()) {
            message = "input " + std::to_string(k) + ": gradient has shape " +
                      shape_str(analytic[k]) + ", value has shape " + shape_str(leaves[k].value());
            return analytic;
        }
    }
    return analytic;
}

// Accumulation: a second backward over the same graph gives 2g; a backward over a fresh
// graph into a gradient prefilled with G0 gives G0 + g.
inline bool check_accumulation(const GradCheckFn& f, const Var& out, const Matrix& projection,
                               std::vector<Var>& leaves, const std::vector<Matrix>& analytic,
                               Rng& rng, std::string& message) {
    backward(out, projection);
    for (std::size_t k = 0; k < leaves.size(); ++k) {
        if (!leaves[k].requires_grad() || !leaves[k].has_grad()) continue;
        const Matrix twice = 2.0f * analytic[k];
        if (!same_to_rounding(leaves[k].grad(), twice, twice.cwiseAbs(), k,
                              "a second backward over the same graph", message))
            return false;
    }
    std::vector<Matrix> prefill;
    for (std::size_t k = 0; k < leaves.size(); ++k) {
        prefill.push_back(random_normal(leaves[k].rows(), leaves[k].cols(), rng));
        if (leaves[k].requires_grad() && leaves[k].has_grad()) leaves[k].grad_mut() = prefill[k];
    }
    Var again = f(leaves);
    backward(again, projection);
    for (std::size_t k = 0; k < leaves.size(); ++k) {
        if (!leaves[k].requires_grad() || !leaves[k].has_grad()) continue;
        const Matrix want = prefill[k] + analytic[k];
        const Matrix scale = prefill[k].cwiseAbs() + analytic[k].cwiseAbs();
        if (!same_to_rounding(leaves[k].grad(), want, scale, k,
                              "a backward into a prefilled gradient G0", message))
            return false;
    }
    return true;
}

// Under NoGrad, f records no graph and gives the same output as with grad.
inline bool check_no_grad(const GradCheckFn& f, const std::vector<Var>& probes,
                          const Matrix& out_value, std::string& message) {
    const Var o = f(probes);
    bool is_input = false;  // identity ops (dropout in eval) may return their input
    for (const Var& probe : probes) is_input = is_input || o.identity() == probe.identity();
    if (o.requires_grad() && !is_input) {
        message = "output requires grad under NoGrad (a graph was recorded)";
        return false;
    }
    if (o.rows() != out_value.rows() || o.cols() != out_value.cols() || o.value() != out_value) {
        message = "output under NoGrad differs from the output with grad";
        return false;
    }
    return true;
}

// Central differences of L = sum(f(probes) ⊙ projection) at every element of every probe
// that requires grad, against `analytic`; fills the result's errors and names the worst element.
inline void compare_numeric(const GradCheckFn& f, std::vector<Var>& probes, const Matrix& out_value,
                            const Matrix& projection, const std::vector<Matrix>& analytic,
                            const GradCheckOptions& opts, GradCheckResult& result) {
    const auto evaluate = [&]() -> double {
        const Var o = f(probes);
        if (o.rows() != out_value.rows() || o.cols() != out_value.cols())
            throw InvalidArgument("[gradcheck] output shape changed from " + shape_str(out_value) +
                                  " to " + shape_str(o.value()));
        return project(o.value(), projection);
    };
    std::size_t failures = 0;
    double worst_excess = -1.0;  // (|a - n| - tol) of the worst failing element
    for (std::size_t k = 0; k < probes.size(); ++k) {
        if (!probes[k].requires_grad()) continue;
        Matrix& x = probes[k].value_mut();
        for (Index r = 0; r < x.rows(); ++r) {
            for (Index c = 0; c < x.cols(); ++c) {
                const float original = x(r, c);
                // NOTE: divide by the step actually taken in float, not by 2 * eps.
                const float plus = static_cast<float>(original + opts.eps);
                const float minus = static_cast<float>(original - opts.eps);
                x(r, c) = plus;
                const double l_plus = evaluate();
                x(r, c) = minus;
                const double l_minus = evaluate();
                x(r, c) = original;
                const double numeric =
                    (l_plus - l_minus) / (static_cast<double>(plus) - static_cast<double>(minus));
                const double a = analytic[k](r, c);
                const double err = std::fabs(a - numeric);
                const double tol = opts.atol + opts.rtol * std::fabs(numeric);
                const double big = std::fmax(std::fabs(a), std::fabs(numeric));
                if (std::isfinite(err)) {
                    result.max_abs_error = std::fmax(result.max_abs_error, err);
                    if (big > opts.atol)
                        result.max_rel_error = std::fmax(result.max_rel_error, err / big);
                }
                if (!(err <= tol)) {  // also catches NaN
                    ++failures;
                    const double excess = std::isfinite(err) ? err - tol : HUGE_VAL;
                    if (excess > worst_excess) {
                        worst_excess = excess;
                        result.message = element_str(k, r, c) + ": analytic " + num_str(a) +
                                         " vs numeric " + num_str(numeric) + " (|error| " +
                                         num_str(err) + " > tolerance " + num_str(tol) + ")";
                    }
                }
            }
        }
    }
    if (failures > 0)
        result.message += "; " + std::to_string(failures) + " element(s) failed in total";
}

}  // namespace gradcheck_detail

// Checks f's backward at `inputs` (values and requires_grad flags are copied into fresh leaves
// and adjusted per opts.domain(s); the caller's Vars are not modified). Throws InvalidArgument
// for bad options; exceptions thrown by f propagate. Fails (ok == false) when no input
// requires grad, so a test cannot pass by checking nothing.
inline GradCheckResult gradcheck(const GradCheckFn& f, const std::vector<Var>& inputs,
                                 const GradCheckOptions& opts = {}) {
    namespace gd = gradcheck_detail;
    GradCheckResult result;
    std::vector<Var> leaves = gd::make_leaves(inputs, opts);
    bool any_requires_grad = false;
    for (const Var& leaf : leaves) any_requires_grad = any_requires_grad || leaf.requires_grad();
    if (!any_requires_grad) {
        result.message = "no input requires grad: nothing to check";
        return result;
    }

    // Analytic gradient of L = sum(out ⊙ R).
    Rng rng(opts.seed);
    Var out = f(leaves);
    if (!out.defined()) {
        result.message = "f returned an empty Var";
        return result;
    }
    if (!out.requires_grad()) {
        result.message = "output does not require grad although an input does";
        return result;
    }
    const Matrix out_value = out.value();
    if (!out_value.allFinite()) {
        result.message = "output " + shape_str(out_value) + " is not finite";
        return result;
    }
    const Matrix projection = gd::random_normal(out_value.rows(), out_value.cols(), rng);
    const std::vector<Matrix> analytic =
        gd::analytic_grads(out, projection, leaves, result.message);
    if (!result.message.empty()) return result;
    if (opts.check_accumulation &&
        !gd::check_accumulation(f, out, projection, leaves, analytic, rng, result.message))
        return result;

    // Numeric gradient, on separate leaves under NoGrad (no graph recorded).
    NoGrad no_grad;
    std::vector<Var> probes;
    for (const Var& leaf : leaves) probes.emplace_back(leaf.value(), leaf.requires_grad());
    if (!gd::check_no_grad(f, probes, out_value, result.message)) return result;
    gd::compare_numeric(f, probes, out_value, projection, analytic, opts, result);
    result.ok = result.message.empty();
    return result;
}

}  // namespace edgetune
