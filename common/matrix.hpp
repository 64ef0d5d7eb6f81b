// matrix.hpp — the one tensor type of edgetune and the plain data shared across modules.
//
// Matrix is row-major float: rows are samples, columns are features, so one stored sample's
// feature blob is one contiguous row. Token ids travel as int32 index lists.
#pragma once

#include <Eigen/Core>

#include <cstdint>
#include <string>
#include <vector>

namespace edgetune {

using Matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using Index = Eigen::Index;
using IdList = std::vector<std::int32_t>;

// "[r x c]" for error messages.
inline std::string shape_str(Index rows, Index cols) {
    return "[" + std::to_string(rows) + " x " + std::to_string(cols) + "]";
}
inline std::string shape_str(const Matrix& m) {
    return shape_str(m.rows(), m.cols());
}

// Optimizer state as plain data, so storage/ can serialize it without knowing autograd.
// Invariant: slots[k] is index-aligned with the optimizer's parameter list; slot k holds the
// per-parameter buffers of that optimizer (SGD: momentum; Adam: m, v[, v_max]), each with the
// parameter's shape. An empty slot means "not yet initialized" (no step seen).
struct OptimizerState {
    std::string kind;                        // "sgd", "adam", "adamw"
    std::int64_t step = 0;                   // number of step() calls applied
    std::vector<float> lrs;                  // current learning rate per parameter group
    std::vector<std::vector<Matrix>> slots;  // [param index][buffer index]
};

}  // namespace edgetune
