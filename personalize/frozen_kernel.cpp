// frozen_kernel.cpp — one frozen_dense variant; compiled once per instruction set (the
// `kernels` table in meson.build).
//
// The arithmetic is fixed by explicit Eigen packets (Eigen's internal packet API, stable since
// 3.3: the widest float packet of the target, __m128 with SSE2, __m256 with AVX2): pmadd is
// _mm*_fmadd_ps when the variant is built with FMA, else padd(pmul()) on a target that has no
// FMA to contract it into. No scalar float arithmetic happens here: the last width % packet
// columns are computed as a full packet over a zero-padded copy of W. So every path (tile
// heights 1..6, wide and one-packet tiles, the padded tail) performs the sequence of
// detail/frozen_kernel.hpp per element.
//
// NOTE: plain `a * b + c` loops would leave the choice to GCC, which (-ffp-contract=fast, its
// default) may fuse them into FMA in one loop and not in another. And Eigen's products round
// differently by shape (GEMV for one row, blocked GEMM for many).
//
// NOTE: the AVX2 copy renames Eigen's namespace (common/kernel_variant.hpp says why). Only
// Eigen may be used here, no std templates; everything else has internal linkage.
#include "kernel_variant.hpp"  // first

#include <Eigen/Core>

#include "detail/frozen_kernel.hpp"

