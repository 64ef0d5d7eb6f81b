// test_reliability.cpp — what survives a power cut, a full disk and a forget, through the
// FaultVfs shim (fault_vfs.hpp): simulated power loss over add, add_batch, train's commit,
// forget and a backbone upgrade at every write point of small scenarios and at random points
// of a long one, under both durability modes; erasure that leaves no byte of a forgotten
// sample in the database, -wal or -shm, also on a full disk; the N-th write, sync or read
// failing during open, add, train and forget, and SQLite's N-th allocation; read-only opens
// that never write; schema v2's migration and idempotent adds; files from elsewhere.
//
// Each power-loss and fault loop prints one line of counts (cuts, losses, corruptions).
// EDGETUNE_STRESS=1 runs the long scenario at 10,000 cut points instead of 160.
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

#include <sqlite3.h>

#include <atomic>

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
    // A reopen checkpoints: the file holds what the -wal held (the reserve covers a checkpoint
    // that grows the file by up to its size, not an unbounded one).
    p.reset();
    p = Personalizer::open(db, popts(Durability::normal, bb));
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

// =============================================================================================
// Simulated power loss

namespace {

constexpr FaultVfs::Loss losses[] = {FaultVfs::Loss::drop, FaultVfs::Loss::reorder,
                                     FaultVfs::Loss::tear};

const char* mode_name(Durability d) {
    return d == Durability::full ? "full" : "normal";
}

StoreOptions store_options(Durability d = Durability::normal) {
    return {.input = InputSpec::float_vector(8),
            .label = LabelSpec::classes(4),
            .durability = d,
            .reserve_bytes = 0};
}

// One power-loss scenario. setup() builds the state before the cut (its writes count as
// synced); act() is the operation, from open to close, and throws when the cut hits it;
// verify() runs on the reopened files (normal VFS) with act()'s acknowledgement and returns
// "" if the state is acceptable, "lost" if an acknowledged change is missing (allowed under
// normal durability: the commits since the last sync), anything else for a wrong state.
struct Scenario {
    const char* name;
    std::function<void(const std::string&, Durability)> setup;
    std::function<void(const std::string&, Durability)> act;
    std::function<std::string(const std::string&, Durability, bool)> verify;
};

struct CutCounts {
    int cuts = 0, acked = 0, lost = 0, wrong = 0, corrupt = 0;
};

// Runs `s` with the power cut at write `k` (0: no cut) and checks what the disk kept.
void cut_once(const Scenario& s, Durability d, std::int64_t k, FaultVfs::Loss loss,
              std::uint64_t seed, CutCounts& counts) {
    TempDb db(s.name);
    s.setup(db.path, d);  // through the shim too: its syncs are free
    FaultVfs::reset();
    if (k > 0) FaultVfs::arm_power_cut(k);
    bool acked = true;
    try {
        s.act(db.path, d);
    } catch (const Error&) {
        acked = false;
    }
    FaultVfs::apply_power_loss(loss, seed);
    FaultVfs::uninstall();
    ++counts.cuts;
    counts.acked += acked;
    std::string verdict;
    try {
        SampleStore st = SampleStore::open(db.path, store_options());
        const std::string integrity = st.integrity_check();
        if (integrity != "ok") verdict = "corrupt: " + integrity;
    } catch (const Error& e) {
        verdict = std::string("corrupt: ") + e.what();
    }
    if (verdict.empty()) {
        try {
            verdict = s.verify(db.path, d, acked);
        } catch (const Error& e) {
            verdict = std::string("verify threw: ") + e.what();
        }
    }
    if (verdict.starts_with("corrupt"))
        ++counts.corrupt;
    else if (verdict == "lost")
        ++counts.lost;
    else if (!verdict.empty())
        ++counts.wrong;
    if (!verdict.empty() && (verdict != "lost" || d == Durability::full))
        MESSAGE(s.name << " " << mode_name(d) << " cut at write " << k << " loss "
                       << static_cast<int>(loss) << (acked ? " (acked)" : "") << ": " << verdict);
    FaultVfs::install();
}

// Every write point of `s` (counted by one run without a cut), each loss kind in turn.
CutCounts every_write_point(const Scenario& s, Durability d) {
    FaultVfsScope vfs;
    CutCounts counts;
    std::int64_t writes = 0;
    {
        TempDb db(s.name);
        s.setup(db.path, d);
        FaultVfs::reset();
        s.act(db.path, d);
        writes = FaultVfs::writes();
    }
    for (std::int64_t k = 1; k <= writes + 1; ++k)
        cut_once(s, d, k, losses[k % 3], static_cast<std::uint64_t>(k), counts);
    std::printf(
        "power loss: %-10s %-6s %3d cuts (%lld write points), %d acknowledged, %d lost, "
        "%d wrong, %d corrupt\n",
        s.name, mode_name(d), counts.cuts, static_cast<long long>(writes), counts.acked,
        counts.lost, counts.wrong, counts.corrupt);
    return counts;
}

std::string fixture_dir();

const std::shared_ptr<const Backbone>& shared_backbone(int which) {
    static const std::shared_ptr<const Backbone> a = small_backbone(3), b = small_backbone(4);
    return which == 0 ? a : b;
}

// The setup of the Personalizer scenarios: 20 samples, one committed training.
void trained_store(const std::string& db, Durability d) {
    auto p = Personalizer::open(db, popts(d, shared_backbone(0)));
    p->add(samples(0, 20));
    REQUIRE(p->train(quick).outcome == TrainReport::Outcome::committed);
}

std::int64_t stored_count(const std::string& db) {
    return SampleStore::open(db, store_options()).count();
}

// "" if the store holds `n_old` or (`n_old` + `n_new`) samples, all with features; "lost" if
// it holds n_old but the change was acknowledged under full durability.
std::string added_or_not(const std::string& db, Durability d, bool acked, std::int64_t n_old,
                         std::int64_t n_new) {
    SampleStore st = SampleStore::open(db, store_options());
    const std::int64_t n = st.count();
    if (n != n_old && n != n_old + n_new) return "holds " + std::to_string(n) + " samples";
    if (!st.ids_missing_features(shared_backbone(0)->feature_key(), 100).empty())
        return "samples without features";
    if (n == n_old && acked) return "lost";
    // The personalizer opens on what is left.
    Personalizer::open(db, popts(d, shared_backbone(0)));
    return "";
}

std::vector<Scenario> personalizer_scenarios() {
    std::vector<Scenario> out;
    out.push_back({"add", trained_store,
                   [](const std::string& db, Durability d) {
                       Personalizer::open(db, popts(d, shared_backbone(0)))->add(sample(500));
                   },
                   [](const std::string& db, Durability d, bool acked) {
                       return added_or_not(db, d, acked, 20, 1);
                   }});
    out.push_back({"add_batch", trained_store,
                   [](const std::string& db, Durability d) {
                       Personalizer::open(db, popts(d, shared_backbone(0)))->add(samples(500, 10));
                   },
                   [](const std::string& db, Durability d, bool acked) {
                       return added_or_not(db, d, acked, 20, 10);
                   }});
    out.push_back({"train",
                   [](const std::string& db, Durability d) {
                       trained_store(db, d);
                       Personalizer::open(db, popts(d, shared_backbone(0)))->add(samples(100, 12));
                   },
                   [](const std::string& db, Durability d) {
                       // No guard (tolerance 1): the run commits unless the cut stops it.
                       TrainOptions unguarded = quick;
                       unguarded.tolerance = 1.0f;
                       auto p = Personalizer::open(db, popts(d, shared_backbone(0)));
                       if (p->train(unguarded).outcome != TrainReport::Outcome::committed)
                           throw Error("not committed");
                   },
                   [](const std::string& db, Durability d, bool acked) -> std::string {
                       SampleStore st = SampleStore::open(db, store_options());
                       const auto runs = st.list_runs();
                       const auto latest = st.latest_checkpoint(CheckpointKind::trained);
                       if (!latest) return "no trained checkpoint";
                       decode_checkpoint(latest->payload);  // throws CorruptData if torn
                       if (acked && runs.size() < 2) return "lost";
                       Personalizer::open(db, popts(d, shared_backbone(0)))->predict(sample(1));
                       return "";
                   }});
    out.push_back({"forget", trained_store,
                   [](const std::string& db, Durability d) {
                       Personalizer::open(db, popts(d, shared_backbone(0)))
                           ->forget(std::vector<std::int64_t>{4}, quick);
                   },
                   [](const std::string& db, Durability d, bool acked) -> std::string {
                       const std::int64_t n = stored_count(db);
                       // An acknowledged forget is durable in both modes, and leaves no trace.
                       if (acked && n != 19)
                           return d == Durability::full ? "lost" : "forgotten came back";
                       if (n == 19 && traces(db, sample(3).input) != "") return "traces left";
                       auto p = Personalizer::open(db, popts(d, shared_backbone(0)));
                       if (!p->store().get_meta("personalize.retrain_pending").value_or("").empty())
                           return "retrain still owed after open";
                       return "";
                   }});
    out.push_back({"remove_class", trained_store,
                   [](const std::string& db, Durability d) {
                       Personalizer::open(db, popts(d, shared_backbone(0)))->remove_class(1, quick);
                   },
                   [](const std::string& db, Durability d, bool acked) -> std::string {
                       const std::int64_t n = stored_count(db);
                       // Samples 1, 5, ..., 17 are class 1: all of them, or none, remain.
                       if (n != 20 && n != 15) return "partly removed: " + std::to_string(n);
                       // An acknowledged removal is durable in both modes, and leaves no trace.
                       if (acked && n != 15)
                           return d == Durability::full ? "lost" : "removed class came back";
                       if (n == 15 && traces(db, sample(5).input) != "") return "traces left";
                       auto p = Personalizer::open(db, popts(d, shared_backbone(0)));
                       if (p->classes().size() != (n == 15 ? 3u : 4u)) return "class table";
                       if (p->head_parameters().back().second.cols() !=
                           static_cast<Index>(p->classes().size()))
                           return "head columns";
                       if (!p->store().get_meta("personalize.retrain_pending").value_or("").empty())
                           return "retrain still owed after open";
                       return "";
                   }});
    out.push_back({"upgrade", trained_store,
                   [](const std::string& db, Durability d) {
                       PersonalizerOptions o = popts(d, shared_backbone(1));
                       o.upgrade_backbone = true;
                       o.upgrade_training = quick;
                       Personalizer::open(db, o);
                   },
                   [](const std::string& db, Durability d, bool acked) -> std::string {
                       SampleStore st = SampleStore::open(db, store_options());
                       const auto digest = st.get_meta("personalize.backbone_digest").value_or("");
                       const bool upgraded = digest == shared_backbone(1)->digest();
                       if (!upgraded && digest != shared_backbone(0)->digest())
                           return "digest " + digest;
                       if (acked && !upgraded) return "lost";
                       PersonalizerOptions o = popts(d, shared_backbone(upgraded ? 1 : 0));
                       auto p = Personalizer::open(db, o);
                       if (p->sample_count() != 20) return "samples lost";
                       return "";
                   }});
    out.push_back({"migration",
                   [](const std::string& db, Durability) {
                       std::filesystem::copy_file(fixture_dir() + "/store_v1.db", db);
                   },
                   [](const std::string& db, Durability d) {
                       SampleStore::open(db, store_options(d));  // migrates v1 -> v2, then closes
                   },
                   [](const std::string& db, Durability, bool) -> std::string {
                       SampleStore st = SampleStore::open(db, store_options());
                       if (st.count() != 12 || st.get_meta("app.note") != "written by schema v1")
                           return "v1 data changed";
                       if (st.add_batch(samples(0, 1), "after-migration").size() != 1)
                           return "v2 table missing";
                       return "";
                   }});
    return out;
}

}  // namespace

