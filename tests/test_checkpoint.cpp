// test_checkpoint.cpp — the checkpoint format (FORMAT.md): round trips, the byte layout, and
// corrupt or hostile input (flipped bits, truncation, forged lengths, a randomized loop), which
// must give CorruptData, never a crash or an allocation the payload does not pay for.
// Also write_file_atomic / read_file.
#include "storage.hpp"

#include <doctest/doctest.h>

#include <unistd.h>
#include <zlib.h>
#include "test_util.hpp"

#include <atomic>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <string>

using namespace edgetune;
using namespace edgetune_test;

namespace {

Matrix ramp(Index rows, Index cols, float scale) {
    Matrix m(rows, cols);
    for (Index i = 0; i < m.size(); ++i) m.data()[i] = scale * static_cast<float>(i) - 1.0f;
    return m;
}

Checkpoint sample_checkpoint() {
    Checkpoint ck;
    ck.kind = "head";
    ck.attrs = {{"arch", "linear"}, {"in", "128"}, {"out", "10"}, {"note", ""}};
    ck.tensors = {
        {"weight", ramp(10, 128, 0.001f)}, {"bias", ramp(1, 10, 0.5f)}, {"empty", Matrix(0, 3)}};
    ck.optimizer.kind = "adam";
    ck.optimizer.step = 42;
    ck.optimizer.lrs = {1e-3f, 5e-4f};
    ck.optimizer.slots = {
        {ramp(10, 128, 1e-4f), ramp(10, 128, 1e-6f)}, {ramp(1, 10, 0.1f), ramp(1, 10, 0.2f)}, {}};
    ck.step = 1234567890123;
    ck.rng = {1, 0xffffffffffffffffULL, 3, 0x8000000000000000ULL};
    ck.metrics = "{\"loss\": 0.25}";
    return ck;
}

void check_equal(const Checkpoint& a, const Checkpoint& b) {
    CHECK(a.kind == b.kind);
    CHECK(a.attrs == b.attrs);
    REQUIRE(a.tensors.size() == b.tensors.size());
    for (std::size_t i = 0; i < a.tensors.size(); ++i) {
        CHECK(a.tensors[i].first == b.tensors[i].first);
        CHECK(a.tensors[i].second.rows() == b.tensors[i].second.rows());
        CHECK(a.tensors[i].second.cols() == b.tensors[i].second.cols());
        CHECK(a.tensors[i].second == b.tensors[i].second);
    }
    CHECK(a.optimizer.kind == b.optimizer.kind);
    CHECK(a.optimizer.step == b.optimizer.step);
    CHECK(a.optimizer.lrs == b.optimizer.lrs);
    REQUIRE(a.optimizer.slots.size() == b.optimizer.slots.size());
    for (std::size_t p = 0; p < a.optimizer.slots.size(); ++p) {
        REQUIRE(a.optimizer.slots[p].size() == b.optimizer.slots[p].size());
        for (std::size_t k = 0; k < a.optimizer.slots[p].size(); ++k)
            CHECK(a.optimizer.slots[p][k] == b.optimizer.slots[p][k]);
    }
    CHECK(a.step == b.step);
    CHECK(a.rng == b.rng);
    CHECK(a.metrics == b.metrics);
}

// Builds payloads by hand, following FORMAT.md.
struct Bytes {
    std::vector<std::uint8_t> b;
    Bytes& u8(std::uint8_t v) {
        b.push_back(v);
        return *this;
    }
    Bytes& le(std::uint64_t v, int n) {
        for (int i = 0; i < n; ++i) b.push_back(static_cast<std::uint8_t>(v >> (8 * i)));
        return *this;
    }
    Bytes& u64(std::uint64_t v) { return le(v, 8); }
    Bytes& f32(float v) {
        std::uint32_t bits;
        std::memcpy(&bits, &v, 4);
        return le(bits, 4);
    }
    Bytes& str(const std::string& s) {
        u64(s.size());
        b.insert(b.end(), s.begin(), s.end());
        return *this;
    }
    // Everything after the tensors list of an otherwise empty checkpoint.
    Bytes& tail() {
        return str("").u64(0).u64(0).u64(0).u64(7).u64(1).u64(2).u64(3).u64(4).str("m");
    }
};

std::vector<std::uint8_t> envelope(const std::vector<std::uint8_t>& payload) {
    Bytes e;
    e.u8('E').u8('T').u8('C').u8('K').le(1, 4).u64(payload.size());
    e.le(crc32_z(0, payload.data(), payload.size()), 4);
    e.b.insert(e.b.end(), payload.begin(), payload.end());
    return e.b;
}

}  // namespace

