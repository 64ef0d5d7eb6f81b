// sample_store.cpp — SampleStore: opening and migrating the file, samples and retention, the
// feature cache, checkpoints, meta, the runs log and the public Transaction.
//
// Every write that takes more than one statement runs under a TxGuard, so it is all or nothing
// and joins a caller's open Transaction as a savepoint. Inputs are validated completely before
// the first statement runs. Blobs are little-endian 4-byte values (float32 / int32).
#include "detail/db.hpp"
#include "detail/sql.hpp"
#include "storage.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <charconv>
#include <climits>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <iterator>
#include <map>
#include <numeric>
#include <set>
#include <system_error>

namespace edgetune {

using detail::Db;
using detail::ReadGuard;
using detail::Stmt;
using detail::TxGuard;

struct SampleStore::Impl {
    Impl(const std::string& p, const StoreOptions& o)
        : db(p, o.read_only, o.busy_timeout), options(o), path(p) {}
    Db db;
    StoreOptions options;
    std::string path;
};

namespace {

// --- schema versions ---------------------------------------------------------------------------

void migrate_to_v1(Db& db) {
    db.exec(sql::schema_v1, "sample_store.migrate_to_v1");
}

void migrate_to_v2(Db& db) {
    db.exec(sql::schema_v2, "sample_store.migrate_to_v2");
}

// The classes table; migrate() fills it with the declared classes.
void migrate_to_v3(Db& db) {
    db.exec(sql::schema_v3, "sample_store.migrate_to_v3");
}

// Slots, sample and class counts (detail/sql.hpp); migrate() fills them in.
void migrate_to_v4(Db& db) {
    db.exec(sql::schema_v4, "sample_store.migrate_to_v4");
}

// migrations[v] brings a store from user_version v to v + 1.
using Migration = void (*)(Db&);
constexpr Migration migrations[] = {&migrate_to_v1, &migrate_to_v2, &migrate_to_v3, &migrate_to_v4};
constexpr int schema_version = static_cast<int>(std::size(migrations));

// Keys of `meta` that belong to the store itself.
constexpr std::string_view reserved_prefix = "store.";
constexpr char key_declaration[] = "store.declaration";  // describe(input, label)
constexpr char key_offered[] = "store.offered";          // samples ever offered to add()
// Samples with a higher id have not been trained on (set_trained_upto); absent: none protected.
constexpr char key_trained_upto[] = "store.trained_upto";
// The number of stored samples, kept by the schema's triggers (v4).
constexpr char key_samples[] = "store.samples";

constexpr std::size_t max_digest_bytes = 256;

// SampleStore::rows_read: sample and feature rows read by every store (a test hook).
std::atomic<std::int64_t> rows_read_total{0};
void count_rows(std::size_t n) {
    rows_read_total.fetch_add(static_cast<std::int64_t>(n), std::memory_order_relaxed);
}

// --- little-endian blobs -----------------------------------------------------------------------

// The bytes of `values` in little-endian order: the values themselves on a little-endian host,
// else a byte-swapped copy in `scratch`.
template <class T>
std::span<const std::uint8_t> le_bytes(std::span<const T> values,
                                       std::vector<std::uint8_t>& scratch) {
    static_assert(sizeof(T) == 4);
    const auto* p = reinterpret_cast<const std::uint8_t*>(values.data());
    if constexpr (std::endian::native == std::endian::little) {
        return {p, values.size_bytes()};
    } else {
        scratch.assign(p, p + values.size_bytes());
        for (std::size_t i = 0; i < scratch.size(); i += 4)
            std::reverse(scratch.begin() + i, scratch.begin() + i + 4);
        return scratch;
    }
}

// Copies a little-endian blob of 4-byte values into out[0 .. blob.size() / 4).
template <class T>
void from_le(std::span<const std::uint8_t> blob, T* out) {
    static_assert(sizeof(T) == 4);
    if (!blob.empty()) std::memcpy(out, blob.data(), blob.size());
    if constexpr (std::endian::native != std::endian::little) {
        auto* bytes = reinterpret_cast<std::uint8_t*>(out);
        for (std::size_t i = 0; i < blob.size(); i += 4) std::reverse(bytes + i, bytes + i + 4);
    }
}

// --- small helpers -----------------------------------------------------------------------------

std::int64_t now_ms() {
    using namespace std::chrono;
    return duration_cast<milliseconds>(system_clock::now().time_since_epoch()).count();
}

std::int64_t sql_limit(std::size_t n) {
    return n > static_cast<std::size_t>(INT64_MAX) ? INT64_MAX : static_cast<std::int64_t>(n);
}

const char* nan_or_inf(float v) {
    return std::isnan(v) ? "NaN" : "Inf";
}

// "5, 9, 11 and 20 more" for error messages.
std::string id_list(const std::vector<std::int64_t>& ids) {
    constexpr std::size_t shown = 8;
    std::string s;
    for (std::size_t i = 0; i < ids.size() && i < shown; ++i)
        s += (i ? ", " : "") + std::to_string(ids[i]);
    if (ids.size() > shown) s += fmt::format(" and {} more", ids.size() - shown);
    return s;
}

std::string describe(const InputSpec& in, const LabelSpec& label) {
    return fmt::format("{}[{}] -> {}({})",
                       in.kind == InputSpec::Kind::float_vector ? "float_vector" : "token_sequence",
                       in.size, label.kind == LabelSpec::Kind::classes ? "classes" : "regression",
                       label.size);
}

std::string_view kind_name(CheckpointKind kind) {
    return kind == CheckpointKind::base ? "base" : "trained";
}

std::int64_t scalar(Db& db, const char* sql, std::string_view op) {
    Stmt st(db, sql, op);
    return st.step() ? st.int64(0) : 0;
}

std::vector<std::int64_t> collect_ids(Stmt& st) {
    std::vector<std::int64_t> ids;
    while (st.step()) ids.push_back(st.int64(0));
    return ids;
}

// n of `ids` drawn uniformly without replacement (partial Fisher-Yates), in ascending order.
std::vector<std::int64_t> choose(std::vector<std::int64_t> ids, std::size_t n, Rng& rng) {
    if (n >= ids.size()) return ids;
    for (std::size_t i = 0; i < n; ++i) std::swap(ids[i], ids[i + rng.below(ids.size() - i)]);
    ids.resize(n);
    std::sort(ids.begin(), ids.end());
    return ids;
}

void check_size(std::size_t bytes, const StoreOptions& o, std::string_view op,
                std::string_view field) {
    if (bytes > static_cast<std::size_t>(o.max_blob_bytes))
        throw InvalidArgument(fmt::format("[{}] {} is {} bytes; max_blob_bytes is {}", op, field,
                                          bytes, o.max_blob_bytes));
}

void check_digest(std::string_view digest, std::string_view op) {
    if (digest.empty() || digest.size() > max_digest_bytes)
        throw InvalidArgument(fmt::format("[{}] digest must be 1 to {} bytes; got {}", op,
                                          max_digest_bytes, digest.size()));
}

// --- options and samples: rejected at the door -------------------------------------------------

void validate_options(const StoreOptions& o, std::string_view op) {
    constexpr std::int64_t sqlite_max_blob = 1'000'000'000;  // SQLITE_MAX_LENGTH default
    if (o.max_blob_bytes < 1 || o.max_blob_bytes > sqlite_max_blob)
        throw InvalidArgument(fmt::format("[{}] max_blob_bytes {} is out of range [1, {}]", op,
                                          o.max_blob_bytes, sqlite_max_blob));
    const std::int64_t max_values = o.max_blob_bytes / 4;
    if (o.input.size < 1 || o.input.size > max_values)
        throw InvalidArgument(
            fmt::format("[{}] input.size {} is out of range [1, {}] "
                        "(max_blob_bytes {})",
                        op, o.input.size, max_values, o.max_blob_bytes));
    const std::int64_t max_label =
        o.label.kind == LabelSpec::Kind::classes ? INT32_MAX : max_values;
    if (o.label.size < 1 || o.label.size > max_label)
        throw InvalidArgument(
            fmt::format("[{}] label.size {} is out of range [1, {}]", op, o.label.size, max_label));
    const Retention& r = o.retention;
    if (r.kind != Retention::Kind::unlimited && r.capacity < 1)
        throw InvalidArgument(
            fmt::format("[{}] retention.capacity {} must be >= 1", op, r.capacity));
    if (r.kind == Retention::Kind::per_class_cap && o.label.kind != LabelSpec::Kind::classes)
        throw InvalidArgument(
            fmt::format("[{}] retention per_class_cap needs a classes store", op));
    if (o.busy_timeout.count() < 0 || o.busy_timeout.count() > INT32_MAX)
        throw InvalidArgument(
            fmt::format("[{}] busy_timeout {} ms is out of range", op, o.busy_timeout.count()));
    if (o.cache_bytes < 0)
        throw InvalidArgument(fmt::format("[{}] cache_bytes {} is negative", op, o.cache_bytes));
    if (o.max_pages < 0)
        throw InvalidArgument(fmt::format("[{}] max_pages {} is negative", op, o.max_pages));
    if (o.reserve_bytes < 0)
        throw InvalidArgument(
            fmt::format("[{}] reserve_bytes {} is negative", op, o.reserve_bytes));
    if (o.checkpoint_bytes < 1)
        throw InvalidArgument(
            fmt::format("[{}] checkpoint_bytes {} must be >= 1", op, o.checkpoint_bytes));
}

// True if no value is NaN or Inf. No early exit, so the loop vectorizes: this runs on every
// value of every sample added, and the offending index is only searched for when it fails.
bool all_finite(std::span<const float> values) {
    std::uint32_t non_finite = 0;
    for (float v : values)
        non_finite |= (std::bit_cast<std::uint32_t>(v) & 0x7f800000u) == 0x7f800000u;
    return non_finite == 0;
}

// Throws InvalidArgument "[op] <field>..." for the first problem. In a batch, `index` >= 0
// prefixes the field name ("samples[3].input[7] is NaN").
void validate_sample(const Sample& s, const StoreOptions& o, std::string_view op,
                     std::ptrdiff_t index) {
    auto fail = [&](const std::string& what) {
        throw InvalidArgument(index < 0 ? fmt::format("[{}] {}", op, what)
                                        : fmt::format("[{}] samples[{}].{}", op, index, what));
    };
    const auto declared = static_cast<std::size_t>(o.input.size);
    if (o.input.kind == InputSpec::Kind::float_vector) {
        if (!s.tokens.empty()) fail("tokens given to a float_vector store (use input)");
        if (s.input.size() != declared)
            fail(fmt::format("input has {} values; the store declares {}", s.input.size(),
                             declared));
        if (!all_finite(s.input))
            for (std::size_t i = 0; i < s.input.size(); ++i)
                if (!std::isfinite(s.input[i]))
                    fail(fmt::format("input[{}] is {}", i, nan_or_inf(s.input[i])));
    } else {
        if (!s.input.empty()) fail("input given to a token_sequence store (use tokens)");
        if (s.tokens.size() != declared)
            fail(
                fmt::format("tokens has {} ids; the store declares {}", s.tokens.size(), declared));
        if (!s.tokens.empty() && std::ranges::min(s.tokens) < 0)
            for (std::size_t i = 0; i < s.tokens.size(); ++i)
                if (s.tokens[i] < 0)
                    fail(fmt::format("tokens[{}] is {} (must be >= 0)", i, s.tokens[i]));
    }
    if (o.label.kind == LabelSpec::Kind::classes) {
        if (s.label < 0 || s.label >= o.label.size)
            fail(fmt::format("label {} out of range for {} classes", s.label, o.label.size));
        if (!s.target.empty()) fail("target given to a classes store (use label)");
    } else {
        if (s.label != -1)
            fail(fmt::format("label {} given to a regression store (use target)", s.label));
        if (s.target.size() != static_cast<std::size_t>(o.label.size))
            fail(fmt::format("target has {} values; the store declares {}", s.target.size(),
                             o.label.size));
        if (!all_finite(s.target))
            for (std::size_t i = 0; i < s.target.size(); ++i)
                if (!std::isfinite(s.target[i]))
                    fail(fmt::format("target[{}] is {}", i, nan_or_inf(s.target[i])));
    }
    if (!std::isfinite(s.weight)) fail(fmt::format("weight is {}", nan_or_inf(s.weight)));
    if (s.weight < 0) fail(fmt::format("weight {} is negative", s.weight));
    if (s.created_at < 0) fail(fmt::format("created_at {} is negative", s.created_at));
}

// --- rows <-> structs ---------------------------------------------------------------------------

// Reads the current row of a sample query (column order in detail/sql.hpp), validating blob sizes.
Sample read_sample(const Stmt& st, Fields fields, const StoreOptions& o) {
    Sample s;
    s.id = st.int64(0);
    s.created_at = st.int64(1);
    auto corrupt = [&](const std::string& what) {
        return CorruptData(fmt::format("[{}] sample {}: {}", st.what(), s.id, what));
    };
    if (o.label.kind == LabelSpec::Kind::classes) {
        const std::int64_t label = st.int64(2);
        if (st.is_null(2) || label < 0 || label >= o.label.size)
            throw corrupt(fmt::format("stored label {} is out of range", label));
        s.label = static_cast<std::int32_t>(label);
    } else {
        const auto blob = st.blob(3);
        if (blob.size() != static_cast<std::size_t>(o.label.size) * 4)
            throw corrupt(
                fmt::format("target blob is {} bytes; expected {}", blob.size(), o.label.size * 4));
        s.target.resize(blob.size() / 4);
        from_le(blob, s.target.data());
    }
    s.weight = static_cast<float>(st.real(4));
    if (fields == Fields::all) {
        const auto blob = st.blob(5);
        if (blob.size() != static_cast<std::size_t>(o.input.size) * 4)
            throw corrupt(
                fmt::format("input blob is {} bytes; expected {}", blob.size(), o.input.size * 4));
        if (o.input.kind == InputSpec::Kind::float_vector) {
            s.input.resize(blob.size() / 4);
            from_le(blob, s.input.data());
        } else {
            s.tokens.resize(blob.size() / 4);
            from_le(blob, s.tokens.data());
        }
    }
    return s;
}

CheckpointInfo read_checkpoint_info(const Stmt& st) {
    CheckpointInfo info;
    info.id = st.int64(0);
    info.created_at = st.int64(1);
    const std::string kind = st.text(2);
    if (kind != "base" && kind != "trained")
        throw CorruptData(
            fmt::format("[{}] checkpoint {} has kind '{}'", st.what(), info.id, kind));
    info.kind = kind == "base" ? CheckpointKind::base : CheckpointKind::trained;
    info.step = st.int64(3);
    info.backbone_digest = st.text(4);
    info.metrics = st.text(5);
    info.payload_bytes = st.int64(6);
    return info;
}

std::optional<StoredCheckpoint> read_checkpoint(Stmt& st) {
    if (!st.step()) return std::nullopt;
    StoredCheckpoint ck{read_checkpoint_info(st), {}};
    const auto blob = st.blob(7);
    ck.payload.assign(blob.begin(), blob.end());
    return ck;
}

// --- meta ----------------------------------------------------------------------------------

std::optional<std::string> meta_value(Db& db, std::string_view key, std::string_view op) {
    Stmt st(db, sql::select_meta, op);
    st.bind(1, key);
    if (!st.step()) return std::nullopt;
    return st.text(0);
}

void put_meta(Db& db, std::string_view key, std::string_view value, std::string_view op) {
    Stmt(db, sql::upsert_meta, op).bind(1, key).bind(2, value).run();
}

// A non-negative count kept in meta; nullopt when absent.
std::optional<std::int64_t> read_count(Db& db, const char* key, std::string_view op) {
    const std::optional<std::string> text = meta_value(db, key, op);
    if (!text) return std::nullopt;
    std::int64_t n = 0;
    const auto [end, ec] = std::from_chars(text->data(), text->data() + text->size(), n);
    if (ec != std::errc() || end != text->data() + text->size() || n < 0)
        throw CorruptData(fmt::format("[{}] meta '{}' is '{}', not a count", op, key, *text));
    return n;
}

std::int64_t read_offered(Db& db, std::string_view op) {
    return read_count(db, key_offered, op).value_or(0);
}

std::int64_t read_samples(Db& db, std::string_view op) {
    return read_count(db, key_samples, op).value_or(0);
}

// --- slots (schema v4): the samples a reservoir may evict hold the dense slots 0 .. K-1 ---------

std::int64_t slot_count(Db& db, std::string_view op) {
    return scalar(db, sql::slot_count, op);
}

// Gives the samples with lo < id <= hi that hold no slot the next slots, in id order.
void slot_ids(Db& db, std::int64_t lo, std::int64_t hi, std::string_view op) {
    if (hi <= lo) return;
    Stmt(db, sql::slot_range, op).bind(1, lo).bind(2, hi).bind(3, slot_count(db, op)).run();
}

// Takes the slots of the samples with id > lo (the triggers refill the holes from the top).
void unslot_ids_above(Db& db, std::int64_t lo, std::string_view op) {
    std::vector<std::int64_t> ids;
    {
        Stmt st(db, sql::slotted_ids_above, op);
        st.bind(1, lo);
        ids = collect_ids(st);
    }
    Stmt st(db, sql::unslot_sample, op);
    for (std::int64_t id : ids) {
        st.bind(1, id).run();
        st.reset();
    }
}

// --- opening ---------------------------------------------------------------------------------

// Creates the file with mode 0600 if it does not exist, so SQLite (and its -wal and -shm files,
// which copy the database's mode) never creates it world-readable.
void create_private_file(const std::string& path, std::string_view op) {
    const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd >= 0) {
        ::close(fd);
    } else if (errno != EEXIST) {
        throw StorageError(fmt::format("[{}] cannot create the file: {}", op,
                                       std::error_code(errno, std::generic_category()).message()));
    }
}

// --- the reserve file (StoreOptions::reserve_bytes) ----------------------------------------

std::string reserve_path(const std::string& db_path) {
    return db_path + "-reserve";
}

// Makes `<db>-reserve` hold `bytes` bytes of zeros (written, so that the blocks are really
// allocated, and synced). Best effort: on a full disk there is simply no reserve yet.
void ensure_reserve(const std::string& db_path, std::int64_t bytes) {
    if (bytes <= 0) return;
    const std::string path = reserve_path(db_path);
    struct stat st {};
    if (::stat(path.c_str(), &st) == 0 && st.st_size >= bytes) return;
    const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) return;
    const std::vector<char> zeros(64 << 10, 0);
    bool ok = true;
    for (std::int64_t done = 0; ok && done < bytes;) {
        const auto n = ::write(fd, zeros.data(),
                               static_cast<std::size_t>(std::min<std::int64_t>(
                                   bytes - done, static_cast<std::int64_t>(zeros.size()))));
        if (n < 0 && errno == EINTR) continue;
        ok = n > 0;
        done += n;
    }
    ok = ok && ::fsync(fd) == 0;
    ::close(fd);
    if (!ok) ::unlink(path.c_str());  // a partial reserve would only pretend
}

