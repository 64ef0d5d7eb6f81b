// fault_vfs.hpp — a test-only SQLite VFS over the default one that records writes and syncs and
// injects faults: a simulated power cut, a failing N-th write/sync/read, a full disk.
//
// While installed it is SQLite's default VFS, so every connection the code under test opens
// (its own, the background checkpointer's, a training run's) goes through it. Each write to a
// database or -wal file is passed through to the real file, after the bytes it overwrites have
// been saved: per file, the writes and truncations since the file's last sync form an undo log.
//
// A power cut (arm_power_cut) happens at the N-th write from the arming: that write and every
// later write, sync, truncation and deletion fails with SQLITE_IOERR and changes nothing, as
// if the machine had stopped. Once the code under test has closed its connections,
// apply_power_loss() turns the files on disk into what a disk could hold after the cut: the
// unsynced writes of each file are all dropped, or an arbitrary subset of them survives (the
// disk reordered them), or they survive up to one that is torn at a sector boundary.
// The -shm file is not logged: SQLite rebuilds it when the first connection opens.
#pragma once

#include <cstdint>
#include <string>

namespace edgetune_test {

class FaultVfs {
public:
    enum class Op { write, sync, read };
    enum class Loss {
        drop,     // every write since the file's last sync is lost
        reorder,  // each of them independently survives or not
        tear,     // they survive in order up to a random one, of which a prefix of sectors
                  // survives; the later ones are lost
    };

    // Registers the shim (once) and makes it the default VFS until uninstall().
    static void install();
    // Makes the real VFS the default again (the normal VFS for reopening and checking).
    static void uninstall();

    // Forgets every undo log (the files as they are now count as synced) and the counters,
    // and disarms every fault.
    static void reset();
    static std::int64_t writes();  // xWrite calls on database / -wal files since reset()
    static std::int64_t syncs();
    static std::int64_t reads();

    // The n-th write from now (1 = the next one) cuts the power.
    static void arm_power_cut(std::int64_t nth_write);
    static bool power_is_cut();
    // Applies `loss` (randomized by `seed`) to every logged file, then reset().
    // Call after every connection is closed.
    static void apply_power_loss(Loss loss, std::uint64_t seed);

    // The n-th `op` from now fails once with SQLITE_IOERR_{WRITE,FSYNC,READ}.
    static void arm_fault(Op op, std::int64_t nth);
    static bool fault_fired();

    // A full disk: a write or truncation that would make the regular files of `dir` hold more
    // than `bytes` in all fails with SQLITE_FULL. 0 bytes: no limit.
    static void set_quota(const std::string& dir, std::int64_t bytes);
};

// Installs the shim for a scope and resets it; uninstalls it again at the end.
struct FaultVfsScope {
    FaultVfsScope() {
        FaultVfs::install();
        FaultVfs::reset();
    }
    ~FaultVfsScope() {
        FaultVfs::reset();
        FaultVfs::set_quota("", 0);
        FaultVfs::uninstall();
    }
    FaultVfsScope(const FaultVfsScope&) = delete;
    FaultVfsScope& operator=(const FaultVfsScope&) = delete;
};

}  // namespace edgetune_test
