// clip.cpp — gradient clipping by global L2 norm and by value.
//
// The global norm is accumulated in double: squares of floats cannot overflow there, so a
// norm above sqrt(FLT_MAX) is still measured (and returned) correctly.
#include <cmath>

#include "detail/format.hpp"
#include "optim.hpp"

namespace edgetune {

float clip_grad_norm(const std::vector<Var>& params, float max_norm) {
    detail::require(max_norm >= 0.0f, "clip_grad_norm", "max_norm", max_norm, "must be >= 0");
    double sum_sq = 0.0;
    for (const Var& p : params)
        if (p.has_grad()) sum_sq += p.grad().cast<double>().squaredNorm();
    const double norm = std::sqrt(sum_sq);
    if (std::isfinite(norm) && norm > max_norm) {
        const float scale = static_cast<float>(max_norm / norm);
        for (Var p : params)
            if (p.has_grad()) p.grad_mut() *= scale;
    }
    return static_cast<float>(norm);
}

void clip_grad_value(const std::vector<Var>& params, float clip_value) {
    detail::require(clip_value >= 0.0f, "clip_grad_value", "clip_value", clip_value,
                    "must be >= 0");
    for (Var p : params)
        if (p.has_grad()) p.grad_mut() = p.grad().cwiseMax(-clip_value).cwiseMin(clip_value);
}

}  // namespace edgetune
