// loop.cpp — the epoch loop of a training run, written as a loop of one plain step, and the
// evaluation of a head on rows of a Dataset (detail/training.hpp).
#include <algorithm>
#include <cmath>
#include <limits>
#include <span>
#include <type_traits>
#include <variant>

#include "detail/training.hpp"

namespace edgetune::detail {

namespace {

[[noreturn]] void fail(const char* op, const std::string& message) {
    throw InvalidArgument(std::string("[") + op + "] " + message);
}

// One batch gathered from the Dataset. x [n x F]; y [n] (classification); t, w [n x W]
// (regression targets and their per-sample weights); ce.sample_weights [n].
struct Batch {
    Matrix x, t, w;
    IdList y;
    CrossEntropyOptions ce;
    double weight = 0.0;  // sum of sample weight x class weight: 0 means the batch teaches nothing
};

void fill_batch(Batch& b, const Dataset& d, std::span<const std::size_t> rows, bool classifies) {
    const std::size_t len = rows.size();
    if (static_cast<std::size_t>(b.x.rows()) != len)
        b.x.resize(static_cast<Index>(len), d.features.cols());
    b.y.resize(len);
    b.ce.sample_weights.resize(len);
    if (!classifies) {
        b.t.resize(static_cast<Index>(len), d.targets.cols());
        b.w.resize(static_cast<Index>(len), d.targets.cols());
    }
    b.weight = 0.0;
    for (std::size_t i = 0; i < len; ++i) {
        const std::size_t r = rows[i];
        b.x.row(static_cast<Index>(i)) = d.features.row(static_cast<Index>(r));
        b.y[i] = d.labels[r];
        b.ce.sample_weights[i] = d.weights[r];
        b.weight +=
            static_cast<double>(d.weights[r]) *
            (b.ce.class_weights.empty() ? 1.0
                                        : b.ce.class_weights[static_cast<std::size_t>(b.y[i])]);
        if (!classifies) {
            b.t.row(static_cast<Index>(i)) = d.targets.row(static_cast<Index>(r));
            b.w.row(static_cast<Index>(i)).setConstant(d.weights[r]);
        }
    }
}

struct StepResult {
    float loss = 0.0f;  // the batch's loss without the base pull
    bool finite = true;
};

// zero grad, forward, loss, backward, clip, update. A non-finite total loss returns before
// backward: nothing is updated.
StepResult step(TrainLoop& loop, Head& head, const Batch& b, const LossTerms& terms,
                float clip_norm) {
    loop.optimizer->zero_grad();
    Var out = head.forward(b.x);
    // Regression: squared error weighted per sample, sum_i w_i |y_i - t_i|^2 / (W sum_i w_i).
    Var loss = head.spec().classifies()
                   ? cross_entropy(out, b.y, b.ce)
                   : scale(sum(mul(square(sub(out, Var(b.t))), Var(b.w))),
                           static_cast<float>(1.0 / (b.weight * static_cast<double>(b.t.cols()))));
    Var total = loss;
    if (terms.base_pull > 0.0f)
        for (std::size_t k = 0; k < loop.params.size(); ++k)
            total =
                edgetune::add(total, scale(sum(square(sub(loop.params[k], terms.base_params[k]))),
                                           0.5f * terms.base_pull));
    const StepResult r{.loss = loss.item(), .finite = std::isfinite(total.item())};
    if (!r.finite) return r;
    backward(total);
    if (clip_norm > 0.0f) clip_grad_norm(loop.params, clip_norm);
    loop.optimizer->step();
    return r;
}

std::chrono::milliseconds since(Clock::time_point start) {
    return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start);
}

// Why the loop must stop before the next step, if it must.
LoopStop check_budgets(const TrainLoop& loop, const TrainOptions& o, Clock::time_point start) {
    if (o.stop && o.stop->load()) return {LoopStop::Why::cancelled, ""};
    if (o.max_steps > 0 && loop.steps >= o.max_steps)
        return {LoopStop::Why::budget, "max_steps reached"};
    if (o.deadline.count() > 0 && since(start) >= o.deadline)
        return {LoopStop::Why::budget, "deadline reached"};
    return {};
}

}  // namespace