namespace edgetune {

namespace {

using Index = std::ptrdiff_t;
namespace ei = Eigen::internal;
using Packet = ei::packet_traits<float>::type;
constexpr Index packet_size = ei::packet_traits<float>::size;

// Tile shapes: up to max_tile_rows rows x tile_packets[rows] packets of columns, so a tile
// holds 8..12 accumulators (x86-64 has 16 vector registers, SSE2 and AVX2 alike) and W is read
// once per row tile. A lone row is not tiled (stream_rows). Measured on the bench's
// 784->256->128 MLP: 6x2 beat 4x2, 4x3, 3x4 and 8x1.
constexpr int max_tile_rows = 6;
constexpr int tile_packets[max_tile_rows + 1] = {0, 1, 4, 4, 3, 2, 2};  // index: tile rows

// x: R rows of `depth` floats (row stride ldx); w: `depth` rows of C packets (row stride ldw);
// b: C packets; out: R rows of C packets (row stride ldo).
template <int R, int C>
void tile(const float* x, Index ldx, const float* w, Index ldw, Index depth, const float* b,
          float* out, Index ldo) {
    Packet acc[R][C];
    for (int r = 0; r < R; ++r)
        for (int c = 0; c < C; ++c) acc[r][c] = ei::pset1<Packet>(0.0f);
    for (Index k = 0; k < depth; ++k) {
        Packet wk[C];
        for (int c = 0; c < C; ++c) wk[c] = ei::ploadu<Packet>(w + k * ldw + c * packet_size);
        for (int r = 0; r < R; ++r) {
            const Packet xk = ei::pset1<Packet>(x[r * ldx + k]);
            for (int c = 0; c < C; ++c) acc[r][c] = ei::pmadd(xk, wk[c], acc[r][c]);
        }
    }
    for (int r = 0; r < R; ++r)
        for (int c = 0; c < C; ++c)
            ei::pstoreu(out + r * ldo + c * packet_size,
                        ei::padd(acc[r][c], ei::ploadu<Packet>(b + c * packet_size)));
}

// One row, its sums continued over K more rows of W: out[c] = pmadd(x[K-1], w[K-1][c], ...
// pmadd(x[0], w[0][c], out[c])) for the first `cols` columns (a multiple of packet_size).
// W is read row after row, so a single row (predict) streams W as fast as a GEMV does; the
// partial sums pass through `out` as floats, which changes no bit of the sequence.
template <int K>
void stream_rows(const float* x, const float* w, Index ldw, Index cols, float* out) {
    Packet xk[K];
    for (int k = 0; k < K; ++k) xk[k] = ei::pset1<Packet>(x[k]);
    for (Index c = 0; c < cols; c += packet_size) {
        Packet acc = ei::ploadu<Packet>(out + c);
        for (int k = 0; k < K; ++k)
            acc = ei::pmadd(xk[k], ei::ploadu<Packet>(w + k * ldw + c), acc);
        ei::pstoreu(out + c, acc);
    }
}

using RowMajor = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// The last width % packet_size columns of W and b, zero-padded to one packet.
struct Tail {
    Index col = 0;    // first column of the tail
    Index width = 0;  // valid columns, < packet_size
    RowMajor w;       // [depth x packet_size]
    RowMajor b;       // [1 x packet_size]
};

// Rows [row, row + R) of x -> the same rows of out.
template <int R>
void row_tile(const FrozenDenseArgs& a, Index row, const Tail& tail) {
    const float* x = a.x + row * a.depth;
    float* out = a.out + row * a.width;
    if constexpr (R == 1) {
        constexpr int kb = 8;  // rows of W per pass over the output row
        for (Index c = 0; c < tail.col; c += packet_size)
            ei::pstoreu(out + c, ei::pset1<Packet>(0.0f));
        Index k = 0;
        for (; k + kb <= a.depth; k += kb)
            stream_rows<kb>(x + k, a.w + k * a.width, a.width, tail.col, out);
        for (; k < a.depth; ++k) stream_rows<1>(x + k, a.w + k * a.width, a.width, tail.col, out);
        for (Index c = 0; c < tail.col; c += packet_size)
            ei::pstoreu(out + c,
                        ei::padd(ei::ploadu<Packet>(out + c), ei::ploadu<Packet>(a.b + c)));
    } else {
        constexpr int C = tile_packets[R];
        Index j = 0;
        for (; j + C * packet_size <= tail.col; j += C * packet_size)
            tile<R, C>(x, a.depth, a.w + j, a.width, a.depth, a.b + j, out + j, a.width);
        for (; j < tail.col; j += packet_size)
            tile<R, 1>(x, a.depth, a.w + j, a.width, a.depth, a.b + j, out + j, a.width);
    }
    if (tail.width == 0) return;
    float padded[R * packet_size];
    tile<R, 1>(x, a.depth, tail.w.data(), packet_size, a.depth, tail.b.data(), padded, packet_size);
    for (int r = 0; r < R; ++r)
        for (Index c = 0; c < tail.width; ++c)
            out[r * a.width + tail.col + c] = padded[r * packet_size + c];
}

}  // namespace

void EDGETUNE_KERNEL(frozen_dense)(const FrozenDenseArgs& a) {
    Tail tail;
    tail.width = a.width % packet_size;
    tail.col = a.width - tail.width;
    if (tail.width > 0) {
        const Eigen::Map<const RowMajor> w(a.w, a.depth, a.width);
        const Eigen::Map<const RowMajor> b(a.b, 1, a.width);
        tail.w = RowMajor::Zero(a.depth, packet_size);
        tail.w.leftCols(tail.width) = w.rightCols(tail.width);
        tail.b = RowMajor::Zero(1, packet_size);
        tail.b.leftCols(tail.width) = b.rightCols(tail.width);
    }
    for (Index r = 0; r < a.rows; r += max_tile_rows) {
        switch (a.rows - r < max_tile_rows ? a.rows - r : max_tile_rows) {
            case 1:
                row_tile<1>(a, r, tail);
                break;
            case 2:
                row_tile<2>(a, r, tail);
                break;
            case 3:
                row_tile<3>(a, r, tail);
                break;
            case 4:
                row_tile<4>(a, r, tail);
                break;
            case 5:
                row_tile<5>(a, r, tail);
                break;
            default:
                row_tile<max_tile_rows>(a, r, tail);
                break;
        }
    }
}

}  // namespace edgetune
