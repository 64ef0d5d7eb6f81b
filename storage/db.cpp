// db.cpp — the SQLite connection: open/close, the statement cache, check() and nested
// transactions. See db.hpp.
#include "db.hpp"

#include "sql.hpp"

#include <fmt/format.h>

namespace edgetune::detail {

Db::Db(const std::string& path, bool read_only, std::chrono::milliseconds busy_timeout) {
    // NOMUTEX: a connection is used by one thread at a time (storage.hpp says so); the
    // statement cache is not thread-safe either.
    const int flags =
        (read_only ? SQLITE_OPEN_READONLY : SQLITE_OPEN_READWRITE) | SQLITE_OPEN_NOMUTEX;
    const int rc = sqlite3_open_v2(path.c_str(), &handle_, flags, nullptr);
    if (rc != SQLITE_OK) {
        const std::string message =
            fmt::format("[sample_store.open] cannot open '{}': {} (SQLite code {})", path,
                        handle_ ? sqlite3_errmsg(handle_) : "out of memory", rc);
        sqlite3_close(handle_);  // a handle is returned even on failure
        throw StorageError(message);
    }
    sqlite3_extended_result_codes(handle_, 1);
    sqlite3_busy_timeout(handle_, static_cast<int>(busy_timeout.count()));
}

Db::~Db() {
    for (auto& [sql, stmt] : statements_) sqlite3_finalize(stmt);
    // sqlite3_close (not _v2): every statement is finalized above, so this cannot be busy.
    sqlite3_close(handle_);
}

void Db::check(int rc, std::string_view what) const {
    if (rc == SQLITE_OK || rc == SQLITE_ROW || rc == SQLITE_DONE) return;
    // sqlite3_errmsg describes the most recent failure on this connection, which is this one.
    throw StorageError(fmt::format("[{}] {} (SQLite code {})", what, sqlite3_errmsg(handle_), rc));
}

sqlite3_stmt* Db::prepare(const char* sql, std::string_view what) {
    auto it = statements_.find(sql);
    if (it != statements_.end()) return it->second;
    sqlite3_stmt* stmt = nullptr;
    check(sqlite3_prepare_v3(handle_, sql, -1, SQLITE_PREPARE_PERSISTENT, &stmt, nullptr), what);
    statements_.emplace(sql, stmt);
    return stmt;
}

void Db::exec(const std::string& sql, std::string_view what) {
    check(sqlite3_exec(handle_, sql.c_str(), nullptr, nullptr, nullptr), what);
}

int Db::begin(std::string_view what) {
    // NOTE: BEGIN IMMEDIATE succeeds on a read-only connection; only the first write would fail.
    if (depth_ == 0 && sqlite3_db_readonly(handle_, "main") == 1)
        throw StorageError(fmt::format("[{}] the store is open read-only", what));
    Stmt(*this, depth_ == 0 ? sql::begin_immediate : sql::savepoint, what).run();
    return ++depth_;
}

void Db::commit(std::string_view what) {
    // On failure depth_ is unchanged: the caller's guard then calls rollback().
    Stmt(*this, depth_ == 1 ? sql::commit : sql::release, what).run();
    --depth_;
}

void Db::rollback() noexcept {
    if (depth_ == 0) return;
    --depth_;
    if (sqlite3_get_autocommit(handle_)) return;  // SQLite already rolled everything back
    // Errors are ignored: this runs on an error path, often in a destructor, and ROLLBACK only
    // fails when SQLite has already abandoned the transaction.
    sqlite3_exec(handle_, depth_ == 0 ? sql::rollback : sql::rollback_to, nullptr, nullptr,
                 nullptr);
}

void Db::begin_read(std::string_view what) {
    Stmt(*this, sql::begin_deferred, what).run();
}

void Db::end_read() noexcept {
    // Ending a transaction that wrote nothing cannot lose data; errors are ignored, but the
    // connection must not be left inside it.
    if (sqlite3_exec(handle_, sql::commit, nullptr, nullptr, nullptr) != SQLITE_OK &&
        !sqlite3_get_autocommit(handle_))
        sqlite3_exec(handle_, sql::rollback, nullptr, nullptr, nullptr);
}

}  // namespace edgetune::detail
