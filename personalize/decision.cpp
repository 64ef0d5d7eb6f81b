// decision.cpp — what a training run does with its result: commit the trained head, roll back,
// or fall back to the base head (detail/training.hpp holds the table).
#include <cmath>

#include "detail/training.hpp"

namespace edgetune::detail {

namespace {

using Outcome = TrainReport::Outcome;

// Classification: worse = class-balanced accuracy dropped by more than the tolerance AND the
// loss did not improve. Balanced, so that an enrollment trading a little of many old samples
// for a new class with a handful of shots counts as the gain it is; both signals, because on a
// small split one sample moves accuracy by several percent while the loss (a proper score)
// moves smoothly: a 5-shot enrollment otherwise fails the guard about every other time on noise.
bool worse(const Metrics& before, const Metrics& after, bool classifies, float tolerance) {
    if (classifies)
        return after.balanced_accuracy < before.balanced_accuracy - tolerance &&
               after.loss >= before.loss;
    return after.loss > before.loss * (1.0 + tolerance);
}

// The validation split and the few-shot classes' training shots as one judgement: the
// class-balanced accuracy and the loss over every class judged (each by its held-out samples,
// or by its shots when it has none), each class weighing the same. Without it, an enrollment of
// classes too small to split is judged by the old classes alone and rolled back for the little
// they lose (examples/enroll: 5 shots with a 0.2 split, every update rolled back).
// examples/enroll, 5 shots: an update with replay cost the split's classes 9-15 points, one
// without replay (forgetting) 40-66.
constexpr float max_joint_drop = 0.25f;

Metrics judged_together(const Metrics& validation, const Metrics& shots) {
    const auto classes = static_cast<double>(validation.classes + shots.classes);
    const auto samples = static_cast<double>(validation.samples + shots.samples);
    Metrics m;
    m.samples = validation.samples + shots.samples;
    m.classes = validation.classes + shots.classes;
    // NOTE: the loss is weighed by class too: by samples, one shot's gain would vanish under
    // the split's rows (examples/open_world, 1 shot: an enrollment rolled back).
    const auto per_class = [&](double v, double s) {
        return (v * static_cast<double>(validation.classes) +
                s * static_cast<double>(shots.classes)) /
               classes;
    };
    if (classes > 0) {
        m.balanced_accuracy = per_class(validation.balanced_accuracy, shots.balanced_accuracy);
        m.loss = per_class(validation.loss, shots.loss);
    }
    if (samples > 0) {
        const auto v = static_cast<double>(validation.samples);
        const auto t = static_cast<double>(shots.samples);
        m.accuracy = (validation.accuracy * v + shots.accuracy * t) / samples;
    }
    return m;
}

}  // namespace

std::optional<Decision> decide_untrained(bool store_empty, bool no_train_rows, bool zero_epochs,
                                         bool from_base) {
    if (!no_train_rows && !(zero_epochs && !from_base)) return std::nullopt;
    std::string reason =
        store_empty     ? "the store holds no samples"
        : no_train_rows ? "no training samples (all are in the validation split or nothing is new)"
                        : "epochs = 0";
    // A retrain from base must still lose what the head learned from removed samples.
    if (from_base)
        return Decision{.action = Action::commit_base_covering,
                        .outcome = Outcome::committed,
                        .reason = reason + ": committed the base head"};
    return Decision{
        .action = Action::log_only, .outcome = Outcome::nothing_to_do, .reason = reason};
}

Decision decide(const RunFacts& f) {
    if (f.stop.why == LoopStop::Why::cancelled) {
        const std::string reason = "cancelled after " + std::to_string(f.steps) + " steps";
        if (!f.from_base)
            return {.action = Action::log_only,
                    .outcome = Outcome::cancelled,
                    .reason = reason + "; the last committed head is kept"};
        // A retrain from base never keeps the old head: the base is committed, and every
        // sample counts as new for the next train().
        return {.action = Action::commit_base,
                .outcome = Outcome::cancelled,
                .reason = reason + "; committed the base head, every sample counts as new"};
    }
    const bool nan_after = f.after && !std::isfinite(f.after->loss);
    if (!f.healthy() || nan_after) {
        std::string reason = f.stop.why == LoopStop::Why::diverged ? f.stop.reason
                             : !f.params_finite                    ? "a parameter became NaN/Inf"
                             : !f.optimizer_finite    ? "the optimizer state became NaN/Inf"
                             : !f.stop.reason.empty() ? f.stop.reason
                                                      : "validation loss is not finite";
        if (!f.from_base)
            return {.action = Action::log_only, .outcome = Outcome::rolled_back, .reason = reason};
        // Exact unlearning must not keep the old head: fall back to the base head.
        return {.action = Action::commit_base,
                .outcome = Outcome::committed,
                .reason = reason + "; committed the base head instead, every sample counts as new",
                .drop_after = true};
    }
    // Classes without a held-out sample are judged on their own shots, by the same two signals
    // as the validation split: a training-set check, optimistic, but it catches an update that
    // lost them (replay drowning a few shots) instead of ignoring them. With a validation split
    // too, the split's classes and these are judged together first (judged_together).
    const bool judged = f.shots_before && f.shots_after;
    if ((!f.from_base || f.guard_from_base) && f.before && f.after) {
        // NOTE: not for a guarded upgrade: its `before` is the previous backbone's head, the
        // shots' the base's.
        const bool together = judged && f.classifies && !f.from_base && f.before->classes > 0 &&
                              f.shots_before->classes > 0;
        const Metrics before = together ? judged_together(*f.before, *f.shots_before) : *f.before;
        const Metrics after = together ? judged_together(*f.after, *f.shots_after) : *f.after;
        // NOTE: the shots' accuracy is a training-set figure (optimistic), so the joint
        // judgement alone would let an update forget the split's classes for a few perfectly
        // fitted shots: they may not lose more than max_joint_drop of balanced accuracy.
        if (worse(before, after, f.classifies, f.tolerance) ||
            (together && worse(*f.before, *f.after, true, max_joint_drop)))
            return {.action = Action::log_only,
                    .outcome = Outcome::rolled_back,
                    .reason = std::string("validation got worse") +
                              (together ? " (with the few-shot classes' shots): " : ": ") +
                              metrics_json(before) + " -> " + metrics_json(after)};
    }
    if (!f.from_base && judged && f.classifies &&
        worse(*f.shots_before, *f.shots_after, true, f.tolerance))
        return {.action = Action::log_only,
                .outcome = Outcome::rolled_back,
                .reason = "classes without a held-out sample got worse on their training shots: " +
                          metrics_json(*f.shots_before) + " -> " + metrics_json(*f.shots_after)};
    std::string reason = !f.stop.reason.empty() ? f.stop.reason
                         : f.before             ? "completed"
                                                : "completed (no validation samples: unguarded)";
    if (judged && f.classifies)
        reason += "; classes without a held-out sample judged on their " +
                  std::to_string(f.shots_after->samples) + " training shots: accuracy " +
                  std::to_string(f.shots_before->accuracy) + " -> " +
                  std::to_string(f.shots_after->accuracy);
    return {.action = Action::commit_trained, .outcome = Outcome::committed, .reason = reason};
}

}  // namespace edgetune::detail
