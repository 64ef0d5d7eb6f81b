// personalizer.cpp — the Personalizer façade: open/upgrade, add, predict, evaluate, guarded
// training, forget. The training policies it calls live in detail/training.hpp (rows.cpp,
// loss.cpp, loop.cpp, decision.cpp); the report's JSON in report.cpp; train_async in
// background.cpp.
//
// Concurrency: the app's connection (`store`) is guarded by `store_mu`; a training run opens
// its own connection to the same file (SQLite WAL: one writer, many readers), so add() and
// predict() proceed while it runs. predict() reads `committed`, an immutable head swapped in
// under `head_mu` after each commit. At most one training run at a time (`train_mu`).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <numeric>

#include "detail/calibration.hpp"
#include "detail/head.hpp"
#include "detail/head_checkpoint.hpp"
#include "detail/training.hpp"
#include "detail/upgrade.hpp"
#include "fp_mode.hpp"
#include "personalize.hpp"

namespace edgetune {

using namespace detail::meta;
using detail::Clock;
using detail::Dataset;
using detail::head_spec_string;

namespace {

[[noreturn]] void fail(const char* op, const std::string& message) {
    throw InvalidArgument(std::string("[") + op + "] " + message);
}

// A run reads through its own connection while add() may write through the app's: a
// retention policy can evict a sample between two of the run's reads, and the second read then
// names a missing id (InvalidArgument). Such a read is retried, rather than done under the
// write lock, which would stall add() for the whole load.
template <class F>
auto retry_evicted(F&& read) {
    for (int attempt = 1;; ++attempt) {
        try {
            return read();
        } catch (const InvalidArgument&) {
            if (attempt == 5) throw;
        }
    }
}

bool all_finite(const std::vector<Var>& params) {
    for (const Var& p : params)
        if (!p.value().allFinite()) return false;
    return true;
}

bool all_finite(const OptimizerState& s) {
    for (const auto& slot : s.slots)
        for (const Matrix& m : slot)
            if (!m.allFinite()) return false;
    return true;
}

}  // namespace

// ---- Impl ------------------------------------------------------------------------------

struct Personalizer::Impl {
    std::string path;
    PersonalizerOptions options;
    StoreOptions store_options;
    std::string digest;
    std::string feature_key;  // what cached features are keyed by (digest + kernel variant)

    mutable std::mutex store_mu;
    SampleStore store;

    mutable std::mutex head_mu;
    std::shared_ptr<Head> committed;  // immutable once published
    // The committed head's "unknown" threshold (TrainReport::calibration), if it has one, and
    // the class prototypes [C x F] its scores are taken against (detail/calibration.hpp): the
    // trained-on samples' as of the commit; after a reopen, the stored non-validation samples'.
    std::optional<Calibration> calibration;
    Matrix prototypes;

    std::mutex train_mu;
    std::optional<TrainReport> upgrade_report;
    // Classification heads: the live number of classes (the store's classes table); the spec's
    // outputs are the initial number. Changed under store_mu.
    std::atomic<std::int64_t> live_classes{0};

    Impl(std::string p, PersonalizerOptions o, StoreOptions so, SampleStore s)
        : path(std::move(p)),
          options(std::move(o)),
          store_options(so),
          digest(options.backbone->digest()),
          feature_key(options.backbone->feature_key()),
          store(std::move(s)) {
        live_classes = store.label_spec().size;
    }

    const Backbone& backbone() const { return *options.backbone; }
    // The head spec with the live number of classes.
    HeadSpec spec() const {
        HeadSpec h = options.head;
        if (h.classifies()) h.outputs = live_classes.load();
        return h;
    }

    std::shared_ptr<Head> new_head(std::uint64_t seed) const {
        Rng rng(seed);
        return std::make_shared<Head>(spec(), backbone().feature_dim(), rng);
    }

    std::shared_ptr<Head> current_head() const {
        std::lock_guard lock(head_mu);
        return committed;
    }

    // The calibration and its prototypes, copied under the lock.
    std::optional<Calibration> current_calibration(Matrix& protos) const {
        std::lock_guard lock(head_mu);
        if (calibration) protos = prototypes;
        return calibration;
    }

    void publish_calibration(std::optional<Calibration> c, Matrix protos = {}) {
        std::lock_guard lock(head_mu);
        calibration = c;
        prototypes = std::move(protos);
    }

