// autograd.hpp — the public contract of edgetune's reverse-mode autograd core.
//
// A Var is a value-semantic handle to a private graph node holding a value, a gradient, the
// node's inputs and a backward closure. Every op is ONE free function (autograd/ops.cpp) that
// computes the value and attaches the closure adding its vector-Jacobian product into its
// inputs' gradients. If no input requires grad (or a NoGrad scope is active), no graph is
// recorded: a frozen backbone costs no autograd memory.
//
// Everything is 2-D: Matrix [rows x cols], rows are samples. Scalars are [1 x 1].
// Limits: single-threaded per graph (independent graphs on different threads are fine).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "error.hpp"
#include "matrix.hpp"
#include "rng.hpp"

namespace EDGETUNE_API edgetune {

class Node;  // private: autograd/detail/node.hpp
namespace detail {
struct NodeAccess;
}

// Value-semantic handle; copies share the same node. A default-constructed Var is empty.
class Var {
public:
    Var() = default;
    // A leaf. `requires_grad` leaves are parameters: backward() accumulates into their grad.
    explicit Var(Matrix value, bool requires_grad = false);
    static Var parameter(Matrix value) { return Var(std::move(value), true); }

    bool defined() const { return node_ != nullptr; }
    const Matrix& value() const;
    // Mutable access for optimizers and initializers (in-place update of a leaf).
    Matrix& value_mut();
    Index rows() const { return value().rows(); }
    Index cols() const { return value().cols(); }
    // The value of a [1 x 1] Var; throws InvalidArgument otherwise.
    float item() const;

    bool requires_grad() const;
    void set_requires_grad(bool on);
    // True once backward() has written a gradient (grad() then has the value's shape).
    bool has_grad() const;
    // The accumulated gradient; an empty [0 x 0] matrix when has_grad() is false.
    const Matrix& grad() const;
    Matrix& grad_mut();
    // Drops the gradient (keeps its storage for reuse).
    void zero_grad() noexcept;
    // A new leaf sharing no graph with this one (value copied, requires_grad false).
    Var detach() const;

