// backbone.cpp — the frozen feature extractor: architecture, file format, digest, features().
//
// A backbone file is encode_checkpoint() of a Checkpoint with kind "backbone", the
// architecture in attrs and the weights in tensors (FORMAT.md describes the envelope).
//
// An imported backbone (a layer list, detail/layers.hpp) or an external one (features computed
// by the app) has no net: config() then only declares the input and the feature width.
//
// features() does not run the autograd net: it runs the net's weights through frozen_dense
// (detail/frozen_kernel.hpp), whose result for a sample does not depend on the batch the sample
// arrives in (BackboneNet::forward, built on matrix products, does not promise that).
// Training the backbone still uses the net.
#include <cassert>
#include <cmath>
#include <cstdio>
#include <string>

#include "cpu.hpp"
#include "detail/layers.hpp"
#include "personalize.hpp"

namespace edgetune {

namespace {

constexpr std::size_t max_backbone_bytes = std::size_t{1} << 30;

[[noreturn]] void fail(const std::string& message) {
    throw InvalidArgument("[Backbone] " + message);
}
[[noreturn]] void corrupt(const std::string& message) {
    throw CorruptData("[Backbone.load] " + message);
}

std::string fnv1a64_hex(std::span<const std::uint8_t> bytes) {
    std::uint64_t h = 0xcbf29ce484222325ULL;
    for (std::uint8_t b : bytes) {
        h ^= b;
        h *= 0x100000001b3ULL;
    }
    char out[17];
    std::snprintf(out, sizeof out, "%016llx", static_cast<unsigned long long>(h));
    return out;
}

const char* activation_name(Activation a) {
    switch (a) {
        case Activation::relu:
            return "relu";
        case Activation::leaky_relu:
            return "leaky_relu";
        case Activation::tanh:
            return "tanh";
        case Activation::sigmoid:
            return "sigmoid";
        case Activation::gelu:
            return "gelu";
    }
    return "relu";
}

Activation parse_activation(const std::string& s) {
    for (Activation a : {Activation::relu, Activation::leaky_relu, Activation::tanh,
                         Activation::sigmoid, Activation::gelu})
        if (s == activation_name(a)) return a;
    corrupt("unknown activation '" + s + "'");
}

std::int64_t parse_int(const std::string& s, const char* what) {
    try {
        std::size_t used = 0;
        const long long v = std::stoll(s, &used);
        if (used != s.size() || v < 0 || v > (std::int64_t{1} << 31)) throw std::out_of_range(s);
        return v;
    } catch (const std::exception&) {
        corrupt(std::string("bad ") + what + " '" + s + "'");
    }
}

void validate_config(const BackboneConfig& c) {
    if (c.input.size <= 0) fail("input size must be > 0");
    if (c.hidden.empty()) fail("needs at least one hidden layer (the feature width)");
    for (Index h : c.hidden)
        if (h <= 0) fail("hidden widths must be > 0");
    if (c.input.kind == InputSpec::Kind::token_sequence && (c.vocab <= 0 || c.embed_dim <= 0))
        fail("token inputs need vocab > 0 and embed_dim > 0");
}

std::vector<std::pair<std::string, std::string>> config_attrs(const BackboneConfig& c) {
    std::string hidden;
    for (Index h : c.hidden) hidden += (hidden.empty() ? "" : ",") + std::to_string(h);
    return {
        {"input_kind", c.input.kind == InputSpec::Kind::float_vector ? "float" : "tokens"},
        {"input_size", std::to_string(c.input.size)},
        {"vocab", std::to_string(c.vocab)},
        {"embed_dim", std::to_string(c.embed_dim)},
        {"hidden", hidden},
        {"activation", activation_name(c.activation)},
    };
}

BackboneConfig config_from_attrs(const std::vector<std::pair<std::string, std::string>>& attrs) {
    auto get = [&](const char* key) -> const std::string& {
        for (const auto& [k, v] : attrs)
            if (k == key) return v;
        corrupt(std::string("missing attribute '") + key + "'");
    };
    BackboneConfig c;
    const std::string& kind = get("input_kind");
    if (kind != "float" && kind != "tokens") corrupt("unknown input kind '" + kind + "'");
    c.input.kind =
        kind == "float" ? InputSpec::Kind::float_vector : InputSpec::Kind::token_sequence;
    c.input.size = parse_int(get("input_size"), "input_size");
    c.vocab = parse_int(get("vocab"), "vocab");
    c.embed_dim = parse_int(get("embed_dim"), "embed_dim");
    const std::string& hidden = get("hidden");
    std::size_t start = 0;
    while (start <= hidden.size()) {
        const std::size_t comma = std::min(hidden.find(',', start), hidden.size());
        c.hidden.push_back(parse_int(hidden.substr(start, comma - start), "hidden width"));
        start = comma + 1;
    }
    c.activation = parse_activation(get("activation"));
    try {
        validate_config(c);
    } catch (const InvalidArgument& e) {
        corrupt(e.what());
    }
    return c;
}

// Number of floats the architecture's parameters hold, saturating at INT64_MAX (hostile
// attributes may declare absurd widths).
std::int64_t parameter_count(const BackboneConfig& c) {
    constexpr std::int64_t top = INT64_MAX;
    auto mul = [](std::int64_t a, std::int64_t b) { return (a != 0 && b > top / a) ? top : a * b; };
    auto add = [](std::int64_t a, std::int64_t b) { return a > top - b ? top : a + b; };
    std::int64_t total = 0;
    std::int64_t in = c.input.size;
    if (c.input.kind == InputSpec::Kind::token_sequence) {
        total = mul(c.vocab, c.embed_dim);
        in = mul(c.input.size, c.embed_dim);
    }
    for (Index out : c.hidden) {
        total = add(total, add(mul(in, out), out));  // weight [in x out] + bias [1 x out]
        in = out;
    }
    return total;
}

// ---- frozen inference -------------------------------------------------------------------
//
// features() runs the net's layers through frozen_dense (detail/frozen_kernel.hpp: batch-invariant,
// one instruction-set variant per process), each followed by the activation applied one element
// at a time by one scalar function, so the same bits wherever the element sits.
// NOTE: not through the net's matrix products, whose rounding depends on the batch shape: a
// sample's features (and so the validation split, the trained head, exact unlearning and
// determinism) must not depend on the batch it was added in, and predict() must see the
// features training saw.
namespace frozen {

// x [n x in], w [in x out], b [1 x out] -> x w + b [n x out], each row computed as if alone.
Matrix dense(const Matrix& x, const Matrix& w, const Matrix& b) {
    assert(x.cols() == w.rows() && b.rows() == 1 && b.cols() == w.cols());
    Matrix out(x.rows(), w.cols());
    detail::frozen_dense(x.rows(), x.cols(), w.cols(), x.data(), w.data(), b.data(), out.data());
    return out;
}

float activate(float v, Activation a) {
    switch (a) {
        case Activation::relu:
            return v > 0.0f ? v : 0.0f;
        case Activation::leaky_relu:
            return v > 0.0f ? v : v * 0.01f;  // leaky_relu()'s default slope, as ActivationLayer
        case Activation::tanh:
            return std::tanh(v);
        case Activation::sigmoid:
            return 1.0f / (1.0f + std::exp(-v));
        case Activation::gelu:
            return 0.5f * v * (1.0f + std::erf(v * 0.70710678118654752f));
    }
    return v;
}

// In place, one element at a time.
void activate(Matrix& m, Activation a) {
    for (Index i = 0; i < m.size(); ++i) m.data()[i] = activate(m.data()[i], a);
}

// The net's layers: x [n x in] -> features [n x F]. `params` as named_parameters() lists them:
// ["embed.weight" for token inputs], then per hidden layer "mlp.<i>.weight" [in x out] and
// "mlp.<i>.bias" [1 x out], starting at params[first]; every layer is followed by the
// activation (mlp(..., {.final_activation = true})).
Matrix layers(const std::vector<Var>& params, std::size_t first, const Matrix& x, Activation act) {
    assert(params.size() >= first + 2 && (params.size() - first) % 2 == 0);
    Matrix h = dense(x, params[first].value(), params[first + 1].value());
    activate(h, act);
    for (std::size_t i = first + 2; i < params.size(); i += 2) {
        h = dense(h, params[i].value(), params[i + 1].value());
        activate(h, act);
    }
    return h;
}

}  // namespace frozen

}  // namespace

// ---- BackboneNet -----------------------------------------------------------------------

BackboneNet::BackboneNet(const BackboneConfig& config, Rng& rng, Init init) : config_(config) {
    validate_config(config);
    Index in = config.input.size;
    if (config.input.kind == InputSpec::Kind::token_sequence) {
        embed_ = std::make_shared<Embedding>(config.vocab, config.embed_dim, rng);
        register_module("embed", embed_);
        in = config.input.size * config.embed_dim;
    }
    std::vector<Index> sizes{in};
    sizes.insert(sizes.end(), config.hidden.begin(), config.hidden.end());
    mlp_ =
        mlp(sizes, rng, {.activation = config.activation, .final_activation = true, .init = init});
    register_module("mlp", mlp_);
}

Index BackboneNet::feature_dim() const {
    return config_.hidden.back();
}

// floats [n x D] -> [n x F]
Var BackboneNet::forward(const Matrix& inputs) {
    if (config_.input.kind != InputSpec::Kind::float_vector)
        fail("this backbone takes token sequences, not float vectors");
    if (inputs.cols() != config_.input.size)
        fail("input " + shape_str(inputs) + " does not match input width " +
             std::to_string(config_.input.size));
    return mlp_->forward(Var(inputs));
}

// tokens [n*L] -> [n x F]
Var BackboneNet::forward(const IdList& tokens) {
    if (config_.input.kind != InputSpec::Kind::token_sequence)
        fail("this backbone takes float vectors, not token sequences");
    const auto len = static_cast<std::size_t>(config_.input.size);
    if (tokens.empty() || tokens.size() % len != 0)
        fail(std::to_string(tokens.size()) + " token ids is not a whole number of sequences of " +
             std::to_string(len));
    const auto n = static_cast<Index>(tokens.size() / len);
    Var e = embed_->forward(tokens);  // [n*L x E]
    return mlp_->forward(reshape(e, n, config_.input.size * config_.embed_dim));
}

// ---- Backbone --------------------------------------------------------------------------

namespace {
Checkpoint backbone_checkpoint(const BackboneNet& net) {
    Checkpoint c;
    c.kind = "backbone";
    c.attrs = config_attrs(net.config());
    for (const auto& [name, p] : net.named_parameters()) c.tensors.emplace_back(name, p.value());
    return c;
}
}  // namespace

Backbone::Backbone(std::unique_ptr<BackboneNet> net, std::string digest)
    : net_(std::move(net)), digest_(std::move(digest)) {
    net_->freeze();
    net_->eval();
}

Backbone::Backbone(std::unique_ptr<BackboneNet> net) : Backbone(std::move(net), std::string()) {
    digest_ = fnv1a64_hex(encode_checkpoint(backbone_checkpoint(*net_)));
}

std::shared_ptr<const Backbone> Backbone::freeze(const BackboneNet& net) {
    Rng unused(0);
    auto copy = std::make_unique<BackboneNet>(net.config(), unused, Init::zeros);
    auto src = net.named_parameters();
    auto dst = copy->named_parameters();
    for (std::size_t i = 0; i < src.size(); ++i) dst[i].second.value_mut() = src[i].second.value();
    return std::make_shared<const Backbone>(std::move(copy));
}

Backbone::Backbone(std::shared_ptr<const detail::FrozenGraph> graph, BackboneConfig config,
                   std::string digest)
    : graph_(std::move(graph)), config_(std::move(config)), digest_(std::move(digest)) {}

namespace {
bool is_graph(const Checkpoint& c) {
    for (const auto& [key, value] : c.attrs)
        if (key == "graph") return true;
    return false;
}
}  // namespace

std::shared_ptr<const Backbone> Backbone::external(Index feature_dim, const std::string& identity,
                                                   InputSpec input, FeatureFunction compute) {
    if (feature_dim <= 0)
        fail("external features need a width > 0, got " + std::to_string(feature_dim));
    if (identity.empty() || identity.size() > 128)
        fail("an external backbone's identity needs 1..128 characters, got " +
             std::to_string(identity.size()));
    for (char ch : identity)
        if (ch < 0x20 || ch > 0x7e)
            fail("the identity '" + identity + "' has a non-printable character");
    if (!compute) input = InputSpec::float_vector(feature_dim);
    if (input.size <= 0) fail("an external engine's input needs a size > 0");
    BackboneConfig config{.input = input, .hidden = {feature_dim}};
    if (input.kind == InputSpec::Kind::token_sequence) config.vocab = INT32_MAX;
    auto b = std::shared_ptr<Backbone>(new Backbone(nullptr, std::move(config), identity));
    b->compute_ = std::move(compute);
    return b;
}

namespace {
// The app's engine on `samples`, checked: [n x F], finite.
Matrix run_external(const Backbone::FeatureFunction& compute, std::span<const Sample> samples,
                    Index width) {
    Matrix f = compute(samples);
    if (f.rows() != static_cast<Index>(samples.size()) || f.cols() != width)
        fail("the external engine returned " + shape_str(f) + " for " +
             std::to_string(samples.size()) + " samples of " + std::to_string(width) + " features");
    for (Index i = 0; i < f.size(); ++i)
        if (!std::isfinite(f.data()[i]))
            fail("the external engine returned " + std::to_string(f.data()[i]) + " in row " +
                 std::to_string(i / width));
    return f;
}
}  // namespace

std::string Backbone::feature_key() const {
    // External features come from the app's engine, not from this process's kernels.
    if (!net_ && !graph_) return digest_;
#ifdef EDGETUNE_HAVE_AVX2_KERNELS
    if (cpu_runs_avx2_kernels()) return digest_ + "@avx2-fma";
#endif
#if defined(__x86_64__)
    return digest_ + "@generic-x86_64";
#elif defined(__aarch64__)
    return digest_ + "@generic-aarch64";
#else
    return digest_ + "@generic";
#endif
}

std::shared_ptr<const Backbone> Backbone::load(const std::string& path) {
    const std::vector<std::uint8_t> bytes = read_file(path, max_backbone_bytes);
    Checkpoint c = decode_checkpoint(bytes);
    if (c.kind != "backbone") corrupt("'" + path + "' holds a '" + c.kind + "', not a backbone");
    // The digest is of the canonical encoding (what save() writes), and a file that decodes is
    // canonical (every byte is checked or read back: FORMAT.md), so hashing the bytes read
    // gives it without encoding the model again (tests/test_layers.cpp checks the equality).
    std::string digest = fnv1a64_hex(bytes);
    if (is_graph(c)) {
        auto graph = std::make_shared<const detail::FrozenGraph>(std::move(c));
        BackboneConfig config;
        config.input = graph->input_kind() == detail::FrozenGraph::InputKind::tokens
                           ? InputSpec::token_sequence(graph->input_size())
                           : InputSpec::float_vector(graph->input_size());
        config.vocab = graph->vocab();
        config.embed_dim = graph->embed_dim();
        config.hidden = {graph->feature_dim()};
        return std::shared_ptr<const Backbone>(
            new Backbone(std::move(graph), std::move(config), std::move(digest)));
    }
    const BackboneConfig config = config_from_attrs(c.attrs);
    // NOTE: the architecture comes from the file: bound it by the weights the file actually
    // holds before allocating it, so hostile widths cannot request a huge allocation.
    std::int64_t stored = 0;
    for (const auto& t : c.tensors) stored += static_cast<std::int64_t>(t.second.size());
    if (parameter_count(config) != stored)
        corrupt("'" + path + "' declares an architecture of " +
                std::to_string(parameter_count(config)) + " weights but holds " +
                std::to_string(stored));
    Rng unused(0);
    auto net = std::make_unique<BackboneNet>(config, unused, Init::zeros);  // loaded below
    auto params = net->named_parameters();
    if (params.size() != c.tensors.size())
        corrupt("'" + path + "' has " + std::to_string(c.tensors.size()) + " tensors, the " +
                "architecture needs " + std::to_string(params.size()));
    for (std::size_t i = 0; i < params.size(); ++i) {
        const auto& [name, value] = c.tensors[i];
        Var& p = params[i].second;
        if (name != params[i].first || value.rows() != p.rows() || value.cols() != p.cols())
            corrupt("tensor " + std::to_string(i) + " is '" + name + "' " + shape_str(value) +
                    ", expected '" + params[i].first + "' " + shape_str(p.value()));
        p.value_mut() = value;
    }
    return std::make_shared<const Backbone>(std::move(net), std::move(digest));
}

void Backbone::save(const std::string& path) const {
    if (graph_) {
        write_file_atomic(path, encode_checkpoint(graph_->checkpoint()));
        return;
    }
    if (!net_) fail("an external backbone (" + digest_ + ") has no file to save");
    write_file_atomic(path, encode_checkpoint(backbone_checkpoint(*net_)));
}

Matrix Backbone::features(const Matrix& inputs) const {
    if (config().input.kind != InputSpec::Kind::float_vector)
        fail("this backbone takes token sequences, not float vectors");
    if (inputs.cols() != config().input.size)
        fail("input " + shape_str(inputs) + " does not match input width " +
             std::to_string(config().input.size));
    for (Index i = 0; i < inputs.rows(); ++i)
        for (Index j = 0; j < inputs.cols(); ++j)
            if (!std::isfinite(inputs(i, j)))
                fail("input row " + std::to_string(i) + " column " + std::to_string(j) + " is " +
                     std::to_string(inputs(i, j)));
    if (graph_) return graph_->run(inputs);
    if (compute_) {
        std::vector<Sample> samples(static_cast<std::size_t>(inputs.rows()));
        for (Index i = 0; i < inputs.rows(); ++i)
            samples[static_cast<std::size_t>(i)].input.assign(inputs.row(i).data(),
                                                              inputs.row(i).data() + inputs.cols());
        return run_external(compute_, samples, feature_dim());
    }
    if (!net_) return inputs;  // external features
    return frozen::layers(net_->parameters(), 0, inputs, config().activation);
}

Matrix Backbone::features(const IdList& tokens) const {
    const BackboneConfig& c = config();
    if (c.input.kind != InputSpec::Kind::token_sequence)
        fail("this backbone takes float vectors, not token sequences");
    if (graph_) return graph_->run(tokens);
    const auto len = static_cast<std::size_t>(c.input.size);
    if (tokens.empty() || tokens.size() % len != 0)
        fail(std::to_string(tokens.size()) + " token ids is not a whole number of sequences of " +
             std::to_string(len));
    if (compute_) {
        std::vector<Sample> samples(tokens.size() / len);
        for (std::size_t i = 0; i < samples.size(); ++i)
            samples[i].tokens.assign(tokens.begin() + static_cast<std::ptrdiff_t>(i * len),
                                     tokens.begin() + static_cast<std::ptrdiff_t>((i + 1) * len));
        return run_external(compute_, samples, feature_dim());
    }
    const std::vector<Var> params = net_->parameters();
    const Matrix& table = params[0].value();  // [vocab x E]
    // Embedding gather: sequence i is row i, its L embeddings side by side [n x L*E].
    const auto n = static_cast<Index>(tokens.size() / len);
    Matrix x(n, c.input.size * c.embed_dim);
    for (std::size_t i = 0; i < tokens.size(); ++i) {
        if (tokens[i] < 0 || tokens[i] >= table.rows())
            fail("token id " + std::to_string(tokens[i]) + " at position " + std::to_string(i) +
                 " is outside the vocabulary [0, " + std::to_string(table.rows()) + ")");
        const auto row = static_cast<Index>(i / len);
        const auto col = static_cast<Index>(i % len) * c.embed_dim;
        x.row(row).segment(col, c.embed_dim) = table.row(tokens[i]);
    }
    return frozen::layers(params, 1, x, c.activation);
}

Matrix Backbone::features(std::span<const Sample> samples) const {
    const InputSpec& in = config().input;
    const auto n = static_cast<Index>(samples.size());
    if (n == 0) return Matrix(0, feature_dim());
    const auto width = static_cast<std::size_t>(in.size);
    if (in.kind == InputSpec::Kind::float_vector) {
        Matrix x(n, in.size);
        for (Index i = 0; i < n; ++i) {
            const Sample& s = samples[static_cast<std::size_t>(i)];
            if (s.input.empty() && !s.tokens.empty())
                fail("sample " + std::to_string(i) +
                     " holds token ids, the backbone takes float vectors");
            if (s.input.size() != width)
                fail("sample " + std::to_string(i) + " has " + std::to_string(s.input.size()) +
                     " input floats, the backbone takes " + std::to_string(width));
            x.row(i) = Eigen::Map<const Eigen::RowVectorXf>(s.input.data(), in.size);
        }
        return features(x);
    }
    IdList tokens;
    tokens.reserve(samples.size() * width);
    for (std::size_t i = 0; i < samples.size(); ++i) {
        if (samples[i].tokens.empty() && !samples[i].input.empty())
            fail("sample " + std::to_string(i) +
                 " holds a float vector, the backbone takes token sequences");
        if (samples[i].tokens.size() != width)
            fail("sample " + std::to_string(i) + " has " +
                 std::to_string(samples[i].tokens.size()) + " tokens, the backbone takes " +
                 std::to_string(width));
        tokens.insert(tokens.end(), samples[i].tokens.begin(), samples[i].tokens.end());
    }
    return features(tokens);
}

}  // namespace edgetune
