// pretrain.cpp — pretraining of the Fashion-MNIST backbone (see pretrain.hpp).
#include "pretrain.hpp"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>

namespace pretrain {

double seconds_since(Clock::time_point start) {
    return std::chrono::duration<double>(Clock::now() - start).count();
}

double cpu_seconds_since(std::clock_t start) {
    return static_cast<double>(std::clock() - start) / CLOCKS_PER_SEC;
}

// Accuracy of classifier(features) on labelled rows. features [n x F].
double classifier_accuracy(edgetune::Linear& classifier, const Matrix& features,
                           const edgetune::IdList& labels) {
    edgetune::NoGrad no_grad;
    const Matrix logits = classifier.forward(edgetune::Var(features)).value();
    std::int64_t correct = 0;
    for (Index i = 0; i < logits.rows(); ++i) {
        Index best = 0;
        logits.row(i).maxCoeff(&best);
        correct += best == labels[static_cast<std::size_t>(i)];
    }
    return logits.rows() == 0 ? 0.0 : static_cast<double>(correct) / logits.rows();
}

// Features of a whole dataset through the trainable net, in chunks, without a graph.
Matrix net_features(edgetune::BackboneNet& net, const Matrix& images) {
    edgetune::NoGrad no_grad;
    Matrix out(images.rows(), net.feature_dim());
    for (Index at = 0; at < images.rows(); at += 2048) {
        const Index len = std::min<Index>(2048, images.rows() - at);
        out.middleRows(at, len) = net.forward(Matrix(images.middleRows(at, len))).value();
    }
    return out;
}

void draw_bar(int epoch, int epochs, double fraction, double loss) {
    constexpr int width = 30;
    const int filled = static_cast<int>(fraction * width);
    std::printf("\repoch %d/%d [%.*s%.*s] %3.0f%%  loss %.4f", epoch, epochs, filled,
                "##############################", width - filled, "..............................",
                100.0 * fraction, loss);
    std::fflush(stdout);
}

// Trains BackboneNet(784 -> 256 -> 128) + Linear(128, 10) on the rows of `train` whose label is
// in opts.classes with cross-entropy, Adam and shuffled mini-batches; reports test accuracy (on
// the same classes) after every epoch. Returns the frozen backbone (classifier dropped).
// Shared with examples/enroll and examples/replay, which include this file.
TrainedBackbone train_fashion_backbone(const fmnist::Dataset& train_all,
                                       const fmnist::Dataset& test_all,
                                       const BackboneTraining& opts) {
    const fmnist::Dataset train = fmnist::select_classes(train_all, opts.classes);
    const fmnist::Dataset test = fmnist::select_classes(test_all, opts.classes);
    if (train.size() == 0) throw edgetune::InvalidArgument("[train_backbone] no training images");

    edgetune::Rng rng(opts.seed);
    const edgetune::BackboneConfig config{
        .input = edgetune::InputSpec::float_vector(fmnist::pixels), .hidden = {256, 128}};
    edgetune::BackboneNet net(config, rng);
    edgetune::Linear classifier(net.feature_dim(), fmnist::num_classes, rng);
    std::vector<edgetune::Var> params = net.parameters();
    for (const edgetune::Var& p : classifier.parameters()) params.push_back(p);
    edgetune::Adam adam(params, {.lr = opts.lr});

    const auto n = static_cast<Index>(train.size());
    std::vector<Index> order(static_cast<std::size_t>(n));
    for (Index i = 0; i < n; ++i) order[static_cast<std::size_t>(i)] = i;
    const bool tty = opts.verbose && isatty(STDOUT_FILENO);
    Matrix xb;
    edgetune::IdList yb;

    TrainedBackbone result;
    for (int epoch = 1; epoch <= opts.epochs; ++epoch) {
        const auto start = Clock::now();
        const std::clock_t cpu_start = std::clock();
        for (std::size_t i = order.size(); i > 1; --i) std::swap(order[i - 1], order[rng.below(i)]);
        double loss_sum = 0.0;
        std::int64_t batches = 0;
        const std::int64_t total_batches = (n + opts.batch - 1) / opts.batch;
        for (Index at = 0; at < n; at += opts.batch) {
            const Index len = std::min<Index>(opts.batch, n - at);
            xb.resize(len, fmnist::pixels);
            yb.resize(static_cast<std::size_t>(len));
            for (Index i = 0; i < len; ++i) {
                const Index row = order[static_cast<std::size_t>(at + i)];
                xb.row(i) = train.images.row(row);
                yb[static_cast<std::size_t>(i)] = train.labels[static_cast<std::size_t>(row)];
            }
            adam.zero_grad();
            edgetune::Var loss = edgetune::cross_entropy(classifier.forward(net.forward(xb)), yb);
            edgetune::backward(loss);
            adam.step();
            loss_sum += loss.item();
            ++batches;
            if (tty && (batches % 50 == 0 || batches == total_batches))
                draw_bar(epoch, opts.epochs, static_cast<double>(batches) / total_batches,
                         loss_sum / batches);
        }
        EpochStats stats{.epoch = epoch,
                         .loss = loss_sum / std::max<std::int64_t>(1, batches),
                         .test_accuracy = 0.0,
                         .seconds = seconds_since(start),
                         .cpu_seconds = cpu_seconds_since(cpu_start)};
        result.train_seconds += stats.seconds;
        result.train_cpu_seconds += stats.cpu_seconds;
        stats.test_accuracy =
            classifier_accuracy(classifier, net_features(net, test.images), test.labels);
        if (opts.verbose) {
            if (!tty) std::printf("epoch %d/%d", epoch, opts.epochs);
            std::printf("  loss %.4f  test accuracy %.2f%%  (%.1f s, %.1f s CPU)\n", stats.loss,
                        100.0 * stats.test_accuracy, stats.seconds, stats.cpu_seconds);
        }
        result.epochs.push_back(stats);
    }
    result.backbone = edgetune::Backbone::freeze(net);
    // The frozen copy must compute what the net computed: the classifier on its features
    // gives the same test accuracy (checked by main after a save/load round trip too).
    if (opts.verbose && !result.epochs.empty()) {
        const double frozen =
            classifier_accuracy(classifier, result.backbone->features(test.images), test.labels);
        std::printf("frozen backbone: test accuracy %.2f%% through Backbone::features()\n",
                    100.0 * frozen);
    }
    return result;
}

// "0-5", "0,2,4", "0-3,7" -> sorted class list. Throws InvalidArgument.
std::vector<std::int32_t> parse_classes(const std::string& text) {
    std::vector<std::int32_t> out;
    std::size_t at = 0;
    while (at < text.size()) {
        const std::size_t comma = std::min(text.find(',', at), text.size());
        const std::string part = text.substr(at, comma - at);
        int lo = 0, hi = 0;
        char dash = 0;
        const int got = std::sscanf(part.c_str(), "%d%c%d", &lo, &dash, &hi);
        if (got == 1) hi = lo;
        if (!(got == 1 || (got == 3 && dash == '-')) || lo < 0 || hi >= fmnist::num_classes ||
            lo > hi)
            throw edgetune::InvalidArgument("[train_backbone] bad --classes part '" + part +
                                            "' (expected e.g. 0-5 or 0,2,4 with classes 0..9)");
        for (int c = lo; c <= hi; ++c)
            if (std::find(out.begin(), out.end(), c) == out.end()) out.push_back(c);
        at = comma + 1;
    }
    std::sort(out.begin(), out.end());
    if (out.empty()) throw edgetune::InvalidArgument("[train_backbone] --classes is empty");
    return out;
}

std::vector<edgetune::Sample> to_samples(const fmnist::Dataset& d) {
    std::vector<edgetune::Sample> out(d.size());
    for (std::size_t i = 0; i < d.size(); ++i) {
        const auto row = d.images.row(static_cast<Index>(i));
        out[i].input.assign(row.data(), row.data() + row.size());
        out[i].label = d.labels[i];
    }
    return out;
}

std::vector<std::vector<std::size_t>> rows_per_class(const fmnist::Dataset& d) {
    std::vector<std::vector<std::size_t>> out(fmnist::num_classes);
    for (std::size_t i = 0; i < d.size(); ++i)
        out[static_cast<std::size_t>(d.labels[i])].push_back(i);
    return out;
}

void remove_db(const std::string& path) {
    for (const char* suffix : {"", "-wal", "-shm", "-journal"})
        std::filesystem::remove(path + suffix);
}

}  // namespace pretrain
