// personalize.hpp — the façade an app embeds: a frozen backbone, a small head trained on the
// device from samples kept in one local SQLite database.
//
//   auto p = edgetune::Personalizer::open("user.db", {
//       .backbone = edgetune::Backbone::load("backbone.etb"),
//       .head = edgetune::HeadSpec::linear(10)});
//   p->add(sample);                      // validated, stored, backbone features cached
//   auto report = p->train({.epochs = 5});
//   auto top3 = p->predict(input, 3);
//   p->forget(ids);                      // delete + exact unlearning (retrain from base)
//
// Frozen is a type boundary: Backbone::features() returns a Matrix, never a Var, so no gradient
// can reach the backbone. Training epochs read cached features and never rerun the backbone.
// Thread safety: every Personalizer method may be called from any thread; add() and predict()
// stay usable while a background training runs (predict serves the last committed head).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "autograd.hpp"
#include "optim.hpp"
#include "storage.hpp"

namespace EDGETUNE_API edgetune {

// ---------------------------------------------------------------------------------------
// Backbone (backbone.cpp)

// Architecture of a backbone: float inputs [n x D] go straight into the MLP; token inputs
// [n x L] are embedded ([vocab x embed_dim] table) and flattened to [n x L*embed_dim] first.
// hidden lists the MLP's layer widths after the input; its last entry is the feature width.
// Every layer is followed by the activation (features are post-activation).
// NOTE: every member has a default member initializer so designated initializers may omit
// any of them under -Wextra (-Wmissing-field-initializers); the same holds for the option
// structs below.
struct BackboneConfig {
    InputSpec input{};
    std::int64_t vocab = 0;      // token inputs only
    std::int64_t embed_dim = 0;  // token inputs only
    std::vector<Index> hidden{};
    Activation activation = Activation::relu;
};

// The backbone as a trainable network, for pretraining it (examples/train_backbone).
class BackboneNet : public Module {
public:
    // Init::zeros draws nothing (for weights that are loaded next); token embeddings are
    // always drawn.
    BackboneNet(const BackboneConfig& config, Rng& rng, Init init = Init::torch_default);
    // floats [n x D] -> features Var [n x F]
    Var forward(const Matrix& inputs);
    // tokens [n*L] (row-major, L per sample) -> features Var [n x F]
    Var forward(const IdList& tokens);
    const BackboneConfig& config() const { return config_; }
    Index feature_dim() const;

private:
    BackboneConfig config_;
    std::shared_ptr<Embedding> embed_;  // token inputs only
    std::shared_ptr<Sequential> mlp_;
};

namespace detail {
class FrozenGraph;  // an imported layer list (detail/layers.hpp)
}

// A frozen, read-only backbone; share one between threads and Personalizers. One of three
// kinds: an MLP built here (freeze), a layer list imported from ONNX (load of a graph file:
// tools/onnx_import.py), or features computed outside (external).
class Backbone {
public:
    // Copies the weights of a (pre)trained net; nothing of the net is referenced afterwards.
    static std::shared_ptr<const Backbone> freeze(const BackboneNet& net);
    // A file written by save(): the checkpoint envelope around architecture + weights.
    // Throws CorruptData for a corrupt or hostile file, StorageError if unreadable.
    static std::shared_ptr<const Backbone> load(const std::string& path);
    // Features an app computes in another engine, keyed by `identity` (1..128 printable
    // characters; the digest): a new identity is a backbone upgrade.
    // Without `compute`, samples ARE feature vectors (input float_vector(F), features() the
    // identity); an upgrade then re-keys the stored vectors, so an app whose features change
    // must forget and re-add its samples. With `compute` (the app's engine as a function), a
    // sample is the app's raw input (`input`), kept in the store; features() calls compute
    // ([n x F], checked) and an upgrade recomputes every stored sample from its raw input.
    // NOTE: compute must be thread-safe and batch-invariant (a sample's features the same
    // whatever batch it comes in): exact unlearning and cached features rely on it.
    using FeatureFunction = std::function<Matrix(std::span<const Sample>)>;
    static std::shared_ptr<const Backbone> external(Index feature_dim, const std::string& identity,
                                                    InputSpec input = {},
                                                    FeatureFunction compute = {});
    // Throws InvalidArgument for an external backbone (it has no file).
    void save(const std::string& path) const;

