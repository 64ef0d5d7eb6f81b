// fashion_mnist.cpp — the Fashion-MNIST splits through the IDX reader (see fashion_mnist.hpp).
#include "fashion_mnist.hpp"

#include <algorithm>
#include <string>

#include "error.hpp"
#include "idx.hpp"

namespace edgetune::fashion_mnist {

Dataset load(Split split, const LoadOptions& options) {
    if (options.limit < 0)
        throw InvalidArgument("[fashion_mnist.load] limit = " + std::to_string(options.limit) +
                              " must be >= 0");
    const std::string prefix = options.dir + (split == Split::train ? "/train" : "/t10k");
    const std::string images_path = prefix + "-images-idx3-ubyte.gz";
    const std::string labels_path = prefix + "-labels-idx1-ubyte.gz";
    const idx::Data raw = idx::read(images_path, labels_path, options.limit);
    if (raw.rows != image_side || raw.cols != image_side)
        throw CorruptData("[fashion_mnist] '" + images_path + "': images are " +
                          std::to_string(raw.rows) + "x" + std::to_string(raw.cols) +
                          ", expected 28x28");
    const auto n = static_cast<Index>(raw.size());
    Dataset d;
    d.images =
        Eigen::Map<
            const Eigen::Matrix<std::uint8_t, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>(
            raw.pixels.data(), n, pixels)
            .cast<float>() /
        255.0f;
    d.labels.resize(raw.size());
    for (std::size_t i = 0; i < raw.size(); ++i) {
        if (raw.labels[i] >= num_classes)
            throw CorruptData("[fashion_mnist] '" + labels_path + "': label " +
                              std::to_string(raw.labels[i]) + " of item " + std::to_string(i) +
                              " is not in [0, 10)");
        d.labels[i] = raw.labels[i];
    }
    return d;
}

Dataset select_classes(const Dataset& data, const std::vector<std::int32_t>& classes,
                       std::int64_t per_class) {
    std::vector<std::int64_t> taken(num_classes, 0);
    std::vector<std::size_t> rows;
    for (std::size_t i = 0; i < data.size(); ++i) {
        const std::int32_t y = data.labels[i];
        if (std::find(classes.begin(), classes.end(), y) == classes.end()) continue;
        if (per_class > 0 && taken[static_cast<std::size_t>(y)] >= per_class) continue;
        ++taken[static_cast<std::size_t>(y)];
        rows.push_back(i);
    }
    return select_rows(data, rows);
}

Dataset select_rows(const Dataset& data, const std::vector<std::size_t>& rows) {
    Dataset out;
    out.images.resize(static_cast<Index>(rows.size()), data.images.cols());
    out.labels.reserve(rows.size());
    for (std::size_t i = 0; i < rows.size(); ++i) {
        if (rows[i] >= data.size())
            throw InvalidArgument("[fashion_mnist.select_rows] row " + std::to_string(rows[i]) +
                                  " out of range for " + std::to_string(data.size()) + " rows");
        out.images.row(static_cast<Index>(i)) = data.images.row(static_cast<Index>(rows[i]));
        out.labels.push_back(data.labels[rows[i]]);
    }
    return out;
}

}  // namespace edgetune::fashion_mnist
