// test_file_power_loss.cpp — power cuts on the write path of files written outside SQLite
// (write_file_atomic: export's head file, Backbone::save), through a simulated disk.
//
// SimDisk stands in for the system calls of write_file_atomic (storage/detail/file_ops.hpp). It
// keeps, per file, the bytes written (volatile) and the bytes last fsynced (durable), and per
// directory the entries as renamed (volatile) and as of the last directory fsync (durable). A
// cut after the k-th call leaves every combination a real disk may: each file's durable bytes,
// its volatile bytes, or the durable bytes torn into the volatile ones at a 512-byte sector;
// the durable or the volatile directory entries. In each, the target must hold exactly its old
// or exactly its new content. The same check on a write path without the fsync before the
// rename (a known-bad order) must find a torn file, so the check can fail.
#include <doctest/doctest.h>

#include <fcntl.h>

#include <cstdio>
#include <cstring>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "detail/file_ops.hpp"
#include "personalize.hpp"
#include "test_util.hpp"

using namespace edgetune;
using namespace edgetune_test;

namespace {

using Bytes = std::vector<std::uint8_t>;

struct SimDisk {
    struct File {
        Bytes volatile_bytes, durable_bytes;
    };
    std::vector<File> files;                               // by inode
    std::map<std::string, int> volatile_dir, durable_dir;  // name -> inode
    std::map<int, int> fds;                                // fd -> inode (-1: the directory)
    int next_fd = 1000, calls = 0, cut_after = -1, temp_counter = 0;
    bool skip_file_fsync = false;  // the known-bad write path
    bool cut() { return cut_after >= 0 && ++calls > cut_after; }
};

SimDisk* disk = nullptr;

int sim_make_temp(char* t) {
    if (disk->cut()) return errno = EIO, -1;
    char suffix[8];
    std::snprintf(suffix, sizeof suffix, "%06d", disk->temp_counter++ % 1000000);
    std::string name(t);
    name.replace(name.size() - 6, 6, suffix);  // the template's XXXXXX, same length
    std::memcpy(t, name.data(), name.size());
    disk->files.push_back({});
    disk->volatile_dir[name] = static_cast<int>(disk->files.size()) - 1;
    disk->fds[disk->next_fd] = static_cast<int>(disk->files.size()) - 1;
    return disk->next_fd++;
}
ssize_t sim_write(int fd, const void* data, std::size_t size) {
    if (disk->cut()) return errno = EIO, -1;
    // Writes in pieces of at most 700 bytes, so a file's data takes several calls.
    const std::size_t n = std::min<std::size_t>(size, 700);
    Bytes& b = disk->files[static_cast<std::size_t>(disk->fds.at(fd))].volatile_bytes;
    b.insert(b.end(), static_cast<const std::uint8_t*>(data),
             static_cast<const std::uint8_t*>(data) + n);
    return static_cast<ssize_t>(n);
}
int sim_fsync(int fd) {
    if (disk->cut()) return errno = EIO, -1;
    const int inode = disk->fds.at(fd);
    if (inode < 0)
        disk->durable_dir = disk->volatile_dir;
    else if (!disk->skip_file_fsync)
        disk->files[static_cast<std::size_t>(inode)].durable_bytes =
            disk->files[static_cast<std::size_t>(inode)].volatile_bytes;
    return 0;
}
int sim_close(int fd) {
    if (disk->fds.erase(fd) == 0) return ::close(fd);  // not one of ours
    return 0;
}
int sim_rename(const char* from, const char* to) {
    if (disk->cut()) return errno = EIO, -1;
    const auto it = disk->volatile_dir.find(from);
    if (it == disk->volatile_dir.end()) return errno = ENOENT, -1;
    disk->volatile_dir[to] = it->second;
    disk->volatile_dir.erase(from);
    return 0;
}
int sim_unlink(const char* path) {
    disk->volatile_dir.erase(path);
    return 0;
}
int sim_open_directory(const char*) {
    if (disk->cut()) return errno = EIO, -1;
    disk->fds[disk->next_fd] = -1;
    return disk->next_fd++;
}

// Installs the simulated calls for one scope.
struct SimScope {
    detail::FileOps saved = detail::file_ops();
    SimScope() {
        detail::file_ops() = {.make_temp = sim_make_temp,
                              .write = sim_write,
                              .fsync = sim_fsync,
                              .close = sim_close,
                              .rename = sim_rename,
                              .unlink = sim_unlink,
                              .open_directory = sim_open_directory};
    }
    ~SimScope() { detail::file_ops() = saved; }
};

// Every content `path` can have after a power cut in the state `d`; "" when it does not exist.
std::vector<Bytes> after_power_cut(const SimDisk& d, const std::string& path) {
    std::vector<Bytes> out;
    for (const auto* dir : {&d.durable_dir, &d.volatile_dir}) {
        const auto it = dir->find(path);
        if (it == dir->end()) {
            out.push_back(Bytes{});
            continue;
        }
        const SimDisk::File& f = d.files[static_cast<std::size_t>(it->second)];
        out.push_back(f.durable_bytes);
        out.push_back(f.volatile_bytes);
        for (std::size_t at = 512; at < f.volatile_bytes.size(); at += 512) {  // torn at a sector
            Bytes torn(f.volatile_bytes.begin(), f.volatile_bytes.begin() + at);
            if (f.durable_bytes.size() > at)
                torn.insert(torn.end(), f.durable_bytes.begin() + at, f.durable_bytes.end());
            out.push_back(torn);
        }
    }
    return out;
}

// Runs `write` (which writes `fresh` to `path`) with a cut after each call in turn, from a disk
// where `path` holds `old` durably; returns the number of cuts and the contents that were
// neither old nor new.
std::pair<int, int> cut_everywhere(const std::string& path, const Bytes& old, const Bytes& fresh,
                                   bool bad_order, const std::function<void()>& write) {
    int cuts = 0, bad = 0;
    for (int k = 0;; ++k) {
        SimDisk d;
        d.skip_file_fsync = bad_order;
        d.files.push_back({old, old});
        d.volatile_dir[path] = d.durable_dir[path] = 0;
        d.cut_after = k;
        disk = &d;
        bool completed = true;
        {
            SimScope scope;
            try {
                write();
            } catch (const StorageError&) {
                completed = false;  // the cut, seen by the caller as an I/O error
            }
        }
        disk = nullptr;
        ++cuts;
        for (const Bytes& content : after_power_cut(d, path))
            if (content != old && content != fresh) ++bad;
        if (completed) break;  // this k cut after the last call: every cut point is covered
    }
    return {cuts, bad};
}

}  // namespace

