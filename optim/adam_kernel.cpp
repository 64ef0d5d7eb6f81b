// adam_kernel.cpp — one adam_step variant; compiled once per instruction set (the `kernels`
// table in meson.build).
//
// A plain loop, not Eigen: Eigen's packet sqrt is an approximation (EIGEN_FAST_MATH: rsqrt and
// one Newton step) while its scalar sqrt is exact, and Eigen runs the first elements of an
// array whose address is not packet-aligned one at a time. With AVX2's 32-byte packets and
// malloc's 16-byte alignment, the same step then rounded differently from run to run. Here
// every element goes through the same correctly rounded operations (IEEE mul, add, div, sqrt;
// -fno-math-errno lets GCC vectorize sqrt, -ffp-contract=off keeps it from fusing), so the
// bits depend neither on alignment nor on which elements the vectorizer peels.
#include "kernel_variant.hpp"  // first

#include <cmath>

#include "detail/adam_kernel.hpp"

namespace edgetune {

void EDGETUNE_KERNEL(adam_step)(const AdamStepArgs& a) {
    float* __restrict p = a.p;
    float* __restrict m = a.m;
    float* __restrict v = a.v;
    float* __restrict v_max = a.v_max;
    const float* __restrict g = a.g;
    const float b1 = a.beta1, b2 = a.beta2, c1 = 1.0f - a.beta1, c2 = 1.0f - a.beta2;
    if (v_max == nullptr) {
        for (std::ptrdiff_t i = 0; i < a.n; ++i) {
            const float d = g[i] + a.l2 * p[i];
            m[i] = b1 * m[i] + c1 * d;
            v[i] = b2 * v[i] + c2 * (d * d);
            p[i] -= a.step_size * (m[i] / (std::sqrt(v[i]) / a.bias2_sqrt + a.eps));
        }
    } else {
        for (std::ptrdiff_t i = 0; i < a.n; ++i) {
            const float d = g[i] + a.l2 * p[i];
            m[i] = b1 * m[i] + c1 * d;
            v[i] = b2 * v[i] + c2 * (d * d);
            v_max[i] = v_max[i] < v[i] ? v[i] : v_max[i];
            p[i] -= a.step_size * (m[i] / (std::sqrt(v_max[i]) / a.bias2_sqrt + a.eps));
        }
    }
}

}  // namespace edgetune
