// state.cpp — Personalizer::Impl's stored state: the head checkpoints it encodes, decodes and
// saves, the calibration it publishes with a head, and the cached features it fills in.
// detail/personalizer_impl.hpp declares them; run.cpp and the façade call them.
#include "detail/calibration.hpp"
#include "detail/head.hpp"
#include "detail/head_checkpoint.hpp"
#include "detail/personalizer_impl.hpp"
#include "detail/upgrade.hpp"

namespace edgetune {

using detail::Dataset;

// ---- calibration ----------------------------------------------------------------------

Matrix Personalizer::Impl::stored_prototypes(const SampleStore& st) const {
    const Dataset d = load_dataset(st);
    std::vector<std::size_t> rows;
    for (std::size_t i = 0; i < d.ids.size(); ++i)
        if (!d.validation[i]) rows.push_back(i);
    return detail::class_prototypes(d, rows, spec().outputs);
}

void Personalizer::Impl::publish_stored_calibration(const SampleStore& st) {
    const auto c = calibration_of(current_checkpoint(st));
    publish_calibration(c, c ? stored_prototypes(st) : Matrix());
}

std::optional<Calibration> Personalizer::Impl::calibration_of(const StoredCheckpoint& c) {
    if (c.info.metrics.find("\"calibration\"") == std::string::npos) return std::nullopt;
    return TrainReport::from_json(c.info.metrics).calibration;
}

void Personalizer::Impl::calibrate_unknown(TrainReport& report, Matrix& protos, const Dataset& d,
                                           const detail::RowSelection& rows, const Unknown& u,
                                           Index classes, const Matrix& background) {
    if (u.kind == Unknown::Kind::off) return;
    protos = detail::class_prototypes(d, rows.train, classes);
    Matrix x(static_cast<Index>(rows.validation.size()), d.features.cols());
    IdList y;
    for (std::size_t i = 0; i < rows.validation.size(); ++i) {
        x.row(static_cast<Index>(i)) = d.features.row(static_cast<Index>(rows.validation[i]));
        y.push_back(d.labels[rows.validation[i]]);
    }
    report.calibration =
        detail::calibrate(detail::cosine_scores(x, protos), y, u, report.calibration_note,
                          detail::stranger_scores(background, protos));
}

// ---- checkpoints ----------------------------------------------------------------------

std::vector<std::uint8_t> Personalizer::Impl::encode(const Head& head, const OptimizerState& opt,
                                                     std::int64_t step,
                                                     const std::vector<bool>& seen, const Rng& rng,
                                                     const std::string& metrics) const {
    return detail::encode_head_checkpoint(head, digest, opt, step, seen, rng, metrics);
}

Personalizer::Impl::HeadState Personalizer::Impl::decode(const StoredCheckpoint& stored) const {
    const HeadSpec h = spec();
    detail::HeadCheckpoint c = detail::decode_head_checkpoint(stored.payload, h.outputs);
    // A checkpoint from before an add_class: the new classes' columns are added here.
    if (h.classifies()) {
        grow_classes(c.tensors, h, h.outputs);
        grow_classes(c.optimizer, h.outputs);
    }
    Rng unused(0);  // the checkpoint's parameters replace an initialization: draw none
    HeadState s{.head = std::make_shared<Head>(h, backbone().feature_dim(), unused, Init::zeros),
                .optimizer = std::move(c.optimizer),
                .step = c.step,
                .seen = std::move(c.seen)};
    s.head->load(c.tensors);
    return s;
}

StoredCheckpoint Personalizer::Impl::current_checkpoint(const SampleStore& st) const {
    auto trained = st.latest_checkpoint(CheckpointKind::trained);
    if (trained && trained->info.backbone_digest == digest) return std::move(*trained);
    return base_checkpoint(st);
}

StoredCheckpoint Personalizer::Impl::base_checkpoint(const SampleStore& st) const {
    auto base = st.latest_checkpoint(CheckpointKind::base);
    if (!base || base->info.backbone_digest != digest)
        throw CorruptData("[Personalizer] no base checkpoint for backbone " + digest);
    return std::move(*base);
}

void Personalizer::Impl::save_base(SampleStore& st) {
    auto head = new_head(options.seed);
    std::vector<bool> seen(static_cast<std::size_t>(spec().outputs), false);
    if (options.initial_head) {
        head->load(options.initial_head->tensors);
        seen = detail::enrolled_columns(*head);
    }
    const auto payload = encode(*head, {}, 0, seen, Rng(options.seed), "{}");
    st.save_checkpoint(
        {.kind = CheckpointKind::base, .step = 0, .backbone_digest = digest, .metrics = "{}"},
        payload);
}

std::shared_ptr<Head> Personalizer::Impl::save_base_without(SampleStore& st, std::int32_t label) {
    HeadState base = load_base(st);
    auto tensors = base.head->tensors();
    drop_class(tensors, label);
    base.seen.erase(base.seen.begin() + label);
    HeadSpec h = spec();
    h.outputs -= 1;
    Rng unused(0);
    auto head = std::make_shared<Head>(h, backbone().feature_dim(), unused);
    head->load(tensors);
    const auto payload = encode(*head, {}, 0, base.seen, Rng(options.seed), "{}");
    st.save_checkpoint(
        {.kind = CheckpointKind::base, .step = 0, .backbone_digest = digest, .metrics = "{}"},
        payload);
    return head;
}

// ---- features -------------------------------------------------------------------------

void Personalizer::Impl::fill_missing_features(SampleStore& st) {
    for (;;) {
        const auto ids = st.ids_missing_features(feature_key, 256);
        if (ids.empty()) return;
        const auto samples = st.get_many(ids);
        st.put_features(feature_key, ids, backbone().features(samples));
    }
}

Dataset Personalizer::Impl::load_dataset(const SampleStore& st) const {
    Dataset d = detail::read_dataset(st, spec(), feature_key, backbone().feature_dim());
    detail::mark_validation(d, spec(), options.seed, options.validation_fraction);
    return d;
}

}  // namespace edgetune