TEST_CASE(
    "power loss at every write point of add, add_batch, train, forget, remove_class, upgrade, "
    "migration") {
    CutCounts all;
    for (const Scenario& s : personalizer_scenarios())
        for (Durability d : {Durability::normal, Durability::full}) {
            const CutCounts c = every_write_point(s, d);
            CHECK(c.corrupt == 0);
            CHECK(c.wrong == 0);
            if (d == Durability::full) CHECK(c.lost == 0);
            CHECK(c.acked < c.cuts);  // the cuts did hit the operation
            all.cuts += c.cuts;
        }
    std::printf("power loss: %d cuts over the small scenarios\n", all.cuts);
    CHECK(all.cuts > 100);
}

namespace {

// The long scenario: 40 single adds on a store whose -wal is checkpointed every 32 pages (so
// syncs happen in the middle), with or without the background checkpointer. Sample i gets id
// i. After the cut the store must hold exactly samples 1..m, intact, for some m: with full
// durability m >= the adds acknowledged; with normal, m may be smaller (the commits since the
// last sync), never a gap, never a wrong byte.
constexpr int long_adds = 40;

StoreOptions long_options(Durability d, bool background) {
    StoreOptions o = store_options(d);
    o.checkpoint_bytes = 32 * 16384;
    o.background_checkpoints = background;
    return o;
}

int long_run(const std::string& db, Durability d, bool background) {
    int acked = 0;
    try {
        SampleStore st = SampleStore::open(db, long_options(d, background));
        for (int i = 1; i <= long_adds; ++i) {
            st.add(sample(i));
            acked = i;
        }
    } catch (const Error&) {
    }
    return acked;
}

// "" or what is wrong; `lost` counts acknowledged adds missing.
std::string long_verify(const std::string& db, Durability d, int acked, int& lost) {
    SampleStore st = SampleStore::open(db, store_options());
    if (st.integrity_check() != "ok") return "corrupt";
    const std::int64_t n = st.count();
    const auto ids = st.ids_after(0, 1000);
    for (std::size_t i = 0; i < ids.size(); ++i)
        if (ids[i] != static_cast<std::int64_t>(i) + 1)
            return "a gap at id " + std::to_string(i + 1);
    for (const Sample& s : st.get_many(ids))
        if (s.input != sample(static_cast<int>(s.id)).input)
            return "sample " + std::to_string(s.id) + " differs";
    if (n > acked + 1) return "more samples than were added";
    lost = std::max<int>(0, acked - static_cast<int>(n));
    if (d == Durability::full && lost > 0) return "lost";
    return "";
}

}  // namespace