void validate_train_options(const TrainOptions& o) {
    const char* op = "train";
    if (o.epochs < 0) fail(op, "epochs = " + std::to_string(o.epochs) + " must be >= 0");
    if (o.max_steps < 0) fail(op, "max_steps = " + std::to_string(o.max_steps) + " must be >= 0");
    if (o.batch <= 0) fail(op, "batch = " + std::to_string(o.batch) + " must be > 0");
    if (!(o.new_share >= 0.0f && o.new_share < 1.0f))
        fail(op, "new_share = " + std::to_string(o.new_share) + " outside [0, 1)");
    if (o.resume_every < 0)
        fail(op, "resume_every = " + std::to_string(o.resume_every) + " must be >= 0");
    if (o.deadline.count() < 0) fail(op, "deadline must be >= 0");
    if (!(o.clip_norm >= 0.0f))
        fail(op, "clip_norm = " + std::to_string(o.clip_norm) + " must be >= 0");
    if (!(o.base_pull >= 0.0f))
        fail(op, "base_pull = " + std::to_string(o.base_pull) + " must be >= 0");
    if (!(o.tolerance >= 0.0f))
        fail(op, "tolerance = " + std::to_string(o.tolerance) + " must be >= 0");
    if (!(o.label_smoothing >= 0.0f && o.label_smoothing < 1.0f))
        fail(op, "label_smoothing = " + std::to_string(o.label_smoothing) + " outside [0, 1)");
    if (o.replay.size < 0)
        fail(op, "replay size = " + std::to_string(o.replay.size) + " must be >= 0");
    if ((o.replay.kind == Replay::Kind::reservoir ||
         o.replay.kind == Replay::Kind::class_balanced) &&
        o.replay.size == 0)
        fail(op, "replay size must be > 0 for reservoir and class-balanced replay");
    // Optimizer and schedule options are checked by building them over a probe parameter:
    // a bad lr fails here, before forget() deletes anything or a run reads the store. An
    // auto_lr is checked as the lr of a one-output linear head.
    const std::unique_ptr<Optimizer> probe =
        make_optimizer(resolve_optimizer(o.optimizer, HeadSpec::linear(1)),
                       std::vector<Var>{Var::parameter(Matrix::Zero(1, 1))});
    make_schedule(o.schedule, *probe);
}

bool wide_classifier(const HeadSpec& head) {
    return head.classifies() && head.outputs > narrow_head;
}

float auto_lr_for(const HeadSpec& head, bool sgd) {
    // SGD: its step follows the gradient, already spread over a wide head's outputs.
    if (sgd) return wide_classifier(head) ? 5e-3f : 1e-2f;
    double lr = 1e-3;
    // Prototype heads' logits are their features' scale / T (L2-normalized features: 1 / T),
    // and their weights start at 2 mu / T: their steps must be larger by about 3 / T to move
    // the logits as much (measured at T = 0.1, 3e-2: 2.4 points more than 3e-3 on enrollment).
    if (head.kind == HeadSpec::Kind::prototype)
        lr *= std::clamp(3.0 / static_cast<double>(head.temperature), 1.0, 100.0);
    return static_cast<float>(lr);
}

OptimizerSpec resolve_optimizer(const OptimizerSpec& spec, const HeadSpec& head) {
    // Adam or AdamW with auto_lr on a wide classifier: SGD with momentum instead (Adam moves
    // every one of the F x C weights by about lr per step whatever its gradient, the rare
    // outputs' as much as the frequent ones').
    const bool adam_kind = !std::holds_alternative<SgdOptions>(spec);
    const float lr = std::visit([](const auto& options) { return options.lr; }, spec);
    if (adam_kind && lr == auto_lr && wide_classifier(head))
        return SgdOptions{.lr = auto_lr_for(head, true), .momentum = 0.9f};
    OptimizerSpec out = spec;
    std::visit(
        [&](auto& options) {
            using T = std::decay_t<decltype(options)>;
            // NOTE: exact comparison on purpose: only the sentinel itself means "choose"; any
            // other negative lr stays, and make_optimizer refuses it.
            if (options.lr == auto_lr)
                options.lr = auto_lr_for(head, std::is_same_v<T, SgdOptions>);
        },
        out);
    return out;
}

