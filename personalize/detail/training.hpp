// detail/training.hpp — the policies of one training run, as plain functions over plain data
// (private to personalize/). Personalizer::Impl::run calls them in this order:
//
//   read_dataset     what is stored: labels, targets, weights, cached features (dataset.cpp)
//   mark_validation  which rows are held out (rows.cpp)
//     (or, for an incremental run with a bounded replay, read_training_rows: only the new,
//     validation and replay rows, the split read from the store; dataset.cpp)
//   select_rows      which rows train: the new ones plus the replay draw (rows.cpp)
//   prepare_loss     prototype init, class weights, the base pull (loss.cpp)
//   run_epochs       the loop of one step: zero grad, forward, backward, clip, step, schedule,
//                    budgets, progress (loop.cpp)
//   decide           commit, roll back or fall back to the base head (decision.cpp)
//
// Only the readers (read_dataset, read_training_rows, record_split) touch the database; each of the
// others is unit-tested on a Dataset built in memory (tests/test_training.cpp).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "detail/head.hpp"
#include "personalize.hpp"

namespace edgetune::detail {

using Clock = std::chrono::steady_clock;

// Throws InvalidArgument naming the first bad option (optimizer and schedule included), before
// a run reads the store or forget() deletes anything (loop.cpp).
void validate_train_options(const TrainOptions& o);

// Everything stored that training reads: one row per sample, ascending id.
// Invariant: every member has ids.size() rows (targets: regression only, else empty).
struct Dataset {
    std::vector<std::int64_t> ids;
    IdList labels;   // classification
    Matrix targets;  // regression [n x W]
    std::vector<float> weights;
    Matrix features;  // [n x F]
    std::vector<bool> validation;
};

// ---- datasets (dataset.cpp) -------------------------------------------------------------------

// Every stored sample (ascending id) with its cached features for `digest` [n x feature_dim];
// validation is left empty (mark_validation sets it). Throws InvalidArgument when a sample
// disappears between two reads (retention on another connection): the caller retries.
Dataset read_dataset(const SampleStore& st, const HeadSpec& spec, const std::string& digest,
                     Index feature_dim);

// What an incremental run reads instead of read_dataset when its replay is bounded
// (Replay::reservoir or none): the new samples (id > trained_upto, a keyset scan from the
// watermark), the validation split and the replay draw, and nothing else, so its cost and
// memory follow new + replay + validation, not the store. The split is the one
// mark_validation computes (same seed, fraction and content draw, classes too small to split
// kept whole: class_is_split), recorded in the store's held-out set as samples arrive
// (meta personalize.split says for which seed, fraction and features; a change redraws it
// once); class counts come from the store. Of the older held-out samples (id <= trained_upto)
// it validates on at most max_update_validation, drawn uniformly from `rng` (the new held-out
// ones always: they must not train). The reservoir draw is SampleStore::sample_trained
// (`size` of the trained, non-held-out samples, from `rng`); select_rows then takes all of
// them. Writes the held-out marks of the samples it drew for (its own transaction). Throws
// InvalidArgument as read_dataset does.
// A sample of this many held-out rows measures a change of accuracy of a few points (the
// guard's default tolerance is 2) to within about one point; more only costs time.
constexpr std::size_t max_update_validation = 2000;
struct SplitOptions {
    std::uint64_t seed = 0;
    float fraction = 0.0f;
};
Dataset read_training_rows(SampleStore& st, const HeadSpec& spec, const std::string& digest,
                           Index feature_dim, const SplitOptions& split, std::int64_t trained_upto,
                           const Replay& replay, Rng& rng);
// After a read of every row (read_dataset + mark_validation): records the split draw of the
// rows above the recorded ones, so that the next read_training_rows starts from there.
void record_split(SampleStore& st, const Dataset& d, const std::string& digest,
                  const SplitOptions& split);
// True when read_training_rows serves this run (an incremental run with a bounded replay).
bool reads_training_rows(bool from_base, const Replay& replay);

// The caller's labelled samples with their features [n x F], for evaluation. Throws
// InvalidArgument naming the sample whose label or target does not fit the head.
Dataset dataset_of(std::span<const Sample> samples, Matrix features, const HeadSpec& spec);

// ---- rows (rows.cpp) ------------------------------------------------------------------------

// A class with fewer stored samples than this keeps all of them for training (no split).
constexpr std::int64_t min_class_for_split = 5;
// Nor is a class split whose expected held-out count, fraction x its samples, is below this:
// at the default 0.2 a class keeps all of its first 9 shots (the few-shot guard judges it on
// them, RunFacts::shots_before) instead of giving one of 5 to a one-sample validation.
constexpr double min_expected_held_out = 2.0;

// Whether a class of `samples` rows is split at `fraction` (the two thresholds above).
bool class_is_split(std::int64_t samples, float fraction);

// The content draw of the validation split: true when a hash of the feature row [width] and
// the label (seeded) falls below `fraction`. Held out if class_is_split for its class as well.
bool drawn_for_validation(const float* row, Index width, std::int32_t label, std::uint64_t seed,
                          float fraction);

// Sets d.validation: a row is held out when class_is_split for its class and a hash of its
// feature row and label (seeded) falls below `fraction`. The side a sample is
// on depends on its content, never its id, so forget() + retrain equals never having added it.
// NOTE: stratified in expectation only; a class with few samples may have none held out.
void mark_validation(Dataset& d, const HeadSpec& spec, std::uint64_t seed, float fraction);

// Rows (indices into a Dataset), ascending.
struct RowSelection {
    std::vector<std::size_t> validation;
    std::vector<std::size_t> train;
};

// Validation rows are never trained on. Rows with id > trained_upto are new and always train;
// older rows train as `replay` says (all, none, a uniform reservoir of `size`, or up to `size`
// per class), drawn from `rng`. A retrain from base passes trained_upto = 0: everything is new.
RowSelection select_rows(const Dataset& d, const HeadSpec& spec, std::int64_t trained_upto,
                         const Replay& replay, Rng& rng);

// ---- loss (loss.cpp) --------------------------------------------------------------------------

// The loss of a run beyond the head's own output: cross-entropy options (smoothing, class
// weights) and the L2 pull toward the base head's parameters (index-aligned with parameters()).
struct LossTerms {
    CrossEntropyOptions ce{};
    std::vector<Var> base_params{};
    float base_pull = 0.0f;
};

// Classifiers up to this many outputs are "narrow": the auto rules of TrainOptions (lr and
// balance_classes) treat wider ones (a vocabulary) differently.
constexpr std::int64_t narrow_head = 100;

// TrainOptions::balance_classes as set, or its auto rule for `spec` when unset.
bool balances_classes(const TrainOptions& o, const HeadSpec& spec);

// Prototype heads: classes in `train_rows` not yet in `seen` start at their class mean. Marks
// the trained classes in `seen`; computes inverse-frequency class weights when
// balances_classes(o, ..); copies the base head's parameters when o.base_pull > 0.
LossTerms prepare_loss(Head& head, std::vector<bool>& seen, const Dataset& d,
                       const std::vector<std::size_t>& train_rows, const TrainOptions& o,
                       const Head& base);

// ---- the epoch loop (loop.cpp) ----------------------------------------------------------------

// What the loop carries from epoch to epoch. Contract: run_epochs(loop, .., a) followed by
// run_epochs(loop, .., b) leaves loop (parameters, optimizer, schedule, rng, order, curve) exactly
// as one run_epochs(loop, .., a + b) does (tests/test_personalize.cpp checks it bit for bit).
struct TrainLoop {
    std::vector<Var> params;  // head.parameters()
    std::unique_ptr<Optimizer> optimizer;
    std::unique_ptr<Schedule> schedule;
    Rng rng;
    std::vector<std::size_t> order;  // the training rows, reshuffled in place every epoch
    int epoch = 0;                   // epochs started
    int last_epoch = 0;              // the last epoch that took at least one step
    std::int64_t steps = 0;
    std::vector<float> loss_curve;  // mean training loss per epoch that took a step
    std::vector<bool> is_new{};     // [dataset rows]: new since the last commit (new_share)
    // Inside an epoch (a run stopped between two of its steps, or restored by load_resume):
    // `order` is that epoch's shuffle, `at` the position of its next batch, and the sums are
    // the epoch's so far. The next run_epochs finishes this epoch first (it counts as one).
    bool inside_epoch = false;
    std::size_t at = 0;
    double epoch_loss = 0.0;
    std::size_t epoch_batches = 0;
};

// The epoch's batches with TrainOptions::new_share (rows.cpp): `order` (shuffled) regrouped so
// every batch of `batch` rows holds at least ceil(share * batch) new rows, the new ones cycled
// in their shuffled order; the old rows each appear once. Returns `order` itself when the new
// rows already make up the share, or there are no new or no old rows.
std::vector<std::size_t> mix_new_rows(const std::vector<std::size_t>& order,
                                      const std::vector<bool>& is_new, std::size_t batch,
                                      float share);

// The lr train() uses for TrainOptions::optimizer's auto_lr on `head` (the rule is documented
// at TrainOptions::optimizer): `sgd` for SgdOptions, else Adam/AdamW.
float auto_lr_for(const HeadSpec& head, bool sgd);

// A classifier wider than narrow_head (the auto rules treat it as a vocabulary).
bool wide_classifier(const HeadSpec& head);

// `spec` with an lr of auto_lr replaced by auto_lr_for(head, ..); any other lr unchanged.
OptimizerSpec resolve_optimizer(const OptimizerSpec& spec, const HeadSpec& head);

// Fresh optimizer (its auto_lr resolved for head.spec()) and schedule over head.parameters(); with
// `resume`, the saved optimizer state is continued when its kind matches (lr stays the option's),
// else the moments start fresh.
TrainLoop start_loop(Head& head, const TrainOptions& o, const OptimizerState* resume, Rng rng,
                     std::vector<std::size_t> rows);

// Why run_epochs returned before its last epoch ended.
struct LoopStop {
    enum class Why { none, cancelled, budget, diverged };
    Why why = Why::none;
    std::string reason;  // budget or divergence, in words; empty otherwise
};

// Runs `epochs` more epochs of batches of o.batch rows. Stops between steps on o.stop, on
// o.max_steps (counted over loop.steps) and o.deadline (since `start`); a non-finite loss stops
// it before the step. Progress steps count from `step_offset` (the checkpoint's step).
// A plateau schedule steps once per epoch on its mean loss, the others once per step.
// `resume_point` (when given) sees the loop after every o.resume_every-th step (counted over
// loop.steps) and when a cancel stops it, before a stopped epoch's partial mean is recorded:
// in a state from which run_epochs continues exactly as if it had not stopped.
LoopStop run_epochs(TrainLoop& loop, Head& head, const Dataset& d, const LossTerms& terms,
                    const TrainOptions& o, int epochs, Clock::time_point start,
                    std::int64_t step_offset,
                    const std::function<void(const TrainLoop&)>& resume_point = {});

// ---- resumable runs (resume.cpp) --------------------------------------------------------------

// What a resume record must match to be continued: the options that shape the trajectory
// (not the budgets, tolerance or callbacks), the checkpoint the run started from, the
// watermark, and the training and validation rows (by sample id). 16+ hex digits.
std::string run_fingerprint(const TrainOptions& o, std::int64_t start_checkpoint,
                            std::int64_t trained_upto, const Dataset& d, const RowSelection& rows);

// The loop and head in the middle of a run as a resume record: a checkpoint envelope (kind
// "resume", CRC-checked; storage/FORMAT.md) in hex, with the loop's fields as attributes (floats
// by their bits) and the order by sample id. Throws InvalidArgument on NaN/Inf parameters.
std::string encode_resume(const TrainLoop& loop, const Head& head, const Dataset& d,
                          const std::string& fingerprint);

// Restores loop (optimizer, schedule, rng, order, position, sums) and head's parameters from a
// record written by encode_resume for the same fingerprint, over a loop from start_loop. False,
// with nothing changed, when the record belongs to another run or is corrupt: the run then
// starts from the beginning (a record only saves time, losing it loses nothing else).
bool load_resume(std::string_view record, const std::string& fingerprint, TrainLoop& loop,
                 Head& head, const Dataset& d);

// Loss and accuracies of `head` over `rows` of d (no graph is recorded). top_k > 0
// (classification): also Metrics::top_k_accuracy, class_samples and class_accuracy.
Metrics evaluate_rows(Head& head, const Dataset& d, const std::vector<std::size_t>& rows,
                      int top_k = 0);

// ---- the decision (decision.cpp) --------------------------------------------------------------

// What a run does with what it trained.
enum class Action {
    log_only,              // keep the committed head; only the training log records the run
    commit_trained,        // commit the trained head; every stored sample counts as trained on
    commit_base,           // commit the base head; every sample counts as new (trained_upto = 0)
    commit_base_covering,  // commit the base head; every stored sample counts as trained on
};

struct Decision {
    Action action = Action::log_only;
    TrainReport::Outcome outcome = TrainReport::Outcome::nothing_to_do;
    std::string reason;
    bool drop_after = false;  // the `after` metrics describe a head that is not committed
};

// What the decision reads about a run that trained (all of it plain data).
struct RunFacts {
    bool from_base = false;  // forget() / upgrade: the old head must never be kept
    bool classifies = true;
    float tolerance = 0.0f;
    std::int64_t steps = 0;
    LoopStop stop{};
    bool params_finite = true;
    bool optimizer_finite = true;
    std::optional<Metrics> before{}, after{};  // validation metrics; after only when healthy()
    // A backbone upgrade's retrain from base, guarded like an incremental run against the
    // previous backbone's head (`before` is that head's metrics on its own stored features).
    bool guard_from_base = false;
    // Classes trained on that have no validation sample (1-4 shots): their training shots'
    // metrics before and after (after only when healthy()); unset when there are none.
    std::optional<Metrics> shots_before{}, shots_after{};
    // Neither cancelled nor diverged: the trained head may be evaluated.
    bool healthy() const {
        return stop.why != LoopStop::Why::cancelled && stop.why != LoopStop::Why::diverged &&
               params_finite && optimizer_finite;
    }
};

// The training rows of the classes that have no validation row (the few-shot classes the
// validation split leaves whole), ascending.
std::vector<std::size_t> unvalidated_rows(const Dataset& d, const RowSelection& rows);

// A run with nothing to train (an empty store, no training rows, or epochs = 0 on an
// incremental run of a head that is not a prototype head: a prototype head with epochs = 0
// enrolls its new classes' means without a gradient step, then meets decide() as any run):
// the base head is committed on a retrain from base (it must lose what removed
// samples taught), else the run is only logged. nullopt: there is something to train.
std::optional<Decision> decide_untrained(bool store_empty, bool no_train_rows, bool zero_epochs,
                                         bool from_base);

// The table, first matching row wins:
//   cancelled                  incremental: keep the old head (cancelled)
//                              from base:   commit the base head (cancelled)
//   diverged or NaN val. loss  incremental: roll back
//                              from base:   commit the base head (committed)
//   incremental (or a guarded upgrade), validation worse by more than the tolerance: roll back
//                              (with few-shot classes, RunFacts::shots_*: the split's classes
//                              and theirs judged together, each class by its held-out samples
//                              or its shots, balanced over classes, the loss too;
//                              and the split's own classes worse by more than 0.25)
//   few-shot classes worse on their own shots: roll back
//   otherwise                  commit the trained head
// "Worse" for classification: balanced accuracy dropped by more than the tolerance AND the
// loss did not improve; for regression: the loss rose by more than the tolerance fraction.
Decision decide(const RunFacts& f);

// The metrics as the training log writes them: {"loss":..,"accuracy":..,..}.
std::string metrics_json(const Metrics& m);

}  // namespace edgetune::detail
