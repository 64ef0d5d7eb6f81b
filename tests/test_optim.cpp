// test_optim.cpp — optimizers, schedules and clipping against PyTorch 1.13; convergence on
// convex (linear / logistic regression) and non-convex (XOR MLP) problems; bit-identical
// resume from plain-data state; every invalid-option and load_state error path; no heap
// allocation in step() after the first.
//
// The reference numbers below were produced by bench/peers/optim_reference.py with
// torch 1.13 (`/usr/bin/python3 bench/peers/optim_reference.py`) and pasted verbatim:
// 5 steps on a [2 x 3] parameter P0 (plus a [1 x 3] Q0 for groups / skipped gradients) with
// the fixed gradients G0 * S[t] (and H0 * S[t]); every hyperparameter rounded to float32
// before torch saw it. Compared to 1e-6 relative.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "detail/adam_kernel.hpp"
#include "optim.hpp"

using namespace edgetune;

// ---------------------------------------------------------------------------------------
// Heap allocation counter (glibc, non-sanitized builds): malloc/realloc are interposed and
// forwarded to glibc's own entry points. Sanitizers own malloc, so there the check is skipped.
#if defined(__GLIBC__) && !defined(__SANITIZE_ADDRESS__)
#define EDGETUNE_COUNT_ALLOCS 1
namespace {
long g_allocations = 0;
}
extern "C" {
void* __libc_malloc(std::size_t);
void* __libc_calloc(std::size_t, std::size_t);
void* __libc_realloc(void*, std::size_t);
void* __libc_memalign(std::size_t, std::size_t);
void __libc_free(void*);
void* malloc(std::size_t n) noexcept {
    ++g_allocations;
    return __libc_malloc(n);
}
void* calloc(std::size_t n, std::size_t size) noexcept {
    ++g_allocations;
    return __libc_calloc(n, size);
}
void* realloc(void* p, std::size_t n) noexcept {
    ++g_allocations;
    return __libc_realloc(p, n);
}
void* memalign(std::size_t align, std::size_t n) noexcept {
    ++g_allocations;
    return __libc_memalign(align, n);
}
void* aligned_alloc(std::size_t align, std::size_t n) noexcept {
    ++g_allocations;
    return __libc_memalign(align, n);
}
int posix_memalign(void** out, std::size_t align, std::size_t n) noexcept {
    ++g_allocations;
    *out = __libc_memalign(align, n);
    return *out ? 0 : 12;  // ENOMEM
}
void free(void* p) noexcept {
    __libc_free(p);
}
}
#endif

