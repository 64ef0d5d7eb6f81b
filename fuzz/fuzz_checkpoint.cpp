// fuzz_checkpoint.cpp — fuzz target: the checkpoint decoder (envelope, then the bounded cereal
// payload) on arbitrary bytes. Anything but a Checkpoint or CorruptData is a bug; a decoded
// checkpoint must encode again and decode to the same tensors.
#include <cstdint>
#include <cstdlib>

#include "storage.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    try {
        const edgetune::Checkpoint c = edgetune::decode_checkpoint({data, size});
        const edgetune::Checkpoint again =
            edgetune::decode_checkpoint(edgetune::encode_checkpoint(c));
        if (again.tensors.size() != c.tensors.size() || again.step != c.step) std::abort();
        for (std::size_t i = 0; i < c.tensors.size(); ++i)
            if (again.tensors[i].second != c.tensors[i].second) std::abort();
    } catch (const edgetune::CorruptData&) {
    }
    return 0;
}
