// train_backbone.cpp — pretrains the Fashion-MNIST backbone that the other examples (and an app)
// personalize on top of: an MLP 784 -> 256 -> 128 (ReLU) plus a Linear(128, 10) classifier,
// trained from scratch with edgetune's autograd and Adam, then frozen and saved as a Backbone
// file (the classifier is only a training aid and is not saved).
//
// Data: the first 50000 images of the training split (the last 10000 are held back as the
// "device's own data" of examples/enroll and examples/replay, so the backbone never saw them);
// test accuracy on the 10000 test images (of the trained classes only, with --classes).
// Writes the backbone file, and an SVG learning curve next to it (same name, .svg).
// Exits non-zero unless test accuracy reaches 85% (70% with --small, which trains 1 epoch on
// 6000 images for CI) and the saved file reloads to the same features.
//
// Usage: train_backbone [--out fashion_backbone.etb] [--classes 0-5] [--epochs 5] [--seed 1]
//                       [--small]
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <memory>
#include <string>
#include <vector>

#include "args.hpp"
#include "pretrain.hpp"
#include "svg.hpp"

using namespace pretrain;

int main(int argc, char** argv) try {
    std::string out = "fashion_backbone.etb";
    BackboneTraining opts;
    bool small = false;
    bool epochs_set = false;
    for (examples::Args a(argc, argv); a.next();) {
        if (a.is("--small")) {
            small = true;
        } else if (a.is("--out")) {
            out = a.text();
        } else if (a.is("--classes")) {
            opts.classes = parse_classes(a.text());
        } else if (a.is("--epochs")) {
            opts.epochs = a.integer();
            epochs_set = true;
        } else if (a.is("--seed")) {
            opts.seed = std::strtoull(a.text().c_str(), nullptr, 10);
        } else {
            std::fprintf(stderr,
                         "usage: train_backbone [--out PATH] [--classes 0-5] [--epochs N] "
                         "[--seed S] [--small]\n");
            return 2;
        }
    }
    if (small && !epochs_set) opts.epochs = 1;
    if (opts.epochs < 1) throw edgetune::InvalidArgument("--epochs must be >= 1");

    const auto load_start = Clock::now();
    const fmnist::Dataset train =
        fmnist::load(fmnist::Split::train, {.limit = small ? 6000 : backbone_images});
    const fmnist::Dataset test = fmnist::load(fmnist::Split::test, {.limit = small ? 2000 : 0});
    std::printf("Fashion-MNIST: %zu training images, %zu test images (loaded in %.1f s)\n",
                train.size(), test.size(), seconds_since(load_start));
    std::string class_list;
    for (std::int32_t c : opts.classes)
        class_list += (class_list.empty() ? "" : ", ") + std::to_string(c) + " " +
                      fmnist::class_names[static_cast<std::size_t>(c)];
    std::printf(
        "backbone MLP 784 -> 256 -> 128 + Linear(128, 10); Adam lr %g, batch %ld, "
        "%d epochs, 1 thread\nclasses: %s\n",
        static_cast<double>(opts.lr), static_cast<long>(opts.batch), opts.epochs,
        class_list.c_str());

    const TrainedBackbone trained = train_fashion_backbone(train, test, opts);
    trained.backbone->save(out);
    const auto reloaded = edgetune::Backbone::load(out);
    const bool same_file = reloaded->digest() == trained.backbone->digest();
    const Matrix probe = test.images.topRows(std::min<Index>(256, test.images.rows()));
    const float max_diff =
        (reloaded->features(probe) - trained.backbone->features(probe)).cwiseAbs().maxCoeff();
    std::printf("saved %s (digest %s); reloaded: digest %s, max feature difference %g\n",
                out.c_str(), trained.backbone->digest().c_str(),
                same_file ? "identical" : "DIFFERENT", static_cast<double>(max_diff));

    edgetune::svg::LineChart loss{
        .title = "Training loss", .x_label = "epoch", .y_label = "cross-entropy"};
    edgetune::svg::LineChart accuracy{
        .title = "Test accuracy", .x_label = "epoch", .y_label = "accuracy (%)"};
    edgetune::svg::Series loss_series{.name = "train loss"};
    edgetune::svg::Series accuracy_series{.name = "test accuracy"};
    for (const EpochStats& e : trained.epochs) {
        loss_series.x.push_back(e.epoch);
        loss_series.y.push_back(e.loss);
        accuracy_series.x.push_back(e.epoch);
        accuracy_series.y.push_back(100.0 * e.test_accuracy);
    }
    loss.series.push_back(loss_series);
    accuracy.series.push_back(accuracy_series);
    const std::size_t dot = out.rfind('.');
    const std::string svg_path =
        (dot == std::string::npos || out.find('/', dot) != std::string::npos ? out
                                                                             : out.substr(0, dot)) +
        ".svg";
    edgetune::svg::write_file(svg_path, {loss, accuracy});

    const double final_accuracy = trained.epochs.back().test_accuracy;
    const double target = small ? 0.70 : 0.85;
    std::printf(
        "train_backbone: %.2f%% test accuracy after %d epochs; training took %.1f s "
        "(%.1f s CPU, %.1f s CPU/epoch); learning curve in %s\n",
        100.0 * final_accuracy, opts.epochs, trained.train_seconds, trained.train_cpu_seconds,
        trained.train_cpu_seconds / opts.epochs, svg_path.c_str());
    if (final_accuracy < target || !same_file || max_diff != 0.0f) {
        std::printf("FAILED: expected at least %.0f%% test accuracy and an identical reload\n",
                    100.0 * target);
        return 1;
    }
    return 0;
} catch (const std::exception& e) {
    std::fprintf(stderr, "train_backbone: %s\n", e.what());
    return 1;
}