// Gives the reserve up; true if there was one.
bool remove_reserve_file(const std::string& db_path) {
    return ::unlink(reserve_path(db_path).c_str()) == 0;
}

int read_user_version(Db& db, std::string_view op) {
    return static_cast<int>(scalar(db, sql::get_user_version, op));
}

void migrate(Db& db, const StoreOptions& o, std::string_view op) {
    TxGuard tx(db, op);
    // Re-read under the write lock: another connection may have migrated meanwhile.
    const int from = read_user_version(db, op);
    if (from >= schema_version) return;  // nothing to do; the guard ends the transaction
    // NOTE: user_version is any int32 a file holds; migrations[from] must not index with it.
    if (from < 0) throw StorageError(fmt::format("[{}] schema version {} is not valid", op, from));
    // A file declared otherwise is left as it is; open() then names both declarations.
    if (from > 0 && meta_value(db, key_declaration, op) != describe(o.input, o.label)) return;
    for (int v = from; v < schema_version; ++v) migrations[v](db);
    if (from == 0) {
        put_meta(db, key_declaration, describe(o.input, o.label), op);
        put_meta(db, key_offered, "0", op);
    }
    // v3: the declared classes become named data, "0" .. "C-1".
    if (from < 3 && o.label.kind == LabelSpec::Kind::classes) {
        Stmt st(db, sql::insert_class, op);
        const std::int64_t now = now_ms();
        for (std::int64_t c = 0; c < o.label.size; ++c) {
            st.bind(1, c).bind(2, std::to_string(c)).bind(3, now).run();
            st.reset();
        }
    }
    // v4: counts and slots of what is stored (the one pass over the samples; later kept by the
    // triggers). Slots go to the evictable samples: up to the watermark, or all of them.
    if (from < 4) {
        Stmt(db, sql::fill_sample_count, op).run();
        Stmt(db, sql::fill_class_counts, op).run();
        Stmt(db, sql::fill_feature_counts, op).run();
        slot_ids(db, 0, read_count(db, key_trained_upto, op).value_or(INT64_MAX), op);
    }
    db.exec(sql::set_user_version_prefix + std::to_string(schema_version), op);
    tx.commit();
}

