// detail/sql.hpp — every SQL string of storage/, and nothing else (private header).
//
// Each statement is an inline constant, so it has one address: Db caches its prepared form
// keyed by that address. Parameters are ?N placeholders; PRAGMAs that take a literal value are
// prefixes that the caller completes with an integer.
#pragma once

namespace edgetune::sql {

// --- connection setup ----------------------------------------------------------------------
inline constexpr char get_user_version[] = "PRAGMA user_version";
inline constexpr char set_user_version_prefix[] = "PRAGMA user_version = ";
inline constexpr char count_schema_objects[] = "SELECT count(*) FROM sqlite_schema";
inline constexpr char foreign_keys_on[] = "PRAGMA foreign_keys = ON";
inline constexpr char secure_delete_on[] = "PRAGMA secure_delete = ON";
inline constexpr char journal_mode_wal[] = "PRAGMA journal_mode = WAL";
inline constexpr char synchronous_normal[] = "PRAGMA synchronous = NORMAL";
inline constexpr char synchronous_full[] = "PRAGMA synchronous = FULL";
// Apple only (Durability::full): fsync there leaves writes in the drive's cache; F_FULLFSYNC
// flushes it. Implies checkpoint_fullfsync.
inline constexpr char fullfsync_on[] = "PRAGMA fullfsync = ON";
inline constexpr char max_page_count_prefix[] = "PRAGMA max_page_count = ";
inline constexpr char cache_size_kib_prefix[] = "PRAGMA cache_size = ";  // negative: KiB
inline constexpr char page_size_16k[] = "PRAGMA page_size = 16384";
inline constexpr char get_page_size[] = "PRAGMA page_size";
inline constexpr char wal_autocheckpoint_prefix[] = "PRAGMA wal_autocheckpoint = ";  // frames
inline constexpr char integrity_check[] = "PRAGMA integrity_check";
inline constexpr char foreign_key_check[] = "PRAGMA foreign_key_check";

// --- transactions --------------------------------------------------------------------------
inline constexpr char begin_immediate[] = "BEGIN IMMEDIATE";
inline constexpr char begin_deferred[] = "BEGIN DEFERRED";
inline constexpr char commit[] = "COMMIT";
inline constexpr char rollback[] = "ROLLBACK";
inline constexpr char savepoint[] = "SAVEPOINT nested";
inline constexpr char release[] = "RELEASE nested";
inline constexpr char rollback_to[] = "ROLLBACK TO nested; RELEASE nested";

// --- schema, one script per version ----------------------------------------------------------
// v1. samples.input is the raw input (float32 [D] or int32 [L], little-endian); label is the
// class (NULL in regression stores), target the float32 [W] regression target (NULL in classes
// stores). AUTOINCREMENT: ids are never reused, so keyset cursors and "ids after" stay valid
// across deletes. features is WITHOUT ROWID keyed by (digest, sample) so a lookup is one seek.
inline constexpr char schema_v1[] = R"(
CREATE TABLE samples(
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at INTEGER NOT NULL,
    label INTEGER,
    target BLOB,
    weight REAL NOT NULL,
    input BLOB NOT NULL
);
CREATE INDEX samples_by_label ON samples(label, id);
CREATE INDEX samples_by_time ON samples(created_at);
CREATE TABLE features(
    sample_id INTEGER NOT NULL REFERENCES samples(id) ON DELETE CASCADE,
    backbone_digest TEXT NOT NULL,
    value BLOB NOT NULL,
    PRIMARY KEY (backbone_digest, sample_id)
) WITHOUT ROWID;
CREATE INDEX features_by_sample ON features(sample_id);
CREATE TABLE checkpoints(
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at INTEGER NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('base', 'trained')),
    step INTEGER NOT NULL,
    backbone_digest TEXT NOT NULL,
    metrics TEXT NOT NULL,
    payload BLOB NOT NULL
);
CREATE INDEX checkpoints_by_kind ON checkpoints(kind, id);
CREATE TABLE meta(
    key TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE runs(
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at INTEGER NOT NULL,
    report TEXT NOT NULL
);
)";

// v2: idempotency keys of add_batch (the newest ones; see SampleStore::add_batch). `ids` is
// the int64 ids returned, little-endian; `batch_hash` identifies the samples the key came with.
inline constexpr char schema_v2[] = R"(
CREATE TABLE add_keys(
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE,
    batch_hash TEXT NOT NULL,
    ids BLOB NOT NULL
);
)";
inline constexpr char select_add_key[] = "SELECT batch_hash, ids FROM add_keys WHERE key = ?1";
inline constexpr char insert_add_key[] =
    "INSERT INTO add_keys(key, batch_hash, ids) VALUES (?1, ?2, ?3)";
