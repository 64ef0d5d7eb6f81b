// upgrade.cpp — backbone upgrades' guard and undo, and the check of a shipped head
// (detail/upgrade.hpp).
#include "detail/upgrade.hpp"

#include <numeric>

namespace edgetune::detail {

using namespace meta;

namespace {

[[noreturn]] void fail(const char* op, const std::string& message) {
    throw InvalidArgument(std::string("[") + op + "] " + message);
}

}  // namespace

std::optional<Metrics> previous_head_metrics(const SampleStore& st, const HeadSpec& spec,
                                             const Dataset& d,
                                             const std::vector<std::size_t>& rows) {
    const std::string from = st.get_meta(meta_upgrade_from).value_or("");
    const std::string key = st.get_meta(meta_upgrade_from_features).value_or("");
    const auto trained = st.latest_checkpoint(CheckpointKind::trained);
    if (from.empty() || key.empty() || rows.empty() || !trained ||
        trained->info.backbone_digest != from)
        return std::nullopt;
    std::vector<std::int64_t> ids;
    for (std::size_t r : rows) ids.push_back(d.ids[r]);
    Dataset old;
    try {
        old.features = st.get_features(key, ids);
    } catch (const InvalidArgument&) {
        return std::nullopt;  // not every sample has old features: nothing to compare
    }
    const Checkpoint c = decode_checkpoint(trained->payload);
    Rng unused(0);
    Head head(spec, old.features.cols(), unused);
    head.load(c.tensors);
    std::vector<std::size_t> all(rows.size());
    std::iota(all.begin(), all.end(), std::size_t{0});
    for (std::size_t r : rows) old.labels.push_back(spec.classifies() ? d.labels[r] : 0);
    if (!spec.classifies()) {
        old.targets.resize(static_cast<Index>(rows.size()), d.targets.cols());
        for (std::size_t i = 0; i < rows.size(); ++i)
            old.targets.row(static_cast<Index>(i)) = d.targets.row(static_cast<Index>(rows[i]));
    }
    return evaluate_rows(head, old, all);
}

void revert_upgrade(SampleStore& st, const std::string& new_digest) {
    const std::string from = st.get_meta(meta_upgrade_from).value_or("");
    const std::string key = st.get_meta(meta_upgrade_from_features).value_or("");
    Transaction tx = st.transaction();
    st.drop_checkpoints(new_digest);
    st.keep_only_features(key);
    st.set_meta(meta_digest, from);
    st.set_meta(meta_feature_key, key);
    st.set_meta(meta_retrain_pending, "");
    st.set_meta(meta_upgrade_from, "");
    st.set_meta(meta_upgrade_from_features, "");
    tx.commit();
}

std::vector<bool> enrolled_columns(const Head& head) {
    const auto tensors = head.tensors();  // by value: a reference into it must not outlive it
    const Matrix& w = tensors.front().second;
    std::vector<bool> seen(static_cast<std::size_t>(w.cols()), false);
    for (Index c = 0; c < w.cols(); ++c) seen[static_cast<std::size_t>(c)] = !w.col(c).isZero(0);
    return seen;
}

void check_initial_head(const HeadWeights& w, const HeadSpec& spec, const Backbone& backbone) {
    const char* op = "Personalizer.open";
    if (!w.backbone_digest.empty() && w.backbone_digest != backbone.digest())
        fail(op, "initial_head was trained on backbone " + w.backbone_digest + ", not on " +
                     backbone.digest());
    for (const auto& [name, value] : w.tensors)
        if (!value.allFinite()) fail(op, "initial_head tensor '" + name + "' holds NaN or Inf");
    Rng unused(0);
    Head head(spec, backbone.feature_dim(), unused);
    try {
        head.load(w.tensors);
    } catch (const CorruptData& e) {
        // Head::load names the tensor and both shapes; the expected layout is in HeadWeights.
        fail(op, std::string("initial_head does not fit the head spec and the backbone's ") +
                     std::to_string(backbone.feature_dim()) + " features: " + e.what());
    }
}

}  // namespace edgetune::detail
