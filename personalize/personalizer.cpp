// personalizer.cpp — the Personalizer façade: open/upgrade, add, predict, guarded training,
// background training, forget.
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
#include <thread>

#include "head.hpp"
#include "personalize.hpp"

namespace edgetune {

namespace {

using Clock = std::chrono::steady_clock;

const char* const meta_digest = "personalize.backbone_digest";
const char* const meta_head = "personalize.head";
const char* const meta_trained_upto = "personalize.trained_upto";
// "upgrade" or "forget" while a retrain from base is owed (set in the same transaction as the
// change that makes the current head wrong, cleared by the retrain's commit): a crash in
// between retrains at the next open, so a forgotten sample never survives in the head.
const char* const meta_retrain_pending = "personalize.retrain_pending";
// The previous backbone's digest while an upgrade's retrain is owed: its features are dropped
// by the retrain's commit, not before.
const char* const meta_upgrade_from = "personalize.upgrade_from";
// ... and the key its features are stored under.
const char* const meta_upgrade_from_features = "personalize.upgrade_from_features";
// The key the cached features are stored under (Backbone::feature_key): a store opened where
// another kernel variant runs drops them and computes its own.
const char* const meta_feature_key = "personalize.feature_key";

// A class with fewer stored samples than this keeps all of them for training (no split).
constexpr std::int64_t min_class_for_split = 5;

[[noreturn]] void fail(const char* op, const std::string& message) {
    throw InvalidArgument(std::string("[") + op + "] " + message);
}

// The head spec as recorded in meta and checkpoints, readable in error messages:
// "linear outputs=10 hidden=[] temperature=0.1 normalize=0".
std::string head_spec_string(const HeadSpec& h) {
    static const char* kinds[] = {"linear", "mlp", "prototype", "regression"};
    std::string hidden;
    for (Index v : h.hidden) hidden += (hidden.empty() ? "" : ",") + std::to_string(v);
    char t[32];
    std::snprintf(t, sizeof t, "%.9g", static_cast<double>(h.temperature));
    return std::string(kinds[static_cast<int>(h.kind)]) + " outputs=" + std::to_string(h.outputs) +
           " hidden=[" + hidden + "] temperature=" + t +
           " normalize=" + std::to_string(h.normalize);
}

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

std::string json_number(double v) {
    if (!std::isfinite(v)) return "null";
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.6g", v);
    return buf;
}

std::string metrics_json(const Metrics& m) {
    return "{\"loss\":" + json_number(m.loss) + ",\"accuracy\":" + json_number(m.accuracy) +
           ",\"balanced_accuracy\":" + json_number(m.balanced_accuracy) +
           ",\"samples\":" + std::to_string(m.samples) + "}";
}

// Uniform in [0, 1) from a sample's cached feature row and label: which side of the
// validation split a sample is on is fixed by its content (and, below min_class_for_split,
// by its class's count), never by its id, so forget() + retrain equals never having added it.
// NOTE: the split is stratified in expectation (each class contributes `fraction` of its
// samples on average), not exactly; a class with few samples may have none held out.
double split_draw(const float* row, Index width, std::int32_t label, std::uint64_t seed) {
    std::uint64_t h = 0xcbf29ce484222325ULL ^ (seed * 0x9e3779b97f4a7c15ULL);
    auto mix = [&h](std::uint32_t word) {
        for (int k = 0; k < 4; ++k) {
            h ^= (word >> (8 * k)) & 0xffu;
            h *= 0x100000001b3ULL;
        }
    };
    for (Index j = 0; j < width; ++j) {
        std::uint32_t bits;
        std::memcpy(&bits, row + j, sizeof bits);
        mix(bits);
    }
    mix(static_cast<std::uint32_t>(label));
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    return static_cast<double>(h >> 11) * 0x1.0p-53;
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

// Everything stored that training reads: one row per sample, ascending id.
struct Dataset {
    std::vector<std::int64_t> ids;
    IdList labels;   // classification
    Matrix targets;  // regression [n x W]
    std::vector<float> weights;
    Matrix features;  // [n x F]
    std::vector<bool> validation;
};

void validate_train_options(const TrainOptions& o) {
    const char* op = "train";
    if (o.epochs < 0) fail(op, "epochs = " + std::to_string(o.epochs) + " must be >= 0");
    if (o.max_steps < 0) fail(op, "max_steps = " + std::to_string(o.max_steps) + " must be >= 0");
    if (o.batch <= 0) fail(op, "batch = " + std::to_string(o.batch) + " must be > 0");
    if (o.deadline.count() < 0) fail(op, "deadline must be >= 0");
    if (!(o.clip_norm >= 0.0f))
        fail(op, "clip_norm = " + std::to_string(o.clip_norm) + " must be >= 0");
    if (!(o.base_pull >= 0.0f))
        fail(op, "base_pull = " + std::to_string(o.base_pull) + " must be >= 0");
    if (!(o.tolerance >= 0.0f))
        fail(op, "tolerance = " + std::to_string(o.tolerance) + " must be >= 0");
    if (!(o.label_smoothing >= 0.0f && o.label_smoothing < 1.0f))
        fail(op, "label_smoothing = " + std::to_string(o.label_smoothing) + " outside [0, 1)");
    if (o.replay.size < 0)
        fail(op, "replay size = " + std::to_string(o.replay.size) + " must be >= 0");
    if ((o.replay.kind == Replay::Kind::reservoir ||
         o.replay.kind == Replay::Kind::class_balanced) &&
        o.replay.size == 0)
        fail(op, "replay size must be > 0 for reservoir and class-balanced replay");
    // Optimizer and schedule options are checked by building them over a probe parameter:
    // a bad lr fails here, before forget() deletes anything or a run reads the store.
    const std::unique_ptr<Optimizer> probe =
        make_optimizer(o.optimizer, std::vector<Var>{Var::parameter(Matrix::Zero(1, 1))});
    make_schedule(o.schedule, *probe);
}

}  // namespace

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
    if (before) s += ",\"before\":" + metrics_json(*before);
    if (after) s += ",\"after\":" + metrics_json(*after);
    s += ",\"duration_ms\":" + std::to_string(duration.count()) +
         ",\"retrained_from_base\":" + (retrained_from_base ? "true" : "false") + "}";
    return s;
}

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