// Keeps the ?1 newest keys.
inline constexpr char trim_add_keys[] =
    "DELETE FROM add_keys WHERE seq <= (SELECT max(seq) FROM add_keys) - ?1";

// v3. A classes store's classes as data: label is the dense class index [0, C) that samples
// reference (remove_class shifts the labels above the removed one down by one, in samples and
// here, so labels stay dense and equal to head columns); name is the app's unique UTF-8 name.
// Filled with "0".."C-1" by the migration (see migrate() in sample_store.cpp).
// NOTE: label is not UNIQUE on purpose: the shift-down UPDATE would trip a per-row check.
inline constexpr char schema_v3[] = R"(
CREATE TABLE classes(
    label INTEGER NOT NULL,
    name TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL
);
CREATE INDEX classes_by_label ON classes(label);
)";

// v4: what retention and counting need without scanning the store, kept by the schema itself.
// The slot index is partial (slot IS NOT NULL), so a sample that holds no slot (not trained on
// yet) costs no index entry; every query of it says `slot IS NOT NULL` or `slot = ?`.
//   * samples.slot: the samples a reservoir may evict (id <= store.trained_upto, or every sample
//     when that key is absent) hold the dense slots 0 .. K-1, in no particular order; the others
//     hold NULL. A reservoir eviction draws a slot and deletes the one sample that holds it: one
//     index seek. A sample that leaves the slots (deleted, or unslotted when the watermark moves
//     down) hands its slot to the holder of the highest one, so the slots stay dense.
//   * meta store.samples: the number of stored samples.
//   * classes.samples: the number of stored samples of each class.
//   * meta store.features <digest>: the number of its cached feature rows, so "does any sample
//     lack features" is a comparison of two counts (features rows always belong to a stored
//     sample and there is at most one per digest and sample).
// The triggers keep all of it on every delete, whatever statement does it (the cascade from
// samples to features too). Samples and features are inserted in one place each,
// insert_samples() and put_features() in sample_store.cpp, which give slots and add to the
// counts once per batch (a trigger per inserted row costs about as much as the insert).
// NOTE: an UPDATE of samples.label (remove_class's shift) leaves classes.samples alone: the
// shifted class rows keep their counts, which is right because their samples shift with them.
inline constexpr char schema_v4[] = R"(
ALTER TABLE samples ADD COLUMN slot INTEGER;
ALTER TABLE classes ADD COLUMN samples INTEGER NOT NULL DEFAULT 0;
CREATE UNIQUE INDEX samples_by_slot ON samples(slot) WHERE slot IS NOT NULL;
CREATE TRIGGER samples_uncounted AFTER DELETE ON samples BEGIN
    UPDATE meta SET value = CAST(value AS INTEGER) - 1 WHERE key = 'store.samples';
    UPDATE classes SET samples = samples - 1 WHERE label = old.label;
    UPDATE samples SET slot = old.slot
        WHERE old.slot IS NOT NULL AND slot > old.slot
          AND slot = (SELECT max(slot) FROM samples WHERE slot IS NOT NULL);
END;
CREATE TRIGGER samples_unslotted AFTER UPDATE OF slot ON samples
    WHEN old.slot IS NOT NULL AND new.slot IS NULL BEGIN
    UPDATE samples SET slot = old.slot
        WHERE slot > old.slot AND slot = (SELECT max(slot) FROM samples WHERE slot IS NOT NULL);
END;
CREATE TRIGGER features_uncounted AFTER DELETE ON features BEGIN
    UPDATE meta SET value = CAST(value AS INTEGER) - 1
        WHERE key = 'store.features ' || old.backbone_digest;
END;
CREATE TABLE held_out(
    sample_id INTEGER PRIMARY KEY REFERENCES samples(id) ON DELETE CASCADE
);
)";
// The v4 data of an older store (migrate() in sample_store.cpp): the counts, then the slots of
// the samples up to ?1 (the watermark, or the largest int64 when there is none) in id order.
inline constexpr char fill_sample_count[] =
    "INSERT INTO meta(key, value) VALUES ('store.samples', (SELECT count(*) FROM samples)) "
    "ON CONFLICT (key) DO UPDATE SET value = excluded.value";
inline constexpr char fill_feature_counts[] =
    "INSERT INTO meta(key, value) "
    "SELECT 'store.features ' || backbone_digest, count(*) FROM features GROUP BY backbone_digest";
inline constexpr char fill_class_counts[] =
    "UPDATE classes SET samples = (SELECT count(*) FROM samples s WHERE s.label = classes.label)";
