// node.hpp — the private graph node behind Var (not part of the public contract).
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

// grad += g (or grad = g when there is none yet). A no-op for nodes that need no gradient.
// `g` may be any Eigen expression of the node's shape; it must not alias node.grad.
template <typename Expr>
void accumulate_grad(Node& node, const Expr& g) {
    if (!node.requires_grad) return;
    if (node.has_grad) {
        node.grad.noalias() += g;
    } else {
        node.grad.noalias() = g;
        node.has_grad = true;
    }
}

// The node's gradient, zero-filled first if it has none: for ops that add into a part of it.
inline Matrix& grad_for_update(Node& node) {
    if (!node.has_grad) {
        node.grad.setZero(node.value.rows(), node.value.cols());
        node.has_grad = true;
    }
    return node.grad;
}

}  // namespace edgetune
