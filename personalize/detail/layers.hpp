// layers.hpp — frozen inference layers of an imported backbone: a layer list (a small DAG) read
// from a backbone file and run forward only, outside autograd (private to personalize).
//
// A graph backbone file is a Checkpoint of kind "backbone" whose attrs hold `graph = 1`, the
// input declaration, the output value's name and one text line per layer; its tensors hold the
// weights, referenced by name (FORMAT.md, "Backbone files"). Every value is one sample's tensor
// of rank 1..4 (no batch axis; images are C x H x W, row-major); a batch of n samples is a
// Matrix [n x size], one row per sample.
//
// Batch invariance: a sample's output is the same bits in any batch. Matrix products go through
// frozen_dense (frozen_kernel.hpp: each element by a fixed sequence of operations whatever the
// shape; dense layers as one row per sample, convolutions as one product per sample: weight
// [M x K] times that sample's im2col [K x Ho*Wo]); every other layer computes each element
// from that sample's elements alone, by one scalar function.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "autograd.hpp"
#include "storage.hpp"

namespace edgetune::detail {

// One sample's tensor shape: rank 1..4, every dimension >= 1.
struct Shape {
    std::array<Index, 4> dims{1, 1, 1, 1};
    int rank = 1;
    Index size() const;
    std::string str() const;  // e.g. "[6 x 24 x 24]"
    bool operator==(const Shape& o) const;
};

enum class LayerOp {
    constant,         // a stored tensor (weight) as a value, shared by every sample
    conv,             // [C x H x W] -> [M x Ho x Wo]; weight [M x K], K = C/g*kh*kw; bias [1 x M]
    dense,            // [... x K] -> [... x N] over the last axis; weight [K x N], bias [1 x N]
    max_pool,         // [C x H x W] -> [C x Ho x Wo]; padding counts as -infinity
    avg_pool,         // same; count_include_pad decides the divisor at the borders
    global_avg_pool,  // [C x H x W] -> [C x 1 x 1]
    reshape,          // same elements, new shape (Flatten / Reshape / Squeeze / Unsqueeze)
    concat,           // along `axis`; every other dimension equal
    gather,           // token ids [L] -> [L x E] rows of the table weight [V x E]
    add,              // binary elementwise, numpy broadcasting over right-aligned dimensions
    sub,
    mul,
    div,
    relu,        // unary elementwise
    leaky_relu,  // alpha
    clip,        // min(max(x, lo), hi); ReLU6 is clip 0, 6
    sigmoid,
    tanh,
    erf,
    gelu,          // 0.5 x (1 + erf(x / sqrt 2))
    hard_sigmoid,  // max(0, min(1, alpha x + beta))
    hard_swish,    // x * hard_sigmoid(x) with alpha 1/6, beta 1/2
};

// One layer: reads values `inputs` (indices of earlier values; value 0 is the graph input),
// writes value `output`. Weights point into the graph's checkpoint tensors.
struct Layer {
    LayerOp op = LayerOp::relu;
    std::string text;  // the layer's line in the file, for error messages
    std::vector<int> inputs;
    int output = 0;
    const Matrix* weight = nullptr;
    const Matrix* bias = nullptr;
    std::array<Index, 2> kernel{1, 1}, stride{1, 1}, dilation{1, 1};
    std::array<Index, 4> pad{0, 0, 0, 0};  // top, left, bottom, right
    Index groups = 1;
    int axis = 0;
    float alpha = 0.0f, beta = 0.0f;  // leaky_relu alpha; clip lo, hi; hard_sigmoid alpha, beta
    bool count_include_pad = false;
};

// The parsed, validated layer list of a graph backbone file.
class FrozenGraph {
public:
    enum class InputKind { image, floats, tokens };

    // Throws CorruptData (naming the layer) for anything the file declares that it does not
    // hold or that does not fit: unknown ops, undefined values, shapes that do not match the
    // weights, sizes above the bounds below. Nothing is allocated from a declared size before
    // it is checked.
    explicit FrozenGraph(Checkpoint checkpoint);

    // inputs [n x D] (D = C*H*W for images, normalized here per channel) -> features [n x F].
    Matrix run(const Matrix& inputs) const;
    // tokens [n*L] -> features [n x F]; ids are checked against every table they index.
    Matrix run(const IdList& tokens) const;

    InputKind input_kind() const { return input_kind_; }
    const Shape& input_shape() const { return shapes_[0]; }
    Index input_size() const { return shapes_[0].size(); }
    Index feature_dim() const { return shapes_[static_cast<std::size_t>(output_)].size(); }
    // Token inputs: the smallest table any gather reads (ids must be below it).
    Index vocab() const { return vocab_; }
    Index embed_dim() const { return embed_dim_; }
    const Checkpoint& checkpoint() const { return checkpoint_; }

    // Bounds on what a file may declare (floats per sample).
    static constexpr Index max_value_size = Index{1} << 24;
    static constexpr Index max_total_size = Index{1} << 26;

private:
    Matrix forward(Matrix input, const IdList* tokens) const;
    Index chunk_rows() const;

    Checkpoint checkpoint_;
    InputKind input_kind_ = InputKind::floats;
    std::vector<Layer> layers_;
    std::vector<Shape> shapes_;  // per value
    std::vector<int> last_use_;  // per value: the last layer reading it (-1: none)
    int output_ = 0;
    const Matrix* mean_ = nullptr;  // images: [1 x C]
    const Matrix* std_ = nullptr;   // images: [1 x C]
    Index vocab_ = 0, embed_dim_ = 0;
};

// x [rows x depth] (contiguous) times w [depth x width] plus b [width] into out [rows x width],
// batch-invariant (frozen_kernel.hpp), on this process's kernel variant.
void frozen_dense(Index rows, Index depth, Index width, const float* x, const float* w,
                  const float* b, float* out);

}  // namespace edgetune::detail
