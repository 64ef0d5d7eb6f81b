// fuzz_cli_readers.cpp — fuzz targets for the CLI's CSV and IDX readers (cli/input.cpp, with
// the number parsing of cli/args.cpp), compiled into this target so it is instrumented. One
// binary per reader: FUZZ_CSV or FUZZ_IDX selects it.
//
// CSV input: byte 0 bit 0 = labelled, the rest is the file. IDX input: byte 0 = where the
// images file ends (as a fraction of the rest, /255), the rest split there into the images
// file and the labels file. Failure and edgetune::Error are the expected rejections.
#include <cstdint>
#include <cstdlib>

#include "../cli/args.cpp"
#include "../cli/input.cpp"

#include "fuzz_util.hpp"

using namespace edgetune;
using namespace edgetune::cli;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size == 0) return 0;
    const auto bb = edgetune_fuzz::fixed_backbone();
    try {
#if defined(FUZZ_CSV)
        static const std::string path = edgetune_fuzz::scratch_path("input.csv");
        edgetune_fuzz::write_scratch(path, data + 1, size - 1);
        const auto rows = read_csv(path, *bb, 3, (data[0] & 1) != 0);
        for (const auto& [line, s] : rows)
            if (s.input.size() != 4 || (s.label != -1 && (s.label < 0 || s.label >= 3)))
                std::abort();
#elif defined(FUZZ_IDX)
        static const std::string images = edgetune_fuzz::scratch_path("images.idx");
        static const std::string labels = edgetune_fuzz::scratch_path("labels.idx");
        const std::size_t split = (size - 1) * data[0] / 255;
        edgetune_fuzz::write_scratch(images, data + 1, split);
        edgetune_fuzz::write_scratch(labels, data + 1 + split, size - 1 - split);
        const idx::Data d = read_idx(images, labels, 0, *bb, 3);
        for (const Sample& s : idx_samples(d, 0, d.size()))
            if (s.input.size() != 4 || s.label < 0 || s.label >= 3) std::abort();
#else
#error "define FUZZ_CSV or FUZZ_IDX"
#endif
    } catch (const Failure&) {
    } catch (const edgetune::Error&) {
    }
    return 0;
}
