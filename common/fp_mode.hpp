// fp_mode.hpp — flush-to-zero for the library's own work, set and restored per scope.
//
// Tiny activations and Adam moments go subnormal during training, and on many CPUs every
// operation on a subnormal takes a slow microcode path (~100x): on an Intel Xeon a head_mlp
// step took 3.35 ms with subnormals and 0.73 ms flushed. The Personalizer therefore trains,
// extracts features and predicts with subnormal inputs and results flushed to zero:
//   x86-64: MXCSR FTZ (bit 15) and DAZ (bit 6), which govern SSE/AVX arithmetic;
//   aarch64: FPCR.FZ (bit 24), which governs scalar and NEON single precision.
// The caller's mode is restored when the scope ends, so nothing leaks into the app's threads,
// and results do not depend on the mode the app's thread happened to run in.
// NOTE: the mode is per thread; a scope covers only work done on the thread that opened it.
// Elsewhere (other architectures) the guard does nothing.
#pragma once

#include <cstdint>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#endif

namespace edgetune {

class FlushDenormals {
public:
    FlushDenormals() noexcept : saved_(read()) { write(saved_ | bits); }
    ~FlushDenormals() { write(saved_); }
    FlushDenormals(const FlushDenormals&) = delete;
    FlushDenormals& operator=(const FlushDenormals&) = delete;

    // True when this thread currently flushes subnormals (all of `bits` set).
    static bool active() noexcept { return (read() & bits) == bits && bits != 0; }

private:
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    static constexpr std::uint64_t bits = (1u << 15) | (1u << 6);  // FTZ | DAZ
    static std::uint64_t read() noexcept {
        return _mm_getcsr();
    }
    static void write(std::uint64_t v) noexcept {
        _mm_setcsr(static_cast<unsigned>(v));
    }
#elif defined(__aarch64__) && (defined(__GNUC__) || defined(__clang__))
    static constexpr std::uint64_t bits = std::uint64_t{1} << 24;  // FPCR.FZ
    static std::uint64_t read() noexcept {
        std::uint64_t v;
        __asm__ __volatile__("mrs %0, fpcr" : "=r"(v));
        return v;
    }
    static void write(std::uint64_t v) noexcept {
        __asm__ __volatile__("msr fpcr, %0" : : "r"(v));
    }
#else
    static constexpr std::uint64_t bits = 0;
    static std::uint64_t read() noexcept {
        return 0;
    }
    static void write(std::uint64_t) noexcept {}
#endif
    std::uint64_t saved_;
};

}  // namespace edgetune
