// personalizer.cpp — the Personalizer façade: open/upgrade, add, predict, verify, evaluate,
// train, forget. Its state is Personalizer::Impl (detail/personalizer_impl.hpp, state.cpp); a
// training run is run.cpp, whose policies live in detail/training.hpp (rows.cpp, loss.cpp,
// loop.cpp, decision.cpp); classes in classes.cpp; the report's JSON in report.cpp;
// train_async in background.cpp. Concurrency: see detail/personalizer_impl.hpp.
#include <algorithm>
#include <filesystem>
#include <mutex>
#include <numeric>

#include "detail/calibration.hpp"
#include "detail/head_checkpoint.hpp"
#include "detail/personalizer_impl.hpp"
#include "detail/upgrade.hpp"
#include "fp_mode.hpp"
#include "personalize.hpp"

namespace edgetune {

using namespace detail::meta;
using detail::Dataset;
using detail::fail;

// ---- Personalizer ----------------------------------------------------------------------

Personalizer::Personalizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Personalizer::~Personalizer() = default;

std::unique_ptr<Personalizer> Personalizer::open(const std::string& db_path,
                                                 const PersonalizerOptions& options) {
    const FlushDenormals flush;  // fp_mode.hpp: the caller's mode is restored on return
    const char* op = "Personalizer.open";
    if (!options.backbone) fail(op, "no backbone given");
    if (options.head.outputs <= 0)
        fail(op, "head outputs = " + std::to_string(options.head.outputs) + " must be > 0");
    if (!(options.validation_fraction >= 0.0f && options.validation_fraction < 1.0f))
        fail(op, "validation_fraction = " + std::to_string(options.validation_fraction) +
                     " outside [0, 1)");
    if (options.initial_head)
        detail::check_initial_head(*options.initial_head, options.head, *options.backbone);
    StoreOptions so;
    so.input = options.backbone->config().input;
    so.label = options.head.classifies() ? LabelSpec::classes(options.head.outputs)
                                         : LabelSpec::regression(options.head.outputs);
    so.retention = options.retention;
    so.durability = options.durability;
    so.read_only = options.read_only;
    if (options.read_only && !std::filesystem::exists(db_path))
        fail(op, "'" + db_path + "' does not exist (read-only open)");
    SampleStore store = SampleStore::open(db_path, so);
    auto impl = std::make_unique<Impl>(db_path, options, so, std::move(store));
    Impl& m = *impl;

    const std::string spec = options.head.to_string();
    if (auto stored = m.store.get_meta(meta_head); stored && *stored != spec)
        fail(op, "'" + db_path + "' was created with head '" + *stored + "', not '" + spec + "'");
    const auto stored_digest = m.store.get_meta(meta_digest);
    if (stored_digest && *stored_digest != m.digest && !options.upgrade_backbone)
        fail(op, "'" + db_path + "' holds the features and head of backbone " + *stored_digest +
                     ", not of this backbone " + m.digest +
                     "; set upgrade_backbone to recompute the features and retrain "
                     "(nothing was changed)");
    if (options.read_only) {
        if (!stored_digest) fail(op, "'" + db_path + "' is not a personalization database yet");
        // An owed retrain (forget, upgrade) is not run here: serve the base head meanwhile,
        // never a head that still holds what was forgotten.
        const bool owed = !m.store.get_meta(meta_retrain_pending).value_or("").empty();
        m.publish(owed ? m.load_base(m.store).head : m.load_current(m.store).head);
        if (!owed) m.publish_stored_calibration(m.store);
        return std::unique_ptr<Personalizer>(new Personalizer(std::move(impl)));
    }
    if (!stored_digest) {
        Transaction tx = m.store.transaction();
        m.store.set_meta(meta_head, spec);
        m.save_base(m.store);
        m.store.set_meta(meta_digest, m.digest);
        tx.commit();
    } else if (*stored_digest != m.digest) {
        // Backbone upgrade: recompute features from the raw inputs, fresh base; the retrain
        // below is owed until it commits (a crash in between retrains at the next open).
        m.fill_missing_features(m.store);
        Transaction tx = m.store.transaction();
        m.store.set_meta(meta_upgrade_from, *stored_digest);
        m.store.set_meta(meta_upgrade_from_features,
                         m.store.get_meta(meta_feature_key).value_or(*stored_digest));
        m.save_base(m.store);
        m.store.set_meta(meta_digest, m.digest);
        m.store.set_meta(meta_trained_upto, "0");
        m.store.set_meta(meta_retrain_pending, "upgrade");
        tx.commit();
    }
    if (m.store.get_meta(meta_feature_key) != m.feature_key) {
        // Features computed elsewhere (another CPU's kernel variant, or a store older than the
        // key): replaced, never mixed with this process's.
        Transaction tx = m.store.transaction();
        if (m.store.get_meta(meta_upgrade_from).value_or("").empty())
            m.store.keep_only_features(m.feature_key);
        m.store.set_meta(meta_feature_key, m.feature_key);
        tx.commit();
    }
    // Retention never evicts what no committed head has learned from (storage.hpp Retention).
    m.store.set_trained_upto(std::stoll(m.store.get_meta(meta_trained_upto).value_or("0")));
    m.fill_missing_features(m.store);
    if (const auto pending = m.store.get_meta(meta_retrain_pending); pending && !pending->empty()) {
        TrainReport report =
            m.run(*pending == "upgrade" ? options.upgrade_training : TrainOptions{},
                  Impl::Mode::from_base);
        if (*pending == "upgrade" && report.outcome == TrainReport::Outcome::rolled_back)
            throw InvalidArgument(std::string("[") + op + "] the upgrade of '" + db_path +
                                  "' to backbone " + m.digest + " was rolled back: " +
                                  report.reason + "; the store keeps its previous backbone");
        if (*pending == "upgrade") m.upgrade_report = std::move(report);
    }
    m.publish(m.load_current(m.store).head);
    m.publish_stored_calibration(m.store);
    return std::unique_ptr<Personalizer>(new Personalizer(std::move(impl)));
}

std::int64_t Personalizer::add(const Sample& sample) {
    return add(std::span<const Sample>(&sample, 1)).at(0);
}

std::vector<std::int64_t> Personalizer::add(std::span<const Sample> samples) {
    return add(samples, {});
}

std::vector<std::int64_t> Personalizer::add(std::span<const Sample> samples,
                                            std::string_view idempotency_key) {
    const FlushDenormals flush;  // fp_mode.hpp: the caller's mode is restored on return
    if (samples.empty()) fail("Personalizer.add", "empty batch");
    // Features first: a wrong width or NaN is rejected before anything is written.
    const Matrix features = impl_->backbone().features(samples);
    std::lock_guard lock(impl_->store_mu);
    SampleStore& st = impl_->store;
    Transaction tx = st.transaction();
    // A key seen before returns its ids; put_features below then rewrites the same bits.
    std::vector<std::int64_t> evicted;  // ascending
    std::vector<std::int64_t> ids = idempotency_key.empty()
                                        ? st.add_batch(samples, evicted)
                                        : st.add_batch(samples, idempotency_key, evicted);
    std::vector<std::int64_t> kept;
    std::vector<Index> rows;
    for (std::size_t i = 0; i < ids.size(); ++i)
        if (ids[i] != SampleStore::not_kept &&
            !std::binary_search(evicted.begin(), evicted.end(), ids[i])) {
            kept.push_back(ids[i]);
            rows.push_back(static_cast<Index>(i));
        }
    if (!kept.empty()) {
        Matrix values(static_cast<Index>(kept.size()), features.cols());
        for (std::size_t i = 0; i < rows.size(); ++i)
            values.row(static_cast<Index>(i)) = features.row(rows[i]);
        st.put_features(impl_->feature_key, kept, values);
    }
    tx.commit();
    return ids;
}

std::vector<Prediction> Personalizer::predict(const Sample& input, int k) const {
    const FlushDenormals flush;  // fp_mode.hpp: the caller's mode is restored on return
    if (!impl_->spec().classifies()) fail("predict", "a regression head: use regress()");
    if (k <= 0) fail("predict", "k = " + std::to_string(k) + " must be > 0");
    const Matrix f = impl_->backbone().features(std::span<const Sample>(&input, 1));
    const Matrix logits = impl_->current_head()->infer(f);
    const float mx = logits.maxCoeff();
    const Eigen::RowVectorXf p = (logits.row(0).array() - mx).exp().matrix();
    const float total = p.sum();
    Matrix protos;
    if (const auto c = impl_->current_calibration(protos)) {
        Index top = 0;
        const float best = p.maxCoeff(&top) / total;
        if (top < protos.rows() &&
            detail::cosine_scores(f, protos)(0, top) < static_cast<float>(c->threshold))
            return {{.label = Prediction::unknown_label, .probability = best, .unknown = true}};
    }
    std::vector<Prediction> out;
    for (Index c = 0; c < p.size(); ++c)
        out.push_back({static_cast<std::int32_t>(c), p[c] / total});
    const auto top = std::min<std::size_t>(static_cast<std::size_t>(k), out.size());
    std::partial_sort(out.begin(), out.begin() + static_cast<std::ptrdiff_t>(top), out.end(),
                      [](const Prediction& a, const Prediction& b) {
                          return a.probability > b.probability ||
                                 (a.probability == b.probability && a.label < b.label);
                      });
    out.resize(top);
    return out;
}

Verification Personalizer::verify(const Sample& input, std::int32_t label) const {
    const FlushDenormals flush;  // fp_mode.hpp: the caller's mode is restored on return
    if (!impl_->spec().classifies()) fail("verify", "a regression head: use regress()");
    Matrix protos;
    const auto c = impl_->current_calibration(protos);
    if (!c)
        fail("verify",
             "the head has no calibrated threshold: train with TrainOptions::unknown (the "
             "report says when there was too little held-out data)");
    const Matrix f = impl_->backbone().features(std::span<const Sample>(&input, 1));
    const Matrix scores = detail::cosine_scores(f, protos);
    if (label < 0 || label >= scores.cols())
        fail("verify", "label " + std::to_string(label) + " out of range for " +
                           std::to_string(scores.cols()) + " classes");
    const float score = scores(0, label);
    const auto threshold = static_cast<float>(c->threshold);
    return {.score = score, .threshold = threshold, .accept = score >= threshold};
}

std::vector<float> Personalizer::regress(const Sample& input) const {
    const FlushDenormals flush;  // fp_mode.hpp: the caller's mode is restored on return
    if (impl_->spec().classifies()) fail("regress", "a classification head: use predict()");
    const Matrix f = impl_->backbone().features(std::span<const Sample>(&input, 1));
    const Matrix out = impl_->current_head()->infer(f);
    return std::vector<float>(out.data(), out.data() + out.size());
}

Metrics Personalizer::evaluate(std::span<const Sample> samples) const {
    const FlushDenormals flush;  // fp_mode.hpp: the caller's mode is restored on return
    const Dataset d =
        detail::dataset_of(samples, impl_->backbone().features(samples), impl_->spec());
    std::vector<std::size_t> rows(samples.size());
    std::iota(rows.begin(), rows.end(), std::size_t{0});
    return detail::evaluate_rows(*impl_->current_head(), d, rows);
}

Metrics Personalizer::evaluate(std::span<const Sample> samples, int k) const {
    const FlushDenormals flush;  // fp_mode.hpp: the caller's mode is restored on return
    if (!impl_->spec().classifies()) fail("evaluate", "top-k needs a classification head");
    if (k <= 0) fail("evaluate", "k = " + std::to_string(k) + " must be > 0");
    const Dataset d =
        detail::dataset_of(samples, impl_->backbone().features(samples), impl_->spec());
    std::vector<std::size_t> rows(samples.size());
    std::iota(rows.begin(), rows.end(), std::size_t{0});
    return detail::evaluate_rows(*impl_->current_head(), d, rows, k);
}

TrainReport Personalizer::train(const TrainOptions& options) {
    const FlushDenormals flush;  // fp_mode.hpp: the caller's mode is restored on return
    std::lock_guard lock(impl_->train_mu);
    return impl_->run(options, options.from_base ? Impl::Mode::from_base : Impl::Mode::incremental);
}

TrainReport Personalizer::forget(std::span<const std::int64_t> ids, const TrainOptions& retrain) {
    const FlushDenormals flush;  // fp_mode.hpp: the caller's mode is restored on return
    detail::validate_train_options(retrain);
    detail::check_unknown(retrain.unknown);
    std::lock_guard train_lock(impl_->train_mu);
    bool used = false;
    std::vector<std::int64_t> not_found;
    {
        std::lock_guard lock(impl_->store_mu);
        SampleStore& st = impl_->store;
        const std::int64_t upto = std::stoll(st.get_meta(meta_trained_upto).value_or("0"));
        for (std::int64_t id : ids) {
            const bool stored = st.get(id, Fields::no_input).has_value();
            if (!stored) not_found.push_back(id);
            used = used || (id <= upto && stored);
        }
        // The deletion and the debt to retrain commit together, durably and scrubbed from the
        // -wal (erase_ids), before the retrain: a power cut cannot bring a sample back.
        // An interrupted run's record goes too: it may hold what the samples taught.
        std::vector<std::pair<std::string, std::string>> debt{{meta_resume, ""}};
        if (used) debt.emplace_back(meta_retrain_pending, "forget");
        st.erase_ids(ids, debt);
    }
    TrainReport report;
    if (used) {
        // The erasure is committed; the retrain it owes needs room too: the reserve, once.
        report = impl_->retrain_owed(retrain);
    } else {
        report.outcome = TrainReport::Outcome::nothing_to_do;
        report.reason = "none of the forgotten samples had been trained on";
    }
    report.not_found = std::move(not_found);
    return report;
}

std::int64_t Personalizer::sample_count() const {
    std::lock_guard lock(impl_->store_mu);
    return impl_->store.count();
}

std::vector<std::int64_t> Personalizer::count_per_label() const {
    std::lock_guard lock(impl_->store_mu);
    return impl_->store.count_per_label();
}

std::optional<TrainReport> Personalizer::last_upgrade() const {
    return impl_->upgrade_report;
}

std::vector<std::pair<std::string, Matrix>> Personalizer::head_parameters() const {
    return impl_->current_head()->tensors();
}

std::vector<std::uint8_t> Personalizer::head_checkpoint() const {
    std::lock_guard lock(impl_->store_mu);
    return impl_->current_checkpoint(impl_->store).payload;
}

SampleStore& Personalizer::store() {
    return impl_->store;
}

}  // namespace edgetune