// --- adding ----------------------------------------------------------------------------------

// `slot`: the reservoir slot the sample takes (schema v4), or -1 for none.
std::int64_t insert_sample(Db& db, const Sample& s, const StoreOptions& o, std::int64_t now,
                           std::int64_t slot, std::string_view op) {
    std::vector<std::uint8_t> input_scratch, target_scratch;  // big-endian hosts only
    Stmt st(db, sql::insert_sample, op);
    st.bind(1, s.created_at != 0 ? s.created_at : now);
    if (o.label.kind == LabelSpec::Kind::classes) {
        st.bind(2, static_cast<std::int64_t>(s.label)).bind_null(3);
    } else {
        st.bind_null(2).bind_blob(3, le_bytes(std::span(s.target), target_scratch));
    }
    st.bind(4, static_cast<double>(s.weight));
    st.bind_blob(5, o.input.kind == InputSpec::Kind::float_vector
                        ? le_bytes(std::span(s.input), input_scratch)
                        : le_bytes(std::span(s.tokens), input_scratch));
    if (slot >= 0)
        st.bind(6, slot);
    else
        st.bind_null(6);
    st.run();
    return db.last_insert_id();
}

// Deletes the sample holding reservoir slot `slot` (schema v4: one index seek); appends its
// id to `evicted`. The triggers move the highest slot into the hole.
void delete_sample_at(Db& db, std::uint64_t slot, std::string_view op,
                      std::vector<std::int64_t>& evicted) {
    Stmt st(db, sql::delete_slot, op);
    st.bind(1, static_cast<std::int64_t>(slot));
    const std::vector<std::int64_t> gone = collect_ids(st);  // DELETE ... RETURNING id
    evicted.insert(evicted.end(), gone.begin(), gone.end());
}

// Deletes the `n` oldest samples (of class `label` when >= 0); appends their ids to `evicted`.
void delete_oldest(Db& db, std::int64_t n, std::int64_t label, std::string_view op,
                   std::vector<std::int64_t>& evicted) {
    if (n <= 0) return;
    Stmt st(db, label >= 0 ? sql::delete_oldest_of_class : sql::delete_oldest, op);
    if (label >= 0)
        st.bind(1, label).bind(2, n);
    else
        st.bind(1, n);
    const std::vector<std::int64_t> gone = collect_ids(st);  // DELETE ... RETURNING id
    evicted.insert(evicted.end(), gone.begin(), gone.end());
}

