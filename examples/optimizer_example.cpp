// optimizer_example.cpp — fit a tiny regression MLP with Adam, a warmup + cosine schedule and
// gradient clipping. Prints the loss as it falls; exits non-zero unless it fell 20-fold.
#include <cmath>
#include <cstdio>

#include "optim.hpp"

using namespace edgetune;

int main() {
    // Data: y = sin(3 x) on 64 points in [-1, 1], x [64 x 1] -> y [64 x 1].
    Matrix x(64, 1), y(64, 1);
    for (Index i = 0; i < 64; ++i) {
        x(i, 0) = -1.0f + 2.0f * static_cast<float>(i) / 63.0f;
        y(i, 0) = std::sin(3.0f * x(i, 0));
    }
    Rng rng(42);
    auto model = mlp({1, 32, 1}, rng, {.activation = Activation::tanh});
    std::vector<Var> params = model->parameters();

    Adam opt(params, {.lr = 1e-2f});
    Schedule schedule(
        opt, WarmupSchedule{.warmup_steps = 20, .then = CosineSchedule{.total_steps = 480}});
    float first = 0.0f, last = 0.0f;
    for (int step = 0; step < 500; ++step) {
        const float lr = opt.lr();  // this step's rate, set by the schedule
        opt.zero_grad();
        Var loss = mse(model->forward(Var(x)), Var(y));
        backward(loss);
        const float norm = clip_grad_norm(params, 1.0f);  // returns the norm before clipping
        opt.step();
        schedule.step();
        last = loss.item();
        if (step == 0) first = last;
        if (step % 100 == 0)
            std::printf("step %3d  loss %.5f  grad norm %.3f  lr %.5f\n", step, last, norm, lr);
    }
    std::printf("loss %.5f -> %.5f\n", first, last);
    return last < first / 20.0f ? 0 : 1;
}
