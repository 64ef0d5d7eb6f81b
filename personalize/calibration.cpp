// calibration.cpp — the "unknown" threshold (detail/calibration.hpp): genuine versus impostor
// scores of the user's held-out samples, an operating point at a target FAR or the EER.
#include <algorithm>
#include <cmath>
#include <limits>

#include "detail/calibration.hpp"

namespace edgetune::detail {

namespace {

// Fraction of `sorted` (ascending) at or above t, and below t.
double at_or_above(const std::vector<float>& sorted, float t) {
    const auto it = std::lower_bound(sorted.begin(), sorted.end(), t);
    return static_cast<double>(sorted.end() - it) / static_cast<double>(sorted.size());
}

// The smallest candidate threshold (a score, or just above the largest) where FAR <= FRR: there
// the two curves cross; the EER is their mean at the crossing.
double equal_error(const std::vector<float>& genuine, const std::vector<float>& impostor,
                   float& threshold) {
    std::vector<float> candidates = genuine;
    candidates.insert(candidates.end(), impostor.begin(), impostor.end());
    candidates.push_back(std::nextafter(
        candidates.empty() ? 1.0f : *std::max_element(candidates.begin(), candidates.end()),
        std::numeric_limits<float>::infinity()));
    std::sort(candidates.begin(), candidates.end());
    double best_gap = 2.0, eer = 1.0;
    for (float t : candidates) {
        const double far = at_or_above(impostor, t);
        const double frr = 1.0 - at_or_above(genuine, t);
        if (std::abs(far - frr) < best_gap) {
            best_gap = std::abs(far - frr);
            eer = 0.5 * (far + frr);
            threshold = t;
        }
    }
    return eer;
}

}  // namespace

void check_unknown(const Unknown& u) {
    if (u.kind == Unknown::Kind::target_far && !(u.far > 0.0 && u.far < 1.0))
        throw InvalidArgument("[train] unknown: target FAR " + std::to_string(u.far) +
                              " outside (0, 1)");
    if (u.kind == Unknown::Kind::off && !u.background.empty())
        throw InvalidArgument("[train] unknown: a background set of " +
                              std::to_string(u.background.size()) +
                              " samples without an operating point (Unknown::at_far or "
                              "at_equal_error)");
}

Matrix background_features(const Backbone& backbone, const Unknown& u) {
    if (u.background.empty()) return Matrix(0, backbone.feature_dim());
    try {
        return backbone.features(std::span<const Sample>(u.background));
    } catch (const InvalidArgument& e) {
        throw InvalidArgument(std::string("[train] unknown.background: ") + e.what());
    }
}

namespace {

Eigen::RowVectorXf unit(const Eigen::RowVectorXf& v) {
    const float n = v.norm();
    return n > 0.0f ? Eigen::RowVectorXf(v / n) : v;
}

}  // namespace

Matrix class_prototypes(const Dataset& d, const std::vector<std::size_t>& rows, Index classes) {
    Matrix sums = Matrix::Zero(classes, d.features.cols());
    for (std::size_t r : rows) sums.row(d.labels[r]) += unit(d.features.row(static_cast<Index>(r)));
    for (Index c = 0; c < classes; ++c) sums.row(c) = unit(sums.row(c));
    return sums;
}

// features [n x F], prototypes [C x F] -> [n x C]
Matrix cosine_scores(const Matrix& features, const Matrix& prototypes) {
    Matrix x(features.rows(), features.cols());
    for (Index i = 0; i < features.rows(); ++i) x.row(i) = unit(features.row(i));
    return x * prototypes.transpose();
}

std::vector<float> stranger_scores(const Matrix& features, const Matrix& prototypes) {
    std::vector<float> out;
    if (features.rows() == 0) return out;
    const Matrix scores = cosine_scores(features, prototypes);
    for (Index i = 0; i < scores.rows(); ++i) out.push_back(scores.row(i).maxCoeff());
    return out;
}

std::optional<Calibration> calibrate(const Matrix& probs, const IdList& labels, const Unknown& u,
                                     std::string& note, const std::vector<float>& strangers) {
    std::vector<float> genuine, impostor = strangers;
    for (Index i = 0; i < probs.rows(); ++i)
        for (Index c = 0; c < probs.cols(); ++c)
            (c == labels[static_cast<std::size_t>(i)] ? genuine : impostor).push_back(probs(i, c));
    std::sort(genuine.begin(), genuine.end());
    std::sort(impostor.begin(), impostor.end());
    if (genuine.size() < min_scores || impostor.size() < min_scores) {
        note = "too little held-out data to calibrate unknown: " + std::to_string(genuine.size()) +
               " genuine and " + std::to_string(impostor.size()) + " impostor scores (need " +
               std::to_string(min_scores) + " of each)";
        return std::nullopt;
    }
    Calibration c;
    c.genuine = static_cast<std::int64_t>(genuine.size());
    c.impostor = static_cast<std::int64_t>(impostor.size());
    float eer_threshold = 0.0f;
    c.eer = equal_error(genuine, impostor, eer_threshold);
    float t = eer_threshold;
    if (u.kind == Unknown::Kind::target_far) {
        const double n = static_cast<double>(impostor.size());
        if (n * u.far < 1.0) {
            note = "too little held-out data to calibrate unknown at FAR " + std::to_string(u.far) +
                   ": " + std::to_string(impostor.size()) + " impostor scores, at least " +
                   std::to_string(static_cast<std::int64_t>(std::ceil(1.0 / u.far))) + " needed";
            return std::nullopt;
        }
        // At most floor(far * n) impostors may be accepted: just above the one ranked next.
        const auto allowed = static_cast<std::size_t>(std::floor(u.far * n));
        t = std::nextafter(impostor[impostor.size() - 1 - allowed],
                           std::numeric_limits<float>::infinity());
    }
    c.threshold = t;
    c.far = at_or_above(impostor, t);
    c.frr = 1.0 - at_or_above(genuine, t);
    return c;
}

}  // namespace edgetune::detail
