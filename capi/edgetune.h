/* edgetune.h — the C ABI of edgetune (C11), for JNI, Swift, Dart FFI, Python ctypes.
 *
 * It wraps the C++ Personalizer (personalize/personalize.hpp): a frozen backbone loaded from a
 * file, a small head trained on the device from samples kept in one SQLite file.
 *
 *   et_backbone* bb; et_personalizer* p; et_error* err = NULL;
 *   if (et_backbone_load("backbone.etb", &bb, &err) != ET_OK) { ...; et_error_free(err); }
 *   et_open_options o; et_open_options_default(&o, sizeof o); o.classes = 10;
 *   et_open("user.db", bb, &o, &p, &err);
 *   et_add_floats(p, x, 1, width, &label, &id, &err);
 *   et_train(p, NULL, &report, &err);              // NULL options: et_train_options_default
 *   et_predict_floats(p, x, width, 3, top, 3, &n, &err);
 *   et_close(p); et_backbone_free(bb);
 *
 * Conventions (those of TFLite's c_api.h and ONNX Runtime's C API):
 *   - One prefix, et_ / ET_. Opaque handles with exactly one create and one free each;
 *     every free function accepts NULL (no-op).
 *   - Every fallible call returns an et_status. Its last parameter `error` may be NULL; if not,
 *     *error is set to NULL on success and to a new error object (status + the engine's message)
 *     on failure, which the caller frees with et_error_free(). There is no per-handle "last
 *     error", so errors of concurrent calls never mix.
 *   - Options structs begin with `struct_size` and are filled by their *_default(options,
 *     sizeof *options) function, then passed by pointer. Fields are only ever appended: the
 *     library reads only the first struct_size bytes and uses defaults for fields beyond them,
 *     so a program built against an older header keeps working. Output structs (et_info,
 *     et_train_report, et_progress) work the same way: the caller sets struct_size (the
 *     *_default functions do) and the library writes no byte beyond it.
 *   - Buffers are the caller's. A call that fills an array takes its capacity and reports the
 *     count needed: pass NULL with capacity 0 to ask for the size (ET_OK); a buffer that is too
 *     small gives ET_ERR_BUFFER_TOO_SMALL, the count needed in *count, and writes nothing.
 *   - Long calls take a progress callback with user_data; a non-zero return cancels.
 *   - No C++ exception crosses this boundary: each maps to a status and a message.
 *   - Handles are checked: a NULL, freed or wrong-kind handle gives ET_ERR_BAD_HANDLE (a freed
 *     handle is recognized until its address is reused by a new handle of the same kind).
 *
 * Thread safety: stated per function. "Any thread" means concurrent calls on the same handle
 * are safe. No call may race with the free/close of a handle it uses.
 */
#ifndef EDGETUNE_H
#define EDGETUNE_H

#include <stddef.h>
#include <stdint.h>

#if defined(__GNUC__) || defined(__clang__)
#define ET_API __attribute__((visibility("default")))
#else
#define ET_API
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* The ABI this header declares. Bumped when a function or struct field is added; an ABI
 * break (never intended) would change the library's soname. */
#define ET_ABI_VERSION 1

/* ------------------------------------------------------------------------------------------
 * Status codes and error objects */

typedef enum et_status {
    ET_OK = 0,
    ET_ERR_INVALID_ARGUMENT = 1, /* NULL pointer, wrong width, NaN/Inf, label out of range... */
    ET_ERR_BUFFER_TOO_SMALL = 2, /* the count needed is in *count */
    ET_ERR_BAD_HANDLE = 3,       /* NULL, freed, or another kind of handle */
    ET_ERR_CORRUPT_DATA = 4,     /* a backbone file or stored bytes fail validation */
    ET_ERR_STORAGE = 5,          /* SQLite or the file system refused (full disk, read-only) */
    ET_ERR_DIVERGED = 6,         /* training produced a non-finite loss */
    ET_ERR_CANCELLED = 7,        /* a callback or et_training_cancel() stopped the call */
    ET_ERR_BUSY = 8,             /* e.g. a second et_training_wait() on the same run */
    ET_ERR_OUT_OF_MEMORY = 9,
    ET_ERR_INTERNAL = 10 /* any other failure inside the engine (a bug: please report) */
} et_status;