    // Prototypes of every non-validation sample stored (a reopened calibrated head).
    Matrix stored_prototypes(const SampleStore& st) const {
        const Dataset d = load_dataset(st);
        std::vector<std::size_t> rows;
        for (std::size_t i = 0; i < d.ids.size(); ++i)
            if (!d.validation[i]) rows.push_back(i);
        return detail::class_prototypes(d, rows, spec().outputs);
    }

    void publish_stored_calibration(const SampleStore& st) {
        const auto c = calibration_of(current_checkpoint(st));
        publish_calibration(c, c ? stored_prototypes(st) : Matrix());
    }

    // The calibration recorded with a checkpoint (its metrics are a TrainReport's JSON).
    static std::optional<Calibration> calibration_of(const StoredCheckpoint& c) {
        if (c.info.metrics.find("\"calibration\"") == std::string::npos) return std::nullopt;
        return TrainReport::from_json(c.info.metrics).calibration;
    }

    // With opts.unknown: prototypes of the training rows, scores of the validation rows
    // against them, the threshold into the report.
    static void calibrate_unknown(TrainReport& report, Matrix& protos, const Dataset& d,
                                  const detail::RowSelection& rows, const Unknown& u, Index classes,
                                  const Matrix& background) {
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

    // --- checkpoints ---
    struct HeadState {
        std::shared_ptr<Head> head;
        OptimizerState optimizer;
        std::int64_t step = 0;
        std::vector<bool> seen;  // classes that have been trained on (prototype init done)
    };

    std::vector<std::uint8_t> encode(const Head& head, const OptimizerState& opt, std::int64_t step,
                                     const std::vector<bool>& seen, const Rng& rng,
                                     const std::string& metrics) const {
        return detail::encode_head_checkpoint(head, digest, opt, step, seen, rng, metrics);
    }

    HeadState decode(const StoredCheckpoint& stored) const {
        const HeadSpec h = spec();
        detail::HeadCheckpoint c = detail::decode_head_checkpoint(stored.payload, h.outputs);
        // A checkpoint from before an add_class: the new classes' columns are added here.
        if (h.classifies()) {
            grow_classes(c.tensors, h, h.outputs);
            grow_classes(c.optimizer, h.outputs);
        }
        HeadState s{.head = new_head(0),
                    .optimizer = std::move(c.optimizer),
                    .step = c.step,
                    .seen = std::move(c.seen)};
        s.head->load(c.tensors);
        return s;
    }

    // The committed head's checkpoint: the newest trained one of this backbone, else the base.
    StoredCheckpoint current_checkpoint(const SampleStore& st) const {
        auto trained = st.latest_checkpoint(CheckpointKind::trained);
        if (trained && trained->info.backbone_digest == digest) return std::move(*trained);
        return base_checkpoint(st);
    }

    StoredCheckpoint base_checkpoint(const SampleStore& st) const {
        auto base = st.latest_checkpoint(CheckpointKind::base);
        if (!base || base->info.backbone_digest != digest)
            throw CorruptData("[Personalizer] no base checkpoint for backbone " + digest);
        return std::move(*base);
    }

    // The head to continue from.
    HeadState load_current(const SampleStore& st) const { return decode(current_checkpoint(st)); }
    HeadState load_base(const SampleStore& st) const { return decode(base_checkpoint(st)); }

    // The base head: the app's initial head if it gave one (checked by open()), else seeded.
    void save_base(SampleStore& st) {
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

    // The base head without class `label` (its column and seen entry dropped), saved as the
    // new base checkpoint; returns it. Run inside remove_class's transaction.
    std::shared_ptr<Head> save_base_without(SampleStore& st, std::int32_t label) {
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

    // A retrain from base that an erasure owes; on a full disk it may use the reserve, once.
    TrainReport retrain_owed(const TrainOptions& retrain) {
        try {
            return run(retrain, Mode::from_base);
        } catch (const DiskFull&) {
            bool released = false;
            {
                std::lock_guard lock(store_mu);
                released = store.release_reserve();
            }
            if (!released) throw;
            return run(retrain, Mode::from_base);
        }
    }

    void publish(std::shared_ptr<Head> head) {
        std::lock_guard lock(head_mu);
        committed = std::move(head);
    }

    // --- features ---
    // Computes and caches features of every sample lacking them for this backbone.
    void fill_missing_features(SampleStore& st) {
        for (;;) {
            const auto ids = st.ids_missing_features(feature_key, 256);
            if (ids.empty()) return;
            const auto samples = st.get_many(ids);
            st.put_features(feature_key, ids, backbone().features(samples));
        }
    }

    Dataset load_dataset(const SampleStore& st) const {
        Dataset d = detail::read_dataset(st, spec(), feature_key, backbone().feature_dim());
        detail::mark_validation(d, spec(), options.seed, options.validation_fraction);
        return d;
    }

    // --- training ---
    enum class Mode { incremental, from_base };

    // One run's clock, connection and report; log() or commit() ends it.
    struct Run {
        Clock::time_point start;
        SampleStore st;
        Mode mode;
        TrainReport report{};
        Matrix prototypes{};  // with a calibration: what its scores were taken against
        std::chrono::milliseconds elapsed() const {
            return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start);
        }
    };

    // The trained head a commit_trained decision commits.
    struct Trained {
        const HeadState* state = nullptr;
        OptimizerState optimizer{};
        std::int64_t step = 0;
        std::int64_t upto = 0;  // samples up to this id count as trained on
    };

    TrainReport run(const TrainOptions& opts, Mode mode);
    TrainReport apply(Run& run, const detail::Decision& d, const HeadState& base,
                      const Trained& trained, const Rng& rng);
    TrainReport commit(Run& run, const HeadState& s, const OptimizerState& optimizer_state,
                       std::int64_t step, std::int64_t upto, const Rng& rng);
};

// Reads the store, then: rows, loss, epochs, decision (detail/training.hpp), then applies it.
TrainReport Personalizer::Impl::run(const TrainOptions& opts, Mode mode) {
    detail::validate_train_options(opts);
    detail::check_unknown(opts.unknown);
    const Matrix background = detail::background_features(backbone(), opts.unknown);
    // The run's own connection: the app's connection stays free for add() and predict().
    // It never recreates a released reserve: on a full disk that room is what this run needs.
    StoreOptions run_options = store_options;
    run_options.reserve_bytes = 0;
    Run r{.start = Clock::now(), .st = SampleStore::open(path, run_options), .mode = mode};
    SampleStore& st = r.st;
    // A retrain owed by forget() or an upgrade that did not finish (crash, exception) comes
    // first: an incremental update would build on a head that must be dropped.
    if (!st.get_meta(meta_retrain_pending).value_or("").empty()) r.mode = Mode::from_base;
    const bool from_base = r.mode == Mode::from_base;
    // Samples stored through store() get their features here.
    retry_evicted([&] {
        fill_missing_features(st);
        return 0;
    });
    const Dataset data = retry_evicted([&] { return load_dataset(st); });
    const HeadState base = load_base(st);
    const StoredCheckpoint start_checkpoint =
        from_base ? base_checkpoint(st) : current_checkpoint(st);
    HeadState state = decode(start_checkpoint);
    const std::int64_t trained_upto =
        from_base ? 0 : std::stoll(st.get_meta(meta_trained_upto).value_or("0"));
    r.report.retrained_from_base = from_base;
    const std::int64_t max_id = data.ids.empty() ? 0 : data.ids.back();

    Rng rng(opts.seed ^ (0x9e3779b97f4a7c15ULL * static_cast<std::uint64_t>(state.step + 1)));
    const detail::RowSelection rows =
        detail::select_rows(data, spec(), trained_upto, opts.replay, rng);
    r.report.train_samples = static_cast<std::int64_t>(rows.train.size());
    r.report.validation_samples = static_cast<std::int64_t>(rows.validation.size());
    // epochs = 0 on a prototype head still enrolls: prepare_loss sets the class means.
    const bool zero_epochs = opts.epochs == 0 && spec().kind != HeadSpec::Kind::prototype;
    if (const auto skip =
            detail::decide_untrained(data.ids.empty(), rows.train.empty(), zero_epochs, from_base))
        return apply(r, *skip, base, {.state = &state, .optimizer = {}, .upto = max_id}, rng);

    Head& head = *state.head;
    if (!rows.validation.empty())
        r.report.before = detail::evaluate_rows(head, data, rows.validation);
    // Few-shot classes with no held-out sample (judged on their shots by the decision).
    const std::vector<std::size_t> shots =
        spec().classifies() ? detail::unvalidated_rows(data, rows) : std::vector<std::size_t>{};
    std::optional<Metrics> shots_before;
    if (!shots.empty()) shots_before = detail::evaluate_rows(head, data, shots);
    const detail::LossTerms terms =
        detail::prepare_loss(head, state.seen, data, rows.train, opts, *base.head);
    // Optimizer: continue its state when asked and the kind matches (incremental), else fresh.
    const bool continued = !from_base && opts.optimizer_start == OptimizerStart::continue_stored;
    detail::TrainLoop loop =
        detail::start_loop(head, opts, continued ? &state.optimizer : nullptr, rng, rows.train);
    loop.is_new.assign(data.ids.size(), false);
    for (std::size_t i = 0; i < data.ids.size(); ++i) loop.is_new[i] = data.ids[i] > trained_upto;
    // An interrupted run with this fingerprint continues where its record left off.
    const std::string fingerprint =
        detail::run_fingerprint(opts, start_checkpoint.info.id, trained_upto, data, rows);
    if (const auto record = st.get_meta(meta_resume); record && !record->empty())
        r.report.resumed = detail::load_resume(*record, fingerprint, loop, head, data);
    const auto save_resume = [&](const detail::TrainLoop& l) {
        try {
            st.set_meta(meta_resume, detail::encode_resume(l, head, data, fingerprint));
        } catch (const InvalidArgument&) {
            // NaN/Inf parameters: not a state worth resuming (the decision rolls it back).
        } catch (const DiskFull&) {
            // A record only saves time: a full disk must not stop the run itself.
        }
    };
    const int epochs = opts.epochs - loop.epoch + (loop.inside_epoch ? 1 : 0);
    const detail::LoopStop stop = detail::run_epochs(
        loop, head, data, terms, opts, epochs, r.start, state.step,
        opts.resume_every > 0 ? save_resume : std::function<void(const detail::TrainLoop&)>{});
    r.report.steps = loop.steps;
    r.report.epochs = loop.last_epoch;
    r.report.loss_curve = loop.loss_curve;

    const OptimizerState optimizer_state = loop.optimizer->state();
    detail::RunFacts facts{.from_base = from_base,
                           .classifies = spec().classifies(),
                           .tolerance = opts.tolerance,
                           .steps = loop.steps,
                           .stop = stop,
                           .params_finite = all_finite(loop.params),
                           .optimizer_finite = all_finite(optimizer_state),
                           .before = r.report.before};
    if (facts.healthy() && !rows.validation.empty())
        facts.after = r.report.after = detail::evaluate_rows(head, data, rows.validation);
    facts.shots_before = shots_before;
    facts.validation_classes = detail::classes_in(data, rows.validation);
    facts.shot_classes = detail::classes_in(data, shots);
    if (facts.healthy() && shots_before)
        facts.shots_after = detail::evaluate_rows(head, data, shots);
    // A backbone upgrade's retrain must do as well as the previous backbone's head on the same
    // validation samples; until it does, that head stays the committed one.
    if (from_base && facts.after)
        if (auto previous = detail::previous_head_metrics(st, spec(), data, rows.validation)) {
            facts.before = r.report.before = previous;
            facts.guard_from_base = true;
        }
    detail::Decision decision = detail::decide(facts);
    if (facts.guard_from_base && decision.outcome == TrainReport::Outcome::rolled_back) {
        decision.reason += "; the backbone upgrade is undone";
        detail::revert_upgrade(st, digest);
    }
    if (decision.action == detail::Action::commit_trained)
        if (spec().classifies())
            calibrate_unknown(r.report, r.prototypes, data, rows, opts.unknown, spec().outputs,
                              background);
    return apply(r, decision, base,
                 {.state = &state,
                  .optimizer = optimizer_state,
                  .step = state.step + loop.steps,
                  .upto = max_id},
                 loop.rng);
}

TrainReport Personalizer::Impl::apply(Run& r, const detail::Decision& d, const HeadState& base,
                                      const Trained& trained, const Rng& rng) {
    r.report.outcome = d.outcome;
    r.report.reason = d.reason;
    if (d.drop_after) r.report.after.reset();
    switch (d.action) {
        case detail::Action::commit_trained:
            return commit(r, *trained.state, trained.optimizer, trained.step, trained.upto, rng);
        case detail::Action::commit_base:
            return commit(r, base, {}, 0, 0, rng);
        case detail::Action::commit_base_covering:
            return commit(r, base, {}, 0, trained.upto, rng);
        case detail::Action::log_only:
            break;
    }
    r.report.duration = r.elapsed();
    // A run that ended keeps no record; a cancelled one keeps the record it just wrote.
    Transaction tx = r.st.transaction();
    if (d.outcome != TrainReport::Outcome::cancelled &&
        !r.st.get_meta(meta_resume).value_or("").empty())
        r.st.set_meta(meta_resume, "");
    r.st.append_run(r.report.to_json());
    tx.commit();
    return r.report;
}

// Commits `s` as one transaction: checkpoint, watermark, training log, pruning. A retrain
// from base keeps no older trained checkpoint (they may hold what forget() removed) and
// settles the pending retrain. `upto`: samples up to this id count as trained on.
TrainReport Personalizer::Impl::commit(Run& r, const HeadState& s,
                                       const OptimizerState& optimizer_state, std::int64_t step,
                                       std::int64_t upto, const Rng& rng) {
    r.report.duration = r.elapsed();
    const std::string metrics = r.report.to_json();
    const auto payload = encode(*s.head, optimizer_state, step, s.seen, rng, metrics);
    {
        Transaction tx = r.st.transaction();
        // Pruning first frees the pages the new checkpoint needs: a retrain that a forget owes
        // must commit on a full disk too. A retrain from base keeps no older trained checkpoint
        // (they may hold what forget() removed).
        r.st.prune_checkpoints(r.mode == Mode::from_base ? 0 : 2);
        r.st.save_checkpoint({.kind = CheckpointKind::trained,
                              .step = step,
                              .backbone_digest = digest,
                              .metrics = metrics},
                             payload);
        r.st.set_meta(meta_trained_upto, std::to_string(upto));
        r.st.set_trained_upto(upto);  // retention may now evict what this head learned from
        if (!r.st.get_meta(meta_resume).value_or("").empty()) r.st.set_meta(meta_resume, "");
        if (r.mode == Mode::from_base) {
            r.st.set_meta(meta_retrain_pending, "");
            // An upgrade is settled: the previous backbone's features go with its head.
            if (const auto from = r.st.get_meta(meta_upgrade_from); from && !from->empty()) {
                r.st.keep_only_features(feature_key);
                r.st.set_meta(meta_upgrade_from, "");
                r.st.set_meta(meta_upgrade_from_features, "");
            }
        }
        r.st.append_run(metrics);
        tx.commit();
    }
    publish(s.head);
    publish_calibration(r.report.calibration, r.prototypes);
    return r.report;
}

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

    const std::string spec = head_spec_string(options.head);
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

// ---- classes ----------------------------------------------------------------------------

std::int32_t Personalizer::add_class(std::string_view name) {
    const FlushDenormals flush;  // fp_mode.hpp: the caller's mode is restored on return
    if (!impl_->spec().classifies()) fail("Personalizer.add_class", "a regression head");
    std::lock_guard lock(impl_->store_mu);
    const std::int32_t label = impl_->store.add_class(name);
    impl_->live_classes = impl_->store.label_spec().size;
    // The served head gets the class's column now; its prototype comes with the next train().
    auto tensors = impl_->current_head()->tensors();
    const HeadSpec h = impl_->spec();
    grow_classes(tensors, h, h.outputs);
    auto head = impl_->new_head(0);
    head->load(tensors);
    impl_->publish(std::move(head));
    return label;
}

void Personalizer::rename_class(std::int32_t label, std::string_view name) {
    if (!impl_->spec().classifies()) fail("Personalizer.rename_class", "a regression head");
    std::lock_guard lock(impl_->store_mu);
    impl_->store.rename_class(label, name);
}

std::vector<ClassInfo> Personalizer::classes() const {
    if (!impl_->spec().classifies()) fail("Personalizer.classes", "a regression head");
    std::lock_guard lock(impl_->store_mu);
    return impl_->store.classes();
}

TrainReport Personalizer::remove_class(std::int32_t label, const TrainOptions& retrain) {
    const FlushDenormals flush;  // fp_mode.hpp: the caller's mode is restored on return
    if (!impl_->spec().classifies()) fail("Personalizer.remove_class", "a regression head");
    detail::validate_train_options(retrain);
    detail::check_unknown(retrain.unknown);
    std::lock_guard train_lock(impl_->train_mu);
    {
        std::lock_guard lock(impl_->store_mu);
        SampleStore& st = impl_->store;
        // One durable transaction: samples, features, the class, shifted labels, a base without
        // the class's column, no trained checkpoint (they hold the class), the retrain owed.
        const std::vector<std::pair<std::string, std::string>> debt{
            {meta_retrain_pending, "forget"}};
        std::shared_ptr<Head> base;
        st.remove_class(label, debt, [&] {
            base = impl_->save_base_without(st, label);
            st.prune_checkpoints(0);
        });
        impl_->live_classes = st.label_spec().size;
        impl_->publish(std::move(base));           // serves no trace of the class meanwhile
        impl_->publish_calibration(std::nullopt);  // its prototypes name the old labels
    }
    return impl_->retrain_owed(retrain);
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
