// cpu.hpp — which instruction-set variant of the hot kernels this process runs.
//
// The hot kernels (the `kernels` table in the top-level meson.build: the matrix product, the
// Adam update, the frozen dense layer) are compiled twice on x86-64: with the build's flags and
// with -mavx2 -mfma. This picks once per process: AVX2+FMA when the build has that variant and
// the CPU supports it, unless EDGETUNE_KERNELS=generic is set (results identical across CPUs;
// the generic path under test).
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

// A kernel variant and its name ("avx2+fma" or "generic", as the bench records it).
template <class F>
struct KernelChoice {
    F fn;
    const char* name;
};

// The variant to run: avx2 when there is one (non-null) and cpu_runs_avx2_kernels().
template <class F>
KernelChoice<F> pick_kernel(F generic, F avx2) {
    if (avx2 != nullptr && cpu_runs_avx2_kernels()) return {avx2, "avx2+fma"};
    return {generic, "generic"};
}

// pick_kernel over name_generic and name_avx2 (common/kernel_variant.hpp), where the build has
// the AVX2 variant; elsewhere name_avx2 is not even declared.
#ifdef EDGETUNE_HAVE_AVX2_KERNELS
#define EDGETUNE_PICK_KERNEL(name) ::edgetune::pick_kernel(name##_generic, name##_avx2)
#else
#define EDGETUNE_PICK_KERNEL(name) \
    ::edgetune::pick_kernel(name##_generic, decltype(&name##_generic){nullptr})
#endif

}  // namespace edgetune
