// edgetune.cpp — the C ABI (edgetune.h) over the C++ Personalizer.
//
// Every exported function is noexcept and runs its body inside guarded(), which maps each C++
// exception to a status and an error object: no exception crosses the boundary. Handles are
// registered in one process-wide table (address -> kind) when created and removed when freed,
// so a NULL, freed or wrong-kind handle is reported without dereferencing it (a magic field
// inside a freed object would itself be a use after free).
// Options and output structs are read and written through their struct_size prefix only
// (read_struct / write_struct), which is what lets fields be appended.
#include "edgetune.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstring>
#include <exception>
#include <mutex>
#include <new>
#include <span>
#include <string>
#include <type_traits>
#include <unordered_map>
#include <vector>

#include "personalize.hpp"

#ifndef EDGETUNE_VERSION
#error "EDGETUNE_VERSION must be defined by the build (capi/meson.build)"
#endif

namespace et = edgetune;

struct et_error {
    et_status code;
    std::string message;
};

struct et_backbone {
    std::shared_ptr<const et::Backbone> backbone;
};

// Invariant: `trainings` lists the runs started on this personalizer that have not been
// joined yet; each of them points back here through et_training::owner.
struct et_personalizer {
    std::unique_ptr<et::Personalizer> engine;
    std::shared_ptr<const et::Backbone> backbone;
    et::HeadSpec head;
    std::atomic<std::int64_t> classes{0};  // live: et_class_add / et_class_remove change it
    std::mutex mu;                         // guards trainings
    std::vector<et_training*> trainings;
};

// A background run. Lock order: et_training::mu before et_personalizer::mu. `run` stays
// valid while a thread joins it with `mu` released (joining == true), so progress, done and
// cancel never wait for the run to end, even when called from the run's own callback.
struct et_training {
    std::mutex mu;
    std::condition_variable joined;
    std::unique_ptr<et::BackgroundTraining> run;  // null once joined
    et_personalizer* owner = nullptr;             // null once joined or closed
    bool joining = false;
    bool waited = false;
    et::Progress last{};  // progress at the join
    et::TrainReport report{};
    std::exception_ptr failure;
};