    // An address naming this Var's graph node: equal for copies of one Var, different for
    // distinct Vars. For identity checks only (a parameter listed twice); never a state key.
    const void* identity() const { return node_.get(); }

private:
    friend struct detail::NodeAccess;  // ops and backward() reach the node (detail/node.hpp)
    explicit Var(std::shared_ptr<Node> node) : node_(std::move(node)) {}
    std::shared_ptr<Node> node_;
};

// Reverse pass from `root`. Without `seed`, root must be [1 x 1] (its gradient is 1).
// Leaf gradients ACCUMULATE (call zero_grad between steps); intermediate gradients are
// recomputed on every call. Fan-in is summed. Throws InvalidArgument on a non-scalar root
// without seed or a seed of the wrong shape.
void backward(const Var& root, const std::optional<Matrix>& seed = std::nullopt);

// While alive, ops record no graph on this thread (inference, frozen features).
class NoGrad {
public:
    NoGrad();
    ~NoGrad();
    NoGrad(const NoGrad&) = delete;
    NoGrad& operator=(const NoGrad&) = delete;
    static bool active();

private:
    bool previous_;
};

// Graph buffers (op values, gradients, tensors saved for backward) that die with a step's
// graph are kept per thread, up to 32 buffers and 64 MiB, and reused by the next step of the
// same shapes: a training loop does not reallocate (and page-fault in) its activations.
// buffer_cache_bytes() is what this thread holds; release_buffer_cache() frees it (an app
// going to the background, say). A thread's cache is freed when the thread exits.
std::size_t buffer_cache_bytes() noexcept;
void release_buffer_cache() noexcept;

// ---------------------------------------------------------------------------------------
// Ops (autograd/ops.cpp). Shapes: a, b [n x d] unless noted. Errors name the op and shapes.

// Elementwise, same shapes.
Var add(const Var& a, const Var& b);
Var sub(const Var& a, const Var& b);
Var mul(const Var& a, const Var& b);
Var div(const Var& a, const Var& b);
Var neg(const Var& a);
Var scale(const Var& a, float s);  // a * s
// a [n x k] x b [k x m] -> [n x m]
Var matmul(const Var& a, const Var& b);
// x [n x d] + row [1 x d] broadcast over rows (bias).
Var add_row(const Var& x, const Var& row);
// x [n x k] W [k x m] + bias [1 x m] on every row -> [n x m]: matmul and add_row fused (one
// output buffer, no gradient copy). `bias` may be an empty Var: no bias.
Var linear(const Var& x, const Var& weight, const Var& bias = {});
// The instruction set matmul and linear run with in this process: "avx2+fma" on x86-64 CPUs
// that have it (chosen at run time, whatever the build's flags), else "generic" (the build's
// flags). EDGETUNE_KERNELS=generic in the environment forces "generic".
const char* matmul_kernel() noexcept;

// Reductions.
Var sum(const Var& a);       // [n x d] -> [1 x 1]
Var mean(const Var& a);      // [n x d] -> [1 x 1]
Var sum_rows(const Var& a);  // [n x d] -> [1 x d]  (adds the rows together)
Var sum_cols(const Var& a);  // [n x d] -> [n x 1]  (adds the columns together)

// Elementwise nonlinearities.
Var relu(const Var& a);
Var leaky_relu(const Var& a, float slope = 0.01f);
Var tanh(const Var& a);
Var sigmoid(const Var& a);
Var gelu(const Var& a);  // exact (erf) form, as PyTorch's default
Var exp(const Var& a);
Var log(const Var& a);  // inputs must be > 0 (log of <= 0 gives -inf/NaN, as in PyTorch)
Var square(const Var& a);
Var sqrt(const Var& a);

// Shape ops.
Var concat_cols(const std::vector<Var>& parts);          // [n x d_i]... -> [n x sum d_i]
Var slice_cols(const Var& a, Index start, Index count);  // [n x d] -> [n x count]
Var reshape(const Var& a, Index rows, Index cols);       // row-major reinterpretation

// table [V x d], ids (each in [0, V)) -> [ids.size() x d]; backward scatter-adds (repeats sum).
Var embedding(const Var& table, const IdList& ids);

// Inverted dropout: zeroes each element with probability p and scales the rest by 1/(1-p).
// Identity when !training or p == 0. The mask comes from `rng` (seeded: same seed, same mask).
Var dropout(const Var& a, float p, Rng& rng, bool training);

// Row-wise softmax / log-softmax over columns: logits [n x C] -> [n x C].
// log_softmax is fused (max-subtracted) for stability; softmax = exp(log_softmax).
Var log_softmax(const Var& logits);
Var softmax(const Var& logits);

// Losses return [1 x 1].
struct CrossEntropyOptions {
    float label_smoothing = 0.0f;         // in [0, 1)
    std::vector<float> class_weights{};   // empty, or one weight >= 0 per class
    std::vector<float> sample_weights{};  // empty, or one weight >= 0 per row
};
// Mean cross-entropy of logits [n x C] against labels (n ints in [0, C)). Fused with
// log_softmax (stable for large logits). With class weights the mean is weighted as in
// PyTorch: sum_i w[y_i] l_i / sum_i w[y_i]; label smoothing mixes in the uniform target.
Var cross_entropy(const Var& logits, const IdList& labels, const CrossEntropyOptions& opts = {});
// Mean negative log-likelihood of log-probabilities [n x C] at labels (same weighting rules).
Var nll(const Var& log_probs, const IdList& labels, const CrossEntropyOptions& opts = {});
// Mean squared error, composed: mean(square(pred - target)).
Var mse(const Var& pred, const Var& target);
// Mean binary cross-entropy of logits against targets in [0, 1] (same shape); fused, stable.
Var bce_with_logits(const Var& logits, const Var& targets);

// ---------------------------------------------------------------------------------------
// Initializers (autograd/nn.cpp): same seed, same bytes.

enum class Init { zeros, glorot_uniform, glorot_normal, he_uniform, he_normal, torch_default };
// A [fan_in x fan_out] matrix drawn by `init`. torch_default is U(-1/sqrt(fan_in), 1/sqrt(fan_in)),
// PyTorch's nn.Linear default.
Matrix init_matrix(Index fan_in, Index fan_out, Init init, Rng& rng);

// ---------------------------------------------------------------------------------------
// Modules (autograd/nn.cpp).

// Owns parameters and child modules. parameters() order is registration order, depth first,
// and stable across runs (optimizer state is index-aligned with it).
class Module {
public:
    Module() = default;
    // NOTE: not copyable: the parameter table points at members of the derived object.
    Module(const Module&) = delete;
    Module& operator=(const Module&) = delete;
    virtual ~Module() = default;
    std::vector<Var> parameters() const;
    std::vector<std::pair<std::string, Var>> named_parameters() const;  // "0.weight", ...
    void train(bool on = true);
    void eval() { train(false); }
    bool training() const { return training_; }
    // Stops gradients to every parameter (requires_grad = false).
    void freeze();
    void zero_grad() noexcept;

protected:
    Var& register_parameter(std::string name, Var& p);
    void register_module(std::string name, std::shared_ptr<Module> child);

private:
    std::vector<std::pair<std::string, Var*>> params_;
    std::vector<std::pair<std::string, std::shared_ptr<Module>>> children_;
    bool training_ = true;
};

// A module with one Var input and one Var output.
class Layer : public Module {
public:
    virtual Var forward(const Var& x) = 0;
    Var operator()(const Var& x) { return forward(x); }
};

struct LinearOptions {
    bool bias = true;
    Init init = Init::torch_default;
};
// y = x W + b. x [n x in] -> [n x out]; weight [in x out], bias [1 x out].
class Linear : public Layer {
public:
    Linear(Index in, Index out, Rng& rng, const LinearOptions& opts = {});
    Var forward(const Var& x) override;
    Var weight, bias;  // bias undefined when opts.bias == false
};

// ids -> rows of a [vocab x dim] table, initialized N(0, 1) as in PyTorch.
class Embedding : public Module {
public:
    Embedding(Index vocab, Index dim, Rng& rng);
    Var forward(const IdList& ids);
    Var weight;
};

// Dropout with its own seeded RNG; identity in eval mode.
class Dropout : public Layer {
public:
    Dropout(float p, std::uint64_t seed);
    Var forward(const Var& x) override;

private:
    float p_;
    Rng rng_;
};

enum class Activation { relu, leaky_relu, tanh, sigmoid, gelu };
// An elementwise activation as a module.
class ActivationLayer : public Layer {
public:
    explicit ActivationLayer(Activation kind) : kind_(kind) {}
    Var forward(const Var& x) override;
    Activation kind() const { return kind_; }

private:
    Activation kind_;
};

// Applies its layers in order; child names are their indices ("0", "1", ...).
class Sequential : public Layer {
public:
    Sequential() = default;
    void append(std::shared_ptr<Layer> layer);
    Var forward(const Var& x) override;
    std::size_t size() const { return layers_.size(); }
    Layer& at(std::size_t i) { return *layers_.at(i); }

private:
    std::vector<std::shared_ptr<Layer>> layers_;
};

struct MlpOptions {
    Activation activation = Activation::relu;
    bool final_activation = false;  // activation after the last Linear too (feature extractors)
    float dropout = 0.0f;           // after each hidden activation, if > 0
    Init init = Init::torch_default;
};
// mlp({784, 256, 128}): Linear(784,256), act, Linear(256,128) [, act].
std::shared_ptr<Sequential> mlp(const std::vector<Index>& sizes, Rng& rng,
                                const MlpOptions& opts = {});

}  // namespace edgetune