    // floats [n x D] -> [n x F]. Throws InvalidArgument for a token backbone, a wrong width,
    // or NaN/Inf (naming the row and column). Batch-invariant: a sample's features are the
    // same bits whatever batch it comes in (close to, not bitwise, BackboneNet::forward).
    Matrix features(const Matrix& inputs) const;
    // tokens [n*L] -> [n x F]. Throws InvalidArgument for ids outside [0, vocab).
    Matrix features(const IdList& tokens) const;
    // Features of stored samples (whichever input kind the backbone takes).
    Matrix features(std::span<const Sample> samples) const;

    // The MLP's architecture. Imported and external backbones: `input` (an image is a float
    // vector of C*H*W values, CHW order), `vocab` and `embed_dim` of token inputs, and
    // hidden = {F}; their layers are in the file.
    const BackboneConfig& config() const { return net_ ? net_->config() : config_; }
    Index feature_dim() const { return config().hidden.back(); }
    // Content digest of architecture + weights (16 hex digits, FNV-1a 64 of the file bytes):
    // cached features are keyed by it.
    const std::string& digest() const { return digest_; }
    // What cached features are keyed by: the digest plus the frozen_dense variant this process
    // computes them with ("6769f7bec7c71457@avx2-fma", "...@generic-x86_64"). The variants
    // differ in the last bits, so a store moved to a CPU that runs the other one recomputes its
    // features instead of mixing two kinds (exact unlearning and determinism rest on them).
    // External backbones: the identity alone (the app's engine computed the features).
    std::string feature_key() const;

    explicit Backbone(std::unique_ptr<BackboneNet> net);  // use freeze() / load()
    // The same with the digest already known (load: the file's bytes).
    Backbone(std::unique_ptr<BackboneNet> net, std::string digest);

private:
    Backbone(std::shared_ptr<const detail::FrozenGraph> graph, BackboneConfig config,
             std::string digest);

    std::unique_ptr<BackboneNet> net_;                  // MLP backbones
    std::shared_ptr<const detail::FrozenGraph> graph_;  // imported backbones
    FeatureFunction compute_;                           // external backbones with an engine
    BackboneConfig config_;                             // imported and external backbones
    std::string digest_;
};

// ---------------------------------------------------------------------------------------
// Heads (head.cpp)

struct HeadSpec {
    enum class Kind { linear, mlp, prototype, regression };
    Kind kind = Kind::linear;
    std::int64_t outputs = 0;     // classes, or regression target width
    std::vector<Index> hidden{};  // mlp only
    // prototype only, two kinds; both on L2-normalized features f, mu_c the class mean of the
    // normalized features, a class getting its prototype the first time it is trained on
    // (train() with epochs = 0 enrolls without a gradient step):
    //   prototype(C, T)         Euclidean: logits = (2 mu_c . f - |mu_c|^2) / T, i.e.
    //                           (1 - |f - mu_c|^2) / T: nearest class mean at step 0.
    //   cosine_prototype(C, T)  cosine: logits = (mu_c / |mu_c|) . f / T = cos(f, mu_c) / T
    //                           (bias 0): the class mean with the largest cosine at step 0.
    // Unenrolled classes have zero weights and bias -1/T. Too small a temperature fine-tunes
    // badly.
    float temperature = 0.1f;
    bool normalize = false;  // L2-normalize features before the head (prototype: true)
    bool cosine = false;     // prototype only: cosine prototypes (cosine_prototype), see above

