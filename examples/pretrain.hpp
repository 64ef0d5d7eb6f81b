// pretrain.hpp — pretraining of the Fashion-MNIST backbone, shared by examples/train_backbone,
// examples/enroll and examples/replay (one code path, so the backbone they personalize on is
// the one train_backbone describes).
#pragma once

#include <chrono>
#include <cstdint>
#include <ctime>
#include <memory>
#include <string>
#include <vector>

#include "fashion_mnist.hpp"
#include "personalize.hpp"

namespace pretrain {

namespace fmnist = edgetune::fashion_mnist;
using edgetune::Index;
using edgetune::Matrix;
using Clock = std::chrono::steady_clock;

// The training split is cut here: images before it may train backbones, images from it on are
// the on-device data of the personalization examples.
constexpr std::int64_t backbone_images = 50000;

struct BackboneTraining {
    std::vector<std::int32_t> classes = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9};
    int epochs = 5;
    std::int64_t batch = 64;
    float lr = 1e-3f;
    std::uint64_t seed = 1;
    bool verbose = true;  // a progress bar per epoch
};

struct EpochStats {
    int epoch = 0;
    double loss = 0.0;           // mean training loss of the epoch
    double test_accuracy = 0.0;  // in [0, 1]
    double seconds = 0.0;        // wall time of the epoch's training (evaluation excluded)
    double cpu_seconds = 0.0;    // process CPU time of the same (differs on a busy machine)
};

struct TrainedBackbone {
    std::shared_ptr<const edgetune::Backbone> backbone;
    std::vector<EpochStats> epochs;
    double train_seconds = 0.0;
    double train_cpu_seconds = 0.0;
};

double seconds_since(Clock::time_point start);
double cpu_seconds_since(std::clock_t start);
// Accuracy of classifier(features) on labelled rows. features [n x F].
double classifier_accuracy(edgetune::Linear& classifier, const Matrix& features,
                           const edgetune::IdList& labels);
// Features of a whole dataset through the trainable net, in chunks, without a graph.
Matrix net_features(edgetune::BackboneNet& net, const Matrix& images);
// Trains BackboneNet(784 -> 256 -> 128) + Linear(128, 10) on the rows of `train` whose label is
// in opts.classes with cross-entropy, Adam and shuffled mini-batches; reports test accuracy (on
// the same classes) after every epoch. Returns the frozen backbone (classifier dropped).
TrainedBackbone train_fashion_backbone(const fmnist::Dataset& train_all,
                                       const fmnist::Dataset& test_all,
                                       const BackboneTraining& opts);
// "0-5", "0,2,4", "0-3,7" -> sorted class list. Throws InvalidArgument.
std::vector<std::int32_t> parse_classes(const std::string& text);

// The images of `d` as labelled samples (input: the 784 pixels), in row order.
std::vector<edgetune::Sample> to_samples(const fmnist::Dataset& d);
// The row indices of each class c of `d` (out[c]), in file order.
std::vector<std::vector<std::size_t>> rows_per_class(const fmnist::Dataset& d);
// Removes a database file and its -wal, -shm and -journal companions (missing ones are fine).
void remove_db(const std::string& path);

}  // namespace pretrain
