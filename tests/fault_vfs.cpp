// fault_vfs.cpp — the FaultVfs shim (fault_vfs.hpp): sqlite3_vfs and sqlite3_io_methods that
// forward to the default VFS, with an undo log of unsynced writes per file and armed faults.
//
// Invariant: for every logged path, undoing its log entries newest first turns the real file
// back into its content as of its last sync (or of reset()). One mutex guards all state; the
// real I/O runs under it too, which serializes the connections of a test (simple, and enough).
#include "fault_vfs.hpp"

#include <sqlite3.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <map>
#include <mutex>
#include <vector>

#include "rng.hpp"

namespace edgetune_test {

namespace {

constexpr std::int64_t sector = 512;

// One unsynced change of a file: a write of `data` at `offset`, or (truncate) a truncation to
// `offset`. `old` holds the bytes it replaced, `old_size` the file size before it.
struct Change {
    bool truncate = false;
    std::int64_t offset = 0;
    std::vector<std::uint8_t> data;
    std::vector<std::uint8_t> old;
    std::int64_t old_size = 0;
};

struct State {
    std::mutex mu;
    sqlite3_vfs* real = nullptr;
    std::map<std::string, std::vector<Change>> logs;  // path -> changes since its last sync
    std::int64_t writes = 0, syncs = 0, reads = 0;
    std::int64_t cut_at = 0;  // 0: no power cut armed; else the write count that cuts
    bool cut = false;
    FaultVfs::Op fault_op = FaultVfs::Op::write;
    std::int64_t fault_at = 0;  // 0: none armed; else the count of fault_op that fails
    bool fault_fired = false;
    std::string quota_dir;
    std::int64_t quota = 0;
};

State& state() {
    static State s;
    return s;
}

// The shim's file: our methods, then the real VFS's file object right behind it.
struct ShimFile {
    sqlite3_file base;
    sqlite3_file* real;
    std::string* path;  // null: not logged (temporary files, -shm is never an xOpen'd file)
};

sqlite3_file* real_of(sqlite3_file* f) {
    return reinterpret_cast<ShimFile*>(f)->real;
}

// True if the armed fault of `op` fires now (counted by the caller first).
bool fault_now(State& s, FaultVfs::Op op, std::int64_t count) {
    if (s.fault_at == 0 || s.fault_op != op || count != s.fault_at) return false;
    s.fault_fired = true;
    return true;
}

std::int64_t file_size(sqlite3_file* real) {
    sqlite3_int64 size = 0;
    real->pMethods->xFileSize(real, &size);
    return size;
}

// Bytes [offset, offset + n) of the real file that exist (the part before its end).
std::vector<std::uint8_t> read_existing(sqlite3_file* real, std::int64_t offset, std::int64_t n) {
    const std::int64_t size = file_size(real);
    const std::int64_t have = std::clamp<std::int64_t>(size - offset, 0, n);
    std::vector<std::uint8_t> out(static_cast<std::size_t>(have));
    if (have > 0) real->pMethods->xRead(real, out.data(), static_cast<int>(have), offset);
    return out;
}

bool over_quota(State& s, std::int64_t growth) {
    if (s.quota <= 0 || growth <= 0) return false;
    std::int64_t used = 0;
    std::error_code ec;
    for (const auto& entry : std::filesystem::directory_iterator(s.quota_dir, ec))
        if (entry.is_regular_file(ec)) used += static_cast<std::int64_t>(entry.file_size(ec));
    return used + growth > s.quota;
}

// --- io methods ------------------------------------------------------------------------------

int shim_close(sqlite3_file* f) {
    auto* file = reinterpret_cast<ShimFile*>(f);
    const int rc = file->real->pMethods->xClose(file->real);
    delete file->path;
    file->path = nullptr;
    return rc;
}

int shim_read(sqlite3_file* f, void* buf, int n, sqlite3_int64 offset) {
    State& s = state();
    std::lock_guard lock(s.mu);
    if (reinterpret_cast<ShimFile*>(f)->path && fault_now(s, FaultVfs::Op::read, ++s.reads))
        return SQLITE_IOERR_READ;
    return real_of(f)->pMethods->xRead(real_of(f), buf, n, offset);
}

int shim_write(sqlite3_file* f, const void* buf, int n, sqlite3_int64 offset) {
    State& s = state();
    std::lock_guard lock(s.mu);
    auto* file = reinterpret_cast<ShimFile*>(f);
    if (!file->path) return file->real->pMethods->xWrite(file->real, buf, n, offset);
    ++s.writes;
    if (s.cut_at != 0 && s.writes >= s.cut_at) s.cut = true;
    if (s.cut) return SQLITE_IOERR_WRITE;
    if (fault_now(s, FaultVfs::Op::write, s.writes)) return SQLITE_IOERR_WRITE;
    const std::int64_t size = file_size(file->real);
    if (over_quota(s, offset + n - size)) return SQLITE_FULL;
    Change c;
    c.offset = offset;
    c.data.assign(static_cast<const std::uint8_t*>(buf), static_cast<const std::uint8_t*>(buf) + n);
    c.old = read_existing(file->real, offset, n);
    c.old_size = size;
    const int rc = file->real->pMethods->xWrite(file->real, buf, n, offset);
    if (rc == SQLITE_OK) s.logs[*file->path].push_back(std::move(c));
    return rc;
}

int shim_truncate(sqlite3_file* f, sqlite3_int64 size) {
    State& s = state();
    std::lock_guard lock(s.mu);
    auto* file = reinterpret_cast<ShimFile*>(f);
    if (!file->path) return file->real->pMethods->xTruncate(file->real, size);
    if (s.cut) return SQLITE_IOERR_TRUNCATE;
    Change c;
    c.truncate = true;
    c.offset = size;
    c.old_size = file_size(file->real);
    if (over_quota(s, size - c.old_size)) return SQLITE_FULL;
    c.old = read_existing(file->real, size, std::max<std::int64_t>(c.old_size - size, 0));
    const int rc = file->real->pMethods->xTruncate(file->real, size);
    if (rc == SQLITE_OK) s.logs[*file->path].push_back(std::move(c));
    return rc;
}

int shim_sync(sqlite3_file* f, int flags) {
    State& s = state();
    std::lock_guard lock(s.mu);
    auto* file = reinterpret_cast<ShimFile*>(f);
    if (!file->path) return file->real->pMethods->xSync(file->real, flags);
    ++s.syncs;
    if (s.cut) return SQLITE_IOERR_FSYNC;
    if (fault_now(s, FaultVfs::Op::sync, s.syncs)) return SQLITE_IOERR_FSYNC;
    // The real fsync is skipped: what a sync made durable is the log being cleared, and the
    // power-loss loops run thousands of scenarios.
    (void)flags;
    s.logs.erase(*file->path);
    return SQLITE_OK;
}

int shim_file_size(sqlite3_file* f, sqlite3_int64* size) {
    return real_of(f)->pMethods->xFileSize(real_of(f), size);
}
int shim_lock(sqlite3_file* f, int level) {
    return real_of(f)->pMethods->xLock(real_of(f), level);
}
int shim_unlock(sqlite3_file* f, int level) {
    return real_of(f)->pMethods->xUnlock(real_of(f), level);
}
int shim_check_reserved_lock(sqlite3_file* f, int* out) {
    return real_of(f)->pMethods->xCheckReservedLock(real_of(f), out);
}
int shim_file_control(sqlite3_file* f, int op, void* arg) {
    return real_of(f)->pMethods->xFileControl(real_of(f), op, arg);
}
int shim_sector_size(sqlite3_file* f) {
    return real_of(f)->pMethods->xSectorSize(real_of(f));
}
int shim_device_characteristics(sqlite3_file* f) {
    return real_of(f)->pMethods->xDeviceCharacteristics(real_of(f));
}
int shim_shm_map(sqlite3_file* f, int region, int size, int extend, void volatile** p) {
    return real_of(f)->pMethods->xShmMap(real_of(f), region, size, extend, p);
}
int shim_shm_lock(sqlite3_file* f, int offset, int n, int flags) {
    return real_of(f)->pMethods->xShmLock(real_of(f), offset, n, flags);
}
void shim_shm_barrier(sqlite3_file* f) {
    real_of(f)->pMethods->xShmBarrier(real_of(f));
}
int shim_shm_unmap(sqlite3_file* f, int delete_flag) {
    return real_of(f)->pMethods->xShmUnmap(real_of(f), delete_flag);
}

// Version 2: no xFetch, so SQLite never reads the database through a memory map.
const sqlite3_io_methods shim_methods = {
    2,
    &shim_close,
    &shim_read,
    &shim_write,
    &shim_truncate,
    &shim_sync,
    &shim_file_size,
    &shim_lock,
    &shim_unlock,
    &shim_check_reserved_lock,
    &shim_file_control,
    &shim_sector_size,
    &shim_device_characteristics,
    &shim_shm_map,
    &shim_shm_lock,
    &shim_shm_barrier,
    &shim_shm_unmap,
    nullptr,
    nullptr,
};

// --- vfs methods -----------------------------------------------------------------------------

int shim_open(sqlite3_vfs*, sqlite3_filename name, sqlite3_file* f, int flags, int* out_flags) {
    State& s = state();
    auto* file = reinterpret_cast<ShimFile*>(f);
    file->real = reinterpret_cast<sqlite3_file*>(file + 1);
    file->path = nullptr;
    const int rc = s.real->xOpen(s.real, name, file->real, flags, out_flags);
    if (rc != SQLITE_OK) {
        f->pMethods = nullptr;
        return rc;
    }
    const bool logged =
        name != nullptr &&
        (flags & (SQLITE_OPEN_MAIN_DB | SQLITE_OPEN_WAL | SQLITE_OPEN_MAIN_JOURNAL)) != 0;
    if (logged) file->path = new std::string(name);
    f->pMethods = &shim_methods;
    return SQLITE_OK;
}

int shim_delete(sqlite3_vfs*, const char* name, int sync_dir) {
    State& s = state();
    std::lock_guard lock(s.mu);
    if (s.cut) return SQLITE_IOERR_DELETE;
    s.logs.erase(name);
    return s.real->xDelete(s.real, name, sync_dir);
}

sqlite3_vfs& shim_vfs() {
    static sqlite3_vfs vfs = [] {
        State& s = state();
        sqlite3_initialize();
        s.real = sqlite3_vfs_find(nullptr);
        sqlite3_vfs v = *s.real;
        v.szOsFile = static_cast<int>(sizeof(ShimFile)) + s.real->szOsFile;
        v.pNext = nullptr;
        v.zName = "edgetune_fault";
        v.xOpen = &shim_open;
        v.xDelete = &shim_delete;
        return v;
    }();
    return vfs;
}

// --- power loss ----------------------------------------------------------------------------

// Rewrites `path` directly (POSIX, through the real VFS): undo all changes, then redo the ones
// that `keep` says survive, up to `torn_bytes` of the one marked torn.
void replay_file(const std::string& path, const std::vector<Change>& log, FaultVfs::Loss loss,
                 edgetune::Rng& rng) {
    State& s = state();
    auto* real = static_cast<sqlite3_file*>(sqlite3_malloc(s.real->szOsFile));
    int flags = 0;
    if (s.real->xOpen(s.real, path.c_str(), real, SQLITE_OPEN_READWRITE | SQLITE_OPEN_MAIN_DB,
                      &flags) != SQLITE_OK) {
        sqlite3_free(real);
        return;  // deleted since: nothing on disk to damage
    }
    const auto& m = *real->pMethods;
    for (auto it = log.rbegin(); it != log.rend(); ++it) {
        if (it->truncate) {
            m.xTruncate(real, it->old_size);
            if (!it->old.empty())
                m.xWrite(real, it->old.data(), static_cast<int>(it->old.size()), it->offset);
        } else {
            if (!it->old.empty())
                m.xWrite(real, it->old.data(), static_cast<int>(it->old.size()), it->offset);
            m.xTruncate(real, it->old_size);
        }
    }
    const std::size_t torn = log.empty() ? 0 : static_cast<std::size_t>(rng.below(log.size()));
    for (std::size_t i = 0; i < log.size(); ++i) {
        const Change& c = log[i];
        std::size_t bytes = c.data.size();
        if (loss == FaultVfs::Loss::drop) break;
        if (loss == FaultVfs::Loss::reorder && rng.below(2) == 0) continue;
        if (loss == FaultVfs::Loss::tear && i > torn) break;
        if (loss == FaultVfs::Loss::tear && i == torn) {
            // A prefix of whole sectors (relative to the file, as a disk writes them).
            const std::int64_t end = c.offset + static_cast<std::int64_t>(c.data.size());
            const std::int64_t first = (c.offset / sector + 1) * sector;
            const std::int64_t sectors = std::max<std::int64_t>((end - first) / sector, 0);
            const std::int64_t cut = first + sector * static_cast<std::int64_t>(rng.below(
                                                          static_cast<std::uint64_t>(sectors + 1)));
            bytes = static_cast<std::size_t>(
                std::clamp<std::int64_t>(cut - c.offset, 0, end - c.offset));
        }
        if (c.truncate)
            m.xTruncate(real, c.offset);
        else if (bytes > 0)
            m.xWrite(real, c.data.data(), static_cast<int>(bytes), c.offset);
    }
    m.xClose(real);
    sqlite3_free(real);
}

}  // namespace

void FaultVfs::install() {
    sqlite3_vfs_register(&shim_vfs(), 1);  // registering again only makes it the default
}

void FaultVfs::uninstall() {
    if (state().real != nullptr) sqlite3_vfs_register(state().real, 1);  // else never installed
}

void FaultVfs::reset() {
    State& s = state();
    std::lock_guard lock(s.mu);
    s.logs.clear();
    s.writes = s.syncs = s.reads = 0;
    s.cut_at = s.fault_at = 0;
    s.cut = s.fault_fired = false;
}

std::int64_t FaultVfs::writes() {
    std::lock_guard lock(state().mu);
    return state().writes;
}
std::int64_t FaultVfs::syncs() {
    std::lock_guard lock(state().mu);
    return state().syncs;
}
std::int64_t FaultVfs::reads() {
    std::lock_guard lock(state().mu);
    return state().reads;
}

void FaultVfs::arm_power_cut(std::int64_t nth_write) {
    State& s = state();
    std::lock_guard lock(s.mu);
    s.cut_at = s.writes + nth_write;
    s.cut = false;
}

bool FaultVfs::power_is_cut() {
    std::lock_guard lock(state().mu);
    return state().cut;
}

void FaultVfs::apply_power_loss(Loss loss, std::uint64_t seed) {
    State& s = state();
    std::map<std::string, std::vector<Change>> logs;
    {
        std::lock_guard lock(s.mu);
        logs.swap(s.logs);
    }
    edgetune::Rng rng(seed);
    for (const auto& [path, log] : logs) replay_file(path, log, loss, rng);
    reset();
}

void FaultVfs::arm_fault(Op op, std::int64_t nth) {
    State& s = state();
    std::lock_guard lock(s.mu);
    s.fault_op = op;
    s.fault_at = (op == Op::write ? s.writes : op == Op::sync ? s.syncs : s.reads) + nth;
    s.fault_fired = false;
}

bool FaultVfs::fault_fired() {
    std::lock_guard lock(state().mu);
    return state().fault_fired;
}

void FaultVfs::set_quota(const std::string& dir, std::int64_t bytes) {
    State& s = state();
    std::lock_guard lock(s.mu);
    s.quota_dir = dir;
    s.quota = bytes;
}

}  // namespace edgetune_test