TrainLoop start_loop(Head& head, const TrainOptions& o, const OptimizerState* resume, Rng rng,
                     std::vector<std::size_t> rows) {
    TrainLoop loop{.params = head.parameters(),
                   .optimizer = nullptr,
                   .schedule = nullptr,
                   .rng = rng,
                   .order = std::move(rows),
                   .loss_curve = {}};
    loop.optimizer = make_optimizer(resolve_optimizer(o.optimizer, head.spec()), loop.params);
    if (resume && resume->kind == loop.optimizer->kind()) {
        const float lr = loop.optimizer->lr();
        try {
            loop.optimizer->load_state(*resume);
        } catch (const InvalidArgument&) {
            // The saved state has other buffers (momentum switched on or off, AMSGrad): the
            // options changed since the last run, so this run starts with fresh moments.
        }
        loop.optimizer->set_lr(lr);
    }
    loop.schedule = make_schedule(o.schedule, *loop.optimizer);
    return loop;
}

LoopStop run_epochs(TrainLoop& loop, Head& head, const Dataset& d, const LossTerms& terms,
                    const TrainOptions& o, int epochs, Clock::time_point start,
                    std::int64_t step_offset,
                    const std::function<void(const TrainLoop&)>& resume_point) {
    const bool plateau = std::holds_alternative<PlateauSchedule>(o.schedule);
    const auto batch = static_cast<std::size_t>(o.batch);
    Batch b;
    b.ce = terms.ce;
    LoopStop stop;
    std::vector<std::size_t>& order = loop.order;
    for (int e = 0; e < epochs && stop.why == LoopStop::Why::none; ++e) {
        if (!loop.inside_epoch) {
            ++loop.epoch;
            for (std::size_t i = order.size(); i > 1; --i)
                std::swap(order[i - 1], order[loop.rng.below(i)]);
            loop.inside_epoch = true;
            loop.at = 0;
            loop.epoch_loss = 0.0;
            loop.epoch_batches = 0;
        }
        const int epoch = loop.epoch;
        // The epoch's batches: its shuffle, or with new_share the shuffle with new samples mixed
        // into every batch (a function of the shuffle alone, so a resumed epoch rebuilds it).
        // NOTE: without a mix the epoch reads `order` itself, not a copy made every epoch. An
        // empty loop.is_new (a loop that was not told which rows are new) mixes nothing.
        const bool mix = o.new_share > 0.0f && !loop.is_new.empty();
        std::vector<std::size_t> mixed;
        if (mix) mixed = mix_new_rows(order, loop.is_new, batch, o.new_share);
        const std::vector<std::size_t>& rows = mix ? mixed : order;
        while (loop.at < rows.size()) {
            stop = check_budgets(loop, o, start);
            if (stop.why != LoopStop::Why::none) break;
            const std::size_t len = std::min(batch, rows.size() - loop.at);
            fill_batch(b, d, std::span(rows).subspan(loop.at, len), head.spec().classifies());
            // NOTE: a batch whose samples all weigh 0 teaches nothing (and its weighted mean
            // is 0/0): it is skipped, not counted as a step.
            if (!(b.weight > 0.0)) {
                loop.at += len;
                continue;
            }
            const StepResult r = step(loop, head, b, terms, o.clip_norm);
            if (!r.finite) {
                stop = {LoopStop::Why::diverged, "loss became " + std::to_string(r.loss) +
                                                     " at step " + std::to_string(loop.steps + 1) +
                                                     " (epoch " + std::to_string(epoch) + ")"};
                break;
            }
            loop.at += len;
            if (!plateau) loop.schedule->step();
            ++loop.steps;
            loop.epoch_loss += r.loss;
            ++loop.epoch_batches;
            if (o.on_progress)
                o.on_progress({.step = step_offset + loop.steps,
                               .epoch = epoch,
                               .loss = r.loss,
                               .elapsed = since(start)});
            if (resume_point && o.resume_every > 0 && loop.steps % o.resume_every == 0)
                resume_point(loop);
        }
        if (stop.why == LoopStop::Why::cancelled && resume_point) resume_point(loop);
        if (stop.why == LoopStop::Why::none) loop.inside_epoch = false;
        if (loop.epoch_batches > 0) {
            const double mean_loss = loop.epoch_loss / static_cast<double>(loop.epoch_batches);
            loop.loss_curve.push_back(static_cast<float>(mean_loss));
            loop.last_epoch = epoch;
            if (plateau && stop.why != LoopStop::Why::diverged)
                loop.schedule->step(static_cast<float>(mean_loss));
        }
    }
    return stop;
}

