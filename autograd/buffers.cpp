// buffers.cpp — the per-thread cache of graph buffers (op values, gradients, saved tensors).
//
// A training step allocates its activations and their gradients and frees them when the graph
// dies. For batch-sized buffers (a [64 x 10000] vocabulary logit matrix is 2.5 MB) glibc hands
// the memory back to the OS and the next step faults it in again, page by page: a third of a
// vocabulary step went to the kernel. Released buffers wait here instead and are handed out
// again by exact element count (Eigen's resize() keeps storage when the count is unchanged).
//
// Invariants: `bytes` is the sum of the cached buffers' sizes; at most kMaxBuffers buffers and
// kMaxBytes bytes are held; only buffers of at least kMinFloats elements are cached (smaller
// ones are cheap for malloc). Everything is thread-local: no locks, and a buffer freed on
// another thread simply joins that thread's cache.
#include <array>

#include "detail/node.hpp"

namespace edgetune {

namespace {

constexpr Index kMinFloats = 1024;  // 4 KiB
constexpr std::size_t kMaxBuffers = 32;
constexpr std::size_t kMaxBytes = std::size_t{64} << 20;

std::size_t bytes_of(const Matrix& m) {
    return static_cast<std::size_t>(m.size()) * sizeof(float);
}

// NOTE: a trivially destructible flag, readable even after the cache itself was destroyed at
// thread exit (a static Var dying later must not touch the dead cache).
thread_local bool t_cache_gone = false;

struct Cache {
    std::array<Matrix, kMaxBuffers> buffers;  // [0, count): oldest first
    std::size_t count = 0;
    std::size_t bytes = 0;

    ~Cache() { t_cache_gone = true; }

    // Removes buffer i from the cache and returns it.
    Matrix take(std::size_t i) noexcept {
        Matrix m = std::move(buffers[i]);
        bytes -= bytes_of(m);
        for (std::size_t j = i; j + 1 < count; ++j) buffers[j] = std::move(buffers[j + 1]);
        --count;
        return m;
    }
};
thread_local Cache t_cache;

}  // namespace

Matrix acquire_buffer(Index rows, Index cols) {
    const Index size = rows * cols;
    if (size >= kMinFloats && !t_cache_gone) {
        Cache& c = t_cache;
        for (std::size_t i = c.count; i-- > 0;) {  // most recent first
            if (c.buffers[i].size() != size) continue;
            Matrix m = c.take(i);
            m.resize(rows, cols);  // same element count: no reallocation
            return m;
        }
    }
    return Matrix(rows, cols);
}

void release_buffer(Matrix& m) noexcept {
    const std::size_t b = bytes_of(m);
    if (m.size() < kMinFloats || b > kMaxBytes || t_cache_gone) {
        m.resize(0, 0);
        return;
    }
    Cache& c = t_cache;
    while (c.count > 0 && (c.count == kMaxBuffers || c.bytes + b > kMaxBytes)) c.take(0);
    c.buffers[c.count++] = std::move(m);
    c.bytes += b;
    m.resize(0, 0);
}

std::size_t buffer_cache_bytes() noexcept {
    return t_cache_gone ? 0 : t_cache.bytes;
}

void release_buffer_cache() noexcept {
    if (t_cache_gone) return;
    Cache& c = t_cache;
    while (c.count > 0) c.take(c.count - 1);
}

}  // namespace edgetune
