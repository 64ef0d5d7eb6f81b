// test_layers.cpp — the frozen layer list of imported backbones (personalize/layers.cpp): each
// layer against a plain double-precision reference, batch invariance, the file round trip and
// digest, hostile files, and external (bring-your-own) features.
//
// Graphs are written here as backbone files, as tools/onnx_import.py writes them (FORMAT.md,
// "Backbone files"); test_onnx_fixtures.cpp checks converted PyTorch models.
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>

#include "personalize.hpp"
#include "test_util.hpp"

using namespace edgetune;
using namespace edgetune_test;

namespace {

std::vector<std::uint8_t> read_bytes(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}
void write_bytes(const std::string& path, const std::vector<std::uint8_t>& bytes) {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(bytes.data()),
              static_cast<std::streamsize>(bytes.size()));
}

Matrix random_matrix(Index rows, Index cols, Rng& rng, float scale = 1.0f) {
    Matrix m(rows, cols);
    for (Index i = 0; i < m.size(); ++i) m.data()[i] = scale * rng.normal();
    return m;
}

// A graph backbone file under construction.
struct GraphFile {
    Checkpoint c;
    int layers = 0;
    explicit GraphFile(const std::string& input) {
        c.kind = "backbone";
        c.attrs = {{"graph", "1"}, {"input", input}};
    }
    GraphFile& tensor(const std::string& name, const Matrix& m) {
        c.tensors.emplace_back(name, m);
        return *this;
    }
    GraphFile& layer(const std::string& line) {
        c.attrs.emplace_back("layer." + std::to_string(layers++), line);
        return *this;
    }
    Checkpoint finish(const std::string& output) const {
        Checkpoint k = c;
        k.attrs.emplace_back("layers", std::to_string(layers));
        k.attrs.emplace_back("output", output);
        return k;
    }
    std::shared_ptr<const Backbone> load(const std::string& output) const {
        TempDb file("graph");
        write_bytes(file.path, encode_checkpoint(finish(output)));
        return Backbone::load(file.path);
    }
};

// Max |a - b| / max(1, |b|) over all elements.
double max_rel_error(const Matrix& a, const std::vector<double>& ref, Index row) {
    double worst = 0;
    for (Index j = 0; j < a.cols(); ++j) {
        const double r = ref[static_cast<std::size_t>(j)];
        worst = std::max(worst, std::abs(a(row, j) - r) / std::max(1.0, std::abs(r)));
    }
    return worst;
}

struct ConvCase {
    Index c, h, w, m, k0, k1, s0, s1, pt, pl, pb, pr, d0, d1, groups;
};

// Reference convolution in double, PyTorch weight layout w[m][c/g][i][j].
std::vector<double> ref_conv(const ConvCase& p, const float* x, const std::vector<float>& w,
                             const std::vector<float>& b, Index& ho, Index& wo) {
    ho = (p.h + p.pt + p.pb - p.d0 * (p.k0 - 1) - 1) / p.s0 + 1;
    wo = (p.w + p.pl + p.pr - p.d1 * (p.k1 - 1) - 1) / p.s1 + 1;
    const Index cg = p.c / p.groups, mg = p.m / p.groups;
    std::vector<double> out(static_cast<std::size_t>(p.m * ho * wo));
    for (Index m = 0; m < p.m; ++m)
        for (Index oh = 0; oh < ho; ++oh)
            for (Index ow = 0; ow < wo; ++ow) {
                double acc = b[static_cast<std::size_t>(m)];
                for (Index c = 0; c < cg; ++c)
                    for (Index i = 0; i < p.k0; ++i)
                        for (Index j = 0; j < p.k1; ++j) {
                            const Index ih = oh * p.s0 - p.pt + i * p.d0;
                            const Index iw = ow * p.s1 - p.pl + j * p.d1;
                            if (ih < 0 || ih >= p.h || iw < 0 || iw >= p.w) continue;
                            const Index ch = (m / mg) * cg + c;
                            acc +=
                                double(x[(ch * p.h + ih) * p.w + iw]) *
                                w[static_cast<std::size_t>(((m * cg + c) * p.k0 + i) * p.k1 + j)];
                        }
                out[static_cast<std::size_t>((m * ho + oh) * wo + ow)] = acc;
            }
    return out;
}

// The file's conv weight [M x K] from PyTorch's [M x C/g x kh x kw] (as the converter does).
Matrix pack_conv_weight(const ConvCase& p, const std::vector<float>& w) {
    const Index depth = p.c / p.groups * p.k0 * p.k1;
    Matrix packed(p.m, depth);
    for (Index i = 0; i < packed.size(); ++i) packed.data()[i] = w[static_cast<std::size_t>(i)];
    return packed;
}

