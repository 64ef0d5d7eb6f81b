// test_storage.cpp — SampleStore behaviour: samples, cursors, sampling, retention, the feature
// cache, checkpoints, meta, runs and transactions. Faults and bad input: test_storage_faults.cpp.
#include "storage.hpp"

#include <doctest/doctest.h>
#include <sqlite3.h>

#include <sys/stat.h>
#include <unistd.h>
#include "test_util.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <numeric>
#include <set>
#include <string>
#include <thread>

using namespace edgetune;
using namespace edgetune_test;

namespace {

StoreOptions image_options(std::int64_t d = 8, std::int64_t classes = 4) {
    return {.input = InputSpec::float_vector(d), .label = LabelSpec::classes(classes)};
}

Sample image_sample(float seed, std::int32_t label, std::int64_t d = 8) {
    Sample s;
    s.input.resize(static_cast<std::size_t>(d));
    for (std::int64_t i = 0; i < d; ++i) s.input[static_cast<std::size_t>(i)] = seed + 0.25f * i;
    s.label = label;
    return s;
}

std::vector<std::int64_t> all_ids(const SampleStore& store) {
    return store.ids_after(0, SIZE_MAX);
}

}  // namespace

TEST_CASE("open creates a private WAL store and reopening checks the declaration") {
    TempDb db("open");
    {
        SampleStore store = SampleStore::open(db.path, image_options());
        CHECK(store.count() == 0);
        CHECK(store.integrity_check() == "ok");
        CHECK(store.input_spec() == InputSpec::float_vector(8));
        store.add(image_sample(1, 0));
        CHECK(std::filesystem::exists(db.path + "-wal"));  // WAL journal
    }
    struct stat st {};
    REQUIRE(::stat(db.path.c_str(), &st) == 0);
    CHECK((st.st_mode & 0777) == 0600);

    SampleStore again = SampleStore::open(db.path, image_options());
    CHECK(again.count() == 1);

    const std::string msg = thrown<InvalidArgument>([&] {
        SampleStore::open(db.path,
                          {.input = InputSpec::token_sequence(8), .label = LabelSpec::classes(4)});
    });
    CHECK(msg.find("float_vector[8] -> classes(4)") != std::string::npos);
    CHECK(msg.find("token_sequence[8] -> classes(4)") != std::string::npos);
    CHECK_THROWS_AS(SampleStore::open(db.path, image_options(8, 5)), InvalidArgument);
}