// Inserts validated samples and enforces the retention policy, in one transaction. Appends
// the ids the policy deleted (older samples, or samples of this batch) to `evicted`, ascending.
std::vector<std::int64_t> insert_samples(Db& db, const StoreOptions& o,
                                         std::span<const Sample> samples, std::string_view op,
                                         std::vector<std::int64_t>& evicted) {
    const Retention& r = o.retention;
    std::vector<std::int64_t> ids;
    if (samples.empty()) return ids;
    ids.reserve(samples.size());
    const std::int64_t now = now_ms();

    TxGuard tx(db, op);
    std::int64_t offered = read_offered(db, op);
    // Plain Algorithm R: every sample holds a slot, so the count is the slot count.
    std::int64_t count = r.kind == Retention::Kind::reservoir ? read_samples(db, op) : 0;
    // Without a watermark every sample takes a slot: the next one is the slot count.
    const std::optional<std::int64_t> watermark = read_count(db, key_trained_upto, op);
    std::int64_t next_slot = watermark ? -1 : slot_count(db, op);
    const std::optional<std::int64_t> trained_upto =
        r.kind == Retention::Kind::reservoir ? watermark : std::nullopt;
    std::map<std::int32_t, std::int64_t> per_label;  // what this batch adds to classes.samples
    for (const Sample& s : samples) {
        ++offered;
        if (r.kind == Retention::Kind::reservoir && !trained_upto) {
            // Algorithm R: the t-th offered sample replaces a uniform slot with probability
            // capacity / t. The draw depends only on (seed, t), so it survives a reopen.
            Rng rng(r.seed ^ (static_cast<std::uint64_t>(offered) * 0x9e3779b97f4a7c15ULL));
            for (; count > r.capacity; --count, --next_slot)  // the capacity was lowered
                delete_sample_at(db, rng.below(static_cast<std::uint64_t>(count)), op, evicted);
            if (count == r.capacity) {
                const std::uint64_t slot = rng.below(static_cast<std::uint64_t>(offered));
                if (slot >= static_cast<std::uint64_t>(r.capacity)) {
                    ids.push_back(SampleStore::not_kept);
                    continue;
                }
                delete_sample_at(db, slot, op, evicted);
                --count;
                --next_slot;
            }
            ++count;
        }
        const std::int64_t id = insert_sample(db, s, o, now, next_slot, op);
        if (next_slot >= 0) ++next_slot;
        // A watermark set above the newest id covers the samples that come next.
        if (watermark && id <= *watermark)
            Stmt(db, sql::set_slot, op).bind(1, slot_count(db, op)).bind(2, id).run();
        ids.push_back(id);
        ++per_label[s.label];
    }
    {
        Stmt(db, sql::add_sample_count, op)
            .bind(1, static_cast<std::int64_t>(samples.size()) -
                         std::count(ids.begin(), ids.end(), SampleStore::not_kept))
            .run();
        Stmt st(db, sql::add_class_count, op);
        for (const auto& [label, n] : per_label) {
            st.bind(1, static_cast<std::int64_t>(label)).bind(2, n).run();
            st.reset();
        }
    }
    if (trained_upto) {
        // Protected reservoir: every new sample is kept; the excess over the capacity goes
        // uniformly among the trained samples, which are the ones holding slots.
        count = read_samples(db, op);
        std::int64_t evictable = slot_count(db, op);
        Rng rng(r.seed ^ (static_cast<std::uint64_t>(offered) * 0x9e3779b97f4a7c15ULL));
        for (; count > r.capacity && evictable > 0; --count, --evictable)
            delete_sample_at(db, rng.below(static_cast<std::uint64_t>(evictable)), op, evicted);
    }
    // The counts come from the triggers (v4), so a trim costs what it deletes.
    if (r.kind == Retention::Kind::keep_newest)
        delete_oldest(db, read_samples(db, op) - r.capacity, -1, op, evicted);
    if (r.kind == Retention::Kind::per_class_cap) {
        std::set<std::int32_t> labels;
        for (const Sample& s : samples) labels.insert(s.label);
        for (std::int32_t label : labels) {
            Stmt n(db, sql::class_count, op);
            n.bind(1, static_cast<std::int64_t>(label));
            const std::int64_t stored = n.step() ? n.int64(0) : 0;
            delete_oldest(db, stored - r.capacity, label, op, evicted);
        }
    }
    put_meta(db, key_offered, std::to_string(offered), op);
    tx.commit();
    std::sort(evicted.begin(), evicted.end());
    return ids;
}

}  // namespace

// ================================================================================================
// SampleStore
// ================================================================================================