std::string csv(std::initializer_list<Index> v) {
    std::string s;
    for (Index x : v) s += (s.empty() ? "" : ",") + std::to_string(x);
    return s;
}

}  // namespace

TEST_CASE("Layers: conv (stride, padding, dilation, groups, depthwise) matches a reference") {
    const std::vector<ConvCase> cases = {
        {1, 8, 8, 3, 3, 3, 1, 1, 0, 0, 0, 0, 1, 1, 1},    // plain
        {3, 9, 7, 4, 3, 2, 2, 1, 1, 0, 2, 1, 1, 1, 1},    // stride, asymmetric padding
        {2, 10, 10, 5, 3, 3, 1, 2, 2, 2, 2, 2, 2, 2, 1},  // dilation
        {4, 6, 6, 6, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 2},    // groups
        {6, 7, 7, 6, 3, 3, 2, 2, 1, 1, 1, 1, 1, 1, 6},    // depthwise
        {3, 5, 5, 12, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 3},   // pointwise, grouped, 1x1
    };
    Rng rng(7);
    for (const ConvCase& p : cases) {
        CAPTURE(p.groups);
        CAPTURE(p.d0);
        const Index cg = p.c / p.groups;
        std::vector<float> w(static_cast<std::size_t>(p.m * cg * p.k0 * p.k1)),
            b(static_cast<std::size_t>(p.m));
        for (float& v : w) v = rng.normal();
        for (float& v : b) v = rng.normal();
        Matrix bias(1, p.m);
        for (Index i = 0; i < p.m; ++i) bias(0, i) = b[static_cast<std::size_t>(i)];
        GraphFile g("kind=floats shape=" + std::to_string(p.c * p.h * p.w) + " name=x");
        g.tensor("w", pack_conv_weight(p, w)).tensor("b", bias);
        g.layer("reshape in=x out=img shape=" + csv({p.c, p.h, p.w}));
        g.layer("conv in=img out=y weight=w bias=b kernel=" + csv({p.k0, p.k1}) +
                " stride=" + csv({p.s0, p.s1}) + " pad=" + csv({p.pt, p.pl, p.pb, p.pr}) +
                " dilation=" + csv({p.d0, p.d1}) + " groups=" + std::to_string(p.groups));
        const auto bb = g.load("y");
        const Matrix x = random_matrix(3, p.c * p.h * p.w, rng);
        const Matrix f = bb->features(x);
        for (Index s = 0; s < 3; ++s) {
            Index ho = 0, wo = 0;
            const auto ref = ref_conv(p, x.row(s).data(), w, b, ho, wo);
            REQUIRE(f.cols() == p.m * ho * wo);
            CHECK(max_rel_error(f, ref, s) < 1e-5);
        }
    }
}

