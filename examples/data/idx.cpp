// idx.cpp — the IDX reader (idx.hpp).
#include "idx.hpp"

#include <zlib.h>

#include <algorithm>
#include <cstdio>

#include "error.hpp"

namespace edgetune::idx {

namespace {

constexpr std::uint32_t images_magic = 0x00000803;  // unsigned byte data, 3 dimensions
constexpr std::uint32_t labels_magic = 0x00000801;  // unsigned byte data, 1 dimension

// A gzip file opened for reading; gzread also reads uncompressed files transparently.
class GzFile {
public:
    explicit GzFile(std::string path) : path_(std::move(path)), file_(gzopen(path_.c_str(), "rb")) {
        if (file_ == nullptr) throw StorageError("[idx] cannot open '" + path_ + "'");
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
                throw CorruptData("[idx] '" + path_ + "': short read of " + what +
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

// Checks the magic and returns the item count.
std::uint32_t read_header(GzFile& f, std::uint32_t magic, const char* kind) {
    const std::uint32_t got = f.read_u32("magic number");
    if (got != magic) {
        char buf[32];
        std::snprintf(buf, sizeof buf, "0x%08x", got);
        throw CorruptData("[idx] '" + f.path() + "' is not an IDX " + kind + " file (magic " + buf +
                          ")");
    }
    return f.read_u32("item count");
}

}  // namespace

Data read(const std::string& images_path, const std::string& labels_path, std::int64_t limit) {
    if (limit < 0)
        throw InvalidArgument("[idx] limit = " + std::to_string(limit) + " must be >= 0");
    GzFile images(images_path);
    GzFile labels(labels_path);
    const std::uint32_t n_images = read_header(images, images_magic, "image");
    Data d;
    d.rows = images.read_u32("row count");
    d.cols = images.read_u32("column count");
    const std::uint32_t n_labels = read_header(labels, labels_magic, "label");
    if (n_images != n_labels)
        throw CorruptData("[idx] '" + images_path + "' has " + std::to_string(n_images) +
                          " images but '" + labels_path + "' has " + std::to_string(n_labels) +
                          " labels");
    // NOTE: the counts come from the file: allocation follows the bytes actually read (a
    // short read throws), chunk by chunk, never the declared count at once.
    const auto n =
        limit > 0 ? std::min<std::int64_t>(limit, n_images) : static_cast<std::int64_t>(n_images);
    // NOTE: rows x cols is declared too: bound it, and size the chunks by bytes, so a forged
    // header cannot make one read allocate more than max_chunk_bytes ahead of the data.
    constexpr std::uint64_t max_image_bytes = std::uint64_t{1} << 26;
    constexpr std::uint64_t max_chunk_bytes = std::uint64_t{1} << 24;
    const std::uint64_t declared = std::uint64_t{d.rows} * d.cols;
    if (declared == 0 || declared > max_image_bytes)
        throw CorruptData("[idx] '" + images_path + "' declares images of " +
                          std::to_string(d.rows) + " x " + std::to_string(d.cols) +
                          " pixels (1 to " + std::to_string(max_image_bytes) + " allowed)");
    const auto image_bytes = static_cast<std::size_t>(declared);
    const auto chunk = static_cast<std::int64_t>(
        std::clamp<std::uint64_t>(max_chunk_bytes / declared, 1, 4096));  // images per read
    for (std::int64_t at = 0; at < n; at += chunk) {
        const auto len = static_cast<std::size_t>(std::min(chunk, n - at));
        const std::size_t old_pixels = d.pixels.size(), old_labels = d.labels.size();
        d.pixels.resize(old_pixels + len * image_bytes);
        images.read(d.pixels.data() + old_pixels, len * image_bytes, "pixels");
        d.labels.resize(old_labels + len);
        labels.read(d.labels.data() + old_labels, len, "labels");
    }
    return d;
}

}  // namespace edgetune::idx