namespace {

// ---------------------------------------------------------------------------------------
// Reference data (generated; see the file comment).

const Matrix P0 = (Matrix(2, 3) << 0.5f, -1.0f, 1.5f, 2.0f, -0.25f, 0.75f).finished();
const Matrix G0 = (Matrix(2, 3) << 1.0f, -2.0f, 0.5f, 0.125f, 3.0f, -0.75f).finished();
const Matrix Q0 = (Matrix(1, 3) << 0.25f, -0.5f, 1.25f).finished();
const Matrix H0 = (Matrix(1, 3) << -0.5f, 0.75f, 2.0f).finished();
const std::vector<float> S = {1.0f, -0.5f, 0.25f, 2.0f, -0.125f};

// sgd_plain_p: [2, 3]
const std::vector<float> sgd_plain_p = {2.3750001e-01f, -4.7500002e-01f, 1.36875e+00f,
                                        1.9671875e+00f, -1.0375e+00f,    9.46875e-01f};
// sgd_momentum_p: [2, 3]
const std::vector<float> sgd_momentum_p = {-1.7280999e-01f, 3.4561998e-01f, 1.163595e+00f,
                                           1.9158987e+00f,  -2.26843e+00f,  1.2546076e+00f};
// sgd_nesterov_p: [2, 3]
const std::vector<float> sgd_nesterov_p = {-3.6802897e-01f, 7.3605794e-01f,  1.0659854e+00f,
                                           1.8914964e+00f,  -2.8540869e+00f, 1.4010218e+00f};
// sgd_dampening_p: [2, 3]
const std::vector<float> sgd_dampening_p = {-4.115999e-02f, 8.231998e-02f,   1.2294201e+00f,
                                            1.9323549e+00f, -1.8734798e+00f, 1.15587e+00f};
// sgd_weight_decay_p: [2, 3]
const std::vector<float> sgd_weight_decay_p = {-1.9751956e-01f, 3.950391e-01f,   1.0700545e+00f,
                                               1.7869722e+00f,  -2.2288988e+00f, 1.2000725e+00f};
// adam_p: [2, 3]
const std::vector<float> adam_p = {2.2373147e-01f, -7.2373146e-01f, 1.2237314e+00f,
                                   1.7237314e+00f, -5.2626854e-01f, 1.0262685e+00f};
// adam_betas_p: [2, 3]
const std::vector<float> adam_betas_p = {3.6361176e-01f, -8.63541e-01f,  1.3637531e+00f,
                                         1.8645935e+00f, -3.864825e-01f, 8.8634115e-01f};
// adam_weight_decay_p: [2, 3]
const std::vector<float> adam_weight_decay_p = {2.09267e-01f,   -7.075217e-01f,  1.1413887e+00f,
                                                1.5331056e+00f, -5.2194524e-01f, 9.8155034e-01f};
// adam_amsgrad_p: [2, 3]
const std::vector<float> adam_amsgrad_p = {2.2884466e-01f, -7.2884464e-01f, 1.2288446e+00f,
                                           1.7288446e+00f, -5.2115536e-01f, 1.0211554e+00f};
// adamw_p: [2, 3]
const std::vector<float> adamw_p = {2.0527829e-01f, -6.807733e-01f,  1.1562682e+00f,
                                    1.6317633e+00f, -5.0796425e-01f, 9.8345935e-01f};
// adamw_amsgrad_p: [2, 3]
const std::vector<float> adamw_amsgrad_p = {2.1038689e-01f, -6.858819e-01f, 1.1613771e+00f,
                                            1.636872e+00f,  -5.028557e-01f, 9.783507e-01f};
// sgd_groups_p: [2, 3]
const std::vector<float> sgd_groups_p = {-1.7280999e-01f, 3.4561998e-01f, 1.163595e+00f,
                                         1.9158987e+00f,  -2.26843e+00f,  1.2546076e+00f};
// sgd_groups_q: [1, 3]
const std::vector<float> sgd_groups_q = {2.8028426e-01f, -5.4378724e-01f, 1.0993584e+00f};
// adamw_groups_p: [2, 3]
const std::vector<float> adamw_groups_p = {2.0527829e-01f, -6.807733e-01f,  1.1562682e+00f,
                                           1.6317633e+00f, -5.0796425e-01f, 9.8345935e-01f};
// adamw_groups_q: [1, 3]
const std::vector<float> adamw_groups_q = {2.7113467e-01f, -5.1494694e-01f, 1.1917384e+00f};
// adam_skip_p: [2, 3]
const std::vector<float> adam_skip_p = {2.2373147e-01f, -7.2373146e-01f, 1.2237314e+00f,
                                        1.7237314e+00f, -5.2626854e-01f, 1.0262685e+00f};
// adam_skip_q: [1, 3]
const std::vector<float> adam_skip_q = {2.4525245e-01f, -4.9525243e-01f, 1.2547475e+00f};
// sgd_skip_p: [2, 3]
const std::vector<float> sgd_skip_p = {-1.7280999e-01f, 3.4561998e-01f, 1.163595e+00f,
                                       1.9158987e+00f,  -2.26843e+00f,  1.2546076e+00f};
// sgd_skip_q: [1, 3]
const std::vector<float> sgd_skip_q = {3.6599997e-01f, -6.74e-01f, 7.8600013e-01f};
// step_lr: lr after 0..16 scheduler steps (base lr 0.1)
const std::vector<double> step_lr = {
    0.10000000149011612,   0.10000000149011612,   0.10000000149011612,   0.05000000074505806,
    0.05000000074505806,   0.05000000074505806,   0.02500000037252903,   0.02500000037252903,
    0.02500000037252903,   0.012500000186264515,  0.012500000186264515,  0.012500000186264515,
    0.0062500000931322575, 0.0062500000931322575, 0.0062500000931322575, 0.0031250000465661287,
    0.0031250000465661287};
// exponential_lr: lr after 0..16 scheduler steps (base lr 0.1)
const std::vector<double> exponential_lr = {
    0.10000000149011612,  0.08999999895691868, 0.08099999691545963,  0.07289999529272324,
    0.06560999402537959,  0.05904899305857748, 0.05314409234488203,  0.04782968184333993,
    0.04304671251865746,  0.03874204024047811, 0.034867835292748076, 0.031381050932159295,
    0.028242945090760807, 0.02541864990832044, 0.022876784311460556, 0.02058910533488946,
    0.01853019431051799};
// cosine_lr: lr after 0..16 scheduler steps (base lr 0.1)
const std::vector<double> cosine_lr = {
    0.10000000149011612,  0.09757729901142283,  0.09054634257391818,   0.07959537118125919,
    0.06579634221326351,  0.05050000076880678,  0.035203659324350045,  0.02140463035635438,
    0.010453658963695383, 0.003422702526190743, 0.0010000000474974513, 0.003422702526190743,
    0.010453658963695414, 0.02140463035635446,  0.03520365932435019,   0.050500000768806994,
    0.0657963422132638};
// warmup_cosine_lr: lr after 0..16 scheduler steps (base lr 0.1)
const std::vector<double> warmup_cosine_lr = {
    0.010000000298023226,  0.03250000059604645,  0.05500000089406967,  0.0775000011920929,
    0.10000000149011612,   0.09623203829451842,  0.0855017869475836,   0.06944283094691187,
    0.050500000768806785,  0.03155717059070171,  0.015498214590029964, 0.004767963243095162,
    0.0010000000474974513, 0.004767963243095161, 0.015498214590029974, 0.03155717059070173,
    0.05050000076880685};
// warmup_step_lr: lr after 0..16 scheduler steps (base lr 0.1)
const std::vector<double> warmup_step_lr = {
    0.02500000037252903,   0.05000000074505806,   0.07500000111758709,   0.10000000149011612,
    0.10000000149011612,   0.05000000074505806,   0.05000000074505806,   0.02500000037252903,
    0.02500000037252903,   0.012500000186264515,  0.012500000186264515,  0.0062500000931322575,
    0.0062500000931322575, 0.0031250000465661287, 0.0031250000465661287, 0.0015625000232830644,
    0.0015625000232830644};
// plateau_lr: lr after 0..18 scheduler steps (base lr 0.1)
const std::vector<double> plateau_lr = {
    0.10000000149011612,  0.10000000149011612,  0.10000000149011612,  0.10000000149011612,
    0.10000000149011612,  0.05000000074505806,  0.05000000074505806,  0.05000000074505806,
    0.05000000074505806,  0.05000000074505806,  0.02500000037252903,  0.02500000037252903,
    0.02500000037252903,  0.02500000037252903,  0.019999999552965164, 0.019999999552965164,
    0.019999999552965164, 0.019999999552965164, 0.019999999552965164};
// plateau metrics fed to step(metric)
const std::vector<float> plateau_metrics = {1e+00f, 9e-01f, 9.5e-01f, 8.99e-01f, 9.2e-01f, 9.3e-01f,
                                            5e-01f, 6e-01f, 6e-01f,   6e-01f,    6e-01f,   6e-01f,
                                            6e-01f, 6e-01f, 6e-01f,   6e-01f,    6e-01f,   6e-01f};

// ---------------------------------------------------------------------------------------
// Helpers

// Pure relative comparison (scale 0): |a - e| < rel * max(|a|, |e|).
void check_close(const Matrix& actual, const std::vector<float>& expected, double rel = 1e-6) {
    REQUIRE(static_cast<std::size_t>(actual.size()) == expected.size());
    for (std::size_t i = 0; i < expected.size(); ++i) {
        INFO("element ", i);
        CHECK(actual.data()[i] == doctest::Approx(expected[i]).epsilon(rel).scale(0));
    }
}

bool same_bytes(const Matrix& a, const Matrix& b) {
    return a.rows() == b.rows() && a.cols() == b.cols() &&
           std::memcmp(a.data(), b.data(), sizeof(float) * static_cast<std::size_t>(a.size())) == 0;
}

void set_grad(Var& v, const Matrix& g) {
    v.zero_grad();
    v.grad_mut() = g;
}

// The reference loop: 5 steps, p gets G0 * S[t]; q (if given) gets H0 * S[t] except at the
// steps listed in `skip`.
void run_reference(Optimizer& opt, Var p, Var q = Var(), std::vector<int> skip = {}) {
    for (int t = 0; t < 5; ++t) {
        opt.zero_grad();
        set_grad(p, G0 * S[static_cast<std::size_t>(t)]);
        const bool skipped = std::find(skip.begin(), skip.end(), t) != skip.end();
        if (q.defined() && !skipped) set_grad(q, H0 * S[static_cast<std::size_t>(t)]);
        opt.step();
    }
}

template <typename Opt, typename Options>
Matrix steps_single(const Options& opts) {
    Var p = Var::parameter(P0);
    Opt opt(std::vector<Var>{p}, opts);
    run_reference(opt, p);
    return p.value();
}

// Throws InvalidArgument whose message is exactly `message`.
template <typename F>
void check_throws_message(F&& f, const std::string& message) {
    try {
        f();
        FAIL("no exception; expected: ", message);
    } catch (const InvalidArgument& e) {
        CHECK(std::string(e.what()) == message);
    }
}

// Throws InvalidArgument whose message contains every part.
template <typename F>
void check_throws_containing(F&& f, const std::vector<std::string>& parts) {
    try {
        f();
        FAIL("no exception");
    } catch (const InvalidArgument& e) {
        const std::string what = e.what();
        for (const std::string& part : parts) {
            INFO("message: ", what);
            CHECK(what.find(part) != std::string::npos);
        }
    }
}

Matrix randn(Index rows, Index cols, Rng& rng) {
    Matrix m(rows, cols);
    for (Index i = 0; i < m.size(); ++i) m.data()[i] = rng.normal();
    return m;
}

// Linear regression data: y = X W + b exactly, X [n x 3].
struct Regression {
    Matrix x, y, w_true, b_true;
};
Regression make_regression(Index n, std::uint64_t seed) {
    Rng rng(seed);
    Regression r;
    r.x = randn(n, 3, rng);
    r.w_true = (Matrix(3, 1) << 1.5f, -2.0f, 0.5f).finished();
    r.b_true = (Matrix(1, 1) << 0.3f).finished();
    r.y = (r.x * r.w_true).rowwise() + r.b_true.row(0);
    return r;
}

// One full-batch gradient of mse(X W + b, y) into params {W [3 x 1], b [1 x 1]}; the loss.
float regression_grad(const Regression& r, std::vector<Var>& params) {
    for (Var& p : params) p.zero_grad();
    Var loss = mse(add_row(matmul(Var(r.x), params[0]), params[1]), Var(r.y));
    backward(loss);
    return loss.item();
}

}  // namespace