TEST_CASE("checkpoint round trip") {
    const Checkpoint ck = sample_checkpoint();
    const std::vector<std::uint8_t> bytes = encode_checkpoint(ck);
    check_equal(decode_checkpoint(bytes), ck);
    CHECK(encode_checkpoint(decode_checkpoint(bytes)) == bytes);  // deterministic bytes

    const Checkpoint empty;
    check_equal(decode_checkpoint(encode_checkpoint(empty)), empty);
}

TEST_CASE("checkpoint byte layout matches FORMAT.md") {
    const std::vector<std::uint8_t> bytes = encode_checkpoint(sample_checkpoint());
    REQUIRE(bytes.size() > 20);
    CHECK(std::string(bytes.begin(), bytes.begin() + 4) == "ETCK");
    Bytes header;
    header.le(1, 4).u64(bytes.size() - 20);
    CHECK(std::vector<std::uint8_t>(bytes.begin() + 4, bytes.begin() + 16) == header.b);
    Bytes crc;
    crc.le(crc32_z(0, bytes.data() + 20, bytes.size() - 20), 4);
    CHECK(std::vector<std::uint8_t>(bytes.begin() + 16, bytes.begin() + 20) == crc.b);
    CHECK(bytes[20] == 1);  // cereal's little-endian flag

    // A hand-built payload decodes to what it says.
    Bytes p;
    p.u8(1).str("head").u64(1).str("k").str("v").u64(1).str("w").u64(2).u64(1).f32(1.5f).f32(-2.0f);
    p.tail();
    const Checkpoint ck = decode_checkpoint(envelope(p.b));
    CHECK(ck.kind == "head");
    CHECK(ck.attrs == std::vector<std::pair<std::string, std::string>>{{"k", "v"}});
    REQUIRE(ck.tensors.size() == 1);
    CHECK(ck.tensors[0].first == "w");
    CHECK(ck.tensors[0].second.rows() == 2);
    CHECK(ck.tensors[0].second(0, 0) == 1.5f);
    CHECK(ck.tensors[0].second(1, 0) == -2.0f);
    CHECK(ck.step == 7);
    CHECK(ck.rng == Rng::State{1, 2, 3, 4});
    CHECK(ck.metrics == "m");
}

TEST_CASE("encode rejects non-finite values and repeated names") {
    Checkpoint ck = sample_checkpoint();
    ck.tensors[0].second(3, 4) = std::numeric_limits<float>::quiet_NaN();
    const std::string msg = thrown<InvalidArgument>([&] { encode_checkpoint(ck); });
    CHECK(msg.find("tensor 'weight'(3, 4) is NaN") != std::string::npos);

    ck = sample_checkpoint();
    ck.optimizer.slots[1][0](0, 0) = std::numeric_limits<float>::infinity();
    CHECK_THROWS_AS(encode_checkpoint(ck), InvalidArgument);
    ck = sample_checkpoint();
    ck.optimizer.lrs[0] = std::numeric_limits<float>::infinity();
    CHECK_THROWS_AS(encode_checkpoint(ck), InvalidArgument);
    ck = sample_checkpoint();
    ck.tensors[1].first = "weight";
    CHECK_THROWS_AS(encode_checkpoint(ck), InvalidArgument);
}

TEST_CASE("every flipped bit and every truncation is CorruptData") {
    Checkpoint small;
    small.kind = "head";
    small.tensors = {{"w", ramp(2, 3, 1.0f)}};
    small.metrics = "ok";
    const std::vector<std::uint8_t> bytes = encode_checkpoint(small);
    for (std::size_t bit = 0; bit < bytes.size() * 8; ++bit) {
        std::vector<std::uint8_t> bad = bytes;
        bad[bit / 8] ^= static_cast<std::uint8_t>(1u << (bit % 8));
        CHECK_THROWS_AS(decode_checkpoint(bad), CorruptData);
    }
    for (std::size_t n = 0; n < bytes.size(); ++n)
        CHECK_THROWS_AS(decode_checkpoint(std::span(bytes.data(), n)), CorruptData);
    std::vector<std::uint8_t> longer = bytes;
    longer.push_back(0);
    CHECK_THROWS_AS(decode_checkpoint(longer), CorruptData);
}