TEST_CASE("power loss in write_file_atomic: the file is its old or its new content, never a mix") {
    const std::string path = "/sim/head.etk";
    int total = 0;
    for (const std::size_t size :
         {std::size_t{0}, std::size_t{1}, std::size_t{512}, std::size_t{3000}}) {
        Bytes old(1500, 0xaa), fresh(size);
        for (std::size_t i = 0; i < size; ++i) fresh[i] = static_cast<std::uint8_t>(i * 7 + 1);
        const auto [cuts, bad] =
            cut_everywhere(path, old, fresh, false, [&] { write_file_atomic(path, fresh); });
        INFO("new size " << size);
        CHECK(cuts >= 5);
        CHECK(bad == 0);
        total += cuts;
    }
    std::printf("file power loss: write_file_atomic, %d cuts over 4 sizes, 0 mixed files\n", total);
}

TEST_CASE("power loss in write_file_atomic: the check finds a path that renames before fsync") {
    const std::string path = "/sim/head.etk";
    const Bytes old(1500, 0xaa), fresh(3000, 0x55);
    const auto [cuts, bad] =
        cut_everywhere(path, old, fresh, true, [&] { write_file_atomic(path, fresh); });
    CHECK(cuts >= 5);
    CHECK(bad > 0);  // without the fsync before the rename, a cut leaves an empty or torn file
    std::printf(
        "file power loss: renaming before fsync (a known-bad order), %d cuts, %d mixed "
        "or empty files found\n",
        cuts, bad);
}

TEST_CASE("power loss in Backbone::save: a backbone file is its old or its new model") {
    Rng rng(1);
    BackboneNet a({.input = InputSpec::float_vector(8), .hidden = {16}}, rng);
    BackboneNet b({.input = InputSpec::float_vector(8), .hidden = {16}}, rng);
    const auto old_model = Backbone::freeze(a), new_model = Backbone::freeze(b);
    // The bytes each writes, taken through the simulated disk itself.
    auto bytes_of = [](const Backbone& m) {
        SimDisk d;
        disk = &d;
        {
            SimScope scope;
            m.save("/sim/bytes.etb");
        }
        disk = nullptr;
        return d.files[static_cast<std::size_t>(d.volatile_dir.at("/sim/bytes.etb"))]
            .volatile_bytes;
    };
    const Bytes old = bytes_of(*old_model), fresh = bytes_of(*new_model);
    REQUIRE(old != fresh);
    const auto [cuts, bad] = cut_everywhere("/sim/backbone.etb", old, fresh, false,
                                            [&] { new_model->save("/sim/backbone.etb"); });
    CHECK(bad == 0);
    std::printf("file power loss: Backbone::save, %d cuts, 0 mixed files\n", cuts);
}