SampleStore::SampleStore(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
SampleStore::SampleStore(SampleStore&&) noexcept = default;
SampleStore& SampleStore::operator=(SampleStore&&) noexcept = default;
SampleStore::~SampleStore() = default;

const InputSpec& SampleStore::input_spec() const {
    return impl_->options.input;
}
const LabelSpec& SampleStore::label_spec() const {
    return impl_->options.label;
}

std::vector<std::pair<std::string, std::string>> SampleStore::read_meta(const std::string& path) {
    const std::string op = fmt::format("sample_store.read_meta '{}'", path);
    if (std::error_code ec; !std::filesystem::is_regular_file(path, ec))
        throw StorageError(fmt::format("[{}] no such file", op));
    Db db(path, true, std::chrono::milliseconds(5000));
    const int version = read_user_version(db, op);  // "file is not a database" surfaces here
    if (version <= 0)
        throw StorageError(
            fmt::format("[{}] is not an edgetune store (schema version {})", op, version));
    if (version > schema_version)
        throw StorageError(
            fmt::format("[{}] schema version {} is newer than this build supports ({})", op,
                        version, schema_version));
    std::vector<std::pair<std::string, std::string>> out;
    Stmt st(db, sql::select_all_meta, op);
    while (st.step()) out.emplace_back(st.text(0), st.text(1));
    return out;
}

SampleStore SampleStore::open(const std::string& path, const StoreOptions& options) {
    const std::string op = fmt::format("sample_store.open '{}'", path);
    validate_options(options, op);
    // NOTE: a new store's first commits live in its -wal until a checkpoint (the file itself
    // stays empty), so an empty database with a -wal is fine; a -wal with no database at all
    // was copied or left without it, and SQLite would replay it onto a fresh, empty file.
    if (std::error_code ec; !std::filesystem::exists(path, ec) &&
                            std::filesystem::file_size(path + "-wal", ec) > 0 && !ec)
        throw StorageError(fmt::format(
            "[{}] '{}-wal' holds {} bytes of commits but the database file is missing: restore "
            "the database next to it, or remove the -wal to start an empty store",
            op, path, std::filesystem::file_size(path + "-wal")));
    if (!options.read_only) create_private_file(path, op);
    auto impl = std::make_unique<Impl>(path, options);
    Db& db = impl->db;

    // Only reads until the file is known to be ours and not newer: a file that is not a
    // database, or has a newer schema, is left untouched.
    const int version = read_user_version(db, op);  // "file is not a database" surfaces here
    if (version < 0)
        throw StorageError(
            fmt::format("[{}] schema version {} is not valid (a damaged file?)", op, version));
    if (version > schema_version)
        throw StorageError(
            fmt::format("[{}] schema version {} is newer than this build "
                        "supports ({}); open it with a newer edgetune",
                        op, version, schema_version));
    if (version == 0 && scalar(db, sql::count_schema_objects, op) != 0)
        throw StorageError(fmt::format("[{}] is an SQLite database but not an edgetune store", op));

    Stmt(db, sql::foreign_keys_on, op).run();
    Stmt(db, sql::secure_delete_on, op).run();
    if (options.read_only) {
        if (version < schema_version)
            throw StorageError(
                fmt::format("[{}] read-only, but schema version {} needs a "
                            "migration to {}",
                            op, version, schema_version));
    } else {
        Stmt(db,
             options.durability == Durability::full ? sql::synchronous_full
                                                    : sql::synchronous_normal,
             op)
            .run();
#if defined(__APPLE__)
        if (options.durability == Durability::full) Stmt(db, sql::fullfsync_on, op).run();
#endif
        // Raw inputs and feature rows are KiB-sized blobs: 16 KiB pages pack them with little
        // slack (one 784-float row per 4 KiB page, five per 16 KiB page), and bulk inserts
        // write fewer, larger WAL frames. Only a new, empty file takes a page size.
        if (version == 0) Stmt(db, sql::page_size_16k, op).run();
        {
            Stmt wal(db, sql::journal_mode_wal, op);
            if (!wal.step() || wal.text(0) != "wal")
                throw StorageError(fmt::format("[{}] cannot switch to WAL journal mode", op));
        }
        // A current file takes no write lock here: a second connection (a training run's)
        // opens while the app's connection keeps writing, without queueing behind it.
        if (version < schema_version) migrate(db, options, op);
        // Checkpoints: see StoreOptions::checkpoint_bytes and Checkpointer in db.cpp. Files made
        // before the 16 KiB page size have smaller pages, hence more frames for the same bytes.
        const std::int64_t page_bytes =
            std::max<std::int64_t>(scalar(db, sql::get_page_size, op), 512);
        const int frames = static_cast<int>(
            std::clamp<std::int64_t>(options.checkpoint_bytes / page_bytes, 1, INT_MAX / 2));
        if (options.background_checkpoints)
            db.checkpoint_in_background(options.durability == Durability::full, frames);
        else
            db.exec(sql::wal_autocheckpoint_prefix + std::to_string(frames), op);
    }

    const std::string wanted = describe(options.input, options.label);
    const std::optional<std::string> declared = meta_value(db, key_declaration, op);
    if (!declared) throw CorruptData(fmt::format("[{}] the store declaration is missing", op));
    if (*declared != wanted)
        throw InvalidArgument(
            fmt::format("[{}] the store was created for {}; opened as {}", op, *declared, wanted));
    // From here on options.label.size of a classes store is the live class count (the
    // declaration keeps the initial one): labels are validated against it.
    if (options.label.kind == LabelSpec::Kind::classes)
        impl->options.label.size = scalar(db, sql::count_classes, op);
    if (!options.read_only) ensure_reserve(path, options.reserve_bytes);
    if (options.max_pages > 0)
        db.exec(sql::max_page_count_prefix + std::to_string(options.max_pages), op);
    db.exec(sql::cache_size_kib_prefix + std::to_string(-(options.cache_bytes / 1024)), op);
    return SampleStore(std::move(impl));
}

// --- samples -----------------------------------------------------------------------------------

std::int64_t SampleStore::add(const Sample& sample) {
    constexpr std::string_view op = "sample_store.add";
    validate_sample(sample, impl_->options, op, -1);
    std::vector<std::int64_t> evicted;
    return insert_samples(impl_->db, impl_->options, std::span(&sample, 1), op, evicted).front();
}

std::vector<std::int64_t> SampleStore::add_batch(std::span<const Sample> samples) {
    std::vector<std::int64_t> evicted;
    return add_batch(samples, evicted);
}

std::vector<std::int64_t> SampleStore::add_batch(std::span<const Sample> samples,
                                                 std::vector<std::int64_t>& evicted) {
    constexpr std::string_view op = "sample_store.add_batch";
    for (std::size_t i = 0; i < samples.size(); ++i)
        validate_sample(samples[i], impl_->options, op, static_cast<std::ptrdiff_t>(i));
    evicted.clear();
    return insert_samples(impl_->db, impl_->options, samples, op, evicted);
}

namespace {

// FNV-1a 64 over what identifies a batch (inputs, tokens, labels, targets, weights), as hex.
std::string batch_hash(std::span<const Sample> samples) {
    std::uint64_t h = 0xcbf29ce484222325ULL;
    auto mix = [&h](const void* p, std::size_t n) {
        const auto* b = static_cast<const std::uint8_t*>(p);
        for (std::size_t i = 0; i < n; ++i) h = (h ^ b[i]) * 0x100000001b3ULL;
    };
    for (const Sample& s : samples) {
        mix(s.input.data(), s.input.size() * sizeof(float));
        mix(s.tokens.data(), s.tokens.size() * sizeof(std::int32_t));
        mix(&s.label, sizeof s.label);
        mix(s.target.data(), s.target.size() * sizeof(float));
        mix(&s.weight, sizeof s.weight);
        mix(&s.created_at, sizeof s.created_at);
    }
    return fmt::format("{:016x}", h);
}

}  // namespace

std::vector<std::int64_t> SampleStore::add_batch(std::span<const Sample> samples,
                                                 std::string_view idempotency_key) {
    std::vector<std::int64_t> evicted;
    return add_batch(samples, idempotency_key, evicted);
}

std::vector<std::int64_t> SampleStore::add_batch(std::span<const Sample> samples,
                                                 std::string_view idempotency_key,
                                                 std::vector<std::int64_t>& evicted) {
    constexpr std::string_view op = "sample_store.add_batch";
    evicted.clear();
    if (idempotency_key.empty() || idempotency_key.size() > max_digest_bytes)
        throw InvalidArgument(fmt::format("[{}] idempotency key must be 1 to {} bytes; got {}", op,
                                          max_digest_bytes, idempotency_key.size()));
    for (std::size_t i = 0; i < samples.size(); ++i)
        validate_sample(samples[i], impl_->options, op, static_cast<std::ptrdiff_t>(i));
    const std::string hash = batch_hash(samples);
    Db& db = impl_->db;
    TxGuard tx(db, op);
    {
        Stmt st(db, sql::select_add_key, op);
        st.bind(1, idempotency_key);
        if (st.step()) {
            if (st.text(0) != hash)
                throw InvalidArgument(fmt::format(
                    "[{}] idempotency key '{}' was used for other samples", op, idempotency_key));
            const auto blob = st.blob(1);
            if (blob.size() != samples.size() * 8)
                throw CorruptData(fmt::format("[{}] key '{}' holds {} bytes of ids for {} samples",
                                              op, idempotency_key, blob.size(), samples.size()));
            std::vector<std::int64_t> ids(samples.size());
            if (!blob.empty()) std::memcpy(ids.data(), blob.data(), blob.size());
            if constexpr (std::endian::native != std::endian::little)
                for (auto& id : ids) id = static_cast<std::int64_t>(__builtin_bswap64(id));
            // What retention evicted since the first call counts as evicted by this one.
            Stmt exists(db, sql::select_sample_no_input, op);
            for (std::int64_t id : ids) {
                if (id == not_kept) continue;
                exists.bind(1, id);
                if (!exists.step()) evicted.push_back(id);
                exists.reset();
            }
            std::sort(evicted.begin(), evicted.end());
            return ids;  // the guard ends the (empty) transaction
        }
    }
    std::vector<std::int64_t> ids = insert_samples(db, impl_->options, samples, op, evicted);
    std::vector<std::uint8_t> bytes(ids.size() * 8);
    for (std::size_t i = 0; i < ids.size(); ++i)
        for (int b = 0; b < 8; ++b)
            bytes[i * 8 + static_cast<std::size_t>(b)] =
                static_cast<std::uint8_t>(static_cast<std::uint64_t>(ids[i]) >> (8 * b));
    Stmt(db, sql::insert_add_key, op)
        .bind(1, idempotency_key)
        .bind(2, std::string_view(hash))
        .bind_blob(3, bytes)
        .run();
    Stmt(db, sql::trim_add_keys, op).bind(1, add_keys_kept).run();
    tx.commit();
    return ids;
}

std::optional<Sample> SampleStore::get(std::int64_t id, Fields fields) const {
    Stmt st(impl_->db, fields == Fields::all ? sql::select_sample : sql::select_sample_no_input,
            "sample_store.get");
    st.bind(1, id);
    if (!st.step()) return std::nullopt;
    count_rows(1);
    return read_sample(st, fields, impl_->options);
}

std::vector<Sample> SampleStore::get_many(std::span<const std::int64_t> ids, Fields fields) const {
    ReadGuard snapshot(impl_->db, "sample_store.get_many");
    Stmt st(impl_->db, fields == Fields::all ? sql::select_sample : sql::select_sample_no_input,
            "sample_store.get_many");
    std::vector<Sample> out;
    out.reserve(ids.size());
    std::vector<std::int64_t> missing;
    for (std::int64_t id : ids) {
        st.bind(1, id);
        if (st.step())
            out.push_back(read_sample(st, fields, impl_->options));
        else
            missing.push_back(id);
        st.reset();
    }
    count_rows(out.size());
    if (!missing.empty())
        throw InvalidArgument(fmt::format("[sample_store.get_many] {} of {} ids do not exist: {}",
                                          missing.size(), ids.size(), id_list(missing)));
    return out;
}

std::int64_t SampleStore::count() const {
    return read_samples(impl_->db, "sample_store.count");
}

std::vector<std::int64_t> SampleStore::count_per_label() const {
    constexpr std::string_view op = "sample_store.count_per_label";
    const LabelSpec& spec = impl_->options.label;
    if (spec.kind != LabelSpec::Kind::classes)
        throw InvalidArgument(fmt::format("[{}] needs a classes store", op));
    std::vector<std::int64_t> counts(static_cast<std::size_t>(spec.size), 0);
    Stmt st(impl_->db, sql::count_per_label, op);
    while (st.step()) {
        const std::int64_t label = st.int64(0);
        if (label < 0 || label >= spec.size)
            throw CorruptData(fmt::format("[{}] stored label {} is out of range", op, label));
        counts[static_cast<std::size_t>(label)] = st.int64(1);
    }
    return counts;
}

SampleCursor SampleStore::scan(const ScanOptions& options) const {
    if (options.batch == 0) throw InvalidArgument("[sample_store.scan] batch must be >= 1");
    return SampleCursor(impl_.get(), options.after_id, options.batch, options.fields);
}

bool SampleCursor::next(std::vector<Sample>& out) {
    out.clear();
    Stmt st(impl_->db,
            fields_ == Fields::all ? sql::select_samples_after : sql::select_samples_after_no_input,
            "sample_store.scan");
    st.bind(1, last_id_).bind(2, sql_limit(batch_));
    while (st.step()) out.push_back(read_sample(st, fields_, impl_->options));
    count_rows(out.size());
    if (!out.empty()) last_id_ = out.back().id;
    return !out.empty();
}

std::vector<std::int64_t> SampleStore::sample_uniform(std::size_t n, Rng& rng) const {
    Stmt st(impl_->db, sql::select_all_ids, "sample_store.sample_uniform");
    return choose(collect_ids(st), n, rng);
}

std::vector<std::int64_t> SampleStore::recent(std::size_t n) const {
    Stmt st(impl_->db, sql::select_recent_ids, "sample_store.recent");
    st.bind(1, sql_limit(n));
    return collect_ids(st);
}

std::vector<std::int64_t> SampleStore::sample_per_class(std::size_t n, Rng& rng) const {
    constexpr std::string_view op = "sample_store.sample_per_class";
    const LabelSpec& spec = impl_->options.label;
    if (spec.kind != LabelSpec::Kind::classes)
        throw InvalidArgument(fmt::format("[{}] needs a classes store", op));
    std::vector<std::int64_t> out;
    ReadGuard snapshot(impl_->db, op);
    for (std::int64_t label = 0; label < spec.size; ++label) {
        Stmt st(impl_->db, sql::select_ids_of_label, op);
        st.bind(1, label);
        const std::vector<std::int64_t> chosen = choose(collect_ids(st), n, rng);
        out.insert(out.end(), chosen.begin(), chosen.end());
    }
    std::sort(out.begin(), out.end());
    return out;
}

std::vector<std::int64_t> SampleStore::ids_after(std::int64_t after_id, std::size_t limit) const {
    Stmt st(impl_->db, sql::select_ids_after, "sample_store.ids_after");
    st.bind(1, after_id).bind(2, sql_limit(limit));
    return collect_ids(st);
}

std::vector<std::int64_t> SampleStore::sample_trained(std::size_t n, Rng& rng) const {
    constexpr std::string_view op = "sample_store.sample_trained";
    Db& db = impl_->db;
    ReadGuard snapshot(db, op);
    const auto slots = static_cast<std::uint64_t>(slot_count(db, op));
    // Partial Fisher-Yates over the slot numbers [0, slots), its swaps kept in a map: each
    // draw is one of the slots not drawn yet, uniformly, in O(log) time and memory per draw.
    std::map<std::uint64_t, std::uint64_t> swapped;
    auto at = [&](std::uint64_t i) {
        const auto it = swapped.find(i);
        return it == swapped.end() ? i : it->second;
    };
    Stmt id_of(db, sql::id_at_slot, op);
    Stmt held(db, sql::is_held_out, op);
    std::vector<std::int64_t> out;
    for (std::uint64_t i = 0; i < slots && out.size() < n; ++i) {
        const std::uint64_t j = i + rng.below(slots - i);
        const std::uint64_t slot = at(j);
        swapped[j] = at(i);
        id_of.bind(1, static_cast<std::int64_t>(slot));
        if (!id_of.step()) throw CorruptData(fmt::format("[{}] slot {} is empty", op, slot));
        const std::int64_t id = id_of.int64(0);
        id_of.reset();
        held.bind(1, id);
        if (!held.step()) out.push_back(id);
        held.reset();
    }
    std::sort(out.begin(), out.end());
    return out;
}

void SampleStore::hold_out(std::span<const std::int64_t> ids) {
    constexpr std::string_view op = "sample_store.hold_out";
    TxGuard tx(impl_->db, op);
    {
        Stmt st(impl_->db, sql::insert_held_out, op);
        for (std::int64_t id : ids) {
            st.bind(1, id);
            const int rc = st.step_rc();
            if (rc != SQLITE_CONSTRAINT_FOREIGNKEY) impl_->db.check(rc, op);  // not stored
            st.reset();
        }
    }
    tx.commit();
}

std::vector<std::int64_t> SampleStore::held_out() const {
    Stmt st(impl_->db, sql::select_held_out, "sample_store.held_out");
    return collect_ids(st);
}

void SampleStore::clear_held_out() {
    Stmt(impl_->db, sql::clear_held_out, "sample_store.clear_held_out").run();
}

std::int64_t SampleStore::rows_read() {
    return rows_read_total.load(std::memory_order_relaxed);
}

std::int64_t SampleStore::delete_ids(std::span<const std::int64_t> ids) {
    constexpr std::string_view op = "sample_store.delete_ids";
    TxGuard tx(impl_->db, op);
    std::int64_t deleted = 0;
    {
        Stmt st(impl_->db, sql::delete_sample, op);
        for (std::int64_t id : ids) {
            st.bind(1, id).run();
            deleted += impl_->db.changes();
            st.reset();
        }
    }
    tx.commit();
    return deleted;
}

std::int64_t SampleStore::erase_ids(std::span<const std::int64_t> ids,
                                    std::span<const std::pair<std::string, std::string>> meta) {
    return erase(ids, meta, "sample_store.erase_ids", {});
}

std::int64_t SampleStore::erase(std::span<const std::int64_t> ids,
                                std::span<const std::pair<std::string, std::string>> meta,
                                std::string_view op, const std::function<void()>& also) {
    Db& db = impl_->db;
    if (db.depth() != 0)
        throw InvalidArgument(fmt::format("[{}] must not run inside a transaction", op));
    for (const auto& [key, value] : meta) {
        if (key.empty() || key.starts_with(reserved_prefix))
            throw InvalidArgument(fmt::format("[{}] meta key '{}' is empty or reserved", op, key));
        check_size(key.size() + value.size(), impl_->options, op, "meta entry");
    }
    auto erase = [&] {
        TxGuard tx(db, op);
        const std::int64_t deleted = delete_ids(ids);
        for (const auto& [key, value] : meta) put_meta(db, key, value, op);
        if (also) also();
        tx.commit();
        return deleted;
    };
    std::int64_t deleted = 0;
    try {
        deleted = erase();
    } catch (const DiskFull&) {
        // NOTE: the deletion itself needs room (its pages go to the -wal before any is freed).
        if (!remove_reserve_file(impl_->path)) throw;
        deleted = erase();
    }
    // The deleted rows' old versions are still in -wal frames, and under synchronous=NORMAL the
    // commit is not yet synced: copy, sync, truncate.
    // NOTE: a released reserve is recreated at the next open, not here: the room it freed is
    // what the retrain that usually follows an erasure needs to commit. The checkpoint, too,
    // may need room: the file grows by the pages the -wal added.
    try {
        db.checkpoint_truncate(op);
    } catch (const DiskFull&) {
        if (!remove_reserve_file(impl_->path)) throw;
        db.checkpoint_truncate(op);
    }
    return deleted;
}

// --- classes -----------------------------------------------------------------------------------

namespace {

// Throws InvalidArgument unless `name` is 1..256 bytes of UTF-8 without control characters.
void check_class_name(std::string_view name, std::string_view op) {
    const auto bad = [&](std::string_view why) {
        throw InvalidArgument(fmt::format("[{}] class name '{}' {}", op, name, why));
    };
    if (name.empty()) bad("is empty");
    if (name.size() > 256) bad(fmt::format("is {} bytes; at most 256", name.size()));
    for (std::size_t i = 0; i < name.size();) {
        const auto b = static_cast<unsigned char>(name[i]);
        const std::size_t len = b < 0x80         ? 1
                                : (b >> 5) == 6  ? 2
                                : (b >> 4) == 14 ? 3
                                : (b >> 3) == 30 ? 4
                                                 : 0;
        if (len == 0 || i + len > name.size()) bad("is not UTF-8");
        for (std::size_t k = 1; k < len; ++k)
            if ((static_cast<unsigned char>(name[i + k]) >> 6) != 2) bad("is not UTF-8");
        if (len == 1 && (b < 0x20 || b == 0x7f)) bad("holds a control character");
        i += len;
    }
}

}  // namespace

void SampleStore::check_classes_store(std::string_view op) const {
    if (impl_->options.label.kind != LabelSpec::Kind::classes)
        throw InvalidArgument(fmt::format("[{}] needs a classes store", op));
}

void SampleStore::check_label(std::int32_t label, std::string_view op) const {
    if (label < 0 || label >= impl_->options.label.size)
        throw InvalidArgument(fmt::format("[{}] no class with label {} (the store has {} classes)",
                                          op, label, impl_->options.label.size));
}

std::vector<ClassInfo> SampleStore::classes() const {
    constexpr std::string_view op = "sample_store.classes";
    check_classes_store(op);
    std::vector<ClassInfo> out;
    Stmt st(impl_->db, sql::select_classes, op);
    while (st.step())
        out.push_back({.label = static_cast<std::int32_t>(st.int64(0)),
                       .name = st.text(1),
                       .created_at = st.int64(2),
                       .samples = st.int64(3)});
    return out;
}

std::optional<std::int32_t> SampleStore::find_class(std::string_view name) const {
    check_classes_store("sample_store.find_class");
    Stmt st(impl_->db, sql::select_class_by_name, "sample_store.find_class");
    st.bind(1, name);
    if (!st.step()) return std::nullopt;
    return static_cast<std::int32_t>(st.int64(0));
}

std::int32_t SampleStore::add_class(std::string_view name) {
    constexpr std::string_view op = "sample_store.add_class";
    check_classes_store(op);
    check_class_name(name, op);
    if (find_class(name))
        throw InvalidArgument(fmt::format("[{}] class name '{}' is taken", op, name));
    const std::int64_t label = impl_->options.label.size;
    if (label >= INT32_MAX) throw InvalidArgument(fmt::format("[{}] too many classes", op));
    Stmt(impl_->db, sql::insert_class, op).bind(1, label).bind(2, name).bind(3, now_ms()).run();
    impl_->options.label.size = label + 1;
    return static_cast<std::int32_t>(label);
}

void SampleStore::rename_class(std::int32_t label, std::string_view name) {
    constexpr std::string_view op = "sample_store.rename_class";
    check_classes_store(op);
    check_label(label, op);
    check_class_name(name, op);
    if (const auto other = find_class(name); other && *other != label)
        throw InvalidArgument(fmt::format("[{}] class name '{}' is taken", op, name));
    Stmt(impl_->db, sql::rename_class, op)
        .bind(1, static_cast<std::int64_t>(label))
        .bind(2, name)
        .run();
}

std::int64_t SampleStore::remove_class(std::int32_t label,
                                       std::span<const std::pair<std::string, std::string>> meta,
                                       const std::function<void()>& also) {
    constexpr std::string_view op = "sample_store.remove_class";
    check_classes_store(op);
    check_label(label, op);
    if (impl_->options.label.size == 1)
        throw InvalidArgument(fmt::format("[{}] class {} is the last class", op, label));
    std::vector<std::int64_t> ids;
    {
        Stmt st(impl_->db, sql::select_ids_of_label, op);
        st.bind(1, static_cast<std::int64_t>(label));
        ids = collect_ids(st);
    }
    const std::int64_t erased = erase(ids, meta, op, [&] {
        Db& db = impl_->db;
        const auto l = static_cast<std::int64_t>(label);
        Stmt(db, sql::delete_class, op).bind(1, l).run();
        Stmt(db, sql::shift_class_labels, op).bind(1, l).run();
        Stmt(db, sql::shift_sample_labels, op).bind(1, l).run();
        if (also) also();
    });
    impl_->options.label.size = scalar(impl_->db, sql::count_classes, op);
    return erased;
}

bool SampleStore::release_reserve() {
    return remove_reserve_file(impl_->path);
}

std::int64_t SampleStore::delete_older_than(std::int64_t cutoff_ms) {
    Stmt(impl_->db, sql::delete_samples_before, "sample_store.delete_older_than")
        .bind(1, cutoff_ms)
        .run();
    return impl_->db.changes();
}

// --- feature cache -----------------------------------------------------------------------------

void SampleStore::put_features(std::string_view digest, std::span<const std::int64_t> ids,
                               const Matrix& values) {
    constexpr std::string_view op = "sample_store.put_features";
    check_digest(digest, op);
    if (values.rows() != static_cast<Index>(ids.size()))
        throw InvalidArgument(fmt::format("[{}] values {} has {} rows for {} ids", op,
                                          shape_str(values), values.rows(), ids.size()));
    if (ids.empty()) return;
    if (values.cols() < 1)
        throw InvalidArgument(fmt::format("[{}] values {} has no columns", op, shape_str(values)));
    const std::size_t row_bytes = static_cast<std::size_t>(values.cols()) * 4;
    check_size(row_bytes, impl_->options, op, "value row");
    for (Index r = 0; r < values.rows(); ++r)
        for (Index c = 0; c < values.cols(); ++c)
            if (!std::isfinite(values(r, c)))
                throw InvalidArgument(
                    fmt::format("[{}] values({}, {}) is {}", op, r, c, nan_or_inf(values(r, c))));

    Db& db = impl_->db;
    TxGuard tx(db, op);
    {
        Stmt width(db, sql::select_feature_bytes, op);
        width.bind(1, digest);
        if (width.step() && static_cast<std::size_t>(width.int64(0)) != row_bytes)
            throw InvalidArgument(fmt::format("[{}] digest '{}' holds rows of {} floats; got {}",
                                              op, digest, width.int64(0) / 4, values.cols()));
    }
    {
        Stmt insert(db, sql::insert_feature, op);
        Stmt update(db, sql::update_feature, op);
        insert.bind(2, digest);
        update.bind(2, digest);
        std::int64_t added = 0;             // new rows, for feature_counts (schema v4)
        std::vector<std::uint8_t> scratch;  // big-endian hosts only
        for (std::size_t i = 0; i < ids.size(); ++i) {
            const std::span<const float> row(values.row(static_cast<Index>(i)).data(),
                                             static_cast<std::size_t>(values.cols()));
            insert.bind(1, ids[i]).bind_blob(3, le_bytes(row, scratch));
            const int rc = insert.step_rc();
            if (rc == SQLITE_CONSTRAINT_FOREIGNKEY)
                throw InvalidArgument(fmt::format("[{}] sample {} does not exist", op, ids[i]));
            db.check(rc, op);
            insert.reset();
            if (db.changes() == 1) {
                ++added;
            } else {  // a row of this digest exists: replace its value
                update.bind(1, ids[i]).bind_blob(3, le_bytes(row, scratch)).run();
                update.reset();
            }
        }
        Stmt(db, sql::add_feature_count, op).bind(1, digest).bind(2, added).run();
    }
    tx.commit();
}

Matrix SampleStore::get_features(std::string_view digest, std::span<const std::int64_t> ids) const {
    constexpr std::string_view op = "sample_store.get_features";
    check_digest(digest, op);
    if (ids.empty()) return Matrix();
    Matrix out;
    // Copies one blob straight into its row; the first blob found fixes the width F.
    auto put_row = [&](std::size_t row, std::int64_t id, std::span<const std::uint8_t> blob) {
        if (out.size() == 0) {
            if (blob.empty() || blob.size() % 4 != 0)
                throw CorruptData(
                    fmt::format("[{}] sample {}: feature blob is {} bytes", op, id, blob.size()));
            out.resize(static_cast<Index>(ids.size()), static_cast<Index>(blob.size() / 4));
        }
        if (blob.size() != static_cast<std::size_t>(out.cols()) * 4)
            throw CorruptData(fmt::format("[{}] sample {}: feature blob is {} bytes; expected {}",
                                          op, id, blob.size(), out.cols() * 4));
        from_le(blob, out.row(static_cast<Index>(row)).data());
    };
    std::vector<std::size_t> missing;  // positions in ids
    const auto [lo, hi] = std::minmax_element(ids.begin(), ids.end());
    ReadGuard snapshot(impl_->db, op);
    if (static_cast<std::uint64_t>(*hi) - static_cast<std::uint64_t>(*lo) < 4 * ids.size()) {
        // Dense request (say, every training sample): one ordered range scan, no seeks.
        std::vector<std::size_t> order(ids.size());  // positions in ascending id order
        std::iota(order.begin(), order.end(), std::size_t{0});
        std::stable_sort(order.begin(), order.end(),
                         [&](std::size_t a, std::size_t b) { return ids[a] < ids[b]; });
        Stmt st(impl_->db, sql::select_features_in_range, op);
        st.bind(1, digest).bind(2, *lo).bind(3, *hi);
        std::size_t k = 0;
        while (st.step()) {
            count_rows(1);  // every row of the range, requested or not
            const std::int64_t id = st.int64(0);
            for (; k < order.size() && ids[order[k]] < id; ++k) missing.push_back(order[k]);
            for (; k < order.size() && ids[order[k]] == id; ++k) put_row(order[k], id, st.blob(1));
        }
        for (; k < order.size(); ++k) missing.push_back(order[k]);
    } else {
        // Sparse request: one index seek per id.
        Stmt st(impl_->db, sql::select_feature, op);
        st.bind(1, digest);
        for (std::size_t i = 0; i < ids.size(); ++i) {
            st.bind(2, ids[i]);
            if (st.step()) {
                count_rows(1);
                put_row(i, ids[i], st.blob(0));
            } else {
                missing.push_back(i);
            }
            st.reset();
        }
    }
    if (!missing.empty()) {
        std::sort(missing.begin(), missing.end());  // report in request order
        std::vector<std::int64_t> missing_ids;
        for (std::size_t i : missing) missing_ids.push_back(ids[i]);
        throw InvalidArgument(fmt::format("[{}] no '{}' features for {} of {} samples: {}", op,
                                          digest, missing.size(), ids.size(),
                                          id_list(missing_ids)));
    }
    return out;
}

std::vector<std::int64_t> SampleStore::ids_missing_features(std::string_view digest,
                                                            std::size_t limit) const {
    constexpr std::string_view op = "sample_store.ids_missing_features";
    check_digest(digest, op);
    ReadGuard snapshot(impl_->db, op);
    {
        // The counts (schema v4) answer the usual case, nothing missing, without a scan.
        Stmt rows(impl_->db, sql::feature_rows_of_digest, op);
        rows.bind(1, digest);
        if (rows.step() && rows.int64(0) >= read_samples(impl_->db, op)) return {};
    }
    Stmt st(impl_->db, sql::select_ids_missing_features, op);
    st.bind(1, digest).bind(2, sql_limit(limit));
    return collect_ids(st);
}

std::int64_t SampleStore::drop_features(std::string_view digest) {
    constexpr std::string_view op = "sample_store.drop_features";
    check_digest(digest, op);
    Stmt(impl_->db, sql::delete_features_of_digest, op).bind(1, digest).run();
    return impl_->db.changes();
}

std::int64_t SampleStore::keep_only_features(std::string_view digest) {
    constexpr std::string_view op = "sample_store.keep_only_features";
    check_digest(digest, op);
    Stmt(impl_->db, sql::delete_features_except_digest, op).bind(1, digest).run();
    return impl_->db.changes();
}

// --- checkpoints, meta, runs -------------------------------------------------------------------

std::int64_t SampleStore::save_checkpoint(const CheckpointInfo& info,
                                          std::span<const std::uint8_t> payload) {
    constexpr std::string_view op = "sample_store.save_checkpoint";
    check_size(payload.size(), impl_->options, op, "payload");
    check_size(info.metrics.size(), impl_->options, op, "metrics");
    if (info.backbone_digest.size() > max_digest_bytes)
        throw InvalidArgument(fmt::format("[{}] backbone_digest is {} bytes; the limit is {}", op,
                                          info.backbone_digest.size(), max_digest_bytes));
    Stmt(impl_->db, sql::insert_checkpoint, op)
        .bind(1, now_ms())
        .bind(2, kind_name(info.kind))
        .bind(3, info.step)
        .bind(4, std::string_view(info.backbone_digest))
        .bind(5, std::string_view(info.metrics))
        .bind_blob(6, payload)
        .run();
    return impl_->db.last_insert_id();
}

std::optional<StoredCheckpoint> SampleStore::latest_checkpoint(CheckpointKind kind) const {
    Stmt st(impl_->db, sql::select_latest_checkpoint, "sample_store.latest_checkpoint");
    st.bind(1, kind_name(kind));
    return read_checkpoint(st);
}

std::optional<StoredCheckpoint> SampleStore::get_checkpoint(std::int64_t id) const {
    Stmt st(impl_->db, sql::select_checkpoint, "sample_store.get_checkpoint");
    st.bind(1, id);
    return read_checkpoint(st);
}

std::vector<CheckpointInfo> SampleStore::list_checkpoints() const {
    Stmt st(impl_->db, sql::list_checkpoints, "sample_store.list_checkpoints");
    std::vector<CheckpointInfo> out;
    while (st.step()) out.push_back(read_checkpoint_info(st));
    return out;
}

std::int64_t SampleStore::drop_checkpoints(std::string_view digest) {
    constexpr std::string_view op = "sample_store.drop_checkpoints";
    check_digest(digest, op);
    Stmt(impl_->db, sql::delete_checkpoints_of_digest, op).bind(1, digest).run();
    return impl_->db.changes();
}

std::int64_t SampleStore::prune_checkpoints(std::size_t keep_last) {
    Stmt(impl_->db, sql::prune_checkpoints, "sample_store.prune_checkpoints")
        .bind(1, sql_limit(keep_last))
        .run();
    return impl_->db.changes();
}

std::optional<std::string> SampleStore::get_meta(std::string_view key) const {
    return meta_value(impl_->db, key, "sample_store.get_meta");
}

void SampleStore::set_meta(std::string_view key, std::string_view value) {
    constexpr std::string_view op = "sample_store.set_meta";
    if (key.empty()) throw InvalidArgument(fmt::format("[{}] key is empty", op));
    if (key.starts_with(reserved_prefix))
        throw InvalidArgument(
            fmt::format("[{}] key '{}' is reserved (prefix '{}')", op, key, reserved_prefix));
    check_size(key.size(), impl_->options, op, "key");
    check_size(value.size(), impl_->options, op, "value");
    put_meta(impl_->db, key, value, op);
}

void SampleStore::set_trained_upto(std::int64_t id) {
    constexpr std::string_view op = "sample_store.set_trained_upto";
    if (id < 0) throw InvalidArgument(fmt::format("[{}] id = {} must be >= 0", op, id));
    Db& db = impl_->db;
    // Absent: every sample is evictable (plain Algorithm R).
    const std::int64_t before = read_count(db, key_trained_upto, op).value_or(INT64_MAX);
    if (before == id) return;  // no write: a current store's open takes no write lock
    // The slots follow the watermark (schema v4): what it now covers may be evicted.
    TxGuard tx(db, op);
    if (id > before)
        slot_ids(db, before, id, op);
    else
        unslot_ids_above(db, id, op);
    put_meta(db, key_trained_upto, std::to_string(id), op);
    tx.commit();
}

std::int64_t SampleStore::append_run(std::string_view report) {
    constexpr std::string_view op = "sample_store.append_run";
    check_size(report.size(), impl_->options, op, "report");
    Stmt(impl_->db, sql::insert_run, op).bind(1, now_ms()).bind(2, report).run();
    return impl_->db.last_insert_id();
}

std::vector<RunRecord> SampleStore::list_runs(std::size_t last) const {
    Stmt st(impl_->db, sql::select_last_runs, "sample_store.list_runs");
    st.bind(1, sql_limit(last));
    std::vector<RunRecord> out;
    while (st.step()) out.push_back({st.int64(0), st.int64(1), st.text(2)});
    return out;
}

// --- maintenance -------------------------------------------------------------------------------

std::string SampleStore::integrity_check() const {
    constexpr std::string_view op = "sample_store.integrity_check";
    ReadGuard snapshot(impl_->db, op);
    std::string report;
    {
        Stmt st(impl_->db, sql::integrity_check, op);
        while (st.step()) report += (report.empty() ? "" : "\n") + st.text(0);
    }
    if (report != "ok") return report;
    Stmt fk(impl_->db, sql::foreign_key_check, op);  // table, rowid, parent, fkid
    report.clear();
    while (fk.step())
        report += fmt::format("{}foreign key violation: {} row {} -> {}",
                              report.empty() ? "" : "\n", fk.text(0), fk.int64(1), fk.text(2));
    return report.empty() ? "ok" : report;
}

Transaction SampleStore::transaction() {
    const int level = impl_->db.begin("sample_store.transaction");
    return Transaction(&impl_->db, level);
}

Transaction::Transaction(Transaction&& other) noexcept
    : db_(std::exchange(other.db_, nullptr)), level_(other.level_) {}

Transaction::~Transaction() {
    if (!db_) return;
    while (db_->depth() >= level_) db_->rollback();
}

void Transaction::commit() {
    constexpr std::string_view op = "transaction.commit";
    if (!db_) throw InvalidArgument(fmt::format("[{}] already committed", op));
    if (db_->depth() != level_)
        throw InvalidArgument(
            fmt::format("[{}] an inner transaction is still open (depth {}, "
                        "this one is {})",
                        op, db_->depth(), level_));
    db_->commit(op);
    db_ = nullptr;
}

}  // namespace edgetune