// ---------------------------------------------------------------------------------------
// Exact steps against PyTorch

TEST_CASE("Sgd matches torch.optim.SGD step by step") {
    check_close(steps_single<Sgd>(SgdOptions{.lr = 0.1f}), sgd_plain_p);
    check_close(steps_single<Sgd>(SgdOptions{.lr = 0.1f, .momentum = 0.9f}), sgd_momentum_p);
    check_close(steps_single<Sgd>(SgdOptions{.lr = 0.1f, .momentum = 0.9f, .nesterov = true}),
                sgd_nesterov_p);
    check_close(steps_single<Sgd>(SgdOptions{.lr = 0.1f, .momentum = 0.9f, .dampening = 0.5f}),
                sgd_dampening_p);
    check_close(steps_single<Sgd>(SgdOptions{.lr = 0.1f, .momentum = 0.9f, .weight_decay = 0.05f}),
                sgd_weight_decay_p);
}

TEST_CASE("Adam and AdamW match torch.optim step by step") {
    check_close(steps_single<Adam>(AdamOptions{.lr = 0.1f}), adam_p);
    check_close(
        steps_single<Adam>(AdamOptions{.lr = 0.05f, .beta1 = 0.8f, .beta2 = 0.99f, .eps = 1e-3f}),
        adam_betas_p);
    check_close(steps_single<Adam>(AdamOptions{.lr = 0.1f, .weight_decay = 0.1f}),
                adam_weight_decay_p);
    check_close(steps_single<Adam>(AdamOptions{.lr = 0.1f, .beta2 = 0.9f, .amsgrad = true}),
                adam_amsgrad_p);
    check_close(steps_single<AdamW>(AdamWOptions{.lr = 0.1f, .weight_decay = 0.1f}), adamw_p);
    check_close(steps_single<AdamW>(
                    AdamWOptions{.lr = 0.1f, .beta2 = 0.9f, .weight_decay = 0.1f, .amsgrad = true}),
                adamw_amsgrad_p);
}

TEST_CASE("parameter groups have their own lr and weight decay") {
    {
        Var p = Var::parameter(P0), q = Var::parameter(Q0);
        Sgd opt(std::vector<ParamGroup>{{.params = {p}},
                                        {.params = {q}, .lr = 0.01f, .weight_decay = 0.1f}},
                {.lr = 0.1f, .momentum = 0.9f});
        CHECK(opt.num_groups() == 2);
        CHECK(opt.lr(1) == 0.01f);
        CHECK(opt.weight_decay(1) == 0.1f);
        run_reference(opt, p, q);
        check_close(p.value(), sgd_groups_p);
        check_close(q.value(), sgd_groups_q);
    }
    {
        Var p = Var::parameter(P0), q = Var::parameter(Q0);
        AdamW opt(std::vector<ParamGroup>{{.params = {p}},
                                          {.params = {q}, .lr = 0.01f, .weight_decay = 0.5f}},
                  {.lr = 0.1f, .weight_decay = 0.1f});
        run_reference(opt, p, q);
        check_close(p.value(), adamw_groups_p);
        check_close(q.value(), adamw_groups_q);
    }
}

TEST_CASE("parameters without a gradient are skipped (Adam counts steps per parameter)") {
    {
        Var p = Var::parameter(P0), q = Var::parameter(Q0);
        Adam opt(std::vector<Var>{p, q}, {.lr = 0.1f});
        run_reference(opt, p, q, {0, 2});
        check_close(p.value(), adam_skip_p);
        check_close(q.value(), adam_skip_q);
    }
    {
        Var p = Var::parameter(P0), q = Var::parameter(Q0);
        Sgd opt(std::vector<Var>{p, q}, {.lr = 0.1f, .momentum = 0.9f});
        run_reference(opt, p, q, {0, 2});
        check_close(p.value(), sgd_skip_p);
        check_close(q.value(), sgd_skip_q);
    }
    {
        Var p = Var::parameter(P0);
        Adam opt(std::vector<Var>{p});
        opt.step();  // no gradient at all: nothing moves, no state is created
        CHECK(same_bytes(p.value(), P0));
        CHECK(opt.state().slots[0].empty());
        CHECK(opt.step_count() == 1);
    }
}

TEST_CASE("make_optimizer builds the optimizer named by the spec") {
    Var p = Var::parameter(P0);
    CHECK(make_optimizer(SgdOptions{.lr = 0.1f}, {p})->kind() == "sgd");
    CHECK(make_optimizer(AdamOptions{.lr = 3e-4f}, {p})->kind() == "adam");
    const OptimizerSpec spec = AdamWOptions{.lr = 0.1f, .weight_decay = 0.1f};
    std::unique_ptr<Optimizer> opt = make_optimizer(spec, {p});
    CHECK(opt->kind() == "adamw");
    CHECK(opt->lr() == 0.1f);
    run_reference(*opt, p);
    check_close(p.value(), adamw_p);
}