// Slots ?3, ?3 + 1, ... to the samples with ?1 < id <= ?2, in id order.
inline constexpr char slot_range[] =
    "UPDATE samples SET slot = r.k FROM (SELECT id, ?3 + row_number() OVER (ORDER BY id) - 1 AS k "
    "FROM samples WHERE id > ?1 AND id <= ?2) AS r WHERE samples.id = r.id";
inline constexpr char slotted_ids_above[] =
    "SELECT id FROM samples WHERE id > ?1 AND slot IS NOT NULL ORDER BY id DESC";
inline constexpr char unslot_sample[] = "UPDATE samples SET slot = NULL WHERE id = ?1";
inline constexpr char slot_count[] =
    "SELECT coalesce(max(slot), -1) + 1 FROM samples WHERE slot IS NOT NULL";
// Deletes the sample holding slot ?1; returns its id.
inline constexpr char delete_slot[] = "DELETE FROM samples WHERE slot = ?1 RETURNING id";
inline constexpr char id_at_slot[] = "SELECT id FROM samples WHERE slot = ?1";

// --- the held-out set (v4) -------------------------------------------------------------------
inline constexpr char insert_held_out[] = "INSERT OR IGNORE INTO held_out(sample_id) VALUES (?1)";
inline constexpr char select_held_out[] = "SELECT sample_id FROM held_out ORDER BY sample_id";
inline constexpr char is_held_out[] = "SELECT 1 FROM held_out WHERE sample_id = ?1";
inline constexpr char clear_held_out[] = "DELETE FROM held_out";

// --- classes ---------------------------------------------------------------------------------
inline constexpr char insert_class[] =
    "INSERT INTO classes(label, name, created_at) VALUES (?1, ?2, ?3)";
inline constexpr char count_classes[] = "SELECT count(*) FROM classes";
inline constexpr char select_classes[] =
    "SELECT label, name, created_at, samples FROM classes ORDER BY label";
inline constexpr char select_class_by_name[] = "SELECT label FROM classes WHERE name = ?1";
inline constexpr char rename_class[] = "UPDATE classes SET name = ?2 WHERE label = ?1";
inline constexpr char delete_class[] = "DELETE FROM classes WHERE label = ?1";
inline constexpr char shift_class_labels[] =
    "UPDATE classes SET label = label - 1 WHERE label > ?1";
inline constexpr char shift_sample_labels[] =
    "UPDATE samples SET label = label - 1 WHERE label > ?1";

// --- samples -------------------------------------------------------------------------------
// Column order of every sample read: id, created_at, label, target, weight[, input].
inline constexpr char insert_sample[] =
    "INSERT INTO samples(created_at, label, target, weight, input, slot) "
    "VALUES (?1, ?2, ?3, ?4, ?5, ?6)";
// What an insert_samples batch adds to the counts (schema v4).
inline constexpr char add_sample_count[] =
    "UPDATE meta SET value = CAST(value AS INTEGER) + ?1 WHERE key = 'store.samples'";
inline constexpr char add_class_count[] =
    "UPDATE classes SET samples = samples + ?2 WHERE label = ?1";
inline constexpr char set_slot[] = "UPDATE samples SET slot = ?1 WHERE id = ?2";
inline constexpr char select_sample[] =
    "SELECT id, created_at, label, target, weight, input FROM samples WHERE id = ?1";
inline constexpr char select_sample_no_input[] =
    "SELECT id, created_at, label, target, weight FROM samples WHERE id = ?1";
inline constexpr char select_samples_after[] =
    "SELECT id, created_at, label, target, weight, input FROM samples WHERE id > ?1 "
    "ORDER BY id LIMIT ?2";
inline constexpr char select_samples_after_no_input[] =
    "SELECT id, created_at, label, target, weight FROM samples WHERE id > ?1 "
    "ORDER BY id LIMIT ?2";
inline constexpr char count_per_label[] = "SELECT label, samples FROM classes";
inline constexpr char class_count[] = "SELECT samples FROM classes WHERE label = ?1";
inline constexpr char select_all_ids[] = "SELECT id FROM samples ORDER BY id";
inline constexpr char select_ids_of_label[] = "SELECT id FROM samples WHERE label = ?1 ORDER BY id";
inline constexpr char select_recent_ids[] =
    "SELECT id FROM (SELECT id FROM samples ORDER BY id DESC LIMIT ?1) ORDER BY id";
inline constexpr char select_ids_after[] =
    "SELECT id FROM samples WHERE id > ?1 ORDER BY id LIMIT ?2";
inline constexpr char delete_sample[] = "DELETE FROM samples WHERE id = ?1";
inline constexpr char delete_samples_before[] = "DELETE FROM samples WHERE created_at < ?1";
// Deletes the ?1 lowest ids; returns them.
inline constexpr char delete_oldest[] =
    "DELETE FROM samples WHERE id IN (SELECT id FROM samples ORDER BY id LIMIT ?1) RETURNING id";