    std::mutex train_mu;
    std::optional<TrainReport> upgrade_report;

    Impl(std::string p, PersonalizerOptions o, StoreOptions so, SampleStore s)
        : path(std::move(p)),
          options(std::move(o)),
          store_options(so),
          digest(options.backbone->digest()),
          feature_key(options.backbone->feature_key()),
          store(std::move(s)) {}

    const Backbone& backbone() const { return *options.backbone; }
    const HeadSpec& spec() const { return options.head; }

    std::shared_ptr<Head> new_head(std::uint64_t seed) const {
        Rng rng(seed);
        return std::make_shared<Head>(spec(), backbone().feature_dim(), rng);
    }

    std::shared_ptr<Head> current_head() const {
        std::lock_guard lock(head_mu);
        return committed;
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
        Checkpoint c;
        c.kind = "head";
        std::string seen_str;
        for (bool b : seen) seen_str += b ? '1' : '0';
        c.attrs = {{"head", head_spec_string(spec())},
                   {"backbone_digest", digest},
                   {"seen_classes", seen_str}};
        c.tensors = head.tensors();
        c.optimizer = opt;
        c.step = step;
        c.rng = rng.state();
        c.metrics = metrics;
        return encode_checkpoint(c);
    }

    HeadState decode(const StoredCheckpoint& stored) const {
        Checkpoint c = decode_checkpoint(stored.payload);
        HeadState s;
        s.head = new_head(0);
        s.head->load(c.tensors);
        s.optimizer = std::move(c.optimizer);
        s.step = c.step;
        s.seen.assign(static_cast<std::size_t>(spec().outputs), false);
        for (const auto& [k, v] : c.attrs)
            if (k == "seen_classes")
                for (std::size_t i = 0; i < v.size() && i < s.seen.size(); ++i)
                    s.seen[i] = v[i] == '1';
        return s;
    }

    // The head to continue from: the newest trained checkpoint of this backbone, else base.
    HeadState load_current(const SampleStore& st) const {
        auto trained = st.latest_checkpoint(CheckpointKind::trained);
        if (trained && trained->info.backbone_digest == digest) return decode(*trained);
        return load_base(st);
    }

    HeadState load_base(const SampleStore& st) const {
        auto base = st.latest_checkpoint(CheckpointKind::base);
        if (!base || base->info.backbone_digest != digest)
            throw CorruptData("[Personalizer] no base checkpoint for backbone " + digest);
        return decode(*base);
    }