typedef struct et_error et_error;

/* The status of the failed call. Any thread. A NULL or invalid error gives ET_ERR_BAD_HANDLE. */
ET_API et_status et_error_code(const et_error* error);
/* The engine's message, e.g. "[et_add_floats] width 3 does not match the backbone's input
 * width 4". Owned by the error object: valid until et_error_free(). Never NULL. Any thread. */
ET_API const char* et_error_message(const et_error* error);
/* Frees an error object; NULL (and an already freed error) is a no-op. Any thread. */
ET_API void et_error_free(et_error* error);
/* A constant name for a status, e.g. "ET_ERR_STORAGE". Never NULL. Any thread. */
ET_API const char* et_status_name(et_status status);

/* ------------------------------------------------------------------------------------------
 * Versions (any thread) */

/* The library's version, "MAJOR.MINOR.PATCH" (static storage). */
ET_API const char* et_version(void);
/* The ABI the library implements (ET_ABI_VERSION of the header it was built with). A program
 * may call any function of an ABI version <= this value. */
ET_API uint32_t et_abi_version(void);

/* ------------------------------------------------------------------------------------------
 * Backbone: a frozen, read-only network shared by any number of personalizers and threads. */

typedef struct et_backbone et_backbone;

/* Loads an edgetune backbone file (.etb). ET_ERR_CORRUPT_DATA for a corrupt file,
 * ET_ERR_STORAGE for an unreadable one. Any thread. */
ET_API et_status et_backbone_load(const char* path, et_backbone** backbone, et_error** error);
/* NULL is a no-op. Personalizers opened with it keep their own reference, so it may be freed
 * while they are open. Not concurrently with other calls on the same backbone. */
ET_API void et_backbone_free(et_backbone* backbone);

/* ------------------------------------------------------------------------------------------
 * Opening a personalized model (one SQLite file per user and model) */

typedef enum et_head_kind {
    ET_HEAD_LINEAR = 0,
    ET_HEAD_MLP = 1,       /* hidden widths in et_open_options.hidden */
    ET_HEAD_PROTOTYPE = 2, /* nearest-class-mean init on L2-normalized features */
    /* 3, ET_HEAD_REGRESSION, is reserved: regression heads will come with an et_regress_* call. */
    ET_HEAD_COSINE_PROTOTYPE = 4 /* logits cos(f, class mean) / temperature (personalize.hpp) */
} et_head_kind;

typedef enum et_durability {
    ET_DURABILITY_NORMAL = 0, /* survives any app crash; a power cut may lose the last commits */
    ET_DURABILITY_FULL = 1    /* every commit synced to the disk (F_FULLFSYNC on Apple) */
} et_durability;

typedef struct et_open_options {
    size_t struct_size;
    int32_t head;              /* et_head_kind; default ET_HEAD_LINEAR */
    int64_t classes;           /* > 0; no default (0) */
    const int64_t* hidden;     /* ET_HEAD_MLP: hidden_count layer widths (copied); else NULL */
    size_t hidden_count;       /* default 0 */
    float temperature;         /* ET_HEAD_PROTOTYPE; default 0.1 */
    int32_t durability;        /* et_durability; default ET_DURABILITY_NORMAL */
    uint64_t seed;             /* head init and the validation split; default 0 */
    float validation_fraction; /* of each class; default 0.2 */
    /* 1: a database recorded with another backbone recomputes its features from the stored raw
     * inputs and retrains from a fresh base (the old head stays until that commits); 0 (the
     * default): such a database is refused with ET_ERR_INVALID_ARGUMENT, nothing changed. */
    int32_t upgrade_backbone;
    /* A head file to start from instead of a seeded random head (what `edgetune import --head`
     * or `edgetune export` writes; layout in personalize.hpp's HeadWeights), recorded as the
     * base when the database is created. NULL (the default): seeded random. */
    const char* initial_head_path;
    /* appended fields go here */
} et_open_options;