TEST_CASE("power loss at random write points of a long run of adds") {
    FaultVfsScope vfs;
    const int per_mode = stress() ? 2500 : 40;
    int total = 0;
    for (Durability d : {Durability::normal, Durability::full})
        for (bool background : {false, true}) {
            std::int64_t writes = 0;
            {
                TempDb db("long-dry");
                REQUIRE(long_run(db.path, d, background) == long_adds);
                writes = FaultVfs::writes();
                FaultVfs::reset();
            }
            Rng rng(static_cast<std::uint64_t>(d == Durability::full) * 2 + background);
            int acked_total = 0, lost_total = 0, commits_lost = 0, bad = 0;
            for (int cut = 0; cut < per_mode; ++cut) {
                TempDb db("long");
                FaultVfs::reset();
                FaultVfs::arm_power_cut(
                    1 + static_cast<std::int64_t>(rng.below(static_cast<std::uint64_t>(writes))));
                const int acked = long_run(db.path, d, background);
                FaultVfs::apply_power_loss(losses[cut % 3], rng.below(1ULL << 62));
                FaultVfs::uninstall();
                int lost = 0;
                const std::string verdict = long_verify(db.path, d, acked, lost);
                FaultVfs::install();
                if (!verdict.empty()) {
                    ++bad;
                    MESSAGE(mode_name(d)
                            << " background " << background << " cut " << cut << ": " << verdict);
                }
                acked_total += acked;
                lost_total += lost;
                commits_lost += lost > 0;
            }
            std::printf(
                "power loss: long run %-6s %s checkpoints: %d cuts over %lld write "
                "points, %d adds acknowledged, %d of them lost (in %d runs), %d wrong or "
                "corrupt\n",
                mode_name(d), background ? "background" : "inline    ", per_mode,
                static_cast<long long>(writes), acked_total, lost_total, commits_lost, bad);
            CHECK(bad == 0);
            total += per_mode;
        }
    std::printf("power loss: %d cuts over the long run\n", total);
}