TEST_CASE("samples round trip for every input and label kind") {
    SUBCASE("float vector, classes") {
        TempDb db("rt-float");
        SampleStore store = SampleStore::open(db.path, image_options());
        Sample s = image_sample(-3.5f, 2);
        s.weight = 0.5f;
        s.created_at = 1'700'000'000'123;
        const std::int64_t id = store.add(s);
        const std::optional<Sample> back = store.get(id);
        REQUIRE(back);
        CHECK(back->id == id);
        CHECK(back->input == s.input);
        CHECK(back->tokens.empty());
        CHECK(back->label == 2);
        CHECK(back->weight == 0.5f);
        CHECK(back->created_at == s.created_at);
        CHECK_FALSE(store.get(id + 100));

        const std::int64_t before = std::chrono::duration_cast<std::chrono::milliseconds>(
                                        std::chrono::system_clock::now().time_since_epoch())
                                        .count();
        const std::optional<Sample> now = store.get(store.add(image_sample(0, 1)));
        CHECK(now->created_at >= before);  // created_at 0 means now

        const std::optional<Sample> light = store.get(id, Fields::no_input);
        CHECK(light->input.empty());
        CHECK(light->label == 2);
    }
    SUBCASE("token sequence, classes") {
        TempDb db("rt-tokens");
        SampleStore store = SampleStore::open(
            db.path, {.input = InputSpec::token_sequence(5), .label = LabelSpec::classes(10000)});
        Sample s;
        s.tokens = {0, 17, 9999, 2'000'000'000, 3};
        s.label = 9999;
        const std::optional<Sample> back = store.get(store.add(s));
        CHECK(back->tokens == s.tokens);
        CHECK(back->input.empty());
        CHECK(back->label == 9999);
    }
    SUBCASE("float vector, regression") {
        TempDb db("rt-regression");
        SampleStore store = SampleStore::open(
            db.path, {.input = InputSpec::float_vector(3), .label = LabelSpec::regression(2)});
        Sample s;
        s.input = {1e-30f, -0.0f, 3e38f};
        s.target = {-1.5f, 42.0f};
        const std::optional<Sample> back = store.get(store.add(s));
        CHECK(back->input == s.input);
        CHECK(back->target == s.target);
        CHECK(back->label == -1);
        CHECK_THROWS_AS(store.count_per_label(), InvalidArgument);
    }
}

TEST_CASE("add_batch, counts, get_many and the keyset cursor") {
    TempDb db("batch");
    SampleStore store = SampleStore::open(db.path, image_options());
    std::vector<Sample> batch;
    for (int i = 0; i < 103; ++i) batch.push_back(image_sample(static_cast<float>(i), i % 3));
    const std::vector<std::int64_t> ids = store.add_batch(batch);
    REQUIRE(ids.size() == 103);
    CHECK(std::is_sorted(ids.begin(), ids.end()));
    CHECK(store.count() == 103);
    CHECK(store.count_per_label() == std::vector<std::int64_t>{35, 34, 34, 0});
    CHECK(store.add_batch({}).empty());

    const std::vector<std::int64_t> some = {ids[7], ids[2], ids[50]};
    const std::vector<Sample> got = store.get_many(some);
    REQUIRE(got.size() == 3);
    CHECK(got[0].input == batch[7].input);
    CHECK(got[1].input == batch[2].input);
    CHECK(got[2].id == ids[50]);
    const std::string msg = thrown<InvalidArgument>([&] {
        store.get_many(std::vector<std::int64_t>{ids[0], 999});
    });
    CHECK(msg.find("999") != std::string::npos);

    // Batches of 10 in id order; samples added meanwhile with larger ids are seen.
    std::vector<Sample> page;
    std::vector<std::int64_t> seen;
    SampleCursor cursor = store.scan({.batch = 10});
    bool added = false;
    while (cursor.next(page)) {
        CHECK(page.size() <= 10);
        for (const Sample& s : page) {
            seen.push_back(s.id);
            CHECK(s.input.size() == 8);
        }
        if (!added) {
            store.add(image_sample(1000, 3));
            added = true;
        }
    }
    CHECK(seen.size() == 104);
    CHECK(std::is_sorted(seen.begin(), seen.end()));
    CHECK(page.empty());

    SampleCursor light =
        store.scan({.batch = 1000, .after_id = ids[99], .fields = Fields::no_input});
    REQUIRE(light.next(page));
    CHECK(page.size() == 4);
    CHECK(page.front().id == ids[100]);
    CHECK(page.front().input.empty());
    CHECK_FALSE(light.next(page));
    CHECK_THROWS_AS(store.scan({.batch = 0}), InvalidArgument);
}

TEST_CASE("id queries: uniform sample, recent, per class, ids after") {
    TempDb db("queries");
    SampleStore store = SampleStore::open(db.path, image_options());
    std::vector<Sample> batch;
    for (int i = 0; i < 60; ++i)
        batch.push_back(image_sample(static_cast<float>(i), i < 50 ? 0 : 1));
    const std::vector<std::int64_t> ids = store.add_batch(batch);

    Rng a(7), b(7);
    const std::vector<std::int64_t> s1 = store.sample_uniform(10, a);
    CHECK(s1 == store.sample_uniform(10, b));  // seeded
    CHECK(s1.size() == 10);
    CHECK(std::is_sorted(s1.begin(), s1.end()));
    CHECK(std::set<std::int64_t>(s1.begin(), s1.end()).size() == 10);
    for (std::int64_t id : s1) CHECK(std::binary_search(ids.begin(), ids.end(), id));
    CHECK(store.sample_uniform(1000, a) == ids);

    // Uniform: over many draws every id is picked about 10/60 of the time.
    std::vector<int> hits(60, 0);
    Rng rng(11);
    const int draws = 3000;
    for (int k = 0; k < draws; ++k)
        for (std::int64_t id : store.sample_uniform(10, rng))
            ++hits[static_cast<std::size_t>(id - ids[0])];
    for (int h : hits) CHECK(std::abs(h - draws / 6) < 110);  // mean 500, sd ~20

    CHECK(store.recent(3) == std::vector<std::int64_t>{ids[57], ids[58], ids[59]});
    CHECK(store.recent(100) == ids);
    CHECK(store.ids_after(ids[55], 2) == std::vector<std::int64_t>{ids[56], ids[57]});
    CHECK(store.ids_after(ids[59], 10).empty());

    const std::vector<std::int64_t> per_class = store.sample_per_class(5, rng);
    CHECK(per_class.size() == 10);
    CHECK(std::count_if(per_class.begin(), per_class.end(),
                        [&](std::int64_t id) { return id >= ids[50]; }) == 5);
    CHECK(store.sample_per_class(20, rng).size() == 30);  // class 1 has only 10
}

TEST_CASE("delete by ids and by age; features go with their sample") {
    TempDb db("delete");
    SampleStore store = SampleStore::open(db.path, image_options());
    std::vector<Sample> batch;
    for (int i = 0; i < 10; ++i) {
        batch.push_back(image_sample(static_cast<float>(i), 0));
        batch.back().created_at = 1000 * (i + 1);
    }
    const std::vector<std::int64_t> ids = store.add_batch(batch);
    store.put_features("bb1", ids, Matrix::Ones(10, 4));

    CHECK(store.delete_ids(std::vector<std::int64_t>{ids[0], ids[1], 12345}) == 2);
    CHECK(store.delete_older_than(5000) == 2);  // created_at 3000 and 4000
    CHECK(store.count() == 6);
    CHECK(all_ids(store) == std::vector<std::int64_t>(ids.begin() + 4, ids.end()));
    CHECK(store.ids_missing_features("bb1", 100).empty());
    CHECK_THROWS_AS(store.get_features("bb1", std::vector<std::int64_t>{ids[0]}), InvalidArgument);
    CHECK(store.integrity_check() == "ok");
    // Ids are never reused after a delete (AUTOINCREMENT): cursors stay valid.
    CHECK(store.add(image_sample(0, 0)) > ids.back());
}

TEST_CASE("retention: keep newest N") {
    TempDb db("newest");
    StoreOptions o = image_options();
    o.retention = Retention::keep_newest(10);
    SampleStore store = SampleStore::open(db.path, o);
    std::vector<std::int64_t> ids;
    for (int i = 0; i < 25; ++i) ids.push_back(store.add(image_sample(static_cast<float>(i), 0)));
    CHECK(all_ids(store) == std::vector<std::int64_t>(ids.end() - 10, ids.end()));

    std::vector<Sample> batch(4, image_sample(0, 1));
    const std::vector<std::int64_t> more = store.add_batch(batch);
    std::vector<std::int64_t> expected(ids.end() - 6, ids.end());
    expected.insert(expected.end(), more.begin(), more.end());
    CHECK(all_ids(store) == expected);
}

TEST_CASE("retention: per-class cap evicts the oldest of the full class") {
    TempDb db("perclass");
    StoreOptions o = image_options();
    o.retention = Retention::per_class_cap(3);
    SampleStore store = SampleStore::open(db.path, o);
    std::vector<std::int64_t> zeros;
    for (int i = 0; i < 10; ++i) zeros.push_back(store.add(image_sample(static_cast<float>(i), 0)));
    std::vector<Sample> ones(2, image_sample(0, 1));
    store.add_batch(ones);
    CHECK(store.count_per_label() == std::vector<std::int64_t>{3, 2, 0, 0});
    Rng rng(1);
    const std::vector<std::int64_t> kept = store.sample_per_class(100, rng);
    CHECK(std::vector<std::int64_t>(kept.begin(), kept.begin() + 3) ==
          std::vector<std::int64_t>(zeros.end() - 3, zeros.end()));

    StoreOptions bad = {.input = InputSpec::float_vector(8), .label = LabelSpec::regression(1)};
    bad.retention = Retention::per_class_cap(3);
    TempDb db2("perclass-bad");
    CHECK_THROWS_AS(SampleStore::open(db2.path, bad), InvalidArgument);
}

TEST_CASE("retention: add_batch reports every sample it evicted, this batch's included") {
    // stored before + kept ids of the batch - evicted == stored after, and evicted were stored.
    auto check_accounting = [](SampleStore& store, const std::vector<Sample>& batch) {
        const std::vector<std::int64_t> before = all_ids(store);
        std::vector<std::int64_t> evicted{-1};  // cleared by add_batch
        const std::vector<std::int64_t> ids = store.add_batch(batch, evicted);
        CHECK(std::is_sorted(evicted.begin(), evicted.end()));
        std::set<std::int64_t> expected(before.begin(), before.end());
        for (std::int64_t id : ids)
            if (id != SampleStore::not_kept) expected.insert(id);
        for (std::int64_t id : evicted) CHECK(expected.erase(id) == 1);
        CHECK(std::vector<std::int64_t>(expected.begin(), expected.end()) == all_ids(store));
        return std::make_pair(ids, evicted);
    };
    StoreOptions o = image_options();
    SUBCASE("keep_newest: older samples, then this batch's own oldest") {
        TempDb db("evict-newest");
        o.retention = Retention::keep_newest(3);
        SampleStore store = SampleStore::open(db.path, o);
        const auto first = check_accounting(store, std::vector<Sample>(2, image_sample(0, 0)));
        CHECK(first.second.empty());
        const auto [ids, evicted] =
            check_accounting(store, std::vector<Sample>(5, image_sample(1, 1)));
        // The 2 older samples and the batch's first 2: only its newest 3 remain.
        CHECK(evicted == std::vector<std::int64_t>{first.first[0], first.first[1], ids[0], ids[1]});
    }
    SUBCASE("per_class_cap: only the full classes") {
        TempDb db("evict-perclass");
        o.retention = Retention::per_class_cap(2);
        SampleStore store = SampleStore::open(db.path, o);
        const auto zeros = check_accounting(store, std::vector<Sample>(2, image_sample(0, 0)));
        std::vector<Sample> mixed = {image_sample(1, 0), image_sample(2, 1), image_sample(3, 1),
                                     image_sample(4, 1)};
        const auto [ids, evicted] = check_accounting(store, mixed);
        CHECK(evicted == std::vector<std::int64_t>{zeros.first[0], ids[1]});
    }
    SUBCASE("reservoir: replaced slots and not-kept offers") {
        TempDb db("evict-reservoir");
        o.retention = Retention::reservoir(5, 3);
        SampleStore store = SampleStore::open(db.path, o);
        std::size_t evictions = 0;
        for (int round = 0; round < 6; ++round) {
            std::vector<Sample> batch;
            for (int i = 0; i < 7; ++i) batch.push_back(image_sample(static_cast<float>(i), 0));
            evictions += check_accounting(store, batch).second.size();
        }
        CHECK(store.count() == 5);
        CHECK(evictions > 0);
    }
}

TEST_CASE("retention: a protected reservoir never evicts what was not trained on") {
    TempDb db("reservoir-protected");
    StoreOptions o = image_options();
    o.retention = Retention::reservoir(5, 3);
    auto add = [](SampleStore& store, int n) {
        std::vector<Sample> batch;
        for (int i = 0; i < n; ++i) batch.push_back(image_sample(static_cast<float>(i), 0));
        std::vector<std::int64_t> evicted;
        const auto ids = store.add_batch(batch, evicted);
        return std::pair{ids, evicted};
    };
    auto stored = [](const SampleStore& store) { return store.ids_after(0, 100); };
    {
        SampleStore store = SampleStore::open(db.path, o);
        store.set_trained_upto(0);  // nothing trained yet: nothing may go
        add(store, 5);
        const auto [ids, evicted] = add(store, 2);
        CHECK(evicted.empty());
        CHECK(stored(store) == std::vector<std::int64_t>{1, 2, 3, 4, 5, 6, 7});
        // 1..3 trained: the 2 over capacity go among them (and their ids are reported).
        store.set_trained_upto(3);
        const auto [more, gone] = add(store, 1);
        CHECK(gone.size() == 3);
        for (const std::int64_t id : gone) CHECK(id <= 3);
        CHECK(store.count() == 5);
        CHECK_THROWS_AS(store.set_trained_upto(-1), InvalidArgument);
    }
    // The watermark survives a reopen: 4..8 are still untrained, so the store grows.
    SampleStore store = SampleStore::open(db.path, o);
    const auto [ids, evicted] = add(store, 2);
    CHECK(evicted.empty());
    CHECK(store.count() == 7);
}

TEST_CASE("retention: reservoir is uniform, seeded and survives reopen") {
    // Kept inputs as a set of the offer index stored in input[0].
    auto kept_offers = [](const SampleStore& store) {
        std::set<int> kept;
        std::vector<Sample> page;
        for (SampleCursor c = store.scan(); c.next(page);)
            for (const Sample& s : page) kept.insert(static_cast<int>(s.input[0]));
        return kept;
    };
    StoreOptions o = image_options();
    o.retention = Retention::reservoir(20, 99);

    TempDb one("reservoir-one");
    std::set<int> straight;
    {
        SampleStore store = SampleStore::open(one.path, o);
        int not_kept = 0;
        for (int i = 0; i < 300; ++i)
            not_kept += store.add(image_sample(static_cast<float>(i), 0)) == SampleStore::not_kept;
        CHECK(store.count() == 20);
        CHECK(not_kept > 180);  // about 226 expected
        CHECK(store.get_meta("store.offered") == "300");
        straight = kept_offers(store);
    }
    // Same seed, closed and reopened half way (and added in batches): the same reservoir.
    TempDb two("reservoir-two");
    for (int half = 0; half < 2; ++half) {
        SampleStore store = SampleStore::open(two.path, o);
        std::vector<Sample> batch;
        for (int i = 150 * half; i < 150 * (half + 1); ++i)
            batch.push_back(image_sample(static_cast<float>(i), 0));
        store.add_batch(batch);
        if (half == 1) CHECK(kept_offers(store) == straight);
    }

    // Uniform over everything offered: each of 1000 offers is kept with probability 1/10, so
    // each tenth of the stream holds about 1/10 of the reservoir, early or late.
    std::vector<int> per_tenth(10, 0);
    const int trials = 30;  // a store per trial: creating one costs a few fsyncs
    for (int t = 0; t < trials; ++t) {
        TempDb db("reservoir-uniform");
        StoreOptions u = image_options(1);
        u.retention = Retention::reservoir(100, static_cast<std::uint64_t>(t));
        SampleStore store = SampleStore::open(db.path, u);
        std::vector<Sample> batch;
        for (int i = 0; i < 1000; ++i) batch.push_back(image_sample(static_cast<float>(i), 0, 1));
        store.add_batch(batch);
        for (int i : kept_offers(store)) ++per_tenth[static_cast<std::size_t>(i / 100)];
    }
    CHECK(std::accumulate(per_tenth.begin(), per_tenth.end(), 0) == trials * 100);
    for (int hits : per_tenth) CHECK(std::abs(hits - 300) < 80);  // sd ~16
    const int first_half = std::accumulate(per_tenth.begin(), per_tenth.begin() + 5, 0);
    CHECK(std::abs(2 * first_half - trials * 100) < 250);  // sd ~52
}

namespace {

// The schema v4 bookkeeping read straight from the file by a connection of its own: the
// evictable samples (id <= store.trained_upto; all of them without it) hold the slots 0 .. K-1
// once each and the others none; store.samples and classes.samples are the true counts.
void check_bookkeeping(const std::string& path) {
    sqlite3* db = nullptr;
    REQUIRE(sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READONLY, nullptr) == SQLITE_OK);
    auto one = [db](const std::string& sql) {
        sqlite3_stmt* st = nullptr;
        REQUIRE(sqlite3_prepare_v2(db, sql.c_str(), -1, &st, nullptr) == SQLITE_OK);
        REQUIRE(sqlite3_step(st) == SQLITE_ROW);
        const std::int64_t v = sqlite3_column_int64(st, 0);
        sqlite3_finalize(st);
        return v;
    };
    const std::string upto =
        "coalesce((SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'store.trained_upto'), "
        "9223372036854775807)";
    CHECK(one("SELECT count(*) FROM samples WHERE (slot IS NOT NULL) <> (id <= " + upto + ")") ==
          0);
    const std::int64_t slotted = one("SELECT count(*) FROM samples WHERE slot IS NOT NULL");
    CHECK(one("SELECT coalesce(max(slot), -1) + 1 FROM samples") == slotted);
    CHECK(one("SELECT coalesce(min(slot), 0) FROM samples") == 0);
    CHECK(one("SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'store.samples'") ==
          one("SELECT count(*) FROM samples"));
    CHECK(one("SELECT count(*) FROM classes c WHERE c.samples <> "
              "(SELECT count(*) FROM samples s WHERE s.label = c.label)") == 0);
    CHECK(one("SELECT count(*) FROM (SELECT backbone_digest, count(*) AS n FROM features GROUP "
              "BY backbone_digest) f LEFT JOIN meta m ON m.key = 'store.features ' || "
              "f.backbone_digest WHERE CAST(m.value AS INTEGER) IS NOT f.n") == 0);
    CHECK(one("SELECT count(*) FROM meta m WHERE m.key LIKE 'store.features %' AND "
              "CAST(m.value AS INTEGER) <> (SELECT count(*) FROM features f WHERE "
              "'store.features ' || f.backbone_digest = m.key)") == 0);
    sqlite3_close(db);
}

}  // namespace

