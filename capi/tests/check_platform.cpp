// check_platform.cpp — on an aarch64 build, run under qemu-aarch64: the x86 kernel variants are
// compiled out (no AVX2 objects, the generic matmul kernel chosen at run time, the CPU probe
// answers no) and Eigen vectorizes with NEON. Prints what it found; exit 1 if any is wrong.
#include <cstdio>
#include <cstring>

#include "autograd.hpp"
#include "cpu.hpp"

int main() {
    const char* simd = Eigen::SimdInstructionSetsInUse();
    const char* kernel = edgetune::matmul_kernel();
    bool avx2_built = false;
#ifdef EDGETUNE_HAVE_AVX2_KERNELS
    avx2_built = true;
#endif
    bool neon = false;
#ifdef EIGEN_VECTORIZE_NEON
    neon = true;
#endif
    std::printf("eigen simd: %s; matmul kernel: %s; avx2 variants built: %s; cpu probe: %s\n", simd,
                kernel, avx2_built ? "yes" : "no",
                edgetune::cpu_runs_avx2_kernels() ? "avx2" : "generic");
    const bool ok = neon && std::strstr(simd, "NEON") != nullptr && !avx2_built &&
                    std::strcmp(kernel, "generic") == 0 && !edgetune::cpu_runs_avx2_kernels();
    std::printf("%s\n", ok ? "ok: NEON path, x86 dispatch compiled out" : "FAIL");
    return ok ? 0 : 1;
}