    static HeadSpec linear(std::int64_t classes) {
        return {Kind::linear, classes, {}, 0.1f, false};
    }
    static HeadSpec mlp(std::vector<Index> hidden, std::int64_t classes) {
        return {Kind::mlp, classes, std::move(hidden), 0.1f, false};
    }
    static HeadSpec prototype(std::int64_t classes, float temperature = 0.1f) {
        return {Kind::prototype, classes, {}, temperature, true};
    }
    static HeadSpec regression(std::int64_t width) {
        return {Kind::regression, width, {}, 0.1f, false};
    }
    static HeadSpec cosine_prototype(std::int64_t classes, float temperature = 0.1f) {
        return {Kind::prototype, classes, {}, temperature, true, true};
    }
    bool classifies() const { return kind != Kind::regression; }
    // The text the store records for a spec (meta personalize.head and the head checkpoint's
    // "head" attr), readable in error messages: "linear outputs=10 hidden=[] temperature=0.1
    // normalize=0" (" cosine=1" for cosine prototypes). parse(to_string()) gives the spec back,
    // bit for bit; parse throws CorruptData naming the text for anything else.
    std::string to_string() const;
    static HeadSpec parse(std::string_view text);
};

// ---------------------------------------------------------------------------------------
// Training

// Which stored samples a train() call learns from.
struct Replay {
    enum class Kind {
        all,             // everything stored (except the validation split)
        reservoir,       // new since the last committed training + `size` uniformly drawn older
        class_balanced,  // new + up to `size` older samples per class
        none,            // only what is new since the last committed training (no replay:
                         // old classes are forgotten within an update; examples/replay)
    };
    Kind kind = Kind::all;
    std::int64_t size = 0;

    static Replay all() { return {}; }
    static Replay reservoir(std::int64_t size) { return {Kind::reservoir, size}; }
    static Replay class_balanced(std::int64_t per_class) {
        return {Kind::class_balanced, per_class};
    }
    static Replay none() { return {Kind::none, 0}; }
};

// The operating point of the "unknown" decision, calibrated by train() on the user's held-out
// samples. A score is the cosine between an input's features and a class prototype (the mean
// direction of the class's trained-on features); genuine scores are each validation sample's
// against its own class, impostor scores against every other class. An input is accepted for a
// class when its score reaches the threshold; predict answers unknown when its best class is
// not accepted.
struct Unknown {
    enum class Kind {
        off,          // no calibration: predict never answers unknown, verify is refused
        target_far,   // the lowest threshold whose measured false-accept rate is <= far
        equal_error,  // where the measured false-accept and false-reject rates meet
    };
    Kind kind = Kind::off;
    double far = 0.0;  // target_far: in (0, 1)
    // A background set the app ships (optional): inputs of no enrolled class (other people,
    // noise, what the app will never name), in the backbone's input kind; labels are ignored.
    // Each one is a stranger: its best score over the classes is one more impostor score next
    // to the held-out samples' (strangers the user's own data cannot provide). Not stored: pass it
    // to every train() that calibrates. A bad sample is an InvalidArgument naming it, before
    // anything runs.
    std::vector<Sample> background{};

