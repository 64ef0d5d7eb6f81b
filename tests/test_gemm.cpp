// test_gemm.cpp — the run-time dispatched matrix product behind matmul and linear.
//
// Every compiled variant (generic, and AVX2+FMA where the CPU has it) against a double-precision
// reference, for every transposition, assign and accumulate, shapes that exercise Eigen's
// blocking remainders. The dispatched gemm() must be one of them.
#include <doctest/doctest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <string>
#include <vector>

#include "autograd.hpp"
#include "detail/gemm.hpp"

using namespace edgetune;

namespace {

struct Case {
    bool trans_a, trans_b, accumulate;
    std::ptrdiff_t m, n, k;
};

std::vector<float> random_floats(std::ptrdiff_t count, std::uint64_t seed) {
    Rng rng(seed);
    std::vector<float> v(static_cast<std::size_t>(count));
    for (float& x : v) x = rng.uniform(-1.0f, 1.0f);
    return v;
}

// Largest |C - reference| / (1 + |reference|) of `kernel` on case c.
double worst_error(void (*kernel)(const GemmArgs&), const Case& c) {
    const std::vector<float> a = random_floats(c.m * c.k, 1), b = random_floats(c.k * c.n, 2);
    const std::vector<float> c0 = random_floats(c.m * c.n, 3);
    std::vector<float> out = c0;
    kernel({.trans_a = c.trans_a,
            .trans_b = c.trans_b,
            .m = c.m,
            .n = c.n,
            .k = c.k,
            .a = a.data(),
            .b = b.data(),
            .c = out.data(),
            .accumulate = c.accumulate});
    double worst = 0.0;
    for (std::ptrdiff_t i = 0; i < c.m; ++i)
        for (std::ptrdiff_t j = 0; j < c.n; ++j) {
            double ref = c.accumulate ? c0[static_cast<std::size_t>(i * c.n + j)] : 0.0;
            for (std::ptrdiff_t p = 0; p < c.k; ++p) {
                const float av = c.trans_a ? a[static_cast<std::size_t>(p * c.m + i)]
                                           : a[static_cast<std::size_t>(i * c.k + p)];
                const float bv = c.trans_b ? b[static_cast<std::size_t>(j * c.k + p)]
                                           : b[static_cast<std::size_t>(p * c.n + j)];
                ref += static_cast<double>(av) * bv;
            }
            const double got = out[static_cast<std::size_t>(i * c.n + j)];
            worst = std::max(worst, std::abs(got - ref) / (1.0 + std::abs(ref)));
        }
    return worst;
}

std::string describe(const Case& c) {
    return std::string(c.trans_a ? "A^T" : "A") + (c.trans_b ? " B^T" : " B") +
           (c.accumulate ? " accumulate" : " assign") + " m=" + std::to_string(c.m) +
           " n=" + std::to_string(c.n) + " k=" + std::to_string(c.k);
}

std::vector<Case> all_cases() {
    std::vector<Case> cases;
    for (const auto& [m, n, k] : {std::array<std::ptrdiff_t, 3>{1, 1, 1},
                                  {7, 13, 33},
                                  {64, 130, 70},
                                  {3, 300, 2},
                                  {33, 5, 517}})
        for (int flags = 0; flags < 8; ++flags)
            cases.push_back({(flags & 1) != 0, (flags & 2) != 0, (flags & 4) != 0, m, n, k});
    return cases;
}

void check_kernel(void (*kernel)(const GemmArgs&)) {
    for (const Case& c : all_cases()) {
        INFO(describe(c));
        CHECK(worst_error(kernel, c) < 1e-5);
    }
}

}  // namespace

TEST_CASE("gemm: the generic variant matches a double reference for every transposition") {
    check_kernel(gemm_generic);
}

#ifdef EDGETUNE_HAVE_AVX2_KERNELS
TEST_CASE("gemm: the AVX2+FMA variant matches a double reference, where the CPU has it") {
    if (!(__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))) {
        MESSAGE("this CPU has no AVX2+FMA: the variant is compiled but cannot run here");
        return;
    }
    check_kernel(gemm_avx2);
}
#endif

TEST_CASE("gemm: the dispatched kernel is a known variant and computes the product") {
    const std::string name = matmul_kernel();
    CHECK((name == "generic" || name == "avx2+fma"));
    check_kernel(gemm);
    // The same choice on every call in a process.
    CHECK(std::string(matmul_kernel()) == name);
}

// The same product at every address alignment gives the same bits: malloc guarantees 16 bytes,
// not AVX2's 32, so an alignment-dependent path would make training results change from run
// to run (found as a flaky determinism test in the personalize suite).
TEST_CASE("gemm: results do not depend on the operands' address alignment") {
    for (const Case& c : all_cases()) {
        INFO(describe(c));
        const std::vector<float> a = random_floats(c.m * c.k, 4), b = random_floats(c.k * c.n, 5);
        const std::vector<float> c0 = random_floats(c.m * c.n, 6);
        std::vector<float> first;
        for (std::size_t offset = 0; offset < 8; ++offset) {
            // Copies of the operands starting `offset` floats into fresh buffers.
            std::vector<float> sa(a.size() + 8), sb(b.size() + 8), sc(c0.size() + 8);
            std::copy(a.begin(), a.end(), sa.begin() + static_cast<std::ptrdiff_t>(offset));
            std::copy(b.begin(), b.end(), sb.begin() + static_cast<std::ptrdiff_t>(offset));
            std::copy(c0.begin(), c0.end(), sc.begin() + static_cast<std::ptrdiff_t>(offset));
            gemm({.trans_a = c.trans_a,
                  .trans_b = c.trans_b,
                  .m = c.m,
                  .n = c.n,
                  .k = c.k,
                  .a = sa.data() + offset,
                  .b = sb.data() + offset,
                  .c = sc.data() + offset,
                  .accumulate = c.accumulate});
            const std::vector<float> out(sc.begin() + static_cast<std::ptrdiff_t>(offset),
                                         sc.begin() + static_cast<std::ptrdiff_t>(offset) +
                                             static_cast<std::ptrdiff_t>(c0.size()));
            if (offset == 0)
                first = out;
            else
                CHECK_MESSAGE(out == first, "offset " << offset << " floats");
        }
    }
}
