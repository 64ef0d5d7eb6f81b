// layers.cpp — the frozen layer list of an imported backbone: parsing (bounded, every declared
// size checked against what the file holds) and forward inference (batch-invariant).
//
// detail/layers.hpp describes the model; FORMAT.md ("Backbone files") the text of each layer.
#include "detail/layers.hpp"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <map>
#include <set>

#include "cpu.hpp"
#include "detail/frozen_kernel.hpp"

namespace edgetune::detail {

namespace {

[[noreturn]] void corrupt(const std::string& message) {
    throw CorruptData("[Backbone.load] " + message);
}
[[noreturn]] void fail(const std::string& message) {
    throw InvalidArgument("[Backbone] " + message);
}

// Multiplication saturating at a bound far above every limit (hostile sizes overflow).
Index mul_sat(Index a, Index b) {
    constexpr Index top = Index{1} << 40;
    return (a != 0 && b > top / a) ? top : std::min(a * b, top);
}

struct OpName {
    const char* name;
    LayerOp op;
};
constexpr OpName op_names[] = {
    {"constant", LayerOp::constant},
    {"conv", LayerOp::conv},
    {"dense", LayerOp::dense},
    {"max_pool", LayerOp::max_pool},
    {"avg_pool", LayerOp::avg_pool},
    {"global_avg_pool", LayerOp::global_avg_pool},
    {"reshape", LayerOp::reshape},
    {"concat", LayerOp::concat},
    {"gather", LayerOp::gather},
    {"add", LayerOp::add},
    {"sub", LayerOp::sub},
    {"mul", LayerOp::mul},
    {"div", LayerOp::div},
    {"relu", LayerOp::relu},
    {"leaky_relu", LayerOp::leaky_relu},
    {"clip", LayerOp::clip},
    {"sigmoid", LayerOp::sigmoid},
    {"tanh", LayerOp::tanh},
    {"erf", LayerOp::erf},
    {"gelu", LayerOp::gelu},
    {"hard_sigmoid", LayerOp::hard_sigmoid},
    {"hard_swish", LayerOp::hard_swish},
};

bool is_binary(LayerOp op) {
    return op == LayerOp::add || op == LayerOp::sub || op == LayerOp::mul || op == LayerOp::div;
}

// ---- parsing ------------------------------------------------------------------------------

// One layer line: "<op> key=value key=value ...". Every key must be used exactly once.
class LineReader {
public:
    LineReader(const std::string& line, std::string where) : where_(std::move(where)) {
        std::size_t at = 0;
        bool first = true;
        while (at < line.size()) {
            const std::size_t end = std::min(line.find(' ', at), line.size());
            const std::string token = line.substr(at, end - at);
            at = end + 1;
            if (token.empty()) bad("has an empty field");
            if (first) {
                op_ = token;
                first = false;
                continue;
            }
            const std::size_t eq = token.find('=');
            if (eq == std::string::npos || eq == 0) bad("field '" + token + "' is not key=value");
            if (!fields_.emplace(token.substr(0, eq), token.substr(eq + 1)).second)
                bad("repeats '" + token.substr(0, eq) + "'");
        }
        if (first) bad("is empty");
    }
    const std::string& op() const { return op_; }
    [[noreturn]] void bad(const std::string& what) const { corrupt(where_ + " " + what); }