TEST_CASE("retention bookkeeping: slots and counts stay exact under every kind of write") {
    const std::vector<std::pair<const char*, Retention>> kinds = {
        {"unlimited", Retention::unlimited()},
        {"reservoir", Retention::reservoir(25, 7)},
        {"per_class_cap", Retention::per_class_cap(6)},
        {"keep_newest", Retention::keep_newest(20)}};
    for (const auto& [name, retention] : kinds) {
        CAPTURE(name);
        TempDb db(std::string("bookkeeping-") + name);
        StoreOptions o = image_options();
        o.retention = retention;
        SampleStore store = SampleStore::open(db.path, o);
        Rng rng(11);
        std::int64_t clock = 1'000;  // created_at, so delete_older_than has something to cut
        for (int round = 0; round < 60; ++round) {
            CAPTURE(round);
            const std::vector<std::int64_t> ids = all_ids(store);
            const std::int64_t top = ids.empty() ? 0 : ids.back();
            switch (rng.below(8)) {
                case 0:
                case 1: {
                    std::vector<Sample> batch;
                    for (std::uint64_t i = 0, n = 1 + rng.below(9); i < n; ++i) {
                        batch.push_back(image_sample(
                            static_cast<float>(round),
                            static_cast<std::int32_t>(
                                rng.below(static_cast<std::uint64_t>(store.label_spec().size)))));
                        batch.back().created_at = clock++;
                    }
                    std::vector<std::int64_t> evicted;
                    const std::vector<std::int64_t> added = store.add_batch(batch, evicted);
                    std::vector<std::int64_t> kept;  // half the batches get features at once
                    for (const std::int64_t id : added)
                        if (id != SampleStore::not_kept &&
                            !std::binary_search(evicted.begin(), evicted.end(), id))
                            kept.push_back(id);
                    if (rng.below(2) == 0 && !kept.empty())
                        store.put_features("d1", kept,
                                           Matrix::Constant(static_cast<Index>(kept.size()), 2,
                                                            static_cast<float>(round)));
                    break;
                }
                case 7: {  // the missing features, as Personalizer fills them
                    const std::vector<std::int64_t> missing =
                        store.ids_missing_features("d1", 1000);
                    store.put_features("d1", missing,
                                       Matrix::Zero(static_cast<Index>(missing.size()), 2));
                    CHECK(store.ids_missing_features("d1", 1000).empty());
                    if (rng.below(3) == 0) store.drop_features("d1");
                    break;
                }
                case 2:
                    if (!ids.empty())
                        store.delete_ids(std::vector<std::int64_t>{ids[rng.below(ids.size())],
                                                                   ids[rng.below(ids.size())]});
                    break;
                case 3:  // the watermark moves up or down
                    store.set_trained_upto(
                        static_cast<std::int64_t>(rng.below(static_cast<std::uint64_t>(top) + 4)));
                    break;
                case 4:
                    store.delete_older_than(clock - static_cast<std::int64_t>(rng.below(40)) - 20);
                    break;
                case 5:
                    if (store.label_spec().size > 2 && rng.below(3) == 0)
                        store.remove_class(static_cast<std::int32_t>(
                            rng.below(static_cast<std::uint64_t>(store.label_spec().size))));
                    else
                        store.add_class("c" + std::to_string(round));
                    break;
                default:
                    if (!ids.empty())
                        store.erase_ids(std::vector<std::int64_t>{ids[rng.below(ids.size())]});
            }
            check_bookkeeping(db.path);
            CHECK(store.count() == static_cast<std::int64_t>(all_ids(store).size()));
            std::vector<std::int64_t> lacking;  // the truth, one sample at a time
            for (const std::int64_t id : all_ids(store)) {
                try {
                    store.get_features("d1", std::vector<std::int64_t>{id});
                } catch (const InvalidArgument&) {
                    lacking.push_back(id);
                }
            }
            CHECK(store.ids_missing_features("d1", 1000) == lacking);
            std::int64_t per_label = 0;
            for (const std::int64_t n : store.count_per_label()) per_label += n;
            CHECK(per_label == store.count());
        }
    }
}

