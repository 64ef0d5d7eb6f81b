// optimizer.cpp — Optimizer (groups, state, validation), Sgd, Adam and AdamW.
//
// Each update is one or two Eigen array expressions per parameter: no per-element branches,
// no temporaries (branches are per parameter: weight decay on/off, first step, amsgrad).
// Scalar coefficients (bias corrections, 1 - lr * wd) are computed in double and rounded to
// float once, as torch.optim does with its Python-float hyperparameters.
#include <algorithm>
#include <cmath>
#include <utility>

#include "cpu.hpp"
#include "detail/adam_kernel.hpp"
#include "detail/format.hpp"
#include "optim.hpp"

namespace edgetune {

using detail::num;
using detail::require;
using detail::require_nonneg;

namespace {

std::vector<ParamGroup> one_group(std::vector<Var> params) {
    std::vector<ParamGroup> groups(1);
    groups[0].params = std::move(params);
    return groups;
}

void validate_adam(const std::string& who, const AdamOptions& o) {
    require_nonneg(who, "lr", o.lr);
    require(o.beta1 >= 0.0f && o.beta1 < 1.0f, who, "beta1", o.beta1, "outside [0, 1)");
    require(o.beta2 >= 0.0f && o.beta2 < 1.0f, who, "beta2", o.beta2, "outside [0, 1)");
    require(o.eps > 0.0f, who, "eps", o.eps, "must be > 0");
    require(std::isfinite(o.eps), who, "eps", o.eps, "must be finite");
    require_nonneg(who, "weight_decay", o.weight_decay);
}

const SgdOptions& validated(const SgdOptions& o) {
    const std::string who = "Sgd";
    require_nonneg(who, "lr", o.lr);
    require_nonneg(who, "momentum", o.momentum);
    require(o.dampening >= 0.0f && o.dampening <= 1.0f, who, "dampening", o.dampening,
            "outside [0, 1]");
    require_nonneg(who, "weight_decay", o.weight_decay);
    if (o.nesterov && o.momentum == 0.0f)
        throw InvalidArgument(
            "[Sgd] nesterov requires momentum > 0 (momentum = " + num(o.momentum) + ")");
    if (o.nesterov && o.dampening != 0.0f)
        throw InvalidArgument(
            "[Sgd] nesterov requires dampening = 0 (dampening = " + num(o.dampening) + ")");
    return o;
}

const AdamOptions& validated(const AdamOptions& o, const std::string& who) {
    validate_adam(who, o);
    return o;
}

AdamOptions as_adam(const AdamWOptions& o) {
    return {.lr = o.lr,
            .beta1 = o.beta1,
            .beta2 = o.beta2,
            .eps = o.eps,
            .weight_decay = o.weight_decay,
            .amsgrad = o.amsgrad};
}

// p [r x c] -= lr * (d_p or its momentum form); d_p is an array expression of p's shape
// (the gradient, plus weight_decay * p when decay is on). buf: the momentum buffer slot.
template <typename Dp>
void sgd_update(Matrix& p, const Dp& d_p, std::vector<Matrix>& slots, const SgdOptions& o,
                float lr) {
    if (o.momentum == 0.0f) {
        p.array() -= lr * d_p;
        return;
    }
    if (slots.empty()) {
        slots.emplace_back(d_p.matrix());  // torch: the first buffer is d_p, undampened
    } else {
        slots[0].array() = o.momentum * slots[0].array() + (1.0f - o.dampening) * d_p;
    }
    const Matrix& buf = slots[0];
    if (o.nesterov) {
        p.array() -= lr * (d_p + o.momentum * buf.array());
    } else {
        p.array() -= lr * buf.array();
    }
}

}  // namespace

// ---------------------------------------------------------------------------------------
// Optimizer

Optimizer::Optimizer(std::vector<ParamGroup> groups, float lr, float weight_decay, std::string name,
                     std::string kind, std::size_t slots_per_param)
    : name_(std::move(name)), kind_(std::move(kind)), slots_per_param_(slots_per_param) {
    require_nonneg(name_, "lr", lr);
    require_nonneg(name_, "weight_decay", weight_decay);
    for (std::size_t i = 0; i < groups.size(); ++i) {
        ParamGroup& pg = groups[i];
        const std::string prefix = "group " + std::to_string(i) + " ";
        if (pg.lr) require_nonneg(name_, prefix + "lr", *pg.lr);
        if (pg.weight_decay) require_nonneg(name_, prefix + "weight_decay", *pg.weight_decay);
        const std::size_t begin = params_.size();
        for (Var& p : pg.params) params_.push_back(std::move(p));
        groups_.push_back(
            {pg.lr.value_or(lr), pg.weight_decay.value_or(weight_decay), begin, params_.size()});
    }
    if (params_.empty()) throw InvalidArgument("[" + name_ + "] empty parameter list");

    // NOTE: addresses are used only to detect a parameter listed twice, never as state keys.
    std::vector<std::pair<const void*, std::size_t>> seen;
    for (std::size_t k = 0; k < params_.size(); ++k) {
        if (!params_[k].defined())
            throw InvalidArgument("[" + name_ + "] parameter " + std::to_string(k) +
                                  " is an empty Var");
        seen.emplace_back(params_[k].identity(), k);
    }
    std::sort(seen.begin(), seen.end());
    for (std::size_t i = 1; i < seen.size(); ++i)
        if (seen[i].first == seen[i - 1].first)
            throw InvalidArgument("[" + name_ + "] parameter " + std::to_string(seen[i].second) +
                                  " is also parameter " + std::to_string(seen[i - 1].second));
    slots_.resize(params_.size());
}

void Optimizer::step() {
    // Check every shape first so a bad gradient leaves all parameters untouched.
    for (std::size_t k = 0; k < params_.size(); ++k) {
        const Var& p = params_[k];
        if (p.has_grad() && (p.grad().rows() != p.rows() || p.grad().cols() != p.cols()))
            throw InvalidArgument("[" + name_ + "] parameter " + std::to_string(k) + " has shape " +
                                  shape_str(p.value()) + " but its gradient is " +
                                  shape_str(p.grad()));
    }
    ++step_;
    for (const Group& group : groups_)
        for (std::size_t k = group.begin; k < group.end; ++k)
            if (params_[k].has_grad()) update(k, group);
}

void Optimizer::zero_grad() noexcept {
    for (Var& p : params_) p.zero_grad();
}

void Optimizer::set_lr(float lr) {
    require_nonneg(name_, "lr", lr);
    for (Group& g : groups_) g.lr = lr;
}

void Optimizer::set_lr(std::size_t group, float lr) {
    if (group >= groups_.size())
        throw InvalidArgument("[" + name_ + "] set_lr: group " + std::to_string(group) +
                              " out of range for " + std::to_string(groups_.size()) + " groups");
    if (!detail::is_nonneg(lr)) require_nonneg(name_, "group " + std::to_string(group) + " lr", lr);
    groups_.at(group).lr = lr;
}

OptimizerState Optimizer::state() const {
    OptimizerState s;
    s.kind = kind_;
    s.step = step_;
    for (const Group& g : groups_) s.lrs.push_back(g.lr);
    s.slots = slots_;
    return s;
}

void Optimizer::load_state(const OptimizerState& s) {
    const std::string who = "[" + name_ + "] load_state: ";
    if (s.kind != kind_)
        throw InvalidArgument(who + "state kind '" + s.kind + "' does not match '" + kind_ + "'");
    if (s.step < 0) throw InvalidArgument(who + "step = " + std::to_string(s.step) + " < 0");
    if (s.lrs.size() != groups_.size())
        throw InvalidArgument(who + "state has " + std::to_string(s.lrs.size()) +
                              " learning rates for " + std::to_string(groups_.size()) +
                              " parameter groups");
    for (std::size_t i = 0; i < s.lrs.size(); ++i)
        require_nonneg(name_, "load_state: group " + std::to_string(i) + " lr", s.lrs[i]);
    if (s.slots.size() != params_.size())
        throw InvalidArgument(who + "state has " + std::to_string(s.slots.size()) +
                              " parameters, optimizer has " + std::to_string(params_.size()));
    for (std::size_t k = 0; k < params_.size(); ++k) {
        const std::size_t n = s.slots[k].size();
        if (n != 0 && n != slots_per_param_)
            throw InvalidArgument(who + "parameter " + std::to_string(k) + " has " +
                                  std::to_string(n) + " state buffers, expected " +
                                  std::to_string(slots_per_param_) + " (or 0)");
        for (const Matrix& buf : s.slots[k])
            if (buf.rows() != params_[k].rows() || buf.cols() != params_[k].cols())
                throw InvalidArgument(who + "parameter " + std::to_string(k) + " has shape " +
                                      shape_str(params_[k].value()) + " but the state holds " +
                                      shape_str(buf));
    }
    // Validated: commit.
    step_ = s.step;
    for (std::size_t i = 0; i < groups_.size(); ++i) groups_[i].lr = s.lrs[i];
    slots_ = s.slots;
    on_load();
}

// ---------------------------------------------------------------------------------------
// Sgd

Sgd::Sgd(std::vector<Var> params, const SgdOptions& opts)
    : Sgd(one_group(std::move(params)), opts) {}

Sgd::Sgd(std::vector<ParamGroup> groups, const SgdOptions& opts)
    : Optimizer(std::move(groups), validated(opts).lr, opts.weight_decay, "Sgd", "sgd",
                opts.momentum > 0.0f ? 1 : 0),
      opts_(opts) {}

void Sgd::update(std::size_t k, const Group& group) {
    Matrix& p = params_[k].value_mut();
    const Matrix& g = params_[k].grad();
    if (group.weight_decay != 0.0f) {
        sgd_update(p, g.array() + group.weight_decay * p.array(), slots_[k], opts_, group.lr);
    } else {
        sgd_update(p, g.array(), slots_[k], opts_, group.lr);
    }
}

// ---------------------------------------------------------------------------------------
// Adam, AdamW

Adam::Adam(std::vector<Var> params, const AdamOptions& opts)
    : Adam(one_group(std::move(params)), opts) {}

Adam::Adam(std::vector<ParamGroup> groups, const AdamOptions& opts)
    : Adam(std::move(groups), opts, false, "Adam", "adam") {}

Adam::Adam(std::vector<ParamGroup> groups, const AdamOptions& opts, bool decoupled,
           std::string name, std::string kind)
    : Optimizer(std::move(groups), validated(opts, name).lr, opts.weight_decay, name,
                std::move(kind), opts.amsgrad ? 3 : 2),
      opts_(opts),
      decoupled_(decoupled),
      param_steps_(params_.size(), 0) {}

void Adam::on_load() {
    for (std::size_t k = 0; k < params_.size(); ++k)
        param_steps_[k] = slots_[k].empty() ? 0 : step_;
}

void Adam::update(std::size_t k, const Group& group) {
    Matrix& p = params_[k].value_mut();
    const Matrix& g = params_[k].grad();
    std::vector<Matrix>& slots = slots_[k];
    if (slots.empty()) slots.assign(slots_per_param_, Matrix::Zero(p.rows(), p.cols()));
    Matrix& m = slots[0];
    Matrix& v = slots[1];
    const std::int64_t t = ++param_steps_[k];

    // Weight decay: AdamW shrinks the weights; Adam adds the L2 gradient (p before update).
    float l2 = 0.0f;
    if (decoupled_) {
        if (group.weight_decay != 0.0f)
            p *= static_cast<float>(1.0 - static_cast<double>(group.lr) * group.weight_decay);
    } else {
        l2 = group.weight_decay;
    }
    const double bias1 = 1.0 - std::pow(static_cast<double>(opts_.beta1), static_cast<double>(t));
    const double bias2 = 1.0 - std::pow(static_cast<double>(opts_.beta2), static_cast<double>(t));
    adam_step({.p = p.data(),
               .m = m.data(),
               .v = v.data(),
               .v_max = opts_.amsgrad ? slots[2].data() : nullptr,
               .g = g.data(),
               .n = p.size(),
               .beta1 = opts_.beta1,
               .beta2 = opts_.beta2,
               .l2 = l2,
               .step_size = static_cast<float>(group.lr / bias1),
               .bias2_sqrt = static_cast<float>(std::sqrt(bias2)),
               .eps = opts_.eps});
}

void adam_step(const AdamStepArgs& args) {
    static const auto choice = EDGETUNE_PICK_KERNEL(adam_step);
    choice.fn(args);
}

AdamW::AdamW(std::vector<Var> params, const AdamWOptions& opts)
    : AdamW(one_group(std::move(params)), opts) {}

AdamW::AdamW(std::vector<ParamGroup> groups, const AdamWOptions& opts)
    : Adam(std::move(groups), as_adam(opts), true, "AdamW", "adamw") {}

// ---------------------------------------------------------------------------------------
// Factory

std::unique_ptr<Optimizer> make_optimizer(const OptimizerSpec& spec,
                                          std::vector<ParamGroup> groups) {
    struct Make {
        std::vector<ParamGroup>& groups;
        std::unique_ptr<Optimizer> operator()(const SgdOptions& o) {
            return std::make_unique<Sgd>(std::move(groups), o);
        }
        std::unique_ptr<Optimizer> operator()(const AdamOptions& o) {
            return std::make_unique<Adam>(std::move(groups), o);
        }
        std::unique_ptr<Optimizer> operator()(const AdamWOptions& o) {
            return std::make_unique<AdamW>(std::move(groups), o);
        }
    };
    return std::visit(Make{groups}, spec);
}

std::unique_ptr<Optimizer> make_optimizer(const OptimizerSpec& spec, std::vector<Var> params) {
    return make_optimizer(spec, one_group(std::move(params)));
}

}  // namespace edgetune