    bool has(const std::string& key) const { return fields_.count(key) != 0; }
    const std::string& text(const std::string& key) {
        const auto it = fields_.find(key);
        if (it == fields_.end()) bad("lacks '" + key + "'");
        used_.insert(key);
        return it->second;
    }
    std::vector<std::string> list(const std::string& key) {
        const std::string& s = text(key);
        std::vector<std::string> out;
        std::size_t start = 0;
        while (start <= s.size()) {
            const std::size_t comma = std::min(s.find(',', start), s.size());
            out.push_back(s.substr(start, comma - start));
            if (out.back().empty()) bad("has an empty item in '" + key + "'");
            start = comma + 1;
        }
        return out;
    }
    // Exactly `count` integers in [lo, 2^31] (count 0: any number from 1 to 4).
    std::vector<Index> ints(const std::string& key, std::size_t count, Index lo) {
        const std::vector<std::string> items = list(key);
        if (count != 0 && items.size() != count)
            bad("needs " + std::to_string(count) + " values in '" + key + "'");
        if (count == 0 && items.size() > 4) bad("has more than 4 values in '" + key + "'");
        std::vector<Index> out;
        for (const std::string& item : items) {
            char* end = nullptr;
            errno = 0;
            const long long v = std::strtoll(item.c_str(), &end, 10);
            if (errno != 0 || end != item.c_str() + item.size() || v < lo || v > (1LL << 31))
                bad("has a bad integer '" + item + "' in '" + key + "'");
            out.push_back(static_cast<Index>(v));
        }
        return out;
    }
    Index integer(const std::string& key, Index lo) { return ints(key, 1, lo)[0]; }
    float real(const std::string& key) {
        const std::string& s = text(key);
        char* end = nullptr;
        const float v = std::strtof(s.c_str(), &end);
        if (s.empty() || end != s.c_str() + s.size() || !std::isfinite(v))
            bad("has a bad number '" + s + "' in '" + key + "'");
        return v;
    }
    void check_all_used() const {
        for (const auto& [key, value] : fields_)
            if (used_.count(key) == 0) bad("has an unknown field '" + key + "'");
    }

private:
    std::string where_;
    std::string op_;
    std::map<std::string, std::string> fields_;
    std::set<std::string> used_;
};

Shape make_shape(const std::vector<Index>& dims) {
    Shape s;
    s.rank = static_cast<int>(dims.size());
    for (std::size_t i = 0; i < dims.size(); ++i) s.dims[i] = dims[i];
    return s;
}

// numpy broadcasting of two shapes aligned on their last dimension.
bool broadcast(const Shape& a, const Shape& b, Shape& out) {
    out.rank = std::max(a.rank, b.rank);
    for (int i = 0; i < out.rank; ++i) {
        const int ia = a.rank - 1 - i, ib = b.rank - 1 - i, io = out.rank - 1 - i;
        const Index da = ia >= 0 ? a.dims[static_cast<std::size_t>(ia)] : 1;
        const Index db = ib >= 0 ? b.dims[static_cast<std::size_t>(ib)] : 1;
        if (da != db && da != 1 && db != 1) return false;
        out.dims[static_cast<std::size_t>(io)] = std::max(da, db);
    }
    return true;
}

// Output size of a window over `in` (with pads) or 0 if the window does not fit.
Index window_out(Index in, Index pad_a, Index pad_b, Index kernel, Index dilation, Index stride) {
    const Index span = mul_sat(dilation, kernel - 1) + 1;
    if (in + pad_a + pad_b < span) return 0;
    return (in + pad_a + pad_b - span) / stride + 1;
}

}  // namespace

Index Shape::size() const {
    Index n = 1;
    for (int i = 0; i < rank; ++i) n = mul_sat(n, dims[static_cast<std::size_t>(i)]);
    return n;
}

std::string Shape::str() const {
    std::string s = "[";
    for (int i = 0; i < rank; ++i)
        s += (i ? " x " : "") + std::to_string(dims[static_cast<std::size_t>(i)]);
    return s + "]";
}

bool Shape::operator==(const Shape& o) const {
    if (rank != o.rank) return false;
    for (int i = 0; i < rank; ++i)
        if (dims[static_cast<std::size_t>(i)] != o.dims[static_cast<std::size_t>(i)]) return false;
    return true;
}

void frozen_dense(Index rows, Index depth, Index width, const float* x, const float* w,
                  const float* b, float* out) {
    const FrozenDenseArgs args{
        .rows = rows, .depth = depth, .width = width, .x = x, .w = w, .b = b, .out = out};
    static const auto choice = EDGETUNE_PICK_KERNEL(frozen_dense);  // common/cpu.hpp
    choice.fn(args);
}

namespace {

// Parsing state shared by the per-op shape rules.
// NOTE: names are looked up in maps, so a hostile file of many layers or tensors costs
// O(n log n), not O(n^2).
struct GraphParser {
    std::map<std::string, const Matrix*> tensors;  // the file's tensors by name
    std::map<std::string, int> values;             // name -> value index
    std::vector<Shape>& shapes;
    Index total = 0;