TEST_CASE("Layers: pooling, dense over the last axis, reshape and concat match a reference") {
    Rng rng(3);
    const Index c = 2, h = 5, w = 6;
    const Matrix x = random_matrix(2, c * h * w, rng);
    auto at = [&](Index s, Index ch, Index i, Index j) {
        return double(x(s, (ch * h + i) * w + j));
    };
    const std::string input = "kind=floats shape=" + std::to_string(c * h * w) + " name=x";

    SUBCASE("max and average pools with padding, and the global average") {
        for (int kind = 0; kind < 3; ++kind) {
            CAPTURE(kind);
            GraphFile g(input);
            g.layer("reshape in=x out=img shape=2,5,6");
            const char* op = kind == 0 ? "max_pool" : "avg_pool";
            const std::string extra = kind == 0 ? "" : kind == 1 ? " count_pad=0" : " count_pad=1";
            g.layer(std::string(op) + " in=img out=y kernel=3,2 stride=2,2 pad=1,0,1,1" + extra);
            const Matrix f = g.load("y")->features(x);
            const Index ho = (h + 2 - 3) / 2 + 1, wo = (w + 1 - 2) / 2 + 1;
            REQUIRE(f.cols() == c * ho * wo);
            for (Index s = 0; s < 2; ++s) {
                std::vector<double> ref;
                for (Index ch = 0; ch < c; ++ch)
                    for (Index oh = 0; oh < ho; ++oh)
                        for (Index ow = 0; ow < wo; ++ow) {
                            double mx = -1e300, sum = 0;
                            int n = 0;
                            for (Index i = 0; i < 3; ++i)
                                for (Index j = 0; j < 2; ++j) {
                                    const Index ih = oh * 2 - 1 + i, iw = ow * 2 + j;
                                    if (ih < 0 || ih >= h || iw < 0 || iw >= w) continue;
                                    mx = std::max(mx, at(s, ch, ih, iw));
                                    sum += at(s, ch, ih, iw);
                                    ++n;
                                }
                            ref.push_back(kind == 0 ? mx : sum / (kind == 1 ? n : 6));
                        }
                CHECK(max_rel_error(f, ref, s) < 1e-6);
            }
        }
        GraphFile g(input);
        g.layer("reshape in=x out=img shape=2,5,6").layer("global_avg_pool in=img out=y");
        const Matrix f = g.load("y")->features(x);
        REQUIRE(f.cols() == 2);
        for (Index s = 0; s < 2; ++s) {
            std::vector<double> ref(2, 0.0);
            for (Index ch = 0; ch < c; ++ch)
                for (Index p = 0; p < h * w; ++p)
                    ref[static_cast<std::size_t>(ch)] += x(s, ch * h * w + p) / 30.0;
            CHECK(max_rel_error(f, ref, s) < 1e-6);
        }
    }
    SUBCASE("dense applies to the last axis; concat joins along any axis") {
        const Matrix wt = random_matrix(6, 4, rng), b = random_matrix(1, 4, rng);
        GraphFile g(input);
        g.tensor("w", wt).tensor("b", b);
        g.layer("reshape in=x out=rows shape=10,6");     // [10 x 6]
        g.layer("dense in=rows out=d weight=w bias=b");  // [10 x 4]
        g.layer("reshape in=d out=d3 shape=2,5,4");      // [2 x 5 x 4]
        g.layer("reshape in=x out=x3 shape=2,5,6");      // [2 x 5 x 6]
        g.layer("concat in=d3,x3 out=cat axis=2");       // [2 x 5 x 10]
        const Matrix f = g.load("cat")->features(x);
        REQUIRE(f.cols() == 100);
        for (Index s = 0; s < 2; ++s) {
            std::vector<double> ref;
            for (Index r = 0; r < 10; ++r) {
                for (Index j = 0; j < 4; ++j) {
                    double acc = b(0, j);
                    for (Index k = 0; k < 6; ++k) acc += double(x(s, r * 6 + k)) * wt(k, j);
                    ref.push_back(acc);
                }
                for (Index k = 0; k < 6; ++k) ref.push_back(x(s, r * 6 + k));
            }
            CHECK(max_rel_error(f, ref, s) < 1e-5);
        }
        GraphFile g0(input);
        g0.layer("reshape in=x out=x3 shape=2,5,6").layer("concat in=x3,x3 out=cat axis=0");
        const Matrix f0 = g0.load("cat")->features(x);
        REQUIRE(f0.cols() == 120);
        CHECK(f0.leftCols(60) == x);
        CHECK(f0.rightCols(60) == x);
    }
}