    void save_base(SampleStore& st) {
        auto head = new_head(options.seed);
        std::vector<bool> seen(static_cast<std::size_t>(spec().outputs), false);
        const auto payload = encode(*head, {}, 0, seen, Rng(options.seed), "{}");
        st.save_checkpoint(
            {.kind = CheckpointKind::base, .step = 0, .backbone_digest = digest, .metrics = "{}"},
            payload);
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
        Dataset d;
        std::vector<Sample> batch;
        for (auto cursor = st.scan({.batch = 1024, .fields = Fields::no_input});
             cursor.next(batch);) {
            for (const Sample& s : batch) {
                d.ids.push_back(s.id);
                d.labels.push_back(s.label);
                d.weights.push_back(s.weight);
            }
            if (!spec().classifies()) {
                const Index w = spec().outputs;
                const Index at = d.targets.rows();
                d.targets.conservativeResize(at + static_cast<Index>(batch.size()), w);
                for (std::size_t i = 0; i < batch.size(); ++i)
                    d.targets.row(at + static_cast<Index>(i)) =
                        Eigen::Map<const Eigen::RowVectorXf>(batch[i].target.data(), w);
            }
        }
        const auto n = static_cast<Index>(d.ids.size());
        d.features.resize(n, backbone().feature_dim());
        constexpr std::size_t chunk = 4096;
        for (std::size_t at = 0; at < d.ids.size(); at += chunk) {
            const std::size_t len = std::min(chunk, d.ids.size() - at);
            d.features.middleRows(static_cast<Index>(at), static_cast<Index>(len)) =
                st.get_features(feature_key, std::span(d.ids).subspan(at, len));
        }
        // Classes (a regression store is one class) with fewer than min_class_for_split
        // samples keep all for training: one-shot enrollment must not lose its only shot.
        std::vector<std::int64_t> per_class(
            spec().classifies() ? static_cast<std::size_t>(spec().outputs) : 1, 0);
        auto class_of = [&](std::size_t i) {
            return spec().classifies() ? static_cast<std::size_t>(d.labels[i]) : std::size_t{0};
        };
        for (std::size_t i = 0; i < d.ids.size(); ++i) ++per_class[class_of(i)];
        d.validation.resize(d.ids.size());
        for (Index i = 0; i < n; ++i) {
            const auto k = static_cast<std::size_t>(i);
            d.validation[k] = per_class[class_of(k)] >= min_class_for_split &&
                              split_draw(d.features.row(i).data(), d.features.cols(), d.labels[k],
                                         options.seed) < options.validation_fraction;
        }
        return d;
    }

    // --- evaluation ---
    Metrics evaluate_rows(Head& head, const Dataset& d,
                          const std::vector<std::size_t>& rows) const {
        Metrics m;
        m.samples = static_cast<std::int64_t>(rows.size());
        if (rows.empty()) return m;
        double loss = 0.0;
        std::int64_t correct = 0;
        const auto classes = static_cast<std::size_t>(spec().classifies() ? spec().outputs : 0);
        std::vector<std::int64_t> class_total(classes, 0), class_correct(classes, 0);
        constexpr std::size_t chunk = 1024;
        for (std::size_t at = 0; at < rows.size(); at += chunk) {
            const std::size_t len = std::min(chunk, rows.size() - at);
            Matrix x(static_cast<Index>(len), d.features.cols());
            for (std::size_t i = 0; i < len; ++i)
                x.row(static_cast<Index>(i)) = d.features.row(static_cast<Index>(rows[at + i]));
            const Matrix out = head.infer(x);
            for (std::size_t i = 0; i < len; ++i) {
                const auto r = static_cast<Index>(i);
                const std::size_t row = rows[at + i];
                if (spec().classifies()) {
                    const float mx = out.row(r).maxCoeff();
                    const double lse = mx + std::log((out.row(r).array() - mx).exp().sum());
                    const std::int32_t y = d.labels[row];
                    loss += lse - out(r, y);
                    Index best = 0;
                    out.row(r).maxCoeff(&best);
                    correct += best == y;
                    ++class_total[static_cast<std::size_t>(y)];
                    class_correct[static_cast<std::size_t>(y)] += best == y;
                } else {
                    loss += (out.row(r) - d.targets.row(static_cast<Index>(row))).squaredNorm() /
                            static_cast<double>(out.cols());
                }
            }
        }
        m.loss = loss / static_cast<double>(rows.size());
        if (spec().classifies()) {
            m.accuracy = static_cast<double>(correct) / static_cast<double>(rows.size());
            double recall = 0.0;
            int present = 0;
            for (std::size_t c = 0; c < classes; ++c)
                if (class_total[c] > 0) {
                    recall +=
                        static_cast<double>(class_correct[c]) / static_cast<double>(class_total[c]);
                    ++present;
                }
            m.balanced_accuracy = recall / present;
        }
        return m;
    }

    // --- backbone upgrades ---
    // The previous backbone's committed head on the validation rows, through the features it
    // was trained on (still stored until the upgrade commits); nullopt if either is missing.
    std::optional<Metrics> previous_head_metrics(const SampleStore& st, const Dataset& d,
                                                 const std::vector<std::size_t>& rows) const {
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
        Head head(spec(), old.features.cols(), unused);
        head.load(c.tensors);
        std::vector<std::size_t> all(rows.size());
        std::iota(all.begin(), all.end(), std::size_t{0});
        for (std::size_t r : rows) old.labels.push_back(spec().classifies() ? d.labels[r] : 0);
        if (!spec().classifies()) {
            old.targets.resize(static_cast<Index>(rows.size()), d.targets.cols());
            for (std::size_t i = 0; i < rows.size(); ++i)
                old.targets.row(static_cast<Index>(i)) = d.targets.row(static_cast<Index>(rows[i]));
        }
        return evaluate_rows(head, old, all);
    }