    static Unknown off() { return {}; }
    static Unknown at_far(double far) { return {Kind::target_far, far}; }
    static Unknown at_equal_error() { return {Kind::equal_error, 0.0}; }
};

// A calibrated threshold and what it measured on the held-out samples.
struct Calibration {
    double threshold = 0.0;
    double far = 0.0;  // impostor scores accepted at the threshold
    double frr = 0.0;  // genuine scores rejected at the threshold
    double eer = 0.0;  // equal error rate of these scores (where FAR and FRR meet)
    std::int64_t genuine = 0;
    std::int64_t impostor = 0;
};

struct Progress {
    std::int64_t step = 0;
    int epoch = 0;
    float loss = 0.0f;  // mean loss of the last batch
    std::chrono::milliseconds elapsed{0};
};

// TrainOptions::optimizer_start.
enum class OptimizerStart { continue_stored, fresh };

// The lr of TrainOptions::optimizer (Adam, AdamW or SGD) that asks train() to choose it from
// the head (the default; TrainOptions::optimizer says the rule). Any other lr is used as given
// (a negative one is refused). The lowest float: no lr an app could mean.
inline constexpr float auto_lr = std::numeric_limits<float>::lowest();

struct TrainOptions {
    // 0: no gradient step. A prototype head still enrolls the classes it has not seen from
    // their stored samples (zero-step enrollment) and the run is decided as any update.
    // Default 10: a 5-shot enrollment with replay (examples/enroll) gained about 2 points (all
    // classes) over 5 epochs; a keyboard's update over ~20,000 samples keeps its perplexity.
    int epochs = 10;
    std::int64_t max_steps = 0;             // 0 = no limit
    std::chrono::milliseconds deadline{0};  // 0 = none; checked between steps
    std::int64_t batch = 32;
    // lr = auto_lr (the default): train() chooses the step from the head (measured on the
    // enrollment, incremental and keyboard examples; each has --defaults to rerun it):
    //   Adam/AdamW, a classifier with at most 100 outputs (or regression): lr 1e-3, times
    //       clamp(3 / T, 1, 100) for a prototype head (its weights start at 2 mu / T on unit
    //       features: at T = 0.1, 3e-2 enrolled 5 shots 2 points better than 3e-3);
    //   Adam/AdamW, a wider classifier (a keyboard's vocabulary): SGD with momentum 0.9 at lr
    //       5e-3 instead. Adam moves every weight by about lr per step whatever its gradient,
    //       the rarest word's as much as the most frequent one's: on a 3,000-word head 1e-3
    //       raised general-text perplexity 43% and even 1e-4 learned the user's text 25% worse
    //       than SGD;
    //   SGD: lr 1e-2 (5e-3 on a wider classifier), the momentum as given.
    // An explicit lr (>= 0) is used as given, whatever the head.
    OptimizerSpec optimizer = AdamOptions{.lr = auto_lr};
    ScheduleSpec schedule = ConstantSchedule{};
    float clip_norm = 0.0f;  // 0 = no clipping
    std::uint64_t seed = 0;  // shuffling and replay draws
    Replay replay = Replay::all();
    float base_pull = 0.0f;  // strength of an L2 pull toward the base head's weights
    // Class-balanced loss weights (inverse class frequency of the training set): what makes a
    // handful of new shots count next to many stored old samples. Unset (the default): on for
    // a classifier with at most 100 outputs, off for wider ones. Measured on examples/enroll
    // (10 classes, 5 shots + 200 replayed): off loses 23 (linear) and 35 (prototype) points on
    // the new classes. Off for wide heads: a vocabulary's words are Zipf-distributed by nature,
    // and inverse-frequency weights would trade the frequent words for the rare ones.
    std::optional<bool> balance_classes{};
    float label_smoothing = 0.0f;
    // Validation guard. Classification: the new head is rolled back if its class-balanced
    // validation accuracy is lower than the current head's by more than this AND its
    // validation loss is not lower. Regression: if its validation loss is higher by more than
    // this fraction. NaN/Inf losses always roll back.
    float tolerance = 0.02f;
    std::function<void(const Progress&)> on_progress{};  // called after every step
    const std::atomic<bool>* stop = nullptr;             // set to true to cancel between steps
    // Calibrates "unknown" for the committed head (Calibration); InvalidArgument for a target
    // FAR outside (0, 1).
    Unknown unknown = Unknown::off();
    // Per-batch mix, so replay does not drown a few new shots: every batch holds at least this
    // share of samples new since the last committed training (they are repeated within the
    // epoch as needed; the epoch is one pass over the replayed samples). 0: the new samples are
    // shuffled in with the replay once per epoch. In [0, 1); InvalidArgument otherwise.
    // NOTE: class-balanced weights (balance_classes) stay those of the distinct samples, so
    // the repeats also weigh the new classes more. Default 0.05 by measurement (examples/enroll,
    // 1 shot + reservoir 200, linear head: new classes 24.5% -> 39.0%, all 60.8% -> 60.8%;
    // prototype head 9.3% -> 54.8%; 5 and 20 shots reach the share alone, unchanged); counting
    // the repeats in the weights instead kept the new classes below zero-training prototypes.
    float new_share = 0.05f;
    // How an incremental update starts its optimizer (a retrain from base always starts fresh):
    //   continue_stored (default)  the optimizer state saved with the committed head (Adam's
    //       moments and step count t, SGD's momentum) is continued when the optimizer kind and
    //       its buffers match, else it starts fresh; lr is always this run's option. Default
    //       because a sequence of small updates then behaves like one longer run: Adam's bias
    //       correction is not redone, so the first steps of every update are not full-size
    //       steps on a handful of new samples.
    //   fresh  zero moments and t = 0: every update is a run of its own from the committed
    //       head; the saved state after it counts only its own steps.
    OptimizerStart optimizer_start = OptimizerStart::continue_stored;
    // Retrain from the base head on what is stored (every sample counts as new, replay does not
    // apply), as forget() and backbone upgrades do: to drop what a series of updates drifted
    // into. The result replaces the committed head (no validation roll-back, as for forget).
    bool from_base = false;
    // Resumable runs. n > 0: after every n-th step and when cancelled, the run's state (head,
    // optimizer, schedule, shuffle RNG, the epoch's order and position in it) is written to the
    // store (each write replaces the last; costs about 3x the head's size with Adam). A later
    // train() with the same trajectory options (all but the budgets, tolerance and callbacks)
    // on the same committed head and stored samples continues from it, also after a crash or
    // a reopen, and ends with the same head, bit for bit, as the run that was not interrupted
    // (TrainReport::resumed). A sample added or removed in between, other options, or a corrupt
    // record: the run starts from the beginning. Any run that ends (commit, roll back, nothing
    // to do) and every forget() drop the record. 0 = nothing written (an existing record for
    // this run is still continued).
    std::int64_t resume_every = 0;
};

struct Metrics {
    double loss = 0.0;
    double accuracy = 0.0;  // classification only, in [0, 1]
    // Classification only: the mean over the classes present of each class's accuracy (recall).
    // Unlike `accuracy`, a class with a handful of samples counts as much as a large one.
    double balanced_accuracy = 0.0;
    std::int64_t samples = 0;
    // evaluate(samples, k) only (classification; empty or 0 otherwise, and not in the JSON):
    int top_k = 0;                              // the k asked for
    double top_k_accuracy = 0.0;                // label among the k highest logits (ties: lower id)
    std::vector<std::int64_t> class_samples{};  // [C] samples of each class evaluated
    std::vector<double> class_accuracy{};       // [C] top-1 accuracy per class; NaN: no sample
    // Classification: the classes present among the samples (balanced_accuracy's divisor).
    // Not in the JSON.
    std::int64_t classes = 0;
};

struct TrainReport {
    enum class Outcome { committed, rolled_back, nothing_to_do, cancelled };
    Outcome outcome = Outcome::nothing_to_do;
    std::string reason;  // why it stopped / why it was rolled back, in words
    std::int64_t steps = 0;
    int epochs = 0;
    std::int64_t train_samples = 0;
    std::int64_t validation_samples = 0;
    std::vector<float> loss_curve;         // mean loss per epoch
    std::optional<Metrics> before, after;  // on the validation split
    std::chrono::milliseconds duration{0};
    bool retrained_from_base = false;  // forget() / backbone upgrade
    // forget() only: the ids given that were not stored, in the order given. A property of the
    // call, not of the training run: not part of the JSON.
    std::vector<std::int64_t> not_found{};
    // With TrainOptions::unknown: the calibration of the committed head, or, when there was too
    // little held-out data to measure the asked operating point, nothing and a note saying so
    // (the head then answers no unknown).
    std::optional<Calibration> calibration{};
    std::string calibration_note{};
    // The run continued an interrupted one (TrainOptions::resume_every); steps, epochs and the
    // loss curve count the whole run. Not part of the JSON.
    bool resumed = false;
    // One JSON object (the training log's and a checkpoint's metrics format); from_json reads
    // what to_json wrote (NaN/Inf are written as null and read back as NaN) and throws
    // CorruptData naming the field on anything else.
    std::string to_json() const;
    static TrainReport from_json(std::string_view json);
};

struct Prediction {
    std::int32_t label = 0;
    float probability = 0.0f;
    // A calibrated head (TrainReport::calibration): the best class's score (Unknown) is below
    // the threshold; label is then unknown_label, probability the best class's, and predict
    // returns this one entry.
    bool unknown = false;
    static constexpr std::int32_t unknown_label = -1;
};

// A 1:1 check of an input against one class (Personalizer::verify).
struct Verification {
    float score = 0.0f;      // cosine to the class prototype, in [-1, 1]
    float threshold = 0.0f;  // the calibrated threshold
    bool accept = false;     // score >= threshold
};

// Weights an app ships for its head (a keyboard's output layer, a vendor's base classes with
// extra zero columns for classes it will enroll). Tensor layout for a head over F features with
// C outputs, in this order (Head::tensors(); what `edgetune export` and `edgetune import --head`
// write):
//   linear(C), prototype(C), regression(C):  "net.0.weight" [F x C] (column c is output c)
//                                             "net.0.bias"   [1 x C]
//   mlp({h1, ..., hk}, C):                    "net.<2i>.weight" [in_i x out_i] and
//                                             "net.<2i>.bias" [1 x out_i] for i = 0 .. k,
//                                             in_0 = F, out_k = C (activations in between)
// outputs = features * weight + bias (prototype heads: of L2-normalized features).
struct HeadWeights {
    std::vector<std::pair<std::string, Matrix>> tensors{};
    std::string backbone_digest{};  // the backbone it was trained on; empty: not checked
    // A head checkpoint file (kind "head", storage/FORMAT.md), e.g. from `edgetune import
    // --head` or `edgetune export`. Throws StorageError if unreadable, CorruptData if corrupt.
    static HeadWeights load(const std::string& path);
};

struct PersonalizerOptions {
    std::shared_ptr<const Backbone> backbone{};
    HeadSpec head{};
    Retention retention = Retention::unlimited();
    Durability durability = Durability::normal;
    std::uint64_t seed = 0;  // head initialization and the validation split
    // Held out of each class for the validation guard. A class is split only when it has at
    // least 5 samples and fraction x samples >= 2 (at 0.2: 10 samples or more), so that a
    // few-shot class keeps all its shots for training; such a class is judged on its training
    // shots instead (TrainReport::reason says so), together with the split's classes (a
    // 5-shot enrollment with replay is then committed, not rolled back for what the old classes
    // lose: examples/enroll --defaults). Split from 5 samples on, a 5-shot class gave a fifth of
    // its shots to a validation that one sample decides.
    float validation_fraction = 0.2f;
    // The head to start from instead of a seeded random one: recorded as the `base` checkpoint
    // when the database is created (and when a backbone upgrade makes a new base), so forget()
    // and upgrades retrain from it. Checked at open() against the head spec (names, shapes), the
    // backbone (feature width, digest when given) and for NaN/Inf: InvalidArgument otherwise.
    // A prototype head counts a class whose weight column is non-zero as enrolled.
    // Ignored when the database already has a base for this backbone.
    std::optional<HeadWeights> initial_head{};
    // A store recorded with another backbone digest is refused (InvalidArgument naming both,
    // nothing written) unless this is set: then its features are recomputed from the stored
    // raw inputs and the head retrained from a fresh base. The previous backbone's trained
    // checkpoint and features stay in the store until that retrain commits.
    bool upgrade_backbone = false;
    // The retrain of such an upgrade, run by open(). It must pass the validation guard against
    // the previous backbone's head (on the same validation samples), or the upgrade is undone
    // and open() throws InvalidArgument: train it as well as the head it replaces.
    TrainOptions upgrade_training{};
    // Opens the store read-only: nothing is ever written (no feature filling, no owed retrain,
    // no upgrade; add/train/forget throw StorageError). The store must exist.
    bool read_only = false;
};

class BackgroundTraining;

class Personalizer {
public:
    // Opens (or creates) the database. First open: records the backbone digest and head spec
    // and saves a `base` checkpoint of the initial head. Later opens resume from the latest
    // checkpoint; a different backbone digest is refused unless options.upgrade_backbone, which
    // recomputes features from the stored raw inputs and retrains the head from a fresh base
    // (report in last_upgrade()).
    static std::unique_ptr<Personalizer> open(const std::string& db_path,
                                              const PersonalizerOptions& options);
    ~Personalizer();