// =============================================================================================
// The N-th write, sync or read fails

TEST_CASE("I/O faults: open, add, train and forget with the N-th write, sync or read failing") {
    FaultVfsScope vfs;
    struct Step {
        const char* name;
        std::function<void(std::unique_ptr<Personalizer>&, const std::string&)> run;
    };
    const std::vector<Step> steps = {
        {"open",
         [](std::unique_ptr<Personalizer>& p, const std::string& db) {
             p = Personalizer::open(db, popts(Durability::full, shared_backbone(0)));
         }},
        {"add", [](std::unique_ptr<Personalizer>& p, const std::string&) { p->add(sample(600)); }},
        {"train",
         [](std::unique_ptr<Personalizer>& p, const std::string&) {
             TrainOptions unguarded = quick;
             unguarded.tolerance = 1.0f;
             p->train(unguarded);
         }},
        {"forget", [](std::unique_ptr<Personalizer>& p,
                      const std::string&) { p->forget(std::vector<std::int64_t>{2}, quick); }},
    };
    for (const Step& step : steps)
        for (FaultVfs::Op op : {FaultVfs::Op::write, FaultVfs::Op::sync, FaultVfs::Op::read}) {
            int runs = 0, failed = 0;
            for (std::int64_t n = 1;; ++n) {
                TempDb db("io-fault");
                trained_store(db.path, Durability::full);
                std::unique_ptr<Personalizer> p =
                    Personalizer::open(db.path, popts(Durability::full, shared_backbone(0)));
                if (std::string(step.name) == "open") p.reset();
                FaultVfs::reset();
                FaultVfs::arm_fault(op, n);
                std::string error;
                try {
                    step.run(p, db.path);
                } catch (const Error& e) {
                    error = e.what();
                }
                const bool fired = FaultVfs::fault_fired();
                FaultVfs::reset();
                ++runs;
                if (!error.empty()) {
                    ++failed;
                    // A clear error: it names the operation.
                    CHECK_MESSAGE(error.front() == '[', error);
                }
                // Usable afterwards, or reopened; everything committed before is intact.
                p.reset();
                auto q = Personalizer::open(db.path, popts(Durability::full, shared_backbone(0)));
                CHECK(q->store().integrity_check() == "ok");
                const std::int64_t count = q->sample_count();
                CHECK(count >= 19);
                CHECK(count <= 21);
                q->add(sample(700));
                if (!fired) break;  // the step ran to its end without reaching the n-th op
            }
            std::printf("io faults: %-6s failing the n-th %-5s: %d runs, %d threw\n", step.name,
                        op == FaultVfs::Op::write  ? "write"
                        : op == FaultVfs::Op::sync ? "sync"
                                                   : "read",
                        runs, failed);
        }
}

