// checkpoint.cpp — the checkpoint byte format and atomic file helpers (layout in FORMAT.md).
//
// Bytes = a 20-byte envelope (magic, format version, payload length, CRC32 of the payload)
// followed by a cereal PortableBinaryArchive (little-endian). NOTE: cereal's own vector/string
// loaders resize to whatever size the input declares before reading, so a forged length is a
// huge allocation. This file never lets cereal see a length: it writes every count itself and,
// on load, checks it against the bytes that remain before allocating; cereal only moves
// fixed-size integers and binary_data blocks whose size is already checked.
#include "storage.hpp"

#include "detail/file_ops.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>
#include <cereal/archives/portable_binary.hpp>

#include <array>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <istream>
#include <ostream>
#include <streambuf>
#include <system_error>
#include <unordered_set>

namespace edgetune {
namespace {

constexpr std::array<std::uint8_t, 4> envelope_magic = {'E', 'T', 'C', 'K'};
constexpr std::uint32_t format_version = 1;
constexpr std::size_t header_bytes = 20;          // magic 4, version 4, payload length 8, crc32 4
constexpr std::uint8_t cereal_little_endian = 1;  // first payload byte, written by cereal

// --- little-endian integers of the envelope ---------------------------------------------------

void put_le(std::span<std::uint8_t> out, std::size_t at, std::uint64_t v, int bytes) {
    for (int i = 0; i < bytes; ++i) out[at + i] = static_cast<std::uint8_t>(v >> (8 * i));
}

std::uint64_t get_le(std::span<const std::uint8_t> in, std::size_t at, int bytes) {
    std::uint64_t v = 0;
    for (int i = 0; i < bytes; ++i) v |= static_cast<std::uint64_t>(in[at + i]) << (8 * i);
    return v;
}

std::uint32_t crc32_of(std::span<const std::uint8_t> bytes) {
    return static_cast<std::uint32_t>(crc32_z(0, bytes.data(), bytes.size()));
}

// --- the cereal payload ----------------------------------------------------------------------

// cereal writes through a std::ostream; this one appends to a byte vector.
class VectorSink : public std::streambuf {
public:
    explicit VectorSink(std::vector<std::uint8_t>& out) : out_(out) {}

protected:
    std::streamsize xsputn(const char* s, std::streamsize n) override {
        out_.insert(out_.end(), s, s + n);
        return n;
    }
    int_type overflow(int_type c) override {
        if (!traits_type::eq_int_type(c, traits_type::eof()))
            out_.push_back(static_cast<std::uint8_t>(c));
        return traits_type::not_eof(c);
    }

private:
    std::vector<std::uint8_t>& out_;
};

// A read-only std::streambuf over a span; remaining() bounds every length read.
class SpanSource : public std::streambuf {
public:
    explicit SpanSource(std::span<const std::uint8_t> bytes) {
        // NOTE: streambuf wants char*; nothing here writes through it (no putback area).
        char* p = const_cast<char*>(reinterpret_cast<const char*>(bytes.data()));
        setg(p, p, p + bytes.size());
    }
    std::size_t remaining() const { return static_cast<std::size_t>(egptr() - gptr()); }
};

void check_finite_for_encode(const Matrix& m, std::string_view what) {
    for (Index r = 0; r < m.rows(); ++r)
        for (Index c = 0; c < m.cols(); ++c)
            if (!std::isfinite(m(r, c)))
                throw InvalidArgument(fmt::format("[encode_checkpoint] {}({}, {}) is {}", what, r,
                                                  c, std::isnan(m(r, c)) ? "NaN" : "Inf"));
}

// Payload encoding: str = u64 length + bytes; matrix = u64 rows, u64 cols, f32 row-major.
class PayloadWriter {
public:
    explicit PayloadWriter(std::vector<std::uint8_t>& out)
        : sink_(out),
          stream_(&sink_),
          archive_(stream_, cereal::PortableBinaryOutputArchive::Options::LittleEndian()) {}

    void u64(std::uint64_t v) { archive_(v); }
    void i64(std::int64_t v) { archive_(v); }
    void str(const std::string& s) {
        u64(s.size());
        archive_(cereal::binary_data(s.data(), s.size()));
    }
    void floats(const std::vector<float>& v) {
        u64(v.size());
        archive_(cereal::binary_data(v.data(), v.size() * sizeof(float)));
    }
    void matrix(const Matrix& m) {
        u64(static_cast<std::uint64_t>(m.rows()));
        u64(static_cast<std::uint64_t>(m.cols()));
        archive_(cereal::binary_data(m.data(), static_cast<std::size_t>(m.size()) * sizeof(float)));
    }

private:
    VectorSink sink_;
    std::ostream stream_;
    cereal::PortableBinaryOutputArchive archive_;
};

// The mirror of PayloadWriter. Every read first checks that the bytes it needs remain.
class PayloadReader {
public:
    explicit PayloadReader(std::span<const std::uint8_t> payload)
        : source_(payload),
          stream_(&source_),
          archive_(stream_, cereal::PortableBinaryInputArchive::Options::LittleEndian()) {}