namespace {

// ---------------------------------------------------------------------------------------
// Handle registry

enum class Kind { error, backbone, personalizer, training };

std::mutex registry_mu;
std::unordered_map<const void*, Kind>& registry() {
    static std::unordered_map<const void*, Kind> handles;
    return handles;
}

void register_handle(const void* h, Kind kind) {
    std::lock_guard lock(registry_mu);
    registry().emplace(h, kind);
}
bool is_live(const void* h, Kind kind) {
    if (h == nullptr) return false;
    std::lock_guard lock(registry_mu);
    auto it = registry().find(h);
    return it != registry().end() && it->second == kind;
}
// True if h was live (and is now forgotten): the caller may delete it.
bool unregister_handle(const void* h, Kind kind) {
    if (h == nullptr) return false;
    std::lock_guard lock(registry_mu);
    auto it = registry().find(h);
    if (it == registry().end() || it->second != kind) return false;
    registry().erase(it);
    return true;
}

// ---------------------------------------------------------------------------------------
// Errors

// Handed out when even the error object cannot be allocated; never registered, never freed.
et_error out_of_memory_error{ET_ERR_OUT_OF_MEMORY, ""};
const char* const out_of_memory_message = "[edgetune] out of memory";

// Thrown inside guarded() bodies for failures the ABI detects itself.
struct AbiError {
    et_status code;
    std::string message;
};

[[noreturn]] void abi_fail(et_status code, const char* op, const std::string& what) {
    throw AbiError{code, std::string("[") + op + "] " + what};
}

void require(bool ok, const char* op, const std::string& what) {
    if (!ok) abi_fail(ET_ERR_INVALID_ARGUMENT, op, what);
}

template <class T>
T* checked(T* h, Kind kind, const char* op, const char* name) {
    if (h == nullptr) abi_fail(ET_ERR_BAD_HANDLE, op, std::string(name) + " is NULL");
    if (!is_live(h, kind))
        abi_fail(ET_ERR_BAD_HANDLE, op,
                 std::string(name) + " is not a live handle of its kind (freed already?)");
    return h;
}

et_status report_error(et_error** error, et_status code, const std::string& message) noexcept {
    if (error == nullptr) return code;
    try {
        auto* e = new et_error{code, message};
        try {
            register_handle(e, Kind::error);
        } catch (...) {
            delete e;
            throw;
        }
        *error = e;
    } catch (...) {
        *error = &out_of_memory_error;
    }
    return code;
}

// Maps the exception being handled to a status (call only inside a catch block).
et_status map_current_exception(et_error** error, const char* op) noexcept {
    try {
        throw;
    } catch (const AbiError& e) {
        return report_error(error, e.code, e.message);
    } catch (const et::InvalidArgument& e) {
        return report_error(error, ET_ERR_INVALID_ARGUMENT, e.what());
    } catch (const et::CorruptData& e) {
        return report_error(error, ET_ERR_CORRUPT_DATA, e.what());
    } catch (const et::StorageError& e) {
        return report_error(error, ET_ERR_STORAGE, e.what());
    } catch (const et::DivergedError& e) {
        return report_error(error, ET_ERR_DIVERGED, e.what());
    } catch (const std::bad_alloc&) {
        return report_error(error, ET_ERR_OUT_OF_MEMORY, std::string("[") + op + "] out of memory");
    } catch (const std::exception& e) {
        return report_error(error, ET_ERR_INTERNAL, std::string("[") + op + "] " + e.what());
    } catch (...) {
        return report_error(error, ET_ERR_INTERNAL, std::string("[") + op + "] unknown exception");
    }
}

// Runs body (returning et_status) with *error cleared first; no exception escapes.
template <class Body>
et_status guarded(const char* op, et_error** error, Body&& body) noexcept {
    if (error != nullptr) *error = nullptr;
    try {
        return body();
    } catch (...) {
        return map_current_exception(error, op);
    }
}

// ---------------------------------------------------------------------------------------
// struct_size-prefixed structs

// The smallest struct_size a caller may pass: the struct as ABI 1 declared it. A caller
// compiled against an older header passes its own, shorter size; the fields appended since are
// then at their defaults (inputs) or not written (outputs). Anything shorter is a caller bug
// (an uninitialized struct). Structs that have not grown: their size.
constexpr std::size_t abi1_size(const et_train_options*) {
    return offsetof(et_train_options, optimizer_start);
}
constexpr std::size_t abi1_size(const et_train_report*) {
    return offsetof(et_train_report, resumed);
}
template <class T>
constexpr std::size_t abi1_size(const T*) {
    return sizeof(T);
}

template <class T>
void check_size(std::size_t size, const char* op, const char* name) {
    if (size < abi1_size(static_cast<const T*>(nullptr)))
        abi_fail(ET_ERR_INVALID_ARGUMENT, op,
                 std::string(name) + "->struct_size " + std::to_string(size) + " is smaller than " +
                     std::to_string(abi1_size(static_cast<const T*>(nullptr))) +
                     " (fill it with its *_default function)");
}

// A copy of *in with every field beyond in->struct_size at its default.
template <class T>
T read_struct(const T* in, const T& defaults, const char* op, const char* name) {
    check_size<T>(in->struct_size, op, name);
    T out = defaults;
    // A newer caller's appended fields are not read, an older caller's missing ones keep
    // their defaults.
    std::memcpy(static_cast<void*>(&out), in, std::min(in->struct_size, sizeof(T)));
    out.struct_size = sizeof(T);
    return out;
}

// Rejects a too-short output struct before any work is done (a training would otherwise
// commit and only then fail to report).
template <class T>
void check_out_struct(const T* out, const char* op, const char* name) {
    if (out != nullptr) check_size<T>(out->struct_size, op, name);
}

// Writes value into *out without touching a byte beyond out->struct_size.
template <class T>
void write_struct(T* out, T value, const char* op, const char* name) {
    check_out_struct(out, op, name);
    value.struct_size = out->struct_size;
    std::memcpy(static_cast<void*>(out), &value, std::min(out->struct_size, sizeof(T)));
}

// Zeroes all `size` bytes of the caller's struct, then puts `defaults` in the first ones.
template <class T>
et_status fill_default(T* out, std::size_t size, const T& defaults) {
    if (out == nullptr || size < abi1_size(static_cast<const T*>(nullptr)))
        return ET_ERR_INVALID_ARGUMENT;
    std::memset(static_cast<void*>(out), 0, size);
    std::memcpy(static_cast<void*>(out), &defaults, std::min(size, sizeof(T)));
    out->struct_size = size;
    return ET_OK;
}

et_open_options open_defaults() {
    et_open_options o{};
    o.struct_size = sizeof o;
    o.head = ET_HEAD_LINEAR;
    o.temperature = 0.1f;
    o.durability = ET_DURABILITY_NORMAL;
    o.validation_fraction = 0.2f;
    return o;
}

static_assert(ET_AUTO_LR == et::auto_lr, "the C ABI's auto lr is the C++ one");

et_train_options train_defaults() {
    et_train_options o{};
    o.struct_size = sizeof o;
    o.epochs = 10;
    o.batch = 32;
    o.optimizer = ET_OPTIMIZER_ADAM;
    o.learning_rate = ET_AUTO_LR;
    o.balance_classes = -1;
    o.replay = ET_REPLAY_ALL;
    o.tolerance = 0.02f;
    return o;
}

// ---------------------------------------------------------------------------------------
// Conversions

et::HeadSpec to_head(const et_open_options& o, const char* op) {
    require(o.classes > 0, op, "classes = " + std::to_string(o.classes) + " must be > 0");
    switch (o.head) {
        case ET_HEAD_LINEAR:
            return et::HeadSpec::linear(o.classes);
        case ET_HEAD_PROTOTYPE:
            return et::HeadSpec::prototype(o.classes, o.temperature);
        case ET_HEAD_COSINE_PROTOTYPE:
            return et::HeadSpec::cosine_prototype(o.classes, o.temperature);
        case ET_HEAD_MLP: {
            require(o.hidden != nullptr || o.hidden_count == 0, op,
                    "hidden is NULL with hidden_count " + std::to_string(o.hidden_count));
            std::vector<et::Index> hidden(o.hidden, o.hidden + o.hidden_count);
            return et::HeadSpec::mlp(std::move(hidden), o.classes);
        }
        default:
            abi_fail(ET_ERR_INVALID_ARGUMENT, op,
                     "head " + std::to_string(o.head) + " is not an et_head_kind");
    }
}

// A C progress callback and the stop flag its non-zero return raises. Owned by the run's
// std::function (TrainOptions::on_progress), so it lives as long as the run.
struct Callback {
    et_progress_fn fn = nullptr;
    void* user_data = nullptr;
    std::atomic<bool> stop{false};
};

et_progress to_c(const et::Progress& p) {
    et_progress out{};
    out.struct_size = sizeof out;
    out.step = p.step;
    out.epoch = p.epoch;
    out.loss = p.loss;
    out.elapsed_ms = p.elapsed.count();
    return out;
}

et::OptimizerSpec to_optimizer(const et_train_options& o, const char* op) {
    switch (o.optimizer) {
        case ET_OPTIMIZER_ADAM:
            return et::AdamOptions{.lr = o.learning_rate, .weight_decay = o.weight_decay};
        case ET_OPTIMIZER_ADAMW:
            return et::AdamWOptions{.lr = o.learning_rate, .weight_decay = o.weight_decay};
        case ET_OPTIMIZER_SGD:
            return et::SgdOptions{
                .lr = o.learning_rate, .momentum = o.momentum, .weight_decay = o.weight_decay};
        default:
            abi_fail(ET_ERR_INVALID_ARGUMENT, op,
                     "optimizer " + std::to_string(o.optimizer) + " is not an et_optimizer");
    }
}

et::Replay to_replay(const et_train_options& o, const char* op) {
    switch (o.replay) {
        case ET_REPLAY_ALL:
            return et::Replay::all();
        case ET_REPLAY_RESERVOIR:
            return et::Replay::reservoir(o.replay_size);
        case ET_REPLAY_CLASS_BALANCED:
            return et::Replay::class_balanced(o.replay_size);
        case ET_REPLAY_NONE:
            return et::Replay::none();
        default:
            abi_fail(ET_ERR_INVALID_ARGUMENT, op,
                     "replay " + std::to_string(o.replay) + " is not an et_replay");
    }
}

// options may be NULL (defaults). The returned options call `callback` after every step.
et::TrainOptions to_train_options(const et_train_options* in,
                                  const std::shared_ptr<Callback>& callback, const char* op) {
    const et_train_options o =
        in ? read_struct(in, train_defaults(), op, "options") : train_defaults();
    et::TrainOptions t;
    t.epochs = o.epochs;
    t.max_steps = o.max_steps;
    t.deadline = std::chrono::milliseconds(o.deadline_ms);
    t.batch = o.batch;
    t.optimizer = to_optimizer(o, op);
    t.clip_norm = o.clip_norm;
    t.seed = o.seed;
    t.replay = to_replay(o, op);
    if (o.balance_classes >= 0) t.balance_classes = o.balance_classes != 0;
    t.label_smoothing = o.label_smoothing;
    t.tolerance = o.tolerance;
    require(
        o.optimizer_start == ET_OPTIMIZER_CONTINUE || o.optimizer_start == ET_OPTIMIZER_FRESH, op,
        "optimizer_start " + std::to_string(o.optimizer_start) + " is not an et_optimizer_start");
    t.optimizer_start = o.optimizer_start == ET_OPTIMIZER_FRESH
                            ? et::OptimizerStart::fresh
                            : et::OptimizerStart::continue_stored;
    t.from_base = o.from_base != 0;
    t.resume_every = o.resume_every;
    callback->fn = o.on_progress;
    callback->user_data = o.user_data;
    // NOTE: t.stop points into *callback, so the std::function must own it even without a C
    // callback: a background run reads the flag after the call that started it returned.
    t.stop = &callback->stop;
    t.on_progress = [callback](const et::Progress& p) {
        if (callback->fn == nullptr) return;
        const et_progress c = to_c(p);
        if (callback->fn(&c, callback->user_data) != 0) callback->stop = true;
    };
    return t;
}

et_metrics to_c(const et::Metrics& m) {
    return {m.loss, m.accuracy, m.balanced_accuracy, m.samples};
}

// Fills *out (if not NULL) and returns the status of a finished run: a cancelled run is
// ET_ERR_CANCELLED with the report's reason.
et_status finish_report(const et::TrainReport& r, et_train_report* out, et_error** error,
                        const char* op) {
    if (out != nullptr) {
        et_train_report c{};
        c.outcome = static_cast<std::int32_t>(r.outcome);
        c.steps = r.steps;
        c.epochs = r.epochs;
        c.train_samples = r.train_samples;
        c.validation_samples = r.validation_samples;
        c.duration_ms = r.duration.count();
        c.retrained_from_base = r.retrained_from_base ? 1 : 0;
        c.has_metrics = r.before && r.after ? 1 : 0;
        if (r.before) c.before = to_c(*r.before);
        if (r.after) c.after = to_c(*r.after);
        const std::size_t n = std::min(r.reason.size(), sizeof c.reason - 1);
        std::memcpy(c.reason, r.reason.data(), n);
        c.reason[n] = '\0';
        c.resumed = r.resumed ? 1 : 0;
        write_struct(out, c, op, "report");
    }
    if (r.outcome == et::TrainReport::Outcome::cancelled)
        return report_error(error, ET_ERR_CANCELLED, std::string("[") + op + "] " + r.reason);
    return ET_OK;
}

// Copies the answer into a caller's array of `capacity` (see "Buffers" in edgetune.h).
template <class T>
et_status fill_array(const std::vector<T>& values, T* out, std::size_t capacity, std::size_t* count,
                     const char* op) {
    require(count != nullptr, op, "count is NULL");
    *count = values.size();
    if (out == nullptr && capacity == 0) return ET_OK;
    require(out != nullptr, op, "out is NULL with capacity " + std::to_string(capacity));
    if (capacity < values.size())
        abi_fail(ET_ERR_BUFFER_TOO_SMALL, op,
                 "buffer holds " + std::to_string(capacity) + " entries, " +
                     std::to_string(values.size()) + " needed");
    std::copy(values.begin(), values.end(), out);
    return ET_OK;
}

void check_input(const et_personalizer* p, et::InputSpec::Kind kind, std::size_t width,
                 const char* op) {
    const et::InputSpec& in = p->backbone->config().input;
    if (in.kind != kind)
        abi_fail(ET_ERR_INVALID_ARGUMENT, op,
                 in.kind == et::InputSpec::Kind::float_vector
                     ? "the backbone takes float vectors: use the *_floats function"
                     : "the backbone takes token sequences: use the *_tokens function");
    const bool floats = kind == et::InputSpec::Kind::float_vector;
    require(static_cast<std::int64_t>(width) == in.size, op,
            (floats ? "width " : "length ") + std::to_string(width) +
                (floats ? " does not match the backbone's input width "
                        : " does not match the backbone's sequence length ") +
                std::to_string(in.size));
}

// `rows` labelled samples from row-major values (float or token), checked against the backbone.
template <class V>
std::vector<et::Sample> samples_of(const et_personalizer* p, const V* data, std::size_t rows,
                                   std::size_t width, const std::int32_t* labels, const char* op) {
    checked(p, Kind::personalizer, op, "personalizer");
    constexpr bool floats = std::is_same_v<V, float>;
    check_input(p, floats ? et::InputSpec::Kind::float_vector : et::InputSpec::Kind::token_sequence,
                width, op);
    require(rows > 0, op, "rows must be > 0");
    require(data != nullptr, op, floats ? "data is NULL" : "tokens is NULL");
    require(labels != nullptr, op, "labels is NULL");
    std::vector<et::Sample> samples(rows);
    for (std::size_t r = 0; r < rows; ++r) {
        const V* row = data + r * width;
        if constexpr (floats)
            samples[r].input.assign(row, row + width);
        else
            samples[r].tokens.assign(row, row + width);
        samples[r].label = labels[r];
    }
    return samples;
}

// Builds `rows` samples from row-major values (float or token) and adds them.
template <class V>
et_status add_rows(et_personalizer* p, const V* data, std::size_t rows, std::size_t width,
                   const std::int32_t* labels, std::int64_t* ids, const char* op) {
    const std::vector<et::Sample> samples = samples_of(p, data, rows, width, labels, op);
    const std::vector<std::int64_t> got = p->engine->add(samples);
    if (ids != nullptr) std::copy(got.begin(), got.end(), ids);
    return ET_OK;
}

template <class V>
et_status predict_row(const et_personalizer* p, const V* input, std::size_t width, std::int32_t k,
                      et_prediction* out, std::size_t capacity, std::size_t* count,
                      const char* op) {
    checked(p, Kind::personalizer, op, "personalizer");
    constexpr bool floats = std::is_same_v<V, float>;
    check_input(p, floats ? et::InputSpec::Kind::float_vector : et::InputSpec::Kind::token_sequence,
                width, op);
    require(input != nullptr, op, floats ? "input is NULL" : "tokens is NULL");
    require(k > 0, op, "k = " + std::to_string(k) + " must be > 0");
    require(count != nullptr, op, "count is NULL");
    const std::size_t needed =
        std::min(static_cast<std::size_t>(k), static_cast<std::size_t>(p->classes));
    if (out == nullptr && capacity == 0) {
        *count = needed;
        return ET_OK;
    }
    require(out != nullptr, op, "out is NULL with capacity " + std::to_string(capacity));
    if (capacity < needed) {
        *count = needed;
        abi_fail(ET_ERR_BUFFER_TOO_SMALL, op,
                 "out holds " + std::to_string(capacity) + " predictions, " +
                     std::to_string(needed) + " needed");
    }
    et::Sample s;
    if constexpr (floats)
        s.input.assign(input, input + width);
    else
        s.tokens.assign(input, input + width);
    std::vector<et_prediction> answer;
    for (const et::Prediction& pr : p->engine->predict(s, k))
        answer.push_back({pr.label, pr.probability});
    return fill_array(answer, out, capacity, count, op);
}

// Joins t's run (if not joined yet) with t->mu released meanwhile; `lock` holds t->mu.
void join_run(et_training* t, std::unique_lock<std::mutex>& lock) {
    if (t->joining) {
        t->joined.wait(lock, [t] { return !t->joining; });
        return;
    }
    if (!t->run) return;
    t->joining = true;
    et::BackgroundTraining* run = t->run.get();
    lock.unlock();
    try {
        t->report = run->wait();
    } catch (...) {
        t->failure = std::current_exception();
    }
    lock.lock();
    t->last = t->run->progress();
    t->run.reset();
    t->joining = false;
    t->joined.notify_all();
}

}  // namespace

