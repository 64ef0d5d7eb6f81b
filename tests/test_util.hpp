// test_util.hpp — helpers shared by the test suites: unique temporary paths, a temporary
// database that cleans up after itself, and exception-message capture.
#pragma once

#include <doctest/doctest.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>

namespace edgetune_test {

// A unique path (no extension) under $EDGETUNE_TEST_TMP (or /tmp), which is created.
inline std::string temp_path(const std::string& name) {
    const char* env = std::getenv("EDGETUNE_TEST_TMP");
    const std::filesystem::path dir = env && *env ? env : "/tmp";
    std::filesystem::create_directories(dir);
    static std::atomic<int> counter{0};
    return (dir / ("edgetune-" + name + "-" + std::to_string(::getpid()) + "-" +
                   std::to_string(counter++)))
        .string();
}

// A unique database path; removes the file and its companions (-wal, -shm, -reserve) before and
// after use.
struct TempDb {
    std::string path;
    explicit TempDb(const std::string& name) : path(temp_path(name) + ".db") { remove_all(); }
    ~TempDb() { remove_all(); }
    TempDb(const TempDb&) = delete;
    TempDb& operator=(const TempDb&) = delete;
    void remove_all() const {
        for (const char* suffix : {"", "-wal", "-shm", "-reserve"})
            std::filesystem::remove(path + suffix);
    }
};

// The message of the E that f() throws; fails the test if it throws nothing.
template <class E, class F>
std::string thrown(F&& f) {
    try {
        f();
    } catch (const E& e) {
        return e.what();
    }
    FAIL("expected an exception");
    return {};
}

// A committed fixture file: $EDGETUNE_FIXTURES/name (meson sets it), else tests/fixtures/name
// next to this header.
inline std::string fixture_path(const std::string& name) {
    const char* env = std::getenv("EDGETUNE_FIXTURES");
    const std::filesystem::path dir =
        env && *env ? std::filesystem::path(env)
                    : std::filesystem::path(__FILE__).parent_path() / "fixtures";
    return (dir / name).string();
}

// Whether two lists of named tensors (Head::tensors(), head_parameters()) hold the same names,
// shapes and float bits, in the same order.
template <class Tensors>
bool same_tensor_bits(const Tensors& a, const Tensors& b) {
    if (a.size() != b.size()) return false;
    for (std::size_t i = 0; i < a.size(); ++i)
        if (a[i].first != b[i].first || a[i].second.rows() != b[i].second.rows() ||
            a[i].second.cols() != b[i].second.cols() ||
            std::memcmp(a[i].second.data(), b[i].second.data(),
                        sizeof(float) * static_cast<std::size_t>(a[i].second.size())) != 0)
            return false;
    return true;
}

inline bool contains(const std::string& text, const std::string& part) {
    return text.find(part) != std::string::npos;
}

}  // namespace edgetune_test