TEST_CASE("sample_trained: uniform among trained samples that are not held out; hold_out") {
    TempDb db("sample-trained");
    SampleStore store = SampleStore::open(db.path, image_options());
    std::vector<Sample> batch;
    for (int i = 0; i < 40; ++i) batch.push_back(image_sample(static_cast<float>(i), i % 4));
    const std::vector<std::int64_t> ids = store.add_batch(batch);
    Rng rng(3);
    CHECK(store.sample_trained(100, rng) == ids);  // no watermark: every sample
    store.set_trained_upto(ids[29]);
    const std::vector<std::int64_t> marks(ids.begin(), ids.begin() + 10);
    store.hold_out(marks);
    store.hold_out(std::vector<std::int64_t>{9999});  // not stored: ignored
    CHECK(store.held_out() == marks);
    const std::vector<std::int64_t> eligible(ids.begin() + 10, ids.begin() + 30);
    CHECK(store.sample_trained(100, rng) == eligible);
    std::map<std::int64_t, int> hits;
    for (int t = 0; t < 2000; ++t) {
        const std::vector<std::int64_t> draw = store.sample_trained(5, rng);
        REQUIRE(draw.size() == 5);
        CHECK(std::is_sorted(draw.begin(), draw.end()));
        CHECK(std::adjacent_find(draw.begin(), draw.end()) == draw.end());
        for (const std::int64_t id : draw) ++hits[id];
    }
    CHECK(hits.size() == eligible.size());
    for (const auto& [id, n] : hits) {
        CHECK(std::binary_search(eligible.begin(), eligible.end(), id));
        CHECK(std::abs(n - 500) < 100);  // binomial(2000, 1/4): sd ~19
    }
    // Same rng state, same draw.
    Rng a(8), b(8);
    CHECK(store.sample_trained(7, a) == store.sample_trained(7, b));
    // A mark goes with its sample; clear_held_out drops the rest.
    store.erase_ids(std::vector<std::int64_t>{ids[0]});
    CHECK(store.held_out().size() == 9);
    store.clear_held_out();
    CHECK(store.held_out().empty());
    // rows_read counts sample and feature rows read, not ids.
    const std::int64_t before = SampleStore::rows_read();
    store.put_features("d", std::vector<std::int64_t>{ids[1], ids[2], ids[3]}, Matrix::Zero(3, 2));
    store.get_features("d", std::vector<std::int64_t>{ids[1], ids[3]});
    store.get_many(std::vector<std::int64_t>{ids[5]}, Fields::no_input);
    store.ids_after(0, 100);
    CHECK(SampleStore::rows_read() - before ==
          2 + 1 + 1);  // the dense range read passes ids[2] too
}

