// make_backbones.cpp — writes the two small, deterministic backbones the C ABI tests, the
// consumer test and the Python demo run on (an app would ship its own backbone file).
//   DIR/floats.etb: a tanh MLP 4 -> 16 (enough to separate 3 clusters of 4-D points)
//   DIR/floats_v2.etb: the same architecture with other weights (a backbone upgrade)
//   DIR/tokens.etb: token sequences of length 3 over a vocabulary of 20, embedded 4-wide,
//                   then a tanh MLP 12 -> 8
// Usage: make_backbones DIR
#include <cstdio>
#include <string>

#include "personalize.hpp"

int main(int argc, char** argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: make_backbones DIR\n");
        return 2;
    }
    const std::string dir = argv[1];
    edgetune::Rng rng(11);
    try {
        const edgetune::BackboneNet floats({.input = edgetune::InputSpec::float_vector(4),
                                            .vocab = 0,
                                            .embed_dim = 0,
                                            .hidden = {16},
                                            .activation = edgetune::Activation::tanh},
                                           rng);
        edgetune::Backbone::freeze(floats)->save(dir + "/floats.etb");
        const edgetune::BackboneNet floats_v2(floats.config(), rng);
        edgetune::Backbone::freeze(floats_v2)->save(dir + "/floats_v2.etb");
        const edgetune::BackboneNet tokens({.input = edgetune::InputSpec::token_sequence(3),
                                            .vocab = 20,
                                            .embed_dim = 4,
                                            .hidden = {8},
                                            .activation = edgetune::Activation::tanh},
                                           rng);
        edgetune::Backbone::freeze(tokens)->save(dir + "/tokens.etb");
    } catch (const edgetune::Error& e) {
        std::fprintf(stderr, "make_backbones: %s\n", e.what());
        return 1;
    }
    return 0;
}