TEST_CASE("learning rate 0 leaves parameters unchanged") {
    Var a = Var::parameter(P0), b = Var::parameter(P0), c = Var::parameter(P0);
    Sgd sgd(std::vector<Var>{a}, {.lr = 0.0f, .momentum = 0.9f, .weight_decay = 0.1f});
    Adam adam(std::vector<Var>{b}, {.lr = 0.0f, .weight_decay = 0.1f, .amsgrad = true});
    AdamW adamw(std::vector<Var>{c}, {.lr = 0.0f, .weight_decay = 0.1f});
    run_reference(sgd, a);
    run_reference(adam, b);
    run_reference(adamw, c);
    CHECK(same_bytes(a.value(), P0));
    CHECK(same_bytes(b.value(), P0));
    CHECK(same_bytes(c.value(), P0));

    // set_lr(0) mid-run freezes too.
    Var d = Var::parameter(P0);
    Adam opt(std::vector<Var>{d}, {.lr = 0.1f});
    run_reference(opt, d);
    const Matrix before = d.value();
    opt.set_lr(0.0f);
    run_reference(opt, d);
    CHECK(same_bytes(d.value(), before));
}

// ---------------------------------------------------------------------------------------
// Schedules against PyTorch

namespace {

// lrs of group 0 after 0..n schedule steps (base lr 0.1).
std::vector<float> schedule_run(const ScheduleSpec& spec, std::size_t n,
                                const std::vector<float>& metrics = {}) {
    Var p = Var::parameter(Matrix::Zero(1, 1));
    Sgd opt(std::vector<Var>{p}, {.lr = 0.1f});
    Schedule sched(opt, spec);
    std::vector<float> lrs = {opt.lr()};
    for (std::size_t t = 0; t < n; ++t) {
        if (metrics.empty()) {
            sched.step();
        } else {
            sched.step(metrics[t]);
        }
        lrs.push_back(opt.lr());
    }
    return lrs;
}

void check_lrs(const std::vector<float>& got, const std::vector<double>& want, std::size_t n) {
    REQUIRE(got.size() >= n);
    REQUIRE(want.size() >= n);
    for (std::size_t t = 0; t < n; ++t) {
        INFO("position ", t);
        CHECK(got[t] == doctest::Approx(want[t]).epsilon(1e-6).scale(0));
    }
}

}  // namespace

TEST_CASE("StepSchedule and ExponentialSchedule match torch StepLR / ExponentialLR") {
    check_lrs(schedule_run(StepSchedule{.step_size = 3, .gamma = 0.5f}, 16), step_lr, 17);
    check_lrs(schedule_run(ExponentialSchedule{.gamma = 0.9f}, 16), exponential_lr, 17);
    check_lrs(schedule_run(ConstantSchedule{}, 5), std::vector<double>(6, 0.1f), 6);
}

TEST_CASE("CosineSchedule matches torch CosineAnnealingLR up to T_max, then holds min_lr") {
    const std::vector<float> lrs =
        schedule_run(CosineSchedule{.total_steps = 10, .min_lr = 0.001f}, 16);
    check_lrs(lrs, cosine_lr, 11);
    for (std::size_t t = 10; t < lrs.size(); ++t) CHECK(lrs[t] == 0.001f);
    // Hand-computed midpoint: min + (base - min) / 2.
    CHECK(schedule_lr(CosineSchedule{.total_steps = 10, .min_lr = 0.001f}, 0.1f, 5) ==
          doctest::Approx(0.0505).epsilon(1e-6).scale(0));
}

TEST_CASE("WarmupSchedule matches torch SequentialLR(LinearLR, ...)") {
    const std::vector<float> cos =
        schedule_run(WarmupSchedule{.warmup_steps = 4,
                                    .start_factor = 0.1f,
                                    .then = CosineSchedule{.total_steps = 8, .min_lr = 0.001f}},
                     16);
    check_lrs(cos, warmup_cosine_lr, 13);
    CHECK(cos[16] == 0.001f);
    check_lrs(schedule_run(WarmupSchedule{.warmup_steps = 3,
                                          .start_factor = 0.25f,
                                          .then = StepSchedule{.step_size = 2, .gamma = 0.5f}},
                           16),
              warmup_step_lr, 17);
    // Hand-computed: start 0 reaches base linearly; no warmup is the schedule itself.
    CHECK(schedule_lr(WarmupSchedule{.warmup_steps = 4, .start_factor = 0.0f}, 1.0f, 1) == 0.25f);
    CHECK(schedule_lr(WarmupSchedule{.warmup_steps = 0, .then = ExponentialSchedule{.gamma = 0.5f}},
                      1.0f, 2) == 0.25f);
}

TEST_CASE("PlateauSchedule matches torch ReduceLROnPlateau") {
    const PlateauSchedule spec{
        .factor = 0.5f, .patience = 2, .threshold = 0.01f, .cooldown = 1, .min_lr = 0.02f};
    check_lrs(schedule_run(spec, plateau_metrics.size(), plateau_metrics), plateau_lr,
              plateau_lr.size());

    // maximize: a rising metric never reduces; a flat one does after patience + 1 steps.
    Var p = Var::parameter(Matrix::Zero(1, 1));
    Sgd opt(std::vector<Var>{p}, {.lr = 1.0f});
    Schedule sched(opt, PlateauSchedule{.factor = 0.5f, .patience = 1, .maximize = true});
    for (float acc : {0.1f, 0.2f, 0.3f}) sched.step(acc);
    CHECK(opt.lr() == 1.0f);
    sched.step(0.3f);
    CHECK(opt.lr() == 1.0f);
    sched.step(0.3f);
    CHECK(opt.lr() == 0.5f);
}

TEST_CASE("a schedule scales every group from its own base lr") {
    Var p = Var::parameter(P0), q = Var::parameter(Q0);
    Adam opt(std::vector<ParamGroup>{{.params = {p}}, {.params = {q}, .lr = 0.01f}}, {.lr = 0.1f});
    Schedule sched(opt, StepSchedule{.step_size = 1, .gamma = 0.5f});
    sched.step();
    CHECK(opt.lr(0) == 0.05f);
    CHECK(opt.lr(1) == 0.005f);
    CHECK(sched.lr_at(3) == doctest::Approx(0.0125f));
    std::unique_ptr<Schedule> made = make_schedule(ConstantSchedule{}, opt);
    CHECK(opt.lr(1) == 0.005f);  // base lrs are the lrs at creation
}

// ---------------------------------------------------------------------------------------
// Clipping