// =============================================================================================
// Bad files from elsewhere

TEST_CASE("features computed by another kernel variant are replaced, never mixed") {
    auto bb = shared_backbone(0);
    TempDb moved("moved"), fresh("fresh");
    std::vector<std::int64_t> ids;
    {
        auto p = Personalizer::open(moved.path, popts(Durability::normal, bb));
        ids = p->add(samples(0, 40));
        // What a CPU running the other variant would have left: features under its key that
        // differ in the last bits.
        SampleStore& st = p->store();
        Matrix other = st.get_features(bb->feature_key(), ids);
        for (Index i = 0; i < other.size(); ++i)
            other.data()[i] = std::nextafter(other.data()[i], 10.0f);
        const std::string other_key = bb->digest() + "@other-cpu";
        st.put_features(other_key, ids, other);
        st.drop_features(bb->feature_key());
        st.set_meta("personalize.feature_key", other_key);
    }
    auto p = Personalizer::open(moved.path, popts(Durability::normal, bb));
    const Matrix cached = p->store().get_features(bb->feature_key(), ids);
    const Matrix exact = bb->features(p->store().get_many(ids));
    CHECK(cached == exact);  // recomputed here, bit for bit
    CHECK(p->store().ids_missing_features(bb->digest() + "@other-cpu", 100).size() == 40);
    CHECK(p->store().get_meta("personalize.feature_key") == bb->feature_key());
    // Training on the moved store gives the same head as on a store built here.
    auto q = Personalizer::open(fresh.path, popts(Durability::normal, bb));
    q->add(samples(0, 40));
    REQUIRE(p->train(quick).outcome == TrainReport::Outcome::committed);
    REQUIRE(q->train(quick).outcome == TrainReport::Outcome::committed);
    const auto a = p->head_parameters(), b = q->head_parameters();
    for (std::size_t i = 0; i < a.size(); ++i) CHECK(a[i].second == b[i].second);
}

