// nn.cpp — initializers and modules (Module, Linear, Embedding, Dropout, activations,
// Sequential, mlp) built on the ops of ops.cpp. Modules hold Vars; they add no ops of their own.
#include <cmath>

#include "detail/node.hpp"

namespace edgetune {

// ---- initializers ----------------------------------------------------------------------

// [fan_in x fan_out]. Glorot: var = 2 / (fan_in + fan_out); He: var = 2 / fan_in.
Matrix init_matrix(Index fan_in, Index fan_out, Init init, Rng& rng) {
    if (fan_in <= 0 || fan_out <= 0)
        throw InvalidArgument("[init_matrix] fan_in and fan_out must be > 0, got " +
                              shape_str(fan_in, fan_out));
    Matrix m(fan_in, fan_out);
    const double fi = static_cast<double>(fan_in);
    const double fo = static_cast<double>(fan_out);
    auto fill_uniform = [&](double bound) {
        const float b = static_cast<float>(bound);
        for (Index i = 0; i < m.size(); ++i) m.data()[i] = rng.uniform(-b, b);
    };
    auto fill_normal = [&](double stddev) {
        const float s = static_cast<float>(stddev);
        for (Index i = 0; i < m.size(); ++i) m.data()[i] = rng.normal() * s;
    };
    switch (init) {
        case Init::zeros:
            m.setZero();
            break;
        case Init::glorot_uniform:
            fill_uniform(std::sqrt(6.0 / (fi + fo)));
            break;
        case Init::glorot_normal:
            fill_normal(std::sqrt(2.0 / (fi + fo)));
            break;
        case Init::he_uniform:
            fill_uniform(std::sqrt(6.0 / fi));
            break;
        case Init::he_normal:
            fill_normal(std::sqrt(2.0 / fi));
            break;
        case Init::torch_default:
            fill_uniform(1.0 / std::sqrt(fi));
            break;
    }
    return m;
}

// ---- Module ----------------------------------------------------------------------------

std::vector<Var> Module::parameters() const {
    std::vector<Var> out;
    for (const auto& [name, p] : named_parameters()) out.push_back(p);
    return out;
}

std::vector<std::pair<std::string, Var>> Module::named_parameters() const {
    std::vector<std::pair<std::string, Var>> out;
    for (const auto& [name, p] : params_)
        if (p->defined()) out.emplace_back(name, *p);
    for (const auto& [prefix, child] : children_)
        for (auto& [name, p] : child->named_parameters())
            out.emplace_back(prefix + "." + name, std::move(p));
    return out;
}

void Module::train(bool on) {
    training_ = on;
    for (auto& [name, child] : children_) child->train(on);
}

void Module::freeze() {
    for (auto& p : parameters()) p.set_requires_grad(false);
}

void Module::zero_grad() noexcept {
    for (auto& [name, p] : params_) p->zero_grad();
    for (auto& [name, child] : children_) child->zero_grad();
}

Var& Module::register_parameter(std::string name, Var& p) {
    params_.emplace_back(std::move(name), &p);
    return p;
}

void Module::register_module(std::string name, std::shared_ptr<Module> child) {
    children_.emplace_back(std::move(name), std::move(child));
}

// ---- layers ----------------------------------------------------------------------------

Linear::Linear(Index in, Index out, Rng& rng, const LinearOptions& opts) {
    weight = Var::parameter(init_matrix(in, out, opts.init, rng));
    register_parameter("weight", weight);
    if (opts.bias) {
        // Bias bound follows the weight's init (PyTorch: U(-1/sqrt(in), 1/sqrt(in))); the
        // Glorot/He schemes start biases at zero.
        Matrix b = Matrix::Zero(1, out);
        if (opts.init == Init::torch_default) {
            const float bound = 1.0f / std::sqrt(static_cast<float>(in));
            for (Index j = 0; j < out; ++j) b(0, j) = rng.uniform(-bound, bound);
        }
        bias = Var::parameter(std::move(b));
        register_parameter("bias", bias);
    }
}

// x [n x in] -> [n x out]
Var Linear::forward(const Var& x) {
    if (x.cols() != weight.rows())
        throw InvalidArgument("[Linear] input " + shape_str(x.value()) + " does not match " +
                              std::to_string(weight.rows()) + " input features");
    return linear(x, weight, bias);
}

Embedding::Embedding(Index vocab, Index dim, Rng& rng) {
    if (vocab <= 0 || dim <= 0)
        throw InvalidArgument("[Embedding] vocab and dim must be > 0, got " +
                              shape_str(vocab, dim));
    Matrix table(vocab, dim);
    for (Index i = 0; i < table.size(); ++i) table.data()[i] = rng.normal();
    weight = Var::parameter(std::move(table));
    register_parameter("weight", weight);
}

// ids [n] -> [n x dim]
Var Embedding::forward(const IdList& ids) {
    return embedding(weight, ids);
}

Dropout::Dropout(float p, std::uint64_t seed) : p_(p), rng_(seed) {
    if (!(p >= 0.0f && p < 1.0f))
        throw InvalidArgument("[Dropout] p = " + std::to_string(p) + " outside [0, 1)");
}

Var Dropout::forward(const Var& x) {
    return dropout(x, p_, rng_, training());
}

Var ActivationLayer::forward(const Var& x) {
    switch (kind_) {
        case Activation::relu:
            return relu(x);
        case Activation::leaky_relu:
            return leaky_relu(x);
        case Activation::tanh:
            return tanh(x);
        case Activation::sigmoid:
            return sigmoid(x);
        case Activation::gelu:
            return gelu(x);
    }
    return x;
}

void Sequential::append(std::shared_ptr<Layer> layer) {
    register_module(std::to_string(layers_.size()), layer);
    layers_.push_back(std::move(layer));
}

Var Sequential::forward(const Var& x) {
    Var h = x;
    for (auto& layer : layers_) h = layer->forward(h);
    return h;
}

std::shared_ptr<Sequential> mlp(const std::vector<Index>& sizes, Rng& rng, const MlpOptions& opts) {
    if (sizes.size() < 2)
        throw InvalidArgument("[mlp] needs at least an input and an output size, got " +
                              std::to_string(sizes.size()) + " sizes");
    auto net = std::make_shared<Sequential>();
    std::uint64_t dropout_seed = rng.next_u64();
    for (std::size_t i = 0; i + 1 < sizes.size(); ++i) {
        net->append(std::make_shared<Linear>(sizes[i], sizes[i + 1], rng,
                                             LinearOptions{.bias = true, .init = opts.init}));
        const bool last = i + 2 == sizes.size();
        if (!last || opts.final_activation) {
            net->append(std::make_shared<ActivationLayer>(opts.activation));
            if (!last && opts.dropout > 0.0f)
                net->append(std::make_shared<Dropout>(opts.dropout, dropout_seed++));
        }
    }
    return net;
}

}  // namespace edgetune
