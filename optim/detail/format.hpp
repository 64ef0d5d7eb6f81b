// detail/format.hpp — private helpers for optim/ error messages (not part of the public contract).
//
// NOTE: the checks run inside step() and Schedule::step(), which must not allocate: names are
// string_views and a message string is built only when a check fails.
#pragma once

#include <charconv>
#include <cmath>
#include <string>
#include <string_view>

#include "error.hpp"

namespace edgetune::detail {

// Shortest text that round-trips a float: 0.1f -> "0.1", 1.5f -> "1.5", NaN -> "nan".
inline std::string num(float v) {
    char buf[32];
    const auto result = std::to_chars(buf, buf + sizeof buf, v);
    return std::string(buf, result.ptr);
}

// >= 0 and finite (NaN fails).
inline bool is_nonneg(float v) {
    return v >= 0.0f && std::isfinite(v);
}

// Throws "[who] what = value rule" unless ok, e.g. "[Sgd] lr = -0.1 must be >= 0".
inline void require(bool ok, std::string_view who, std::string_view what, float value,
                    const char* rule) {
    if (!ok)
        throw InvalidArgument("[" + std::string(who) + "] " + std::string(what) + " = " +
                              num(value) + " " + rule);
}

// value >= 0 and finite.
inline void require_nonneg(std::string_view who, std::string_view what, float value) {
    require(value >= 0.0f, who, what, value, "must be >= 0");
    require(std::isfinite(value), who, what, value, "must be finite");
}

}  // namespace edgetune::detail
