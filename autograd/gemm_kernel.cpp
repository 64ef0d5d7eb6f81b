// gemm_kernel.cpp — one gemm variant through Eigen's GEMM; compiled once per instruction set
// (the `kernels` table in meson.build; kernel_variant.hpp says why Eigen is renamed).
#include "kernel_variant.hpp"  // first: renames Eigen in the AVX2 build

#include <Eigen/Core>

#include "detail/gemm.hpp"

namespace edgetune {

void EDGETUNE_KERNEL(gemm)(const GemmArgs& g) {
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
