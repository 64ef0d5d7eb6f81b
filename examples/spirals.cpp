// spirals.cpp — the autograd core on its own: a small MLP learns two interleaved spirals.
//
// Shows Var, ops, backward() and a plain SGD update written inline (no optim/ module): the
// whole training loop in one screen. The problem is not linearly separable, so it needs the
// hidden layers. Deterministic under a seed; exits non-zero unless accuracy >= 99%.
// Usage: spirals [--small]
#include <cmath>
#include <cstdio>
#include <cstring>

#include "autograd.hpp"

using namespace edgetune;

// Two spirals, `per_class` points each: x [2n x 2], labels [2n] in {0, 1}.
static void make_spirals(Index per_class, Rng& rng, Matrix& x, IdList& labels) {
    x.resize(2 * per_class, 2);
    labels.resize(static_cast<std::size_t>(2 * per_class));
    for (Index i = 0; i < per_class; ++i) {
        const float t = 0.25f + 3.0f * static_cast<float>(i) / static_cast<float>(per_class);
        for (int c = 0; c < 2; ++c) {
            const float angle = 2.2f * t + 3.14159265f * static_cast<float>(c);
            const Index row = 2 * i + c;
            x(row, 0) = t * std::cos(angle) / 3.0f + 0.02f * rng.normal();
            x(row, 1) = t * std::sin(angle) / 3.0f + 0.02f * rng.normal();
            labels[static_cast<std::size_t>(row)] = c;
        }
    }
}

int main(int argc, char** argv) {
    const bool small = argc > 1 && std::strcmp(argv[1], "--small") == 0;
    const int epochs = small ? 1500 : 3000;
    Rng rng(42);
    Matrix x;
    IdList labels;
    make_spirals(200, rng, x, labels);

    auto net = mlp({2, 64, 64, 2}, rng, {.activation = Activation::tanh});
    std::vector<Var> params = net->parameters();
    const Var input(x);
    const float lr = 0.5f;

    float loss_value = 0.0f;
    for (int epoch = 1; epoch <= epochs; ++epoch) {
        net->zero_grad();
        Var loss = cross_entropy(net->forward(input), labels);
        backward(loss);
        for (Var& p : params) p.value_mut() -= lr * p.grad();  // plain SGD, full batch
        loss_value = loss.item();
        if (epoch % (epochs / 10) == 0) std::printf("epoch %5d  loss %.4f\n", epoch, loss_value);
    }

    NoGrad no_grad;
    const Matrix logits = net->forward(input).value();
    int correct = 0;
    for (Index i = 0; i < logits.rows(); ++i) {
        Index predicted = 0;
        logits.row(i).maxCoeff(&predicted);
        correct += predicted == labels[static_cast<std::size_t>(i)];
    }
    const double accuracy = 100.0 * correct / static_cast<double>(logits.rows());
    std::printf("spirals: %d/%ld correct (%.1f%%), final loss %.4f\n", correct,
                static_cast<long>(logits.rows()), accuracy, loss_value);
    if (accuracy < 99.0) {
        std::printf("FAILED: expected at least 99%% accuracy\n");
        return 1;
    }
    return 0;
}
