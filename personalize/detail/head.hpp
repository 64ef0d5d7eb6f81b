// detail/head.hpp — the trainable head on top of frozen features (private to personalize/).
//
// Invariant: parameters() order is stable and matches the tensors of a head checkpoint.
#pragma once

#include <vector>

#include "personalize.hpp"

namespace edgetune {

class Head : public Module {
public:
    // Init::zeros draws nothing: for a head whose parameters are loaded next.
    Head(const HeadSpec& spec, Index feature_dim, Rng& rng, Init init = Init::torch_default);

    // features [n x F] -> outputs [n x C] (logits, or regression targets). Features are
    // L2-normalized first when spec.normalize.
    Var forward(const Matrix& features);
    // The same without recording a graph.
    Matrix infer(const Matrix& features);

    // Prototype heads: for each class c with init[c], set its row so that at this point the
    // head is nearest-class-mean on normalized features: W_c = 2 mu_c / T, b_c = -|mu_c|^2 / T
    // (spec.cosine: W_c = mu_c / (|mu_c| T), b_c = 0; a class whose mean is 0 is skipped).
    // features [n x F], labels [n].
    void init_prototypes(const Matrix& features, const IdList& labels,
                         const std::vector<bool>& init);

    // Linear and mlp heads that have trained classes (`seen`): each class c with init[c] (and
    // samples) gets a nearest-class-mean column in its last layer at the scale of the trained
    // columns, so a class enrolled into a trained head classifies before any step:
    // W_c = s 2 mu_c, b_c = -s |mu_c|^2 with s such that |W_c| is the mean norm of the seen
    // columns; mu_c the class mean of the last layer's input (last_layer_input). No-op without
    // a seen column.
    void init_scaled_prototypes(const Matrix& features, const IdList& labels,
                                const std::vector<bool>& init, const std::vector<bool>& seen);

    // The last Linear's input [n x in]: the prepared features (linear heads) or the hidden
    // activations before it (mlp heads), without a graph. features [n x F].
    Matrix last_layer_input(const Matrix& features);

    // Copies values in; throws CorruptData if names or shapes differ.
    void load(const std::vector<std::pair<std::string, Matrix>>& tensors);
    std::vector<std::pair<std::string, Matrix>> tensors() const;

    const HeadSpec& spec() const { return spec_; }

private:
    // Per-class sums [C x width of x] and counts of the rows of x.
    void class_sums(const Matrix& x, const IdList& labels, Matrix& sums,
                    std::vector<Index>& counts) const;
    Matrix prepare(const Matrix& features) const;
    HeadSpec spec_;
    Index feature_dim_;
    std::shared_ptr<Sequential> net_;
};

// Resizing a head's classes (its last layer: the last two tensors, weight [in x C] and bias
// [1 x C], of Head::tensors() order; optimizer slots are index-aligned with them).
// grow_classes appends columns up to `classes`: zero weights and a bias below every existing one
// (prototype heads: -1/T, as a fresh head), so a class without samples is never predicted; slot
// columns start at zero. drop_class removes column `label` of both. A tensor list or slot list
// with fewer than two entries is left alone.
void grow_classes(std::vector<std::pair<std::string, Matrix>>& tensors, const HeadSpec& spec,
                  Index classes);
void grow_classes(OptimizerState& state, Index classes);
void drop_class(std::vector<std::pair<std::string, Matrix>>& tensors, Index label);
void drop_class(OptimizerState& state, Index label);

}  // namespace edgetune
