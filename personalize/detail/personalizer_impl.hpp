// detail/personalizer_impl.hpp — PRIVATE: Personalizer::Impl, the state behind the façade.
// Not installed. personalizer.cpp (the façade) and classes.cpp call it; state.cpp holds its
// checkpoint, calibration and feature methods; run.cpp the guarded training run.
//
// Concurrency: the app's connection (`store`) is guarded by `store_mu`; a training run opens
// its own connection to the same file (SQLite WAL: one writer, many readers), so add() and
// predict() proceed while it runs. predict() reads `committed`, an immutable head swapped in
// under `head_mu` after each commit. At most one training run at a time (`train_mu`).
#pragma once

#include <atomic>
#include <mutex>
#include <optional>
#include <string>

#include "detail/training.hpp"
#include "export.hpp"
#include "personalize.hpp"

namespace edgetune {

namespace detail {

[[noreturn]] inline void fail(const char* op, const std::string& message) {
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

}  // namespace detail

struct EDGETUNE_HIDDEN Personalizer::Impl {
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

    void publish(std::shared_ptr<Head> head) {
        std::lock_guard lock(head_mu);
        committed = std::move(head);
    }

    // --- calibration (state.cpp) ---
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
    Matrix stored_prototypes(const SampleStore& st) const;
    void publish_stored_calibration(const SampleStore& st);
    // The calibration recorded with a checkpoint (its metrics are a TrainReport's JSON).
    static std::optional<Calibration> calibration_of(const StoredCheckpoint& c);
    // With opts.unknown: prototypes of the training rows, scores of the validation rows
    // against them, the threshold into the report.
    static void calibrate_unknown(TrainReport& report, Matrix& protos, const detail::Dataset& d,
                                  const detail::RowSelection& rows, const Unknown& u, Index classes,
                                  const Matrix& background);

    // --- checkpoints (state.cpp) ---
    struct HeadState {
        std::shared_ptr<Head> head;
        OptimizerState optimizer;
        std::int64_t step = 0;
        std::vector<bool> seen;  // classes that have been trained on (prototype init done)
    };

    std::vector<std::uint8_t> encode(const Head& head, const OptimizerState& opt, std::int64_t step,
                                     const std::vector<bool>& seen, const Rng& rng,
                                     const std::string& metrics) const;
    HeadState decode(const StoredCheckpoint& stored) const;
    // The committed head's checkpoint: the newest trained one of this backbone, else the base.
    StoredCheckpoint current_checkpoint(const SampleStore& st) const;
    StoredCheckpoint base_checkpoint(const SampleStore& st) const;
    // The head to continue from.
    HeadState load_current(const SampleStore& st) const { return decode(current_checkpoint(st)); }
    HeadState load_base(const SampleStore& st) const { return decode(base_checkpoint(st)); }
    // The base head: the app's initial head if it gave one (checked by open()), else seeded.
    void save_base(SampleStore& st);
    // The base head without class `label` (its column and seen entry dropped), saved as the
    // new base checkpoint; returns it. Run inside remove_class's transaction.
    std::shared_ptr<Head> save_base_without(SampleStore& st, std::int32_t label);

    // --- features (state.cpp) ---
    // Computes and caches features of every sample lacking them for this backbone.
    void fill_missing_features(SampleStore& st);
    detail::Dataset load_dataset(const SampleStore& st) const;

    // --- training (run.cpp) ---
    enum class Mode { incremental, from_base };

    // One run's clock, connection and report; log() or commit() ends it.
    struct Run {
        detail::Clock::time_point start;
        SampleStore st;
        Mode mode;
        TrainReport report{};
        Matrix prototypes{};  // with a calibration: what its scores were taken against
        std::chrono::milliseconds elapsed() const {
            return std::chrono::duration_cast<std::chrono::milliseconds>(detail::Clock::now() -
                                                                         start);
        }
    };

    // The trained head a commit_trained decision commits.
    struct Trained {
        const HeadState* state = nullptr;
        OptimizerState optimizer{};
        std::int64_t step = 0;
        std::int64_t upto = 0;  // samples up to this id count as trained on
    };

    // A retrain from base that an erasure owes; on a full disk it may use the reserve, once.
    TrainReport retrain_owed(const TrainOptions& retrain);
    TrainReport run(const TrainOptions& opts, Mode mode);
    // Few-shot classes' rows with no held-out sample, and the head's metrics on them before.
    struct Shots {
        const std::vector<std::size_t>& rows;
        const std::optional<Metrics>& before;
    };
    detail::Decision judge(Run& r, const TrainOptions& opts, const detail::Dataset& data,
                           const detail::RowSelection& rows, const Shots& shots, Head& head,
                           const detail::TrainLoop& loop, detail::LoopStop stop,
                           const OptimizerState& optimizer_state);
    TrainReport apply(Run& run, const detail::Decision& d, const HeadState& base,
                      const Trained& trained, const Rng& rng);
    TrainReport commit(Run& run, const HeadState& s, const OptimizerState& optimizer_state,
                       std::int64_t step, std::int64_t upto, const Rng& rng);
};

}  // namespace edgetune