TEST_CASE("Layers: elementwise ops, broadcasting (squeeze-excite) and input normalization") {
    Rng rng(5);
    const Index c = 3, h = 4, w = 4;
    Matrix x = random_matrix(2, c * h * w, rng, 2.0f);
    Matrix mean(1, 3), sd(1, 3);
    mean << 0.5f, -1.0f, 0.25f;
    sd << 2.0f, 0.5f, 1.5f;
    auto normalized = [&](Index s, Index i) {
        const Index ch = i / (h * w);
        return (double(x(s, i)) - mean(0, ch)) / sd(0, ch);
    };
    const std::string input = "kind=image shape=3,4,4 name=x mean=mean std=std";

    SUBCASE("unary activations") {
        struct Op {
            std::string line;
            double (*ref)(double);
        };
        const std::vector<Op> ops = {
            {"relu", [](double v) { return std::max(v, 0.0); }},
            {"leaky_relu alpha=0.125", [](double v) { return v > 0 ? v : 0.125 * v; }},
            {"clip min=0 max=6", [](double v) { return std::min(std::max(v, 0.0), 6.0); }},
            {"sigmoid", [](double v) { return 1 / (1 + std::exp(-v)); }},
            {"tanh", [](double v) { return std::tanh(v); }},
            {"erf", [](double v) { return std::erf(v); }},
            {"gelu", [](double v) { return 0.5 * v * (1 + std::erf(v / std::sqrt(2.0))); }},
            {"hard_sigmoid alpha=0.2 beta=0.5",
             [](double v) { return std::max(0.0, std::min(1.0, 0.2 * v + 0.5)); }},
            {"hard_swish", [](double v) { return v * std::min(std::max(v + 3, 0.0), 6.0) / 6; }},
        };
        for (const Op& op : ops) {
            CAPTURE(op.line);
            const std::size_t space = op.line.find(' ');
            const std::string name = op.line.substr(0, space);
            const std::string rest = space == std::string::npos ? "" : op.line.substr(space);
            GraphFile g(input);
            g.tensor("mean", mean).tensor("std", sd);
            g.layer(name + " in=x out=y" + rest);
            const Matrix f = g.load("y")->features(x);
            for (Index s = 0; s < 2; ++s) {
                std::vector<double> ref;
                for (Index i = 0; i < x.cols(); ++i) ref.push_back(op.ref(normalized(s, i)));
                CHECK(max_rel_error(f, ref, s) < 1e-6);
            }
        }
    }
    SUBCASE("binary ops broadcast [C x H x W] with [C x 1 x 1], [W] and a scalar constant") {
        const Matrix scale = random_matrix(1, 3, rng), row = random_matrix(1, 4, rng);
        Matrix two(1, 1);
        two << 2.0f;
        GraphFile g(input);
        g.tensor("mean", mean)
            .tensor("std", sd)
            .tensor("scale", scale)
            .tensor("row", row)
            .tensor("two", two);
        g.layer("constant out=se weight=scale shape=3,1,1");
        g.layer("constant out=r weight=row shape=4");
        g.layer("constant out=k weight=two shape=1");
        g.layer("global_avg_pool in=x out=gap");  // [3 x 1 x 1], per sample
        g.layer("mul in=x,se out=a");             // x * scale[c]
        g.layer("add in=a,r out=b");              // + row[w]
        g.layer("sub in=b,gap out=d");            // - mean of channel c
        g.layer("div in=d,k out=y");              // / 2
        const Matrix f = g.load("y")->features(x);
        for (Index s = 0; s < 2; ++s) {
            std::vector<double> ref;
            for (Index ch = 0; ch < c; ++ch) {
                double gap = 0;
                for (Index p = 0; p < h * w; ++p) gap += normalized(s, ch * h * w + p) / 16;
                for (Index p = 0; p < h * w; ++p)
                    ref.push_back(
                        (normalized(s, ch * h * w + p) * scale(0, ch) + row(0, p % w) - gap) / 2);
            }
            CHECK(max_rel_error(f, ref, s) < 1e-5);
        }
    }
}

TEST_CASE("Layers: gather embeds token ids; ids outside every table are refused") {
    Rng rng(9);
    const Matrix table = random_matrix(7, 3, rng);
    const Matrix wt = random_matrix(12, 2, rng), b = random_matrix(1, 2, rng);
    GraphFile g("kind=tokens shape=4 name=ids");
    g.tensor("table", table).tensor("w", wt).tensor("b", b);
    g.layer("gather in=ids out=e weight=table");  // [4 x 3]
    g.layer("reshape in=e out=flat shape=12");
    g.layer("dense in=flat out=y weight=w bias=b");
    const auto bb = g.load("y");
    CHECK(bb->config().input == InputSpec::token_sequence(4));
    CHECK(bb->config().vocab == 7);
    CHECK(bb->feature_dim() == 2);
    const IdList ids = {1, 6, 0, 3, 2, 2, 5, 4};
    const Matrix f = bb->features(ids);
    for (Index s = 0; s < 2; ++s) {
        std::vector<double> ref;
        for (Index j = 0; j < 2; ++j) {
            double acc = b(0, j);
            for (Index k = 0; k < 12; ++k)
                acc +=
                    double(table(ids[static_cast<std::size_t>(s * 4 + k / 3)], k % 3)) * wt(k, j);
            ref.push_back(acc);
        }
        CHECK(max_rel_error(f, ref, s) < 1e-5);
    }
    CHECK(contains(thrown<InvalidArgument>([&] {
                       bb->features(IdList{1, 2, 7, 0});
                   }),
                   "vocabulary"));
    CHECK_THROWS_AS(bb->features(IdList{1, 2, 3}), InvalidArgument);
    CHECK_THROWS_AS(bb->features(Matrix(1, 4)), InvalidArgument);
}