TEST_CASE("a schema v3 file (written by the v3 code) migrates to v4: counts, slots, watermark") {
    TempDb db("v3");
    std::filesystem::copy_file(fixture_path("store_v3.db"), db.path);
    StoreOptions o = image_options();
    o.retention = Retention::reservoir(10, 5);
    {
        SampleStore st = SampleStore::open(db.path, o);
        CHECK(st.integrity_check() == "ok");
        CHECK(st.count() == 12);
        CHECK(st.count_per_label() == std::vector<std::int64_t>{3, 3, 3, 3, 0});
        CHECK(st.classes().back().name == "extra");
        CHECK(st.get(5)->input[1] == 5.125f);
        CHECK(st.get_features("v3digest", std::vector<std::int64_t>{2})(0, 1) == 2.0f);
        CHECK(st.get_meta("app.note") == "written by schema v3");
        // Samples 9..12 are above the v3 watermark 8: the excess over 10 goes among 1..8.
        std::vector<std::int64_t> evicted;
        const auto ids = st.add_batch(std::vector<Sample>{image_sample(1, 4)}, evicted);
        CHECK(ids[0] == 13);
        CHECK(evicted.size() == 3);
        for (const std::int64_t id : evicted) CHECK(id <= 8);
        CHECK(st.count() == 10);
    }
    check_bookkeeping(db.path);
    // A reopen migrates nothing again.
    SampleStore again = SampleStore::open(db.path, image_options());
    CHECK(again.count() == 10);
    check_bookkeeping(db.path);
}