TEST_CASE("a -wal without its database is a clear error; an empty database with its -wal opens") {
    TempDb db("wal-alone");
    const StoreOptions o = store_options();
    {
        SampleStore st = SampleStore::open(db.path, o);
        st.add(sample(1));
        // Keep a copy of the -wal while it holds the commit (a live store, before a checkpoint).
        std::filesystem::copy_file(db.path + "-wal", db.path + "-wal.copy");
        std::filesystem::copy_file(db.path, db.path + ".copy");
    }
    std::filesystem::remove(db.path);
    std::filesystem::remove(db.path + "-shm");
    std::filesystem::rename(db.path + "-wal.copy", db.path + "-wal");
    const std::string error = thrown<StorageError>([&] { SampleStore::open(db.path, o); });
    CHECK(contains(error, "-wal' holds"));
    CHECK(contains(error, "the database file is missing"));
    CHECK_FALSE(std::filesystem::exists(db.path));  // nothing created
    // With its database (empty: the first commits were still in the -wal), it opens.
    std::filesystem::rename(db.path + ".copy", db.path);
    SampleStore st = SampleStore::open(db.path, o);
    CHECK(st.count() == 1);
    CHECK(st.get(1)->input == sample(1).input);
}

TEST_CASE("a stale -shm from another copy of the store is rebuilt, not trusted") {
    TempDb a("shm-a"), b("shm-b");
    const StoreOptions o = store_options();
    {
        SampleStore sa = SampleStore::open(a.path, o);
        for (int i = 1; i <= 30; ++i) sa.add(sample(i));
        SampleStore sb = SampleStore::open(b.path, o);
        sb.add(sample(100));
        // While both are open their -shm files are live: take b's.
        std::filesystem::copy_file(b.path + "-shm", a.path + "-shm.stale");
        std::filesystem::copy_file(a.path + "-wal", a.path + "-wal.keep");
        std::filesystem::copy_file(a.path, a.path + ".keep");
    }
    // a as a kill would have left it (-wal with 30 commits), with b's -shm next to it.
    for (const char* suffix : {"", "-wal", "-shm"}) std::filesystem::remove(a.path + suffix);
    std::filesystem::rename(a.path + ".keep", a.path);
    std::filesystem::rename(a.path + "-wal.keep", a.path + "-wal");
    std::filesystem::rename(a.path + "-shm.stale", a.path + "-shm");
    SampleStore sa = SampleStore::open(a.path, o);
    CHECK(sa.integrity_check() == "ok");
    CHECK(sa.count() == 30);
    CHECK(sa.get_many(sa.ids_after(0, 100)).back().input == sample(30).input);
}

// =============================================================================================
// Schema v2: the migration from a v1 file and idempotent adds

namespace {

// tests/fixtures: $EDGETUNE_FIXTURES (meson sets it), else next to this source file.
std::string fixture_dir() {
    const char* env = std::getenv("EDGETUNE_FIXTURES");
    if (env != nullptr && *env != '\0') return env;
    return std::filesystem::path(__FILE__).parent_path() / "fixtures";
}

}  // namespace

TEST_CASE("a schema v1 file (written by the v1 code) migrates to v2 with everything intact") {
    TempDb db("v1");
    std::filesystem::copy_file(fixture_dir() + "/store_v1.db", db.path);
    SampleStore st = SampleStore::open(db.path, store_options());
    CHECK(st.integrity_check() == "ok");
    CHECK(st.count() == 12);
    CHECK(st.get(5)->input[1] == 5.125f);
    CHECK(st.get_features("v1digest", std::vector<std::int64_t>{2})(0, 1) == 2.0f);
    CHECK(st.latest_checkpoint(CheckpointKind::base)->payload == std::vector<std::uint8_t>(64, 7));
    CHECK(st.get_meta("app.note") == "written by schema v1");
    CHECK(st.list_runs().size() == 1);
    // v2 works on it: an idempotent add.
    const auto ids = st.add_batch(samples(0, 2), "k1");
    CHECK(ids == st.add_batch(samples(0, 2), "k1"));
    CHECK(st.count() == 14);
}

TEST_CASE("add with an idempotency key: a retry stores nothing twice; a reused key is refused") {
    TempDb db("idem");
    auto p = Personalizer::open(db.path, popts(Durability::normal, shared_backbone(0)));
    const auto batch = samples(0, 5);
    const auto ids = p->add(batch, "batch-1");
    CHECK(p->add(batch, "batch-1") == ids);
    CHECK(p->sample_count() == 5);
    CHECK(contains(thrown<InvalidArgument>([&] { p->add(samples(10, 5), "batch-1"); }),
                   "idempotency key 'batch-1' was used for other samples"));
    CHECK(p->add(samples(10, 5), "batch-2").size() == 5);
    CHECK(p->sample_count() == 10);
    CHECK(contains(thrown<InvalidArgument>([&] { p->store().add_batch(batch, ""); }),
                   "idempotency key must be 1 to 256 bytes"));
}