    // Validates, stores and caches backbone features; all or nothing. Returns ids.
    std::int64_t add(const Sample& sample);
    std::vector<std::int64_t> add(std::span<const Sample> samples);
    // The same with an idempotency key (SampleStore::add_batch; "" = none): a retry with the
    // same key after an error stores nothing twice and returns the first call's ids. A
    // StorageError saying "outcome unknown" (an I/O error or failed fsync while committing)
    // may have stored the samples: retry with the same key. Other errors stored nothing.
    std::vector<std::int64_t> add(std::span<const Sample> samples,
                                  std::string_view idempotency_key);

    // Top-k labels with probabilities, best first, from the last committed head; a calibrated
    // head answers one `unknown` Prediction when the best class does not reach its threshold.
    std::vector<Prediction> predict(const Sample& input, int k = 1) const;
    // Score and accept/reject of `input` as class `label`, at the committed head's calibrated
    // threshold. Throws InvalidArgument for an unknown label or an uncalibrated head.
    Verification verify(const Sample& input, std::int32_t label) const;
    // Regression heads: the predicted target [W].
    std::vector<float> regress(const Sample& input) const;
    // Loss and accuracy of the committed head on the given (labelled) samples.
    Metrics evaluate(std::span<const Sample> samples) const;
    // The same plus top-k accuracy and per-class accuracy (Metrics::top_k ..), in one pass.
    // Throws InvalidArgument for k <= 0 or a regression head.
    Metrics evaluate(std::span<const Sample> samples, int k) const;