TEST_CASE("clip_grad_norm returns the norm before clipping and clips to max_norm") {
    Var a = Var::parameter(Matrix::Zero(2, 2)), b = Var::parameter(Matrix::Zero(1, 3));
    Var none = Var::parameter(Matrix::Zero(1, 1));  // no gradient: ignored, left without one
    set_grad(a, (Matrix(2, 2) << 3.0f, 0.0f, 0.0f, 4.0f).finished());
    set_grad(b, (Matrix(1, 3) << 0.0f, 12.0f, 0.0f).finished());
    const std::vector<Var> params = {a, b, none};

    CHECK(clip_grad_norm(params, 100.0f) == 13.0f);  // below max_norm: unchanged
    CHECK(a.grad()(1, 1) == 4.0f);

    CHECK(clip_grad_norm(params, 1.0f) == 13.0f);
    const double clipped =
        std::sqrt(a.grad().cast<double>().squaredNorm() + b.grad().cast<double>().squaredNorm());
    CHECK(clipped == doctest::Approx(1.0).epsilon(1e-6));
    CHECK(a.grad()(0, 0) == doctest::Approx(3.0f / 13.0f));
    CHECK(!none.has_grad());
    CHECK(clip_grad_norm(params, 1.0f) == doctest::Approx(1.0f));

    // Squares beyond FLT_MAX are summed in double.
    set_grad(a, Matrix::Constant(2, 2, 1e30f));
    b.zero_grad();
    CHECK(clip_grad_norm(params, 1.0f) == doctest::Approx(2e30f));
    CHECK(a.grad()(0, 0) == doctest::Approx(0.5f));

    // A non-finite norm is returned and the gradients are left alone.
    set_grad(a,
             (Matrix(2, 2) << 1.0f, std::numeric_limits<float>::infinity(), 0.0f, 0.0f).finished());
    CHECK(std::isinf(clip_grad_norm(params, 1.0f)));
    CHECK(a.grad()(0, 0) == 1.0f);
    set_grad(a, Matrix::Constant(2, 2, std::nanf("")));
    CHECK(std::isnan(clip_grad_norm(params, 1.0f)));
}

TEST_CASE("clip_grad_value clamps every element into [-c, c]") {
    Var a = Var::parameter(Matrix::Zero(2, 3));
    Var none = Var::parameter(Matrix::Zero(1, 1));
    set_grad(a, (Matrix(2, 3) << -3.0f, -0.5f, 0.0f, 0.25f, 1.0f, 7.0f).finished());
    clip_grad_value({a, none}, 0.5f);
    const Matrix want = (Matrix(2, 3) << -0.5f, -0.5f, 0.0f, 0.25f, 0.5f, 0.5f).finished();
    CHECK(same_bytes(a.grad(), want));
    CHECK(!none.has_grad());
}

// ---------------------------------------------------------------------------------------
// Convergence

TEST_CASE("linear regression recovers the true weights (Sgd momentum, Adam + cosine)") {
    const Regression r = make_regression(128, 7);
    for (int which = 0; which < 3; ++which) {
        std::vector<Var> params = {Var::parameter(Matrix::Zero(3, 1)),
                                   Var::parameter(Matrix::Zero(1, 1))};
        std::unique_ptr<Optimizer> opt;
        ScheduleSpec spec = ConstantSchedule{};
        if (which == 0) {
            opt = make_optimizer(SgdOptions{.lr = 0.1f, .momentum = 0.9f}, params);
        } else if (which == 1) {
            opt =
                make_optimizer(SgdOptions{.lr = 0.05f, .momentum = 0.9f, .nesterov = true}, params);
        } else {
            opt = make_optimizer(AdamOptions{.lr = 0.05f}, params);
            spec = CosineSchedule{.total_steps = 600};
        }
        Schedule sched(*opt, spec);
        const float first = regression_grad(r, params);
        float loss = first;
        for (int t = 0; t < 600; ++t) {
            loss = regression_grad(r, params);
            opt->step();
            sched.step();
        }
        INFO("optimizer ", which, " loss ", first, " -> ", loss);
        CHECK(loss < 1e-6f);
        CHECK((params[0].value() - r.w_true).cwiseAbs().maxCoeff() < 1e-3f);
        CHECK(std::abs(params[1].value()(0, 0) - r.b_true(0, 0)) < 1e-3f);
    }
}

TEST_CASE("logistic regression recovers the true weights (AdamW without decay, Sgd)") {
    // Soft targets sigmoid(X w + b): the cross-entropy minimum is exactly at (w, b).
    Rng rng(11);
    const Matrix x = randn(256, 2, rng);
    const Matrix w_true = (Matrix(2, 1) << 2.0f, -1.0f).finished();
    const float b_true = 0.5f;
    const Matrix logits = (x * w_true).array() + b_true;
    const Matrix y = (1.0f / (1.0f + (-logits.array()).exp())).matrix();
    for (int which = 0; which < 2; ++which) {
        std::vector<Var> params = {Var::parameter(Matrix::Zero(2, 1)),
                                   Var::parameter(Matrix::Zero(1, 1))};
        std::unique_ptr<Optimizer> opt =
            which == 0 ? make_optimizer(AdamWOptions{.lr = 0.05f, .weight_decay = 0.0f}, params)
                       : make_optimizer(SgdOptions{.lr = 2.0f, .momentum = 0.9f}, params);
        Schedule sched(*opt, which == 0 ? ScheduleSpec(CosineSchedule{.total_steps = 1000})
                                        : ScheduleSpec(ConstantSchedule{}));
        for (int t = 0; t < 1000; ++t) {
            opt->zero_grad();
            backward(bce_with_logits(add_row(matmul(Var(x), params[0]), params[1]), Var(y)));
            opt->step();
            sched.step();
        }
        INFO("optimizer ", which, " w = ", params[0].value()(0, 0), ", ", params[0].value()(1, 0),
             " b = ", params[1].value()(0, 0));
        CHECK((params[0].value() - w_true).cwiseAbs().maxCoeff() < 1e-2f);
        CHECK(std::abs(params[1].value()(0, 0) - b_true) < 1e-2f);
    }
}

TEST_CASE("a tiny MLP learns XOR (non-convex) with Adam + warmup + clipping") {
    Rng rng(3);
    auto net = mlp({2, 8, 1}, rng, {.activation = Activation::tanh});
    const Matrix x = (Matrix(4, 2) << 0, 0, 0, 1, 1, 0, 1, 1).finished();
    const Matrix y = (Matrix(4, 1) << 0, 1, 1, 0).finished();
    std::vector<Var> params = net->parameters();
    Adam opt(params, {.lr = 0.05f});
    Schedule sched(opt,
                   WarmupSchedule{.warmup_steps = 20, .then = CosineSchedule{.total_steps = 480}});
    float loss = 0.0f;
    for (int t = 0; t < 500; ++t) {
        opt.zero_grad();
        Var l = bce_with_logits(net->forward(Var(x)), Var(y));
        loss = l.item();
        backward(l);
        clip_grad_norm(params, 5.0f);
        opt.step();
        sched.step();
    }
    CHECK(loss < 0.05f);
    const Matrix out = net->forward(Var(x)).value();
    for (Index i = 0; i < 4; ++i) CHECK((out(i, 0) > 0.0f) == (y(i, 0) > 0.5f));
}

