// consumer.cpp — a C++ program built against an installed edgetune with `pkg-config` alone
// (the consumer test, consumer_test.sh): the public C++ API through the shared library,
// including an engine exception caught by its type across the library boundary.
// Usage: consumer_cpp BACKBONE.etb DB
#include <personalize.hpp>

#include <cstdio>

int main(int argc, char** argv) {
    if (argc != 3) return 2;
    using namespace edgetune;
    auto p = Personalizer::open(argv[2],
                                {.backbone = Backbone::load(argv[1]), .head = HeadSpec::linear(3)});
    std::vector<Sample> samples;
    for (int i = 0; i < 30; ++i) {
        Sample s;
        s.label = i % 3;
        for (int k = 0; k < 4; ++k) s.input.push_back(k == i % 3 ? 2.0f : 0.01f * (i % 7));
        samples.push_back(s);
    }
    p->add(samples);
    const TrainReport report = p->train({.epochs = 50, .optimizer = AdamOptions{.lr = 0.05f}});
    Sample query;
    query.input = {0, 0, 2, 0};
    const Prediction top = p->predict(query, 1).at(0);
    bool caught = false;
    try {
        query.input = {1, 2, 3};  // wrong width
        p->predict(query, 1);
    } catch (const InvalidArgument& e) {  // typeinfo exported by libedgetune.so
        caught = true;
    }
    std::printf("consumer_cpp: %lld steps, predicted class %d (p = %.2f), wrong width %s\n",
                static_cast<long long>(report.steps), top.label, top.probability,
                caught ? "rejected with InvalidArgument" : "NOT rejected");
    return top.label == 2 && caught ? 0 : 1;
}