namespace {
// A small CNN: conv, relu6, depthwise conv, residual add, pool, dense.
GraphFile small_cnn(Rng& rng) {
    GraphFile g("kind=image shape=2,9,9 name=x mean=mean std=std");
    g.tensor("mean", Matrix::Constant(1, 2, 0.1f)).tensor("std", Matrix::Constant(1, 2, 0.9f));
    g.tensor("c1.w", random_matrix(4, 18, rng, 0.3f)).tensor("c1.b", random_matrix(1, 4, rng));
    g.tensor("dw.w", random_matrix(4, 9, rng, 0.3f)).tensor("dw.b", random_matrix(1, 4, rng));
    g.tensor("fc.w", random_matrix(64, 5, rng, 0.3f)).tensor("fc.b", random_matrix(1, 5, rng));
    g.layer(
        "conv in=x out=c1 weight=c1.w bias=c1.b kernel=3,3 stride=1,1 pad=1,1,1,1 dilation=1,1 "
        "groups=1");
    g.layer("clip in=c1 out=r1 min=0 max=6");
    g.layer(
        "conv in=r1 out=dw weight=dw.w bias=dw.b kernel=3,3 stride=1,1 pad=1,1,1,1 dilation=1,1 "
        "groups=4");
    g.layer("add in=dw,r1 out=res");
    g.layer("max_pool in=res out=p kernel=2,2 stride=2,2 pad=0,0,0,0");
    g.layer("reshape in=p out=flat shape=64");
    g.layer("dense in=flat out=y weight=fc.w bias=fc.b");
    return g;
}
}  // namespace

TEST_CASE("Layers: a sample's features are the same bits in any batch, file round trip") {
    Rng rng(11);
    const GraphFile g = small_cnn(rng);
    const auto bb = g.load("y");
    CHECK(bb->config().input == InputSpec::float_vector(162));
    CHECK(bb->feature_dim() == 5);
    const Matrix x = random_matrix(70, 162, rng);  // more than one chunk of the runner
    const Matrix all = bb->features(x);
    const Matrix part = bb->features(Matrix(x.middleRows(31, 9)));
    for (Index i = 0; i < x.rows(); ++i) {
        const Matrix one = bb->features(Matrix(x.row(i)));
        CHECK(std::memcmp(one.data(), all.row(i).data(), sizeof(float) * 5) == 0);
    }
    CHECK(part == all.middleRows(31, 9));

    // save() writes the file's bytes; load again keeps the digest; the digest follows content.
    TempDb a("graph-a");
    write_bytes(a.path, encode_checkpoint(g.finish("y")));
    CHECK(bb->digest().size() == 16);
    TempDb b("graph-b");
    bb->save(b.path);
    CHECK(read_bytes(b.path) == read_bytes(a.path));
    CHECK(Backbone::load(b.path)->digest() == bb->digest());
    GraphFile other = g;
    other.c.tensors.back().second(0, 0) += 1.0f;
    CHECK(other.load("y")->digest() != bb->digest());
    CHECK(g.load("c1")->digest() != bb->digest());  // another cut, another backbone
}

