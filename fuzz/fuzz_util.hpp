// fuzz_util.hpp — what the fuzz targets share: a scratch file per process (on /dev/shm when
// there is one, so a loader that reads a path costs no disk I/O) and the small fixed backbone
// the CLI readers and the database target parse against.
#pragma once

#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>

#include "personalize.hpp"

namespace edgetune_fuzz {

// A path unique to this process and `name`, in a RAM-backed directory if possible.
inline std::string scratch_path(const std::string& name) {
    const std::filesystem::path dir =
        std::filesystem::is_directory("/dev/shm") ? "/dev/shm" : "/tmp";
    return (dir / ("edgetune-fuzz-" + std::to_string(::getpid()) + "-" + name)).string();
}

// Replaces `path` with exactly `size` bytes of `data`.
inline void write_scratch(const std::string& path, const std::uint8_t* data, std::size_t size) {
    std::FILE* f = std::fopen(path.c_str(), "wb");
    if (f == nullptr) std::abort();
    if (size > 0 && std::fwrite(data, 1, size, f) != size) std::abort();
    std::fclose(f);
}

// A 4-float-input tanh MLP 4 -> 6 (fixed seed): what the CSV, IDX and database inputs are
// parsed for.
inline std::shared_ptr<const edgetune::Backbone> fixed_backbone() {
    static const std::shared_ptr<const edgetune::Backbone> bb = [] {
        edgetune::Rng rng(11);
        edgetune::BackboneNet net({.input = edgetune::InputSpec::float_vector(4),
                                   .hidden = {6},
                                   .activation = edgetune::Activation::tanh},
                                  rng);
        return edgetune::Backbone::freeze(net);
    }();
    return bb;
}

}  // namespace edgetune_fuzz