    const Matrix* tensor(LineReader& r, const std::string& key) {
        const std::string& name = r.text(key);
        const auto it = tensors.find(name);
        if (it == tensors.end()) r.bad("names tensor '" + name + "' that the file does not hold");
        if (it->second->size() == 0) r.bad("names tensor '" + name + "', which is empty");
        return it->second;
    }
    int value(LineReader& r, const std::string& name) {
        const auto it = values.find(name);
        if (it == values.end()) r.bad("reads '" + name + "', not defined by an earlier layer");
        return it->second;
    }
    void define(LineReader& r, const std::string& name, const Shape& s) {
        if (s.size() > FrozenGraph::max_value_size)
            r.bad("makes " + s.str() + ", more than " +
                  std::to_string(FrozenGraph::max_value_size) + " floats per sample");
        total = std::min(total + s.size(), FrozenGraph::max_total_size + 1);
        if (total > FrozenGraph::max_total_size)
            r.bad("brings the graph above " + std::to_string(FrozenGraph::max_total_size) +
                  " floats per sample");
        if (!values.emplace(name, static_cast<int>(shapes.size())).second)
            r.bad("redefines '" + name + "'");
        shapes.push_back(s);
    }
};

void check_weight(LineReader& r, const Matrix* w, Index rows, Index cols, const char* what) {
    if (w->rows() != rows || w->cols() != cols)
        r.bad(std::string("has ") + what + " " + shape_str(*w) + ", expected [" +
              std::to_string(rows) + " x " + std::to_string(cols) + "]");
}

// The window attributes of conv and the pools; returns the output shape [M x Ho x Wo].
Shape parse_window(LineReader& r, Layer& l, const Shape& in, Index out_channels) {
    if (in.rank != 3) r.bad("needs a [C x H x W] input, got " + in.str());
    const auto k = r.ints("kernel", 2, 1);
    const auto s = r.ints("stride", 2, 1);
    const auto p = r.ints("pad", 4, 0);
    l.kernel = {k[0], k[1]};
    l.stride = {s[0], s[1]};
    l.pad = {p[0], p[1], p[2], p[3]};
    if (l.op == LayerOp::conv) {
        const auto d = r.ints("dilation", 2, 1);
        l.dilation = {d[0], d[1]};
    } else {
        for (int i = 0; i < 4; ++i)
            if (l.pad[static_cast<std::size_t>(i)] >= l.kernel[static_cast<std::size_t>(i % 2)])
                r.bad("pads by at least the kernel size");
    }
    const Index ho =
        window_out(in.dims[1], l.pad[0], l.pad[2], l.kernel[0], l.dilation[0], l.stride[0]);
    const Index wo =
        window_out(in.dims[2], l.pad[1], l.pad[3], l.kernel[1], l.dilation[1], l.stride[1]);
    if (ho == 0 || wo == 0) r.bad("has a window larger than its padded input " + in.str());
    return make_shape({out_channels, ho, wo});
}

Shape parse_conv(LineReader& r, Layer& l, GraphParser& g, const Shape& in) {
    l.weight = g.tensor(r, "weight");
    l.bias = g.tensor(r, "bias");
    l.groups = r.integer("groups", 1);
    if (l.bias->rows() != 1) r.bad("has bias " + shape_str(*l.bias) + ", expected one row");
    const Index m = l.bias->cols();
    const Shape out = parse_window(r, l, in, m);
    const Index c = in.dims[0];
    if (c % l.groups != 0 || m % l.groups != 0)
        r.bad("has " + std::to_string(l.groups) + " groups for " + std::to_string(c) +
              " input and " + std::to_string(m) + " output channels");
    const Index depth = mul_sat(c / l.groups, mul_sat(l.kernel[0], l.kernel[1]));
    check_weight(r, l.weight, m, depth, "weight");
    // The im2col matrix of one sample, one group at a time.
    if (mul_sat(out.dims[1] * out.dims[2], depth) > FrozenGraph::max_value_size)
        r.bad("needs an im2col buffer above " + std::to_string(FrozenGraph::max_value_size) +
              " floats per sample");
    return out;
}

Shape parse_layer(LineReader& r, Layer& l, GraphParser& g, FrozenGraph::InputKind kind) {
    std::vector<std::string> in_names;
    if (l.op != LayerOp::constant) in_names = r.list("in");
    for (const std::string& n : in_names) l.inputs.push_back(g.value(r, n));
    const std::size_t arity = l.op == LayerOp::constant ? 0
                              : is_binary(l.op)         ? 2
                              : l.op == LayerOp::concat ? in_names.size()
                                                        : 1;
    if (in_names.size() != arity || (l.op == LayerOp::concat && arity > 64))
        r.bad("reads " + std::to_string(in_names.size()) + " values");
    for (int v : l.inputs)
        if (v == 0 && kind == FrozenGraph::InputKind::tokens && l.op != LayerOp::gather)
            r.bad("reads the token ids; only gather may");
    const Shape in = arity > 0 ? g.shapes[static_cast<std::size_t>(l.inputs[0])] : Shape{};
    switch (l.op) {
        case LayerOp::constant: {
            l.weight = g.tensor(r, "weight");
            const Shape s = make_shape(r.ints("shape", 0, 1));
            if (s.size() != l.weight->size())
                r.bad("has shape " + s.str() + " for a tensor of " +
                      std::to_string(l.weight->size()) + " floats");
            return s;
        }
        case LayerOp::conv:
            return parse_conv(r, l, g, in);
        case LayerOp::max_pool:
        case LayerOp::avg_pool:
            if (l.op == LayerOp::avg_pool) l.count_include_pad = r.integer("count_pad", 0) != 0;
            return parse_window(r, l, in, in.rank == 3 ? in.dims[0] : 0);
        case LayerOp::global_avg_pool:
            if (in.rank != 3) r.bad("needs a [C x H x W] input, got " + in.str());
            return make_shape({in.dims[0], 1, 1});
        case LayerOp::dense: {
            l.weight = g.tensor(r, "weight");
            l.bias = g.tensor(r, "bias");
            const Index k = in.dims[static_cast<std::size_t>(in.rank - 1)];
            check_weight(r, l.weight, k, l.weight->cols(), "weight");
            check_weight(r, l.bias, 1, l.weight->cols(), "bias");
            Shape out = in;
            out.dims[static_cast<std::size_t>(in.rank - 1)] = l.weight->cols();
            return out;
        }
        case LayerOp::reshape: {
            const Shape s = make_shape(r.ints("shape", 0, 1));
            if (s.size() != in.size()) r.bad("reshapes " + in.str() + " to " + s.str());
            return s;
        }
        case LayerOp::concat: {
            l.axis = static_cast<int>(r.integer("axis", 0));
            if (l.axis >= in.rank) r.bad("concatenates along a missing axis of " + in.str());
            Shape out = in;
            const auto ax = static_cast<std::size_t>(l.axis);
            out.dims[ax] = 0;
            for (int v : l.inputs) {
                const Shape& s = g.shapes[static_cast<std::size_t>(v)];
                Shape a = s, b = in;
                a.dims[ax] = b.dims[ax] = 1;
                if (!(a == b)) r.bad("concatenates " + s.str() + " with " + in.str());
                out.dims[ax] = mul_sat(1, out.dims[ax] + s.dims[ax]);
            }
            return out;
        }
        case LayerOp::gather: {
            if (kind != FrozenGraph::InputKind::tokens || l.inputs[0] != 0)
                r.bad("gathers from something other than the token ids");
            l.weight = g.tensor(r, "weight");
            return make_shape({in.dims[0], l.weight->cols()});
        }
        case LayerOp::leaky_relu:
            l.alpha = r.real("alpha");
            return in;
        case LayerOp::clip:
            l.alpha = r.real("min");
            l.beta = r.real("max");
            if (l.alpha > l.beta) r.bad("clips to an empty range");
            return in;
        case LayerOp::hard_sigmoid:
            l.alpha = r.real("alpha");
            l.beta = r.real("beta");
            return in;
        default:
            break;
    }
    if (is_binary(l.op)) {
        Shape out;
        const Shape& b = g.shapes[static_cast<std::size_t>(l.inputs[1])];
        if (!broadcast(in, b, out)) r.bad("cannot broadcast " + in.str() + " with " + b.str());
        return out;
    }
    return in;  // other unary ops
}

}  // namespace

FrozenGraph::FrozenGraph(Checkpoint checkpoint) : checkpoint_(std::move(checkpoint)) {
    const Checkpoint& c = checkpoint_;
    std::map<std::string, const std::string*> attrs;
    for (const auto& [k, v] : c.attrs) attrs.emplace(k, &v);  // the first of repeated keys
    auto attr = [&](const std::string& key) -> const std::string& {
        const auto it = attrs.find(key);
        if (it == attrs.end()) corrupt("missing attribute '" + key + "'");
        return *it->second;
    };
    if (attr("graph") != "1") corrupt("unknown graph version '" + attr("graph") + "'");
    LineReader header("input " + attr("input"), "input declaration");
    const std::string& kind = header.text("kind");
    if (kind != "image" && kind != "floats" && kind != "tokens")
        header.bad("has an unknown input kind '" + kind + "'");
    input_kind_ = kind == "image"    ? InputKind::image
                  : kind == "floats" ? InputKind::floats
                                     : InputKind::tokens;
    const Shape in = make_shape(header.ints("shape", input_kind_ == InputKind::image ? 3 : 1, 1));
    GraphParser g{{}, {}, shapes_};
    for (const auto& [name, m] : c.tensors) g.tensors.emplace(name, &m);
    const std::string input_name = header.text("name");
    if (input_kind_ == InputKind::image) {
        mean_ = g.tensor(header, "mean");
        std_ = g.tensor(header, "std");
        check_weight(header, mean_, 1, in.dims[0], "mean");
        check_weight(header, std_, 1, in.dims[0], "std");
        for (Index i = 0; i < in.dims[0]; ++i)
            if ((*std_)(0, i) == 0.0f) header.bad("has a zero std");
    }
    header.check_all_used();
    g.define(header, input_name, in);

    const Index count = [&] {
        LineReader n("layers count=" + attr("layers"), "layer count");
        return n.integer("count", 1);
    }();
    // NOTE: each layer needs an attribute, so the count is bounded by what the file holds.
    if (count > static_cast<Index>(c.attrs.size()))
        corrupt("declares " + std::to_string(count) + " layers, the file holds fewer");
    vocab_ = std::numeric_limits<Index>::max();
    for (Index i = 0; i < count; ++i) {
        const std::string key = "layer." + std::to_string(i);
        const std::string& line = attr(key);
        LineReader r(line, "layer " + std::to_string(i) + " '" + line + "'");
        Layer l;
        l.text = line;
        const auto it = std::find_if(std::begin(op_names), std::end(op_names),
                                     [&](const OpName& o) { return r.op() == o.name; });
        if (it == std::end(op_names)) r.bad("has an unknown op '" + r.op() + "'");
        l.op = it->op;
        const Shape out = parse_layer(r, l, g, input_kind_);
        if (l.op == LayerOp::gather) {
            vocab_ = std::min(vocab_, l.weight->rows());
            embed_dim_ = l.weight->cols();
        }
        const std::string out_name = r.text("out");
        r.check_all_used();
        g.define(r, out_name, out);
        l.output = static_cast<int>(shapes_.size()) - 1;
        layers_.push_back(std::move(l));
    }
    if (input_kind_ != InputKind::tokens) vocab_ = 0;
    if (input_kind_ == InputKind::tokens && vocab_ == std::numeric_limits<Index>::max())
        corrupt("takes token ids but no layer gathers them");
    LineReader out("output name=" + attr("output"), "output");
    output_ = g.value(out, out.text("name"));
    if (output_ == 0 && input_kind_ == InputKind::tokens) out.bad("is the token ids");
    // Values may die early: each buffer is released after the last layer that reads it.
    last_use_.assign(shapes_.size(), -1);
    for (std::size_t i = 0; i < layers_.size(); ++i)
        for (int v : layers_[i].inputs)
            last_use_[static_cast<std::size_t>(v)] = static_cast<int>(i);
}

// ---- forward ------------------------------------------------------------------------------
//
// Each function maps a batch x [n x in.size()] (one sample per row) to y [n x out.size()].

namespace {

// Caffe's im2col: one group's input patches of one sample as cols [K x P] (K = C/g*kh*kw in the
// weight's order c, i, j; P = Ho*Wo output positions); padding reads as 0.
void im2col(const Layer& l, const Shape& is, const Shape& os, const float* x, Index group,
            float* cols) {
    const Index h = is.dims[1], w = is.dims[2], ho = os.dims[1], wo = os.dims[2];
    const Index cg = is.dims[0] / l.groups;
    for (Index c = 0; c < cg; ++c) {
        const float* plane = x + (group * cg + c) * h * w;
        for (Index i = 0; i < l.kernel[0]; ++i)
            for (Index j = 0; j < l.kernel[1]; ++j) {
                const Index dj = j * l.dilation[1] - l.pad[1];
                // Output columns whose input column iw = ow * stride + dj lies inside [0, w).
                const Index lo = std::min(dj >= 0 ? 0 : (-dj + l.stride[1] - 1) / l.stride[1], wo);
                const Index hi = std::clamp((w - dj + l.stride[1] - 1) / l.stride[1], lo, wo);
                for (Index oh = 0; oh < ho; ++oh, cols += wo) {
                    const Index ih = oh * l.stride[0] - l.pad[0] + i * l.dilation[0];
                    if (ih < 0 || ih >= h) {
                        std::fill(cols, cols + wo, 0.0f);
                        continue;
                    }
                    const float* src = plane + ih * w + dj;
                    std::fill(cols, cols + lo, 0.0f);
                    for (Index ow = lo; ow < hi; ++ow) cols[ow] = src[ow * l.stride[1]];
                    std::fill(cols + hi, cols + wo, 0.0f);
                }
            }
    }
}

// Per sample and group: weight rows [M/g x K] times im2col [K x P] through frozen_dense (rows =
// output channels, columns = positions, so the result is already CHW), then + bias per channel:
// each element is acc = sum over k in order, then acc + 0 (the kernel's column bias), then
// + b[m]. A 1x1, stride-1, unpadded conv reads the input itself as its im2col.
void run_conv(const Layer& l, const Shape& is, const Shape& os, const Matrix& x, Matrix& y) {
    const Index n = x.rows(), m = os.dims[0], positions = os.dims[1] * os.dims[2];
    const Index mg = m / l.groups, depth = l.weight->cols();
    const bool direct = l.kernel[0] == 1 && l.kernel[1] == 1 && l.stride[0] == 1 &&
                        l.stride[1] == 1 && l.pad[0] + l.pad[1] + l.pad[2] + l.pad[3] == 0;
    std::vector<float> cols(direct ? 0 : static_cast<std::size_t>(depth * positions));
    const std::vector<float> zeros(static_cast<std::size_t>(positions), 0.0f);
    y.resize(n, m * positions);
    for (Index s = 0; s < n; ++s) {
        const float* xs = x.data() + s * x.cols();
        float* ys = y.data() + s * y.cols();
        for (Index gi = 0; gi < l.groups; ++gi) {
            const float* patches = xs + gi * depth * positions;
            if (!direct) {
                im2col(l, is, os, xs, gi, cols.data());
                patches = cols.data();
            }
            frozen_dense(mg, depth, positions, l.weight->data() + gi * mg * depth, patches,
                         zeros.data(), ys + gi * mg * positions);
        }
        for (Index c = 0; c < m; ++c) {
            const float b = (*l.bias)(0, c);
            for (Index p = 0; p < positions; ++p) ys[c * positions + p] += b;
        }
    }
}

// Max or average over each window; the average sums in window order, then divides.
void run_pool(const Layer& l, const Shape& is, const Shape& os, const Matrix& x, Matrix& y) {
    const Index n = x.rows(), c = is.dims[0], h = is.dims[1], w = is.dims[2];
    const Index ho = os.dims[1], wo = os.dims[2];
    const bool is_max = l.op == LayerOp::max_pool;
    y.resize(n, os.size());
    for (Index s = 0; s < n; ++s)
        for (Index ch = 0; ch < c; ++ch) {
            const float* plane = x.data() + s * x.cols() + ch * h * w;
            float* out = y.data() + s * y.cols() + ch * ho * wo;
            for (Index oh = 0; oh < ho; ++oh) {
                // The window's rows [i_lo, i_hi) and columns [j_lo, j_hi) inside the input.
                const Index ih0 = oh * l.stride[0] - l.pad[0];
                const Index i_lo = std::max<Index>(0, -ih0), i_hi = std::min(l.kernel[0], h - ih0);
                for (Index ow = 0; ow < wo; ++ow) {
                    const Index iw0 = ow * l.stride[1] - l.pad[1];
                    const Index j_lo = std::max<Index>(0, -iw0);
                    const Index j_hi = std::min(l.kernel[1], w - iw0);
                    float acc = is_max ? -std::numeric_limits<float>::infinity() : 0.0f;
                    for (Index i = i_lo; i < i_hi; ++i) {
                        const float* row = plane + (ih0 + i) * w;
                        for (Index j = j_lo; j < j_hi; ++j)
                            acc = is_max ? std::max(acc, row[iw0 + j]) : acc + row[iw0 + j];
                    }
                    if (!is_max) {
                        const Index count = l.count_include_pad ? l.kernel[0] * l.kernel[1]
                                                                : (i_hi - i_lo) * (j_hi - j_lo);
                        acc /= static_cast<float>(count);
                    }
                    out[oh * wo + ow] = acc;
                }
            }
        }
}

void run_global_avg_pool(const Shape& is, const Matrix& x, Matrix& y) {
    const Index plane = is.dims[1] * is.dims[2];
    y.resize(x.rows(), is.dims[0]);
    for (Index s = 0; s < x.rows(); ++s)
        for (Index c = 0; c < is.dims[0]; ++c) {
            const float* v = x.data() + s * x.cols() + c * plane;
            float acc = 0.0f;
            for (Index p = 0; p < plane; ++p) acc += v[p];
            y(s, c) = acc / static_cast<float>(plane);
        }
}

// The last axis of each sample's rows through frozen_dense: rows n * (size / K).
void run_dense(const Layer& l, const Matrix& x, Matrix& y) {
    const Index k = l.weight->rows(), width = l.weight->cols();
    const Index rows = x.rows() * (x.cols() / k);
    y.resize(x.rows(), (x.cols() / k) * width);
    frozen_dense(rows, k, width, x.data(), l.weight->data(), l.bias->data(), y.data());
}

float binary(LayerOp op, float a, float b) {
    switch (op) {
        case LayerOp::add:
            return a + b;
        case LayerOp::sub:
            return a - b;
        case LayerOp::mul:
            return a * b;
        default:
            return a / b;
    }
}

// Strides of `s` (right-aligned into rank 4) over a rank-4 output; 0 along broadcast axes.
std::array<Index, 4> broadcast_strides(const Shape& s) {
    std::array<Index, 4> dims{1, 1, 1, 1}, strides{0, 0, 0, 0};
    for (int i = 0; i < s.rank; ++i)
        dims[static_cast<std::size_t>(4 - s.rank + i)] = s.dims[static_cast<std::size_t>(i)];
    Index step = 1;
    for (int i = 3; i >= 0; --i) {
        const auto u = static_cast<std::size_t>(i);
        strides[u] = dims[u] == 1 ? 0 : step;
        step *= dims[u];
    }
    return strides;
}

void run_binary(const Layer& l, const Shape& as, const Shape& bs, const Shape& os, const Matrix& a,
                const Matrix& b, Matrix& y) {
    std::array<Index, 4> d{1, 1, 1, 1};
    for (int i = 0; i < os.rank; ++i)
        d[static_cast<std::size_t>(4 - os.rank + i)] = os.dims[static_cast<std::size_t>(i)];
    const auto sa = broadcast_strides(as), sb = broadcast_strides(bs);
    y.resize(a.rows(), os.size());
    for (Index s = 0; s < a.rows(); ++s) {
        const float* pa = a.data() + s * a.cols();
        const float* pb = b.data() + s * b.cols();
        float* out = y.data() + s * y.cols();
        for (Index i0 = 0; i0 < d[0]; ++i0)
            for (Index i1 = 0; i1 < d[1]; ++i1)
                for (Index i2 = 0; i2 < d[2]; ++i2)
                    for (Index i3 = 0; i3 < d[3]; ++i3)
                        *out++ = binary(l.op, pa[i0 * sa[0] + i1 * sa[1] + i2 * sa[2] + i3 * sa[3]],
                                        pb[i0 * sb[0] + i1 * sb[1] + i2 * sb[2] + i3 * sb[3]]);
    }
}

// y[i] = f(x[i]) for i < n.
template <class F>
void map(const float* x, float* y, Index n, F f) {
    for (Index i = 0; i < n; ++i) y[i] = f(x[i]);
}

// The unary ops, one element at a time (the switch outside the loop).
void run_unary(const Layer& l, const float* x, float* y, Index n) {
    const float a = l.alpha, b = l.beta;
    switch (l.op) {
        case LayerOp::relu:
            return map(x, y, n, [](float v) { return v > 0.0f ? v : 0.0f; });
        case LayerOp::leaky_relu:
            return map(x, y, n, [a](float v) { return v > 0.0f ? v : v * a; });
        case LayerOp::clip:
            return map(x, y, n, [a, b](float v) { return std::min(std::max(v, a), b); });
        case LayerOp::sigmoid:
            return map(x, y, n, [](float v) { return 1.0f / (1.0f + std::exp(-v)); });
        case LayerOp::tanh:
            return map(x, y, n, [](float v) { return std::tanh(v); });
        case LayerOp::erf:
            return map(x, y, n, [](float v) { return std::erf(v); });
        case LayerOp::gelu:
            return map(x, y, n, [](float v) {
                return 0.5f * v * (1.0f + std::erf(v * 0.70710678118654752f));
            });
        case LayerOp::hard_sigmoid:
            return map(x, y, n,
                       [a, b](float v) { return std::max(0.0f, std::min(1.0f, a * v + b)); });
        default:  // hard_swish, as PyTorch: x * relu6(x + 3) / 6
            return map(x, y, n,
                       [](float v) { return v * std::min(std::max(v + 3.0f, 0.0f), 6.0f) / 6.0f; });
    }
}

void run_concat(const Layer& l, const std::vector<Matrix>& v, const Shape& os, Matrix& y) {
    const auto ax = static_cast<std::size_t>(l.axis);
    Index outer = 1;
    for (std::size_t i = 0; i < ax; ++i) outer *= os.dims[i];
    const Index n = v[static_cast<std::size_t>(l.inputs[0])].rows();
    y.resize(n, os.size());
    for (Index s = 0; s < n; ++s) {
        float* out = y.data() + s * y.cols();
        for (Index o = 0; o < outer; ++o)
            for (int in : l.inputs) {
                const Matrix& x = v[static_cast<std::size_t>(in)];
                const Index inner = x.cols() / outer;
                const float* src = x.data() + s * x.cols() + o * inner;
                out = std::copy(src, src + inner, out);
            }
    }
}

}  // namespace

Matrix FrozenGraph::forward(Matrix input, const IdList* tokens) const {
    const Index n = tokens ? static_cast<Index>(tokens->size()) / input_size() : input.rows();
    std::vector<Matrix> v(shapes_.size());
    v[0] = std::move(input);
    for (std::size_t li = 0; li < layers_.size(); ++li) {
        const Layer& l = layers_[li];
        const auto out = static_cast<std::size_t>(l.output);
        const Shape& os = shapes_[out];
        const Matrix* x = l.inputs.empty() ? nullptr : &v[static_cast<std::size_t>(l.inputs[0])];
        const Shape& is = l.inputs.empty() ? os : shapes_[static_cast<std::size_t>(l.inputs[0])];
        Matrix& y = v[out];
        switch (l.op) {
            case LayerOp::constant:
                y = Eigen::Map<const Eigen::RowVectorXf>(l.weight->data(), l.weight->size())
                        .replicate(n, 1);
                break;
            case LayerOp::conv:
                run_conv(l, is, os, *x, y);
                break;
            case LayerOp::max_pool:
            case LayerOp::avg_pool:
                run_pool(l, is, os, *x, y);
                break;
            case LayerOp::global_avg_pool:
                run_global_avg_pool(is, *x, y);
                break;
            case LayerOp::dense:
                run_dense(l, *x, y);
                break;
            case LayerOp::reshape:
                y = *x;
                break;
            case LayerOp::concat:
                run_concat(l, v, os, y);
                break;
            case LayerOp::gather: {
                const Index len = is.size(), e = l.weight->cols();
                y.resize(n, len * e);
                for (Index i = 0; i < n * len; ++i)
                    std::copy_n(l.weight->data() + (*tokens)[static_cast<std::size_t>(i)] * e, e,
                                y.data() + i * e);
                break;
            }
            default:
                if (is_binary(l.op)) {
                    const auto b = static_cast<std::size_t>(l.inputs[1]);
                    run_binary(l, is, shapes_[b], os, *x, v[b], y);
                } else {
                    y.resize(x->rows(), x->cols());
                    run_unary(l, x->data(), y.data(), x->size());
                }
        }
        for (int in : l.inputs)
            if (last_use_[static_cast<std::size_t>(in)] == static_cast<int>(li) && in != output_)
                v[static_cast<std::size_t>(in)] = Matrix();
    }
    return std::move(v[static_cast<std::size_t>(output_)]);
}

// Samples go through the layers in chunks whose values fit in about 256 KiB (a core's L2 holds
// one chunk's activations: a CNN goes sample by sample, a small MLP 64 rows at a time). The
// result does not depend on the chunking.
Index FrozenGraph::chunk_rows() const {
    Index per_sample = 0;
    for (const Shape& s : shapes_) per_sample += s.size();
    return std::clamp<Index>((Index{256} << 10) / 4 / std::max<Index>(per_sample, 1), 1, 64);
}

Matrix FrozenGraph::run(const Matrix& inputs) const {
    if (input_kind_ == InputKind::tokens) fail("this backbone takes token sequences, not floats");
    if (inputs.cols() != input_size())
        fail("input " + shape_str(inputs) + " does not match input width " +
             std::to_string(input_size()) + " " + input_shape().str());
    Matrix out(inputs.rows(), feature_dim());
    const Index plane = input_kind_ == InputKind::image ? input_size() / shapes_[0].dims[0] : 0;
    const Index chunk = chunk_rows();
    for (Index r = 0; r < inputs.rows(); r += chunk) {
        const Index rows = std::min(chunk, inputs.rows() - r);
        Matrix x = inputs.middleRows(r, rows);
        if (input_kind_ == InputKind::image)
            for (Index s = 0; s < rows; ++s)
                for (Index c = 0; c < shapes_[0].dims[0]; ++c) {
                    const float mean = (*mean_)(0, c), sd = (*std_)(0, c);
                    float* v = x.data() + s * input_size() + c * plane;
                    for (Index p = 0; p < plane; ++p) v[p] = (v[p] - mean) / sd;
                }
        out.middleRows(r, rows) = forward(std::move(x), nullptr);
    }
    return out;
}

Matrix FrozenGraph::run(const IdList& tokens) const {
    if (input_kind_ != InputKind::tokens) fail("this backbone takes floats, not token sequences");
    const auto len = static_cast<std::size_t>(input_size());
    if (tokens.empty() || tokens.size() % len != 0)
        fail(std::to_string(tokens.size()) + " token ids is not a whole number of sequences of " +
             std::to_string(len));
    for (std::size_t i = 0; i < tokens.size(); ++i)
        if (tokens[i] < 0 || tokens[i] >= vocab_)
            fail("token id " + std::to_string(tokens[i]) + " at position " + std::to_string(i) +
                 " is outside the vocabulary [0, " + std::to_string(vocab_) + ")");
    const auto n = static_cast<Index>(tokens.size() / len);
    Matrix out(n, feature_dim());
    const Index chunk = chunk_rows();
    for (Index r = 0; r < n; r += chunk) {
        const Index rows = std::min(chunk, n - r);
        const auto first =
            tokens.begin() + static_cast<std::ptrdiff_t>(static_cast<std::size_t>(r) * len);
        const IdList part(
            first, first + static_cast<std::ptrdiff_t>(static_cast<std::size_t>(rows) * len));
        out.middleRows(r, rows) = forward(Matrix(rows, 0), &part);
    }
    return out;
}

}  // namespace edgetune::detail