    std::size_t remaining() const { return source_.remaining(); }

    std::uint64_t u64(std::string_view what) {
        need(8, what);
        std::uint64_t v = 0;
        archive_(v);
        return v;
    }
    std::int64_t i64(std::string_view what) {
        need(8, what);
        std::int64_t v = 0;
        archive_(v);
        return v;
    }
    // A count of elements, each encoded in at least min_bytes: bounded by what remains.
    std::size_t count(std::size_t min_bytes, std::string_view what) {
        const std::uint64_t n = u64(what);
        if (n > remaining() / min_bytes)
            throw CorruptData(fmt::format(
                "[decode_checkpoint] {} declares {} elements of >= {} bytes; {} bytes remain", what,
                n, min_bytes, remaining()));
        return static_cast<std::size_t>(n);
    }
    std::string str(std::string_view what) {
        std::string s(count(1, what), '\0');
        archive_(cereal::binary_data(s.data(), s.size()));
        return s;
    }
    std::vector<float> floats(std::string_view what) {
        std::vector<float> v(count(sizeof(float), what));
        archive_(cereal::binary_data(v.data(), v.size() * sizeof(float)));
        for (std::size_t i = 0; i < v.size(); ++i)
            if (!std::isfinite(v[i]))
                throw CorruptData(fmt::format("[decode_checkpoint] {}[{}] is not finite", what, i));
        return v;
    }
    Matrix matrix(std::string_view what) {
        const std::uint64_t rows = u64(what);
        const std::uint64_t cols = u64(what);
        const std::uint64_t floats_left = remaining() / sizeof(float);
        if (rows > floats_left || cols > floats_left || (cols != 0 && rows > floats_left / cols))
            throw CorruptData(fmt::format(
                "[decode_checkpoint] {} declares {} floats; {} bytes remain", what,
                shape_str(static_cast<Index>(rows), static_cast<Index>(cols)), remaining()));
        Matrix m(static_cast<Index>(rows), static_cast<Index>(cols));
        archive_(cereal::binary_data(m.data(), static_cast<std::size_t>(m.size()) * sizeof(float)));
        if (!m.allFinite())
            throw CorruptData(fmt::format("[decode_checkpoint] {} holds NaN or Inf", what));
        return m;
    }

private:
    void need(std::size_t bytes, std::string_view what) const {
        if (remaining() < bytes)
            throw CorruptData(fmt::format("[decode_checkpoint] payload truncated at {}", what));
    }
    SpanSource source_;
    std::istream stream_;
    cereal::PortableBinaryInputArchive archive_;
};

// Minimum encoded sizes, for count(): a string is >= 8 bytes, a matrix >= 16.
constexpr std::size_t min_str = 8;
constexpr std::size_t min_matrix = 16;

template <class Named>
const std::string* first_duplicate_name(const std::vector<std::pair<std::string, Named>>& items) {
    std::unordered_set<std::string_view> seen;
    for (const auto& [name, value] : items)
        if (!seen.insert(name).second) return &name;
    return nullptr;
}

std::string system_message() {
    return std::error_code(errno, std::generic_category()).message();
}

// Closes a file descriptor on scope exit.
struct Fd {
    int fd = -1;
    ~Fd() {
        if (fd >= 0) detail::file_ops().close(fd);
    }
};

int make_temp(char* path_template) {
    return ::mkostemp(path_template, O_CLOEXEC);
}
int open_directory(const char* path) {
    return ::open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
}

}  // namespace

std::vector<std::uint8_t> encode_checkpoint(const Checkpoint& ck) {
    for (const auto& [name, m] : ck.tensors) check_finite_for_encode(m, "tensor '" + name + "'");
    for (std::size_t p = 0; p < ck.optimizer.slots.size(); ++p)
        for (std::size_t b = 0; b < ck.optimizer.slots[p].size(); ++b)
            check_finite_for_encode(ck.optimizer.slots[p][b],
                                    fmt::format("optimizer.slots[{}][{}]", p, b));
    for (std::size_t i = 0; i < ck.optimizer.lrs.size(); ++i)
        if (!std::isfinite(ck.optimizer.lrs[i]))
            throw InvalidArgument(
                fmt::format("[encode_checkpoint] optimizer.lrs[{}] is {}", i, ck.optimizer.lrs[i]));
    if (const std::string* dup = first_duplicate_name(ck.tensors))
        throw InvalidArgument(fmt::format("[encode_checkpoint] tensor name '{}' repeats", *dup));

    std::vector<std::uint8_t> payload;
    {
        PayloadWriter w(payload);  // cereal writes the endianness byte here
        w.str(ck.kind);
        w.u64(ck.attrs.size());
        for (const auto& [key, value] : ck.attrs) {
            w.str(key);
            w.str(value);
        }
        w.u64(ck.tensors.size());
        for (const auto& [name, m] : ck.tensors) {
            w.str(name);
            w.matrix(m);
        }
        w.str(ck.optimizer.kind);
        w.i64(ck.optimizer.step);
        w.floats(ck.optimizer.lrs);
        w.u64(ck.optimizer.slots.size());
        for (const auto& slot : ck.optimizer.slots) {
            w.u64(slot.size());
            for (const auto& m : slot) w.matrix(m);
        }
        w.i64(ck.step);
        for (std::uint64_t word : ck.rng) w.u64(word);
        w.str(ck.metrics);
    }

    std::vector<std::uint8_t> out(header_bytes + payload.size());
    std::copy(envelope_magic.begin(), envelope_magic.end(), out.begin());
    put_le(out, 4, format_version, 4);
    put_le(out, 8, payload.size(), 8);
    put_le(out, 16, crc32_of(payload), 4);
    std::copy(payload.begin(), payload.end(), out.begin() + header_bytes);
    return out;
}

Checkpoint decode_checkpoint(std::span<const std::uint8_t> bytes) {
    // The envelope, entirely, before cereal sees a byte.
    if (bytes.size() < header_bytes)
        throw CorruptData(
            fmt::format("[decode_checkpoint] {} bytes is shorter than the {}-byte "
                        "header",
                        bytes.size(), header_bytes));
    if (!std::equal(envelope_magic.begin(), envelope_magic.end(), bytes.begin()))
        throw CorruptData("[decode_checkpoint] bad magic: not an edgetune checkpoint");
    const auto version = static_cast<std::uint32_t>(get_le(bytes, 4, 4));
    if (version != format_version)
        throw CorruptData(
            fmt::format("[decode_checkpoint] format version {} is not supported "
                        "(this build reads version {})",
                        version, format_version));
    const std::uint64_t length = get_le(bytes, 8, 8);
    if (length != bytes.size() - header_bytes)
        throw CorruptData(
            fmt::format("[decode_checkpoint] header declares {} payload bytes; {} "
                        "follow",
                        length, bytes.size() - header_bytes));
    const std::span<const std::uint8_t> payload = bytes.subspan(header_bytes);
    const auto stored_crc = static_cast<std::uint32_t>(get_le(bytes, 16, 4));
    if (const std::uint32_t crc = crc32_of(payload); crc != stored_crc)
        throw CorruptData(
            fmt::format("[decode_checkpoint] payload CRC32 is {:08x}; header says "
                        "{:08x}",
                        crc, stored_crc));
    if (payload.empty() || payload[0] != cereal_little_endian)
        throw CorruptData("[decode_checkpoint] payload is not a little-endian cereal archive");

    Checkpoint ck;
    try {
        PayloadReader r(payload);
        ck.kind = r.str("kind");
        // Compound lists grow element by element (no reserve): memory follows the bytes read.
        for (std::size_t n = r.count(2 * min_str, "attrs"), i = 0; i < n; ++i) {
            std::string key = r.str("attr key");
            std::string value = r.str("attr value");
            ck.attrs.emplace_back(std::move(key), std::move(value));
        }
        for (std::size_t n = r.count(min_str + min_matrix, "tensors"), i = 0; i < n; ++i) {
            std::string name = r.str("tensor name");
            Matrix value = r.matrix("tensor '" + name + "'");
            ck.tensors.emplace_back(std::move(name), std::move(value));
        }
        ck.optimizer.kind = r.str("optimizer.kind");
        ck.optimizer.step = r.i64("optimizer.step");
        ck.optimizer.lrs = r.floats("optimizer.lrs");
        for (std::size_t n = r.count(8, "optimizer.slots"), p = 0; p < n; ++p) {
            auto& slot = ck.optimizer.slots.emplace_back();
            for (std::size_t m = r.count(min_matrix, "optimizer slot"), b = 0; b < m; ++b)
                slot.push_back(r.matrix(fmt::format("optimizer.slots[{}][{}]", p, b)));
        }
        ck.step = r.i64("step");
        for (auto& word : ck.rng) word = r.u64("rng");
        ck.metrics = r.str("metrics");
        if (r.remaining() != 0)
            throw CorruptData(fmt::format("[decode_checkpoint] {} unread bytes after the payload",
                                          r.remaining()));
    } catch (const cereal::Exception& e) {
        // Unreachable while every read checks its length first; kept as a safety net.
        throw CorruptData(fmt::format("[decode_checkpoint] {}", e.what()));
    }
    if (const std::string* dup = first_duplicate_name(ck.tensors))
        throw CorruptData(fmt::format("[decode_checkpoint] tensor name '{}' repeats", *dup));
    return ck;
}

detail::FileOps& detail::file_ops() {
    static FileOps ops{.make_temp = make_temp,
                       .write = ::write,
                       .fsync = ::fsync,
                       .close = ::close,
                       .rename = ::rename,
                       .unlink = ::unlink,
                       .open_directory = open_directory};
    return ops;
}

void write_file_atomic(const std::string& path, std::span<const std::uint8_t> bytes) {
    const detail::FileOps& os = detail::file_ops();
    std::string tmp = path + ".tmpXXXXXX";
    Fd file{os.make_temp(tmp.data())};  // mode 0600
    if (file.fd < 0)
        throw StorageError(
            fmt::format("[write_file_atomic] cannot create a temporary file for "
                        "'{}': {}",
                        path, system_message()));
    auto fail = [&](std::string_view step) {
        const std::string message =
            fmt::format("[write_file_atomic] {} failed for '{}': {}", step, path, system_message());
        os.unlink(tmp.c_str());
        throw StorageError(message);
    };
    for (std::size_t done = 0; done < bytes.size();) {
        const ssize_t n = os.write(file.fd, bytes.data() + done, bytes.size() - done);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) fail("write");
        done += static_cast<std::size_t>(n);
    }
    if (os.fsync(file.fd) != 0) fail("fsync");
    const int fd = file.fd;
    file.fd = -1;
    if (os.close(fd) != 0) fail("close");
    if (os.rename(tmp.c_str(), path.c_str()) != 0) fail("rename");
    // The rename is durable once the directory entry is: fsync the directory too.
    std::string dir = std::filesystem::path(path).parent_path().string();
    Fd dir_fd{os.open_directory(dir.empty() ? "." : dir.c_str())};
    if (dir_fd.fd < 0 || os.fsync(dir_fd.fd) != 0)
        throw StorageError(
            fmt::format("[write_file_atomic] fsync of the directory of '{}' "
                        "failed: {}",
                        path, system_message()));
}

