// storage.hpp — the public contract of edgetune's storage module.
//
// Two parts, both free of autograd:
//   * SampleStore: one SQLite file per personalized model. It holds the raw samples, the cached
//     backbone features, the checkpoints, a key/value `meta` table and a `runs` training log.
//   * The checkpoint format: a plain Checkpoint struct, its byte encoding (an envelope around a
//     cereal PortableBinaryArchive, see FORMAT.md) and atomic file helpers.
//
// Failures are exceptions from common/error.hpp: InvalidArgument (bad input, rejected before
// anything is written), CorruptData (bytes read back fail validation), StorageError (SQLite or
// the file system refused). Blobs are little-endian float32 / int32 on every platform.
// A SampleStore is used by one thread at a time; open a second SampleStore on the same file
// for another thread (SQLite's WAL lets one writer and many readers work concurrently). A
// writable store starts one thread of its own for WAL checkpoints (StoreOptions).
#pragma once

#include "error.hpp"
#include "matrix.hpp"
#include "rng.hpp"

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace EDGETUNE_API edgetune {

// ---------------------------------------------------------------------------------------------
// Checkpoint format (checkpoint.cpp)
// ---------------------------------------------------------------------------------------------

// Everything needed to resume training exactly: resuming from a decoded Checkpoint gives the
// same next step as not stopping. Invariants: tensor names are unique and in a stable order;
// optimizer.slots is index-aligned with `tensors` (or empty); every Matrix value is finite.
struct Checkpoint {
    std::string kind;                                        // e.g. "head", "backbone"
    std::vector<std::pair<std::string, std::string>> attrs;  // architecture, hyperparameters
    std::vector<std::pair<std::string, Matrix>> tensors;     // named parameters, stable order
    OptimizerState optimizer;                                // may be empty (kind == "")
    std::int64_t step = 0;
    Rng::State rng{};
    std::string metrics;
};

// Envelope (magic, version, length, CRC32) + cereal payload; see FORMAT.md.
// Throws InvalidArgument if a tensor holds NaN/Inf.
std::vector<std::uint8_t> encode_checkpoint(const Checkpoint& checkpoint);
// Validates the envelope before cereal reads a byte and bounds every declared length by the
// bytes that remain, so a corrupt or hostile input throws CorruptData, never allocates more
// than its own size and never crashes.
Checkpoint decode_checkpoint(std::span<const std::uint8_t> bytes);
// Writes `path` so that it holds either its old content or all of `bytes`: a temporary file in
// the same directory, fsync, rename, fsync of the directory. Throws StorageError.
void write_file_atomic(const std::string& path, std::span<const std::uint8_t> bytes);
// Reads a whole file. Throws StorageError if it cannot be read, CorruptData if it is larger
// than max_bytes.
std::vector<std::uint8_t> read_file(const std::string& path, std::size_t max_bytes);

// ---------------------------------------------------------------------------------------------
// SampleStore options and records
// NOTE: every member below has an initializer, so designated initializers may leave any out
// without tripping -Wmissing-field-initializers.
// ---------------------------------------------------------------------------------------------

// What one sample's raw input is. Fixed when the store is created.
struct InputSpec {
    enum class Kind { float_vector, token_sequence };
    Kind kind = Kind::float_vector;
    std::int64_t size = 0;  // D floats, or L int32 token ids; > 0

    static InputSpec float_vector(std::int64_t d) { return {Kind::float_vector, d}; }
    static InputSpec token_sequence(std::int64_t l) { return {Kind::token_sequence, l}; }
    bool operator==(const InputSpec&) const = default;
};

// What a sample is labelled with. Fixed when the store is created.
struct LabelSpec {
    enum class Kind { classes, regression };
    Kind kind = Kind::classes;
    std::int64_t size = 0;  // number of classes C, or regression target width W; > 0

    static LabelSpec classes(std::int64_t c) { return {Kind::classes, c}; }
    static LabelSpec regression(std::int64_t w) { return {Kind::regression, w}; }
    bool operator==(const LabelSpec&) const = default;
};

// Which samples survive an add. Enforced inside the add's transaction.
struct Retention {
    enum class Kind {
        unlimited,    // keep everything
        keep_newest,  // keep the `capacity` highest ids
        // A uniform sample of size `capacity` of everything ever offered (Algorithm R at add()).
        // Once set_trained_upto() has been called (Personalizer does, at open and at every
        // commit), samples not trained on yet are protected: every new sample is kept, and
        // add() evicts the excess over `capacity` uniformly among the trained samples only, so
        // the store holds capacity + the samples added since the last update until it trains.
        reservoir,
        per_class_cap,  // at most `capacity` per class; the oldest of a full class is evicted
    };
    Kind kind = Kind::unlimited;
    std::int64_t capacity = 0;  // > 0 unless unlimited
    std::uint64_t seed = 0;     // reservoir only; draws are a function of (seed, offered count)

    static Retention unlimited() { return {}; }
    static Retention keep_newest(std::int64_t n) { return {Kind::keep_newest, n, 0}; }
    static Retention reservoir(std::int64_t n, std::uint64_t seed) {
        return {Kind::reservoir, n, seed};
    }
    static Retention per_class_cap(std::int64_t n) { return {Kind::per_class_cap, n, 0}; }
};

// How hard a commit tries to reach the disk.
enum class Durability {
    // Default. synchronous=NORMAL in WAL mode: a commit survives the app crashing or being
    // killed at any moment (the WAL is in the OS page cache); a power loss or OS crash can
    // lose the last few commits but never corrupts the file. This is the right trade for data
    // an app keeps collecting: a commit costs tens of microseconds instead of an fsync.
    normal,
    // synchronous=FULL: every commit is fsynced, so it also survives a power loss. On Apple
    // platforms fsync does not flush the drive's own cache, so there the store's connections
    // (also its checkpoint thread's) add PRAGMA fullfsync: syncs use F_FULLFSYNC.
    full,
};

// SampleStore::open options. input and label are the store's declaration; the rest applies to
// this connection only and may differ between opens.
struct StoreOptions {
    InputSpec input{};  // must match the declaration in an existing file
    LabelSpec label{};  // must match the declaration in an existing file
    Retention retention = Retention::unlimited();
    Durability durability = Durability::normal;
    std::chrono::milliseconds busy_timeout{5000};  // wait this long for another connection
    std::int64_t max_blob_bytes = 256 << 20;       // larger inputs/features/payloads/text rejected
    std::int64_t cache_bytes = 16 << 20;  // SQLite page cache of this connection (feature reads)
    std::int64_t max_pages =
        0;                   // 0 = unlimited; else PRAGMA max_page_count (simulates a full disk)
    bool read_only = false;  // open an existing store without write access
    // When the write-ahead log holds this many bytes it is checkpointed (its pages copied into
    // the database file, with an fsync before and after) and then reused from its start. The
    // default is 1000 pages of 16 KiB, SQLite's default auto-checkpoint.
    std::int64_t checkpoint_bytes = 1000 * 16384;
    // true: a thread of this store, with its own connection, copies the WAL in rounds of a
    // quarter of checkpoint_bytes while commits go on; at checkpoint_bytes the committing thread
    // copies the little that is left (the WAL may reach 2x while a round ends). false: the commit
    // that crosses checkpoint_bytes copies all of it and waits for both fsyncs (SQLite's
    // auto-checkpoint; no thread). Either way a commit survives exactly what `durability` says.
    // EDGETUNE_STORE_THREADS=0 in the environment keeps every store from starting that thread
    // (the writer copies all at checkpoint_bytes), for emulators with unreliable threads.
    bool background_checkpoints = true;
    // A writable store keeps a file `<path>-reserve` of this many bytes next to the database.
    // erase_ids() gives it up when the disk is full, so that an erasure (which needs room in
    // the -wal before anything is freed) still commits, and its checkpoint (which grows the
    // file by the pages the -wal added since the last one) completes; the next open that has
    // room recreates it. 0: no reserve.
    std::int64_t reserve_bytes = 256 << 10;
};

// One stored sample. `id` and (if 0) `created_at` are assigned by add().
// Invariant once stored: exactly one of input/tokens is non-empty and has the declared size;
// classes stores have label in [0, C) and an empty target; regression stores have label -1
// and a target of width W; weight is finite and >= 0; float values are finite.
struct Sample {
    std::int64_t id = 0;
    std::vector<float> input{};   // float_vector stores: [D]
    IdList tokens{};              // token_sequence stores: [L], each id >= 0
    std::int32_t label = -1;      // classes stores: class index
    std::vector<float> target{};  // regression stores: [W]
    float weight = 1.0f;
    std::int64_t created_at = 0;  // unix time in milliseconds; 0 on add = now
};

// Which columns a read returns. no_input skips the raw input blob (id, label, target, weight,
// created_at only), which is what a training loop over cached features needs.
enum class Fields { all, no_input };

enum class CheckpointKind { base, trained };

// Checkpoint metadata as listed. id, created_at and payload_bytes are assigned on save.
struct CheckpointInfo {
    std::int64_t id = 0;
    std::int64_t created_at = 0;  // unix ms
    CheckpointKind kind = CheckpointKind::trained;
    std::int64_t step = 0;
    std::string backbone_digest{};
    std::string metrics{};  // free text, usually JSON
    std::int64_t payload_bytes = 0;
};

struct StoredCheckpoint {
    CheckpointInfo info{};
    std::vector<std::uint8_t> payload{};  // usually encode_checkpoint() bytes
};

// One class of a classes store (schema v3). Labels are dense: the classes are 0 .. C-1, and
// removing class L shifts every label above L down by one (in the samples too), so a label is
// always a head column; the name is what identifies a class across removals.
struct ClassInfo {
    std::int32_t label = 0;
    std::string name{};           // unique, UTF-8, 1 to 256 bytes, no control characters
    std::int64_t created_at = 0;  // unix ms
    std::int64_t samples = 0;     // stored samples with this label
};

// One entry of the training log.
struct RunRecord {
    std::int64_t id = 0;
    std::int64_t created_at = 0;  // unix ms
    std::string report{};         // text / JSON
};

namespace detail {
class Db;  // the SQLite connection (detail/db.hpp, private)
}

// RAII write transaction. Every store method that writes joins an open Transaction (it becomes
// a savepoint), so a caller can group, e.g., save_checkpoint + set_meta + append_run:
//     auto tx = store.transaction(); ...; tx.commit();
// Rolled back by the destructor unless commit() ran. Must not outlive its store.
class Transaction {
public:
    Transaction(Transaction&& other) noexcept;
    Transaction& operator=(Transaction&&) = delete;
    ~Transaction();
    void commit();

private:
    friend class SampleStore;
    Transaction(detail::Db* db, int level) : db_(db), level_(level) {}
    detail::Db* db_;  // null once committed or moved from
    int level_;       // nesting depth this transaction opened (1 = outermost)
};

class SampleCursor;

struct ScanOptions {
    std::size_t batch = 256;
    std::int64_t after_id = 0;  // start after this id
    Fields fields = Fields::all;
};

// ---------------------------------------------------------------------------------------------
// SampleStore
// ---------------------------------------------------------------------------------------------

class SampleStore {
public:
    // add() returns this id when the retention policy (reservoir) did not keep the sample.
    static constexpr std::int64_t not_kept = 0;

    // Creates the file (mode 0600) and declares options.input/label, or opens and migrates an
    // existing store. Throws InvalidArgument if the file was declared differently,
    // StorageError if it is not a database or has a newer schema (the file is not modified).
    static SampleStore open(const std::string& path, const StoreOptions& options);

    SampleStore(SampleStore&&) noexcept;
    SampleStore& operator=(SampleStore&&) noexcept;
    ~SampleStore();

    const InputSpec& input_spec() const;
    const LabelSpec& label_spec() const;

    // --- samples ---
    // Validates and stores one sample; returns its id (or not_kept). Throws InvalidArgument
    // naming the field (NaN/Inf, wrong size, label out of range, negative token) and writes
    // nothing.
    std::int64_t add(const Sample& sample);
    // All or nothing, in one transaction; ids[i] belongs to samples[i]. With keep_newest, a
    // batch larger than the capacity keeps only its newest samples.
    std::vector<std::int64_t> add_batch(std::span<const Sample> samples);
    // The same, and `evicted` (cleared first) receives, ascending, every id the retention
    // policy deleted within this call: older samples, and samples of this batch that a
    // keep_newest or per_class_cap policy trimmed at once (their ids[i] are ids no longer
    // stored). So a caller knows what is stored without reading it back.
    std::vector<std::int64_t> add_batch(std::span<const Sample> samples,
                                        std::vector<std::int64_t>& evicted);
    // The same with an idempotency key (1 to 256 bytes), recorded in the same transaction: if
    // the key was recorded already (one of the newest add_keys_kept), nothing is added and the
    // ids of that first call are returned, so a retry after an error whose outcome is unknown
    // (see below) never stores a batch twice. Throws InvalidArgument if the key came with other
    // samples. Errors: InvalidArgument and CorruptData mean nothing was stored; a StorageError
    // whose message says "outcome unknown" failed while committing (an I/O error or a failed
    // fsync: the commit may have reached the disk), retry with the same key; any other
    // StorageError failed before the commit, and nothing was stored.
    std::vector<std::int64_t> add_batch(std::span<const Sample> samples,
                                        std::string_view idempotency_key);
    // Both: an idempotency key, and `evicted` as above (for a retry of a recorded key: those of
    // its ids that are no longer stored).
    std::vector<std::int64_t> add_batch(std::span<const Sample> samples,
                                        std::string_view idempotency_key,
                                        std::vector<std::int64_t>& evicted);
    static constexpr std::int64_t add_keys_kept = 10000;
    std::optional<Sample> get(std::int64_t id, Fields fields = Fields::all) const;
    // One Sample per id, in order. Throws InvalidArgument naming missing ids.
    std::vector<Sample> get_many(std::span<const std::int64_t> ids,
                                 Fields fields = Fields::all) const;
    std::int64_t count() const;
    // [C]: samples per class. classes stores only.
    std::vector<std::int64_t> count_per_label() const;
    SampleCursor scan(const ScanOptions& options = {}) const;

    // Id queries; every result is in ascending id order.
    // n ids drawn uniformly without replacement (all ids if n >= count()).
    std::vector<std::int64_t> sample_uniform(std::size_t n, Rng& rng) const;
    // The n newest ids.
    std::vector<std::int64_t> recent(std::size_t n) const;
    // Up to n ids per class drawn uniformly without replacement. classes stores only.
    std::vector<std::int64_t> sample_per_class(std::size_t n, Rng& rng) const;
    // Ids greater than after_id, at most limit of them.
    std::vector<std::int64_t> ids_after(std::int64_t after_id, std::size_t limit) const;
    // Up to n distinct ids drawn uniformly among the trained samples (id <= the watermark of
    // set_trained_upto; every sample when it was never set) that are not held out, ascending.
    // Costs O(draws x log N), never a pass over the store: the draw is over the slots that
    // retention keeps (FORMAT.md, schema v4), so which ids come out depends on the store's
    // history, the rng and n only.
    std::vector<std::int64_t> sample_trained(std::size_t n, Rng& rng) const;

    // --- the held-out set: ids a caller keeps out of training (a validation split) ---
    // Marks ids as held out; ids that are not stored are ignored. A mark goes with its sample.
    void hold_out(std::span<const std::int64_t> ids);
    // Every held-out id, ascending.
    std::vector<std::int64_t> held_out() const;
    // Drops every mark.
    void clear_held_out();

    // Test hook: the sample and feature rows every store of this process has read so far
    // (get, get_many, scan, get_features; not counts, ids or meta).
    static std::int64_t rows_read();

    // Deletes (with their cached features); returns how many existed.
    std::int64_t delete_ids(std::span<const std::int64_t> ids);
    // Erasure, a promise to the user: deletes the samples with their features and `meta`
    // writes in one transaction, then checkpoints the -wal into the database file, syncs it and
    // truncates the -wal (and syncs that), whatever the durability mode. Afterwards no byte of
    // an erased sample's input or features is left in the database, -wal or -shm
    // (secure_delete zeroes the freed pages), and a power cut cannot bring it back. On a full
    // disk the reserve file (StoreOptions::reserve_bytes) is given up and the erasure retried.
    // Not inside a Transaction. Returns how many of the ids existed. Throws StorageError if the
    // deletion failed (nothing erased) or, after it committed, if the checkpoint could not
    // complete (another connection kept reading): the samples are gone from every query, but
    // their bytes may remain in the -wal until the next erase_ids().
    std::int64_t erase_ids(std::span<const std::int64_t> ids,
                           std::span<const std::pair<std::string, std::string>> meta = {});
    // Gives up the reserve file to make room on a full disk (what erase_ids does by itself);
    // true if there was one. The next open with room recreates it.
    bool release_reserve();
    // Deletes samples with created_at < cutoff (unix ms); returns how many.
    std::int64_t delete_older_than(std::int64_t cutoff_ms);

    // --- classes (classes stores only; InvalidArgument otherwise) ---
    // label_spec().size is the live number of classes C; samples need a label in [0, C).
    // By label.
    std::vector<ClassInfo> classes() const;
    // Adds class C with this name and returns its label C. Throws InvalidArgument naming the
    // name if it is empty, longer than 256 bytes, not UTF-8, holds a control character or is
    // taken; nothing is written then.
    std::int32_t add_class(std::string_view name);
    // Throws InvalidArgument for an unknown label or a bad or taken name (as add_class).
    void rename_class(std::int32_t label, std::string_view name);
    // The label of the class with this name, if there is one.
    std::optional<std::int32_t> find_class(std::string_view name) const;
    // Erases the class: its samples with their features (durably, as erase_ids), the class
    // itself, shifts the labels above it down by one, writes `meta`, and runs `also` (further
    // writes through this store, e.g. rewritten checkpoints) all in the erasure's transaction.
    // Returns how many samples were erased. Throws InvalidArgument for an unknown label or if
    // it is the last class (nothing changes). Not inside a Transaction.
    std::int64_t remove_class(std::int32_t label,
                              std::span<const std::pair<std::string, std::string>> meta = {},
                              const std::function<void()>& also = {});

    // --- feature cache: one row per (sample, backbone digest) ---
    // values [ids.size() x F], finite; replaces existing rows; one transaction. Throws
    // InvalidArgument for an unknown sample id or an F that differs from the digest's rows.
    void put_features(std::string_view digest, std::span<const std::int64_t> ids,
                      const Matrix& values);
    // -> [ids.size() x F], row i for ids[i]. Throws InvalidArgument naming missing ids.
    Matrix get_features(std::string_view digest, std::span<const std::int64_t> ids) const;
    // Samples without features for `digest`, ascending, at most limit.
    std::vector<std::int64_t> ids_missing_features(std::string_view digest,
                                                   std::size_t limit) const;
    // Drops every feature row of `digest`; returns how many.
    std::int64_t drop_features(std::string_view digest);
    // Drops every feature row of any other digest; returns how many.
    std::int64_t keep_only_features(std::string_view digest);

    // --- checkpoints, meta, runs ---
    // Stores info.kind/step/backbone_digest/metrics with the payload; returns the new id.
    std::int64_t save_checkpoint(const CheckpointInfo& info, std::span<const std::uint8_t> payload);
    std::optional<StoredCheckpoint> latest_checkpoint(CheckpointKind kind) const;
    std::optional<StoredCheckpoint> get_checkpoint(std::int64_t id) const;
    // Metadata only, oldest first.
    std::vector<CheckpointInfo> list_checkpoints() const;
    // Deletes every checkpoint (base and trained) of `digest`; returns how many.
    std::int64_t drop_checkpoints(std::string_view digest);
    // Deletes every `trained` checkpoint but the newest keep_last; keeps every `base`.
    // Returns how many were deleted.
    std::int64_t prune_checkpoints(std::size_t keep_last);

    // Keys starting with "store." are reserved for the store itself (set_meta rejects them).
    std::optional<std::string> get_meta(std::string_view key) const;
    // Every (key, value) of the `meta` table of the store at `path`, sorted by key, read
    // without opening it as a store: no declaration needed, nothing written. What a tool reads
    // to learn how a store was set up before it opens it (the edgetune CLI). Throws StorageError
    // for a missing file, a file that is not an edgetune store, or a newer schema.
    static std::vector<std::pair<std::string, std::string>> read_meta(const std::string& path);
    // Samples with an id above `id` have not been trained on: Retention::reservoir never evicts
    // them (see Retention). Part of the caller's transaction when one is open.
    void set_trained_upto(std::int64_t id);
    void set_meta(std::string_view key, std::string_view value);

    std::int64_t append_run(std::string_view report);
    // The newest `last` runs, oldest first.
    std::vector<RunRecord> list_runs(std::size_t last = SIZE_MAX) const;

    // --- maintenance ---
    Transaction transaction();
    // PRAGMA integrity_check plus foreign_key_check: "ok", or the problems found, one a line.
    std::string integrity_check() const;

private:
    friend class SampleCursor;
    struct Impl;
    // erase_ids and remove_class: deletes, writes meta, runs `also`, then scrubs the -wal.
    std::int64_t erase(std::span<const std::int64_t> ids,
                       std::span<const std::pair<std::string, std::string>> meta,
                       std::string_view op, const std::function<void()>& also);
    void check_classes_store(std::string_view op) const;
    void check_label(std::int32_t label, std::string_view op) const;
    explicit SampleStore(std::unique_ptr<Impl> impl);
    std::unique_ptr<Impl> impl_;
};

// Iterates the samples in id order, `batch` at a time, by keyset pagination (WHERE id > last):
// memory is bounded by one batch, and samples added meanwhile with larger ids are seen.
//     std::vector<Sample> batch;
//     for (auto cursor = store.scan({.batch = 256}); cursor.next(batch);) ...
// Must not outlive its store (moving the store is fine).
class SampleCursor {
public:
    // Replaces `out` with the next batch; false (and `out` empty) when done.
    bool next(std::vector<Sample>& out);

private:
    friend class SampleStore;
    SampleCursor(SampleStore::Impl* impl, std::int64_t after_id, std::size_t batch, Fields fields)
        : impl_(impl), last_id_(after_id), batch_(batch), fields_(fields) {}
    SampleStore::Impl* impl_;
    std::int64_t last_id_;  // keyset: the next batch starts after this id
    std::size_t batch_;
    Fields fields_;
};

}  // namespace edgetune