TEST_CASE("an add whose commit fails with 'outcome unknown' is stored exactly once after a retry") {
    FaultVfsScope vfs;
    int unknown = 0, runs = 0;
    for (FaultVfs::Op op : {FaultVfs::Op::sync, FaultVfs::Op::write})
        for (std::int64_t n = 1;; ++n) {
            TempDb db("idem-fault");
            trained_store(db.path, Durability::full);
            auto p = Personalizer::open(db.path, popts(Durability::full, shared_backbone(0)));
            FaultVfs::reset();
            FaultVfs::arm_fault(op, n);
            const auto batch = samples(300, 3);
            std::string error;
            try {
                p->add(batch, "retry-me");
            } catch (const StorageError& e) {
                error = e.what();
            }
            const bool fired = FaultVfs::fault_fired();
            FaultVfs::reset();
            ++runs;
            unknown += contains(error, "outcome unknown");
            // Retry: in the same process, then after a reopen; exactly once either way.
            if (!error.empty()) {
                try {
                    p->add(batch, "retry-me");
                } catch (const StorageError&) {
                    p.reset();
                    p = Personalizer::open(db.path, popts(Durability::full, shared_backbone(0)));
                    p->add(batch, "retry-me");
                }
            }
            p.reset();
            p = Personalizer::open(db.path, popts(Durability::full, shared_backbone(0)));
            CHECK(p->add(batch, "retry-me").size() == 3);
            CHECK(p->sample_count() == 23);
            if (!fired) break;
        }
    std::printf(
        "io faults: add with a key, failing the n-th sync/write: %d runs, %d outcome "
        "unknown, every batch stored exactly once\n",
        runs, unknown);
    CHECK(unknown > 0);
}

TEST_CASE("a negative schema version (a damaged header, found by fuzz_database) is refused") {
    TempDb db("negative-version");
    { SampleStore::open(db.path, store_options()).add(sample(1)); }
    std::vector<std::uint8_t> bytes = read_file(db.path, 1 << 26);
    REQUIRE(bytes.size() > 100);
    for (std::size_t i = 60; i < 64; ++i) bytes[i] = 0xff;  // user_version = -1 (big-endian)
    write_file_atomic(db.path, bytes);
    CHECK(contains(thrown<StorageError>([&] { SampleStore::open(db.path, store_options()); }),
                   "schema version -1 is not valid"));
    CHECK(read_file(db.path, 1 << 26) == bytes);
}

// =============================================================================================
// The N-th allocation fails (SQLite's allocator)

namespace {

// SQLite's allocator, wrapped: the n-th allocation from arming fails once (returns null, which
// SQLite reports as SQLITE_NOMEM). Installed before SQLite initializes (sqlite3_shutdown first).
struct SqliteAllocFaults {
    static inline sqlite3_mem_methods real{};
    static inline std::atomic<std::int64_t> count{0}, fail_at{0};
    static inline std::atomic<bool> fired{false};
    static bool fail_now() {
        const std::int64_t at = fail_at.load();
        if (at == 0 || ++count != at) return false;
        fired = true;
        return true;
    }
    static void* x_malloc(int n) { return fail_now() ? nullptr : real.xMalloc(n); }
    static void* x_realloc(void* p, int n) { return fail_now() ? nullptr : real.xRealloc(p, n); }
    static void install() {
        static const bool done = [] {
            sqlite3_shutdown();
            sqlite3_config(SQLITE_CONFIG_GETMALLOC, &real);
            sqlite3_mem_methods wrapped = real;
            wrapped.xMalloc = &x_malloc;
            wrapped.xRealloc = &x_realloc;
            sqlite3_config(SQLITE_CONFIG_MALLOC, &wrapped);
            sqlite3_initialize();
            return true;
        }();
        (void)done;
    }
    static void arm(std::int64_t n) {
        count = 0;
        fired = false;
        fail_at = n;
    }
};

}  // namespace