TEST_CASE("forged lengths are rejected before anything is allocated") {
    SUBCASE("envelope length") {
        std::vector<std::uint8_t> bytes = encode_checkpoint(sample_checkpoint());
        for (int i = 8; i < 16; ++i) bytes[static_cast<std::size_t>(i)] = 0xff;
        const std::string msg = thrown<CorruptData>([&] { decode_checkpoint(bytes); });
        CHECK(msg.find("header declares") != std::string::npos);
    }
    SUBCASE("newer format version") {
        std::vector<std::uint8_t> bytes = encode_checkpoint(sample_checkpoint());
        bytes[4] = 2;
        CHECK(thrown<CorruptData>([&] { decode_checkpoint(bytes); }).find("version 2") !=
              std::string::npos);
    }
    // Payloads with a valid CRC: only the length checks stand between them and a huge
    // allocation. Each message must come from the pre-allocation check ("remain").
    const std::uint64_t huge = 0x4000000000000000ULL;
    SUBCASE("string length") {
        Bytes p;
        p.u8(1).u64(huge);
        const std::string msg = thrown<CorruptData>([&] { decode_checkpoint(envelope(p.b)); });
        CHECK(msg.find("kind declares") != std::string::npos);
        CHECK(msg.find("remain") != std::string::npos);
    }
    SUBCASE("string length one past the end") {
        Bytes p;
        p.u8(1).u64(5).u8('a').u8('b').u8('c').u8('d');
        CHECK(thrown<CorruptData>([&] { decode_checkpoint(envelope(p.b)); }).find("remain") !=
              std::string::npos);
    }
    SUBCASE("list counts") {
        Bytes attrs;
        attrs.u8(1).str("").u64(huge);
        CHECK(thrown<CorruptData>([&] {
                  decode_checkpoint(envelope(attrs.b));
              }).find("attrs declares") != std::string::npos);
        Bytes tensors;
        tensors.u8(1).str("").u64(0).u64(huge);
        CHECK(thrown<CorruptData>([&] {
                  decode_checkpoint(envelope(tensors.b));
              }).find("tensors declares") != std::string::npos);
        Bytes slots;
        slots.u8(1).str("").u64(0).u64(0).str("adam").u64(0).u64(0).u64(huge);
        CHECK(thrown<CorruptData>([&] {
                  decode_checkpoint(envelope(slots.b));
              }).find("optimizer.slots declares") != std::string::npos);
        Bytes lrs;
        lrs.u8(1).str("").u64(0).u64(0).str("sgd").u64(0).u64(3).f32(0.1f).f32(0.1f);
        CHECK(thrown<CorruptData>([&] { decode_checkpoint(envelope(lrs.b)); }).find("remain") !=
              std::string::npos);
    }
    SUBCASE("matrix shape") {
        // rows * cols wraps to 0 in 64 bits, a huge rows with cols 1, and one float too many.
        const std::vector<std::pair<std::uint64_t, std::uint64_t>> shapes = {
            {1ULL << 32, 1ULL << 32}, {huge, 1}, {1, huge}, {3, 1}, {1ULL << 62, 0}};
        for (const auto& [rows, cols] : shapes) {
            Bytes p;
            p.u8(1).str("").u64(0).u64(1).str("w").u64(rows).u64(cols).f32(1).f32(2);
            const std::string msg = thrown<CorruptData>([&] { decode_checkpoint(envelope(p.b)); });
            CHECK(msg.find("tensor 'w' declares") != std::string::npos);
        }
    }
    SUBCASE("other hostile payloads") {
        Bytes big_endian;
        big_endian.u8(0).str("").u64(0).u64(0).tail();
        CHECK_THROWS_AS(decode_checkpoint(envelope(big_endian.b)), CorruptData);
        CHECK_THROWS_AS(decode_checkpoint(envelope({})), CorruptData);

        Bytes trailing;
        trailing.u8(1).str("").u64(0).u64(0).tail().u8(0);
        CHECK(thrown<CorruptData>([&] {
                  decode_checkpoint(envelope(trailing.b));
              }).find("unread") != std::string::npos);

        Bytes nan;
        nan.u8(1).str("").u64(0).u64(1).str("w").u64(1).u64(1).f32(std::nanf("")).tail();
        CHECK(thrown<CorruptData>([&] { decode_checkpoint(envelope(nan.b)); }).find("NaN") !=
              std::string::npos);

        Bytes twice;
        twice.u8(1).str("").u64(0).u64(2).str("w").u64(0).u64(0).str("w").u64(0).u64(0).tail();
        CHECK(thrown<CorruptData>([&] { decode_checkpoint(envelope(twice.b)); }).find("repeats") !=
              std::string::npos);

        Bytes truncated;
        truncated.u8(1).str("head").u64(0).u64(0).str("");
        CHECK(thrown<CorruptData>([&] {
                  decode_checkpoint(envelope(truncated.b));
              }).find("truncated") != std::string::npos);
    }
}