TEST_CASE("Layers: a corrupt or hostile graph file gives CorruptData naming the layer") {
    Rng rng(13);
    const GraphFile g = small_cnn(rng);
    TempDb bad("graph-bad");
    const std::vector<std::uint8_t> good = encode_checkpoint(g.finish("y"));
    SUBCASE("flipped and truncated bytes") {
        for (std::size_t at : {std::size_t{1}, std::size_t{9}, std::size_t{17}, good.size() / 3,
                               good.size() / 2, good.size() - 1}) {
            CAPTURE(at);
            auto b = good;
            b[at] ^= 0x21;
            write_bytes(bad.path, b);
            CHECK_THROWS_AS(Backbone::load(bad.path), CorruptData);
            write_bytes(bad.path,
                        std::vector<std::uint8_t>(good.begin(),
                                                  good.begin() + static_cast<std::ptrdiff_t>(at)));
            CHECK_THROWS_AS(Backbone::load(bad.path), CorruptData);
        }
    }
    auto expect = [&](const Checkpoint& k, const std::string& needle) {
        write_bytes(bad.path, encode_checkpoint(k));
        const std::string what = thrown<CorruptData>([&] { Backbone::load(bad.path); });
        CHECK_MESSAGE(contains(what, needle), what);
    };
    auto with_layer = [&](int i, const std::string& line) {
        Checkpoint k = g.finish("y");
        for (auto& [key, v] : k.attrs)
            if (key == "layer." + std::to_string(i)) v = line;
        return k;
    };
    auto with_attr = [&](const std::string& key, const std::string& value) {
        Checkpoint k = g.finish("y");
        for (auto& [name, v] : k.attrs)
            if (name == key) v = value;
        return k;
    };
    SUBCASE("bad layer lines: unknown ops, fields and values; shapes that do not fit") {
        struct Case {
            int layer;
            std::string line, needle;
        };
        const std::vector<Case> cases = {
            {1, "lstm in=c1 out=r1", "unknown op 'lstm'"},
            {1, "clip in=c1 out=r1 min=0 max=6 slope=2", "unknown field 'slope'"},
            {1, "clip in=nope out=r1 min=0 max=6", "reads 'nope'"},
            {1, "clip in=c1 out=c1 min=0 max=6", "redefines 'c1'"},
            {1, "clip in=c1 out=r1 min=0 max=nan", "bad number"},
            {1, "clip in=c1 out=r1 min=0", "lacks 'max'"},
            {1, "clip in=c1 out=r1 min=0 min=6", "repeats 'min'"},
            {1, "clip  in=c1 out=r1 min=0 max=6", "empty field"},
            {6, "dense in=flat out=y weight=missing bias=fc.b", "tensor 'missing'"},
            {4, "max_pool in=res out=p kernel=20,20 stride=1,1 pad=0,0,0,0", "window larger"},
            {4, "max_pool in=res out=p kernel=2,2 stride=2,2 pad=2,0,0,0", "pads"},
            {3, "add in=dw,x out=res", "broadcast"},
            {5, "reshape in=p out=flat shape=63", "reshapes"},
            {6, "dense in=p out=y weight=fc.w bias=fc.b", "weight"},
            {4, "concat in=res,x out=p axis=1", "concatenates"},
            {4, "gather in=res out=p weight=fc.w", "gathers"},
            {0,
             "conv in=x out=c1 weight=c1.w bias=c1.b kernel=3,3 stride=1,1 pad=1,1,1,1 "
             "dilation=1,1 groups=3",
             "groups"},
            {0,
             "conv in=x out=c1 weight=c1.w bias=c1.b kernel=5,3 stride=1,1 pad=1,1,1,1 "
             "dilation=1,1 groups=1",
             "weight"},
            {0,
             "conv in=x out=c1 weight=c1.w bias=c1.b kernel=3,3 stride=0,1 pad=1,1,1,1 "
             "dilation=1,1 groups=1",
             "bad integer '0'"},
        };
        for (const Case& k : cases) {
            CAPTURE(k.line);
            expect(with_layer(k.layer, k.line), k.needle);
        }
        expect(with_attr("output", "zz"), "reads 'zz'");
        expect(with_attr("graph", "2"), "unknown graph version");
        expect(with_attr("input", "kind=audio shape=3 name=x"), "unknown input kind");
    }
    SUBCASE("huge declared sizes are refused before allocating") {
        expect(
            with_attr("input", "kind=image shape=2000000000,2000000000,9 name=x mean=mean std=std"),
            "mean");
        Checkpoint k = with_attr("input", "kind=floats shape=2000000000 name=x");
        expect(k, "floats per sample");
        expect(with_layer(5, "reshape in=p out=flat shape=2147483648,2147483648"), "reshapes");
        expect(with_attr("layers", "99999999"), "layers");
        expect(with_attr("layers", "-1"), "bad integer");
        GraphFile grow("kind=floats shape=16 name=x0");
        for (int i = 0; i < 8; ++i) {  // 16 floats, 16^2, ... 16^7 is above the bound
            std::string in = "x" + std::to_string(i);
            std::string all = in;
            for (int j = 0; j < 15; ++j) all += "," + in;
            grow.layer("concat in=" + all + " out=x" + std::to_string(i + 1) + " axis=0");
        }
        write_bytes(bad.path, encode_checkpoint(grow.finish("x8")));
        CHECK(
            contains(thrown<CorruptData>([&] { Backbone::load(bad.path); }), "floats per sample"));
    }
    SUBCASE("empty tensors") {
        Checkpoint k = with_layer(6, "dense in=flat out=y weight=empty bias=fc.b");
        k.tensors.emplace_back("empty", Matrix(0, 5));
        expect(k, "which is empty");
    }
    SUBCASE("zero std") {
        Checkpoint k = g.finish("y");
        k.tensors[1].second(0, 1) = 0.0f;
        expect(k, "zero std");
    }
}