// ---------------------------------------------------------------------------------------
// Resume from plain data

namespace {

struct Snapshot {
    std::vector<Matrix> values;
    OptimizerState opt;
    ScheduleState sched;
};

// Trains `steps` regression steps with `spec` from `from` (or from zero weights) and returns
// the final parameters, optimizer state and schedule position. `plateau` feeds the loss.
Snapshot train(const OptimizerSpec& ospec, const ScheduleSpec& sspec, int steps,
               const Snapshot* from) {
    const Regression r = make_regression(64, 5);
    std::vector<Var> params = {Var::parameter(Matrix::Zero(3, 1)),
                               Var::parameter(Matrix::Zero(1, 1))};
    if (from) {
        for (std::size_t k = 0; k < params.size(); ++k) params[k].value_mut() = from->values[k];
    }
    std::unique_ptr<Optimizer> opt = make_optimizer(ospec, params);
    if (from) opt->load_state(from->opt);
    std::unique_ptr<Schedule> sched = make_schedule(sspec, *opt);
    if (from) sched->load_state(from->sched);
    for (int t = 0; t < steps; ++t) {
        const float loss = regression_grad(r, params);
        opt->step();
        sched->step(loss);
    }
    Snapshot s;
    for (const Var& p : params) s.values.push_back(p.value());
    s.opt = opt->state();
    s.sched = sched->state();
    return s;
}

}  // namespace

TEST_CASE("resuming from parameters + state + schedule position is bit-identical") {
    const std::vector<OptimizerSpec> optimizers = {
        SgdOptions{.lr = 0.05f, .momentum = 0.9f},
        SgdOptions{.lr = 0.05f, .momentum = 0.9f, .weight_decay = 1e-3f, .nesterov = true},
        AdamOptions{.lr = 0.05f},
        AdamOptions{.lr = 0.05f, .weight_decay = 1e-3f, .amsgrad = true},
        AdamWOptions{.lr = 0.05f},
    };
    const std::vector<ScheduleSpec> schedules = {
        WarmupSchedule{.warmup_steps = 5, .then = CosineSchedule{.total_steps = 30}},
        StepSchedule{.step_size = 4, .gamma = 0.7f},
        PlateauSchedule{.factor = 0.5f, .patience = 1, .threshold = 0.2f},
    };
    for (std::size_t i = 0; i < optimizers.size(); ++i) {
        for (std::size_t j = 0; j < schedules.size(); ++j) {
            INFO("optimizer ", i, " schedule ", j);
            const Snapshot whole = train(optimizers[i], schedules[j], 25, nullptr);
            const Snapshot first = train(optimizers[i], schedules[j], 10, nullptr);
            const Snapshot resumed = train(optimizers[i], schedules[j], 15, &first);
            for (std::size_t k = 0; k < whole.values.size(); ++k)
                CHECK(same_bytes(resumed.values[k], whole.values[k]));
            CHECK(resumed.opt.step == 25);
            CHECK(resumed.opt.lrs == whole.opt.lrs);
            CHECK(resumed.sched.step == whole.sched.step);
            for (std::size_t k = 0; k < whole.opt.slots.size(); ++k)
                for (std::size_t b = 0; b < whole.opt.slots[k].size(); ++b)
                    CHECK(same_bytes(resumed.opt.slots[k][b], whole.opt.slots[k][b]));
        }
    }
}

TEST_CASE("state() is plain data index-aligned with the parameters") {
    Var p = Var::parameter(P0), q = Var::parameter(Q0);
    Adam opt(std::vector<Var>{p, q}, {.lr = 0.1f, .amsgrad = true});
    CHECK(opt.state().slots[0].empty());
    run_reference(opt, p, q);
    const OptimizerState s = opt.state();
    CHECK(s.kind == "adam");
    CHECK(s.step == 5);
    CHECK(s.lrs == std::vector<float>{0.1f});
    REQUIRE(s.slots.size() == 2);
    REQUIRE(s.slots[1].size() == 3);
    for (const Matrix& buf : s.slots[1]) CHECK(shape_str(buf) == shape_str(Q0));
    CHECK(Sgd(std::vector<Var>{p}, {.lr = 0.1f}).state().kind == "sgd");
}

// ---------------------------------------------------------------------------------------
// Errors

TEST_CASE("invalid optimizer options throw InvalidArgument naming the option and value") {
    const std::vector<Var> ps = {Var::parameter(P0)};
    const float nan = std::nanf("");
    const float inf = std::numeric_limits<float>::infinity();
    check_throws_message([&] { Sgd(ps, {.lr = -0.1f}); }, "[Sgd] lr = -0.1 must be >= 0");
    check_throws_message([&] { Sgd(ps, {.lr = nan}); }, "[Sgd] lr = nan must be >= 0");
    check_throws_message([&] { Sgd(ps, {.lr = inf}); }, "[Sgd] lr = inf must be finite");
    check_throws_message([&] { Sgd(ps, {.momentum = -0.5f}); },
                         "[Sgd] momentum = -0.5 must be >= 0");
    check_throws_message([&] { Sgd(ps, {.dampening = 1.5f}); },
                         "[Sgd] dampening = 1.5 outside [0, 1]");
    check_throws_message([&] { Sgd(ps, {.weight_decay = -1.0f}); },
                         "[Sgd] weight_decay = -1 must be >= 0");
    check_throws_message([&] { Sgd(ps, {.nesterov = true}); },
                         "[Sgd] nesterov requires momentum > 0 (momentum = 0)");
    check_throws_message([&] { Sgd(ps, {.momentum = 0.9f, .dampening = 0.5f, .nesterov = true}); },
                         "[Sgd] nesterov requires dampening = 0 (dampening = 0.5)");

    check_throws_message([&] { Adam(ps, {.lr = -1e-3f}); }, "[Adam] lr = -0.001 must be >= 0");
    check_throws_message([&] { Adam(ps, {.lr = nan}); }, "[Adam] lr = nan must be >= 0");
    check_throws_message([&] { Adam(ps, {.beta1 = -0.1f}); }, "[Adam] beta1 = -0.1 outside [0, 1)");
    check_throws_message([&] { Adam(ps, {.beta1 = 1.0f}); }, "[Adam] beta1 = 1 outside [0, 1)");
    check_throws_message([&] { Adam(ps, {.beta2 = 1.5f}); }, "[Adam] beta2 = 1.5 outside [0, 1)");
    check_throws_message([&] { Adam(ps, {.beta2 = nan}); }, "[Adam] beta2 = nan outside [0, 1)");
    check_throws_message([&] { Adam(ps, {.eps = 0.0f}); }, "[Adam] eps = 0 must be > 0");
    check_throws_message([&] { Adam(ps, {.eps = -1e-8f}); }, "[Adam] eps = -1e-08 must be > 0");
    check_throws_message([&] { Adam(ps, {.weight_decay = -0.1f}); },
                         "[Adam] weight_decay = -0.1 must be >= 0");
    check_throws_message([&] { AdamW(ps, {.beta2 = 1.5f}); }, "[AdamW] beta2 = 1.5 outside [0, 1)");
    check_throws_message([&] { AdamW(ps, {.weight_decay = nan}); },
                         "[AdamW] weight_decay = nan must be >= 0");
    check_throws_message([&] { AdamW(ps, {.eps = inf}); }, "[AdamW] eps = inf must be finite");
}