    TrainReport train(const TrainOptions& options);
    // Starts train() on a worker thread; add/predict stay usable meanwhile.
    std::unique_ptr<BackgroundTraining> train_async(TrainOptions options);

    // Deletes the samples and their features; if any was used to train the current head,
    // retrains from the base checkpoint on what remains (exact unlearning) with `retrain`.
    // Ids that are not stored are skipped and listed in the report's not_found.
    TrainReport forget(std::span<const std::int64_t> ids, const TrainOptions& retrain = {});

    // --- classes (classification heads; InvalidArgument for a regression head) ---
    // Labels are dense, 0 .. C-1 (SampleStore::classes); HeadSpec's outputs are the initial C.
    // Adds a class named `name` and returns its label; the served head gets a column that is
    // never predicted until the class is trained on, when it starts at the class's prototype,
    // scaled like the trained columns (linear and prototype heads; mlp heads: their last layer's
    // column, from the class mean of its input, the hidden activations).
    // Throws InvalidArgument for an empty, bad or taken name; nothing changes then.
    std::int32_t add_class(std::string_view name);
    void rename_class(std::int32_t label, std::string_view name);
    std::vector<ClassInfo> classes() const;
    // Exact unlearning of a whole class: its samples and features are erased (durably, as
    // forget), the labels above it shift down by one, and the head is retrained from the base
    // without its column. A class added at run time, then removed, leaves the same head bytes
    // as never adding it. Throws InvalidArgument for an unknown label or the last class.
    TrainReport remove_class(std::int32_t label, const TrainOptions& retrain = {});

