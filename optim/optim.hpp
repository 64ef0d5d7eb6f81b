// optim.hpp — the public contract of edgetune's optimizers, learning-rate schedules and
// gradient clipping.
//
// Optimizers update a list of parameter Vars in place from their gradients. The update rules
// are those of torch.optim 1.13 (SGD, Adam, AdamW), so the same hyperparameters mean the same
// thing; tests/test_optim.cpp checks them against numbers from bench/peers/optim_reference.py.
// Parameters without a gradient this step (!has_grad()) are skipped, as in PyTorch.
//
// State is plain data (OptimizerState, ScheduleState), index-aligned with the parameter list
// and never keyed by address: a run resumed from it continues bit-identically.
//
// Limits: dense float parameters only; single-threaded (one optimizer per thread); no
// `maximize`, no sparse gradients. Adam and AdamW update each parameter through one fused
// element kernel (adam_kernel.cpp, chosen per CPU); SGD is one Eigen expression per update.
#pragma once

#include <cstddef>
#include <cstdint>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "autograd.hpp"
#include "error.hpp"
#include "matrix.hpp"

namespace EDGETUNE_API edgetune {

// ---------------------------------------------------------------------------------------
// Options. Invalid values throw InvalidArgument naming the option and the value, e.g.
// "[Adam] beta2 = 1.5 outside [0, 1)".

// torch.optim.SGD. With momentum m and dampening d, the buffer b starts as the first
// gradient and then b = m b + (1 - d) g; Nesterov uses g + m b instead of b.
struct SgdOptions {
    float lr = 0.01f;           // >= 0
    float momentum = 0.0f;      // >= 0
    float dampening = 0.0f;     // in [0, 1]
    float weight_decay = 0.0f;  // >= 0; coupled L2: g += weight_decay * param
    bool nesterov = false;      // requires momentum > 0 and dampening == 0
};

// torch.optim.Adam. weight_decay is COUPLED L2 (added to the gradient before the moments).
struct AdamOptions {
    float lr = 1e-3f;           // >= 0
    float beta1 = 0.9f;         // in [0, 1)
    float beta2 = 0.999f;       // in [0, 1)
    float eps = 1e-8f;          // > 0
    float weight_decay = 0.0f;  // >= 0
    bool amsgrad = false;       // normalize by the running max of the second moment
};

// torch.optim.AdamW. weight_decay is DECOUPLED: param *= 1 - lr * weight_decay before the
// Adam update, and the gradient moments never see it.
struct AdamWOptions {
    float lr = 1e-3f;
    float beta1 = 0.9f;
    float beta2 = 0.999f;
    float eps = 1e-8f;
    float weight_decay = 1e-2f;  // PyTorch's default for AdamW
    bool amsgrad = false;
};

// A subset of the parameters with its own learning rate and weight decay (unset: the
// optimizer's option). E.g. a head at 1e-3 and the last backbone layer at 1e-4.
struct ParamGroup {
    std::vector<Var> params = {};
    std::optional<float> lr = std::nullopt;
    std::optional<float> weight_decay = std::nullopt;
};

// ---------------------------------------------------------------------------------------
// Optimizer interface.
//
// Invariants: params() is the groups' parameters concatenated in order; it never changes.
// Slot buffers (momentum, moments) are index-aligned with params(), have the parameter's
// shape, and are allocated once, at a parameter's first update; step() allocates nothing
// after that.
class Optimizer {
public:
    Optimizer(const Optimizer&) = delete;
    Optimizer& operator=(const Optimizer&) = delete;
    virtual ~Optimizer() = default;

    // One update of every parameter that has a gradient. Throws InvalidArgument if a
    // gradient's shape differs from its parameter's.
    void step();
    // Drops every parameter's gradient (storage is kept for reuse).
    void zero_grad() noexcept;

    // Group 0's learning rate / every group's learning rate.
    float lr() const { return groups_.front().lr; }
    void set_lr(float lr);
    // One group's learning rate (schedules set each group from its own base rate).
    float lr(std::size_t group) const { return groups_.at(group).lr; }
    void set_lr(std::size_t group, float lr);
    float weight_decay(std::size_t group) const { return groups_.at(group).weight_decay; }
    std::size_t num_groups() const { return groups_.size(); }

    const std::vector<Var>& params() const { return params_; }
    // Number of step() calls applied (also restored by load_state).
    std::int64_t step_count() const { return step_; }
    // "sgd", "adam", "adamw": OptimizerState::kind.
    const std::string& kind() const { return kind_; }

