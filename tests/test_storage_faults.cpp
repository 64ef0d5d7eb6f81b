// test_storage_faults.cpp — SampleStore under bad input and faults: rejected samples write
// nothing; a foreign or newer file is left untouched; a full disk or a read-only store gives
// StorageError and keeps what was committed; SIGKILL at random moments loses no acknowledged
// sample (the kill test; EDGETUNE_STRESS=1 for more kills); two connections in two threads.
#include "storage.hpp"

#include <doctest/doctest.h>

#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include "test_util.hpp"

#include <atomic>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <mutex>
#include <string>
#include <thread>

using namespace edgetune;
using namespace edgetune_test;

namespace {

StoreOptions image_options(std::int64_t d = 8) {
    return {.input = InputSpec::float_vector(d), .label = LabelSpec::classes(4)};
}

Sample image_sample(float seed, std::int32_t label, std::int64_t d = 8) {
    Sample s;
    s.input.assign(static_cast<std::size_t>(d), seed);
    s.label = label;
    return s;
}

std::vector<std::uint8_t> file_bytes(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

constexpr float nan_f = std::numeric_limits<float>::quiet_NaN();
constexpr float inf_f = std::numeric_limits<float>::infinity();

}  // namespace

TEST_CASE("bad samples are rejected with the field named and nothing written") {
    TempDb db("bad-input");
    SampleStore store = SampleStore::open(db.path, image_options());
    store.add(image_sample(1, 1));

    struct Case {
        const char* name;
        Sample sample;
        const char* message;
    };
    std::vector<Case> cases;
    auto with = [](auto edit) {
        Sample s = image_sample(1, 1);
        edit(s);
        return s;
    };
    cases.push_back({"NaN", with([](Sample& s) { s.input[3] = nan_f; }), "input[3] is NaN"});
    cases.push_back({"Inf", with([](Sample& s) { s.input[7] = -inf_f; }), "input[7] is Inf"});
    cases.push_back({"width", with([](Sample& s) { s.input.pop_back(); }),
                     "input has 7 values; the store declares 8"});
    cases.push_back(
        {"label", with([](Sample& s) { s.label = 4; }), "label 4 out of range for 4 classes"});
    cases.push_back(
        {"unset label", with([](Sample& s) { s.label = -1; }), "label -1 out of range"});
    cases.push_back(
        {"tokens", with([](Sample& s) { s.tokens = {1}; }), "tokens given to a float_vector"});
    cases.push_back(
        {"target", with([](Sample& s) { s.target = {1}; }), "target given to a classes"});
    cases.push_back({"weight NaN", with([](Sample& s) { s.weight = nan_f; }), "weight is NaN"});
    cases.push_back({"weight", with([](Sample& s) { s.weight = -1; }), "weight -1 is negative"});
    cases.push_back(
        {"time", with([](Sample& s) { s.created_at = -5; }), "created_at -5 is negative"});
    for (const Case& c : cases) {
        CAPTURE(c.name);
        const std::string msg = thrown<InvalidArgument>([&] { store.add(c.sample); });
        CHECK(contains(msg, "[sample_store.add] "));
        CHECK(contains(msg, c.message));
        // In a batch: the index is named and the good samples before it are not written.
        std::vector<Sample> batch(3, image_sample(2, 2));
        batch.push_back(c.sample);
        const std::string batch_msg = thrown<InvalidArgument>([&] { store.add_batch(batch); });
        CHECK(contains(batch_msg, std::string("samples[3].") + c.message));
    }
    CHECK(store.count() == 1);
    CHECK(store.get_meta("store.offered") == "1");

    TempDb tokens_db("bad-tokens");
    SampleStore tokens = SampleStore::open(
        tokens_db.path, {.input = InputSpec::token_sequence(3), .label = LabelSpec::classes(2)});
    Sample t;
    t.tokens = {4, -1, 2};
    t.label = 0;
    CHECK(contains(thrown<InvalidArgument>([&] { tokens.add(t); }), "tokens[1] is -1"));
    t.tokens = {4, 2};
    CHECK(contains(thrown<InvalidArgument>([&] { tokens.add(t); }),
                   "tokens has 2 ids; the store declares 3"));
    t.tokens = {};
    t.input = {1, 2, 3};
    CHECK(contains(thrown<InvalidArgument>([&] { tokens.add(t); }),
                   "input given to a token_sequence"));
    CHECK(tokens.count() == 0);

    TempDb reg_db("bad-regression");
    SampleStore reg = SampleStore::open(
        reg_db.path, {.input = InputSpec::float_vector(2), .label = LabelSpec::regression(2)});
    Sample r;
    r.input = {1, 2};
    r.target = {0, inf_f};
    CHECK(contains(thrown<InvalidArgument>([&] { reg.add(r); }), "target[1] is Inf"));
    r.target = {0};
    CHECK(contains(thrown<InvalidArgument>([&] { reg.add(r); }), "target has 1 values"));
    r.target = {0, 0};
    r.label = 1;
    CHECK(contains(thrown<InvalidArgument>([&] { reg.add(r); }), "label 1 given to a regression"));
    CHECK(reg.count() == 0);
}

TEST_CASE("bad options, features and oversized blobs are rejected") {
    TempDb db("oversized");
    StoreOptions o = image_options();
    o.max_blob_bytes = 1024;
    SampleStore store = SampleStore::open(db.path, o);
    const std::vector<std::int64_t> ids = {store.add(image_sample(1, 1)),
                                           store.add(image_sample(2, 2))};

    CHECK(contains(
        thrown<InvalidArgument>([&] { store.put_features("bb", ids, Matrix::Zero(2, 300)); }),
        "value row is 1200 bytes; max_blob_bytes is 1024"));
    Matrix with_nan = Matrix::Zero(2, 3);
    with_nan(1, 2) = nan_f;
    CHECK(contains(thrown<InvalidArgument>([&] { store.put_features("bb", ids, with_nan); }),
                   "values(1, 2) is NaN"));
    CHECK(contains(
        thrown<InvalidArgument>([&] { store.put_features("bb", ids, Matrix::Zero(3, 3)); }),
        "has 3 rows for 2 ids"));
    CHECK(
        contains(thrown<InvalidArgument>([&] { store.put_features("", ids, Matrix::Zero(2, 3)); }),
                 "digest"));
    CHECK(store.ids_missing_features("bb", 10) == ids);

    const std::vector<std::uint8_t> payload(2000, 7);
    CHECK(contains(thrown<InvalidArgument>([&] { store.save_checkpoint({}, payload); }),
                   "payload is 2000 bytes"));
    CHECK(contains(thrown<InvalidArgument>(
                       [&] { store.save_checkpoint({.metrics = std::string(2000, 'm')}, {}); }),
                   "metrics is 2000 bytes"));
    CHECK(contains(thrown<InvalidArgument>([&] { store.set_meta("k", std::string(2000, 'v')); }),
                   "value is 2000 bytes"));
    CHECK(contains(thrown<InvalidArgument>([&] { store.append_run(std::string(2000, 'r')); }),
                   "report is 2000 bytes"));
    CHECK(store.list_checkpoints().empty());
    CHECK(store.list_runs().empty());

    TempDb other("bad-options");
    StoreOptions wide = image_options(300);
    wide.max_blob_bytes = 1024;
    CHECK(contains(thrown<InvalidArgument>([&] { SampleStore::open(other.path, wide); }),
                   "input.size 300 is out of range [1, 256]"));
    CHECK_FALSE(std::filesystem::exists(other.path));  // rejected before the file is created
    CHECK_THROWS_AS(SampleStore::open(other.path, {.input = InputSpec::float_vector(0),
                                                   .label = LabelSpec::classes(2)}),
                    InvalidArgument);
    CHECK_THROWS_AS(SampleStore::open(other.path, {.input = InputSpec::float_vector(2),
                                                   .label = LabelSpec::classes(0)}),
                    InvalidArgument);
    StoreOptions zero_reservoir = image_options();
    zero_reservoir.retention = Retention::reservoir(0, 1);
    CHECK_THROWS_AS(SampleStore::open(other.path, zero_reservoir), InvalidArgument);
}

TEST_CASE("a file that is not a database is left untouched") {
    TempDb db("not-a-db");
    std::vector<std::uint8_t> junk(8192);
    Rng rng(5);
    for (auto& b : junk) b = static_cast<std::uint8_t>(rng.below(256));
    {
        std::ofstream out(db.path, std::ios::binary);
        out.write(reinterpret_cast<const char*>(junk.data()),
                  static_cast<std::streamsize>(junk.size()));
    }
    const std::string msg =
        thrown<StorageError>([&] { SampleStore::open(db.path, image_options()); });
    CHECK(contains(msg, "not a database"));
    CHECK(contains(msg, db.path));
    CHECK(file_bytes(db.path) == junk);

    TempDb text("text-file");
    { std::ofstream(text.path) << "user notes, definitely not SQLite\n"; }
    const std::vector<std::uint8_t> before = file_bytes(text.path);
    CHECK_THROWS_AS(SampleStore::open(text.path, image_options()), StorageError);
    CHECK(file_bytes(text.path) == before);

    CHECK_THROWS_AS(SampleStore::open("/nonexistent-dir/x.db", image_options()), StorageError);
}

TEST_CASE("a store with a newer schema version is refused and left untouched") {
    TempDb db("newer");
    { SampleStore::open(db.path, image_options()).add(image_sample(1, 1)); }
    // The last connection closed, so the WAL is folded into the file: patch user_version
    // (offset 60, 4 bytes big-endian, in the SQLite header) to 99.
    std::vector<std::uint8_t> bytes = file_bytes(db.path);
    REQUIRE(bytes.size() > 100);
    REQUIRE(bytes[63] == 4);  // the current schema version
    bytes[63] = 99;
    {
        std::ofstream out(db.path, std::ios::binary | std::ios::trunc);
        out.write(reinterpret_cast<const char*>(bytes.data()),
                  static_cast<std::streamsize>(bytes.size()));
    }
    const std::string msg =
        thrown<StorageError>([&] { SampleStore::open(db.path, image_options()); });
    CHECK(contains(msg, "schema version 99 is newer"));
    CHECK(file_bytes(db.path) == bytes);
}

TEST_CASE("a full disk gives StorageError and keeps everything committed") {
    TempDb db("full");
    std::vector<std::int64_t> acked;
    std::vector<std::uint8_t> ck_payload(1000, 1);
    {
        StoreOptions o = image_options(784);
        o.max_pages = 120;  // ~480 KiB
        SampleStore store = SampleStore::open(db.path, o);
        const std::int64_t ck = store.save_checkpoint({.step = 1}, ck_payload);
        std::string error;
        for (int i = 0; i < 1000 && error.empty(); ++i) {
            try {
                acked.push_back(store.add(image_sample(static_cast<float>(i), i % 4, 784)));
            } catch (const StorageError& e) {
                error = e.what();
            }
        }
        REQUIRE_FALSE(error.empty());
        CHECK(contains(error, "[sample_store.add]"));
        CHECK(contains(error, "full"));
        CHECK(acked.size() > 20);
        CHECK(store.count() == static_cast<std::int64_t>(acked.size()));

        // A batch fails as a whole; so does a large checkpoint inside a caller's transaction.
        CHECK_THROWS_AS(store.add_batch(std::vector<Sample>(20, image_sample(0, 0, 784))),
                        StorageError);
        CHECK(store.count() == static_cast<std::int64_t>(acked.size()));
        {
            Transaction tx = store.transaction();
            store.set_meta("step", "2");
            CHECK_THROWS_AS(
                store.save_checkpoint({.step = 2}, std::vector<std::uint8_t>(600'000, 2)),
                StorageError);
        }
        CHECK_FALSE(store.get_meta("step"));
        CHECK(store.latest_checkpoint(CheckpointKind::trained)->info.id == ck);
        CHECK(store.get_many(acked, Fields::no_input).size() == acked.size());

        // Deleting frees pages: the same connection can write again.
        const std::vector<std::int64_t> first(acked.begin(), acked.begin() + 10);
        CHECK(store.delete_ids(first) == 10);
        acked.erase(acked.begin(), acked.begin() + 10);
        acked.push_back(store.add(image_sample(-1, 0, 784)));
        CHECK(store.integrity_check() == "ok");
    }
    SampleStore reopened = SampleStore::open(db.path, image_options(784));
    CHECK(reopened.integrity_check() == "ok");
    CHECK(reopened.count() == static_cast<std::int64_t>(acked.size()));
    CHECK(reopened.get_many(acked).back().input[0] == -1.0f);
    CHECK(reopened.latest_checkpoint(CheckpointKind::trained)->payload == ck_payload);
}

TEST_CASE("a read-only store reads and refuses writes with StorageError") {
    TempDb db("read-only");
    std::int64_t id = 0;
    {
        SampleStore store = SampleStore::open(db.path, image_options());
        id = store.add(image_sample(3, 3));
        store.set_meta("k", "v");
    }
    StoreOptions o = image_options();
    o.read_only = true;
    SampleStore ro = SampleStore::open(db.path, o);
    CHECK(ro.get(id)->label == 3);
    CHECK(ro.get_meta("k") == "v");
    CHECK(contains(thrown<StorageError>([&] { ro.add(image_sample(1, 1)); }), "read-only"));
    CHECK_THROWS_AS(ro.set_meta("k", "w"), StorageError);
    CHECK_THROWS_AS(ro.append_run("x"), StorageError);
    CHECK_THROWS_AS(ro.transaction(), StorageError);
    CHECK(ro.count() == 1);
    CHECK(ro.integrity_check() == "ok");

    TempDb missing("read-only-missing");
    CHECK_THROWS_AS(SampleStore::open(missing.path, o), StorageError);

    if (::geteuid() == 0) {
        MESSAGE("running as root: file permissions cannot make the file read-only; skipped chmod");
        return;
    }
    TempDb file("read-only-file");
    { SampleStore::open(file.path, image_options()).add(image_sample(1, 1)); }
    ::chmod(file.path.c_str(), 0400);
    try {
        SampleStore store = SampleStore::open(file.path, image_options());
        CHECK(store.count() == 1);
        CHECK_THROWS_AS(store.add(image_sample(1, 1)), StorageError);
    } catch (const StorageError&) {
        // Refusing to open at all is also a clear StorageError.
    }
    ::chmod(file.path.c_str(), 0600);
}

// --- kill test ---------------------------------------------------------------------------------

namespace {

// The WAL is rewound every 64 frames (~10 commits) and copied in the background every 16: kills
// also land in background checkpoints and in the writer's rewinds.
StoreOptions kill_options() {
    StoreOptions o = image_options(16);
    o.checkpoint_bytes = 1 << 20;
    return o;
}

// Runs in the forked child: opens its own connection, then adds samples, batches and
// checkpoints until killed, writing each acknowledged sample id to `ack_fd`.
[[noreturn]] void kill_child(const std::string& path, int ack_fd, std::uint64_t seed) {
    try {
        SampleStore store = SampleStore::open(path, kill_options());
        Rng rng(seed);
        std::int64_t step = std::stoll(store.get_meta("kill.step").value_or("0"));
        for (int i = 0; i < 100000; ++i) {
            std::vector<std::int64_t> ids;
            const std::uint64_t action = rng.below(10);
            if (action < 6) {
                ids.push_back(store.add(image_sample(static_cast<float>(i), i % 4, 16)));
            } else if (action < 8) {
                ids = store.add_batch(
                    std::vector<Sample>(5, image_sample(static_cast<float>(i), 1, 16)));
            } else {
                ++step;
                Checkpoint ck;
                ck.kind = "head";
                ck.tensors = {{"w", Matrix::Constant(16, 4, static_cast<float>(step))}};
                ck.step = step;
                Transaction tx = store.transaction();
                store.save_checkpoint({.kind = CheckpointKind::trained, .step = step},
                                      encode_checkpoint(ck));
                store.set_meta("kill.step", std::to_string(step));
                store.append_run("step " + std::to_string(step));
                tx.commit();
                if (step % 8 == 0) store.prune_checkpoints(3);
            }
            for (std::int64_t id : ids)
                if (::write(ack_fd, &id, sizeof id) != sizeof id) ::_exit(4);
        }
        ::_exit(0);
    } catch (...) {
        ::_exit(3);
    }
}

}  // namespace

TEST_CASE("kill test: SIGKILL at random moments loses no acknowledged sample") {
    const bool stress = std::getenv("EDGETUNE_STRESS") != nullptr;
    const int kills = stress ? 1000 : 60;
    TempDb db("kill");
    std::vector<std::int64_t> acked;
    Rng rng(77);
    int with_checkpoint = 0;
    for (int k = 0; k < kills; ++k) {
        int fds[2];
        REQUIRE(::pipe(fds) == 0);
        const pid_t pid = ::fork();
        REQUIRE(pid >= 0);
        if (pid == 0) {
            ::close(fds[0]);
            kill_child(db.path, fds[1], static_cast<std::uint64_t>(k));
        }
        ::close(fds[1]);
        std::vector<std::uint8_t> buffer;
        auto read_acks = [&] {
            std::uint8_t chunk[4096];
            const ssize_t n = ::read(fds[0], chunk, sizeof chunk);
            if (n > 0) buffer.insert(buffer.end(), chunk, chunk + n);
            return n > 0;
        };
        // Half the kills land anywhere from fork on (often while opening or recovering);
        // the others once the child has acknowledged a sample (a sanitizer build starts slowly).
        if (k % 2 != 0)
            while (buffer.size() < 8 && read_acks()) {
            }
        ::usleep(static_cast<useconds_t>(rng.below(k % 2 == 0 ? 8000 : 4000)));
        ::kill(pid, SIGKILL);
        int status = 0;
        REQUIRE(::waitpid(pid, &status, 0) == pid);
        CHECK_FALSE((WIFEXITED(status) && WEXITSTATUS(status) != 0));  // the child failed
        // Every id the child wrote before it died counts as acknowledged.
        while (read_acks()) {
        }
        ::close(fds[0]);
        for (std::size_t at = 0; at + 8 <= buffer.size(); at += 8) {
            std::int64_t id;
            std::memcpy(&id, buffer.data() + at, 8);
            acked.push_back(id);
        }

        SampleStore store = SampleStore::open(db.path, kill_options());
        REQUIRE(store.integrity_check() == "ok");
        REQUIRE_NOTHROW(store.get_many(acked, Fields::no_input));
        if (const std::optional<StoredCheckpoint> ck =
                store.latest_checkpoint(CheckpointKind::trained)) {
            const Checkpoint decoded = decode_checkpoint(ck->payload);
            CHECK(decoded.step == ck->info.step);
            CHECK(store.get_meta("kill.step") == std::to_string(decoded.step));  // same transaction
            ++with_checkpoint;
        }
    }
    MESSAGE(kills << " kills, " << acked.size() << " acknowledged samples, " << with_checkpoint
                  << " reopens with a checkpoint");
    CHECK(acked.size() > 100);
    CHECK(with_checkpoint > kills / 2);
}

// --- concurrency -------------------------------------------------------------------------------

TEST_CASE("two writers and a reader on separate connections lose nothing and never see BUSY") {
    TempDb db("threads");
    // Small checkpoints: both writers' background checkpoints and rewinds run all the time.
    StoreOptions options = image_options();
    options.checkpoint_bytes = 64 << 10;
    { SampleStore::open(db.path, options); }
    std::mutex mutex;
    std::vector<std::string> errors;
    std::vector<std::int64_t> ids_a, ids_b;
    std::atomic<bool> writing{true};
    auto guarded = [&](auto body) {
        return [&, body] {
            try {
                body();
            } catch (const std::exception& e) {
                std::lock_guard lock(mutex);
                errors.push_back(e.what());
            }
        };
    };
    std::thread a(guarded([&] {
        SampleStore store = SampleStore::open(db.path, options);
        for (int i = 0; i < 200; ++i)
            ids_a.push_back(store.add(image_sample(static_cast<float>(i), 0)));
    }));
    std::thread b(guarded([&] {
        SampleStore store = SampleStore::open(db.path, options);
        for (int i = 0; i < 20; ++i) {
            Transaction tx = store.transaction();
            const std::vector<std::int64_t> ids =
                store.add_batch(std::vector<Sample>(10, image_sample(static_cast<float>(i), 1)));
            store.set_meta("b.batches", std::to_string(i + 1));
            tx.commit();
            ids_b.insert(ids_b.end(), ids.begin(), ids.end());
        }
    }));
    std::thread reader(guarded([&] {
        SampleStore store = SampleStore::open(db.path, options);
        std::int64_t last = 0;
        std::vector<Sample> page;
        while (writing) {
            const std::int64_t n = store.count();
            if (n < last) throw std::runtime_error("count went backwards");
            last = n;
            std::int64_t seen = 0;
            for (SampleCursor c = store.scan({.batch = 64}); c.next(page);)
                seen += static_cast<std::int64_t>(page.size());
            if (seen < last) throw std::runtime_error("scan saw fewer samples than count");
        }
    }));
    a.join();
    b.join();
    writing = false;
    reader.join();
    for (const std::string& e : errors) FAIL_CHECK(e);
    SampleStore store = SampleStore::open(db.path, options);
    CHECK(store.count() == 400);
    CHECK(store.get_meta("b.batches") == "20");
    std::vector<std::int64_t> all = ids_a;
    all.insert(all.end(), ids_b.begin(), ids_b.end());
    CHECK(store.get_many(all).size() == 400);
    CHECK(store.integrity_check() == "ok");
}
