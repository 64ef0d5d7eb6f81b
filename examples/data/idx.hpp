// idx.hpp — the one reader of IDX files (the MNIST family's format: Fashion-MNIST here), used
// by the examples (fashion_mnist.hpp), the CLI's `add --idx-images`, the bench and the tests.
//
// IDX (big-endian): images start with magic 0x00000803 (unsigned bytes, 3 dimensions), count,
// rows, cols, then count*rows*cols bytes; labels with magic 0x00000801, count, then count bytes.
// Files may be gzipped or plain (zlib reads both). Every field is checked: the magics, that
// the two files hold the same count, no short read. Errors name the file and the field:
// "[idx] 'labels.idx' is not an IDX image file (magic 0x00000801)" (CorruptData), or
// "[idx] cannot open 'x.gz'" (StorageError).
// Limits: unsigned-byte data only; what is read is held in memory.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace edgetune::idx {

// Invariant: pixels.size() == labels.size() * rows * cols.
struct Data {
    std::uint32_t rows = 0, cols = 0;  // of one image
    std::vector<std::uint8_t> pixels;  // [n x rows*cols], row-major, image after image
    std::vector<std::uint8_t> labels;  // [n]
    std::size_t size() const { return labels.size(); }
};

// The first `limit` images (0 = all) of `images_path` and their labels from `labels_path`.
Data read(const std::string& images_path, const std::string& labels_path, std::int64_t limit = 0);

}  // namespace edgetune::idx
