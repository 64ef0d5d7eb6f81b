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

// --- classes ---------------------------------------------------------------------------------
inline constexpr char insert_class[] =
    "INSERT INTO classes(label, name, created_at) VALUES (?1, ?2, ?3)";
inline constexpr char count_classes[] = "SELECT count(*) FROM classes";
inline constexpr char select_classes[] =
    "SELECT c.label, c.name, c.created_at, "
    "(SELECT count(*) FROM samples s WHERE s.label = c.label) FROM classes c ORDER BY c.label";
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
    "INSERT INTO samples(created_at, label, target, weight, input) VALUES (?1, ?2, ?3, ?4, ?5)";
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
inline constexpr char count_samples[] = "SELECT count(*) FROM samples";
inline constexpr char count_samples_upto[] = "SELECT count(*) FROM samples WHERE id <= ?1";
inline constexpr char count_per_label[] =
    "SELECT label, count(*) FROM samples WHERE label IS NOT NULL GROUP BY label";
inline constexpr char select_all_ids[] = "SELECT id FROM samples ORDER BY id";
inline constexpr char select_ids_of_label[] = "SELECT id FROM samples WHERE label = ?1 ORDER BY id";
inline constexpr char select_recent_ids[] =
    "SELECT id FROM (SELECT id FROM samples ORDER BY id DESC LIMIT ?1) ORDER BY id";
inline constexpr char select_ids_after[] =
    "SELECT id FROM samples WHERE id > ?1 ORDER BY id LIMIT ?2";
inline constexpr char select_id_at_offset[] =
    "SELECT id FROM samples ORDER BY id LIMIT 1 OFFSET ?1";
inline constexpr char delete_sample[] = "DELETE FROM samples WHERE id = ?1";
inline constexpr char delete_samples_before[] = "DELETE FROM samples WHERE created_at < ?1";
// Keeps the ?1 + 1 highest ids; returns the deleted ids.
inline constexpr char trim_to_newest[] =
    "DELETE FROM samples WHERE id < "
    "(SELECT id FROM samples ORDER BY id DESC LIMIT 1 OFFSET ?1) RETURNING id";
// Keeps the ?2 + 1 highest ids of class ?1; returns the deleted ids.
inline constexpr char trim_class_to_newest[] =
    "DELETE FROM samples WHERE label = ?1 AND id < "
    "(SELECT id FROM samples WHERE label = ?1 ORDER BY id DESC LIMIT 1 OFFSET ?2) RETURNING id";

// --- features ------------------------------------------------------------------------------
inline constexpr char upsert_feature[] =
    "INSERT INTO features(sample_id, backbone_digest, value) VALUES (?1, ?2, ?3) "
    "ON CONFLICT (backbone_digest, sample_id) DO UPDATE SET value = excluded.value";
inline constexpr char select_feature[] =
    "SELECT value FROM features WHERE backbone_digest = ?1 AND sample_id = ?2";
inline constexpr char select_features_in_range[] =
    "SELECT sample_id, value FROM features WHERE backbone_digest = ?1 "
    "AND sample_id BETWEEN ?2 AND ?3 ORDER BY sample_id";
inline constexpr char select_feature_bytes[] =
    "SELECT length(value) FROM features WHERE backbone_digest = ?1 LIMIT 1";
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
