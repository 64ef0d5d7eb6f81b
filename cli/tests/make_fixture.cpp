// make_fixture.cpp — writes the small, deterministic inputs the `edgetune` CLI tests run on.
//
// Into DIR: backbone.etb (a random tanh MLP 4 -> 16, enough for three well-separated
// clusters), backbone2.etb (another one), corrupt.etb (random bytes), CSV files of 4-D samples from
// 3 Gaussian clusters (train, more, test; rows.csv without labels; bad_*.csv with one malformed
// line each) and IDX files of 2x2 images of the same 3 classes (images.idx.gz, labels.idx,
// labels_short.idx), a token backbone with its vocabulary (tokens.etb, words.vocab); with
// --big only the 60,000-image IDX files of the scale test. Usage: cli_fixture DIR [--big]
#include <zlib.h>

#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "personalize.hpp"

using namespace edgetune;

namespace {

constexpr int dim = 4;
constexpr int classes = 3;

// A sample of class c: a unit bump of height 2 on coordinate c, plus N(0, 0.3) noise.
std::vector<float> point(int c, Rng& rng) {
    std::vector<float> x(dim);
    for (int k = 0; k < dim; ++k)
        x[static_cast<std::size_t>(k)] = (k == c ? 2.0f : 0.0f) + 0.3f * rng.normal();
    return x;
}

void write_csv(const std::string& path, int per_class, bool labelled, Rng& rng) {
    std::ofstream out(path);
    out << "# " << (labelled ? "label," : "") << "x1,x2,x3,x4\n";
    for (int i = 0; i < per_class; ++i)
        for (int c = 0; c < classes; ++c) {
            if (labelled) out << c << ",";
            const std::vector<float> x = point(c, rng);
            for (int k = 0; k < dim; ++k) out << (k ? "," : "") << x[static_cast<std::size_t>(k)];
            out << "\n";
        }
}

void write_text(const std::string& path, const std::string& text) {
    std::ofstream(path) << text;
}

void put_u32(std::vector<unsigned char>& out, std::uint32_t v) {
    for (int shift = 24; shift >= 0; shift -= 8)
        out.push_back(static_cast<unsigned char>(v >> shift));
}

void write_bytes(const std::string& path, const std::vector<unsigned char>& bytes) {
    std::ofstream(path, std::ios::binary)
        .write(reinterpret_cast<const char*>(bytes.data()),
               static_cast<std::streamsize>(bytes.size()));
}

}  // namespace

// A keyboard in miniature: a token backbone over the 3 previous words of an 8-word vocabulary
// (tokens.etb, words.vocab: "<s>" the boundary, "<unk>", then six words).
void write_keyboard(const std::string& dir) {
    Rng rng(7);
    BackboneConfig config{.input = InputSpec::token_sequence(3),
                          .vocab = 8,
                          .embed_dim = 4,
                          .hidden = {32},
                          .activation = Activation::tanh};
    BackboneNet net(config, rng);
    Backbone::freeze(net)->save(dir + "/tokens.etb");
    write_text(dir + "/words.vocab", "<s>\n<unk>\nthe\ncat\nsat\non\nmat\ndog\n");
    write_text(dir + "/words_short.vocab", "<s>\n<unk>\nthe\n");
}

// 60,000 images of 28x28 u8 pixels in 10 classes (big_images.idx, big_labels.idx; 47 MB,
// uncompressed) and a backbone taking 784 floats (backbone784.etb): the bounded-memory add.
int write_big(const std::string& dir) {
    constexpr std::uint32_t n = 60000, side = 28;
    Rng rng(8);
    BackboneConfig config{.input = InputSpec::float_vector(side * side),
                          .vocab = 0,
                          .embed_dim = 0,
                          .hidden = {16},
                          .activation = Activation::tanh};
    BackboneNet net(config, rng);
    Backbone::freeze(net)->save(dir + "/backbone784.etb");
    std::vector<unsigned char> images, labels;
    put_u32(images, 0x803);
    put_u32(images, n);
    put_u32(images, side);
    put_u32(images, side);
    put_u32(labels, 0x801);
    put_u32(labels, n);
    for (std::uint32_t i = 0; i < n; ++i) {
        for (std::uint32_t k = 0; k < side * side; ++k)
            images.push_back(static_cast<unsigned char>(rng.below(256)));
        labels.push_back(static_cast<unsigned char>(i % 10));
    }
    write_bytes(dir + "/big_images.idx", images);
    write_bytes(dir + "/big_labels.idx", labels);
    return 0;
}

