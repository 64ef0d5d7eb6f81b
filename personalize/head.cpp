// head.cpp — linear, MLP, prototype and regression heads over frozen features.
#include "detail/head.hpp"

namespace edgetune {

Head::Head(const HeadSpec& spec, Index feature_dim, Rng& rng, Init init)
    : spec_(spec), feature_dim_(feature_dim) {
    if (spec.outputs <= 0)
        throw InvalidArgument("[HeadSpec] outputs = " + std::to_string(spec.outputs) +
                              " must be > 0");
    if (spec.kind == HeadSpec::Kind::prototype && !(spec.temperature > 0.0f))
        throw InvalidArgument("[HeadSpec] temperature = " + std::to_string(spec.temperature) +
                              " must be > 0");
    if (spec.cosine && !(spec.kind == HeadSpec::Kind::prototype && spec.normalize))
        throw InvalidArgument(
            "[HeadSpec] cosine is for prototype heads over normalized features "
            "(HeadSpec::cosine_prototype)");
    std::vector<Index> sizes{feature_dim};
    if (spec.kind == HeadSpec::Kind::mlp)
        sizes.insert(sizes.end(), spec.hidden.begin(), spec.hidden.end());
    sizes.push_back(spec.outputs);
    net_ = mlp(sizes, rng, {.init = init});
    if (spec.kind == HeadSpec::Kind::prototype) {
        // Classes not yet enrolled start with zero weights and a low bias: they are never
        // predicted until they have a prototype.
        auto& linear = dynamic_cast<Linear&>(net_->at(0));
        linear.weight.value_mut().setZero();
        linear.bias.value_mut().setConstant(-1.0f / spec.temperature);
    }
    register_module("net", net_);
}

Matrix Head::prepare(const Matrix& features) const {
    if (features.cols() != feature_dim_)
        throw InvalidArgument("[Head] features " + shape_str(features) + " do not match width " +
                              std::to_string(feature_dim_));
    if (!spec_.normalize) return features;
    Matrix out = features;
    for (Index i = 0; i < out.rows(); ++i) {
        const float norm = out.row(i).norm();
        if (norm > 0.0f) out.row(i) /= norm;
    }
    return out;
}

// features [n x F] -> [n x C]
Var Head::forward(const Matrix& features) {
    return net_->forward(Var(prepare(features)));
}

Matrix Head::infer(const Matrix& features) {
    NoGrad no_grad;
    return forward(features).value();
}

void Head::class_sums(const Matrix& x, const IdList& labels, Matrix& sums,
                      std::vector<Index>& counts) const {
    sums = Matrix::Zero(spec_.outputs, x.cols());
    counts.assign(static_cast<std::size_t>(spec_.outputs), 0);
    for (Index i = 0; i < x.rows(); ++i) {
        const std::int32_t y = labels[static_cast<std::size_t>(i)];
        sums.row(y) += x.row(i);
        ++counts[static_cast<std::size_t>(y)];
    }
}

void Head::init_prototypes(const Matrix& features, const IdList& labels,
                           const std::vector<bool>& init) {
    auto& linear = dynamic_cast<Linear&>(net_->at(0));
    const Matrix x = prepare(features);
    const Index classes = spec_.outputs;
    Matrix sums;
    std::vector<Index> counts;
    class_sums(x, labels, sums, counts);
    for (Index c = 0; c < classes; ++c) {
        const auto k = static_cast<std::size_t>(c);
        if (!init[k] || counts[k] == 0) continue;
        const Eigen::RowVectorXf mu = sums.row(c) / static_cast<float>(counts[k]);
        // weight is [F x C]: class c is column c.
        if (spec_.cosine) {
            // A class whose normalized features average to 0 has no direction: not enrolled.
            const float norm = mu.norm();
            if (!(norm > 0.0f)) continue;
            linear.weight.value_mut().col(c) = mu.transpose() / (norm * spec_.temperature);
            linear.bias.value_mut()(0, c) = 0.0f;
        } else {
            linear.weight.value_mut().col(c) = (2.0f / spec_.temperature) * mu.transpose();
            linear.bias.value_mut()(0, c) = -mu.squaredNorm() / spec_.temperature;
        }
    }
}

Matrix Head::last_layer_input(const Matrix& features) {
    Matrix x = prepare(features);
    if (spec_.kind != HeadSpec::Kind::mlp) return x;
    NoGrad no_grad;
    Var h(x);
    for (std::size_t i = 0; i + 1 < net_->size(); ++i) h = net_->at(i).forward(h);
    return h.value();
}

void Head::init_scaled_prototypes(const Matrix& features, const IdList& labels,
                                  const std::vector<bool>& init, const std::vector<bool>& seen) {
    if (spec_.kind != HeadSpec::Kind::linear && spec_.kind != HeadSpec::Kind::mlp) return;
    auto& linear = dynamic_cast<Linear&>(net_->at(net_->size() - 1));
    Matrix& w = linear.weight.value_mut();  // [F x C]
    double norms = 0.0;
    Index trained = 0;
    for (Index c = 0; c < spec_.outputs; ++c)
        if (seen[static_cast<std::size_t>(c)] && !init[static_cast<std::size_t>(c)]) {
            norms += w.col(c).norm();
            ++trained;
        }
    if (trained == 0 || norms == 0.0) return;
    const auto target = static_cast<float>(norms / static_cast<double>(trained));
    Matrix sums;
    std::vector<Index> counts;
    class_sums(last_layer_input(features), labels, sums, counts);
    for (Index c = 0; c < spec_.outputs; ++c) {
        const auto k = static_cast<std::size_t>(c);
        if (!init[k] || counts[k] == 0) continue;
        const Eigen::RowVectorXf mu = sums.row(c) / static_cast<float>(counts[k]);
        const float mu_norm = mu.norm();
        if (mu_norm == 0.0f) continue;
        const float scale = target / (2.0f * mu_norm);
        w.col(c) = (2.0f * scale) * mu.transpose();
        linear.bias.value_mut()(0, c) = -scale * mu.squaredNorm();
    }
}

void Head::load(const std::vector<std::pair<std::string, Matrix>>& tensors) {
    auto params = named_parameters();
    if (params.size() != tensors.size())
        throw CorruptData("[Head.load] " + std::to_string(tensors.size()) +
                          " tensors, the head has " + std::to_string(params.size()));
    for (std::size_t i = 0; i < params.size(); ++i) {
        const auto& [name, value] = tensors[i];
        Var& p = params[i].second;
        if (name != params[i].first || value.rows() != p.rows() || value.cols() != p.cols())
            throw CorruptData("[Head.load] tensor " + std::to_string(i) + " is '" + name + "' " +
                              shape_str(value) + ", expected '" + params[i].first + "' " +
                              shape_str(p.value()));
        p.value_mut() = value;
    }
}

std::vector<std::pair<std::string, Matrix>> Head::tensors() const {
    std::vector<std::pair<std::string, Matrix>> out;
    for (const auto& [name, p] : named_parameters()) out.emplace_back(name, p.value());
    return out;
}

namespace {

// m [r x C0] -> [r x classes]: new columns `fill`.
void grow_columns(Matrix& m, Index classes, float fill) {
    if (m.cols() >= classes) return;
    Matrix out = Matrix::Constant(m.rows(), classes, fill);
    out.leftCols(m.cols()) = m;
    m = std::move(out);
}

void drop_column(Matrix& m, Index label) {
    if (label < 0 || label >= m.cols()) return;
    Matrix out(m.rows(), m.cols() - 1);
    out.leftCols(label) = m.leftCols(label);
    out.rightCols(m.cols() - 1 - label) = m.rightCols(m.cols() - 1 - label);
    m = std::move(out);
}

}  // namespace

void grow_classes(std::vector<std::pair<std::string, Matrix>>& tensors, const HeadSpec& spec,
                  Index classes) {
    if (tensors.size() < 2) return;
    Matrix& bias = tensors.back().second;
    const float low = spec.kind == HeadSpec::Kind::prototype
                          ? -1.0f / spec.temperature
                          : (bias.size() > 0 ? bias.minCoeff() : 0.0f) - 10.0f;
    grow_columns(tensors[tensors.size() - 2].second, classes, 0.0f);
    grow_columns(bias, classes, low);
}

void grow_classes(OptimizerState& state, Index classes) {
    if (state.slots.size() < 2) return;
    for (std::size_t i = state.slots.size() - 2; i < state.slots.size(); ++i)
        for (Matrix& m : state.slots[i]) grow_columns(m, classes, 0.0f);
}

void drop_class(std::vector<std::pair<std::string, Matrix>>& tensors, Index label) {
    if (tensors.size() < 2) return;
    for (std::size_t i = tensors.size() - 2; i < tensors.size(); ++i)
        drop_column(tensors[i].second, label);
}

void drop_class(OptimizerState& state, Index label) {
    if (state.slots.size() < 2) return;
    for (std::size_t i = state.slots.size() - 2; i < state.slots.size(); ++i)
        for (Matrix& m : state.slots[i]) drop_column(m, label);
}

}  // namespace edgetune
