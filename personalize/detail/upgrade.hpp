// detail/upgrade.hpp — what Personalizer::open decides before it trusts a head: the meta keys
// personalize keeps in the store, a backbone upgrade's guard and its undo, and whether an
// app's shipped head fits (private to personalize/; upgrade.cpp).
#pragma once

#include <optional>
#include <vector>

#include "detail/head.hpp"
#include "detail/training.hpp"
#include "personalize.hpp"

namespace edgetune::detail {

// The keys of the store's `meta` table that personalize owns (storage/FORMAT.md).
namespace meta {
inline constexpr const char* meta_digest = "personalize.backbone_digest";
inline constexpr const char* meta_head = "personalize.head";
inline constexpr const char* meta_trained_upto = "personalize.trained_upto";
// "upgrade" or "forget" while a retrain from base is owed (set in the same transaction as the
// change that makes the current head wrong, cleared by the retrain's commit): a crash in
// between retrains at the next open, so a forgotten sample never survives in the head.
inline constexpr const char* meta_retrain_pending = "personalize.retrain_pending";
// The previous backbone's digest while an upgrade's retrain is owed: its features are dropped
// by the retrain's commit, not before.
inline constexpr const char* meta_upgrade_from = "personalize.upgrade_from";
// ... and the key its features are stored under.
inline constexpr const char* meta_upgrade_from_features = "personalize.upgrade_from_features";
// The key the cached features are stored under (Backbone::feature_key): a store opened where
// another kernel variant runs drops them and computes its own.
inline constexpr const char* meta_feature_key = "personalize.feature_key";
// The resume record of the last interrupted run (detail/training.hpp, resume.cpp), "" if none.
// Written at TrainOptions::resume_every; dropped when a run ends and by every forget() (it
// holds a head trained on what may be forgotten).
inline constexpr const char* meta_resume = "personalize.resume";
}  // namespace meta

// The previous backbone's committed head on the validation rows of `d`, through the features it
// was trained on (still stored until an upgrade commits); nullopt if either is missing.
std::optional<Metrics> previous_head_metrics(const SampleStore& st, const HeadSpec& spec,
                                             const Dataset& d,
                                             const std::vector<std::size_t>& rows);

// Undoes an upgrade to `new_digest` whose retrain failed the guard: the previous backbone's
// digest, head and features are the committed ones again; the new backbone's rows are dropped.
void revert_upgrade(SampleStore& st, const std::string& new_digest);

// Prototype heads: the classes an initial head already enrolled, those whose weight column
// (the first layer's, [F x C]) is not all zero.
std::vector<bool> enrolled_columns(const Head& head);

// Throws InvalidArgument unless `w` fits a head of `spec` over `backbone`'s features (names,
// shapes, NaN/Inf, and the backbone digest when `w` names one).
void check_initial_head(const HeadWeights& w, const HeadSpec& spec, const Backbone& backbone);

}  // namespace edgetune::detail
