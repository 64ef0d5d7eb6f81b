// recipe.cpp — the training recipe of the `edgetune` tool: the values of the training options,
// by flag name ("epochs" -> "30"), and the TrainOptions they make.
//
// A run's recipe is layered: the built-in defaults, then (forget, class remove) the recipe that
// trained the committed head, stored as JSON in the database's meta (`cli.recipe`) when a
// training commits, then --recipe NAME's measured defaults, then the flags given. The budgets
// (--max-steps, --deadline-ms) belong to one run and are never stored.
#include <cmath>
#include <cstdio>

#include "cli.hpp"
#include "json.hpp"

namespace edgetune::cli {

const std::set<std::string> train_options = {
    "recipe",       "epochs",          "batch",       "lr",        "optimizer", "momentum",
    "weight-decay", "schedule",        "warmup",      "min-lr",    "clip",      "balance",
    "base-pull",    "label-smoothing", "validation",  "new-share", "unknown",   "tolerance",
    "replay",       "max-steps",       "deadline-ms", "seed"};

const char* const train_help =
    "  --recipe NAME        measured defaults for the options below (flags given override):\n"
    "                         enroll       a few shots of new classes next to many stored\n"
    "                                      ones: 30 epochs, Adam 1e-3, class-balanced loss,\n"
    "                                      reservoir:200 replay, no validation split\n"
    "                                      (examples/enroll)\n"
    "                         incremental  sessions that bring new classes: 10 epochs, Adam\n"
    "                                      1e-3, class-balanced, reservoir:200, no validation\n"
    "                                      split (examples/replay)\n"
    "                         keyboard     next-word heads over a vocabulary: 4 epochs, batch\n"
    "                                      64, SGD 0.02 momentum 0.9, reservoir:8000, seed 7\n"
    "                                      (examples/keyboard)\n"
    "  --epochs N           passes over the training set (default 10)\n"
    "  --batch N            samples per step (default 32)\n"
    "  --optimizer KIND     adam (default), adamw or sgd\n"
    "  --lr RATE            learning rate (default: chosen from the head: Adam 1e-3 on up to\n"
    "                       100 classes, x 3/T on a prototype head; a wider head trains with\n"
    "                       SGD 5e-3 momentum 0.9 instead; sgd 1e-2)\n"
    "  --momentum M         sgd momentum (default 0)\n"
    "  --weight-decay W     adam/sgd: L2 (default 0); adamw: decoupled (default 0.01)\n"
    "  --schedule KIND      constant (default) | cosine[:STEPS] (to --min-lr over STEPS, by\n"
    "                       default epochs x stored samples / batch) | step:N[:GAMMA] (lr x\n"
    "                       GAMMA, default 0.1, every N steps) | exp:GAMMA (lr x GAMMA a step)\n"
    "  --warmup N           linear warmup over the first N steps, from lr/10 (default 0)\n"
    "  --min-lr RATE        the cosine schedule's final lr (default 0)\n"
    "  --clip NORM          clip the gradient's global norm to NORM (default 0: off)\n"
    "  --balance on|off     class-balanced loss: weights by inverse class frequency, so a few\n"
    "                       new shots count next to many stored samples (default: on up to\n"
    "                       100 classes, off for wider heads)\n"
    "  --base-pull X        L2 pull of strength X toward the base head's weights (default 0)\n"
    "  --label-smoothing X  in [0, 1) (default 0)\n"
    "  --validation F       share of each class held out for the validation guard (default\n"
    "                       0.2; classes with < 5 samples keep all)\n"
    "  --new-share S        every batch holds at least this share of new samples, in [0, 1)\n"
    "                       (default 0.05)\n"
    "  --unknown MODE       off (default) | eer | far:F (a target false-accept rate in (0, 1)):\n"
    "                       calibrate `unknown` on held-out samples; predict then answers it\n"
    "  --tolerance T        the guard rolls back a head whose validation accuracy is lower by\n"
    "                       more than T whose loss is not lower (default 0.02)\n"
    "  --replay POLICY      all (default) | reservoir:N (new + N older samples)\n"
    "                       | balanced:N (new + up to N older samples per class) | none\n"
    "  --max-steps N        stop after N steps (0 = no limit; not part of the recipe)\n"
    "  --deadline-ms MS     stop after MS milliseconds (0 = none; not part of the recipe)\n"
    "  --seed N             shuffling and replay draws (default 0)\n";

namespace {

// The flags that are a run's budget, not part of its recipe.
bool is_budget(const std::string& name) {
    return name == "max-steps" || name == "deadline-ms" || name == "recipe";
}

const Recipe& named_recipe(const std::string& name) {
    // enroll and incremental differ in the epochs only (examples/enroll, examples/replay).
    static const Recipe enroll = {{"epochs", "30"},      {"batch", "32"},
                                  {"optimizer", "adam"}, {"lr", "0.001"},
                                  {"balance", "on"},     {"replay", "reservoir:200"},
                                  {"validation", "0"}};
    static const std::map<std::string, Recipe> recipes = [] {
        std::map<std::string, Recipe> m;
        m["enroll"] = enroll;
        m["incremental"] = enroll;
        m["incremental"]["epochs"] = "10";
        m["keyboard"] = {{"epochs", "4"}, {"batch", "64"},     {"optimizer", "sgd"},
                         {"lr", "0.02"},  {"momentum", "0.9"}, {"replay", "reservoir:8000"},
                         {"seed", "7"}};
        return m;
    }();
    const auto it = recipes.find(name);
    if (it == recipes.end())
        throw UsageError("--recipe: expected enroll, incremental or keyboard, got '" + name + "'");
    return it->second;
}

std::optional<std::string> value(const Recipe& r, const std::string& name) {
    const auto it = r.find(name);
    return it == r.end() ? std::nullopt : std::optional<std::string>(it->second);
}

std::int64_t int_value(const Recipe& r, const std::string& name, std::int64_t fallback,
                       std::int64_t min, std::int64_t max = INT64_MAX) {
    return int_of(name, value(r, name), fallback, min, max);
}

float float_value(const Recipe& r, const std::string& name, float fallback,
                  float below = INFINITY) {
    const float v = float_of(name, value(r, name), fallback);
    if (!(v < below))
        throw UsageError("--" + name + " = " + *value(r, name) + " must be < " +
                         json_number(static_cast<double>(below)));
    return v;
}

Replay parse_replay(const std::string& text) {
    if (text == "all") return Replay::all();
    if (text == "none") return Replay::none();
    const auto colon = text.find(':');
    const std::string kind = text.substr(0, colon);
    const std::int64_t size =
        colon == std::string::npos ? 0 : to_int(text.substr(colon + 1)).value_or(0);
    if ((kind == "reservoir" || kind == "balanced") && size <= 0)
        throw UsageError("--replay " + kind + ":N needs a sample count N > 0, got '" + text + "'");
    if (kind == "reservoir") return Replay::reservoir(size);
    if (kind == "balanced") return Replay::class_balanced(size);
    throw UsageError("--replay: expected all, none, reservoir:N or balanced:N, got '" + text + "'");
}

OptimizerSpec parse_optimizer(const Recipe& r) {
    const std::string kind = value(r, "optimizer").value_or("adam");
    const float decay = float_value(r, "weight-decay", kind == "adamw" ? 0.01f : 0.0f);
    if (kind != "sgd" && value(r, "momentum"))
        throw UsageError("--momentum applies to --optimizer sgd only (the optimizer is " + kind +
                         ")");
    // No --lr: the library chooses it from the head (auto_lr, TrainOptions::optimizer).
    if (kind == "adam")
        return AdamOptions{.lr = float_value(r, "lr", auto_lr), .weight_decay = decay};
    if (kind == "adamw")
        return AdamWOptions{.lr = float_value(r, "lr", auto_lr), .weight_decay = decay};
    if (kind == "sgd")
        return SgdOptions{.lr = float_value(r, "lr", auto_lr),
                          .momentum = float_value(r, "momentum", 0.0f),
                          .weight_decay = decay};
    throw UsageError("--optimizer: expected adam, adamw or sgd, got '" + kind + "'");
}

// --schedule and --warmup. `steps`: the cosine's default length.
ScheduleSpec parse_schedule(const Recipe& r, std::int64_t steps) {
    const std::string text = value(r, "schedule").value_or("constant");
    const auto colon = text.find(':');
    const std::string kind = text.substr(0, colon);
    const std::string rest = colon == std::string::npos ? "" : text.substr(colon + 1);
    const auto colon2 = rest.find(':');
    const auto first = to_int(rest.substr(0, colon2));
    using Then = std::variant<ConstantSchedule, StepSchedule, ExponentialSchedule, CosineSchedule>;
    Then then;
    if (kind == "constant" && rest.empty()) {
        then = ConstantSchedule{};
    } else if (kind == "cosine" && (rest.empty() || (first && *first > 0))) {
        then =
            CosineSchedule{.total_steps = rest.empty() ? std::max<std::int64_t>(steps, 1) : *first,
                           .min_lr = float_value(r, "min-lr", 0.0f)};
    } else if (kind == "step" && first && *first > 0) {
        const auto gamma = colon2 == std::string::npos ? std::optional<float>(0.1f)
                                                       : to_float(rest.substr(colon2 + 1));
        if (!gamma || !(*gamma > 0.0f))
            throw UsageError("--schedule step:N:GAMMA needs GAMMA > 0, got '" + text + "'");
        then = StepSchedule{.step_size = *first, .gamma = *gamma};
    } else if (kind == "exp" && to_float(rest) && *to_float(rest) > 0.0f) {
        then = ExponentialSchedule{.gamma = *to_float(rest)};
    } else {
        throw UsageError(
            "--schedule: expected constant, cosine[:STEPS], step:N[:GAMMA] or "
            "exp:GAMMA, got '" +
            text + "'");
    }
    const std::int64_t warmup = int_value(r, "warmup", 0, 0);
    if (warmup > 0) return WarmupSchedule{.warmup_steps = warmup, .then = then};
    return std::visit([](const auto& s) -> ScheduleSpec { return s; }, then);
}

Unknown parse_unknown(const Recipe& r) {
    const std::string text = value(r, "unknown").value_or("off");
    if (text == "off") return Unknown::off();
    if (text == "eer") return Unknown::at_equal_error();
    if (text.rfind("far:", 0) == 0) {
        const auto far = to_float(text.substr(4));
        if (far && *far > 0.0f && *far < 1.0f) return Unknown::at_far(*far);
    }
    throw UsageError("--unknown: expected off, eer or far:F with F in (0, 1), got '" + text + "'");
}

}  // namespace

Recipe resolve_recipe(const Args& args, const std::optional<std::string>& stored) {
    Recipe r;
    if (stored && !stored->empty()) {
        try {
            const Json j = parse_json(*stored);
            for (const auto& [name, v] : j.object)
                if (v.kind == Json::Kind::string && train_options.count(name) && !is_budget(name))
                    r[name] = v.string;
        } catch (const CorruptData& e) {
            throw Failure(std::string("the stored training recipe is unreadable: ") + e.what());
        }
    }
    // Another optimizer than the stored one takes none of the stored one's settings (an SGD
    // lr or momentum means nothing to Adam).
    const std::string stored_optimizer = r.count("optimizer") ? r["optimizer"] : "adam";
    if (const auto optimizer = args.get("optimizer"); optimizer && *optimizer != stored_optimizer)
        for (const char* key : {"lr", "momentum", "weight-decay"}) r.erase(key);
    if (const auto name = args.get("recipe")) {
        for (const char* key : {"optimizer", "lr", "momentum", "weight-decay"}) r.erase(key);
        for (const auto& [k, v] : named_recipe(*name)) r[k] = v;
    }
    for (const std::string& name : train_options)
        if (const auto v = args.get(name)) r[name] = *v;
    return r;
}

// A flag not given takes the library's default (TrainOptions, personalize.hpp).
TrainOptions train_options_of(const Recipe& r, std::int64_t stored_samples) {
    const TrainOptions defaults;
    TrainOptions o;
    o.epochs = static_cast<int>(int_value(r, "epochs", defaults.epochs, 0, 1000000));
    o.batch = int_value(r, "batch", defaults.batch, 1);
    o.max_steps = int_value(r, "max-steps", 0, 0);
    o.deadline = std::chrono::milliseconds(int_value(r, "deadline-ms", 0, 0));
    o.seed = static_cast<std::uint64_t>(int_value(r, "seed", 0, 0));
    o.optimizer = parse_optimizer(r);
    const std::int64_t per_epoch = (stored_samples + o.batch - 1) / o.batch;
    o.schedule = parse_schedule(r, per_epoch * o.epochs);
    o.clip_norm = float_value(r, "clip", 0.0f);
    if (const auto balance = value(r, "balance")) {
        if (*balance != "on" && *balance != "off")
            throw UsageError("--balance: expected on or off, got '" + *balance + "'");
        o.balance_classes = *balance == "on";
    }
    o.base_pull = float_value(r, "base-pull", 0.0f);
    o.label_smoothing = float_value(r, "label-smoothing", 0.0f, 1.0f);
    o.new_share = float_value(r, "new-share", defaults.new_share, 1.0f);
    o.tolerance = float_value(r, "tolerance", defaults.tolerance);
    o.unknown = parse_unknown(r);
    o.replay = parse_replay(value(r, "replay").value_or("all"));
    return o;
}

float validation_of(const Recipe& r) {
    return float_value(r, "validation", 0.2f, 1.0f);
}

std::string recipe_json(const Recipe& r) {
    std::string out = "{";
    for (const auto& [name, v] : r) {
        if (is_budget(name)) continue;
        out += (out.size() > 1 ? "," : "") + json_string(name) + ":" + json_string(v);
    }
    return out + "}";
}

}  // namespace edgetune::cli