TEST_CASE("feature cache: put, get in order, missing, width, drop") {
    TempDb db("features");
    SampleStore store = SampleStore::open(db.path, image_options());
    std::vector<Sample> batch(6, image_sample(1, 1));
    const std::vector<std::int64_t> ids = store.add_batch(batch);

    Matrix values(4, 3);
    for (Index r = 0; r < 4; ++r)
        for (Index c = 0; c < 3; ++c) values(r, c) = static_cast<float>(10 * r + c) - 0.5f;
    const std::vector<std::int64_t> put_ids(ids.begin(), ids.begin() + 4);
    store.put_features("digest-a", put_ids, values);

    const std::vector<std::int64_t> want = {ids[3], ids[0], ids[3]};
    const Matrix got = store.get_features("digest-a", want);
    REQUIRE(got.rows() == 3);
    REQUIRE(got.cols() == 3);
    CHECK(got.row(0) == values.row(3));
    CHECK(got.row(1) == values.row(0));
    CHECK(got.row(2) == values.row(3));
    CHECK(store.get_features("digest-a", {}).size() == 0);

    const std::string msg = thrown<InvalidArgument>([&] {
        store.get_features("digest-a", std::vector<std::int64_t>{ids[0], ids[5], ids[4]});
    });
    CHECK(msg.find(std::to_string(ids[5]) + ", " + std::to_string(ids[4])) != std::string::npos);
    CHECK(msg.find("2 of 3") != std::string::npos);
    CHECK_THROWS_AS(store.get_features("digest-b", put_ids), InvalidArgument);

    CHECK(store.ids_missing_features("digest-a", 10) == std::vector<std::int64_t>{ids[4], ids[5]});
    CHECK(store.ids_missing_features("digest-a", 1) == std::vector<std::int64_t>{ids[4]});
    CHECK(store.ids_missing_features("digest-b", 10) == ids);

    // Replacing rows keeps one row per (digest, sample).
    store.put_features("digest-a", std::vector<std::int64_t>{ids[0]}, Matrix::Zero(1, 3));
    CHECK(store.get_features("digest-a", std::vector<std::int64_t>{ids[0]}).isZero());
    // Every row of a digest has the same width.
    CHECK_THROWS_AS(
        store.put_features("digest-a", std::vector<std::int64_t>{ids[5]}, Matrix::Zero(1, 4)),
        InvalidArgument);
    // An unknown sample fails the whole batch.
    const std::string unknown = thrown<InvalidArgument>([&] {
        store.put_features("digest-b", std::vector<std::int64_t>{ids[0], 777}, Matrix::Ones(2, 2));
    });
    CHECK(unknown.find("sample 777 does not exist") != std::string::npos);
    CHECK(store.ids_missing_features("digest-b", 10).size() == 6);

    CHECK(store.drop_features("digest-a") == 4);
    CHECK(store.ids_missing_features("digest-a", 10).size() == 6);
}

TEST_CASE("feature reads: dense requests scan a range, sparse ones seek; same answers") {
    TempDb db("features-paths");
    SampleStore store = SampleStore::open(db.path, image_options());
    const std::vector<std::int64_t> ids =
        store.add_batch(std::vector<Sample>(200, image_sample(0, 0)));
    Matrix values(200, 5);
    for (Index i = 0; i < values.size(); ++i) values.data()[i] = static_cast<float>(i);
    store.put_features("bb", ids, values);
    store.delete_ids(std::vector<std::int64_t>{ids[50]});

    Rng rng(3);
    for (int round = 0; round < 50; ++round) {
        // Alternately a shuffled dense run and a few scattered ids (with repeats).
        std::vector<std::size_t> rows;
        if (round % 2 == 0) {
            const std::size_t n = 1 + rng.below(100);
            for (std::size_t r = 60; r < 60 + n; ++r) rows.push_back(r);
            for (std::size_t i = rows.size(); i > 1; --i)
                std::swap(rows[i - 1], rows[rng.below(i)]);
        } else {
            for (int k = 0; k < 4; ++k) rows.push_back(rng.below(200) == 50 ? 0 : rng.below(200));
            rows.push_back(rows.front());
        }
        std::vector<std::int64_t> want;
        for (std::size_t r : rows) want.push_back(r == 50 ? ids[0] : ids[r]);
        const Matrix got = store.get_features("bb", want);
        REQUIRE(got.rows() == static_cast<Index>(want.size()));
        for (std::size_t i = 0; i < rows.size(); ++i)
            CHECK(got.row(static_cast<Index>(i)) ==
                  values.row(static_cast<Index>(rows[i] == 50 ? 0 : rows[i])));
    }
    // Missing ids are reported in request order on both paths.
    const std::vector<std::int64_t> dense = {ids[52], ids[50], ids[51], ids[49]};
    CHECK(thrown<InvalidArgument>([&] {
              store.get_features("bb", dense);
          }).find(": " + std::to_string(ids[50])) != std::string::npos);
    const std::vector<std::int64_t> sparse = {ids[199], 100000, ids[50], ids[0]};
    CHECK(thrown<InvalidArgument>([&] {
              store.get_features("bb", sparse);
          }).find(": 100000, " + std::to_string(ids[50])) != std::string::npos);
}

