// schedule.cpp — learning-rate schedules: pure position -> lr maps, and ReduceLROnPlateau.
//
// Position-driven schedules are closed forms in double (torch's chainable forms agree to
// rounding), so a schedule restored from its position gives the same lrs as one never stopped.
#include <algorithm>
#include <cmath>
#include <numbers>

#include "detail/format.hpp"
#include "optim.hpp"

namespace edgetune {

using detail::require;
using detail::require_nonneg;

namespace {

void require_positive_steps(std::string_view who, const char* what, std::int64_t v) {
    if (v <= 0)
        throw InvalidArgument("[" + std::string(who) + "] " + what + " = " + std::to_string(v) +
                              " must be > 0");
}
void require_nonneg_steps(std::string_view who, const char* what, std::int64_t v) {
    if (v < 0)
        throw InvalidArgument("[" + std::string(who) + "] " + what + " = " + std::to_string(v) +
                              " must be >= 0");
}
void require_gamma(std::string_view who, float gamma) {
    require(gamma > 0.0f, who, "gamma", gamma, "must be > 0");
    require(std::isfinite(gamma), who, "gamma", gamma, "must be finite");
}

void validate(const ConstantSchedule&) {}
void validate(const StepSchedule& s) {
    require_positive_steps("StepSchedule", "step_size", s.step_size);
    require_gamma("StepSchedule", s.gamma);
}
void validate(const ExponentialSchedule& s) {
    require_gamma("ExponentialSchedule", s.gamma);
}
void validate(const CosineSchedule& s) {
    require_positive_steps("CosineSchedule", "total_steps", s.total_steps);
    require_nonneg("CosineSchedule", "min_lr", s.min_lr);
}
void validate(const WarmupSchedule& s) {
    require_nonneg_steps("WarmupSchedule", "warmup_steps", s.warmup_steps);
    require(s.start_factor >= 0.0f && s.start_factor <= 1.0f, "WarmupSchedule", "start_factor",
            s.start_factor, "outside [0, 1]");
    std::visit([](const auto& then) { validate(then); }, s.then);
}
void validate(const PlateauSchedule& s) {
    require(s.factor > 0.0f && s.factor < 1.0f, "PlateauSchedule", "factor", s.factor,
            "outside (0, 1)");
    require_nonneg_steps("PlateauSchedule", "patience", s.patience);
    require_nonneg("PlateauSchedule", "threshold", s.threshold);
    require_nonneg_steps("PlateauSchedule", "cooldown", s.cooldown);
    require_nonneg("PlateauSchedule", "min_lr", s.min_lr);
}

// lr at position t >= 0 for base lr `base`, in double.
double lr_of(const ConstantSchedule&, double base, std::int64_t) {
    return base;
}
double lr_of(const StepSchedule& s, double base, std::int64_t t) {
    return base * std::pow(static_cast<double>(s.gamma), static_cast<double>(t / s.step_size));
}
double lr_of(const ExponentialSchedule& s, double base, std::int64_t t) {
    return base * std::pow(static_cast<double>(s.gamma), static_cast<double>(t));
}
double lr_of(const CosineSchedule& s, double base, std::int64_t t) {
    const double lo = s.min_lr;
    if (t >= s.total_steps) return lo;
    const double phase =
        std::numbers::pi * static_cast<double>(t) / static_cast<double>(s.total_steps);
    return lo + (base - lo) * (1.0 + std::cos(phase)) / 2.0;
}
double lr_of(const WarmupSchedule& s, double base, std::int64_t t) {
    if (t < s.warmup_steps) {
        const double f = s.start_factor;
        return base *
               (f + (1.0 - f) * static_cast<double>(t) / static_cast<double>(s.warmup_steps));
    }
    return std::visit([&](const auto& then) { return lr_of(then, base, t - s.warmup_steps); },
                      s.then);
}
double lr_of(const PlateauSchedule&, double, std::int64_t) {
    throw InvalidArgument("[schedule_lr] PlateauSchedule depends on metrics, not on the position");
}

}  // namespace

float schedule_lr(const ScheduleSpec& spec, float base_lr, std::int64_t step) {
    if (step < 0)
        throw InvalidArgument("[schedule_lr] step = " + std::to_string(step) + " must be >= 0");
    require_nonneg("schedule_lr", "base_lr", base_lr);
    return std::visit(
        [&](const auto& s) {
            validate(s);
            return static_cast<float>(lr_of(s, base_lr, step));
        },
        spec);
}

Schedule::Schedule(Optimizer& opt, ScheduleSpec spec) : opt_(&opt), spec_(std::move(spec)) {
    std::visit([](const auto& s) { validate(s); }, spec_);
    for (std::size_t g = 0; g < opt.num_groups(); ++g) state_.base_lrs.push_back(opt.lr(g));
    state_.lrs = state_.base_lrs;
    if (const auto* p = std::get_if<PlateauSchedule>(&spec_); p && p->maximize)
        state_.best = -std::numeric_limits<float>::infinity();
    apply();
}

void Schedule::step() {
    if (std::holds_alternative<PlateauSchedule>(spec_))
        throw InvalidArgument("[Schedule] PlateauSchedule needs a metric: call step(metric)");
    ++state_.step;
    apply();
}

void Schedule::step(float metric) {
    const auto* p = std::get_if<PlateauSchedule>(&spec_);
    if (!p) {
        step();
        return;
    }
    if (std::isnan(metric)) throw InvalidArgument("[PlateauSchedule] metric = nan");
    ++state_.step;
    // torch ReduceLROnPlateau, threshold_mode 'rel', in double as torch does.
    const double best = state_.best;
    const bool better =
        p->maximize ? metric > best * (1.0 + p->threshold) : metric < best * (1.0 - p->threshold);
    if (better) {
        state_.best = metric;
        state_.bad_steps = 0;
    } else {
        ++state_.bad_steps;
    }
    if (state_.cooldown_left > 0) {
        --state_.cooldown_left;
        state_.bad_steps = 0;
    }
    if (state_.bad_steps > p->patience) {
        for (float& lr : state_.lrs) {
            const double reduced =
                std::max(static_cast<double>(lr) * p->factor, static_cast<double>(p->min_lr));
            if (lr - reduced > 1e-8) lr = static_cast<float>(reduced);  // torch's eps
        }
        state_.cooldown_left = p->cooldown;
        state_.bad_steps = 0;
    }
    apply();
}

float Schedule::lr_at(std::int64_t step) const {
    if (std::holds_alternative<PlateauSchedule>(spec_)) return state_.lrs.front();
    return schedule_lr(spec_, state_.base_lrs.front(), step);
}

void Schedule::load_state(const ScheduleState& s) {
    const std::size_t groups = opt_->num_groups();
    if (s.base_lrs.size() != groups || s.lrs.size() != groups)
        throw InvalidArgument("[Schedule] load_state: state has " +
                              std::to_string(s.base_lrs.size()) + " base lrs and " +
                              std::to_string(s.lrs.size()) + " lrs for " + std::to_string(groups) +
                              " parameter groups");
    if (s.step < 0 || s.bad_steps < 0 || s.cooldown_left < 0)
        throw InvalidArgument("[Schedule] load_state: negative step (" + std::to_string(s.step) +
                              "), bad_steps (" + std::to_string(s.bad_steps) +
                              ") or cooldown_left (" + std::to_string(s.cooldown_left) + ")");
    for (std::size_t g = 0; g < groups; ++g) {
        require_nonneg("Schedule", "load_state: base lr " + std::to_string(g), s.base_lrs[g]);
        require_nonneg("Schedule", "load_state: lr " + std::to_string(g), s.lrs[g]);
    }
    if (std::isnan(s.best)) throw InvalidArgument("[Schedule] load_state: best = nan");
    state_ = s;
    apply();
}

std::unique_ptr<Schedule> make_schedule(const ScheduleSpec& spec, Optimizer& opt) {
    return std::make_unique<Schedule>(opt, spec);
}

// Sets the optimizer's lrs for the current position (PlateauSchedule: the lrs it holds).
void Schedule::apply() {
    if (!std::holds_alternative<PlateauSchedule>(spec_))
        for (std::size_t g = 0; g < state_.lrs.size(); ++g)
            state_.lrs[g] = schedule_lr(spec_, state_.base_lrs[g], state_.step);
    for (std::size_t g = 0; g < state_.lrs.size(); ++g) opt_->set_lr(g, state_.lrs[g]);
}

}  // namespace edgetune
