// background.cpp — Personalizer::train_async and BackgroundTraining: one training run on a
// worker thread, with progress, cancellation and the report (or the exception) handed back.
#include <atomic>
#include <exception>
#include <mutex>
#include <thread>

#include "detail/training.hpp"

namespace edgetune {

struct BackgroundTraining::State {
    std::atomic<bool> stop{false};
    std::atomic<bool> finished{false};
    mutable std::mutex mu;
    Progress progress;
    std::optional<TrainReport> report;
    std::exception_ptr error;
    std::thread worker;
};

std::unique_ptr<BackgroundTraining> Personalizer::train_async(TrainOptions options) {
    detail::validate_train_options(options);
    auto state = std::make_shared<BackgroundTraining::State>();
    auto user_progress = std::move(options.on_progress);
    const std::atomic<bool>* user_stop = options.stop;
    if (user_stop && user_stop->load()) state->stop = true;
    // The run polls state->stop; a caller's own stop flag is forwarded after every step.
    options.on_progress = [state, user_progress, user_stop](const Progress& p) {
        {
            std::lock_guard lock(state->mu);
            state->progress = p;
        }
        if (user_stop && user_stop->load()) state->stop = true;
        if (user_progress) user_progress(p);
    };
    options.stop = &state->stop;
    state->worker = std::thread([this, state, options] {
        try {
            TrainReport r = train(options);
            std::lock_guard lock(state->mu);
            state->report = std::move(r);
        } catch (...) {
            std::lock_guard lock(state->mu);
            state->error = std::current_exception();
        }
        state->finished = true;
    });
    return std::make_unique<BackgroundTraining>(state);
}

BackgroundTraining::BackgroundTraining(std::shared_ptr<State> state) : state_(std::move(state)) {}

BackgroundTraining::~BackgroundTraining() {
    cancel();
    if (state_->worker.joinable()) state_->worker.join();
}

Progress BackgroundTraining::progress() const {
    std::lock_guard lock(state_->mu);
    return state_->progress;
}

void BackgroundTraining::cancel() {
    state_->stop = true;
}

bool BackgroundTraining::done() const {
    return state_->finished;
}

TrainReport BackgroundTraining::wait() {
    if (state_->worker.joinable()) state_->worker.join();
    std::lock_guard lock(state_->mu);
    if (state_->error) std::rethrow_exception(state_->error);
    return *state_->report;
}

}  // namespace edgetune
