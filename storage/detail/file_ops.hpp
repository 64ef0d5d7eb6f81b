// detail/file_ops.hpp — the system calls of write_file_atomic, as a table (private to storage/).
//
// By default they are the POSIX calls. tests/test_reliability.cpp puts a simulated disk in
// their place, one that at a "power cut" keeps only what was fsynced (file data, and directory
// entries once the directory is fsynced), to check that a checkpoint or backbone file is
// always either its old or its new content. Nothing else may change the table.
#pragma once

#include <sys/types.h>

#include <cstddef>

namespace edgetune::detail {

struct FileOps {
    int (*make_temp)(char* path_template);  // mkostemp(t, O_CLOEXEC), mode 0600
    ssize_t (*write)(int fd, const void* data, std::size_t size);
    int (*fsync)(int fd);
    int (*close)(int fd);
    int (*rename)(const char* from, const char* to);
    int (*unlink)(const char* path);
    int (*open_directory)(const char* path);  // open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
};

// The table write_file_atomic calls through; the POSIX calls unless a test replaced them.
FileOps& file_ops();

}  // namespace edgetune::detail
