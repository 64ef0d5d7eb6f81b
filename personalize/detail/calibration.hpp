// detail/calibration.hpp — the "unknown" decision: a threshold on cosine-prototype scores (the
// cosine between an input's features and a class's mean feature direction) calibrated from
// genuine and impostor scores of held-out samples (private to personalize/).
// NOTE: softmax probabilities were tried first and do not reject strangers: a linear head is
// most confident far from every class (0 of 40 strangers rejected in test_open_world).
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "detail/training.hpp"
#include "personalize.hpp"

namespace edgetune::detail {

// Throws InvalidArgument for a target FAR outside (0, 1), or a background set with kind off.
void check_unknown(const Unknown& u);

// The features of u.background [n x F] (n = 0 without one). Throws InvalidArgument naming the
// bad sample ("[train] unknown.background: ...").
Matrix background_features(const Backbone& backbone, const Unknown& u);

// The L2-normalized mean of the normalized features of each class over `rows` of d: [C x F]; a
// class without rows gets a zero row (every score against it is 0).
Matrix class_prototypes(const Dataset& d, const std::vector<std::size_t>& rows, Index classes);

// features [n x F], prototypes [C x F] -> cosine scores [n x C].
Matrix cosine_scores(const Matrix& features, const Matrix& prototypes);

// Each row's best score [n]: a stranger (a background sample) is accepted when it reaches the
// threshold for any class, so that is its one impostor score. features [n x F].
std::vector<float> stranger_scores(const Matrix& features, const Matrix& prototypes);

// Genuine scores probs(i, labels[i]) against impostor scores probs(i, c), c != labels[i], plus
// the `strangers` scores (stranger_scores of a background set); the
// threshold of `u` (accept: score >= threshold) with its measured FAR, FRR and the EER. Returns
// nothing and sets `note` when there are fewer than min_scores of either kind, or too few
// impostor scores to measure the target FAR (fewer than 1 / far).
std::optional<Calibration> calibrate(const Matrix& probs, const IdList& labels, const Unknown& u,
                                     std::string& note, const std::vector<float>& strangers = {});

inline constexpr std::size_t min_scores = 10;

}  // namespace edgetune::detail