    // A copy of the state as plain data (see OptimizerState in matrix.hpp).
    OptimizerState state() const;
    // Restores a state taken from an optimizer of the same kind and options over parameters
    // of the same shapes. Throws InvalidArgument (and changes nothing) on a different kind,
    // parameter count, group count, buffer count or shape; the message names the parameter
    // index and both shapes.
    void load_state(const OptimizerState& state);

protected:
    // Validates groups (non-empty, defined, no parameter twice) and their lr/weight decay.
    Optimizer(std::vector<ParamGroup> groups, float lr, float weight_decay, std::string name,
              std::string kind, std::size_t slots_per_param);

    struct Group {
        float lr;
        float weight_decay;
        std::size_t begin, end;  // params_[begin, end)
    };
    // Updates parameter k (which has a gradient of its shape) with its group's settings.
    virtual void update(std::size_t k, const Group& group) = 0;
    // Called after load_state() replaced slots_ and step_.
    virtual void on_load() {}

    std::vector<Var> params_;
    std::vector<Group> groups_;
    std::vector<std::vector<Matrix>> slots_;  // [param][buffer]; empty until the first update
    std::int64_t step_ = 0;
    std::string name_;  // "Sgd", "Adam", "AdamW": the prefix of error messages
    std::string kind_;
    std::size_t slots_per_param_;
};

// Stochastic gradient descent with optional (Nesterov) momentum, dampening and L2 decay.
// Slots: {momentum buffer} when momentum > 0, none otherwise.
class Sgd : public Optimizer {
public:
    explicit Sgd(std::vector<Var> params, const SgdOptions& opts = {});
    Sgd(std::vector<ParamGroup> groups, const SgdOptions& opts = {});
    const SgdOptions& options() const { return opts_; }

private:
    void update(std::size_t k, const Group& group) override;
    SgdOptions opts_;
};

// Adam with bias correction and optional AMSGrad; weight decay is coupled L2 (see AdamW).
// Slots: {m, v} or {m, v, v_max} with amsgrad.
// NOTE: as in PyTorch, each parameter counts its own steps for bias correction (a parameter
// skipped for lack of a gradient does not advance). OptimizerState holds one step count, so
// load_state sets every started parameter's count to it: exact whenever the started
// parameters received a gradient at every step since they started (the usual case).
class Adam : public Optimizer {
public:
    explicit Adam(std::vector<Var> params, const AdamOptions& opts = {});
    Adam(std::vector<ParamGroup> groups, const AdamOptions& opts = {});
    const AdamOptions& options() const { return opts_; }

protected:
    Adam(std::vector<ParamGroup> groups, const AdamOptions& opts, bool decoupled, std::string name,
         std::string kind);

private:
    void update(std::size_t k, const Group& group) override;
    void on_load() override;
    AdamOptions opts_;
    bool decoupled_;                         // AdamW: decay the weights, not the gradient
    std::vector<std::int64_t> param_steps_;  // per-parameter step counts
};

// AdamW: Adam with DECOUPLED weight decay (param *= 1 - lr * weight_decay, then Adam with no
// L2 term), Loshchilov & Hutter. Same slots as Adam.
class AdamW : public Adam {
public:
    explicit AdamW(std::vector<Var> params, const AdamWOptions& opts = {});
    AdamW(std::vector<ParamGroup> groups, const AdamWOptions& opts = {});
};

// Factory for callers that carry the choice as data: `.optimizer = AdamOptions{.lr = 1e-3f}`.
using OptimizerSpec = std::variant<SgdOptions, AdamOptions, AdamWOptions>;
std::unique_ptr<Optimizer> make_optimizer(const OptimizerSpec& spec, std::vector<Var> params);
std::unique_ptr<Optimizer> make_optimizer(const OptimizerSpec& spec,
                                          std::vector<ParamGroup> groups);

// ---------------------------------------------------------------------------------------
// Learning-rate schedules. A schedule maps a position t (the number of Schedule::step()
// calls, usually one per optimizer step) and a base lr to an lr. The base lr is each group's
// lr when the Schedule was created.

// lr = base.
struct ConstantSchedule {};
// lr = base * gamma^floor(t / step_size)  (torch StepLR).
struct StepSchedule {
    std::int64_t step_size = 1;  // > 0
    float gamma = 0.1f;          // > 0
};
// lr = base * gamma^t  (torch ExponentialLR).
struct ExponentialSchedule {
    float gamma = 0.99f;  // > 0
};
// lr = min_lr + (base - min_lr) (1 + cos(pi t / total_steps)) / 2 for t <= total_steps, then
// min_lr (torch CosineAnnealingLR(T_max, eta_min) up to T_max; PyTorch's would rise again).
struct CosineSchedule {
    std::int64_t total_steps = 1;  // > 0
    float min_lr = 0.0f;           // >= 0
};
// Linear warmup for `warmup_steps`, then `then` restarted at position 0:
// lr = base * (start_factor + (1 - start_factor) t / warmup_steps) for t < warmup_steps,
// then(t - warmup_steps) after (torch SequentialLR(LinearLR, then, milestones=[warmup])).
struct WarmupSchedule {
    std::int64_t warmup_steps = 1;  // >= 0
    float start_factor = 0.1f;      // in [0, 1]
    std::variant<ConstantSchedule, StepSchedule, ExponentialSchedule, CosineSchedule> then =
        ConstantSchedule{};
};
// Driven by a metric (torch ReduceLROnPlateau, threshold_mode 'rel'): when the metric has not
// improved on the best by a relative `threshold` for more than `patience` steps, every lr is
// multiplied by `factor` (not below min_lr), then `cooldown` steps pass before counting again.
struct PlateauSchedule {
    float factor = 0.1f;         // in (0, 1)
    std::int64_t patience = 10;  // >= 0
    float threshold = 1e-4f;     // >= 0
    std::int64_t cooldown = 0;   // >= 0
    float min_lr = 0.0f;         // >= 0
    bool maximize = false;       // true: higher metric is better (accuracy)
};

using ScheduleSpec = std::variant<ConstantSchedule, StepSchedule, ExponentialSchedule,
                                  CosineSchedule, WarmupSchedule, PlateauSchedule>;

// The lr of a position-driven schedule at position `step` (pure; computed in double).
// Throws InvalidArgument for PlateauSchedule (it depends on metrics, not on the position) or for
// invalid options.
float schedule_lr(const ScheduleSpec& spec, float base_lr, std::int64_t step);

// A schedule's position as plain data: restoring it continues the schedule exactly.
struct ScheduleState {
    std::int64_t step = 0;        // number of step() calls applied
    std::vector<float> base_lrs;  // per group: the lrs when the schedule was created
    std::vector<float> lrs;       // per group: the lrs currently set on the optimizer
    // PlateauSchedule only:
    float best = std::numeric_limits<float>::infinity();  // best metric (-inf if maximize)
    std::int64_t bad_steps = 0;                           // steps since the best
    std::int64_t cooldown_left = 0;
};

// Drives an optimizer's learning rates. The optimizer must outlive the schedule.
// Usage: opt.step(); sched.step();   (or sched.step(validation_loss) for PlateauSchedule)
class Schedule {
public:
    // Captures the optimizer's group lrs as base lrs and sets the lrs of position 0.
    // Throws InvalidArgument for invalid options.
    Schedule(Optimizer& opt, ScheduleSpec spec);