// ---------------------------------------------------------------------------------------
// Errors and versions

extern "C" {

et_status et_error_code(const et_error* error) {
    if (error == &out_of_memory_error) return ET_ERR_OUT_OF_MEMORY;
    return is_live(error, Kind::error) ? error->code : ET_ERR_BAD_HANDLE;
}

const char* et_error_message(const et_error* error) {
    if (error == &out_of_memory_error) return out_of_memory_message;
    if (!is_live(error, Kind::error)) return "[et_error_message] not a live error object";
    return error->message.c_str();
}

void et_error_free(et_error* error) {
    if (unregister_handle(error, Kind::error)) delete error;
}

const char* et_status_name(et_status status) {
    switch (status) {
        case ET_OK:
            return "ET_OK";
        case ET_ERR_INVALID_ARGUMENT:
            return "ET_ERR_INVALID_ARGUMENT";
        case ET_ERR_BUFFER_TOO_SMALL:
            return "ET_ERR_BUFFER_TOO_SMALL";
        case ET_ERR_BAD_HANDLE:
            return "ET_ERR_BAD_HANDLE";
        case ET_ERR_CORRUPT_DATA:
            return "ET_ERR_CORRUPT_DATA";
        case ET_ERR_STORAGE:
            return "ET_ERR_STORAGE";
        case ET_ERR_DIVERGED:
            return "ET_ERR_DIVERGED";
        case ET_ERR_CANCELLED:
            return "ET_ERR_CANCELLED";
        case ET_ERR_BUSY:
            return "ET_ERR_BUSY";
        case ET_ERR_OUT_OF_MEMORY:
            return "ET_ERR_OUT_OF_MEMORY";
        case ET_ERR_INTERNAL:
            return "ET_ERR_INTERNAL";
    }
    return "ET_ERR_UNKNOWN_STATUS";
}

const char* et_version(void) {
    return EDGETUNE_VERSION;
}

uint32_t et_abi_version(void) {
    return ET_ABI_VERSION;
}

// ---------------------------------------------------------------------------------------
// Backbone

et_status et_backbone_load(const char* path, et_backbone** backbone, et_error** error) {
    const char* op = "et_backbone_load";
    return guarded(op, error, [&] {
        require(backbone != nullptr, op, "backbone is NULL");
        *backbone = nullptr;
        require(path != nullptr, op, "path is NULL");
        auto h = std::make_unique<et_backbone>();
        h->backbone = et::Backbone::load(path);
        register_handle(h.get(), Kind::backbone);
        *backbone = h.release();
        return ET_OK;
    });
}

void et_backbone_free(et_backbone* backbone) {
    if (unregister_handle(backbone, Kind::backbone)) delete backbone;
}

// ---------------------------------------------------------------------------------------
// Personalizer

et_status et_open_options_default(et_open_options* options, size_t size) {
    return fill_default(options, size, open_defaults());
}

et_status et_open(const char* path, const et_backbone* backbone, const et_open_options* options,
                  et_personalizer** personalizer, et_error** error) {
    const char* op = "et_open";
    return guarded(op, error, [&] {
        require(personalizer != nullptr, op, "personalizer is NULL");
        *personalizer = nullptr;
        require(path != nullptr, op, "path is NULL");
        checked(backbone, Kind::backbone, op, "backbone");
        require(options != nullptr, op, "options is NULL (use et_open_options_default)");
        const et_open_options o = read_struct(options, open_defaults(), op, "options");
        require(o.durability == ET_DURABILITY_NORMAL || o.durability == ET_DURABILITY_FULL, op,
                "durability " + std::to_string(o.durability) + " is not an et_durability");
        auto h = std::make_unique<et_personalizer>();
        h->backbone = backbone->backbone;
        h->head = to_head(o, op);
        et::PersonalizerOptions po;
        po.backbone = h->backbone;
        po.head = h->head;
        po.durability =
            o.durability == ET_DURABILITY_FULL ? et::Durability::full : et::Durability::normal;
        po.seed = o.seed;
        po.validation_fraction = o.validation_fraction;
        require(o.upgrade_backbone == 0 || o.upgrade_backbone == 1, op,
                "upgrade_backbone " + std::to_string(o.upgrade_backbone) + " is not 0 or 1");
        po.upgrade_backbone = o.upgrade_backbone == 1;
        if (o.initial_head_path != nullptr)
            po.initial_head = et::HeadWeights::load(o.initial_head_path);
        h->engine = et::Personalizer::open(path, po);
        h->classes = static_cast<std::int64_t>(h->engine->count_per_label().size());
        register_handle(h.get(), Kind::personalizer);
        *personalizer = h.release();
        return ET_OK;
    });
}

void et_close(et_personalizer* personalizer) {
    if (!unregister_handle(personalizer, Kind::personalizer)) return;
    std::vector<et_training*> running;
    {
        std::lock_guard lock(personalizer->mu);
        running.swap(personalizer->trainings);
    }
    // A run uses the engine: cancel and join it before the engine goes.
    for (et_training* t : running) {
        std::unique_lock lock(t->mu);
        t->owner = nullptr;
        if (t->run) t->run->cancel();
        join_run(t, lock);
    }
    delete personalizer;
}

// ---------------------------------------------------------------------------------------
// Samples and prediction

et_status et_add_floats(et_personalizer* personalizer, const float* data, size_t rows, size_t width,
                        const int32_t* labels, int64_t* ids, et_error** error) {
    const char* op = "et_add_floats";
    return guarded(op, error,
                   [&] { return add_rows(personalizer, data, rows, width, labels, ids, op); });
}

et_status et_add_tokens(et_personalizer* personalizer, const int32_t* tokens, size_t rows,
                        size_t length, const int32_t* labels, int64_t* ids, et_error** error) {
    const char* op = "et_add_tokens";
    return guarded(op, error,
                   [&] { return add_rows(personalizer, tokens, rows, length, labels, ids, op); });
}

et_status et_predict_floats(const et_personalizer* personalizer, const float* input, size_t width,
                            int32_t k, et_prediction* out, size_t capacity, size_t* count,
                            et_error** error) {
    const char* op = "et_predict_floats";
    return guarded(op, error, [&] {
        return predict_row(personalizer, input, width, k, out, capacity, count, op);
    });
}

et_status et_predict_tokens(const et_personalizer* personalizer, const int32_t* tokens,
                            size_t length, int32_t k, et_prediction* out, size_t capacity,
                            size_t* count, et_error** error) {
    const char* op = "et_predict_tokens";
    return guarded(op, error, [&] {
        return predict_row(personalizer, tokens, length, k, out, capacity, count, op);
    });
}

// ---------------------------------------------------------------------------------------
// Training

et_status et_train_options_default(et_train_options* options, size_t size) {
    return fill_default(options, size, train_defaults());
}

et_status et_train_report_default(et_train_report* report, size_t size) {
    et_train_report zero{};
    zero.struct_size = sizeof zero;
    return fill_default(report, size, zero);
}

et_status et_evaluation_default(et_evaluation* evaluation, size_t size) {
    et_evaluation zero{};
    zero.struct_size = sizeof zero;
    return fill_default(evaluation, size, zero);
}

et_status et_evaluate_floats(const et_personalizer* personalizer, const float* data, size_t rows,
                             size_t width, const int32_t* labels, int32_t k,
                             et_evaluation* evaluation, double* class_accuracy,
                             int64_t* class_samples, size_t capacity, et_error** error) {
    const char* op = "et_evaluate_floats";
    return guarded(op, error, [&] {
        const std::vector<et::Sample> samples =
            samples_of(personalizer, data, rows, width, labels, op);
        require(evaluation != nullptr, op, "evaluation is NULL");
        check_out_struct(evaluation, op, "evaluation");
        const auto classes = static_cast<std::size_t>(personalizer->classes);
        require((class_accuracy == nullptr && class_samples == nullptr) || capacity >= classes, op,
                "capacity " + std::to_string(capacity) + " is smaller than the " +
                    std::to_string(classes) + " classes");
        const et::Metrics m = personalizer->engine->evaluate(samples, k);
        et_evaluation c{};
        c.metrics = to_c(m);
        c.k = m.top_k;
        c.top_k_accuracy = m.top_k_accuracy;
        for (std::size_t i = 0; i < classes; ++i) {
            if (class_accuracy != nullptr) class_accuracy[i] = m.class_accuracy.at(i);
            if (class_samples != nullptr) class_samples[i] = m.class_samples.at(i);
        }
        write_struct(evaluation, c, op, "evaluation");
        return ET_OK;
    });
}

et_status et_train(et_personalizer* personalizer, const et_train_options* options,
                   et_train_report* report, et_error** error) {
    const char* op = "et_train";
    return guarded(op, error, [&] {
        checked(personalizer, Kind::personalizer, op, "personalizer");
        check_out_struct(report, op, "report");
        auto callback = std::make_shared<Callback>();
        const et::TrainOptions t = to_train_options(options, callback, op);
        return finish_report(personalizer->engine->train(t), report, error, op);
    });
}

et_status et_forget(et_personalizer* personalizer, const int64_t* ids, size_t count,
                    const et_train_options* retrain, et_train_report* report, et_error** error) {
    const char* op = "et_forget";
    return guarded(op, error, [&] {
        checked(personalizer, Kind::personalizer, op, "personalizer");
        require(ids != nullptr || count == 0, op,
                "ids is NULL with count " + std::to_string(count));
        check_out_struct(report, op, "report");
        auto callback = std::make_shared<Callback>();
        const et::TrainOptions t = to_train_options(retrain, callback, op);
        const std::span<const std::int64_t> span(ids, count);
        return finish_report(personalizer->engine->forget(span, t), report, error, op);
    });
}

et_status et_train_async(et_personalizer* personalizer, const et_train_options* options,
                         et_training** training, et_error** error) {
    const char* op = "et_train_async";
    return guarded(op, error, [&] {
        require(training != nullptr, op, "training is NULL");
        *training = nullptr;
        checked(personalizer, Kind::personalizer, op, "personalizer");
        auto callback = std::make_shared<Callback>();
        et::TrainOptions t = to_train_options(options, callback, op);
        auto h = std::make_unique<et_training>();
        h->owner = personalizer;
        register_handle(h.get(), Kind::training);
        try {
            std::lock_guard lock(personalizer->mu);
            personalizer->trainings.reserve(personalizer->trainings.size() + 1);
            h->run = personalizer->engine->train_async(std::move(t));
            personalizer->trainings.push_back(h.get());  // cannot throw: reserved
        } catch (...) {
            unregister_handle(h.get(), Kind::training);
            throw;
        }
        *training = h.release();
        return ET_OK;
    });
}

et_status et_training_progress(const et_training* training, et_progress* progress,
                               et_error** error) {
    const char* op = "et_training_progress";
    return guarded(op, error, [&] {
        auto* t = const_cast<et_training*>(checked(training, Kind::training, op, "training"));
        require(progress != nullptr, op, "progress is NULL");
        std::lock_guard lock(t->mu);
        write_struct(progress, to_c(t->run ? t->run->progress() : t->last), op, "progress");
        return ET_OK;
    });
}

et_status et_training_cancel(et_training* training, et_error** error) {
    const char* op = "et_training_cancel";
    return guarded(op, error, [&] {
        checked(training, Kind::training, op, "training");
        std::lock_guard lock(training->mu);
        if (training->run) training->run->cancel();
        return ET_OK;
    });
}

et_status et_training_done(const et_training* training, int32_t* done, et_error** error) {
    const char* op = "et_training_done";
    return guarded(op, error, [&] {
        auto* t = const_cast<et_training*>(checked(training, Kind::training, op, "training"));
        require(done != nullptr, op, "done is NULL");
        std::lock_guard lock(t->mu);
        *done = !t->run || t->run->done() ? 1 : 0;
        return ET_OK;
    });
}

et_status et_training_wait(et_training* training, et_train_report* report, et_error** error) {
    const char* op = "et_training_wait";
    return guarded(op, error, [&] {
        checked(training, Kind::training, op, "training");
        check_out_struct(report, op, "report");
        std::unique_lock lock(training->mu);
        if (training->waited)
            abi_fail(ET_ERR_BUSY, op, "this run was already waited for (once per run)");
        training->waited = true;
        join_run(training, lock);
        if (et_personalizer* owner = training->owner) {
            std::lock_guard owner_lock(owner->mu);
            std::erase(owner->trainings, training);
            training->owner = nullptr;
        }
        if (training->failure) std::rethrow_exception(training->failure);
        return finish_report(training->report, report, error, op);
    });
}

void et_training_free(et_training* training) {
    if (!unregister_handle(training, Kind::training)) return;
    {
        std::unique_lock lock(training->mu);
        if (training->run) training->run->cancel();
        join_run(training, lock);
        if (et_personalizer* owner = training->owner) {
            std::lock_guard owner_lock(owner->mu);
            std::erase(owner->trainings, training);
        }
    }
    delete training;
}

// ---------------------------------------------------------------------------------------
// Information

et_status et_info_default(et_info* info, size_t size) {
    et_info zero{};
    zero.struct_size = sizeof zero;
    return fill_default(info, size, zero);
}

et_status et_get_info(const et_personalizer* personalizer, et_info* info, et_error** error) {
    const char* op = "et_get_info";
    return guarded(op, error, [&] {
        const auto* p = checked(personalizer, Kind::personalizer, op, "personalizer");
        require(info != nullptr, op, "info is NULL");
        et_info c{};
        c.samples = p->engine->sample_count();
        c.classes = p->classes;
        const et::InputSpec& in = p->backbone->config().input;
        c.input_kind =
            in.kind == et::InputSpec::Kind::float_vector ? ET_INPUT_FLOATS : ET_INPUT_TOKENS;
        c.input_width = in.size;
        c.feature_width = p->backbone->feature_dim();
        c.head = p->head.kind == et::HeadSpec::Kind::mlp         ? ET_HEAD_MLP
                 : p->head.kind != et::HeadSpec::Kind::prototype ? ET_HEAD_LINEAR
                 : p->head.cosine                                ? ET_HEAD_COSINE_PROTOTYPE
                                                                 : ET_HEAD_PROTOTYPE;
        write_struct(info, c, op, "info");
        return ET_OK;
    });
}

et_status et_count_per_class(const et_personalizer* personalizer, int64_t* counts, size_t capacity,
                             size_t* count, et_error** error) {
    const char* op = "et_count_per_class";
    return guarded(op, error, [&] {
        const auto* p = checked(personalizer, Kind::personalizer, op, "personalizer");
        return fill_array(p->engine->count_per_label(), counts, capacity, count, op);
    });
}

// ---------------------------------------------------------------------------------------
// Named classes and verification

et_status et_class_add(et_personalizer* personalizer, const char* name, int32_t* label,
                       et_error** error) {
    const char* op = "et_class_add";
    return guarded(op, error, [&] {
        auto* p = checked(personalizer, Kind::personalizer, op, "personalizer");
        require(name != nullptr, op, "name is NULL");
        require(label != nullptr, op, "label is NULL");
        *label = p->engine->add_class(name);
        p->classes = static_cast<std::int64_t>(p->engine->count_per_label().size());
        return ET_OK;
    });
}

et_status et_class_rename(et_personalizer* personalizer, int32_t label, const char* name,
                          et_error** error) {
    const char* op = "et_class_rename";
    return guarded(op, error, [&] {
        auto* p = checked(personalizer, Kind::personalizer, op, "personalizer");
        require(name != nullptr, op, "name is NULL");
        p->engine->rename_class(label, name);
        return ET_OK;
    });
}

et_status et_class_name(const et_personalizer* personalizer, int32_t label, char* out,
                        size_t capacity, size_t* length, et_error** error) {
    const char* op = "et_class_name";
    return guarded(op, error, [&] {
        const auto* p = checked(personalizer, Kind::personalizer, op, "personalizer");
        require(length != nullptr, op, "length is NULL");
        const auto classes = p->engine->classes();
        require(label >= 0 && static_cast<std::size_t>(label) < classes.size(), op,
                "no class with label " + std::to_string(label) + " (" +
                    std::to_string(classes.size()) + " classes)");
        const std::string& name = classes[static_cast<std::size_t>(label)].name;
        *length = name.size();
        if (out == nullptr && capacity == 0) return ET_OK;
        require(out != nullptr, op, "out is NULL with capacity " + std::to_string(capacity));
        if (capacity < name.size() + 1)
            abi_fail(ET_ERR_BUFFER_TOO_SMALL, op,
                     "out holds " + std::to_string(capacity) + " bytes, " +
                         std::to_string(name.size() + 1) + " needed");
        std::memcpy(out, name.c_str(), name.size() + 1);
        return ET_OK;
    });
}

et_status et_class_remove(et_personalizer* personalizer, int32_t label,
                          const et_train_options* retrain, et_train_report* report,
                          et_error** error) {
    const char* op = "et_class_remove";
    return guarded(op, error, [&] {
        auto* p = checked(personalizer, Kind::personalizer, op, "personalizer");
        check_out_struct(report, op, "report");
        auto callback = std::make_shared<Callback>();
        const et::TrainOptions t = to_train_options(retrain, callback, op);
        const et::TrainReport r = p->engine->remove_class(label, t);
        p->classes = static_cast<std::int64_t>(p->engine->count_per_label().size());
        return finish_report(r, report, error, op);
    });
}

et_status et_calibration_default(et_calibration* calibration, size_t size) {
    et_calibration zero{};
    zero.struct_size = sizeof zero;
    return fill_default(calibration, size, zero);
}

et_status et_train_calibrated(et_personalizer* personalizer, const et_train_options* options,
                              double target_far, et_train_report* report,
                              et_calibration* calibration, et_error** error) {
    const char* op = "et_train_calibrated";
    return guarded(op, error, [&] {
        checked(personalizer, Kind::personalizer, op, "personalizer");
        check_out_struct(report, op, "report");
        check_out_struct(calibration, op, "calibration");
        auto callback = std::make_shared<Callback>();
        et::TrainOptions t = to_train_options(options, callback, op);
        t.unknown =
            target_far == -1.0 ? et::Unknown::at_equal_error() : et::Unknown::at_far(target_far);
        const et::TrainReport r = personalizer->engine->train(t);
        if (calibration != nullptr) {
            et_calibration c{};
            if (r.calibration) {
                c.calibrated = 1;
                c.threshold = r.calibration->threshold;
                c.far = r.calibration->far;
                c.frr = r.calibration->frr;
                c.eer = r.calibration->eer;
                c.genuine = r.calibration->genuine;
                c.impostor = r.calibration->impostor;
            }
            const std::size_t n = std::min(r.calibration_note.size(), sizeof c.note - 1);
            std::memcpy(c.note, r.calibration_note.data(), n);
            c.note[n] = '\0';
            write_struct(calibration, c, op, "calibration");
        }
        return finish_report(r, report, error, op);
    });
}

et_status et_verify_floats(const et_personalizer* personalizer, const float* input, size_t width,
                           int32_t label, float* score, int32_t* accept, et_error** error) {
    const char* op = "et_verify_floats";
    return guarded(op, error, [&] {
        const auto* p = checked(personalizer, Kind::personalizer, op, "personalizer");
        check_input(p, et::InputSpec::Kind::float_vector, width, op);
        require(input != nullptr, op, "input is NULL");
        require(score != nullptr, op, "score is NULL");
        et::Sample s;
        s.input.assign(input, input + width);
        const et::Verification v = p->engine->verify(s, label);
        *score = v.score;
        if (accept != nullptr) *accept = v.accept ? 1 : 0;
        return ET_OK;
    });
}

}  // extern "C"
