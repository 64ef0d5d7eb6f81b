// gemm.cpp — picks the gemm variant once per process (see gemm.hpp).
#include "gemm.hpp"

#include <cstdlib>
#include <cstring>

#include "autograd.hpp"

namespace edgetune {

namespace {

using GemmFn = void (*)(const GemmArgs&);

struct Choice {
    GemmFn fn;
    const char* name;
};

Choice choose() {
    const char* force = std::getenv("EDGETUNE_KERNELS");
    const bool generic_only = force != nullptr && std::strcmp(force, "generic") == 0;
#ifdef EDGETUNE_HAVE_GEMM_AVX2
    __builtin_cpu_init();
    if (!generic_only && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return {gemm_avx2, "avx2+fma"};
#else
    (void)generic_only;
#endif
    return {gemm_generic, "generic"};
}

const Choice& chosen() {
    static const Choice choice = choose();  // thread-safe static initialization
    return choice;
}

}  // namespace

void gemm(const GemmArgs& args) {
    chosen().fn(args);
}

const char* matmul_kernel() noexcept {
    return chosen().name;
}

}  // namespace edgetune
