// loss.cpp — preparing a run's loss: prototype initialization of unseen classes, class-balanced
// weights and the pull toward the base head (detail/training.hpp).
#include <algorithm>

#include "detail/training.hpp"

namespace edgetune::detail {

namespace {

// Inverse class frequency over the training rows, normalized so the mean weight per training
// sample is 1: w_c = n / (classes present * n_c). Absent classes keep weight 1.
std::vector<float> class_weights(const Dataset& d, const std::vector<std::size_t>& train_rows,
                                 std::int64_t classes) {
    std::vector<double> counts(static_cast<std::size_t>(classes), 0.0);
    for (std::size_t r : train_rows) counts[static_cast<std::size_t>(d.labels[r])] += 1.0;
    const double present = static_cast<double>(
        std::count_if(counts.begin(), counts.end(), [](double c) { return c > 0; }));
    std::vector<float> w(counts.size(), 1.0f);
    for (std::size_t c = 0; c < counts.size(); ++c)
        if (counts[c] > 0)
            w[c] =
                static_cast<float>(static_cast<double>(train_rows.size()) / (present * counts[c]));
    return w;
}

}  // namespace

bool balances_classes(const TrainOptions& o, const HeadSpec& spec) {
    return spec.classifies() && o.balance_classes.value_or(spec.outputs <= narrow_head);
}

LossTerms prepare_loss(Head& head, std::vector<bool>& seen, const Dataset& d,
                       const std::vector<std::size_t>& train_rows, const TrainOptions& o,
                       const Head& base) {
    const HeadSpec& spec = head.spec();
    // Classes trained on for the first time start at their class mean: prototype heads as
    // nearest-class-mean, linear and mlp heads (last layer) that have trained classes at those
    // classes' scale.
    if (spec.classifies()) {
        std::vector<bool> init(seen.size(), false);
        Matrix x(static_cast<Index>(train_rows.size()), d.features.cols());
        IdList y;
        for (std::size_t i = 0; i < train_rows.size(); ++i) {
            x.row(static_cast<Index>(i)) = d.features.row(static_cast<Index>(train_rows[i]));
            y.push_back(d.labels[train_rows[i]]);
            init[static_cast<std::size_t>(y.back())] = !seen[static_cast<std::size_t>(y.back())];
        }
        if (spec.kind == HeadSpec::Kind::prototype)
            head.init_prototypes(x, y, init);
        else
            head.init_scaled_prototypes(x, y, init, seen);
    }
    if (spec.classifies())
        for (std::size_t r : train_rows) seen[static_cast<std::size_t>(d.labels[r])] = true;

    LossTerms t;
    t.ce.label_smoothing = o.label_smoothing;
    if (balances_classes(o, spec)) t.ce.class_weights = class_weights(d, train_rows, spec.outputs);
    t.base_pull = o.base_pull;
    if (o.base_pull > 0.0f)
        for (const auto& [name, value] : base.tensors()) t.base_params.emplace_back(value);
    return t;
}

}  // namespace edgetune::detail
