// fuzz_backbone.cpp — fuzz target: Backbone::load on an arbitrary file. A loaded backbone must
// compute finite-or-not features of the declared width without crashing; anything thrown but
// CorruptData (or InvalidArgument from features() on its own input) is a bug.
#include <cstdint>
#include <cstdlib>

#include "fuzz_util.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    static const std::string path = edgetune_fuzz::scratch_path("backbone.etb");
    edgetune_fuzz::write_scratch(path, data, size);
    try {
        const auto bb = edgetune::Backbone::load(path);
        const edgetune::InputSpec& in = bb->config().input;
        if (in.size > (1 << 16)) return 0;  // a valid but large model: nothing more to learn
        edgetune::Sample s;
        if (in.kind == edgetune::InputSpec::Kind::float_vector)
            s.input.assign(static_cast<std::size_t>(in.size), 0.5f);
        else
            s.tokens.assign(static_cast<std::size_t>(in.size), 0);
        const edgetune::Matrix f = bb->features(std::span<const edgetune::Sample>(&s, 1));
        if (f.rows() != 1 || f.cols() != bb->feature_dim()) std::abort();
    } catch (const edgetune::CorruptData&) {
    }
    return 0;
}
