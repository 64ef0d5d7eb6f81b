// detail/db.hpp — private RAII layer over one SQLite connection (never included by a public
// header).
//
// Db owns the sqlite3 handle and a cache of prepared statements keyed by the address of the
// SQL constant in detail/sql.hpp (every statement is prepared once per connection). Stmt borrows a
// cached statement for one use and resets it on scope exit. TxGuard is the transaction guard
// used by every multi-statement write. Db::check() is the one place that turns SQLite result
// codes into StorageError. A writable store's Db may also own a Checkpointer (db.cpp): WAL
// checkpoints on a thread of its own.
#pragma once

#include "error.hpp"

#include <sqlite3.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>

namespace edgetune::detail {

class Checkpointer;

class Db {
public:
    // Opens an existing file (the caller creates it with the right mode). Throws StorageError.
    Db(const std::string& path, bool read_only, std::chrono::milliseconds busy_timeout);
    ~Db();
    Db(const Db&) = delete;
    Db& operator=(const Db&) = delete;

    // Throws StorageError "[what] <sqlite3_errmsg> (<code name>)" unless rc is OK/ROW/DONE;
    // DiskFull for SQLITE_FULL.
    void check(int rc, std::string_view what) const;
    // Copies the whole -wal into the database file, syncs it and truncates the -wal to zero
    // bytes, then syncs the -wal too (SQLite does not sync the truncation). Depth 0 only.
    // Throws StorageError if a reader or writer kept the checkpoint from completing.
    void checkpoint_truncate(std::string_view what);
    // The cached prepared statement for `sql` (a constant from detail/sql.hpp).
    sqlite3_stmt* prepare(const char* sql, std::string_view what);
    // Runs SQL text without caching it (schema scripts, pragmas with literal values).
    void exec(const std::string& sql, std::string_view what);
    std::int64_t last_insert_id() const { return sqlite3_last_insert_rowid(handle_); }
    std::int64_t changes() const { return sqlite3_changes64(handle_); }

    // Transactions nest: depth 0 -> BEGIN IMMEDIATE (takes the write lock up front, so the busy
    // timeout applies and a read never has to be upgraded); deeper -> SAVEPOINT.
    // begin() returns the new depth.
    int begin(std::string_view what);
    void commit(std::string_view what);
    // Undoes the innermost level. NOTE: SQLite rolls back the whole transaction by itself after
    // some errors (SQLITE_FULL, IOERR, ...); then there is nothing left to undo here, and an
    // outer commit() reports that the transaction is gone.
    void rollback() noexcept;
    int depth() const { return depth_; }

    // A read transaction: one snapshot and one WAL read lock for many statements, instead of
    // one of each per statement (a measurable cost per lookup). Only at depth 0.
    void begin_read(std::string_view what);
    void end_read() noexcept;

    // Moves this connection's WAL checkpoints to a thread with its own connection to the same
    // file (Checkpointer in db.cpp); the WAL is rewound at about `wal_frames`. Call once, after
    // the file is in WAL mode; `sync_full` is the store's synchronous level (FULL, else NORMAL),
    // which the checkpoints keep.
    void checkpoint_in_background(bool sync_full, int wal_frames);

private:
    std::unique_ptr<Checkpointer> checkpointer_;  // stopped before handle_ closes
    sqlite3* handle_ = nullptr;
    std::unordered_map<const char*, sqlite3_stmt*> statements_;
    int depth_ = 0;
};

// A cached statement borrowed for one use. Bind indexes are 1-based, columns 0-based.
class Stmt {
public:
    Stmt(Db& db, const char* sql, std::string_view what)
        : db_(db), stmt_(db.prepare(sql, what)), what_(what) {}
    ~Stmt() {
        sqlite3_reset(stmt_);
        sqlite3_clear_bindings(stmt_);
    }
    Stmt(const Stmt&) = delete;
    Stmt& operator=(const Stmt&) = delete;

    Stmt& bind(int i, std::int64_t v) { return checked(sqlite3_bind_int64(stmt_, i, v)); }
    Stmt& bind(int i, double v) { return checked(sqlite3_bind_double(stmt_, i, v)); }
    Stmt& bind(int i, std::string_view v) {
        return checked(
            sqlite3_bind_text(stmt_, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT));
    }
    // NOTE: the bytes are not copied; they must stay alive until the next step()/reset().
    Stmt& bind_blob(int i, std::span<const std::uint8_t> v) {
        // A null pointer would bind NULL, not an empty blob.
        static constexpr std::uint8_t empty = 0;
        return checked(
            sqlite3_bind_blob64(stmt_, i, v.empty() ? &empty : v.data(), v.size(), SQLITE_STATIC));
    }
    Stmt& bind_null(int i) { return checked(sqlite3_bind_null(stmt_, i)); }

    // The raw result code, for callers that map a specific code (a foreign key) themselves.
    int step_rc() { return sqlite3_step(stmt_); }
    // True while a row is available; throws on error.
    bool step() {
        const int rc = sqlite3_step(stmt_);
        db_.check(rc, what_);
        return rc == SQLITE_ROW;
    }
    // Runs a statement that returns no rows.
    void run() { step(); }
    // Rewinds for another execution with the same bindings (loops over ids).
    void reset() { sqlite3_reset(stmt_); }

    bool is_null(int col) const { return sqlite3_column_type(stmt_, col) == SQLITE_NULL; }
    std::int64_t int64(int col) const { return sqlite3_column_int64(stmt_, col); }
    double real(int col) const { return sqlite3_column_double(stmt_, col); }
    std::string text(int col) const {
        const auto* p = reinterpret_cast<const char*>(sqlite3_column_text(stmt_, col));
        return p ? std::string(p, static_cast<std::size_t>(sqlite3_column_bytes(stmt_, col)))
                 : std::string();
    }
    // Valid until the next step()/reset().
    std::span<const std::uint8_t> blob(int col) const {
        const auto* p = static_cast<const std::uint8_t*>(sqlite3_column_blob(stmt_, col));
        return {p, p ? static_cast<std::size_t>(sqlite3_column_bytes(stmt_, col)) : 0};
    }
    std::string_view what() const { return what_; }

private:
    Stmt& checked(int rc) {
        db_.check(rc, what_);
        return *this;
    }
    Db& db_;
    sqlite3_stmt* stmt_;
    std::string_view what_;
};

// Guard for a multi-statement read: joins an open transaction, else holds a read transaction.
class ReadGuard {
public:
    ReadGuard(Db& db, std::string_view what) : db_(db), active_(db.depth() == 0) {
        if (active_) db_.begin_read(what);
    }
    ~ReadGuard() {
        if (active_) db_.end_read();
    }
    ReadGuard(const ReadGuard&) = delete;
    ReadGuard& operator=(const ReadGuard&) = delete;

private:
    Db& db_;
    bool active_;
};

// Guard for an internal multi-statement write: joins an open transaction as a savepoint;
// rolls back its level unless commit() ran.
class TxGuard {
public:
    TxGuard(Db& db, std::string_view what) : db_(db), what_(what) { db_.begin(what_); }
    ~TxGuard() {
        if (!done_) db_.rollback();
    }
    TxGuard(const TxGuard&) = delete;
    TxGuard& operator=(const TxGuard&) = delete;
    void commit() {
        db_.commit(what_);
        done_ = true;
    }

private:
    Db& db_;
    std::string_view what_;
    bool done_ = false;
};

}  // namespace edgetune::detail