/* Fills *options with the defaults; size is sizeof *options as the caller compiled it. Any
 * thread. Returns ET_ERR_INVALID_ARGUMENT for NULL or a size smaller than ABI 1's struct. */
ET_API et_status et_open_options_default(et_open_options* options, size_t size);

typedef struct et_personalizer et_personalizer;

/* Opens or creates the database at `path` (created 0600). First open records the backbone and
 * head; later opens resume from the last committed head (a different backbone only with
 * options->upgrade_backbone). options is required (at least .classes); reopening with another
 * head than the file was created with is ET_ERR_INVALID_ARGUMENT. Any thread. */
ET_API et_status et_open(const char* path, const et_backbone* backbone,
                         const et_open_options* options, et_personalizer** personalizer,
                         et_error** error);
/* Closes; NULL is a no-op. A background training still running is cancelled and joined first
 * (its et_training handle stays valid: et_training_wait reports the cancellation). Must not
 * race with any other call on the personalizer. */
ET_API void et_close(et_personalizer* personalizer);

/* ------------------------------------------------------------------------------------------
 * Samples (any thread, also while a background training runs) */

/* Stores `rows` samples of `width` floats each (row-major in data), labels[i] in [0, classes),
 * all or nothing. ids (may be NULL) receives rows ids. width must be the backbone's input
 * width; NaN/Inf are rejected naming the row and column. */
ET_API et_status et_add_floats(et_personalizer* personalizer, const float* data, size_t rows,
                               size_t width, const int32_t* labels, int64_t* ids, et_error** error);
/* The same for a token backbone: rows sequences of `length` token ids in [0, vocab). */
ET_API et_status et_add_tokens(et_personalizer* personalizer, const int32_t* tokens, size_t rows,
                               size_t length, const int32_t* labels, int64_t* ids,
                               et_error** error);

/* Deletes samples and, if any trained the current head, retrains from the base head on what
 * remains (exact unlearning). retrain may be NULL (defaults); report may be NULL. Any thread
 * (waits for a running training). */
typedef struct et_train_options et_train_options;
typedef struct et_train_report et_train_report;
ET_API et_status et_forget(et_personalizer* personalizer, const int64_t* ids, size_t count,
                           const et_train_options* retrain, et_train_report* report,
                           et_error** error);

/* ------------------------------------------------------------------------------------------
 * Prediction (any thread; serves the last committed head, also during a training) */

/* One entry of a top-k answer. Fixed layout (an array element): never extended. */
typedef struct et_prediction {
    int32_t label;
    float probability;
} et_prediction;

/* Top-k labels, best first, into out[0..*count). k > 0; *count = min(k, classes). out NULL
 * with capacity 0 asks for *count only. */
ET_API et_status et_predict_floats(const et_personalizer* personalizer, const float* input,
                                   size_t width, int32_t k, et_prediction* out, size_t capacity,
                                   size_t* count, et_error** error);
ET_API et_status et_predict_tokens(const et_personalizer* personalizer, const int32_t* tokens,
                                   size_t length, int32_t k, et_prediction* out, size_t capacity,
                                   size_t* count, et_error** error);

/* ------------------------------------------------------------------------------------------
 * Training */

typedef struct et_progress {
    size_t struct_size;
    int64_t step;       /* the head's optimizer steps so far (over all runs) */
    int32_t epoch;      /* 1-based epoch of that step */
    float loss;         /* mean loss of the last batch */
    int64_t elapsed_ms; /* since the run started */
} et_progress;

/* Called after every training step, on the thread that trains (the worker thread for
 * et_train_async). A non-zero return cancels: the run stops before its next step and the last
 * committed head is kept. It must not call et_close on the personalizer. */
