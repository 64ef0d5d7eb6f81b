// detail/adam_kernel.hpp — the fused Adam/AdamW element update, picked at run time per CPU
// (private).
//
// Adam's sqrt and division per element made it a third of an MLP head's step at SSE2 width;
// like the matrix product (autograd/detail/gemm.hpp), adam_kernel.cpp is compiled once per
// instruction set and adam_step() calls the best one the CPU has (common/cpu.hpp).
#pragma once

#include <cstddef>

namespace edgetune {

// One step over n elements, in torch.optim.Adam's order of operations:
//   d = g + l2 * p;  m = b1 m + (1 - b1) d;  v = b2 v + (1 - b2) d^2;
//   [amsgrad] v_max = max(v_max, v), used instead of v below;
//   p -= step_size * m / (sqrt(v) / bias2_sqrt + eps).
// l2 is Adam's coupled weight decay (0 for AdamW, which shrinks p before calling this).
struct AdamStepArgs {
    float* p;
    float* m;
    float* v;
    float* v_max;  // nullptr unless amsgrad
    const float* g;
    std::ptrdiff_t n;
    float beta1, beta2, l2, step_size, bias2_sqrt, eps;
};

void adam_step(const AdamStepArgs& args);

// The compiled variants; adam_step_avx2 exists only where EDGETUNE_HAVE_AVX2_KERNELS.
void adam_step_generic(const AdamStepArgs& args);
void adam_step_avx2(const AdamStepArgs& args);

}  // namespace edgetune
