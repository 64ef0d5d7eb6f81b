// head_checkpoint.cpp — encoding and decoding the head checkpoint (detail/head_checkpoint.hpp).
#include "detail/head_checkpoint.hpp"

#include <algorithm>
#include <charconv>
#include <cstdio>
#include <cstdlib>
#include <iterator>
#include <sstream>

namespace edgetune {

namespace {

constexpr const char* head_kinds[] = {"linear", "mlp", "prototype", "regression"};

[[noreturn]] void bad_spec(std::string_view text, const std::string& why) {
    throw CorruptData("[HeadSpec.parse] '" + std::string(text) + "': " + why);
}

// The integer of `value`, all of it, > 0 (`key` names it in the error).
std::int64_t positive(std::string_view text, std::string_view key, const std::string& value) {
    std::int64_t v = 0;
    const auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), v);
    if (ec != std::errc() || end != value.data() + value.size() || v <= 0)
        bad_spec(text, std::string(key) + " '" + value + "' is not a positive integer");
    return v;
}

}  // namespace

std::string HeadSpec::to_string() const {
    std::string list;
    for (Index v : hidden) list += (list.empty() ? "" : ",") + std::to_string(v);
    char t[32];
    std::snprintf(t, sizeof t, "%.9g", static_cast<double>(temperature));
    return std::string(head_kinds[static_cast<int>(kind)]) + " outputs=" + std::to_string(outputs) +
           " hidden=[" + list + "] temperature=" + t + " normalize=" + std::to_string(normalize) +
           (cosine ? " cosine=1" : "");
}

HeadSpec HeadSpec::parse(std::string_view text) {
    std::istringstream in{std::string(text)};
    std::string kind, word;
    in >> kind;
    HeadSpec h;
    const auto* k = std::find(std::begin(head_kinds), std::end(head_kinds), kind);
    if (k == std::end(head_kinds)) bad_spec(text, "unknown head kind '" + kind + "'");
    h.kind = static_cast<Kind>(k - std::begin(head_kinds));
    while (in >> word) {
        const auto eq = word.find('=');
        const std::string key = word.substr(0, eq);
        const std::string value = eq == std::string::npos ? "" : word.substr(eq + 1);
        if (key == "outputs") {
            h.outputs = positive(text, key, value);
        } else if (key == "hidden") {
            if (value.size() < 2 || value.front() != '[' || value.back() != ']')
                bad_spec(text, "hidden '" + value + "' is not a [list]");
            const std::string list = value.substr(1, value.size() - 2);
            for (std::size_t start = 0; !list.empty();) {
                const auto comma = list.find(',', start);
                h.hidden.push_back(positive(text, key, list.substr(start, comma - start)));
                if (comma == std::string::npos) break;
                start = comma + 1;
            }
        } else if (key == "temperature") {
            char* end = nullptr;
            h.temperature = std::strtof(value.c_str(), &end);
            if (value.empty() || *end != '\0' || !(h.temperature > 0.0f))
                bad_spec(text, "temperature '" + value + "' is not a number > 0");
        } else if (key == "normalize" && (value == "0" || value == "1")) {
            h.normalize = value == "1";
        } else if (key == "cosine" && value == "1") {
            h.cosine = true;
        } else {
            bad_spec(text, "unexpected '" + word + "'");
        }
    }
    if (h.outputs <= 0) bad_spec(text, "no outputs");
    return h;
}

}  // namespace edgetune

namespace edgetune::detail {

std::vector<std::uint8_t> encode_head_checkpoint(const Head& head, const std::string& digest,
                                                 const OptimizerState& optimizer, std::int64_t step,
                                                 const std::vector<bool>& seen, const Rng& rng,
                                                 const std::string& metrics) {
    Checkpoint c;
    c.kind = "head";
    std::string seen_str;
    for (bool b : seen) seen_str += b ? '1' : '0';
    c.attrs = {
        {"head", head.spec().to_string()}, {"backbone_digest", digest}, {"seen_classes", seen_str}};
    c.tensors = head.tensors();
    c.optimizer = optimizer;
    c.step = step;
    c.rng = rng.state();
    c.metrics = metrics;
    return encode_checkpoint(c);
}

HeadCheckpoint decode_head_checkpoint(std::span<const std::uint8_t> payload, std::int64_t classes) {
    Checkpoint c = decode_checkpoint(payload);
    HeadCheckpoint h;
    h.tensors = std::move(c.tensors);
    h.optimizer = std::move(c.optimizer);
    h.step = c.step;
    h.seen.assign(static_cast<std::size_t>(classes), false);
    for (const auto& [k, v] : c.attrs)
        if (k == "seen_classes")
            for (std::size_t i = 0; i < v.size() && i < h.seen.size(); ++i) h.seen[i] = v[i] == '1';
    return h;
}

}  // namespace edgetune::detail

namespace edgetune {

HeadWeights HeadWeights::load(const std::string& path) {
    constexpr std::size_t max_head_bytes = std::size_t{1} << 30;
    Checkpoint c = decode_checkpoint(read_file(path, max_head_bytes));
    if (c.kind != "head")
        throw CorruptData("[HeadWeights.load] '" + path + "' holds a '" + c.kind + "', not a head");
    HeadWeights w{.tensors = std::move(c.tensors), .backbone_digest = {}};
    for (const auto& [k, v] : c.attrs)
        if (k == "backbone_digest") w.backbone_digest = v;
    return w;
}

}  // namespace edgetune