namespace {

// Whether label y is among the k highest logits of `row`; ties rank the lower class first
// (as predict() does).
bool in_top_k(const Eigen::Ref<const Eigen::RowVectorXf>& row, std::int32_t y, int k) {
    int above = 0;
    for (Index c = 0; c < row.size(); ++c) above += row[c] > row[y] || (row[c] == row[y] && c < y);
    return above < k;
}

// Metrics::class_accuracy and top_k_accuracy from the counts.
void fill_top_k(Metrics& m, int top_k, std::int64_t top_k_correct,
                const std::vector<std::int64_t>& class_total,
                const std::vector<std::int64_t>& class_correct) {
    m.top_k = top_k;
    m.top_k_accuracy = static_cast<double>(top_k_correct) / static_cast<double>(m.samples);
    m.class_samples = class_total;
    m.class_accuracy.resize(class_total.size());
    for (std::size_t c = 0; c < class_total.size(); ++c)
        m.class_accuracy[c] = class_total[c] > 0 ? static_cast<double>(class_correct[c]) /
                                                       static_cast<double>(class_total[c])
                                                 : std::numeric_limits<double>::quiet_NaN();
}

}  // namespace

Metrics evaluate_rows(Head& head, const Dataset& d, const std::vector<std::size_t>& rows,
                      int top_k) {
    const HeadSpec& spec = head.spec();
    Metrics m;
    m.samples = static_cast<std::int64_t>(rows.size());
    if (rows.empty()) return m;
    double loss = 0.0;
    std::int64_t correct = 0, top_k_correct = 0;
    const auto classes = static_cast<std::size_t>(spec.classifies() ? spec.outputs : 0);
    std::vector<std::int64_t> class_total(classes, 0), class_correct(classes, 0);
    constexpr std::size_t chunk = 1024;
    for (std::size_t at = 0; at < rows.size(); at += chunk) {
        const std::size_t len = std::min(chunk, rows.size() - at);
        Matrix x(static_cast<Index>(len), d.features.cols());
        for (std::size_t i = 0; i < len; ++i)
            x.row(static_cast<Index>(i)) = d.features.row(static_cast<Index>(rows[at + i]));
        const Matrix out = head.infer(x);
        for (std::size_t i = 0; i < len; ++i) {
            const auto r = static_cast<Index>(i);
            const std::size_t row = rows[at + i];
            if (spec.classifies()) {
                const float mx = out.row(r).maxCoeff();
                const double lse = mx + std::log((out.row(r).array() - mx).exp().sum());
                const std::int32_t y = d.labels[row];
                loss += lse - out(r, y);
                Index best = 0;
                out.row(r).maxCoeff(&best);
                correct += best == y;
                if (top_k > 0) top_k_correct += in_top_k(out.row(r), y, top_k);
                ++class_total[static_cast<std::size_t>(y)];
                class_correct[static_cast<std::size_t>(y)] += best == y;
            } else {
                loss += (out.row(r) - d.targets.row(static_cast<Index>(row))).squaredNorm() /
                        static_cast<double>(out.cols());
            }
        }
    }
    m.loss = loss / static_cast<double>(rows.size());
    if (spec.classifies()) {
        m.accuracy = static_cast<double>(correct) / static_cast<double>(rows.size());
        double recall = 0.0;
        int present = 0;
        for (std::size_t c = 0; c < classes; ++c)
            if (class_total[c] > 0) {
                recall +=
                    static_cast<double>(class_correct[c]) / static_cast<double>(class_total[c]);
                ++present;
            }
        m.balanced_accuracy = recall / present;
        m.classes = present;
        if (top_k > 0) fill_top_k(m, top_k, top_k_correct, class_total, class_correct);
    }
    return m;
}

}  // namespace edgetune::detail
