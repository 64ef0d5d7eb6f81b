// head.cpp — linear, MLP, prototype and regression heads over frozen features.
#include "detail/head.hpp"

namespace edgetune {

Head::Head(const HeadSpec& spec, Index feature_dim, Rng& rng)
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
    net_ = mlp(sizes, rng);
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

void Head::init_prototypes(const Matrix& features, const IdList& labels,
                           const std::vector<bool>& init) {
    auto& linear = dynamic_cast<Linear&>(net_->at(0));
    const Matrix x = prepare(features);
    const Index classes = spec_.outputs;
    Matrix sums = Matrix::Zero(classes, feature_dim_);
    std::vector<Index> counts(static_cast<std::size_t>(classes), 0);
    for (Index i = 0; i < x.rows(); ++i) {
        const std::int32_t y = labels[static_cast<std::size_t>(i)];
        sums.row(y) += x.row(i);
        ++counts[static_cast<std::size_t>(y)];
    }
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

}  // namespace edgetune
