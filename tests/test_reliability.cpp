// test_reliability.cpp — what survives a power cut, a full disk and a forget, through the
// FaultVfs shim (fault_vfs.hpp): simulated power loss over add, add_batch, train's commit and
// forget at every write point of small scenarios and at random points of a long one, under
// both durability modes; the checkpoint-file write path; erasure that leaves no byte of a
// forgotten sample in the database, -wal or -shm, also on a full disk.
//
// Each power-loss case prints one line of counts (cuts, losses, corruptions).
// EDGETUNE_STRESS=1 runs the long scenario at 10,000 cut points instead of a few hundred.
#include <doctest/doctest.h>

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <set>

#include "fault_vfs.hpp"
#include "personalize.hpp"
#include "test_util.hpp"

using namespace edgetune;
using namespace edgetune_test;

namespace {

[[maybe_unused]] bool stress() {
    const char* v = std::getenv("EDGETUNE_STRESS");
    return v != nullptr && *v != '\0' && std::strcmp(v, "0") != 0;
}

std::shared_ptr<const Backbone> small_backbone(std::uint64_t seed = 3) {
    Rng rng(seed);
    BackboneNet net({.input = InputSpec::float_vector(8), .hidden = {12}}, rng);
    return Backbone::freeze(net);
}

// Sample i: a value pattern no other sample (and no other file content) shares.
Sample sample(int i) {
    Sample s;
    for (int j = 0; j < 8; ++j)
        s.input.push_back(static_cast<float>(i % 4) * 2.0f + 0.001f * static_cast<float>(i) +
                          0.37f * static_cast<float>(j) + 1.0f / 1024.0f);
    s.label = i % 4;
    return s;
}

std::vector<Sample> samples(int first, int n) {
    std::vector<Sample> out;
    for (int i = first; i < first + n; ++i) out.push_back(sample(i));
    return out;
}

PersonalizerOptions popts(Durability d, std::shared_ptr<const Backbone> bb = small_backbone()) {
    return {.backbone = std::move(bb),
            .head = HeadSpec::linear(4),
            .durability = d,
            .seed = 5,
            .validation_fraction = 0.2f};
}

const TrainOptions quick{.epochs = 3, .optimizer = AdamOptions{.lr = 0.02f}, .seed = 1};

std::vector<std::uint8_t> file_or_empty(const std::string& path) {
    if (!std::filesystem::exists(path)) return {};
    return read_file(path, 1 << 28);
}

// True if `needle` occurs in `hay`.
bool occurs(const std::vector<std::uint8_t>& hay, std::span<const std::uint8_t> needle) {
    return std::search(hay.begin(), hay.end(), needle.begin(), needle.end()) != hay.end();
}

// Which of db, -wal, -shm hold a trace of `values`: the whole blob, or any 8 bytes of it
// (two consecutive floats, neither zero: zeros are everywhere in a file). "" if none.
std::string traces(const std::string& db, const std::vector<float>& values) {
    std::string found;
    const auto* bytes = reinterpret_cast<const std::uint8_t*>(values.data());
    for (const char* suffix : {"", "-wal", "-shm"}) {
        const auto hay = file_or_empty(db + suffix);
        for (std::size_t i = 0; i + 1 < values.size(); ++i) {
            if (values[i] == 0.0f || values[i + 1] == 0.0f) continue;
            if (occurs(hay, std::span(bytes + 4 * i, 8))) {
                found += std::string(*suffix ? suffix : "db") + " ";
                break;
            }
        }
    }
    return found;
}

std::vector<float> features_of(const Backbone& bb, const Sample& s) {
    const Matrix f = bb.features(std::span<const Sample>(&s, 1));
    return {f.data(), f.data() + f.size()};
}

}  // namespace

// =============================================================================================
// Erasure

TEST_CASE("forget leaves no byte of a sample's input or features in the db, -wal or -shm") {
    for (Durability d : {Durability::normal, Durability::full}) {
        CAPTURE(static_cast<int>(d));
        TempDb db("erase-scan");
        auto bb = small_backbone();
        auto p = Personalizer::open(db.path, popts(d, bb));
        const auto ids = p->add(samples(0, 40));
        REQUIRE(p->train(quick).outcome == TrainReport::Outcome::committed);
        const Sample gone = sample(7), kept = sample(8);
        const auto gone_features = features_of(*bb, gone);
        // The scan can fail: before the forget every file that holds the pages has them.
        CHECK(traces(db.path, gone.input) != "");
        CHECK(traces(db.path, gone_features) != "");
        const TrainReport r = p->forget(std::vector<std::int64_t>{ids[7]}, quick);
        CHECK(r.retrained_from_base);
        CHECK(traces(db.path, gone.input) == "");
        CHECK(traces(db.path, gone_features) == "");
        CHECK(traces(db.path, kept.input) != "");  // what is kept is still found
        // A reopen, and the retrain's commits after it, bring nothing back.
        p.reset();
        p = Personalizer::open(db.path, popts(d, bb));
        p->add(samples(100, 5));
        CHECK(traces(db.path, gone.input) == "");
        CHECK(traces(db.path, gone_features) == "");
        CHECK(p->sample_count() == 44);
    }
}