TEST_CASE("Backbone::external: the app's own features, keyed by its identity") {
    const auto bb = Backbone::external(6, "face-net v3 (vendor build 2026-11)");
    CHECK(bb->digest() == "face-net v3 (vendor build 2026-11)");
    CHECK(bb->feature_dim() == 6);
    CHECK(bb->config().input == InputSpec::float_vector(6));
    Rng rng(1);
    const Matrix x = random_matrix(4, 6, rng);
    CHECK(bb->features(x) == x);
    CHECK_THROWS_AS(bb->features(Matrix(2, 5)), InvalidArgument);
    CHECK_THROWS_AS(bb->features(IdList{1, 2}), InvalidArgument);
    TempDb file("external");
    CHECK(contains(thrown<InvalidArgument>([&] { bb->save(file.path); }), "no file"));
    CHECK_THROWS_AS(Backbone::external(0, "x"), InvalidArgument);
    CHECK_THROWS_AS(Backbone::external(4, ""), InvalidArgument);
    CHECK_THROWS_AS(Backbone::external(4, std::string("a\nb")), InvalidArgument);

    // Stored and trained on; a new identity is an upgrade (features recomputed, head retrained).
    TempDb db("external-db");
    std::vector<Sample> samples;
    for (int i = 0; i < 40; ++i) {
        Sample s;
        s.label = i % 2;
        for (int j = 0; j < 6; ++j)
            s.input.push_back((j % 2 == s.label ? 2.0f : -2.0f) + 0.3f * rng.normal());
        samples.push_back(s);
    }
    {
        auto p = Personalizer::open(db.path, {.backbone = bb, .head = HeadSpec::linear(2)});
        p->add(samples);
        const TrainReport r = p->train({.epochs = 20, .batch = 8});
        CHECK(r.outcome == TrainReport::Outcome::committed);
        CHECK(p->predict(samples[0])[0].label == samples[0].label);
        CHECK(!p->last_upgrade());
    }
    // A new identity is a backbone upgrade, which is asked for explicitly.
    auto p = Personalizer::open(db.path, {.backbone = Backbone::external(6, "face-net v4"),
                                          .head = HeadSpec::linear(2),
                                          .upgrade_backbone = true});
    REQUIRE(p->last_upgrade());
    CHECK(p->last_upgrade()->retrained_from_base);
    CHECK(p->sample_count() == 40);
    CHECK(p->predict(samples[1])[0].label == samples[1].label);
}

TEST_CASE("Backbone: files written before layer lists load with the same digest") {
    // Written by the MLP code path before graph files existed; cached features in existing
    // databases are keyed by these digests, so they must never change.
    const auto mlp = Backbone::load(fixture_path("legacy_mlp.etb"));
    CHECK(mlp->digest() == "db649164d014db35");
    CHECK(mlp->config().hidden == std::vector<Index>{12, 6});
    const auto tokens = Backbone::load(fixture_path("legacy_tokens.etb"));
    CHECK(tokens->digest() == "46bc0ae937d2f8e4");
    CHECK(tokens->config().vocab == 11);
    CHECK(tokens->features(IdList{1, 2, 10}).cols() == 5);
    // The same weights frozen from a net give the same digest and features. The net takes the
    // file's weights: a seeded initialization is not the same bits on every CPU (aarch64's
    // compiler fuses its multiply-adds), and the file was written on x86-64.
    Rng rng(9);
    BackboneNet net({.input = InputSpec::float_vector(8), .hidden = {12, 6}}, rng);
    const Checkpoint file = decode_checkpoint(read_bytes(fixture_path("legacy_mlp.etb")));
    auto params = net.named_parameters();
    REQUIRE(params.size() == file.tensors.size());
    for (std::size_t i = 0; i < params.size(); ++i)
        params[i].second.value_mut() = file.tensors[i].second;
    const auto again = Backbone::freeze(net);
    CHECK(again->digest() == mlp->digest());
    Rng x_rng(2);
    const Matrix x = random_matrix(5, 8, x_rng);
    CHECK(again->features(x) == mlp->features(x));
    TempDb copy("legacy-copy");
    mlp->save(copy.path);
    CHECK(read_bytes(copy.path) == read_bytes(fixture_path("legacy_mlp.etb")));
}

TEST_CASE("Backbone::load digests the file's bytes: every backbone file is its own encoding") {
    // load() hashes the bytes it read instead of encoding the model again; that is the same
    // digest exactly when decoding and re-encoding gives the file back.
    for (const char* name : {"legacy_mlp.etb", "legacy_tokens.etb", "gemm.etb", "lenet.etb",
                             "mobile.etb", "ops.etb", "text.etb"}) {
        CAPTURE(name);
        const std::vector<std::uint8_t> bytes = read_bytes(fixture_path(name));
        CHECK(encode_checkpoint(decode_checkpoint(bytes)) == bytes);
        TempDb copy("digest-copy");
        Backbone::load(fixture_path(name))->save(copy.path);
        CHECK(Backbone::load(copy.path)->digest() == Backbone::load(fixture_path(name))->digest());
    }
}