TEST_CASE("allocation faults: open, add, train and forget with SQLite's n-th allocation failing") {
    SqliteAllocFaults::install();
    FaultVfsScope vfs;  // for its free syncs only
    // Every allocation point under EDGETUNE_STRESS; every 5th (a fifth of the time) otherwise.
    const std::int64_t stride = stress() ? 1 : 5;
    using Step = std::function<void(std::unique_ptr<Personalizer>&, const std::string&)>;
    const std::vector<std::pair<const char*, Step>> steps = {
        {"open",
         [](std::unique_ptr<Personalizer>& p, const std::string& db) {
             p = Personalizer::open(db, popts(Durability::normal, shared_backbone(0)));
         }},
        {"add", [](std::unique_ptr<Personalizer>& p, const std::string&) { p->add(sample(600)); }},
        {"train", [](std::unique_ptr<Personalizer>& p, const std::string&) { p->train(quick); }},
        {"forget", [](std::unique_ptr<Personalizer>& p,
                      const std::string&) { p->forget(std::vector<std::int64_t>{2}, quick); }},
    };
    for (const auto& [name, run] : steps) {
        int runs = 0, failed = 0;
        for (std::int64_t n = 1; n < 5000; n += stride) {
            TempDb db("alloc-fault");
            trained_store(db.path, Durability::normal);
            std::unique_ptr<Personalizer> p =
                Personalizer::open(db.path, popts(Durability::normal, shared_backbone(0)));
            if (std::string(name) == "open") p.reset();
            SqliteAllocFaults::arm(n);
            std::string error;
            try {
                run(p, db.path);
            } catch (const Error& e) {
                error = e.what();
            }
            const bool fired = SqliteAllocFaults::fired;
            SqliteAllocFaults::arm(0);
            ++runs;
            if (!error.empty()) {
                ++failed;
                CHECK_MESSAGE(error.front() == '[', error);
            }
            p.reset();
            auto q = Personalizer::open(db.path, popts(Durability::normal, shared_backbone(0)));
            CHECK(q->store().integrity_check() == "ok");
            CHECK(q->sample_count() >= 19);
            CHECK(q->sample_count() <= 21);
            if (!fired) break;
        }
        std::printf(
            "alloc faults: %-6s failing SQLite's n-th allocation (every %lld): %d runs, "
            "%d threw\n",
            name, static_cast<long long>(stride), runs, failed);
    }
}

TEST_CASE("an upgrade whose retrained head fails the validation guard keeps the previous head") {
    TempDb db("upgrade-guard");
    auto bb = shared_backbone(0);
    std::vector<std::pair<std::string, Matrix>> head;
    {
        auto p = Personalizer::open(db.path, popts(Durability::normal, bb));
        p->add(samples(0, 60));
        REQUIRE(
            p->train({.epochs = 20, .optimizer = AdamOptions{.lr = 0.05f}, .seed = 1}).outcome ==
            TrainReport::Outcome::committed);
        head = p->head_parameters();
    }
    // A backbone whose features say nothing: every weight zero.
    Rng rng(4);
    BackboneNet net({.input = InputSpec::float_vector(8), .hidden = {12}}, rng);
    for (auto& [name, v] : net.named_parameters()) v.value_mut().setZero();
    PersonalizerOptions o = popts(Durability::normal, Backbone::freeze(net));
    o.upgrade_backbone = true;
    const std::string error = thrown<InvalidArgument>([&] { Personalizer::open(db.path, o); });
    CHECK(contains(error, "was rolled back: validation got worse"));
    CHECK(contains(error, "the store keeps its previous backbone"));
    // The previous backbone, head and features are the committed ones, as before.
    auto p = Personalizer::open(db.path, popts(Durability::normal, bb));
    CHECK(!p->last_upgrade());
    const auto now = p->head_parameters();
    REQUIRE(now.size() == head.size());
    for (std::size_t i = 0; i < now.size(); ++i) CHECK(now[i].second == head[i].second);
    CHECK(p->store().ids_missing_features(bb->feature_key(), 100).empty());
    CHECK(p->store().get_meta("personalize.backbone_digest") == bb->digest());
    CHECK(p->store().integrity_check() == "ok");
    // A good upgrade still goes through.
    PersonalizerOptions good = popts(Durability::normal, shared_backbone(1));
    good.upgrade_backbone = true;
    good.upgrade_training = {.epochs = 20, .optimizer = AdamOptions{.lr = 0.05f}, .seed = 1};
    p.reset();
    p = Personalizer::open(db.path, good);
    REQUIRE(p->last_upgrade());
    CHECK(p->store().get_meta("personalize.upgrade_from").value_or("") == "");
    CHECK(p->store().ids_missing_features(bb->feature_key(), 100).size() == 60);  // dropped
}