    // Undoes an upgrade whose retrain failed the guard: the previous backbone's digest, head
    // and features are the committed ones again; the new backbone's rows are dropped.
    void revert_upgrade(SampleStore& st) {
        const std::string from = st.get_meta(meta_upgrade_from).value_or("");
        const std::string key = st.get_meta(meta_upgrade_from_features).value_or("");
        Transaction tx = st.transaction();
        st.drop_checkpoints(digest);
        st.keep_only_features(key);
        st.set_meta(meta_digest, from);
        st.set_meta(meta_feature_key, key);
        st.set_meta(meta_retrain_pending, "");
        st.set_meta(meta_upgrade_from, "");
        st.set_meta(meta_upgrade_from_features, "");
        tx.commit();
    }

    // --- training ---
    enum class Mode { incremental, from_base };

    TrainReport run(const TrainOptions& opts, Mode mode);
};

TrainReport Personalizer::Impl::run(const TrainOptions& opts, Mode mode) {
    validate_train_options(opts);
    const auto start = Clock::now();
    auto elapsed = [&] {
        return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start);
    };

    // The run's own connection: the app's connection stays free for add() and predict().
    // It never recreates a released reserve: on a full disk that room is what this run needs.
    StoreOptions run_options = store_options;
    run_options.reserve_bytes = 0;
    SampleStore st = SampleStore::open(path, run_options);
    // A retrain owed by forget() or an upgrade that did not finish (crash, exception) comes
    // first: an incremental update would build on a head that must be dropped.
    if (!st.get_meta(meta_retrain_pending).value_or("").empty()) mode = Mode::from_base;
    // Samples stored through store() get their features here.
    retry_evicted([&] {
        fill_missing_features(st);
        return 0;
    });
    const Dataset data = retry_evicted([&] { return load_dataset(st); });
    const HeadState base = load_base(st);
    HeadState state = mode == Mode::from_base ? load_base(st) : load_current(st);
    const std::int64_t trained_upto =
        mode == Mode::from_base ? 0 : std::stoll(st.get_meta(meta_trained_upto).value_or("0"));
    TrainReport report;
    report.retrained_from_base = mode == Mode::from_base;
    const std::int64_t max_id = data.ids.empty() ? 0 : data.ids.back();

    // Split and replay selection (rows index into `data`).
    std::vector<std::size_t> val_rows, new_rows, old_rows;
    for (std::size_t i = 0; i < data.ids.size(); ++i) {
        if (data.validation[i])
            val_rows.push_back(i);
        else if (data.ids[i] > trained_upto)
            new_rows.push_back(i);
        else
            old_rows.push_back(i);
    }
    Rng rng(opts.seed ^ (0x9e3779b97f4a7c15ULL * static_cast<std::uint64_t>(state.step + 1)));
    std::vector<std::size_t> train_rows = new_rows;
    if (opts.replay.kind == Replay::Kind::all || mode == Mode::from_base) {
        train_rows.insert(train_rows.end(), old_rows.begin(), old_rows.end());
    } else if (opts.replay.kind == Replay::Kind::none) {
        // new_rows only
    } else if (opts.replay.kind == Replay::Kind::reservoir) {
        // A uniform draw of `size` older samples (partial Fisher-Yates, seeded).
        const std::size_t k = std::min(old_rows.size(), static_cast<std::size_t>(opts.replay.size));
        for (std::size_t i = 0; i < k; ++i)
            std::swap(old_rows[i], old_rows[i + rng.below(old_rows.size() - i)]);
        train_rows.insert(train_rows.end(), old_rows.begin(),
                          old_rows.begin() + static_cast<std::ptrdiff_t>(k));
    } else {
        // Up to `size` older samples per class, drawn uniformly within each class.
        for (std::size_t i = old_rows.size(); i > 1; --i)
            std::swap(old_rows[i - 1], old_rows[rng.below(i)]);
        std::vector<std::int64_t> taken(static_cast<std::size_t>(spec().outputs), 0);
        for (std::size_t r : old_rows) {
            const std::size_t c =
                spec().classifies() ? static_cast<std::size_t>(data.labels[r]) : 0;
            if (taken[c] < opts.replay.size) {
                ++taken[c];
                train_rows.push_back(r);
            }
        }
    }
    // Ascending row = ascending id: the order (and so the shuffles) depends on which samples
    // are stored, never on their id values.
    std::sort(train_rows.begin(), train_rows.end());
    report.train_samples = static_cast<std::int64_t>(train_rows.size());
    report.validation_samples = static_cast<std::int64_t>(val_rows.size());

    auto log_run = [&](TrainReport& r) {
        r.duration = elapsed();
        st.append_run(r.to_json());
        return r;
    };
    // Commits `s` as one transaction: checkpoint, watermark, training log, pruning. A retrain
    // from base keeps no older trained checkpoint (they may hold what forget() removed) and
    // settles the pending retrain. `upto`: samples up to this id count as trained on.
    auto commit = [&](const HeadState& s, const OptimizerState& optimizer_state, std::int64_t step,
                      std::int64_t upto, TrainReport::Outcome outcome) {
        report.outcome = outcome;
        report.duration = elapsed();
        const std::string metrics = report.to_json();
        const auto payload = encode(*s.head, optimizer_state, step, s.seen, rng, metrics);
        {
            Transaction tx = st.transaction();
            // Pruning first frees the pages the new checkpoint needs: a retrain that a forget
            // owes must commit on a full disk too.
            st.prune_checkpoints(mode == Mode::from_base ? 0 : 2);
            st.save_checkpoint({.kind = CheckpointKind::trained,
                                .step = step,
                                .backbone_digest = digest,
                                .metrics = metrics},
                               payload);
            st.set_meta(meta_trained_upto, std::to_string(upto));
            if (mode == Mode::from_base) {
                st.set_meta(meta_retrain_pending, "");
                if (const auto from = st.get_meta(meta_upgrade_from); from && !from->empty()) {
                    st.keep_only_features(feature_key);
                    st.set_meta(meta_upgrade_from, "");
                    st.set_meta(meta_upgrade_from_features, "");
                }
            }
            st.append_run(metrics);
            tx.commit();
        }
        publish(s.head);
        return report;
    };
    if (train_rows.empty() || (opts.epochs == 0 && mode == Mode::incremental)) {
        report.reason =
            data.ids.empty() ? "the store holds no samples"
            : train_rows.empty()
                ? "no training samples (all are in the validation split or nothing is new)"
                : "epochs = 0";
        if (mode == Mode::from_base) {
            // The head must still lose what it learned from removed samples.
            report.reason += ": committed the base head";
            return commit(state, {}, 0, max_id, TrainReport::Outcome::committed);
        }
        report.outcome = TrainReport::Outcome::nothing_to_do;
        return log_run(report);
    }

    Head& head = *state.head;
    if (!val_rows.empty()) report.before = evaluate_rows(head, data, val_rows);

    // Prototype heads: classes seen for the first time start at their class mean.
    if (spec().kind == HeadSpec::Kind::prototype) {
        std::vector<bool> init(state.seen.size(), false);
        Matrix x(static_cast<Index>(train_rows.size()), data.features.cols());
        IdList y;
        for (std::size_t i = 0; i < train_rows.size(); ++i) {
            x.row(static_cast<Index>(i)) = data.features.row(static_cast<Index>(train_rows[i]));
            y.push_back(data.labels[train_rows[i]]);
            init[static_cast<std::size_t>(y.back())] =
                !state.seen[static_cast<std::size_t>(y.back())];
        }
        head.init_prototypes(x, y, init);
    }
    if (spec().classifies())
        for (std::size_t r : train_rows)
            state.seen[static_cast<std::size_t>(data.labels[r])] = true;

    // Optimizer: continue its state when the kind matches (incremental updates), else fresh.
    std::vector<Var> params = head.parameters();
    std::unique_ptr<Optimizer> optimizer = make_optimizer(opts.optimizer, params);
    if (mode == Mode::incremental && state.optimizer.kind == optimizer->kind()) {
        const float lr = optimizer->lr();
        try {
            optimizer->load_state(state.optimizer);
        } catch (const InvalidArgument&) {
            // The saved state has other buffers (momentum switched on or off, AMSGrad): the
            // options changed since the last run, so this run starts with fresh moments.
        }
        optimizer->set_lr(lr);
    }
    std::unique_ptr<Schedule> schedule = make_schedule(opts.schedule, *optimizer);
    // A plateau schedule follows the mean training loss of each epoch; the others advance
    // once per step.
    const bool plateau = std::holds_alternative<PlateauSchedule>(opts.schedule);

    CrossEntropyOptions ce{
        .label_smoothing = opts.label_smoothing, .class_weights = {}, .sample_weights = {}};
    if (opts.balance_classes && spec().classifies()) {
        std::vector<double> counts(static_cast<std::size_t>(spec().outputs), 0.0);
        for (std::size_t r : train_rows) counts[static_cast<std::size_t>(data.labels[r])] += 1.0;
        const double present = static_cast<double>(
            std::count_if(counts.begin(), counts.end(), [](double c) { return c > 0; }));
        ce.class_weights.resize(counts.size(), 1.0f);
        for (std::size_t c = 0; c < counts.size(); ++c)
            if (counts[c] > 0)
                ce.class_weights[c] = static_cast<float>(static_cast<double>(train_rows.size()) /
                                                         (present * counts[c]));
    }
    std::vector<Var> base_params;
    if (opts.base_pull > 0.0f)
        for (const auto& [name, value] : base.head->tensors()) base_params.emplace_back(value);

    const auto batch = static_cast<std::size_t>(opts.batch);
    const Index width = data.features.cols();
    Matrix xb(static_cast<Index>(std::min(batch, train_rows.size())), width);
    Matrix tb, wb;
    IdList yb;
    std::vector<std::size_t> order = train_rows;
    bool diverged = false, cancelled = false, budget = false;
    std::int64_t steps = 0;
    for (int epoch = 1; epoch <= opts.epochs && !diverged && !cancelled && !budget; ++epoch) {
        for (std::size_t i = order.size(); i > 1; --i) std::swap(order[i - 1], order[rng.below(i)]);
        double epoch_loss = 0.0;
        std::size_t epoch_batches = 0;
        for (std::size_t at = 0; at < order.size(); at += batch) {
            if (opts.stop && opts.stop->load()) {
                cancelled = true;
                break;
            }
            if (opts.max_steps > 0 && steps >= opts.max_steps) {
                budget = true;
                report.reason = "max_steps reached";
                break;
            }
            if (opts.deadline.count() > 0 && elapsed() >= opts.deadline) {
                budget = true;
                report.reason = "deadline reached";
                break;
            }
            const std::size_t len = std::min(batch, order.size() - at);
            if (static_cast<std::size_t>(xb.rows()) != len)
                xb.resize(static_cast<Index>(len), width);
            yb.resize(len);
            ce.sample_weights.resize(len);
            if (!spec().classifies()) {
                tb.resize(static_cast<Index>(len), data.targets.cols());
                wb.resize(static_cast<Index>(len), data.targets.cols());
            }
            double batch_weight = 0.0;
            for (std::size_t i = 0; i < len; ++i) {
                const std::size_t r = order[at + i];
                xb.row(static_cast<Index>(i)) = data.features.row(static_cast<Index>(r));
                yb[i] = data.labels[r];
                ce.sample_weights[i] = data.weights[r];
                batch_weight +=
                    static_cast<double>(data.weights[r]) *
                    (ce.class_weights.empty() ? 1.0
                                              : ce.class_weights[static_cast<std::size_t>(yb[i])]);
                if (!spec().classifies()) {
                    tb.row(static_cast<Index>(i)) = data.targets.row(static_cast<Index>(r));
                    wb.row(static_cast<Index>(i)).setConstant(data.weights[r]);
                }
            }
            // NOTE: a batch whose samples all weigh 0 teaches nothing (and its weighted mean
            // is 0/0): it is skipped, not counted as a step.
            if (!(batch_weight > 0.0)) continue;
            optimizer->zero_grad();
            Var out = head.forward(xb);
            // Regression: squared error weighted per sample, sum_i w_i |y_i - t_i|^2 / (W sum_i
            // w_i).
            Var loss = spec().classifies()
                           ? cross_entropy(out, yb, ce)
                           : scale(sum(mul(square(sub(out, Var(tb))), Var(wb))),
                                   static_cast<float>(
                                       1.0 / (batch_weight * static_cast<double>(tb.cols()))));
            Var total = loss;
            if (opts.base_pull > 0.0f)
                for (std::size_t k = 0; k < params.size(); ++k)
                    total = edgetune::add(total, scale(sum(square(sub(params[k], base_params[k]))),
                                                       0.5f * opts.base_pull));
            const float loss_value = loss.item();
            if (!std::isfinite(total.item())) {
                diverged = true;
                report.reason = "loss became " + std::to_string(loss_value) + " at step " +
                                std::to_string(steps + 1) + " (epoch " + std::to_string(epoch) +
                                ")";
                break;
            }
            backward(total);
            if (opts.clip_norm > 0.0f) clip_grad_norm(params, opts.clip_norm);
            optimizer->step();
            if (!plateau) schedule->step();
            ++steps;
            epoch_loss += loss_value;
            ++epoch_batches;
            if (opts.on_progress)
                opts.on_progress({.step = state.step + steps,
                                  .epoch = epoch,
                                  .loss = loss_value,
                                  .elapsed = elapsed()});
        }
        if (epoch_batches > 0) {
            const double mean_loss = epoch_loss / static_cast<double>(epoch_batches);
            report.loss_curve.push_back(static_cast<float>(mean_loss));
            report.epochs = epoch;
            if (plateau && !diverged) schedule->step(static_cast<float>(mean_loss));
        }
    }
    report.steps = steps;

    const OptimizerState optimizer_state = optimizer->state();
    auto finite = [](const OptimizerState& s) {
        for (const auto& slot : s.slots)
            for (const Matrix& m : slot)
                if (!m.allFinite()) return false;
        return true;
    };
    if (cancelled) {
        report.reason = "cancelled after " + std::to_string(steps) + " steps";
        if (mode == Mode::incremental) {
            report.outcome = TrainReport::Outcome::cancelled;
            report.reason += "; the last committed head is kept";
            return log_run(report);
        }
        // A retrain from base never keeps the old head: the base is committed, and every
        // sample counts as new for the next train().
        report.reason += "; committed the base head, every sample counts as new";
        return commit(base, {}, 0, 0, TrainReport::Outcome::cancelled);
    }
    for (const Var& p : params)
        if (!diverged && !p.value().allFinite()) {
            diverged = true;
            report.reason = "a parameter became NaN/Inf";
        }
    if (!diverged && !finite(optimizer_state)) {
        diverged = true;
        report.reason = "the optimizer state became NaN/Inf";
    }
    if (!diverged && !val_rows.empty()) report.after = evaluate_rows(head, data, val_rows);
    if (diverged || (report.after && !std::isfinite(report.after->loss))) {
        if (report.reason.empty()) report.reason = "validation loss is not finite";
        if (mode == Mode::incremental) {
            report.outcome = TrainReport::Outcome::rolled_back;
            return log_run(report);
        }
        // Exact unlearning must not keep the old head: fall back to the base head.
        report.reason += "; committed the base head instead, every sample counts as new";
        report.after.reset();
        return commit(base, {}, 0, 0, TrainReport::Outcome::committed);
    }
    // A backbone upgrade's retrain must do as well as the previous backbone's head on the same
    // validation samples; until it does, that head stays the committed one.
    bool upgrade_guard = false;
    if (mode == Mode::from_base && report.after)
        if (auto previous = previous_head_metrics(st, data, val_rows)) {
            report.before = previous;
            upgrade_guard = true;
        }
    if ((mode == Mode::incremental || upgrade_guard) && report.before && report.after) {
        // Classification: worse = class-balanced accuracy dropped by more than the tolerance
        // AND the loss did not improve. Balanced, so that an enrollment trading a little of
        // many old samples for a new class with a handful of shots counts as the gain it is;
        // both signals, because on a small split one sample moves accuracy by several percent
        // while the loss (a proper score) moves smoothly: a 5-shot enrollment otherwise fails
        // the guard about every other time on noise.
        const bool worse = spec().classifies()
                               ? report.after->balanced_accuracy <
                                         report.before->balanced_accuracy - opts.tolerance &&
                                     report.after->loss >= report.before->loss
                               : report.after->loss > report.before->loss * (1.0 + opts.tolerance);
        if (worse) {
            report.outcome = TrainReport::Outcome::rolled_back;
            report.reason = "validation got worse: " + metrics_json(*report.before) + " -> " +
                            metrics_json(*report.after);
            if (upgrade_guard) {
                report.reason += "; the backbone upgrade is undone";
                revert_upgrade(st);
            }
            return log_run(report);
        }
    }
    if (report.reason.empty())
        report.reason =
            val_rows.empty() ? "completed (no validation samples: unguarded)" : "completed";
    return commit(state, optimizer_state, state.step + steps, max_id,
                  TrainReport::Outcome::committed);
}

