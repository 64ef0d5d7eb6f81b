// gemm.cpp — picks the gemm variant once per process (see detail/gemm.hpp).
#include "detail/gemm.hpp"

#include "autograd.hpp"
#include "cpu.hpp"

namespace edgetune {

namespace {

struct Choice {
    void (*fn)(const GemmArgs&);
    const char* name;
};

const Choice& chosen() {
    static const Choice choice = [] {
#ifdef EDGETUNE_HAVE_AVX2_KERNELS
        if (cpu_runs_avx2_kernels()) return Choice{gemm_avx2, "avx2+fma"};
#endif
        return Choice{gemm_generic, "generic"};
    }();
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