TEST_CASE("invalid parameter lists, groups and lrs throw InvalidArgument") {
    Var p = Var::parameter(P0);
    check_throws_message([] { Adam(std::vector<Var>{}); }, "[Adam] empty parameter list");
    check_throws_message(
        [&] {
            Sgd(std::vector<Var>{p, Var()});
        },
        "[Sgd] parameter 1 is an empty Var");
    check_throws_message(
        [&] {
            Adam(std::vector<Var>{p, Var::parameter(Q0), p});
        },
        "[Adam] parameter 2 is also parameter 0");
    check_throws_message(
        [&] {
            Adam(std::vector<ParamGroup>{{.params = {p}}, {.params = {}, .lr = -1.0f}});
        },
        "[Adam] group 1 lr = -1 must be >= 0");
    check_throws_message(
        [&] { Sgd(std::vector<ParamGroup>{{.params = {p}, .weight_decay = -2.0f}}); },
        "[Sgd] group 0 weight_decay = -2 must be >= 0");
    Adam opt(std::vector<Var>{p});
    check_throws_message([&] { opt.set_lr(-0.5f); }, "[Adam] lr = -0.5 must be >= 0");
    check_throws_message([&] { opt.set_lr(0, std::nanf("")); },
                         "[Adam] group 0 lr = nan must be >= 0");
    check_throws_message([&] { opt.set_lr(1, 0.1f); },
                         "[Adam] set_lr: group 1 out of range for 1 groups");
    CHECK(opt.lr() == 1e-3f);

    // A gradient whose shape differs from its parameter's: nothing is updated.
    Var q = Var::parameter(Q0);
    Sgd sgd(std::vector<Var>{p, q}, {.lr = 0.1f});
    set_grad(p, G0);
    set_grad(q, Matrix::Ones(3, 1));
    check_throws_message([&] { sgd.step(); },
                         "[Sgd] parameter 1 has shape [1 x 3] but its gradient is [3 x 1]");
    CHECK(same_bytes(p.value(), P0));
    CHECK(sgd.step_count() == 0);
}

TEST_CASE("invalid schedule options and misuse throw InvalidArgument") {
    Var p = Var::parameter(P0);
    Sgd opt(std::vector<Var>{p}, {.lr = 0.1f});
    auto make = [&](ScheduleSpec spec) { Schedule s(opt, std::move(spec)); };
    check_throws_message([&] { make(StepSchedule{.step_size = 0}); },
                         "[StepSchedule] step_size = 0 must be > 0");
    check_throws_message([&] { make(StepSchedule{.gamma = 0.0f}); },
                         "[StepSchedule] gamma = 0 must be > 0");
    check_throws_message([&] { make(ExponentialSchedule{.gamma = -0.5f}); },
                         "[ExponentialSchedule] gamma = -0.5 must be > 0");
    check_throws_message([&] { make(CosineSchedule{.total_steps = -3}); },
                         "[CosineSchedule] total_steps = -3 must be > 0");
    check_throws_message([&] { make(CosineSchedule{.min_lr = -1.0f}); },
                         "[CosineSchedule] min_lr = -1 must be >= 0");
    check_throws_message([&] { make(WarmupSchedule{.warmup_steps = -1}); },
                         "[WarmupSchedule] warmup_steps = -1 must be >= 0");
    check_throws_message([&] { make(WarmupSchedule{.start_factor = 1.5f}); },
                         "[WarmupSchedule] start_factor = 1.5 outside [0, 1]");
    check_throws_message([&] { make(WarmupSchedule{.then = StepSchedule{.step_size = 0}}); },
                         "[StepSchedule] step_size = 0 must be > 0");
    check_throws_message([&] { make(PlateauSchedule{.factor = 1.0f}); },
                         "[PlateauSchedule] factor = 1 outside (0, 1)");
    check_throws_message([&] { make(PlateauSchedule{.patience = -1}); },
                         "[PlateauSchedule] patience = -1 must be >= 0");
    check_throws_message([&] { make(PlateauSchedule{.threshold = -0.1f}); },
                         "[PlateauSchedule] threshold = -0.1 must be >= 0");
    check_throws_message([&] { make(PlateauSchedule{.cooldown = -2}); },
                         "[PlateauSchedule] cooldown = -2 must be >= 0");
    check_throws_message([&] { make(PlateauSchedule{.min_lr = -1.0f}); },
                         "[PlateauSchedule] min_lr = -1 must be >= 0");
    CHECK(opt.lr() == 0.1f);  // a rejected schedule changes nothing

    Schedule plateau(opt, PlateauSchedule{});
    check_throws_message([&] { plateau.step(); },
                         "[Schedule] PlateauSchedule needs a metric: call step(metric)");
    check_throws_message([&] { plateau.step(std::nanf("")); }, "[PlateauSchedule] metric = nan");
    check_throws_message([&] { schedule_lr(PlateauSchedule{}, 0.1f, 0); },
                         "[schedule_lr] PlateauSchedule depends on metrics, not on the position");
    check_throws_message([&] { schedule_lr(ConstantSchedule{}, 0.1f, -1); },
                         "[schedule_lr] step = -1 must be >= 0");

    Schedule cosine(opt, CosineSchedule{.total_steps = 10});
    ScheduleState bad = cosine.state();
    bad.lrs.push_back(0.1f);
    check_throws_message([&] { cosine.load_state(bad); },
                         "[Schedule] load_state: state has 1 base lrs and 2 lrs for 1 parameter "
                         "groups");
    bad = cosine.state();
    bad.step = -1;
    check_throws_containing([&] { cosine.load_state(bad); }, {"[Schedule] load_state", "(-1)"});
}

