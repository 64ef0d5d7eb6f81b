// make_seeds.cpp — writes the seed corpora of the fuzz targets into DIR/<target>/ (run once;
// the output is committed under fuzz/corpus/): valid inputs of each format, so the fuzzer
// starts from files that parse, plus a few near misses.
//   make_seeds DIR
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "fuzz_util.hpp"

using namespace edgetune;

namespace {

void write(const std::filesystem::path& path, const std::vector<std::uint8_t>& bytes) {
    std::filesystem::create_directories(path.parent_path());
    std::ofstream(path, std::ios::binary)
        .write(reinterpret_cast<const char*>(bytes.data()),
               static_cast<std::streamsize>(bytes.size()));
}

std::vector<std::uint8_t> text(const std::string& s) {
    return {s.begin(), s.end()};
}

void be32(std::vector<std::uint8_t>& out, std::uint32_t v) {
    for (int shift = 24; shift >= 0; shift -= 8)
        out.push_back(static_cast<std::uint8_t>(v >> shift));
}

// The IDX target's input: a split byte, then images and labels files.
std::vector<std::uint8_t> idx_input(const std::vector<std::uint8_t>& images,
                                    const std::vector<std::uint8_t>& labels) {
    const std::size_t n = images.size() + labels.size();
    std::uint8_t split = 0;
    while (split < 255 && n * split / 255 < images.size()) ++split;
    std::vector<std::uint8_t> out{split};
    out.insert(out.end(), images.begin(), images.end());
    out.insert(out.end(), labels.begin(), labels.end());
    return out;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: make_seeds DIR\n");
        return 2;
    }
    const std::filesystem::path dir = argv[1];
    const auto bb = edgetune_fuzz::fixed_backbone();
    const std::string tmp = edgetune_fuzz::scratch_path("seed");

    // Backbones: the fixed float one and a token one.
    bb->save(tmp);
    const std::vector<std::uint8_t> float_backbone = read_file(tmp, 1 << 20);
    write(dir / "backbone" / "float_mlp", float_backbone);
    Rng rng(3);
    BackboneNet tokens(
        {.input = InputSpec::token_sequence(3), .vocab = 7, .embed_dim = 2, .hidden = {5}}, rng);
    Backbone::freeze(tokens)->save(tmp);
    write(dir / "backbone" / "token_mlp", read_file(tmp, 1 << 20));

    // Checkpoints: a head with Adam state, a backbone file, an empty checkpoint.
    Checkpoint head;
    head.kind = "head";
    head.attrs = {{"head", "linear outputs=3"}, {"backbone_digest", bb->digest()}};
    Matrix w(6, 3), b(1, 3);
    for (Index i = 0; i < w.size(); ++i) w.data()[i] = 0.1f * static_cast<float>(i) - 0.5f;
    b.setConstant(0.25f);
    head.tensors = {{"weight", w}, {"bias", b}};
    head.optimizer.kind = "adam";
    head.optimizer.slots = {{w, w}, {b, b}};
    head.step = 42;
    head.metrics = "{\"loss\":0.5}";
    write(dir / "checkpoint" / "head_adam", encode_checkpoint(head));
    write(dir / "checkpoint" / "backbone", float_backbone);
    write(dir / "checkpoint" / "empty", encode_checkpoint(Checkpoint{}));

    // CSV (byte 0: labelled?).
    write(dir / "csv" / "labelled", text("\x01"
                                         "0,1,2,3,4\n1,0.5,-2,1e-3,+4\n# note\n\n2,1,1,1,1\n"));
    write(dir / "csv" / "rows", text(std::string(1, '\0') + "1,2,3,4\n0.25, 0.5 ,1,2\r\n"));
    write(dir / "csv" / "bad", text("\x01"
                                    "7,1,2,3,4\n1,nan,0,0,0\n1,+-1,0,0,0\n"));

    // IDX: 3 images of 2x2 and their labels; and a count mismatch.
    std::vector<std::uint8_t> images, labels;
    be32(images, 0x803);
    be32(images, 3);
    be32(images, 2);
    be32(images, 2);
    for (int i = 0; i < 12; ++i) images.push_back(static_cast<std::uint8_t>(20 * i));
    be32(labels, 0x801);
    be32(labels, 3);
    labels.insert(labels.end(), {0, 1, 2});
    write(dir / "idx" / "three", idx_input(images, labels));
    std::vector<std::uint8_t> short_labels(labels.begin(), labels.end() - 1);
    write(dir / "idx" / "short_labels", idx_input(images, short_labels));

    // A database: 12 samples, trained once (closed, so no -wal).
    std::filesystem::remove(tmp);
    {
        auto p = Personalizer::open(tmp, {.backbone = bb, .head = HeadSpec::linear(3)});
        std::vector<Sample> samples;
        for (int i = 0; i < 12; ++i) {
            Sample s{.label = i % 3};
            for (int j = 0; j < 4; ++j) s.input.push_back(static_cast<float>((i + j) % 5) - 2.0f);
            samples.push_back(s);
        }
        p->add(samples);
        p->train({.epochs = 2});
    }
    write(dir / "database" / "trained", read_file(tmp, 1 << 24));
    for (const char* suffix : {"", "-wal", "-shm", "-reserve"})
        std::filesystem::remove(tmp + suffix);
    std::printf("make_seeds: wrote %s\n", dir.c_str());
    return 0;
}