    std::int64_t sample_count() const;
    std::vector<std::int64_t> count_per_label() const;
    std::optional<TrainReport> last_upgrade() const;
    // The committed head's parameters, in stable order (for export and tests).
    std::vector<std::pair<std::string, Matrix>> head_parameters() const;
    // The committed head as a head checkpoint (storage/FORMAT.md): what `edgetune export` writes.
    std::vector<std::uint8_t> head_checkpoint() const;
    // The store, for apps that want to inspect or manage samples directly. Not thread-safe:
    // do not use while a background training runs.
    SampleStore& store();

    struct Impl;

private:
    explicit Personalizer(std::unique_ptr<Impl> impl);
    std::unique_ptr<Impl> impl_;
};

// A training run on a worker thread. Destroying it cancels and joins.
// NOTE: it must not outlive the Personalizer that started it (the worker uses it).
class BackgroundTraining {
public:
    ~BackgroundTraining();
    // The latest progress (thread-safe).
    Progress progress() const;
    // Asks the run to stop between steps; the last committed checkpoint stays intact.
    void cancel();
    // Blocks until the run ends; rethrows its exception if it threw.
    TrainReport wait();
    bool done() const;

    struct State;
    explicit BackgroundTraining(std::shared_ptr<State> state);

private:
    std::shared_ptr<State> state_;
};

}  // namespace edgetune