// Deletes the ?2 lowest ids of class ?1; returns them.
inline constexpr char delete_oldest_of_class[] =
    "DELETE FROM samples WHERE id IN "
    "(SELECT id FROM samples WHERE label = ?1 ORDER BY id LIMIT ?2) RETURNING id";

// --- features ------------------------------------------------------------------------------
// put_features: insert, or (no change) replace the value; then the batch's new rows counted.
inline constexpr char insert_feature[] =
    "INSERT OR IGNORE INTO features(sample_id, backbone_digest, value) VALUES (?1, ?2, ?3)";
inline constexpr char update_feature[] =
    "UPDATE features SET value = ?3 WHERE backbone_digest = ?2 AND sample_id = ?1";
// The counts are meta rows (the page every add writes anyway): one WAL page less per commit.
inline constexpr char add_feature_count[] =
    "INSERT INTO meta(key, value) VALUES ('store.features ' || ?1, ?2) "
    "ON CONFLICT (key) DO UPDATE SET value = CAST(value AS INTEGER) + excluded.value";
inline constexpr char select_feature[] =
    "SELECT value FROM features WHERE backbone_digest = ?1 AND sample_id = ?2";
inline constexpr char select_features_in_range[] =
    "SELECT sample_id, value FROM features WHERE backbone_digest = ?1 "
    "AND sample_id BETWEEN ?2 AND ?3 ORDER BY sample_id";
inline constexpr char select_feature_bytes[] =
    "SELECT length(value) FROM features WHERE backbone_digest = ?1 LIMIT 1";
inline constexpr char feature_rows_of_digest[] =
    "SELECT coalesce((SELECT CAST(value AS INTEGER) FROM meta "
    "WHERE key = 'store.features ' || ?1), 0)";
inline constexpr char select_ids_missing_features[] =
    "SELECT s.id FROM samples s WHERE NOT EXISTS "
    "(SELECT 1 FROM features f WHERE f.backbone_digest = ?1 AND f.sample_id = s.id) "
    "ORDER BY s.id LIMIT ?2";
inline constexpr char delete_features_of_digest[] =
    "DELETE FROM features WHERE backbone_digest = ?1";
inline constexpr char delete_features_except_digest[] =
    "DELETE FROM features WHERE backbone_digest <> ?1";

// --- checkpoints ---------------------------------------------------------------------------
// Column order of every checkpoint read: id, created_at, kind, step, backbone_digest, metrics,
// length(payload)[, payload].
inline constexpr char insert_checkpoint[] =
    "INSERT INTO checkpoints(created_at, kind, step, backbone_digest, metrics, payload) "
    "VALUES (?1, ?2, ?3, ?4, ?5, ?6)";
inline constexpr char select_latest_checkpoint[] =
    "SELECT id, created_at, kind, step, backbone_digest, metrics, length(payload), payload "
    "FROM checkpoints WHERE kind = ?1 ORDER BY id DESC LIMIT 1";
inline constexpr char select_checkpoint[] =
    "SELECT id, created_at, kind, step, backbone_digest, metrics, length(payload), payload "
    "FROM checkpoints WHERE id = ?1";
inline constexpr char list_checkpoints[] =
    "SELECT id, created_at, kind, step, backbone_digest, metrics, length(payload) "
    "FROM checkpoints ORDER BY id";
inline constexpr char delete_checkpoints_of_digest[] =
    "DELETE FROM checkpoints WHERE backbone_digest = ?1";
// Keeps every 'base' and the ?1 newest 'trained'.
inline constexpr char prune_checkpoints[] =
    "DELETE FROM checkpoints WHERE kind = 'trained' AND id NOT IN "
    "(SELECT id FROM checkpoints WHERE kind = 'trained' ORDER BY id DESC LIMIT ?1)";

// --- meta and runs -------------------------------------------------------------------------
inline constexpr char select_meta[] = "SELECT value FROM meta WHERE key = ?1";
inline constexpr char select_all_meta[] = "SELECT key, value FROM meta ORDER BY key";
inline constexpr char upsert_meta[] =
    "INSERT INTO meta(key, value) VALUES (?1, ?2) "
    "ON CONFLICT (key) DO UPDATE SET value = excluded.value";
inline constexpr char insert_run[] = "INSERT INTO runs(created_at, report) VALUES (?1, ?2)";
inline constexpr char select_last_runs[] =
    "SELECT id, created_at, report FROM "
    "(SELECT id, created_at, report FROM runs ORDER BY id DESC LIMIT ?1) ORDER BY id";

}  // namespace edgetune::sql