TEST_CASE("randomized corruption never crashes") {
    const std::vector<std::uint8_t> original = encode_checkpoint(sample_checkpoint());
    Checkpoint small;
    small.kind = "k";
    small.attrs = {{"a", "b"}};
    small.tensors = {{"w", ramp(2, 2, 1.0f)}};
    small.optimizer.kind = "sgd";
    small.optimizer.lrs = {0.1f};
    small.optimizer.slots = {{ramp(2, 2, 0.5f)}};
    const std::vector<std::uint8_t> compact = encode_checkpoint(small);
    Rng rng(2024);
    int decoded = 0;
    const int rounds = std::getenv("EDGETUNE_STRESS") ? 200000 : 20000;
    for (int round = 0; round < rounds; ++round) {
        const std::vector<std::uint8_t>& base = round % 4 == 0 ? original : compact;
        // Mutate the payload, then (mostly) fix the CRC so the payload parser is exercised.
        std::vector<std::uint8_t> payload(base.begin() + 20, base.end());
        const int edits = 1 + static_cast<int>(rng.below(4));
        for (int e = 0; e < edits; ++e) {
            const std::size_t at = rng.below(payload.size());
            switch (rng.below(4)) {
                case 0:
                    payload[at] ^= static_cast<std::uint8_t>(1u << rng.below(8));
                    break;
                case 1:
                    payload[at] = static_cast<std::uint8_t>(rng.below(256));
                    break;
                case 2:
                    payload.resize(at + 1);
                    break;
                default:  // a length-like field: 8 random high bytes
                    for (std::size_t k = at; k < std::min(at + 8, payload.size()); ++k)
                        payload[k] = static_cast<std::uint8_t>(rng.below(256));
            }
        }
        std::vector<std::uint8_t> bytes = envelope(payload);
        if (round % 10 == 0) bytes[16] ^= 1;  // a wrong CRC now and then
        try {
            decode_checkpoint(bytes);
            ++decoded;  // a mutation that still forms a valid checkpoint
        } catch (const CorruptData&) {
        }
    }
    MESSAGE(decoded << " of " << rounds << " mutated payloads were still valid");
}

TEST_CASE("write_file_atomic and read_file") {
    const std::string path = temp_path("file") + ".etc";
    const std::vector<std::uint8_t> bytes = encode_checkpoint(sample_checkpoint());
    write_file_atomic(path, bytes);
    CHECK(read_file(path, bytes.size()) == bytes);
    check_equal(decode_checkpoint(read_file(path, 1 << 24)), sample_checkpoint());

    const std::vector<std::uint8_t> other = {1, 2, 3};
    write_file_atomic(path, other);  // replaces
    CHECK(read_file(path, 100) == other);
    write_file_atomic(path, {});
    CHECK(read_file(path, 0).empty());
    // No temporary file is left behind.
    const std::filesystem::path p(path);
    for (const auto& entry : std::filesystem::directory_iterator(p.parent_path()))
        CHECK(entry.path().filename().string().find(p.filename().string() + ".tmp") ==
              std::string::npos);

    write_file_atomic(path, bytes);
    const std::string msg = thrown<CorruptData>([&] { read_file(path, bytes.size() - 1); });
    CHECK(msg.find("limit") != std::string::npos);
    CHECK_THROWS_AS(read_file(path + ".missing", 100), StorageError);
    CHECK_THROWS_AS(read_file(p.parent_path().string(), 100), StorageError);  // a directory
    CHECK_THROWS_AS(write_file_atomic(path + ".d/nested/file", bytes), StorageError);
    std::filesystem::remove(path);
}

TEST_CASE("a checkpoint stored in the sample store decodes") {
    const std::string path = temp_path("store") + ".db";
    {
        SampleStore store = SampleStore::open(
            path, {.input = InputSpec::float_vector(4), .label = LabelSpec::classes(2)});
        const Checkpoint ck = sample_checkpoint();
        store.save_checkpoint(
            {.kind = CheckpointKind::trained, .step = ck.step, .metrics = ck.metrics},
            encode_checkpoint(ck));
        check_equal(decode_checkpoint(store.latest_checkpoint(CheckpointKind::trained)->payload),
                    ck);
    }
    for (const char* suffix : {"", "-wal", "-shm"}) std::filesystem::remove(path + suffix);
}
