// var.cpp — Var handle, NoGrad scope and backward(): iterative topological order, reverse loop.
#include <atomic>

#include "detail/node.hpp"

namespace edgetune {

namespace {
thread_local bool g_no_grad = false;
std::atomic<std::uint64_t> g_visit_epoch{0};

const Matrix& empty_matrix() {
    static const Matrix empty;
    return empty;
}

Node& checked(const std::shared_ptr<Node>& node, const char* what) {
    if (!node) throw InvalidArgument(std::string("[Var] ") + what + " on an empty Var");
    return *node;
}
}  // namespace

// NOTE: the default destructor would free a chain of N ops by N nested calls and overflow
// the stack on deep graphs; inputs owned only by this node are unlinked iteratively instead.
Node::~Node() {
    std::vector<std::shared_ptr<Node>> pending = std::move(inputs);
    while (!pending.empty()) {
        std::shared_ptr<Node> node = std::move(pending.back());
        pending.pop_back();
        if (node.use_count() == 1) {
            for (auto& in : node->inputs) pending.push_back(std::move(in));
            node->inputs.clear();
        }
    }
    release_buffer(value);
    release_buffer(grad);
}

Var::Var(Matrix value, bool requires_grad) : node_(std::make_shared<Node>()) {
    node_->value = std::move(value);
    node_->requires_grad = requires_grad;
}

const Matrix& Var::value() const {
    return checked(node_, "value()").value;
}
Matrix& Var::value_mut() {
    return checked(node_, "value_mut()").value;
}

float Var::item() const {
    const Matrix& v = value();
    if (v.rows() != 1 || v.cols() != 1)
        throw InvalidArgument("[item] expected a [1 x 1] value, got " + shape_str(v));
    return v(0, 0);
}

bool Var::requires_grad() const {
    return node_ && node_->requires_grad;
}
void Var::set_requires_grad(bool on) {
    checked(node_, "set_requires_grad()").requires_grad = on;
}
bool Var::has_grad() const {
    return node_ && node_->has_grad;
}
const Matrix& Var::grad() const {
    return has_grad() ? node_->grad : empty_matrix();
}
Matrix& Var::grad_mut() {
    return grad_for_update(checked(node_, "grad_mut()"));
}
void Var::zero_grad() noexcept {
    if (node_) node_->has_grad = false;
}
Var Var::detach() const {
    return Var(value(), false);
}

NoGrad::NoGrad() : previous_(g_no_grad) {
    g_no_grad = true;
}
NoGrad::~NoGrad() {
    g_no_grad = previous_;
}
bool NoGrad::active() {
    return g_no_grad;
}

void backward(const Var& root, const std::optional<Matrix>& seed) {
    Node& top = checked(detail::NodeAccess::node(root), "backward()");
    if (seed) {
        if (seed->rows() != top.value.rows() || seed->cols() != top.value.cols())
            throw InvalidArgument("[backward] seed shape " + shape_str(*seed) +
                                  " differs from root shape " + shape_str(top.value));
    } else if (top.value.rows() != 1 || top.value.cols() != 1) {
        throw InvalidArgument("[backward] root is " + shape_str(top.value) +
                              ", not [1 x 1]: pass a seed gradient");
    }
    if (!top.requires_grad)
        throw InvalidArgument("[backward] root does not require grad (no parameter reaches it)");

    // Post-order DFS over nodes that require grad, without recursion (deep chains are fine).
    const std::uint64_t mark = ++g_visit_epoch;
    std::vector<Node*> order;
    std::vector<std::pair<Node*, std::size_t>> stack;
    stack.emplace_back(&top, 0);
    top.visit_mark = mark;
    while (!stack.empty()) {
        auto& [node, next] = stack.back();
        if (next < node->inputs.size()) {
            Node* child = node->inputs[next++].get();
            if (child->requires_grad && child->visit_mark != mark) {
                child->visit_mark = mark;
                stack.emplace_back(child, 0);
            }
        } else {
            order.push_back(node);
            stack.pop_back();
        }
    }

    // Intermediate gradients belong to this pass only; leaf gradients accumulate.
    for (Node* node : order)
        if (!node->is_leaf()) node->has_grad = false;
    if (seed)
        accumulate_grad(top, *seed);
    else
        accumulate_grad(top, Matrix::Ones(1, 1));

    for (auto it = order.rbegin(); it != order.rend(); ++it) {
        Node* node = *it;
        if (!node->is_leaf() && node->has_grad) node->backward_fn(*node);
    }
}

}  // namespace edgetune