std::vector<std::uint8_t> read_file(const std::string& path, std::size_t max_bytes) {
    Fd file{::open(path.c_str(), O_RDONLY | O_CLOEXEC)};
    if (file.fd < 0)
        throw StorageError(fmt::format("[read_file] cannot open '{}': {}", path, system_message()));
    struct stat st {};
    if (::fstat(file.fd, &st) != 0 || !S_ISREG(st.st_mode))
        throw StorageError(fmt::format("[read_file] '{}' is not a regular file", path));
    auto too_large = [&](std::uint64_t size) {
        return CorruptData(
            fmt::format("[read_file] '{}' is {} bytes; the limit is {}", path, size, max_bytes));
    };
    if (static_cast<std::uint64_t>(st.st_size) > max_bytes) throw too_large(st.st_size);
    // The size can change while reading: read until end of file, never past max_bytes + 1.
    const std::size_t cap = max_bytes == SIZE_MAX ? SIZE_MAX : max_bytes + 1;
    std::vector<std::uint8_t> out(static_cast<std::size_t>(st.st_size) + 1);
    std::size_t done = 0;
    for (;;) {
        if (done == out.size()) {
            if (done > max_bytes) throw too_large(done);
            out.resize(std::min(out.size() * 2, cap));
        }
        const ssize_t n = ::read(file.fd, out.data() + done, out.size() - done);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0)
            throw StorageError(
                fmt::format("[read_file] reading '{}' failed: {}", path, system_message()));
        if (n == 0) break;
        done += static_cast<std::size_t>(n);
    }
    if (done > max_bytes) throw too_large(done);
    out.resize(done);
    return out;
}

}  // namespace edgetune
