// db.cpp — the SQLite connection: open/close, the statement cache, check(), nested
// transactions and the background WAL checkpointer. See detail/db.hpp.
#include "detail/db.hpp"

#include "detail/sql.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <cassert>
#include <climits>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <system_error>
#include <thread>

namespace edgetune::detail {

// --- Checkpointer ------------------------------------------------------------------------------
//
// SQLite's auto-checkpoint runs inside the COMMIT that takes the WAL past its threshold: it
// fsyncs the WAL, copies the newest version of each page into the database file, fsyncs that,
// and the next transaction reuses the WAL from its start. In the ingest benchmark (100 commits
// of 100 samples of 784 floats; 1000 frames of WAL every ~33 commits) that made three commits
// take ~35 ms each, mostly waiting for the two fsyncs: half of the wall time.
//
// Here the writer's WAL hook replaces the auto-checkpoint. Each time a quarter of the threshold
// has been added to the WAL it only signals: a thread with its own connection runs a PASSIVE
// checkpoint (which never blocks the writer or a reader) while the writer goes on committing.
// It is the same checkpoint (same fsyncs in the same order, at the store's synchronous level)
// on another thread, and commits are untouched: what a commit survives does not change.
//
// NOTE: a checkpoint only copies frames. The WAL is reused from its start by the first write
// transaction that begins after a checkpoint copied ALL of it, which a writer that never pauses
// does not allow: the background stays a round behind and the WAL would grow without bound. So
// at the threshold the writer copies what is left itself, at most the frames of about one round,
// and its next transaction rewinds the WAL. If a round is running then, the writer goes on
// until it ends (it shortens what is left), and waits for it only at twice the threshold.
class Checkpointer {
public:
    // `restart_frames`: the WAL size (frames) at which the writer has it rewound.
    Checkpointer(std::string path, bool sync_full, int restart_frames)
        : path_(std::move(path)),
          sync_full_(sync_full),
          round_frames_(std::max(1, restart_frames / 4)),
          restart_frames_(restart_frames) {}
    ~Checkpointer() {
        {
            std::lock_guard lock(mutex_);
            stop_ = true;
        }
        wake_.notify_all();
        if (thread_.joinable()) thread_.join();
    }
    Checkpointer(const Checkpointer&) = delete;
    Checkpointer& operator=(const Checkpointer&) = delete;

    // The writer's WAL hook, after each commit; `frames` = frames now in the WAL.
    void after_commit(sqlite3* writer, int frames) noexcept {
        std::unique_lock lock(mutex_);
        if (frames < wal_frames_) wal_frames_ = copied_ = 0;  // rewound since the last round
        if (frames >= restart_frames_) {
            if (running_ && frames < 2 * restart_frames_) return;  // the round shortens the tail
            idle_.wait(lock, [&] { return !running_; });
            running_ = true;
            requested_ = false;  // this copies everything; a round now would only get in the way
            lock.unlock();
            sqlite3_wal_checkpoint_v2(writer, "main", SQLITE_CHECKPOINT_PASSIVE, nullptr, nullptr);
            lock.lock();
            running_ = false;
            return;
        }
        if (no_thread_ || running_ || frames - copied_ < round_frames_) return;
        if (!thread_.joinable()) {
            try {
                thread_ = std::thread([this] { run(); });
            } catch (const std::exception&) {  // system_error, or bad_alloc for its state
                no_thread_ = true;  // the writer checkpoints, as with SQLite's auto-checkpoint
                return;
            }
        }
        requested_ = true;
        wake_.notify_one();
    }

private:
    void run() noexcept {
        sqlite3* db = nullptr;
        // A read is needed before a checkpoint: it makes the fresh connection open the WAL.
        const bool ready =
            sqlite3_open_v2(path_.c_str(), &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX,
                            nullptr) == SQLITE_OK &&
            sqlite3_exec(db, sync_full_ ? sql::synchronous_full : sql::synchronous_normal, nullptr,
                         nullptr, nullptr) == SQLITE_OK &&
#if defined(__APPLE__)  // the store's connection does the same (sample_store.cpp)
            (!sync_full_ ||
             sqlite3_exec(db, sql::fullfsync_on, nullptr, nullptr, nullptr) == SQLITE_OK) &&
#endif
            sqlite3_exec(db, sql::get_user_version, nullptr, nullptr, nullptr) == SQLITE_OK;
        std::unique_lock lock(mutex_);
        no_thread_ = !ready;
        while (ready) {
            wake_.wait(lock, [&] { return stop_ || (requested_ && !running_); });
            if (stop_) break;
            requested_ = false;
            running_ = true;
            lock.unlock();
            int frames = -1, copied = -1;
            const int rc =
                sqlite3_wal_checkpoint_v2(db, "main", SQLITE_CHECKPOINT_PASSIVE, &frames, &copied);
            lock.lock();
            running_ = false;
            if (rc == SQLITE_OK && frames >= 0) {
                wal_frames_ = frames;
                copied_ = copied;
            }
            idle_.notify_all();
        }
        lock.unlock();
        sqlite3_close(db);  // also after a failed open, which returns a handle too
    }

