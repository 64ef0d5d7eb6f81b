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

// The validation split's metrics and the few-shot classes' shot metrics as one, each class
// weighing the same: (Cv * validation + Cs * shots) / (Cv + Cs) for the balanced accuracy and
// the loss. Only those two fields are set (what worse() reads).
Metrics per_class_mean(const Metrics& validation, const Metrics& shots, std::int64_t cv,
                       std::int64_t cs) {
    const double total = static_cast<double>(cv + cs);
    const auto mean = [&](double v, double s) {
        return (static_cast<double>(cv) * v + static_cast<double>(cs) * s) / total;
    };
    return {.loss = mean(validation.loss, shots.loss),
            .balanced_accuracy = mean(validation.balanced_accuracy, shots.balanced_accuracy)};
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
    // lost them (replay drowning a few shots) instead of ignoring them.
    const bool judged = f.shots_before && f.shots_after;
    // NOTE: the split alone sees what enrolling a 1-4 shot class costs the old classes and not
    // what it gains (the new class has no held-out sample): it would veto most such updates.
    // With both, the guard weighs every class once, the few-shot ones by their shots. Not for
    // a guarded upgrade: its `before` is the previous backbone's head, the shots' the base's.
    const bool weigh_shots =
        judged && f.classifies && !f.from_base && f.validation_classes > 0 && f.shot_classes > 0;
    if ((!f.from_base || f.guard_from_base) && f.before && f.after) {
        std::string reason =
            "validation got worse: " + metrics_json(*f.before) + " -> " + metrics_json(*f.after);
        Metrics before = *f.before, after = *f.after;
        if (weigh_shots) {
            before =
                per_class_mean(*f.before, *f.shots_before, f.validation_classes, f.shot_classes);
            after = per_class_mean(*f.after, *f.shots_after, f.validation_classes, f.shot_classes);
            reason = "validation and the shots of the classes without a held-out sample, " +
                     std::to_string(f.validation_classes) + " + " + std::to_string(f.shot_classes) +
                     " classes weighing the same, got worse: balanced accuracy " +
                     std::to_string(before.balanced_accuracy) + " -> " +
                     std::to_string(after.balanced_accuracy) + ", loss " +
                     std::to_string(before.loss) + " -> " + std::to_string(after.loss);
        }
        if (worse(before, after, f.classifies, f.tolerance))
            return {.action = Action::log_only, .outcome = Outcome::rolled_back, .reason = reason};
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
