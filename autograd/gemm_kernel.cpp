// gemm_kernel.cpp — one gemm variant through Eigen's GEMM; compiled once per instruction set.
//
// Built as gemm_generic with the project's flags and, on x86-64, as gemm_avx2 with -mavx2
// -mfma (EDGETUNE_KERNEL_AVX2). NOTE: the AVX2 copy renames Eigen's namespace. Both copies
// instantiate the same Eigen templates; under one name the linker would keep just one of each
// (one definition rule), and AVX2 code could end up running on a CPU without AVX2, or the AVX2
// path could silently run generic code. Only Eigen (and no other template library) may be used
// here, for the same reason: tests/test_gemm.cpp checks the object's weak symbols.
#ifdef EDGETUNE_KERNEL_AVX2
#define Eigen edgetune_eigen_avx2
#define EDGETUNE_GEMM_NAME gemm_avx2
#else
#define EDGETUNE_GEMM_NAME gemm_generic
#endif

#include <Eigen/Core>

#include "detail/gemm.hpp"

namespace edgetune {

void EDGETUNE_GEMM_NAME(const GemmArgs& g) {
    using RowMajor = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
    const Eigen::Map<const RowMajor> a(g.a, g.trans_a ? g.k : g.m, g.trans_a ? g.m : g.k);
    const Eigen::Map<const RowMajor> b(g.b, g.trans_b ? g.n : g.k, g.trans_b ? g.k : g.n);
    Eigen::Map<RowMajor> c(g.c, g.m, g.n);
    auto run = [&](const auto& lhs, const auto& rhs) {
        if (g.accumulate)
            c.noalias() += lhs * rhs;
        else
            c.noalias() = lhs * rhs;
    };
    if (!g.trans_a && !g.trans_b)
        run(a, b);
    else if (!g.trans_a)
        run(a, b.transpose());
    else if (!g.trans_b)
        run(a.transpose(), b);
    else
        run(a.transpose(), b.transpose());
}

}  // namespace edgetune
