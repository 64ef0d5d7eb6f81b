// detail/gemm.hpp — the matrix product behind matmul and linear, picked at run time per CPU
// (private).
//
// Eigen compiles for one instruction set, chosen at build time. A library built for generic
// x86-64 (SSE2, as Debian builds) would run its products at half the speed an AVX2+FMA CPU
// allows; PyTorch dispatches at run time, and so does this. gemm_kernel.cpp is compiled once
// per instruction set (autograd/meson.build) and gemm() calls the best one the CPU has.
// Set EDGETUNE_KERNELS=generic in the environment to force the build's own flags (bit-exact
// reproduction of results across CPUs, or testing the generic path on an AVX2 machine).
//
// NOTE: no Eigen here: the kernels see Eigen under different namespaces (gemm_kernel.cpp).
#pragma once

#include <cstddef>

namespace edgetune {

// C [m x n] = op(A) op(B), or C += op(A) op(B) when `accumulate`. Row-major, contiguous.
// op(A) is [m x k]: A is stored [m x k], or [k x m] when trans_a (likewise B, [k x n]).
// C must not overlap A or B.
struct GemmArgs {
    bool trans_a, trans_b;
    std::ptrdiff_t m, n, k;
    const float* a;
    const float* b;
    float* c;
    bool accumulate;
};

// Calls the variant chosen for this process (its name: matmul_kernel() in autograd.hpp).
void gemm(const GemmArgs& args);

// The compiled variants (gemm_kernel.cpp); gemm_avx2 exists only in x86-64 builds without
// -march=native (EDGETUNE_HAVE_AVX2_KERNELS) and must only run where the CPU has AVX2 and FMA.
void gemm_generic(const GemmArgs& args);
void gemm_avx2(const GemmArgs& args);

}  // namespace edgetune
