// dataset.cpp — the Dataset a training run or an evaluation reads (detail/training.hpp): from
// the store (labels, targets, weights and the cached features, ascending id), or from samples
// given by the caller.
#include <algorithm>
#include <bit>
#include <string>

#include "detail/training.hpp"

namespace edgetune::detail {

Dataset read_dataset(const SampleStore& st, const HeadSpec& spec, const std::string& digest,
                     Index feature_dim) {
    Dataset d;
    std::vector<Sample> batch;
    for (auto cursor = st.scan({.batch = 1024, .fields = Fields::no_input}); cursor.next(batch);) {
        for (const Sample& s : batch) {
            d.ids.push_back(s.id);
            d.labels.push_back(s.label);
            d.weights.push_back(s.weight);
        }
        if (!spec.classifies()) {
            const Index w = spec.outputs;
            const Index at = d.targets.rows();
            d.targets.conservativeResize(at + static_cast<Index>(batch.size()), w);
            for (std::size_t i = 0; i < batch.size(); ++i)
                d.targets.row(at + static_cast<Index>(i)) =
                    Eigen::Map<const Eigen::RowVectorXf>(batch[i].target.data(), w);
        }
    }
    d.features.resize(static_cast<Index>(d.ids.size()), feature_dim);
    constexpr std::size_t chunk = 4096;
    for (std::size_t at = 0; at < d.ids.size(); at += chunk) {
        const std::size_t len = std::min(chunk, d.ids.size() - at);
        d.features.middleRows(static_cast<Index>(at), static_cast<Index>(len)) =
            st.get_features(digest, std::span(d.ids).subspan(at, len));
    }
    return d;
}

namespace {

// What the held-out marks were drawn with, and how far (meta keys of the Personalizer).
constexpr char meta_split[] = "personalize.split";            // "seed fraction-bits features"
constexpr char meta_split_upto[] = "personalize.split_upto";  // samples up to this id drawn

// How far the store's held-out marks are drawn for these options: 0 when they were drawn
// for others (or never), and then `redraw` (the marks start over).
struct SplitState {
    std::string key;
    bool redraw = true;
    std::int64_t upto = 0;
};

SplitState split_state(const SampleStore& st, const SplitOptions& split,
                       const std::string& digest) {
    SplitState s;
    s.key = std::to_string(split.seed) + " " +
            std::to_string(std::bit_cast<std::uint32_t>(split.fraction)) + " " + digest;
    s.redraw = st.get_meta(meta_split) != s.key;
    if (!s.redraw) s.upto = std::stoll(st.get_meta(meta_split_upto).value_or("0"));
    return s;
}

// Records the marks drawn for the samples in (s.upto, last], in one transaction. False when a
// full disk refused them: they only save the next run a pass, so the run goes on without.
bool save_split(SampleStore& st, const SplitState& s, std::span<const std::int64_t> marks,
                std::int64_t last) {
    if (!s.redraw && last <= s.upto) return true;
    try {
        Transaction tx = st.transaction();
        if (s.redraw) st.clear_held_out();
        st.hold_out(marks);
        st.set_meta(meta_split, s.key);
        st.set_meta(meta_split_upto, std::to_string(std::max(last, s.upto)));
        tx.commit();
    } catch (const DiskFull&) {
        return false;
    }
    return true;
}

// Appends samples (ascending ids above d's last) with their features [n x F] to d.
void append_rows(Dataset& d, const std::vector<Sample>& samples, const Matrix& features,
                 const HeadSpec& spec) {
    const auto at = static_cast<Index>(d.ids.size());
    const auto n = static_cast<Index>(samples.size());
    for (const Sample& s : samples) {
        d.ids.push_back(s.id);
        d.labels.push_back(s.label);
        d.weights.push_back(s.weight);
    }
    d.features.conservativeResize(at + n, features.cols());
    d.features.middleRows(at, n) = features;
    if (!spec.classifies()) {
        d.targets.conservativeResize(at + n, spec.outputs);
        for (Index i = 0; i < n; ++i)
            d.targets.row(at + i) = Eigen::Map<const Eigen::RowVectorXf>(
                samples[static_cast<std::size_t>(i)].target.data(), spec.outputs);
    }
}

// The new samples of a run (no input) and their features [n x F]; the held-out marks: those
// the store had (none if they were drawn for other options) plus those this scan drew.
struct NewRows {
    std::vector<Sample> samples;
    Matrix features;
    std::vector<std::int64_t> held_out;
};

// Scans the samples above min(split_upto, trained_upto): draws the split of those above the
// split watermark (recorded in the store) and returns the new ones (id > trained_upto).
NewRows scan_new_rows(SampleStore& st, const std::string& digest, Index feature_dim,
                      const SplitOptions& split, std::int64_t trained_upto) {
    const SplitState state = split_state(st, split, digest);
    const std::int64_t split_upto = state.upto;
    NewRows fresh{{}, Matrix(0, feature_dim), {}};
    std::vector<std::int64_t> marks;
    std::int64_t last = split_upto;
    std::vector<Sample> batch;
    for (auto cursor = st.scan({.batch = 1024,
                       .after_id = std::min(split_upto, trained_upto),
                       .fields = Fields::no_input});
         cursor.next(batch);) {
        std::vector<std::int64_t> ids;
        for (const Sample& s : batch) ids.push_back(s.id);
        const Matrix features = st.get_features(digest, ids);
        const Index at = fresh.features.rows();
        fresh.features.conservativeResize(at + static_cast<Index>(batch.size()), feature_dim);
        Index kept = 0;
        for (std::size_t i = 0; i < batch.size(); ++i) {
            const auto row = static_cast<Index>(i);
            if (batch[i].id > split_upto &&
                drawn_for_validation(features.row(row).data(), feature_dim, batch[i].label,
                                     split.seed, split.fraction))
                marks.push_back(batch[i].id);
            if (batch[i].id > trained_upto) {
                fresh.samples.push_back(std::move(batch[i]));
                fresh.features.row(at + kept++) = features.row(row);
            }
        }
        fresh.features.conservativeResize(at + kept, feature_dim);
        last = std::max(last, ids.back());
    }
    const bool saved = save_split(st, state, marks, last);
    if (saved || !state.redraw) fresh.held_out = st.held_out();
    fresh.held_out.insert(fresh.held_out.end(), marks.begin(), marks.end());
    std::sort(fresh.held_out.begin(), fresh.held_out.end());
    fresh.held_out.erase(std::unique(fresh.held_out.begin(), fresh.held_out.end()),
                         fresh.held_out.end());
    return fresh;
}

}  // namespace

void record_split(SampleStore& st, const Dataset& d, const std::string& digest,
                  const SplitOptions& split) {
    const SplitState state = split_state(st, split, digest);
    std::vector<std::int64_t> marks;
    for (std::size_t i = 0; i < d.ids.size(); ++i)
        if (d.ids[i] > state.upto &&
            drawn_for_validation(d.features.row(static_cast<Index>(i)).data(), d.features.cols(),
                                 d.labels[i], split.seed, split.fraction))
            marks.push_back(d.ids[i]);
    save_split(st, state, marks, d.ids.empty() ? 0 : d.ids.back());
}

bool reads_training_rows(bool from_base, const Replay& replay) {
    return !from_base &&
           (replay.kind == Replay::Kind::reservoir || replay.kind == Replay::Kind::none);
}

Dataset read_training_rows(SampleStore& st, const HeadSpec& spec, const std::string& digest,
                           Index feature_dim, const SplitOptions& split, std::int64_t trained_upto,
                           const Replay& replay, Rng& rng) {
    NewRows fresh = scan_new_rows(st, digest, feature_dim, split, trained_upto);
    // The validation split: the held-out marks of classes large enough to split.
    const std::vector<std::int64_t> counts =
        spec.classifies() ? st.count_per_label() : std::vector<std::int64_t>{st.count()};
    auto splits = [&](std::int32_t label) {
        const auto c = spec.classifies() ? static_cast<std::size_t>(label) : std::size_t{0};
        return c < counts.size() && class_is_split(counts[c], split.fraction);
    };
    std::vector<std::int64_t> older;  // validation and replay samples, all <= trained_upto
    std::vector<std::int64_t> validation;
    for (const std::int64_t id : fresh.held_out) {
        if (id > trained_upto) {
            validation.push_back(id);  // a new sample: read by the scan already
            continue;
        }
        older.push_back(id);
    }
    // At most max_update_validation of the older ones, drawn uniformly from their ids, so that
    // reading and evaluating the split is bounded as well.
    if (older.size() > max_update_validation) {
        for (std::size_t i = 0; i < max_update_validation; ++i)
            std::swap(older[i], older[i + rng.below(older.size() - i)]);
        older.resize(max_update_validation);
        std::sort(older.begin(), older.end());
    }
    std::vector<Sample> older_samples = st.get_many(older, Fields::no_input);
    {
        std::vector<Sample> kept;
        for (Sample& s : older_samples)
            if (splits(s.label)) {
                validation.push_back(s.id);
                kept.push_back(std::move(s));
            }
        older_samples = std::move(kept);
    }
    if (replay.kind == Replay::Kind::reservoir) {
        const std::vector<std::int64_t> drawn = st.sample_trained(
            static_cast<std::size_t>(std::max<std::int64_t>(replay.size, 0)), rng);
        const std::vector<Sample> replayed = st.get_many(drawn, Fields::no_input);
        older_samples.insert(older_samples.end(), replayed.begin(), replayed.end());
        std::sort(older_samples.begin(), older_samples.end(),
                  [](const Sample& a, const Sample& b) { return a.id < b.id; });
    }
    older.clear();
    for (const Sample& s : older_samples) older.push_back(s.id);
    Dataset d;
    d.features.resize(0, feature_dim);
    if (!older.empty()) append_rows(d, older_samples, st.get_features(digest, older), spec);
    if (!fresh.samples.empty()) append_rows(d, fresh.samples, fresh.features, spec);
    std::sort(validation.begin(), validation.end());
    d.validation.resize(d.ids.size());
    for (std::size_t i = 0; i < d.ids.size(); ++i)
        d.validation[i] = std::binary_search(validation.begin(), validation.end(), d.ids[i]) &&
                          splits(d.labels[i]);
    return d;
}

Dataset dataset_of(std::span<const Sample> samples, Matrix features, const HeadSpec& spec) {
    const char* op = "[evaluate] ";
    Dataset d;
    d.features = std::move(features);
    const std::int64_t outputs = spec.outputs;
    if (spec.classifies()) {
        for (std::size_t i = 0; i < samples.size(); ++i) {
            if (samples[i].label < 0 || samples[i].label >= outputs)
                throw InvalidArgument(op + std::string("label ") +
                                      std::to_string(samples[i].label) + " of sample " +
                                      std::to_string(i) + " out of range for " +
                                      std::to_string(outputs) + " classes");
            d.labels.push_back(samples[i].label);
        }
    } else {
        d.targets.resize(static_cast<Index>(samples.size()), outputs);
        for (std::size_t i = 0; i < samples.size(); ++i) {
            if (static_cast<std::int64_t>(samples[i].target.size()) != outputs)
                throw InvalidArgument(op + std::string("sample ") + std::to_string(i) +
                                      " has a target of width " +
                                      std::to_string(samples[i].target.size()) + ", expected " +
                                      std::to_string(outputs));
            d.targets.row(static_cast<Index>(i)) =
                Eigen::Map<const Eigen::RowVectorXf>(samples[i].target.data(), outputs);
        }
    }
    return d;
}

}  // namespace edgetune::detail
