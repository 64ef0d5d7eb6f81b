// gemm.cpp — picks the gemm variant once per process (see detail/gemm.hpp).
#include "detail/gemm.hpp"

#include "autograd.hpp"
#include "cpu.hpp"

namespace edgetune {

namespace {

const KernelChoice<void (*)(const GemmArgs&)>& chosen() {
    static const auto choice = EDGETUNE_PICK_KERNEL(gemm);
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
