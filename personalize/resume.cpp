// resume.cpp — resume records of interrupted training runs: the TrainLoop and head in the middle
// of a run, written at the app's cadence (TrainOptions::resume_every) and read back so that the
// resumed run ends bit for bit where the uninterrupted one would (detail/training.hpp).
//
// A record is a storage Checkpoint (kind "resume": envelope + CRC, storage/FORMAT.md) in hex:
// tensors = the head's parameters, optimizer = its state, step = loop.steps, rng = the shuffle
// RNG; attributes hold the rest, every float and double by its bits so nothing is rounded.
#include <algorithm>
#include <bit>
#include <cstdio>
#include <variant>

#include "detail/training.hpp"

namespace edgetune::detail {

namespace {

template <class... F>
struct Overloaded : F... {
    using F::operator()...;
};
template <class... F>
Overloaded(F...) -> Overloaded<F...>;

std::string bits(float v) {
    return std::to_string(std::bit_cast<std::uint32_t>(v));
}

std::string bits(double v) {
    return std::to_string(std::bit_cast<std::uint64_t>(v));
}

// FNV-1a 64 over a string, as 16 hex digits.
std::string fnv_hex(std::string_view text) {
    std::uint64_t h = 0xcbf29ce484222325ULL;
    for (const char c : text) h = (h ^ static_cast<unsigned char>(c)) * 0x100000001b3ULL;
    char out[17];
    std::snprintf(out, sizeof out, "%016llx", static_cast<unsigned long long>(h));
    return out;
}

std::string optimizer_string(const OptimizerSpec& spec) {
    return std::visit(Overloaded{[](const SgdOptions& s) {
                                     return "sgd " + bits(s.lr) + " " + bits(s.momentum) + " " +
                                            bits(s.dampening) + " " + bits(s.weight_decay) + " " +
                                            std::to_string(s.nesterov);
                                 },
                                 [](const AdamOptions& a) {
                                     return "adam " + bits(a.lr) + " " + bits(a.beta1) + " " +
                                            bits(a.beta2) + " " + bits(a.eps) + " " +
                                            bits(a.weight_decay) + " " + std::to_string(a.amsgrad);
                                 },
                                 [](const AdamWOptions& a) {
                                     return "adamw " + bits(a.lr) + " " + bits(a.beta1) + " " +
                                            bits(a.beta2) + " " + bits(a.eps) + " " +
                                            bits(a.weight_decay) + " " + std::to_string(a.amsgrad);
                                 }},
                      spec);
}

// The position-driven schedules (also a warmup's `then`).
struct PositionString {
    std::string operator()(const ConstantSchedule&) const { return "constant"; }
    std::string operator()(const StepSchedule& s) const {
        return "step " + std::to_string(s.step_size) + " " + bits(s.gamma);
    }
    std::string operator()(const ExponentialSchedule& s) const { return "exp " + bits(s.gamma); }
    std::string operator()(const CosineSchedule& s) const {
        return "cosine " + std::to_string(s.total_steps) + " " + bits(s.min_lr);
    }
};

std::string schedule_string(const ScheduleSpec& spec) {
    return std::visit(
        Overloaded{[](const WarmupSchedule& w) {
                       return "warmup " + std::to_string(w.warmup_steps) + " " +
                              bits(w.start_factor) + " " + std::visit(PositionString{}, w.then);
                   },
                   [](const PlateauSchedule& p) {
                       return "plateau " + bits(p.factor) + " " + std::to_string(p.patience) + " " +
                              bits(p.threshold) + " " + std::to_string(p.cooldown) + " " +
                              bits(p.min_lr) + " " + std::to_string(p.maximize);
                   },
                   [](const auto& s) { return PositionString{}(s); }},
        spec);
}

std::string ids_of(const Dataset& d, const std::vector<std::size_t>& rows) {
    std::string out;
    for (const std::size_t r : rows) out += std::to_string(d.ids[r]) + ",";
    return out;
}

template <class T, class F>
std::string join(const std::vector<T>& values, F&& each) {
    std::string out;
    for (const T& v : values) out += each(v) + ",";
    return out;
}

// Comma-terminated unsigned integers ("1,2,3,"). Throws std::invalid_argument/out_of_range.
std::vector<std::uint64_t> split(const std::string& text) {
    std::vector<std::uint64_t> out;
    std::size_t at = 0;
    while (at < text.size()) {
        const std::size_t comma = text.find(',', at);
        if (comma == std::string::npos) throw std::invalid_argument("unterminated list");
        out.push_back(std::stoull(text.substr(at, comma - at)));
        at = comma + 1;
    }
    return out;
}

std::string to_hex(std::span<const std::uint8_t> bytes) {
    static const char digits[] = "0123456789abcdef";
    std::string out(bytes.size() * 2, '0');
    for (std::size_t i = 0; i < bytes.size(); ++i) {
        out[2 * i] = digits[bytes[i] >> 4];
        out[2 * i + 1] = digits[bytes[i] & 15];
    }
    return out;
}

std::optional<std::vector<std::uint8_t>> from_hex(std::string_view text) {
    if (text.size() % 2 != 0) return std::nullopt;
    auto nibble = [](char c) -> int {
        if (c >= '0' && c <= '9') return c - '0';
        if (c >= 'a' && c <= 'f') return c - 'a' + 10;
        return -1;
    };
    std::vector<std::uint8_t> out(text.size() / 2);
    for (std::size_t i = 0; i < out.size(); ++i) {
        const int hi = nibble(text[2 * i]), lo = nibble(text[2 * i + 1]);
        if (hi < 0 || lo < 0) return std::nullopt;
        out[i] = static_cast<std::uint8_t>(hi * 16 + lo);
    }
    return out;
}

const std::string& attr(const Checkpoint& c, const std::string& key) {
    for (const auto& [k, v] : c.attrs)
        if (k == key) return v;
    throw std::invalid_argument("missing attribute " + key);
}

}  // namespace

std::string run_fingerprint(const TrainOptions& o, std::int64_t start_checkpoint,
                            std::int64_t trained_upto, const Dataset& d, const RowSelection& rows) {
    const std::string text =
        "epochs " + std::to_string(o.epochs) + " batch " + std::to_string(o.batch) + " opt " +
        optimizer_string(o.optimizer) + " sched " + schedule_string(o.schedule) + " clip " +
        bits(o.clip_norm) + " seed " + std::to_string(o.seed) + " replay " +
        std::to_string(static_cast<int>(o.replay.kind)) + " " + std::to_string(o.replay.size) +
        " pull " + bits(o.base_pull) + " balance " +
        (o.balance_classes ? std::to_string(*o.balance_classes) : std::string("auto")) +
        " smoothing " + bits(o.label_smoothing) + " start " +
        std::to_string(static_cast<int>(o.optimizer_start)) + " from_base " +
        std::to_string(o.from_base) + " new_share " + bits(o.new_share) + " checkpoint " +
        std::to_string(start_checkpoint) + " upto " + std::to_string(trained_upto) + " train " +
        fnv_hex(ids_of(d, rows.train)) + " validation " + fnv_hex(ids_of(d, rows.validation));
    return fnv_hex(text) + "-" + std::to_string(text.size());
}

std::string encode_resume(const TrainLoop& loop, const Head& head, const Dataset& d,
                          const std::string& fingerprint) {
    const ScheduleState& s = loop.schedule->state();
    auto float_bits = [](float v) { return bits(v); };
    Checkpoint c;
    c.kind = "resume";
    c.attrs = {{"run", fingerprint},
               {"epoch", std::to_string(loop.epoch)},
               {"last_epoch", std::to_string(loop.last_epoch)},
               {"inside_epoch", std::to_string(loop.inside_epoch)},
               {"at", std::to_string(loop.at)},
               {"epoch_loss", bits(loop.epoch_loss)},
               {"epoch_batches", std::to_string(loop.epoch_batches)},
               {"loss_curve", join(loop.loss_curve, float_bits)},
               {"order", ids_of(d, loop.order)},
               {"schedule.step", std::to_string(s.step)},
               {"schedule.base_lrs", join(s.base_lrs, float_bits)},
               {"schedule.lrs", join(s.lrs, float_bits)},
               {"schedule.best", bits(s.best)},
               {"schedule.bad_steps", std::to_string(s.bad_steps)},
               {"schedule.cooldown_left", std::to_string(s.cooldown_left)}};
    c.tensors = head.tensors();
    c.optimizer = loop.optimizer->state();
    c.step = loop.steps;
    c.rng = loop.rng.state();
    return to_hex(encode_checkpoint(c));
}

bool load_resume(std::string_view record, const std::string& fingerprint, TrainLoop& loop,
                 Head& head, const Dataset& d) {
    const auto bytes = from_hex(record);
    if (!bytes) return false;
    try {
        const Checkpoint c = decode_checkpoint(*bytes);
        if (c.kind != "resume" || attr(c, "run") != fingerprint) return false;
        // Everything is parsed into locals first: a bad field leaves loop and head untouched.
        auto to_floats = [](const std::string& text) {
            std::vector<float> out;
            for (const std::uint64_t v : split(text))
                out.push_back(std::bit_cast<float>(static_cast<std::uint32_t>(v)));
            return out;
        };
        std::vector<std::size_t> order;
        for (const std::uint64_t id : split(attr(c, "order"))) {
            const auto it =
                std::lower_bound(d.ids.begin(), d.ids.end(), static_cast<std::int64_t>(id));
            if (it == d.ids.end() || *it != static_cast<std::int64_t>(id)) return false;
            order.push_back(static_cast<std::size_t>(it - d.ids.begin()));
        }
        std::vector<std::size_t> a = order, b = loop.order;
        std::sort(a.begin(), a.end());
        std::sort(b.begin(), b.end());
        if (a != b) return false;
        ScheduleState s;
        s.step = std::stoll(attr(c, "schedule.step"));
        s.base_lrs = to_floats(attr(c, "schedule.base_lrs"));
        s.lrs = to_floats(attr(c, "schedule.lrs"));
        s.best =
            std::bit_cast<float>(static_cast<std::uint32_t>(std::stoull(attr(c, "schedule.best"))));
        s.bad_steps = std::stoll(attr(c, "schedule.bad_steps"));
        s.cooldown_left = std::stoll(attr(c, "schedule.cooldown_left"));
        const std::size_t at = std::stoull(attr(c, "at"));
        if (at > order.size()) return false;
        // Optimizer and schedule check their own shapes; the head's are checked here, before
        // anything is changed, so a failure changes nothing.
        const auto current = head.tensors();
        if (current.size() != c.tensors.size()) return false;
        for (std::size_t i = 0; i < current.size(); ++i)
            if (current[i].first != c.tensors[i].first ||
                current[i].second.rows() != c.tensors[i].second.rows() ||
                current[i].second.cols() != c.tensors[i].second.cols())
                return false;
        const OptimizerState saved_optimizer = loop.optimizer->state();
        loop.optimizer->load_state(c.optimizer);
        try {
            loop.schedule->load_state(s);
        } catch (...) {
            loop.optimizer->load_state(saved_optimizer);
            throw;
        }
        head.load(c.tensors);
        loop.rng.set_state(c.rng);
        loop.order = std::move(order);
        loop.epoch = static_cast<int>(std::stoll(attr(c, "epoch")));
        loop.last_epoch = static_cast<int>(std::stoll(attr(c, "last_epoch")));
        loop.inside_epoch = attr(c, "inside_epoch") == "1";
        loop.at = at;
        loop.epoch_loss = std::bit_cast<double>(std::stoull(attr(c, "epoch_loss")));
        loop.epoch_batches = std::stoull(attr(c, "epoch_batches"));
        loop.loss_curve = to_floats(attr(c, "loss_curve"));
        loop.steps = c.step;
        return true;
    } catch (const CorruptData&) {
        return false;
    } catch (const InvalidArgument&) {
        return false;
    } catch (const std::logic_error&) {  // stoll/stoull/split on a malformed field
        return false;
    }
}

}  // namespace edgetune::detail
