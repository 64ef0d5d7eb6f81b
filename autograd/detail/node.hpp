// detail/node.hpp — the private graph node behind Var (not part of the public contract).
//
// Invariants:
// - A leaf has no inputs and no backward_fn; an op output that requires grad has both.
// - requires_grad on an op output == "some input requires grad and NoGrad was inactive".
// - grad is meaningful only while has_grad; zero_grad clears the flag and keeps the storage,
//   so a training loop reuses the gradient buffers of its parameters.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "autograd.hpp"

namespace edgetune {

class Node {
public:
    Node() = default;
    ~Node();
    Node(const Node&) = delete;
    Node& operator=(const Node&) = delete;

    Matrix value;
    Matrix grad;
    bool has_grad = false;
    bool requires_grad = false;
    std::vector<std::shared_ptr<Node>> inputs;
    // Adds this node's vector-Jacobian product (from `self.grad`) into its inputs' grads.
    std::function<void(Node& self)> backward_fn;
    std::uint64_t visit_mark = 0;  // scratch for backward()'s topological sort

    bool is_leaf() const { return !backward_fn; }
};

// The one way into a Var's node (Var keeps it private): ops build nodes and wrap them,
// backward() walks them.
namespace detail {
struct NodeAccess {
    static const std::shared_ptr<Node>& node(const Var& v) { return v.node_; }
    static Var wrap(std::shared_ptr<Node> node) { return Var(std::move(node)); }
};
}  // namespace detail

// ---- buffer cache (autograd/buffers.cpp) -----------------------------------------------
// Every op value, gradient and saved tensor comes from acquire_buffer() and goes back through
// release_buffer(), so a training loop reuses last step's storage instead of reallocating it.

// A [rows x cols] matrix with UNINITIALIZED contents, from this thread's cache when one of
// the same element count is there.
Matrix acquire_buffer(Index rows, Index cols);
// Hands m's storage to this thread's cache (or frees it); leaves m empty.
void release_buffer(Matrix& m) noexcept;

// A matrix kept by a backward closure (softmax probabilities, a dropout mask) whose storage
// returns to the cache when the closure dies. Copyable, as std::function requires.
struct SavedMatrix {
    Matrix m;
    explicit SavedMatrix(Matrix&& value) : m(std::move(value)) {}
    // NOTE: the move constructor matters: without it, moving the closure into a
    // std::function would deep-copy the matrix (a hidden allocation per op).
    SavedMatrix(SavedMatrix&&) noexcept = default;
    SavedMatrix(const SavedMatrix&) = default;
    SavedMatrix& operator=(const SavedMatrix&) = delete;
    ~SavedMatrix() { release_buffer(m); }
};

// Gives the node a gradient buffer of its value's shape (contents unspecified).
inline void ensure_grad_storage(Node& node) {
    if (node.grad.size() != node.value.size()) {
        release_buffer(node.grad);
        node.grad = acquire_buffer(node.value.rows(), node.value.cols());
    } else {
        node.grad.resize(node.value.rows(), node.value.cols());  // same count: no reallocation
    }
}

// grad += g (or grad = g when there is none yet). A no-op for nodes that need no gradient.
// `g` may be any Eigen expression of the node's shape; it must not alias node.grad.
template <typename Expr>
void accumulate_grad(Node& node, const Expr& g) {
    if (!node.requires_grad) return;
    if (node.has_grad) {
        node.grad.noalias() += g;
    } else {
        ensure_grad_storage(node);
        node.grad.noalias() = g;
        node.has_grad = true;
    }
}

// The node's gradient, zero-filled first if it has none: for ops that add into a part of it.
inline Matrix& grad_for_update(Node& node) {
    if (!node.has_grad) {
        ensure_grad_storage(node);
        node.grad.setZero(node.value.rows(), node.value.cols());
        node.has_grad = true;
    }
    return node.grad;
}

}  // namespace edgetune
