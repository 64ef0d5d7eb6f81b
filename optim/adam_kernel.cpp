// adam_kernel.cpp — one adam_step variant; compiled once per instruction set (meson.build).
//
// NOTE: the AVX2 copy renames Eigen's namespace so none of its template instances is merged
// with the generic copy's by the linker (autograd/gemm_kernel.cpp explains; the build suite's
// symbol check covers this object too). Only Eigen may be used here.
#ifdef EDGETUNE_KERNEL_AVX2
#define Eigen edgetune_eigen_avx2
#define EDGETUNE_ADAM_NAME adam_step_avx2
#else
#define EDGETUNE_ADAM_NAME adam_step_generic
#endif

#include <Eigen/Core>

#include "adam_kernel.hpp"

namespace edgetune {

void EDGETUNE_ADAM_NAME(const AdamStepArgs& a) {
    using Array = Eigen::Array<float, Eigen::Dynamic, 1>;
    // Chunks of 1024 elements (4 KiB per array): the three passes below stay in L1.
    constexpr std::ptrdiff_t chunk = 1024;
    for (std::ptrdiff_t at = 0; at < a.n; at += chunk) {
        const std::ptrdiff_t len = a.n - at < chunk ? a.n - at : chunk;
        Eigen::Map<Array> p(a.p + at, len), m(a.m + at, len), v(a.v + at, len);
        const Eigen::Map<const Array> g(a.g + at, len);
        if (a.l2 != 0.0f) {
            m = a.beta1 * m + (1.0f - a.beta1) * (g + a.l2 * p);
            v = a.beta2 * v + (1.0f - a.beta2) * (g + a.l2 * p).square();
        } else {
            m = a.beta1 * m + (1.0f - a.beta1) * g;
            v = a.beta2 * v + (1.0f - a.beta2) * g.square();
        }
        if (a.v_max != nullptr) {
            Eigen::Map<Array> v_max(a.v_max + at, len);
            v_max = v_max.max(v);
            p -= a.step_size * (m / (v_max.sqrt() / a.bias2_sqrt + a.eps));
        } else {
            p -= a.step_size * (m / (v.sqrt() / a.bias2_sqrt + a.eps));
        }
    }
}

}  // namespace edgetune
