// report.cpp — TrainReport as JSON, the format of the training log (runs table) and of a
// checkpoint's metrics: to_json writes it, from_json reads it back (common/json.hpp).
#include <cmath>
#include <limits>

#include "detail/training.hpp"
#include "json.hpp"

namespace edgetune {

namespace {

const char* const outcome_names[] = {"committed", "rolled_back", "nothing_to_do", "cancelled"};

[[noreturn]] void bad(const std::string& what) {
    throw CorruptData("[TrainReport.from_json] " + what);
}

const Json& member(const Json& o, const char* key) {
    const Json* v = o.find(key);
    if (!v) bad(std::string("no \"") + key + "\"");
    return *v;
}

// A number; null reads as NaN (to_json writes NaN/Inf as null).
double number(const Json& v, const char* key) {
    if (v.kind == Json::Kind::null) return std::numeric_limits<double>::quiet_NaN();
    if (v.kind != Json::Kind::number) bad(std::string("\"") + key + "\" is not a number");
    return v.number;
}

// An integer-valued number that fits in [lo, hi].
std::int64_t integer(const Json& o, const char* key, std::int64_t lo, std::int64_t hi) {
    const double v = number(member(o, key), key);
    if (!(v >= static_cast<double>(lo) && v <= static_cast<double>(hi)) || v != std::floor(v))
        bad(std::string("\"") + key + "\" = " + json_number(v) + " is not an integer in [" +
            std::to_string(lo) + ", " + std::to_string(hi) + "]");
    return static_cast<std::int64_t>(v);
}

Metrics metrics_from(const Json& o, const char* key) {
    if (o.kind != Json::Kind::object) bad(std::string("\"") + key + "\" is not an object");
    return {.loss = number(member(o, "loss"), "loss"),
            .accuracy = number(member(o, "accuracy"), "accuracy"),
            .balanced_accuracy = number(member(o, "balanced_accuracy"), "balanced_accuracy"),
            .samples = integer(o, "samples", 0, std::int64_t{1} << 53)};
}

Calibration calibration_from(const Json& o) {
    if (o.kind != Json::Kind::object) bad("\"calibration\" is not an object");
    constexpr std::int64_t big = std::int64_t{1} << 53;
    return {.threshold = number(member(o, "threshold"), "threshold"),
            .far = number(member(o, "far"), "far"),
            .frr = number(member(o, "frr"), "frr"),
            .eer = number(member(o, "eer"), "eer"),
            .genuine = integer(o, "genuine", 0, big),
            .impostor = integer(o, "impostor", 0, big)};
}

}  // namespace

std::string detail::metrics_json(const Metrics& m) {
    return "{\"loss\":" + json_number(m.loss) + ",\"accuracy\":" + json_number(m.accuracy) +
           ",\"balanced_accuracy\":" + json_number(m.balanced_accuracy) +
           ",\"samples\":" + std::to_string(m.samples) + "}";
}

std::string TrainReport::to_json() const {
    std::string curve;
    for (float l : loss_curve) curve += (curve.empty() ? "" : ",") + json_number(l);
    std::string s = "{\"outcome\":\"" + std::string(outcome_names[static_cast<int>(outcome)]) +
                    "\",\"reason\":" + json_string(reason) + ",\"steps\":" + std::to_string(steps) +
                    ",\"epochs\":" + std::to_string(epochs) +
                    ",\"train_samples\":" + std::to_string(train_samples) +
                    ",\"validation_samples\":" + std::to_string(validation_samples) +
                    ",\"loss_curve\":[" + curve + "]";
    if (before) s += ",\"before\":" + detail::metrics_json(*before);
    if (after) s += ",\"after\":" + detail::metrics_json(*after);
    if (calibration)
        s += ",\"calibration\":{\"threshold\":" + json_number(calibration->threshold) +
             ",\"far\":" + json_number(calibration->far) +
             ",\"frr\":" + json_number(calibration->frr) +
             ",\"eer\":" + json_number(calibration->eer) +
             ",\"genuine\":" + std::to_string(calibration->genuine) +
             ",\"impostor\":" + std::to_string(calibration->impostor) + "}";
    if (!calibration_note.empty()) s += ",\"calibration_note\":" + json_string(calibration_note);
    s += ",\"duration_ms\":" + std::to_string(duration.count()) +
         ",\"retrained_from_base\":" + (retrained_from_base ? "true" : "false") + "}";
    return s;
}

TrainReport TrainReport::from_json(std::string_view json) {
    const Json o = parse_json(json);
    if (o.kind != Json::Kind::object) bad("not a JSON object");
    TrainReport r;
    const Json& outcome = member(o, "outcome");
    bool known = false;
    for (int k = 0; k < 4; ++k)
        if (outcome.kind == Json::Kind::string && outcome.string == outcome_names[k]) {
            r.outcome = static_cast<Outcome>(k);
            known = true;
        }
    if (!known) bad("unknown \"outcome\" " + json_string(outcome.string));
    const Json& reason = member(o, "reason");
    if (reason.kind != Json::Kind::string) bad("\"reason\" is not a string");
    r.reason = reason.string;
    constexpr std::int64_t big = std::int64_t{1} << 53;  // exact in a double
    r.steps = integer(o, "steps", 0, big);
    r.epochs = static_cast<int>(integer(o, "epochs", 0, std::numeric_limits<int>::max()));
    r.train_samples = integer(o, "train_samples", 0, big);
    r.validation_samples = integer(o, "validation_samples", 0, big);
    const Json& curve = member(o, "loss_curve");
    if (curve.kind != Json::Kind::array) bad("\"loss_curve\" is not an array");
    for (const Json& v : curve.array)
        r.loss_curve.push_back(static_cast<float>(number(v, "loss_curve")));
    if (const Json* b = o.find("before")) r.before = metrics_from(*b, "before");
    if (const Json* a = o.find("after")) r.after = metrics_from(*a, "after");
    if (const Json* c = o.find("calibration")) r.calibration = calibration_from(*c);
    if (const Json* n = o.find("calibration_note")) {
        if (n->kind != Json::Kind::string) bad("\"calibration_note\" is not a string");
        r.calibration_note = n->string;
    }
    r.duration = std::chrono::milliseconds(integer(o, "duration_ms", 0, big));
    const Json& base = member(o, "retrained_from_base");
    if (base.kind != Json::Kind::boolean) bad("\"retrained_from_base\" is not true or false");
    r.retrained_from_base = base.boolean;
    return r;
}

}  // namespace edgetune