typedef int (*et_progress_fn)(const et_progress* progress, void* user_data);

typedef enum et_optimizer {
    ET_OPTIMIZER_ADAM = 0,
    ET_OPTIMIZER_ADAMW = 1,
    ET_OPTIMIZER_SGD = 2
} et_optimizer;

typedef enum et_replay {
    ET_REPLAY_ALL = 0,            /* everything stored (except the validation split) */
    ET_REPLAY_RESERVOIR = 1,      /* new samples + replay_size drawn older ones */
    ET_REPLAY_CLASS_BALANCED = 2, /* new samples + up to replay_size older ones per class */
    ET_REPLAY_NONE = 3            /* only what is new (old classes are forgotten) */
} et_replay;

/* et_train_options.learning_rate that lets train() choose the step from the head (the
 * default): TrainOptions::optimizer in personalize.hpp says the rule (an Adam on a head of
 * more than 100 classes becomes SGD with momentum). The lowest float, as edgetune::auto_lr. */
#define ET_AUTO_LR (-3.40282347e+38F)

struct et_train_options {
    size_t struct_size;
    int32_t epochs;             /* default 10 */
    int64_t max_steps;          /* 0 = no limit (default) */
    int64_t deadline_ms;        /* 0 = none (default); checked between steps */
    int64_t batch;              /* default 32 */
    int32_t optimizer;          /* et_optimizer; default ET_OPTIMIZER_ADAM */
    float learning_rate;        /* default ET_AUTO_LR; >= 0: used as given */
    float weight_decay;         /* default 0, for every optimizer */
    float momentum;             /* SGD only; default 0 */
    float clip_norm;            /* 0 = no clipping (default) */
    uint64_t seed;              /* shuffling and replay draws; default 0 */
    int32_t replay;             /* et_replay; default ET_REPLAY_ALL */
    int64_t replay_size;        /* default 0 */
    int32_t balance_classes;    /* > 0: inverse class-frequency loss weights; 0: none; < 0 (the
                                 * default -1): on for heads of at most 100 classes */
    float label_smoothing;      /* default 0 */
    float tolerance;            /* validation guard (personalize.hpp TrainOptions); default 0.02 */
    et_progress_fn on_progress; /* may be NULL (default) */
    void* user_data;            /* passed to on_progress */
    /* ABI 1 ends here: a caller compiled against it passes this size and gets the defaults
     * below (TrainOptions in personalize.hpp says what each one means). */
    int32_t optimizer_start; /* et_optimizer_start; default ET_OPTIMIZER_CONTINUE */
    int32_t from_base;       /* non-zero: retrain from the base head on what is stored; 0 */
    int64_t resume_every;    /* > 0: save a resume record every n steps and on cancel; 0 */
    /* appended fields go here */
};

typedef enum et_optimizer_start {
    ET_OPTIMIZER_CONTINUE = 0, /* continue the stored optimizer state when it fits */
    ET_OPTIMIZER_FRESH = 1     /* zero moments and step count for every update */
} et_optimizer_start;

/* Any thread. ET_ERR_INVALID_ARGUMENT for NULL or a size smaller than ABI 1's struct. */
ET_API et_status et_train_options_default(et_train_options* options, size_t size);

typedef enum et_outcome {
    ET_OUTCOME_COMMITTED = 0,     /* the new head is in use */
    ET_OUTCOME_ROLLED_BACK = 1,   /* the new head was worse on validation; reason says why */
    ET_OUTCOME_NOTHING_TO_DO = 2, /* no new samples */
    ET_OUTCOME_CANCELLED = 3      /* the call returned ET_ERR_CANCELLED */
} et_outcome;

typedef struct et_metrics {
    double loss;
    double accuracy;          /* in [0, 1] */
    double balanced_accuracy; /* mean per-class accuracy */
    int64_t samples;
} et_metrics;

