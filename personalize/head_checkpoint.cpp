// head_checkpoint.cpp — encoding and decoding the head checkpoint (detail/head_checkpoint.hpp).
#include "detail/head_checkpoint.hpp"

#include <cstdio>

namespace edgetune::detail {

std::string head_spec_string(const HeadSpec& h) {
    static const char* kinds[] = {"linear", "mlp", "prototype", "regression"};
    std::string hidden;
    for (Index v : h.hidden) hidden += (hidden.empty() ? "" : ",") + std::to_string(v);
    char t[32];
    std::snprintf(t, sizeof t, "%.9g", static_cast<double>(h.temperature));
    return std::string(kinds[static_cast<int>(h.kind)]) + " outputs=" + std::to_string(h.outputs) +
           " hidden=[" + hidden + "] temperature=" + t +
           " normalize=" + std::to_string(h.normalize) + (h.cosine ? " cosine=1" : "");
}

std::vector<std::uint8_t> encode_head_checkpoint(const Head& head, const std::string& digest,
                                                 const OptimizerState& optimizer, std::int64_t step,
                                                 const std::vector<bool>& seen, const Rng& rng,
                                                 const std::string& metrics) {
    Checkpoint c;
    c.kind = "head";
    std::string seen_str;
    for (bool b : seen) seen_str += b ? '1' : '0';
    c.attrs = {{"head", head_spec_string(head.spec())},
               {"backbone_digest", digest},
               {"seen_classes", seen_str}};
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