int main(int argc, char** argv) {
    if (argc == 3 && std::string(argv[2]) == "--big") return write_big(argv[1]);
    if (argc != 2) {
        std::fprintf(stderr, "usage: cli_fixture DIR [--big]\n");
        return 2;
    }
    const std::string dir = argv[1];
    write_keyboard(dir);
    Rng rng(5);

    BackboneConfig config{.input = InputSpec::float_vector(dim),
                          .vocab = 0,
                          .embed_dim = 0,
                          .hidden = {16},
                          .activation = Activation::tanh};
    BackboneNet net(config, rng);
    Backbone::freeze(net)->save(dir + "/backbone.etb");
    Rng other_rng(6);  // its own generator: the files below stay as they were
    BackboneNet other(config, other_rng);
    Backbone::freeze(other)->save(dir + "/backbone2.etb");
    std::vector<unsigned char> junk(200);
    for (auto& b : junk) b = static_cast<unsigned char>(rng.below(256));
    write_bytes(dir + "/corrupt.etb", junk);

    write_csv(dir + "/train.csv", 40, true, rng);
    write_csv(dir + "/more.csv", 10, true, rng);
    write_csv(dir + "/test.csv", 20, true, rng);
    write_csv(dir + "/rows.csv", 2, false, rng);
    write_text(dir + "/bad_width.csv", "0,2,0,0,0\n1,0,2,0,0\n1,0.5,0.25\n");
    write_text(dir + "/bad_label.csv", "0,2,0,0,0\n7,0,2,0,0\n");
    write_text(dir + "/bad_number.csv", "0,abc,0,0,0\n");
    write_text(dir + "/plus_minus.csv", "0,2,0,0,0\n1,+-1,2,0,0\n");
    write_text(dir + "/nan.csv", "0,2,0,0,0\n\n2,0,0,nan,0\n");

    // IDX: 60 images of 2x2 u8 pixels; class c lights pixel c.
    constexpr std::uint32_t n = 60;
    std::vector<unsigned char> images, labels, labels_short;
    put_u32(images, 0x803);
    put_u32(images, n);
    put_u32(images, 2);
    put_u32(images, 2);
    put_u32(labels, 0x801);
    put_u32(labels, n);
    put_u32(labels_short, 0x801);
    put_u32(labels_short, n - 1);
    for (std::uint32_t i = 0; i < n; ++i) {
        const int c = static_cast<int>(i % classes);
        for (int k = 0; k < dim; ++k)
            images.push_back(
                static_cast<unsigned char>((k == c ? 200 : 30) + static_cast<int>(rng.below(40))));
        labels.push_back(static_cast<unsigned char>(c));
        if (i + 1 < n) labels_short.push_back(static_cast<unsigned char>(c));
    }
    gzFile gz = gzopen((dir + "/images.idx.gz").c_str(), "wb");
    if (gz == nullptr || gzwrite(gz, images.data(), static_cast<unsigned>(images.size())) <= 0) {
        std::fprintf(stderr, "cli_fixture: cannot write %s/images.idx.gz\n", dir.c_str());
        return 1;
    }
    gzclose(gz);
    write_bytes(dir + "/labels.idx", labels);
    write_bytes(dir + "/labels_short.idx", labels_short);
    return 0;
}