TEST_CASE("a plain delete leaves the bytes in the -wal (what the scan above rules out)") {
    TempDb db("delete-scan");
    SampleStore st = SampleStore::open(
        db.path, {.input = InputSpec::float_vector(8), .label = LabelSpec::classes(4)});
    const std::int64_t id = st.add(sample(3));
    st.add(sample(4));
    st.delete_ids(std::vector<std::int64_t>{id});
    CHECK(traces(db.path, sample(3).input) == "-wal ");
    st.erase_ids(std::vector<std::int64_t>{});  // erasing nothing still scrubs the -wal
    CHECK(traces(db.path, sample(3).input) == "");
    CHECK(traces(db.path, sample(4).input) != "");
}

TEST_CASE("erase_ids refuses to run inside a transaction and rejects reserved meta keys") {
    TempDb db("erase-tx");
    SampleStore st = SampleStore::open(
        db.path, {.input = InputSpec::float_vector(8), .label = LabelSpec::classes(4)});
    const std::int64_t id = st.add(sample(1));
    {
        Transaction tx = st.transaction();
        CHECK(contains(thrown<InvalidArgument>([&] { st.erase_ids(std::vector{id}); }),
                       "inside a transaction"));
    }
    const std::vector<std::pair<std::string, std::string>> bad = {{"store.offered", "0"}};
    CHECK(
        contains(thrown<InvalidArgument>([&] { st.erase_ids(std::vector{id}, bad); }), "reserved"));
    CHECK(st.count() == 1);
}

TEST_CASE("forget succeeds on a full disk: the reserve file makes room") {
    FaultVfsScope vfs;
    const std::string dir = temp_path("full-disk");
    std::filesystem::create_directories(dir);
    const std::string db = dir + "/user.db";
    auto bb = small_backbone();
    auto p = Personalizer::open(db, popts(Durability::normal, bb));
    std::vector<std::int64_t> ids = p->add(samples(0, 40));
    REQUIRE(p->train(quick).outcome == TrainReport::Outcome::committed);
    REQUIRE(std::filesystem::exists(db + "-reserve"));
    // Fill the disk: the quota is what the directory holds now, plus a little.
    std::int64_t used = 0;
    for (const auto& e : std::filesystem::directory_iterator(dir))
        used += static_cast<std::int64_t>(e.file_size());
    FaultVfs::set_quota(dir, used + 8192);
    std::string error;
    for (int i = 0; i < 2000 && error.empty(); ++i) {
        try {
            ids.push_back(p->add(sample(1000 + i)));
        } catch (const StorageError& e) {
            error = e.what();
        }
    }
    REQUIRE(contains(error, "full"));
    const std::int64_t before = p->sample_count();
    const TrainReport r = p->forget(std::vector<std::int64_t>{ids[0], ids[1]}, quick);
    CHECK(r.outcome == TrainReport::Outcome::committed);
    CHECK(p->sample_count() == before - 2);
    CHECK(traces(db, sample(0).input) == "");
    CHECK(p->store().integrity_check() == "ok");
    p.reset();
    FaultVfs::set_quota("", 0);
    p = Personalizer::open(db, popts(Durability::normal, bb));
    CHECK(p->sample_count() == before - 2);
    CHECK(std::filesystem::exists(db + "-reserve"));  // recreated once there is room
    p.reset();
    std::filesystem::remove_all(dir);
}

// =============================================================================================
// Nothing destroyed by surprise

TEST_CASE("a read-only Personalizer never writes and never serves a head that is owed a retrain") {
    TempDb db("read-only");
    auto bb = small_backbone();
    std::vector<std::int64_t> ids;
    std::vector<std::pair<std::string, Matrix>> base;
    {
        auto p = Personalizer::open(db.path, popts(Durability::normal, bb));
        base = p->head_parameters();
        ids = p->add(samples(0, 40));
        REQUIRE(p->train(quick).outcome == TrainReport::Outcome::committed);
        // A forget whose retrain has not run yet (as after a crash).
        p->store().erase_ids(std::vector<std::int64_t>{ids[0]},
                             std::vector<std::pair<std::string, std::string>>{
                                 {"personalize.retrain_pending", "forget"}});
    }
    const auto before = read_file(db.path, 1 << 26);
    PersonalizerOptions ro = popts(Durability::normal, bb);
    ro.read_only = true;
    {
        auto p = Personalizer::open(db.path, ro);
        CHECK(p->sample_count() == 39);
        const auto served = p->head_parameters();
        REQUIRE(served.size() == base.size());
        for (std::size_t i = 0; i < served.size(); ++i)
            CHECK(served[i].second.isApprox(base[i].second, 0.0f));
        CHECK_THROWS_AS(p->add(sample(99)), StorageError);
        CHECK_THROWS_AS(p->train(quick), StorageError);
    }
    CHECK(read_file(db.path, 1 << 26) == before);
    ro.backbone = small_backbone(9);  // another backbone: refused, even read-only
    CHECK(contains(thrown<InvalidArgument>([&] { Personalizer::open(db.path, ro); }),
                   "set upgrade_backbone"));
    CHECK(read_file(db.path, 1 << 26) == before);
    TempDb missing("read-only-missing");
    CHECK(contains(thrown<InvalidArgument>([&] { Personalizer::open(missing.path, ro); }),
                   "does not exist"));
    CHECK_FALSE(std::filesystem::exists(missing.path));
}
