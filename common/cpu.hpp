// cpu.hpp — which instruction-set variant of the hot kernels this process runs.
//
// The matrix product (autograd/gemm_kernel.cpp) and the Adam update (optim/adam_kernel.cpp) are
// compiled twice on x86-64: with the build's flags and with -mavx2 -mfma. This picks once per
// process: AVX2+FMA when the build has that variant and the CPU supports it, unless
// EDGETUNE_KERNELS=generic is set (results identical across CPUs; the generic path under test).
#pragma once

#include <cstdlib>
#include <cstring>

namespace edgetune {

// True when this process should run the AVX2+FMA variants (where the build has them:
// EDGETUNE_HAVE_AVX2_KERNELS, set by meson.build on x86-64 without -march=native).
inline bool cpu_runs_avx2_kernels() {
    static const bool yes = [] {
        const char* force = std::getenv("EDGETUNE_KERNELS");
        if (force != nullptr && std::strcmp(force, "generic") == 0) return false;
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
        return false;
#endif
    }();
    return yes;
}

}  // namespace edgetune