    const std::string path_;
    const bool sync_full_;
    const int round_frames_;
    const int restart_frames_;
    std::mutex mutex_;  // guards the state below; thread_ is started under it, joined unlocked
    std::condition_variable wake_, idle_;
    bool requested_ = false;  // the writer wants a background round
    bool running_ = false;    // a checkpoint is running, on either thread
    bool stop_ = false;
    // No background connection: only the writer checkpoints. Also set by
    // EDGETUNE_STORE_THREADS=0, for emulators whose threads are unreliable (Debian 12's
    // qemu-user 7.2 can hang in std::thread; scripts/test.sh's aarch64 pass sets it).
    bool no_thread_ = [] {
        const char* v = std::getenv("EDGETUNE_STORE_THREADS");
        return v != nullptr && std::strcmp(v, "0") == 0;
    }();
    int wal_frames_ = 0;  // frames in the WAL and frames copied, as of the last round
    int copied_ = 0;
    std::thread thread_;
};

namespace {

// sqlite3_wal_hook callback of the writer. Returns OK: the commit itself has succeeded.
int on_wal_commit(void* checkpointer, sqlite3* db, const char* /*schema*/, int frames) {
    static_cast<Checkpointer*>(checkpointer)->after_commit(db, frames);
    return SQLITE_OK;
}

}  // namespace

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
    if (checkpointer_) {
        sqlite3_wal_hook(handle_, nullptr, nullptr);
        checkpointer_.reset();  // its connection closes first: this one, the last, checkpoints
    }
    for (auto& [sql, stmt] : statements_) sqlite3_finalize(stmt);
    // sqlite3_close (not _v2): every statement is finalized above, so this cannot be busy.
    sqlite3_close(handle_);
}

void Db::checkpoint_in_background(bool sync_full, int wal_frames) {
    assert(!checkpointer_ && wal_frames >= 1 && wal_frames <= INT_MAX / 2);
    // The absolute path SQLite resolved at open: a later chdir() cannot redirect the thread.
    checkpointer_ =
        std::make_unique<Checkpointer>(sqlite3_db_filename(handle_, "main"), sync_full, wal_frames);
    sqlite3_wal_hook(handle_, &on_wal_commit, checkpointer_.get());  // replaces auto-checkpoint
}

void Db::check(int rc, std::string_view what) const {
    if (rc == SQLITE_OK || rc == SQLITE_ROW || rc == SQLITE_DONE) return;
    // sqlite3_errmsg describes the most recent failure on this connection, which is this one.
    const std::string message =
        fmt::format("[{}] {} (SQLite code {})", what, sqlite3_errmsg(handle_), rc);
    if ((rc & 0xff) == SQLITE_FULL) throw DiskFull(message);
    throw StorageError(message);
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
    if (depth_ > 1) {
        Stmt(*this, sql::release, what).run();
    } else {
        const int rc = Stmt(*this, sql::commit, what).step_rc();
        // NOTE: an I/O error here (a failed write of the -wal, a failed fsync) may come after
        // the commit reached the disk: SQLite then finds it stored at the next open.
        if (rc != SQLITE_DONE && rc != SQLITE_OK && rc != SQLITE_ROW) {
            const bool io = (rc & 0xff) == SQLITE_IOERR;
            if (!io) check(rc, what);
            throw StorageError(
                fmt::format("[{}] {} (SQLite code {}){}", what, sqlite3_errmsg(handle_), rc,
                            io ? "; outcome unknown: the commit may be stored, retry with the same "
                                 "idempotency key"
                               : ""));
        }
    }
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

void Db::checkpoint_truncate(std::string_view what) {
    assert(depth_ == 0);
    int frames = -1, copied = -1;
    check(sqlite3_wal_checkpoint_v2(handle_, "main", SQLITE_CHECKPOINT_TRUNCATE, &frames, &copied),
          what);
    // TRUNCATE returns OK with the frame counts when it could not complete; 0 frames = done.
    if (frames != 0)
        throw StorageError(
            fmt::format("[{}] the WAL checkpoint stopped after {} of {} frames: "
                        "another connection is reading",
                        what, copied, frames));
    const std::string wal = sqlite3_filename_wal(sqlite3_db_filename(handle_, "main"));
    const int fd = ::open(wal.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return;  // no -wal file: nothing to sync
    const int rc = ::fsync(fd);
    const int err = errno;
    ::close(fd);
    if (rc != 0)
        throw StorageError(fmt::format("[{}] fsync of '{}' failed: {}", what, wal,
                                       std::error_code(err, std::generic_category()).message()));
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
