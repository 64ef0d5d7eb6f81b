// detail/frozen_kernel.hpp — the dense layer behind Backbone::features, picked at run time per CPU
// (private).
//
// Batch-invariant: out[r][j] is computed by the same floating-point operations whatever the
// number of rows, so a sample's features are the same bits alone or in a batch of 1000 (Eigen's
// products round differently by shape). Per element, with madd(a, b, c) = a * b + c:
//   acc = 0;  acc = madd(x[r][k], w[k][j], acc) for k = 0, 1, ..., depth-1 IN ORDER;
//   out[r][j] = acc + b[j]   (the bias enters last, as in Linear: matmul, then add_row).
// madd is one fused multiply-add where the variant's target has FMA (the AVX2+FMA variant, or
// the generic one under -march=native on such a CPU), else a rounded product then a rounded sum.
// A process runs one variant (common/cpu.hpp), so its features agree with each other; features
// from the two variants differ in the last bits.
// frozen_kernel.cpp is compiled once per instruction set, like autograd's gemm_kernel.cpp.
// NOTE: no Eigen here: the variants see Eigen under different namespaces.
#pragma once

#include <cstddef>

namespace edgetune {

// x [rows x depth], w [depth x width], b [width] -> out [rows x width]; row-major, contiguous;
// out must not overlap the inputs. No activation.
struct FrozenDenseArgs {
    std::ptrdiff_t rows, depth, width;
    const float* x;
    const float* w;
    const float* b;
    float* out;
};

// The compiled variants; frozen_dense_avx2 exists only where EDGETUNE_HAVE_AVX2_KERNELS and
// must only run where the CPU has AVX2 and FMA.
void frozen_dense_generic(const FrozenDenseArgs& args);
void frozen_dense_avx2(const FrozenDenseArgs& args);

}  // namespace edgetune