TEST_CASE("checkpoints: save, latest, get, list, prune keeps every base") {
    TempDb db("checkpoints");
    SampleStore store = SampleStore::open(db.path, image_options());
    CHECK_FALSE(store.latest_checkpoint(CheckpointKind::trained));

    const std::vector<std::uint8_t> base_bytes = {1, 2, 3};
    const std::int64_t base = store.save_checkpoint(
        {.kind = CheckpointKind::base, .step = 0, .backbone_digest = "bb", .metrics = "{}"},
        base_bytes);
    std::vector<std::int64_t> trained;
    for (int i = 1; i <= 5; ++i) {
        const std::vector<std::uint8_t> payload(static_cast<std::size_t>(i),
                                                static_cast<std::uint8_t>(i));
        trained.push_back(
            store.save_checkpoint({.kind = CheckpointKind::trained,
                                   .step = 100 * i,
                                   .backbone_digest = "bb",
                                   .metrics = "{\"acc\": 0." + std::to_string(i) + "}"},
                                  payload));
    }
    const std::optional<StoredCheckpoint> latest = store.latest_checkpoint(CheckpointKind::trained);
    REQUIRE(latest);
    CHECK(latest->info.id == trained.back());
    CHECK(latest->info.step == 500);
    CHECK(latest->info.metrics == "{\"acc\": 0.5}");
    CHECK(latest->info.payload_bytes == 5);
    CHECK(latest->payload == std::vector<std::uint8_t>(5, 5));
    CHECK(store.latest_checkpoint(CheckpointKind::base)->payload == base_bytes);
    CHECK(store.get_checkpoint(trained[1])->info.step == 200);
    CHECK_FALSE(store.get_checkpoint(9999));

    const std::vector<CheckpointInfo> listed = store.list_checkpoints();
    REQUIRE(listed.size() == 6);
    CHECK(listed[0].id == base);
    CHECK(listed[0].kind == CheckpointKind::base);
    CHECK(listed[3].payload_bytes == 3);

    CHECK(store.prune_checkpoints(2) == 3);
    const std::vector<CheckpointInfo> left = store.list_checkpoints();
    REQUIRE(left.size() == 3);
    CHECK(left[0].id == base);
    CHECK(left[1].id == trained[3]);
    CHECK(left[2].id == trained[4]);
    CHECK(store.prune_checkpoints(0) == 2);
    CHECK(store.list_checkpoints().size() == 1);
}

TEST_CASE("read_meta reads a store's meta without opening it, and refuses what is no store") {
    TempDb db("read_meta");
    {
        SampleStore store = SampleStore::open(db.path, image_options());
        store.set_meta("tool.backbone", "/models/b.etb");
    }
    const auto meta = SampleStore::read_meta(db.path);
    const auto find = [&](const std::string& key) -> std::optional<std::string> {
        for (const auto& [k, v] : meta)
            if (k == key) return v;
        return std::nullopt;
    };
    CHECK(find("tool.backbone") == "/models/b.etb");
    CHECK(find("store.declaration") == "float_vector[8] -> classes(4)");
    CHECK(std::is_sorted(meta.begin(), meta.end()));
    CHECK(thrown<StorageError>([&] {
              SampleStore::read_meta(db.path + ".none");
          }).find("no such file") != std::string::npos);
    // An empty file stays empty (it is no store, and nothing turns it into one).
    TempDb empty("read_meta_empty");
    { std::ofstream touch(empty.path); }
    CHECK(thrown<StorageError>([&] {
              SampleStore::read_meta(empty.path);
          }).find("is not an edgetune store (schema version 0)") != std::string::npos);
    CHECK(std::filesystem::file_size(empty.path) == 0);
    TempDb text("read_meta_text");
    std::ofstream(text.path) << "not a database, just some text long enough to have a header\n";
    CHECK_THROWS_AS(SampleStore::read_meta(text.path), StorageError);
}

TEST_CASE("meta and the runs log") {
    TempDb db("meta");
    SampleStore store = SampleStore::open(db.path, image_options());
    CHECK_FALSE(store.get_meta("head.version"));
    store.set_meta("head.version", "3");
    store.set_meta("head.version", "4");
    CHECK(store.get_meta("head.version") == "4");
    store.set_meta("empty", "");
    CHECK(store.get_meta("empty") == "");
    CHECK_THROWS_AS(store.set_meta("store.offered", "0"), InvalidArgument);
    CHECK_THROWS_AS(store.set_meta("", "x"), InvalidArgument);
    CHECK(store.get_meta("store.declaration") == "float_vector[8] -> classes(4)");

    for (int i = 0; i < 5; ++i) store.append_run("{\"run\": " + std::to_string(i) + "}");
    const std::vector<RunRecord> runs = store.list_runs();
    REQUIRE(runs.size() == 5);
    CHECK(runs[0].report == "{\"run\": 0}");
    CHECK(runs[4].created_at >= runs[0].created_at);
    const std::vector<RunRecord> last = store.list_runs(2);
    REQUIRE(last.size() == 2);
    CHECK(last[0].report == "{\"run\": 3}");
    CHECK(last[1].id == runs[4].id);
}

TEST_CASE("Transaction groups writes; the destructor rolls back") {
    TempDb db("transaction");
    SampleStore store = SampleStore::open(db.path, image_options());
    const std::vector<std::uint8_t> payload = {9, 9};
    {
        Transaction tx = store.transaction();
        store.save_checkpoint({.kind = CheckpointKind::trained, .step = 1}, payload);
        store.set_meta("head.step", "1");
        store.append_run("run 1");
        store.add_batch(std::vector<Sample>(3, image_sample(0, 0)));
        tx.commit();
        CHECK_THROWS_AS(tx.commit(), InvalidArgument);
    }
    {
        Transaction tx = store.transaction();
        store.save_checkpoint({.kind = CheckpointKind::trained, .step = 2}, payload);
        store.set_meta("head.step", "2");
        store.append_run("run 2");
        store.add(image_sample(0, 0));
        // Not committed: all four writes disappear together.
    }
    CHECK(store.latest_checkpoint(CheckpointKind::trained)->info.step == 1);
    CHECK(store.get_meta("head.step") == "1");
    CHECK(store.list_runs().size() == 1);
    CHECK(store.count() == 3);

    {  // An inner failure undoes only its own part; the caller decides about the rest.
        Transaction tx = store.transaction();
        store.set_meta("head.step", "3");
        std::vector<Sample> bad(2, image_sample(0, 0));
        bad[1].label = 99;
        CHECK_THROWS_AS(store.add_batch(bad), InvalidArgument);
        tx.commit();
    }
    CHECK(store.get_meta("head.step") == "3");
    CHECK(store.count() == 3);

    {  // Transactions end in reverse order.
        Transaction outer = store.transaction();
        Transaction inner = store.transaction();
        CHECK_THROWS_AS(outer.commit(), InvalidArgument);
        store.set_meta("nested", "yes");
        inner.commit();
        outer.commit();
    }
    CHECK(store.get_meta("nested") == "yes");

    {  // A moved transaction is committed once, by its new owner.
        Transaction a = store.transaction();
        store.set_meta("moved", "yes");
        Transaction b = std::move(a);
        b.commit();
    }
    CHECK(store.get_meta("moved") == "yes");
}