struct et_train_report {
    size_t struct_size;
    int32_t outcome; /* et_outcome */
    int64_t steps;
    int32_t epochs;
    int64_t train_samples;
    int64_t validation_samples;
    int64_t duration_ms;
    int32_t retrained_from_base; /* et_forget / a backbone upgrade */
    int32_t has_metrics;         /* non-zero: before/after hold validation metrics */
    et_metrics before;
    et_metrics after;
    char reason[256]; /* why it stopped or rolled back, NUL-terminated (truncated to fit) */
    /* ABI 1 ends here. */
    int32_t resumed; /* non-zero: the run continued an interrupted one (resume_every) */
    /* appended fields go here */
};

/* Sets report->struct_size = size and zeroes the rest. Any thread. */
ET_API et_status et_train_report_default(et_train_report* report, size_t size);

/* Trains on what is new plus replay; blocks until done. options may be NULL (defaults),
 * report may be NULL. A cancelling callback gives ET_ERR_CANCELLED (the report is filled, the
 * last committed head kept). A rolled-back update is ET_OK with outcome ROLLED_BACK. Any thread
 * (trainings of one personalizer run one after another). */
ET_API et_status et_train(et_personalizer* personalizer, const et_train_options* options,
                          et_train_report* report, et_error** error);

/* What et_evaluate_* measured on the samples given. */
typedef struct et_evaluation {
    size_t struct_size;
    et_metrics metrics;    /* loss, accuracy, balanced accuracy, samples */
    int32_t k;             /* the k asked for */
    double top_k_accuracy; /* the label among the k highest logits, in [0, 1] */
    /* appended fields go here */
} et_evaluation;

/* Sets evaluation->struct_size = size and zeroes the rest. Any thread. */
ET_API et_status et_evaluation_default(et_evaluation* evaluation, size_t size);

/* Evaluates the committed head on `rows` labelled samples (as et_add_floats takes them) in one
 * call: top-k accuracy (k > 0) and, when class_accuracy / class_samples are not NULL, each
 * class's top-1 accuracy (NaN for a class without samples) and sample count into
 * capacity >= classes entries. Nothing is stored. Any thread. */
ET_API et_status et_evaluate_floats(const et_personalizer* personalizer, const float* data,
                                    size_t rows, size_t width, const int32_t* labels, int32_t k,
                                    et_evaluation* evaluation, double* class_accuracy,
                                    int64_t* class_samples, size_t capacity, et_error** error);

typedef struct et_training et_training;

/* Starts et_train on a worker thread; et_add_* and et_predict_* stay usable meanwhile.
 * Any thread. */
ET_API et_status et_train_async(et_personalizer* personalizer, const et_train_options* options,
                                et_training** training, et_error** error);
/* The latest progress. Any thread. */
ET_API et_status et_training_progress(const et_training* training, et_progress* progress,
                                      et_error** error);
/* Asks the run to stop before its next step. Any thread. */
ET_API et_status et_training_cancel(et_training* training, et_error** error);
/* *done = 1 once the run has ended. Any thread. */
ET_API et_status et_training_done(const et_training* training, int32_t* done, et_error** error);
/* Blocks until the run ends and returns what et_train would have. Once per run: a second call
 * gives ET_ERR_BUSY. One thread at a time. */
ET_API et_status et_training_wait(et_training* training, et_train_report* report, et_error** error);
/* Cancels and joins a run still going, then frees; NULL is a no-op. May be called before or
 * after et_close of its personalizer. Not concurrently with other calls on the training. */
ET_API void et_training_free(et_training* training);

/* ------------------------------------------------------------------------------------------
 * Information (any thread) */

typedef enum et_input_kind { ET_INPUT_FLOATS = 0, ET_INPUT_TOKENS = 1 } et_input_kind;

