// test_onnx_fixtures.cpp — backbones imported from PyTorch 1.13 ONNX exports match PyTorch.
//
// tests/fixtures/make_onnx_fixtures.py exported the models (a LeNet-like CNN with its shipped
// head, an inverted residual block, a text encoder, and `ops`: the other exported forms), ran
// tools/onnx_import.py on them and wrote each model's fixed inputs and PyTorch outputs
// (<name>.txt); this suite needs neither torch nor onnx.
// Tolerance: 1e-4 relative, as max |edgetune - torch| / max |torch| per sample.
#include <doctest/doctest.h>

#include <cmath>
#include <fstream>
#include <sstream>
#include <string>

#include "personalize.hpp"
#include "test_util.hpp"

using namespace edgetune;
using namespace edgetune_test;

namespace {

// <name>.txt: "<node> <n> <input width> <output width>", n input rows, n output rows, then
// (lenet) n rows of the shipped head's logits.
struct Reference {
    std::string node;
    Matrix inputs, outputs, logits;
};

Matrix read_rows(std::istream& in, Index rows, Index cols) {
    Matrix m(rows, cols);
    for (Index i = 0; i < m.size(); ++i) in >> m.data()[i];
    return m;
}

Reference read_reference(const std::string& name, Index logit_width = 0) {
    std::ifstream in(fixture_path(name + ".txt"));
    REQUIRE_MESSAGE(in.good(), "missing fixture " << name << ".txt");
    Reference r;
    Index n = 0, d = 0, f = 0;
    in >> r.node >> n >> d >> f;
    r.inputs = read_rows(in, n, d);
    r.outputs = read_rows(in, n, f);
    if (logit_width > 0) r.logits = read_rows(in, n, logit_width);
    REQUIRE(!in.fail());
    return r;
}

// max over samples of max |a - b| / max |b| (row by row).
double relative_error(const Matrix& got, const Matrix& want) {
    double worst = 0;
    for (Index i = 0; i < want.rows(); ++i) {
        const double scale = want.row(i).cwiseAbs().maxCoeff();
        worst = std::max(worst, double((got.row(i) - want.row(i)).cwiseAbs().maxCoeff()) / scale);
    }
    return worst;
}

}  // namespace

TEST_CASE("ONNX fixtures: LeNet-like CNN features and its shipped head match PyTorch") {
    const Reference ref = read_reference("lenet", 10);
    const auto bb = Backbone::load(fixture_path("lenet.etb"));
    CHECK(bb->config().input == InputSpec::float_vector(784));
    REQUIRE(bb->feature_dim() == 32);
    const Matrix f = bb->features(ref.inputs);
    const double err = relative_error(f, ref.outputs);
    MESSAGE("lenet: max relative error " << err);
    CHECK(err < 1e-4);

    // The shipped head: a linear head checkpoint keyed to this backbone's digest.
    const Checkpoint head =
        decode_checkpoint(read_file(fixture_path("lenet-head.etk"), std::size_t{1} << 20));
    CHECK(head.kind == "head");
    std::string digest;
    for (const auto& [k, v] : head.attrs)
        if (k == "backbone_digest") digest = v;
    CHECK(digest == bb->digest());
    REQUIRE(head.tensors.size() == 2);
    CHECK(head.tensors[0].first == "net.0.weight");
    const Matrix logits =
        (f * head.tensors[0].second).rowwise() + Eigen::RowVectorXf(head.tensors[1].second.row(0));
    const double head_err = relative_error(logits, ref.logits);
    MESSAGE("lenet head: max relative error " << head_err);
    CHECK(head_err < 1e-4);
}

namespace {
// <name>.etb takes float inputs of `width` and its features of <name>.txt's inputs match.
void check_float_fixture(const std::string& name, Index width) {
    const Reference ref = read_reference(name);
    const auto bb = Backbone::load(fixture_path(name + ".etb"));
    CHECK(bb->config().input == InputSpec::float_vector(width));
    const double err = relative_error(bb->features(ref.inputs), ref.outputs);
    MESSAGE(name << ": max relative error " << err);
    CHECK(err < 1e-4);
}
}  // namespace

TEST_CASE("ONNX fixtures: inverted residual block (BatchNorm, ReLU6, depthwise, SE) matches") {
    check_float_fixture("mobile", 8 * 12 * 12);
}

TEST_CASE("ONNX fixtures: embedding + MLP text encoder (GELU as erf) matches") {
    const Reference ref = read_reference("text");
    const auto bb = Backbone::load(fixture_path("text.etb"));
    CHECK(bb->config().input == InputSpec::token_sequence(6));
    CHECK(bb->config().vocab == 40);
    IdList ids;
    for (Index i = 0; i < ref.inputs.size(); ++i)
        ids.push_back(static_cast<std::int32_t>(ref.inputs.data()[i]));
    const double err = relative_error(bb->features(ids), ref.outputs);
    MESSAGE("text: max relative error " << err);
    CHECK(err < 1e-4);
}

TEST_CASE("ONNX fixtures: padded pools, Pad + AveragePool, MatMul + Add, BatchNorm1d, constants") {
    check_float_fixture("ops", 2 * 5 * 5);
}

TEST_CASE("ONNX fixtures: Gemm with alpha, beta, transB 0 and 1 on a float-vector input") {
    check_float_fixture("gemm", 6);
}