    // Advances one position and sets the optimizer's lrs. Throws for PlateauSchedule.
    void step();
    // PlateauSchedule: records one metric value and reduces the lrs on a plateau. Other schedules
    // ignore the metric and advance as step(). Throws InvalidArgument on a NaN metric.
    void step(float metric);

    // Group 0's lr at `step` (PlateauSchedule: the current lr, whatever `step`).
    float lr_at(std::int64_t step) const;
    const ScheduleSpec& spec() const { return spec_; }
    const ScheduleState& state() const { return state_; }
    // Restores a position taken from a schedule with the same spec over an optimizer with the
    // same number of groups, and sets the optimizer's lrs from it.
    void load_state(const ScheduleState& state);

private:
    void apply();
    Optimizer* opt_;  // not owned
    ScheduleSpec spec_;
    ScheduleState state_;
};

// Factory for callers that carry the schedule as data (`.schedule = CosineSchedule{...}`).
std::unique_ptr<Schedule> make_schedule(const ScheduleSpec& spec, Optimizer& opt);

// ---------------------------------------------------------------------------------------
// Gradient clipping (free functions over parameter lists; parameters without a gradient
// are ignored).

// Scales all gradients by max_norm / norm when the global L2 norm exceeds max_norm, so the
// clipped norm is max_norm. Returns the norm BEFORE clipping, accumulated in double.
// A non-finite norm is returned and the gradients are left unchanged (the caller decides:
// skip the step or roll back). Unlike torch.nn.utils.clip_grad_norm_, no 1e-6 is added to
// the norm. Throws InvalidArgument if max_norm < 0 or NaN.
float clip_grad_norm(const std::vector<Var>& params, float max_norm);

// Clamps every gradient element into [-clip_value, clip_value]. Throws InvalidArgument if
// clip_value < 0 or NaN.
void clip_grad_value(const std::vector<Var>& params, float clip_value);

}  // namespace edgetune
