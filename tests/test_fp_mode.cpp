// test_fp_mode.cpp — the Personalizer's flush-to-zero scope (common/fp_mode.hpp): results do
// not depend on the floating-point mode of the calling thread, the caller's mode is restored,
// and the library's work runs flushed.
//
// The data is built to go subnormal: a backbone whose features are ~1e-20, so Adam's second
// moments (~gradient^2 ~ 1e-40) fall below the smallest normal float (1.2e-38). With and
// without flushing, such a run rounds differently, so a library that left the mode to the
// caller would fail the first case (eps 1e-30 so the moments, not eps, set the step size).
#include <doctest/doctest.h>

#include "fp_mode.hpp"
#include "personalize.hpp"
#include "test_util.hpp"

#include <cstring>
#include <limits>

using namespace edgetune;
using namespace edgetune_test;

namespace {

using Tensors = std::vector<std::pair<std::string, Matrix>>;

// float [4] -> features [4] = relu(1e-20 * x): tiny, so training meets subnormals.
std::shared_ptr<const Backbone> tiny_backbone() {
    Rng rng(3);
    BackboneNet net({.input = InputSpec::float_vector(4), .hidden = {4}}, rng);
    for (auto& [name, p] : net.named_parameters()) {
        p.value_mut().setZero();
        if (name.ends_with("weight")) p.value_mut().diagonal().setConstant(1e-20f);
    }
    return Backbone::freeze(net);
}

std::vector<Sample> samples() {
    std::vector<Sample> out;
    Rng rng(4);
    for (int i = 0; i < 60; ++i) {
        Sample s{.label = i % 2};
        for (int j = 0; j < 4; ++j)
            s.input.push_back((j % 2 == s.label ? 2.0f : 0.5f) + rng.uniform());
        out.push_back(s);
    }
    return out;
}

// Trains a fresh database; `caller_flushes` runs the calls from a thread that flushes itself.
Tensors train_head(bool caller_flushes, bool* flushed_inside = nullptr) {
    TempDb db("fp-mode");
    std::optional<FlushDenormals> caller;
    if (caller_flushes) caller.emplace();
    auto p = Personalizer::open(db.path, {.backbone = tiny_backbone(),
                                          .head = HeadSpec::linear(2),
                                          .seed = 5,
                                          .validation_fraction = 0.0f});
    p->add(samples());
    p->train({.epochs = 3,
              .batch = 8,
              .optimizer = AdamOptions{.lr = 1e-2f, .eps = 1e-30f},
              .seed = 6,
              .on_progress = [&](const Progress&) {
                  if (flushed_inside) *flushed_inside = FlushDenormals::active();
              }});
    return p->head_parameters();
}

}  // namespace

TEST_CASE("fp mode: a training run's bits do not depend on the caller's flush-to-zero mode") {
    if (!FlushDenormals::active()) {
        FlushDenormals probe;
        if (!FlushDenormals::active()) {
            MESSAGE("no flush-to-zero control on this architecture");
            return;
        }
    }
    // The data does reach subnormals: a product of two of its values is one.
    const volatile float tiny = 1e-20f;
    CHECK(tiny * tiny < std::numeric_limits<float>::min());
    CHECK(tiny * tiny > 0.0f);

    const Tensors plain = train_head(false);
    const Tensors flushed = train_head(true);
    CHECK(same_tensor_bits(plain, flushed));
}

TEST_CASE("fp mode: a caller that flushes keeps flushing") {
    FlushDenormals caller;
    if (!FlushDenormals::active()) return;  // no flush-to-zero control here
    bool inside = false;
    train_head(false, &inside);
    CHECK(inside);
    CHECK(FlushDenormals::active());
}

TEST_CASE("fp mode: a caller that does not flush gets its mode back") {
    {
        FlushDenormals probe;
        if (!FlushDenormals::active()) return;
    }
    REQUIRE_FALSE(FlushDenormals::active());
    bool inside = false;
    train_head(false, &inside);
    CHECK(inside);
    CHECK_FALSE(FlushDenormals::active());
}
