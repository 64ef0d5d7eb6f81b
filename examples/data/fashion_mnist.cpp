// fashion_mnist.cpp — IDX reader for the gzipped Fashion-MNIST files (see fashion_mnist.hpp).
#include "fashion_mnist.hpp"

#include <zlib.h>

#include <algorithm>
#include <cstdio>
#include <string>

#include "error.hpp"

namespace edgetune::fashion_mnist {

namespace {

constexpr std::uint32_t images_magic = 0x00000803;  // unsigned byte data, 3 dimensions
constexpr std::uint32_t labels_magic = 0x00000801;  // unsigned byte data, 1 dimension

// A gzip file opened for reading; gzread also reads uncompressed files transparently.
class GzFile {
public:
    explicit GzFile(std::string path) : path_(std::move(path)), file_(gzopen(path_.c_str(), "rb")) {
        if (file_ == nullptr) throw StorageError("[fashion_mnist] cannot open '" + path_ + "'");
    }
    GzFile(const GzFile&) = delete;
    GzFile& operator=(const GzFile&) = delete;
    ~GzFile() { gzclose(file_); }

    // Reads exactly `size` bytes; `what` names the field in the error.
    void read(void* out, std::size_t size, const char* what) {
        auto* at = static_cast<unsigned char*>(out);
        while (size > 0) {
            // NOTE: gzread takes an unsigned count and returns int: read in chunks below 2^31.
            const auto chunk = static_cast<unsigned>(std::min<std::size_t>(size, 1u << 30));
            const int got = gzread(file_, at, chunk);
            if (got <= 0) {
                int code = 0;
                const char* message = gzerror(file_, &code);
                throw CorruptData("[fashion_mnist] '" + path_ + "': short read of " + what +
                                  (code != Z_OK ? std::string(" (") + message + ")" : ""));
            }
            at += got;
            size -= static_cast<std::size_t>(got);
        }
    }

    std::uint32_t read_u32(const char* what) {
        unsigned char b[4];
        read(b, 4, what);
        return (std::uint32_t{b[0]} << 24) | (std::uint32_t{b[1]} << 16) |
               (std::uint32_t{b[2]} << 8) | std::uint32_t{b[3]};
    }

    const std::string& path() const { return path_; }

private:
    std::string path_;
    gzFile file_;
};

[[noreturn]] void corrupt(const GzFile& f, const std::string& message) {
    throw CorruptData("[fashion_mnist] '" + f.path() + "': " + message);
}

// Header of an IDX file: checks the magic and returns the item count.
std::uint32_t read_header(GzFile& f, std::uint32_t magic) {
    const std::uint32_t got = f.read_u32("magic number");
    if (got != magic) {
        char buf[64];
        std::snprintf(buf, sizeof buf, "magic 0x%08x, expected 0x%08x", got, magic);
        corrupt(f, buf);
    }
    return f.read_u32("item count");
}

}  // namespace

Dataset load(Split split, const LoadOptions& options) {
    if (options.limit < 0)
        throw InvalidArgument("[fashion_mnist.load] limit = " + std::to_string(options.limit) +
                              " must be >= 0");
    const std::string prefix = options.dir + (split == Split::train ? "/train" : "/t10k");
    GzFile images(prefix + "-images-idx3-ubyte.gz");
    GzFile labels(prefix + "-labels-idx1-ubyte.gz");

    const std::uint32_t n_images = read_header(images, images_magic);
    const std::uint32_t rows = images.read_u32("row count");
    const std::uint32_t cols = images.read_u32("column count");
    if (rows != image_side || cols != image_side)
        corrupt(images, "images are " + std::to_string(rows) + "x" + std::to_string(cols) +
                            ", expected 28x28");
    const std::uint32_t n_labels = read_header(labels, labels_magic);
    if (n_images != n_labels)
        throw CorruptData("[fashion_mnist] '" + images.path() + "' has " +
                          std::to_string(n_images) + " images but '" + labels.path() + "' has " +
                          std::to_string(n_labels) + " labels");
    // NOTE: the count comes from the file: it is bounded by what is actually read (a short
    // read throws), and we never allocate more than the rows we are about to fill.
    const auto n = options.limit > 0 ? std::min<std::int64_t>(options.limit, n_images)
                                     : static_cast<std::int64_t>(n_images);

    // Pixels are appended chunk by chunk (amortized growth), so the allocation follows the
    // bytes actually read; then converted once.
    std::vector<unsigned char> bytes;
    constexpr std::int64_t chunk = 4096;  // images per read
    for (std::int64_t at = 0; at < n; at += chunk) {
        const std::int64_t len = std::min(chunk, n - at);
        const std::size_t old_size = bytes.size();
        bytes.resize(old_size + static_cast<std::size_t>(len * pixels));
        images.read(bytes.data() + old_size, static_cast<std::size_t>(len * pixels), "pixels");
    }
    Dataset d;
    d.images =
        Eigen::Map<
            const Eigen::Matrix<unsigned char, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>(
            bytes.data(), n, pixels)
            .cast<float>() /
        255.0f;
    d.labels.resize(static_cast<std::size_t>(n));
    bytes.resize(static_cast<std::size_t>(n));
    labels.read(bytes.data(), bytes.size(), "labels");
    for (std::int64_t i = 0; i < n; ++i) {
        const unsigned char y = bytes[static_cast<std::size_t>(i)];
        if (y >= num_classes)
            corrupt(labels, "label " + std::to_string(y) + " of item " + std::to_string(i) +
                                " is not in [0, 10)");
        d.labels[static_cast<std::size_t>(i)] = y;
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
