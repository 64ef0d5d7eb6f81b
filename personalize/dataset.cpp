// dataset.cpp — the Dataset a training run or an evaluation reads (detail/training.hpp): from
// the store (labels, targets, weights and the cached features, ascending id), or from samples
// given by the caller.
#include <algorithm>

#include "detail/training.hpp"

namespace edgetune::detail {

Dataset read_dataset(const SampleStore& st, const HeadSpec& spec, const std::string& digest,
                     Index feature_dim) {
    Dataset d;
    std::vector<Sample> batch;
    for (auto cursor = st.scan({.batch = 1024, .fields = Fields::no_input}); cursor.next(batch);) {
        for (const Sample& s : batch) {
            d.ids.push_back(s.id);
            d.labels.push_back(s.label);
            d.weights.push_back(s.weight);
        }
        if (!spec.classifies()) {
            const Index w = spec.outputs;
            const Index at = d.targets.rows();
            d.targets.conservativeResize(at + static_cast<Index>(batch.size()), w);
            for (std::size_t i = 0; i < batch.size(); ++i)
                d.targets.row(at + static_cast<Index>(i)) =
                    Eigen::Map<const Eigen::RowVectorXf>(batch[i].target.data(), w);
        }
    }
    d.features.resize(static_cast<Index>(d.ids.size()), feature_dim);
    constexpr std::size_t chunk = 4096;
    for (std::size_t at = 0; at < d.ids.size(); at += chunk) {
        const std::size_t len = std::min(chunk, d.ids.size() - at);
        d.features.middleRows(static_cast<Index>(at), static_cast<Index>(len)) =
            st.get_features(digest, std::span(d.ids).subspan(at, len));
    }
    return d;
}

Dataset dataset_of(std::span<const Sample> samples, Matrix features, const HeadSpec& spec) {
    const char* op = "[evaluate] ";
    Dataset d;
    d.features = std::move(features);
    const std::int64_t outputs = spec.outputs;
    if (spec.classifies()) {
        for (std::size_t i = 0; i < samples.size(); ++i) {
            if (samples[i].label < 0 || samples[i].label >= outputs)
                throw InvalidArgument(op + std::string("label ") +
                                      std::to_string(samples[i].label) + " of sample " +
                                      std::to_string(i) + " out of range for " +
                                      std::to_string(outputs) + " classes");
            d.labels.push_back(samples[i].label);
        }
    } else {
        d.targets.resize(static_cast<Index>(samples.size()), outputs);
        for (std::size_t i = 0; i < samples.size(); ++i) {
            if (static_cast<std::int64_t>(samples[i].target.size()) != outputs)
                throw InvalidArgument(op + std::string("sample ") + std::to_string(i) +
                                      " has a target of width " +
                                      std::to_string(samples[i].target.size()) + ", expected " +
                                      std::to_string(outputs));
            d.targets.row(static_cast<Index>(i)) =
                Eigen::Map<const Eigen::RowVectorXf>(samples[i].target.data(), outputs);
        }
    }
    return d;
}

}  // namespace edgetune::detail
