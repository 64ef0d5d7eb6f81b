// detail/head.hpp — the trainable head on top of frozen features (private to personalize/).
//
// Invariant: parameters() order is stable and matches the tensors of a head checkpoint.
#pragma once

#include <vector>

#include "personalize.hpp"

namespace edgetune {

class Head : public Module {
public:
    Head(const HeadSpec& spec, Index feature_dim, Rng& rng);

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

    // Copies values in; throws CorruptData if names or shapes differ.
    void load(const std::vector<std::pair<std::string, Matrix>>& tensors);
    std::vector<std::pair<std::string, Matrix>> tensors() const;

    const HeadSpec& spec() const { return spec_; }

private:
    Matrix prepare(const Matrix& features) const;
    HeadSpec spec_;
    Index feature_dim_;
    std::shared_ptr<Sequential> net_;
};

}  // namespace edgetune