TEST_CASE("Backbone::external with the app's engine: raw inputs kept, upgrades recompute") {
    // Two versions of an app's engine over raw inputs of 4 floats: v2 swaps v1's features.
    auto engine = [](bool swap) {
        return [swap](std::span<const Sample> samples) {
            Matrix f(static_cast<Index>(samples.size()), 2);
            for (std::size_t i = 0; i < samples.size(); ++i) {
                const auto& x = samples[i].input;
                const float a = x[0] + x[1], b = x[2] - x[3];
                f(static_cast<Index>(i), 0) = swap ? b : a;
                f(static_cast<Index>(i), 1) = swap ? a : b;
            }
            return f;
        };
    };
    const auto v1 = Backbone::external(2, "engine v1", InputSpec::float_vector(4), engine(false));
    CHECK(v1->config().input == InputSpec::float_vector(4));
    CHECK(v1->feature_dim() == 2);
    Rng rng(4);
    std::vector<Sample> samples;
    for (int i = 0; i < 30; ++i) {
        Sample s;
        s.label = i % 2;
        for (int j = 0; j < 4; ++j) s.input.push_back(rng.normal() + (j == 0 ? 3.0f * s.label : 0));
        samples.push_back(s);
    }
    const Matrix f1 = v1->features(samples);
    CHECK(f1(3, 0) == samples[3].input[0] + samples[3].input[1]);
    CHECK_THROWS_AS(v1->features(Matrix(2, 2)), InvalidArgument);  // raw width is 4

    TempDb db("external-engine");
    {
        auto p = Personalizer::open(db.path, {.backbone = v1, .head = HeadSpec::linear(2)});
        const auto ids = p->add(samples);
        CHECK(p->store().get_features(v1->digest(), ids) == f1);
    }
    const auto v2 = Backbone::external(2, "engine v2", InputSpec::float_vector(4), engine(true));
    auto p = Personalizer::open(
        db.path, {.backbone = v2, .head = HeadSpec::linear(2), .upgrade_backbone = true});
    REQUIRE(p->last_upgrade());
    std::vector<std::int64_t> ids;
    for (std::int64_t i = 1; i <= 30; ++i) ids.push_back(i);
    const Matrix f2 = p->store().get_features(v2->digest(), ids);
    CHECK(f2.col(0) == f1.col(1));
    CHECK(f2.col(1) == f1.col(0));

    // What the engine returns is checked.
    const auto wrong =
        Backbone::external(3, "wrong width", InputSpec::float_vector(4), engine(false));
    CHECK(
        contains(thrown<InvalidArgument>([&] { wrong->features(samples); }), "returned [30 x 2]"));
    const auto nan =
        Backbone::external(1, "nan", InputSpec::float_vector(4), [](std::span<const Sample> s) {
            return Matrix::Constant(static_cast<Index>(s.size()), 1, NAN);
        });
    CHECK(contains(thrown<InvalidArgument>([&] { nan->features(samples); }), "nan"));
}

TEST_CASE("Layers: randomly mutated layer lines load cleanly or give CorruptData, never crash") {
    // Fuzz-style: the envelope's CRC stops raw byte flips, so mutate the text the loader parses
    // (and re-encode). A file that still loads must also run.
    Rng rng(17);
    const GraphFile g = small_cnn(rng);
    const Checkpoint good = g.finish("y");
    const std::string alphabet = "0123456789,=-x ayinoutweight";
    TempDb file("graph-fuzz");
    int loaded = 0, refused = 0;
    for (int iter = 0; iter < 400; ++iter) {
        Checkpoint k = good;
        const int edits = 1 + static_cast<int>(rng.uniform() * 3);
        for (int e = 0; e < edits; ++e) {
            auto& value = k.attrs[static_cast<std::size_t>(rng.uniform() * k.attrs.size())].second;
            const auto at = static_cast<std::size_t>(rng.uniform() * (value.size() + 1));
            const char ch = alphabet[static_cast<std::size_t>(rng.uniform() * alphabet.size())];
            const float kind = rng.uniform();
            if (kind < 0.4f && at < value.size())
                value[at] = ch;
            else if (kind < 0.7f)
                value.insert(at, 1, ch);
            else if (at < value.size())
                value.erase(at, 1);
        }
        write_bytes(file.path, encode_checkpoint(k));
        try {
            const auto bb = Backbone::load(file.path);
            Matrix x = random_matrix(2, bb->config().input.size, rng);
            const Matrix f = bb->features(x);
            CHECK(f.rows() == 2);
            ++loaded;
        } catch (const CorruptData&) {
            ++refused;
        }
    }
    MESSAGE(loaded << " mutated files loaded, " << refused << " refused");
    CHECK(refused > 0);
}
