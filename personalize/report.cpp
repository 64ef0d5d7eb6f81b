// report.cpp — TrainReport as JSON, the format of the training log (runs table) and of a
// checkpoint's metrics.
#include <cmath>
#include <cstdio>

#include "detail/training.hpp"

namespace edgetune {

namespace {

std::string json_escape(const std::string& s) {
    std::string out;
    for (char c : s) {
        if (c == '"' || c == '\\') {
            out += '\\';
            out += c;
        } else if (static_cast<unsigned char>(c) < 0x20) {
            char buf[8];
            std::snprintf(buf, sizeof buf, "\\u%04x", c);
            out += buf;
        } else {
            out += c;
        }
    }
    return out;
}

// %.6g, or null for NaN/Inf (JSON has no literal for them).
std::string json_number(double v) {
    if (!std::isfinite(v)) return "null";
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.6g", v);
    return buf;
}

}  // namespace

std::string detail::metrics_json(const Metrics& m) {
    return "{\"loss\":" + json_number(m.loss) + ",\"accuracy\":" + json_number(m.accuracy) +
           ",\"balanced_accuracy\":" + json_number(m.balanced_accuracy) +
           ",\"samples\":" + std::to_string(m.samples) + "}";
}

std::string TrainReport::to_json() const {
    static const char* outcomes[] = {"committed", "rolled_back", "nothing_to_do", "cancelled"};
    std::string curve;
    for (float l : loss_curve) curve += (curve.empty() ? "" : ",") + json_number(l);
    std::string s = "{\"outcome\":\"" + std::string(outcomes[static_cast<int>(outcome)]) +
                    "\",\"reason\":\"" + json_escape(reason) +
                    "\",\"steps\":" + std::to_string(steps) +
                    ",\"epochs\":" + std::to_string(epochs) +
                    ",\"train_samples\":" + std::to_string(train_samples) +
                    ",\"validation_samples\":" + std::to_string(validation_samples) +
                    ",\"loss_curve\":[" + curve + "]";
    if (before) s += ",\"before\":" + detail::metrics_json(*before);
    if (after) s += ",\"after\":" + detail::metrics_json(*after);
    s += ",\"duration_ms\":" + std::to_string(duration.count()) +
         ",\"retrained_from_base\":" + (retrained_from_base ? "true" : "false") + "}";
    return s;
}

}  // namespace edgetune