TEST_CASE("clipping rejects invalid bounds") {
    check_throws_message([] { clip_grad_norm({}, -1.0f); },
                         "[clip_grad_norm] max_norm = -1 must be >= 0");
    check_throws_message([] { clip_grad_norm({}, std::nanf("")); },
                         "[clip_grad_norm] max_norm = nan must be >= 0");
    check_throws_message([] { clip_grad_value({}, -0.5f); },
                         "[clip_grad_value] clip_value = -0.5 must be >= 0");
    CHECK(clip_grad_norm({}, 1.0f) == 0.0f);
}

TEST_CASE("load_state rejects a state that does not fit, naming index and shapes") {
    Var p = Var::parameter(P0), q = Var::parameter(Q0);
    Adam source(std::vector<Var>{p, q}, {.lr = 0.1f});
    run_reference(source, p, q);
    const OptimizerState s = source.state();

    // Same count, parameter 1 transposed.
    Var p2 = Var::parameter(P0), q2 = Var::parameter(Matrix::Zero(3, 1));
    Adam target(std::vector<Var>{p2, q2}, {.lr = 0.5f});
    check_throws_message([&] { target.load_state(s); },
                         "[Adam] load_state: parameter 1 has shape [3 x 1] but the state holds "
                         "[1 x 3]");
    // Nothing changed.
    CHECK(target.lr() == 0.5f);
    CHECK(target.step_count() == 0);
    CHECK(target.state().slots[0].empty());

    Adam fewer(std::vector<Var>{p2}, {.lr = 0.1f});
    check_throws_message([&] { fewer.load_state(s); },
                         "[Adam] load_state: state has 2 parameters, optimizer has 1");
    AdamW other_kind(std::vector<Var>{p2, Var::parameter(Q0)});
    check_throws_message([&] { other_kind.load_state(s); },
                         "[AdamW] load_state: state kind 'adam' does not match 'adamw'");
    Adam amsgrad(std::vector<Var>{p2, Var::parameter(Q0)}, {.amsgrad = true});
    check_throws_message([&] { amsgrad.load_state(s); },
                         "[Adam] load_state: parameter 0 has 2 state buffers, expected 3 (or 0)");
    Sgd plain(std::vector<Var>{p2, Var::parameter(Q0)}, {.lr = 0.1f});
    OptimizerState sgd_state = Sgd(std::vector<Var>{p2, q}, {.lr = 0.1f, .momentum = 0.9f}).state();
    sgd_state.slots[1].push_back(Q0);
    check_throws_message([&] { plain.load_state(sgd_state); },
                         "[Sgd] load_state: parameter 1 has 1 state buffers, expected 0 (or 0)");
    OptimizerState groups = s;
    groups.lrs.push_back(0.1f);
    Adam two(std::vector<Var>{p2, Var::parameter(Q0)});
    check_throws_message([&] { two.load_state(groups); },
                         "[Adam] load_state: state has 2 learning rates for 1 parameter groups");
    OptimizerState negative = s;
    negative.step = -1;
    check_throws_message([&] { two.load_state(negative); }, "[Adam] load_state: step = -1 < 0");

    // A fitting state loads.
    two.load_state(s);
    CHECK(two.step_count() == 5);
    CHECK(two.lr() == 0.1f);
}

#ifdef EDGETUNE_COUNT_ALLOCS
TEST_CASE("step() allocates nothing after the first step") {
    const long probe = g_allocations;
    const Matrix heap = Matrix::Ones(16, 16);  // the counter sees Eigen's heap allocations
    CHECK(g_allocations > probe);
    CHECK(heap.sum() == 256.0f);

    Var p = Var::parameter(P0), q = Var::parameter(Q0);
    std::vector<std::unique_ptr<Optimizer>> opts;
    opts.push_back(make_optimizer(
        SgdOptions{.lr = 0.1f, .momentum = 0.9f, .weight_decay = 0.1f, .nesterov = true}, {p, q}));
    opts.push_back(
        make_optimizer(AdamOptions{.lr = 0.1f, .weight_decay = 0.1f, .amsgrad = true}, {p, q}));
    opts.push_back(make_optimizer(AdamWOptions{.lr = 0.1f}, {p, q}));
    for (auto& opt : opts) {
        Schedule sched(*opt,
                       WarmupSchedule{.warmup_steps = 2, .then = CosineSchedule{.total_steps = 5}});
        set_grad(p, G0);
        set_grad(q, H0);
        opt->step();  // allocates the slot buffers
        const std::vector<Var> params = {p, q};
        const long before = g_allocations;
        for (int t = 0; t < 5; ++t) {
            opt->step();
            sched.step();
            clip_grad_norm(params, 1.0f);
            clip_grad_value(params, 0.5f);
            opt->zero_grad();
            p.grad_mut() = G0;  // storage kept by zero_grad: no allocation
            q.grad_mut() = H0;
        }
        INFO(opt->kind());
        CHECK(g_allocations == before);
    }
}
#endif

// The Adam element kernel gives the same bits wherever the arrays start: malloc guarantees 16
// bytes, not AVX2's 32, and a kernel whose peeled elements rounded differently from its packets
// made training results change from run to run (a flaky determinism test found it).
TEST_CASE("Adam kernel: results do not depend on the arrays' address alignment") {
    for (const bool amsgrad : {false, true}) {
        CAPTURE(amsgrad);
        const std::ptrdiff_t n = 77;
        std::vector<float> first;
        for (std::ptrdiff_t offset = 0; offset < 8; ++offset) {
            std::vector<float> p(n + 8), m(n + 8), v(n + 8), vmax(n + 8), g(n + 8);
            for (std::ptrdiff_t i = 0; i < n; ++i) {
                const auto x = static_cast<float>(i);
                p[i + offset] = std::sin(0.3f * x);
                m[i + offset] = 0.01f * x;
                v[i + offset] = 0.001f * x;
                vmax[i + offset] = 0.002f * (n - x);
                g[i + offset] = std::cos(0.7f * x);
            }
            adam_step({.p = p.data() + offset,
                       .m = m.data() + offset,
                       .v = v.data() + offset,
                       .v_max = amsgrad ? vmax.data() + offset : nullptr,
                       .g = g.data() + offset,
                       .n = n,
                       .beta1 = 0.9f,
                       .beta2 = 0.999f,
                       .l2 = 0.01f,
                       .step_size = 1e-2f,
                       .bias2_sqrt = 0.0316f,
                       .eps = 1e-8f});
            std::vector<float> out;
            for (const auto* a : {&p, &m, &v, &vmax})
                out.insert(out.end(), a->begin() + offset, a->begin() + offset + n);
            if (offset == 0)
                first = out;
            else
                CHECK_MESSAGE(out == first, "offset " << offset << " floats");
        }
    }
}
