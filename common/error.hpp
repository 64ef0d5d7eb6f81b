// error.hpp — the exception hierarchy shared by every edgetune module.
//
// Messages name the operation and show the offending shapes or values, e.g.
//   "[cross_entropy] label 12 out of range for 10 classes".
// The C++ API reports failures only through these types; `assert` guards internal invariants.
#pragma once

#include "export.hpp"

#include <stdexcept>
#include <string>

namespace EDGETUNE_API edgetune {

// Base of every error the library throws on purpose.
class Error : public std::runtime_error {
public:
    explicit Error(const std::string& what) : std::runtime_error(what) {}
};

// The caller passed something the operation cannot accept (shape, range, NaN, option value).
class InvalidArgument : public Error {
public:
    using Error::Error;
};

// Bytes read back (a checkpoint, a backbone file, a blob) fail validation.
class CorruptData : public Error {
public:
    using Error::Error;
};

// The database or file system refused an operation (full disk, read-only file, I/O error).
class StorageError : public Error {
public:
    using Error::Error;
};

// The disk (or StoreOptions::max_pages) is full: the failed write stored nothing; deleting
// data, or SampleStore::release_reserve(), makes room.
class DiskFull : public StorageError {
public:
    using StorageError::StorageError;
};

// Training produced a non-finite loss or parameter.
class DivergedError : public Error {
public:
    using Error::Error;
};

}  // namespace edgetune
