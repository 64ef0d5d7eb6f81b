// quickstart.cpp — the Personalizer API end to end, on generated data, in one screen.
//
// A frozen backbone (here randomly initialized; in an app, Backbone::load("backbone.etb")),
// a 3-class head, samples stored in a local SQLite file, a guarded training run, top-k
// predictions and exact unlearning. The README quotes this file; CI runs it.
// Usage: quickstart [db_path]
#include <cstdio>
#include <filesystem>

#include "personalize.hpp"

using namespace edgetune;

int main(int argc, char** argv) {
    const std::string db = argc > 1 ? argv[1] : "quickstart.db";
    std::filesystem::remove(db);

    // A frozen backbone: 16 floats in, 32 features out.
    Rng rng(7);
    BackboneNet net({.input = InputSpec::float_vector(16), .hidden = {32}}, rng);
    std::shared_ptr<const Backbone> backbone = Backbone::freeze(net);

    auto p = Personalizer::open(db, {.backbone = backbone, .head = HeadSpec::linear(3)});

    // The user's samples: three noisy clusters. add() validates, stores, caches features.
    std::vector<Sample> samples;
    for (int i = 0; i < 300; ++i) {
        Sample s{.label = i % 3};
        for (int j = 0; j < 16; ++j)
            s.input.push_back((j % 3 == s.label ? 1.0f : 0.0f) + 0.3f * rng.normal());
        samples.push_back(s);
    }
    std::vector<std::int64_t> ids = p->add(samples);

    TrainReport report = p->train({.epochs = 20,
                                   .batch = 32,
                                   .optimizer = AdamOptions{.lr = 1e-2f},
                                   .seed = 1,
                                   .on_progress = [](const Progress& pr) {
                                       if (pr.step % 50 == 0)
                                           std::printf("step %lld  loss %.3f\n",
                                                       static_cast<long long>(pr.step), pr.loss);
                                   }});
    std::printf("train: %s after %lld steps; validation accuracy %.2f -> %.2f\n",
                report.reason.c_str(), static_cast<long long>(report.steps),
                report.before ? report.before->accuracy : 0.0,
                report.after ? report.after->accuracy : 0.0);

    for (const Prediction& pr : p->predict(samples[1], 3))
        std::printf("  label %d  p=%.3f\n", pr.label, static_cast<double>(pr.probability));

    // Exact unlearning: delete the first 30 samples and retrain from the base head.
    TrainReport forgot = p->forget(std::span(ids).first(30), {.epochs = 20, .seed = 1});
    std::printf("forget: %s, %lld samples left\n", forgot.reason.c_str(),
                static_cast<long long>(p->sample_count()));

    const bool ok = report.outcome == TrainReport::Outcome::committed && report.after &&
                    report.after->accuracy > 0.9 && forgot.retrained_from_base &&
                    p->sample_count() == 270;
    std::printf("%s\n", ok ? "quickstart: ok" : "quickstart: FAILED");
    return ok ? 0 : 1;
}
