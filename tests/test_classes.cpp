// test_classes.cpp — classes as stored data (schema v3): the classes table, its migration from a
// v2 file written by the v2 code, add/rename/remove of classes and their bad input.
#include <doctest/doctest.h>

#include <filesystem>

#include "storage.hpp"
#include "test_util.hpp"

using namespace edgetune;
using namespace edgetune_test;

namespace {

StoreOptions options4() {
    return {.input = InputSpec::float_vector(8), .label = LabelSpec::classes(4)};
}

Sample sample_of(std::int32_t label, float value) {
    Sample s;
    s.input.assign(8, value);
    s.label = label;
    return s;
}

}  // namespace

TEST_CASE("a schema v2 file (written by the v2 code) migrates to v3: classes '0'..'3'") {
    TempDb db("v2");
    std::filesystem::copy_file(fixture_path("store_v2.db"), db.path);
    SampleStore st = SampleStore::open(db.path, options4());
    CHECK(st.integrity_check() == "ok");
    CHECK(st.count() == 12);
    CHECK(st.get(5)->input[1] == 5.125f);
    CHECK(st.get_features("v2digest", std::vector<std::int64_t>{2})(0, 1) == 2.0f);
    CHECK(st.latest_checkpoint(CheckpointKind::base)->payload == std::vector<std::uint8_t>(64, 7));
    CHECK(st.get_meta("app.note") == "written by schema v2");
    const auto classes = st.classes();
    REQUIRE(classes.size() == 4);
    for (std::int32_t c = 0; c < 4; ++c) {
        CHECK(classes[static_cast<std::size_t>(c)].label == c);
        CHECK(classes[static_cast<std::size_t>(c)].name == std::to_string(c));
        CHECK(classes[static_cast<std::size_t>(c)].samples == 3);
    }
    CHECK(st.label_spec().size == 4);
    // The v2 idempotency key survived.
    CHECK(contains(thrown<InvalidArgument>(
                       [&] { st.add_batch(std::vector<Sample>{sample_of(0, 1.0f)}, "k0"); }),
                   "idempotency key 'k0' was used for other samples"));
    CHECK(st.count() == 12);
    // v3 works on it, and a reopen neither migrates again nor duplicates classes.
    CHECK(st.add_class("cat") == 4);
    SampleStore again = SampleStore::open(db.path, options4());
    CHECK(again.classes().size() == 5);
    CHECK(again.label_spec().size == 5);
}

TEST_CASE("a v2 file opened with another declaration is refused and left at v2") {
    TempDb db("v2-wrong");
    std::filesystem::copy_file(fixture_path("store_v2.db"), db.path);
    StoreOptions o = options4();
    o.label = LabelSpec::classes(5);
    CHECK(contains(thrown<InvalidArgument>([&] { SampleStore::open(db.path, o); }),
                   "the store was created for"));
    SampleStore st = SampleStore::open(db.path, options4());
    CHECK(st.classes().size() == 4);
}

TEST_CASE("add_class, rename_class, find_class; samples need a live label") {
    TempDb db("classes");
    SampleStore st = SampleStore::open(db.path, options4());
    CHECK(st.classes().size() == 4);
    CHECK(contains(thrown<InvalidArgument>([&] { st.add(sample_of(4, 1.0f)); }),
                   "label 4 out of range for 4 classes"));
    CHECK(st.add_class("Zoë") == 4);
    CHECK(st.add(sample_of(4, 1.0f)) > 0);
    CHECK(st.find_class("Zoë") == 4);
    CHECK(!st.find_class("nobody"));
    st.rename_class(4, "Zoe");
    CHECK(st.classes().back().name == "Zoe");
    st.rename_class(4, "Zoe");  // the same name again is no change, not a clash
    CHECK(st.classes().back().samples == 1);
    CHECK(st.count_per_label().size() == 5);
}

TEST_CASE("class names and labels: bad input is refused and nothing changes") {
    TempDb db("classes-bad");
    SampleStore st = SampleStore::open(db.path, options4());
    CHECK(contains(thrown<InvalidArgument>([&] { st.add_class(""); }), "'' is empty"));
    CHECK(contains(thrown<InvalidArgument>([&] { st.add_class("2"); }), "'2' is taken"));
    CHECK(contains(thrown<InvalidArgument>([&] { st.add_class("a\nb"); }), "control character"));
    CHECK(contains(thrown<InvalidArgument>([&] { st.add_class("\xff"); }), "not UTF-8"));
    CHECK(contains(thrown<InvalidArgument>([&] { st.add_class(std::string(257, 'x')); }),
                   "257 bytes"));
    CHECK(contains(thrown<InvalidArgument>([&] { st.rename_class(9, "x"); }),
                   "no class with label 9 (the store has 4 classes)"));
    CHECK(contains(thrown<InvalidArgument>([&] { st.rename_class(1, "3"); }), "'3' is taken"));
    CHECK(
        contains(thrown<InvalidArgument>([&] { st.remove_class(-1); }), "no class with label -1"));
    CHECK(st.classes().size() == 4);
    CHECK(st.classes()[1].name == "1");
    TempDb reg("classes-regression");
    SampleStore r = SampleStore::open(
        reg.path, {.input = InputSpec::float_vector(8), .label = LabelSpec::regression(2)});
    CHECK(contains(thrown<InvalidArgument>([&] { r.add_class("a"); }), "needs a classes store"));
}

TEST_CASE("remove_class erases its samples and features and shifts the labels above it") {
    TempDb db("classes-remove");
    SampleStore st = SampleStore::open(db.path, options4());
    std::vector<Sample> v;
    for (int i = 0; i < 12; ++i) v.push_back(sample_of(i % 4, static_cast<float>(i)));
    const auto ids = st.add_batch(v);
    st.put_features("d", ids, Matrix::Constant(12, 3, 1.0f));
    bool ran = false;
    const std::vector<std::pair<std::string, std::string>> meta{{"app.removed", "1"}};
    CHECK(st.remove_class(1, meta, [&] { ran = true; }) == 3);
    CHECK(ran);
    CHECK(st.get_meta("app.removed") == "1");
    CHECK(st.count() == 9);
    const auto classes = st.classes();
    REQUIRE(classes.size() == 3);
    CHECK(classes[1].name == "2");
    CHECK(classes[1].label == 1);
    CHECK(classes[2].name == "3");
    CHECK(st.get(ids[2])->label == 1);  // was class 2
    CHECK(st.get(ids[3])->label == 2);  // was class 3
    CHECK(!st.get(ids[1]));
    CHECK(st.ids_missing_features("d", 100).empty());
    CHECK(contains(thrown<InvalidArgument>([&] { st.add(sample_of(3, 1.0f)); }),
                   "label 3 out of range for 3 classes"));
    CHECK(st.integrity_check() == "ok");
    // A failing `also` rolls the whole removal back.
    CHECK(contains(thrown<InvalidArgument>([&] {
                       st.remove_class(0, {}, [] { throw InvalidArgument("[test] refused"); });
                   }),
                   "refused"));
    CHECK(st.count() == 9);
    CHECK(st.classes().size() == 3);
    CHECK(st.label_spec().size == 3);
    st.remove_class(0);
    st.remove_class(0);
    CHECK(contains(thrown<InvalidArgument>([&] { st.remove_class(0); }), "is the last class"));
}