TEST_CASE("a second connection sees committed writes") {
    TempDb db("two-connections");
    SampleStore writer = SampleStore::open(db.path, image_options());
    SampleStore reader = SampleStore::open(db.path, image_options());
    const std::int64_t id = writer.add(image_sample(5, 1));
    CHECK(reader.get(id)->input == image_sample(5, 1).input);
    {
        Transaction tx = writer.transaction();
        writer.add(image_sample(6, 1));
        CHECK(reader.count() == 1);  // not yet committed
        tx.commit();
    }
    CHECK(reader.count() == 2);
}

TEST_CASE("durability is per connection; a FULL store reads back like a NORMAL one") {
    TempDb db("durability");
    StoreOptions full = image_options();
    full.durability = Durability::full;
    std::int64_t id = 0;
    {
        SampleStore store = SampleStore::open(db.path, full);
        id = store.add(image_sample(7, 2));
    }
    SampleStore normal = SampleStore::open(db.path, image_options());
    CHECK(normal.get(id)->label == 2);
}

// --- WAL checkpoints ---------------------------------------------------------------------------

namespace {

std::uintmax_t file_bytes(const std::string& path) {
    std::error_code ec;
    const std::uintmax_t n = std::filesystem::file_size(path, ec);
    return ec ? 0 : n;
}

// 20 samples of 784 floats: 4 pages of 16 KiB of rows plus the pages of the indexes, meta, ...
std::vector<Sample> wide_batch(int seed) {
    std::vector<Sample> batch;
    for (int i = 0; i < 20; ++i)
        batch.push_back(image_sample(static_cast<float>(seed + i), i % 10, 784));
    return batch;
}

constexpr std::uintmax_t wal_frame_bytes = 16384 + 24;  // a page and its frame header

}  // namespace

TEST_CASE("background checkpoints fill the database file and bound the WAL of a busy writer") {
    TempDb db("checkpoints");
    StoreOptions o = image_options(784, 10);
    o.checkpoint_bytes = 256 << 10;  // 16 frames: a round every 4
    std::uintmax_t max_wal = 0;
    {
        SampleStore store = SampleStore::open(db.path, o);
        for (int i = 0; i < 200; ++i) {  // ~2,400 frames of WAL if nothing were copied
            store.add_batch(wide_batch(i));
            max_wal = std::max(max_wal, file_bytes(db.path + "-wal"));
        }
        // The writer has the WAL rewound at checkpoint_bytes, at 2x if a round is still running;
        // one more batch (~12 frames) may be on top.
        CHECK(max_wal <= (2 * 16 + 32) * wal_frame_bytes);
        // 4,000 rows of 3 KiB (12 MiB) reached the database file while the store was open.
        CHECK(file_bytes(db.path) > (8u << 20));
        CHECK(store.integrity_check() == "ok");
    }
    SampleStore reopened = SampleStore::open(db.path, o);
    CHECK(reopened.count() == 4000);
    CHECK(reopened.get(4000)->input == wide_batch(199).back().input);
}

TEST_CASE("a background round copies the WAL while the writer is idle") {
    TempDb db("checkpoint-idle");
    StoreOptions o = image_options(784, 10);
    o.checkpoint_bytes = 4 << 20;  // 256 frames: a round every 64
    SampleStore store = SampleStore::open(db.path, o);
    for (int i = 0; i < 8; ++i) store.add_batch(wide_batch(i));  // ~100 frames: one round
    // The writer never copies below 256 frames, and nothing calls the store from here on: only
    // its own thread can grow the database file.
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (file_bytes(db.path) < (256u << 10) && std::chrono::steady_clock::now() < deadline)
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
    CHECK(file_bytes(db.path) >= (256u << 10));
    CHECK(file_bytes(db.path + "-wal") > 0);  // a PASSIVE round copies; it never truncates
    CHECK(store.count() == 160);
}

TEST_CASE("checkpoints on the committing thread when background_checkpoints is off") {
    TempDb db("checkpoint-writer");
    StoreOptions o = image_options(784, 10);
    o.checkpoint_bytes = 256 << 10;
    o.background_checkpoints = false;
    SampleStore store = SampleStore::open(db.path, o);
    std::uintmax_t max_wal = 0;
    for (int i = 0; i < 50; ++i) {
        store.add_batch(wide_batch(i));
        max_wal = std::max(max_wal, file_bytes(db.path + "-wal"));
    }
    CHECK(max_wal <= (16 + 32) * wal_frame_bytes);
    CHECK(file_bytes(db.path) > (2u << 20));  // 1,000 rows of 3 KiB, all but the last frames
    CHECK(store.count() == 1000);
    CHECK(store.integrity_check() == "ok");
    o.checkpoint_bytes = 0;
    CHECK(contains(thrown<InvalidArgument>([&] { SampleStore::open(db.path, o); }),
                   "checkpoint_bytes 0 must be >= 1"));
}
