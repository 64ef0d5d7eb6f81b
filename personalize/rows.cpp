// rows.cpp — which rows a training run holds out and which it trains on: the content-hashed
// validation split and the replay draw of older samples (detail/training.hpp).
#include <algorithm>
#include <cmath>
#include <cstring>

#include "detail/training.hpp"

namespace edgetune::detail {

namespace {

// Uniform in [0, 1) from a sample's cached feature row and label (FNV-1a over the bytes, then
// a murmur finalizer), so the split follows the content and the seed only.
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

}  // namespace

bool class_is_split(std::int64_t samples, float fraction) {
    // NOTE: the small slack keeps 0.2f x 10 (2.0000000298) and 0.1f x 20 on the split side.
    return samples >= min_class_for_split &&
           static_cast<double>(fraction) * static_cast<double>(samples) >=
               min_expected_held_out - 1e-6;
}

bool drawn_for_validation(const float* row, Index width, std::int32_t label, std::uint64_t seed,
                          float fraction) {
    return split_draw(row, width, label, seed) < fraction;
}

void mark_validation(Dataset& d, const HeadSpec& spec, std::uint64_t seed, float fraction) {
    // Classes (a regression store is one class) that class_is_split refuses keep all for
    // training: one-shot enrollment must not lose its only shot, nor 5-shot one its fifth.
    std::vector<std::int64_t> per_class(
        spec.classifies() ? static_cast<std::size_t>(spec.outputs) : 1, 0);
    auto class_of = [&](std::size_t i) {
        return spec.classifies() ? static_cast<std::size_t>(d.labels[i]) : std::size_t{0};
    };
    for (std::size_t i = 0; i < d.ids.size(); ++i) ++per_class[class_of(i)];
    d.validation.resize(d.ids.size());
    for (std::size_t k = 0; k < d.ids.size(); ++k) {
        const auto i = static_cast<Index>(k);
        d.validation[k] = class_is_split(per_class[class_of(k)], fraction) &&
                          drawn_for_validation(d.features.row(i).data(), d.features.cols(),
                                               d.labels[k], seed, fraction);
    }
}

RowSelection select_rows(const Dataset& d, const HeadSpec& spec, std::int64_t trained_upto,
                         const Replay& replay, Rng& rng) {
    RowSelection s;
    std::vector<std::size_t> old_rows;
    for (std::size_t i = 0; i < d.ids.size(); ++i) {
        if (d.validation[i])
            s.validation.push_back(i);
        else if (d.ids[i] > trained_upto)
            s.train.push_back(i);
        else
            old_rows.push_back(i);
    }
    if (replay.kind == Replay::Kind::all) {
        s.train.insert(s.train.end(), old_rows.begin(), old_rows.end());
    } else if (replay.kind == Replay::Kind::reservoir) {
        // A uniform draw of `size` older samples (partial Fisher-Yates, seeded).
        const std::size_t k = std::min(old_rows.size(), static_cast<std::size_t>(replay.size));
        for (std::size_t i = 0; i < k; ++i)
            std::swap(old_rows[i], old_rows[i + rng.below(old_rows.size() - i)]);
        s.train.insert(s.train.end(), old_rows.begin(),
                       old_rows.begin() + static_cast<std::ptrdiff_t>(k));
    } else if (replay.kind == Replay::Kind::class_balanced) {
        // Up to `size` older samples per class, drawn uniformly within each class.
        for (std::size_t i = old_rows.size(); i > 1; --i)
            std::swap(old_rows[i - 1], old_rows[rng.below(i)]);
        std::vector<std::int64_t> taken(static_cast<std::size_t>(spec.outputs), 0);
        for (std::size_t r : old_rows) {
            const std::size_t c = spec.classifies() ? static_cast<std::size_t>(d.labels[r]) : 0;
            if (taken[c] < replay.size) {
                ++taken[c];
                s.train.push_back(r);
            }
        }
    }
    // Ascending row = ascending id: the order (and so the shuffles) depends on which samples
    // are stored, never on their id values.
    std::sort(s.train.begin(), s.train.end());
    return s;
}

std::vector<std::size_t> unvalidated_rows(const Dataset& d, const RowSelection& rows) {
    std::vector<bool> held_out;
    for (std::size_t r : rows.validation) {
        const auto c = static_cast<std::size_t>(d.labels[r]);
        if (held_out.size() <= c) held_out.resize(c + 1, false);
        held_out[c] = true;
    }
    std::vector<std::size_t> out;
    for (std::size_t r : rows.train) {
        const auto c = static_cast<std::size_t>(d.labels[r]);
        if (c >= held_out.size() || !held_out[c]) out.push_back(r);
    }
    return out;
}

std::vector<std::size_t> mix_new_rows(const std::vector<std::size_t>& order,
                                      const std::vector<bool>& is_new, std::size_t batch,
                                      float share) {
    std::vector<std::size_t> fresh, old;
    for (std::size_t r : order) (is_new[r] ? fresh : old).push_back(r);
    const auto per_batch = std::min<std::size_t>(
        batch - 1, static_cast<std::size_t>(std::ceil(share * static_cast<float>(batch))));
    if (fresh.empty() || old.empty() || per_batch == 0 ||
        static_cast<double>(fresh.size()) >= share * static_cast<double>(order.size()))
        return order;
    const std::size_t old_per_batch = batch - per_batch;
    std::vector<std::size_t> out;
    std::size_t next_new = 0;
    for (std::size_t at = 0; at < old.size(); at += old_per_batch) {
        for (std::size_t k = 0; k < per_batch; ++k) out.push_back(fresh[next_new++ % fresh.size()]);
        const std::size_t len = std::min(old_per_batch, old.size() - at);
        out.insert(out.end(), old.begin() + static_cast<std::ptrdiff_t>(at),
                   old.begin() + static_cast<std::ptrdiff_t>(at + len));
    }
    return out;
}

}  // namespace edgetune::detail
