// training.cpp — training from the `edgetune` command line: the training options, the progress
// bar on stderr, and the report printed after a run.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>

#include "cli.hpp"

namespace edgetune::cli {

// Progress on stderr: a redrawn bar on a terminal, one line per epoch otherwise (logs, CI).
// Steps per epoch are known once the first epoch ends; before that the bar follows the step or
// time budget if there is one.
class ProgressBar {
public:
    explicit ProgressBar(const TrainOptions& o) : options_(o), tty_(isatty(STDERR_FILENO) != 0) {}

    void update(const Progress& p) {
        if (first_step_ < 0) first_step_ = p.step - 1;
        const std::int64_t done = p.step - first_step_;
        if (p.epoch != epoch_) {
            if (epoch_ == 1 && steps_per_epoch_ == 0) steps_per_epoch_ = done - 1;
            if (!tty_ && epoch_ > 0) print_epoch_line(false);
            epoch_ = p.epoch;
        }
        last_ = p;
        done_ = done;
        const auto now = std::chrono::steady_clock::now();
        if (tty_ && now - drawn_ > std::chrono::milliseconds(80)) {
            draw(false);
            drawn_ = now;
        }
    }

    void finish() {
        if (epoch_ == 0) return;
        if (tty_)
            draw(true);
        else
            print_epoch_line(true);
    }

private:
    double fraction() const {
        double f = -1.0;
        std::int64_t total = steps_per_epoch_ > 0 ? steps_per_epoch_ * options_.epochs : 0;
        if (options_.max_steps > 0)
            total = total > 0 ? std::min(total, options_.max_steps) : options_.max_steps;
        if (total > 0) f = static_cast<double>(done_) / static_cast<double>(total);
        if (options_.deadline.count() > 0)
            f = std::max(f, static_cast<double>(last_.elapsed.count()) /
                                static_cast<double>(options_.deadline.count()));
        return std::min(f, 1.0);
    }

    void draw(bool final) {
        constexpr int width = 30;
        const double f = final ? 1.0 : fraction();
        char bar[width + 1];
        for (int i = 0; i < width; ++i)
            bar[i] = f >= 0.0 && i < static_cast<int>(f * width + 0.5) ? '#' : '.';
        bar[width] = '\0';
        std::fprintf(
            stderr, "\r[%s] %s epoch %d/%d  step %lld  loss %.4f  %.1f s%s", bar,
            f >= 0.0 ? (std::to_string(static_cast<int>(100.0 * f)) + "%").c_str() : "  ?%",
            last_.epoch, options_.epochs, static_cast<long long>(done_),
            static_cast<double>(last_.loss), static_cast<double>(last_.elapsed.count()) / 1000.0,
            final ? "\n" : "   ");
        std::fflush(stderr);
    }

    // Non-terminal output: the end of every epoch, at most about 20 lines per run (the last
    // epoch always).
    void print_epoch_line(bool last) {
        const int stride = std::max(1, options_.epochs / 20);
        if (last_.epoch == printed_ || (!last && last_.epoch % stride != 0)) return;
        printed_ = last_.epoch;
        std::fprintf(stderr, "epoch %d/%d  step %lld  loss %.4f  %.1f s\n", last_.epoch,
                     options_.epochs, static_cast<long long>(done_),
                     static_cast<double>(last_.loss),
                     static_cast<double>(last_.elapsed.count()) / 1000.0);
    }

    TrainOptions options_;
    bool tty_;
    std::int64_t first_step_ = -1, done_ = 0, steps_per_epoch_ = 0;
    int epoch_ = 0, printed_ = 0;
    Progress last_;
    std::chrono::steady_clock::time_point drawn_{};
};

const char* outcome_name(TrainReport::Outcome o) {
    switch (o) {
        case TrainReport::Outcome::committed:
            return "committed";
        case TrainReport::Outcome::rolled_back:
            return "rolled back";
        case TrainReport::Outcome::nothing_to_do:
            return "nothing to do";
        case TrainReport::Outcome::cancelled:
            return "cancelled";
    }
    return "?";
}

void print_report(const TrainReport& r, bool json) {
    if (json) {
        std::printf("%s\n", r.to_json().c_str());
        return;
    }
    std::printf("outcome     %s (%s)\n", outcome_name(r.outcome), r.reason.c_str());
    std::printf("steps       %lld in %d epochs, %.2f s\n", static_cast<long long>(r.steps),
                r.epochs, static_cast<double>(r.duration.count()) / 1000.0);
    std::printf("samples     %lld training, %lld validation\n",
                static_cast<long long>(r.train_samples),
                static_cast<long long>(r.validation_samples));
    if (!r.loss_curve.empty()) {
        // At most 5 + 5 epochs: the first and the last ones.
        const std::size_t n = r.loss_curve.size();
        std::printf("loss/epoch ");
        for (std::size_t i = 0; i < n; ++i) {
            if (n > 12 && i == 5) {
                std::printf(" ...");
                i = n - 6;
                continue;
            }
            std::printf(" %.4f", static_cast<double>(r.loss_curve[i]));
        }
        std::printf("\n");
    }
    auto metrics = [](const Metrics& m) {
        char buf[96];
        std::snprintf(buf, sizeof buf, "accuracy %.2f%%, loss %.4f", 100.0 * m.accuracy, m.loss);
        return std::string(buf);
    };
    if (r.before) std::printf("validation  before: %s\n", metrics(*r.before).c_str());
    if (r.after) std::printf("validation  after:  %s\n", metrics(*r.after).c_str());
    if (r.retrained_from_base) std::printf("retrained from the base head\n");
}

int report_status(const TrainReport& r) {
    return r.outcome == TrainReport::Outcome::rolled_back ||
                   r.outcome == TrainReport::Outcome::cancelled
               ? exit_rolled_back
               : 0;
}

TrainReport train_with_progress(Personalizer& p, TrainOptions options, bool quiet, bool forget_ids,
                                std::span<const std::int64_t> ids) {
    ProgressBar bar(options);
    if (!quiet) options.on_progress = [&bar](const Progress& pr) { bar.update(pr); };
    TrainReport r = forget_ids ? p.forget(ids, options) : p.train(options);
    if (!quiet) bar.finish();
    return r;
}

}  // namespace edgetune::cli