// ---- Personalizer ----------------------------------------------------------------------

Personalizer::Personalizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Personalizer::~Personalizer() = default;

std::unique_ptr<Personalizer> Personalizer::open(const std::string& db_path,
                                                 const PersonalizerOptions& options) {
    const char* op = "Personalizer.open";
    if (!options.backbone) fail(op, "no backbone given");
    if (options.head.outputs <= 0)
        fail(op, "head outputs = " + std::to_string(options.head.outputs) + " must be > 0");
    if (!(options.validation_fraction >= 0.0f && options.validation_fraction < 1.0f))
        fail(op, "validation_fraction = " + std::to_string(options.validation_fraction) +
                     " outside [0, 1)");
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
    if (samples.empty()) fail("Personalizer.add", "empty batch");
    // Features first: a wrong width or NaN is rejected before anything is written.
    const Matrix features = impl_->backbone().features(samples);
    std::lock_guard lock(impl_->store_mu);
    SampleStore& st = impl_->store;
    Transaction tx = st.transaction();
    // A key seen before returns its ids; put_features below then rewrites the same bits.
    std::vector<std::int64_t> ids =
        idempotency_key.empty() ? st.add_batch(samples) : st.add_batch(samples, idempotency_key);
    std::vector<std::int64_t> kept;
    std::vector<Index> rows;
    for (std::size_t i = 0; i < ids.size(); ++i)
        if (ids[i] != SampleStore::not_kept && st.get(ids[i], Fields::no_input)) {
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
    if (!impl_->spec().classifies()) fail("predict", "a regression head: use regress()");
    if (k <= 0) fail("predict", "k = " + std::to_string(k) + " must be > 0");
    const Matrix f = impl_->backbone().features(std::span<const Sample>(&input, 1));
    const Matrix logits = impl_->current_head()->infer(f);
    const float mx = logits.maxCoeff();
    const Eigen::RowVectorXf p = (logits.row(0).array() - mx).exp().matrix();
    const float total = p.sum();
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

std::vector<float> Personalizer::regress(const Sample& input) const {
    if (impl_->spec().classifies()) fail("regress", "a classification head: use predict()");
    const Matrix f = impl_->backbone().features(std::span<const Sample>(&input, 1));
    const Matrix out = impl_->current_head()->infer(f);
    return std::vector<float>(out.data(), out.data() + out.size());
}

Metrics Personalizer::evaluate(std::span<const Sample> samples) const {
    Dataset d;
    d.features = impl_->backbone().features(samples);
    std::vector<std::size_t> rows(samples.size());
    std::iota(rows.begin(), rows.end(), std::size_t{0});
    const std::int64_t outputs = impl_->spec().outputs;
    if (impl_->spec().classifies()) {
        for (std::size_t i = 0; i < samples.size(); ++i) {
            if (samples[i].label < 0 || samples[i].label >= outputs)
                fail("evaluate", "label " + std::to_string(samples[i].label) + " of sample " +
                                     std::to_string(i) + " out of range for " +
                                     std::to_string(outputs) + " classes");
            d.labels.push_back(samples[i].label);
        }
    } else {
        d.targets.resize(static_cast<Index>(samples.size()), outputs);
        for (std::size_t i = 0; i < samples.size(); ++i) {
            if (static_cast<std::int64_t>(samples[i].target.size()) != outputs)
                fail("evaluate", "sample " + std::to_string(i) + " has a target of width " +
                                     std::to_string(samples[i].target.size()) + ", expected " +
                                     std::to_string(outputs));
            d.targets.row(static_cast<Index>(i)) =
                Eigen::Map<const Eigen::RowVectorXf>(samples[i].target.data(), outputs);
        }
    }
    return impl_->evaluate_rows(*impl_->current_head(), d, rows);
}

TrainReport Personalizer::train(const TrainOptions& options) {
    std::lock_guard lock(impl_->train_mu);
    return impl_->run(options, Impl::Mode::incremental);
}

TrainReport Personalizer::forget(std::span<const std::int64_t> ids, const TrainOptions& retrain) {
    validate_train_options(retrain);
    std::lock_guard train_lock(impl_->train_mu);
    bool used = false;
    {
        std::lock_guard lock(impl_->store_mu);
        SampleStore& st = impl_->store;
        const std::int64_t upto = std::stoll(st.get_meta(meta_trained_upto).value_or("0"));
        for (std::int64_t id : ids) used = used || (id <= upto && st.get(id, Fields::no_input));
        // The deletion and the debt to retrain commit together, durably and scrubbed from the
        // -wal (erase_ids), before the retrain: a power cut cannot bring a sample back.
        std::vector<std::pair<std::string, std::string>> debt;
        if (used) debt.emplace_back(meta_retrain_pending, "forget");
        st.erase_ids(ids, debt);
    }
    if (used) {
        try {
            return impl_->run(retrain, Impl::Mode::from_base);
        } catch (const DiskFull&) {
            // The erasure is committed; the retrain it owes needs room too: the reserve, once.
            bool released = false;
            {
                std::lock_guard lock(impl_->store_mu);
                released = impl_->store.release_reserve();
            }
            if (!released) throw;
            return impl_->run(retrain, Impl::Mode::from_base);
        }
    }
    TrainReport report;
    report.outcome = TrainReport::Outcome::nothing_to_do;
    report.reason = "none of the forgotten samples had been trained on";
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

SampleStore& Personalizer::store() {
    return impl_->store;
}

// ---- BackgroundTraining ----------------------------------------------------------------

struct BackgroundTraining::State {
    std::atomic<bool> stop{false};
    std::atomic<bool> finished{false};
    mutable std::mutex mu;
    Progress progress;
    std::optional<TrainReport> report;
    std::exception_ptr error;
    std::thread worker;
};

std::unique_ptr<BackgroundTraining> Personalizer::train_async(TrainOptions options) {
    validate_train_options(options);
    auto state = std::make_shared<BackgroundTraining::State>();
    auto user_progress = std::move(options.on_progress);
    const std::atomic<bool>* user_stop = options.stop;
    if (user_stop && user_stop->load()) state->stop = true;
    // The run polls state->stop; a caller's own stop flag is forwarded after every step.
    options.on_progress = [state, user_progress, user_stop](const Progress& p) {
        {
            std::lock_guard lock(state->mu);
            state->progress = p;
        }
        if (user_stop && user_stop->load()) state->stop = true;
        if (user_progress) user_progress(p);
    };
    options.stop = &state->stop;
    state->worker = std::thread([this, state, options] {
        try {
            TrainReport r = train(options);
            std::lock_guard lock(state->mu);
            state->report = std::move(r);
        } catch (...) {
            std::lock_guard lock(state->mu);
            state->error = std::current_exception();
        }
        state->finished = true;
    });
    return std::make_unique<BackgroundTraining>(state);
}

BackgroundTraining::BackgroundTraining(std::shared_ptr<State> state) : state_(std::move(state)) {}

BackgroundTraining::~BackgroundTraining() {
    cancel();
    if (state_->worker.joinable()) state_->worker.join();
}

Progress BackgroundTraining::progress() const {
    std::lock_guard lock(state_->mu);
    return state_->progress;
}

void BackgroundTraining::cancel() {
    state_->stop = true;
}

bool BackgroundTraining::done() const {
    return state_->finished;
}

TrainReport BackgroundTraining::wait() {
    if (state_->worker.joinable()) state_->worker.join();
    std::lock_guard lock(state_->mu);
    if (state_->error) std::rethrow_exception(state_->error);
    return *state_->report;
}

}  // namespace edgetune