typedef struct et_info {
    size_t struct_size;
    int64_t samples;       /* stored samples */
    int64_t classes;       /* the head's classes */
    int32_t input_kind;    /* et_input_kind of the backbone */
    int64_t input_width;   /* floats per sample, or tokens per sequence */
    int64_t feature_width; /* the backbone's feature width (the head's input) */
    int32_t head;          /* et_head_kind */
    /* appended fields go here (named classes, the open-world operating point) */
} et_info;

/* Sets info->struct_size = size and zeroes the rest, as et_train_report_default. */
ET_API et_status et_info_default(et_info* info, size_t size);
/* Counts and widths of an open personalizer; info->struct_size must be set. */
ET_API et_status et_get_info(const et_personalizer* personalizer, et_info* info, et_error** error);
/* Stored samples per class: counts[c] for c in [0, classes). */
ET_API et_status et_count_per_class(const et_personalizer* personalizer, int64_t* counts,
                                    size_t capacity, size_t* count, et_error** error);

/* ------------------------------------------------------------------------------------------
 * Reserved for later ABI versions (appended below this line, never inserted above):
 *   - named classes: et_class_add / et_class_remove / et_class_name / et_class_list, with
 *     et_info gaining the class-table fields;
 *   - open-world verification: et_verify_floats / et_verify_tokens (calibrated "unknown"
 *     against a target FAR) and an et_calibration output struct;
 *   - regression heads: et_regress_floats / et_regress_tokens. */

/* ------------------------------------------------------------------------------------------
 * Named classes and open-world verification (appended in ABI 1; any thread unless said)
 *
 * Classes are dense labels 0 .. C-1 with unique UTF-8 names (SampleStore::classes); removing
 * class L shifts the labels above it down by one. A prediction's label is -1 when a calibrated
 * head answers "unknown" (et_train_calibrated). */

/* Adds a class named `name` (1 to 256 bytes of UTF-8, unique); *label receives its label. */
ET_API et_status et_class_add(et_personalizer* personalizer, const char* name, int32_t* label,
                              et_error** error);
ET_API et_status et_class_rename(et_personalizer* personalizer, int32_t label, const char* name,
                                 et_error** error);
/* The class's name, NUL-terminated, into out[0..capacity); *length = its length without the
 * NUL. out NULL with capacity 0 asks for *length only. */
ET_API et_status et_class_name(const et_personalizer* personalizer, int32_t label, char* out,
                               size_t capacity, size_t* length, et_error** error);
/* Erases the class's samples (as et_forget) and retrains from the base head without it.
 * retrain and report may be NULL. */
ET_API et_status et_class_remove(et_personalizer* personalizer, int32_t label,
                                 const et_train_options* retrain, et_train_report* report,
                                 et_error** error);

/* The "unknown" calibration of a training (personalize.hpp Unknown, Calibration). */
typedef struct et_calibration {
    size_t struct_size;
    int32_t calibrated; /* 0: too little held-out data; note says why */
    double threshold;   /* cosine-prototype score an accepted input reaches */
    double far, frr, eer;
    int64_t genuine, impostor; /* held-out scores measured */
    char note[256];            /* NUL-terminated */
    /* appended fields go here */
} et_calibration;

/* Sets calibration->struct_size = size and zeroes the rest. */
ET_API et_status et_calibration_default(et_calibration* calibration, size_t size);
/* et_train, and calibrates "unknown" for the committed head at target_far in (0, 1), or at
 * the equal error rate when target_far is -1. calibration may be NULL. */
ET_API et_status et_train_calibrated(et_personalizer* personalizer, const et_train_options* options,
                                     double target_far, et_train_report* report,
                                     et_calibration* calibration, et_error** error);
/* 1:1 check of `input` as class `label` at the calibrated threshold: *score, *accept (0/1);
 * accept may be NULL. ET_ERR_INVALID_ARGUMENT for an uncalibrated head. */
ET_API et_status et_verify_floats(const et_personalizer* personalizer, const float* input,
                                  size_t width, int32_t label, float* score, int32_t* accept,
                                  et_error** error);

#ifdef __cplusplus
}
#endif

#endif /* EDGETUNE_H */
