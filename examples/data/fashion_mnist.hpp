// fashion_mnist.hpp — reads Fashion-MNIST from the gzipped IDX files of Debian's
// `dataset-fashion-mnist` package (examples, tests, benchmarks; nothing is downloaded).
//
//   auto train = fashion_mnist::load(fashion_mnist::Split::train);          // 60000 images
//   auto test = fashion_mnist::load(fashion_mnist::Split::test, {.limit = 2000});
//   // train.images [n x 784] in [0, 1], train.labels [n] in [0, 10)
//
// The files are read by idx.hpp (magic, counts of the two files agree, no short read); this adds
// the checks of the dataset (28x28, labels < 10): a bad file throws edgetune::CorruptData naming
// the file and the field, a missing one StorageError.
// Limits: 28x28 single-channel images only (what the dataset ships); the whole split is read
// into memory (60000 x 784 floats = 188 MB for the full training set).
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "matrix.hpp"

namespace edgetune::fashion_mnist {

// Where Debian's `dataset-fashion-mnist` package installs its files.
inline constexpr const char* default_dir = "/usr/share/datasets/fashion-mnist";
inline constexpr Index image_side = 28;
inline constexpr Index pixels = image_side * image_side;  // 784
inline constexpr int num_classes = 10;

// Class names in label order (0 = T-shirt/top ... 9 = Ankle boot).
inline constexpr std::array<const char*, num_classes> class_names = {
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal",      "Shirt",   "Sneaker",  "Bag",   "Ankle boot"};

enum class Split { train, test };

struct LoadOptions {
    std::string dir = default_dir;
    std::int64_t limit = 0;  // 0 = every image; else the first `limit` in file order
};

// Invariant: images.rows() == labels.size(); images.cols() == 784; values in [0, 1].
struct Dataset {
    Matrix images;  // [n x 784], pixel / 255, row-major 28x28 per image
    IdList labels;  // [n], each in [0, 10)
    std::size_t size() const { return labels.size(); }
};

// The split's images and labels ("train-*" or "t10k-*" files under options.dir).
Dataset load(Split split, const LoadOptions& options = {});

// The rows whose label is in `classes`, in their original order; at most `per_class` of each
// class when per_class > 0 (the first ones in file order, so the choice is reproducible from
// any other language).
Dataset select_classes(const Dataset& data, const std::vector<std::int32_t>& classes,
                       std::int64_t per_class = 0);

// The rows at `rows`, in that order. Throws InvalidArgument for an index out of range.
Dataset select_rows(const Dataset& data, const std::vector<std::size_t>& rows);

}  // namespace edgetune::fashion_mnist
