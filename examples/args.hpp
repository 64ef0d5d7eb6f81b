// args.hpp — the examples' "--flag [value]" command lines, walked one argument at a time.
//
//   for (Args a(argc, argv); a.next();) {
//       if (a.is("--small")) small = true;
//       else if (a.is("--out")) out = a.text();
//       else if (a.is("--epochs")) epochs = a.integer();  // "--epochs x" throws
//       else return usage();
//   }
#pragma once

#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <string>
#include <system_error>

#include "error.hpp"

namespace examples {

class Args {
public:
    Args(int argc, char** argv) : argc_(argc), argv_(argv) {}
    // Moves to the next argument; false when there is none.
    bool next() {
        if (++at_ >= argc_) return false;
        arg_ = argv_[at_];
        return true;
    }
    bool is(const char* name) const { return arg_ == name; }
    // The value after the current flag; throws InvalidArgument when it is missing.
    std::string text() {
        if (at_ + 1 >= argc_) throw edgetune::InvalidArgument(arg_ + " needs a value");
        return argv_[++at_];
    }
    // The value as a number; the whole value must be one (`--epochs x` or `--lr 1e-3x` is an
    // InvalidArgument naming the flag and the value, never a silent 0).
    int integer() {
        return static_cast<int>(whole_number(std::numeric_limits<int>::min(),
                                             std::numeric_limits<int>::max(), "an integer"));
    }
    long long integer64() {
        return whole_number(std::numeric_limits<long long>::min(),
                            std::numeric_limits<long long>::max(), "an integer");
    }
    float real() {
        const std::string v = text();
        char* end = nullptr;
        errno = 0;
        const float f = std::strtof(v.c_str(), &end);
        if (v.empty() || end != v.c_str() + v.size() || errno == ERANGE || !std::isfinite(f))
            throw bad_value(v, "a finite number");
        return f;
    }

private:
    long long whole_number(long long lo, long long hi, const char* what) {
        const std::string v = text();
        long long n = 0;
        const auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), n);
        if (v.empty() || ec != std::errc() || end != v.data() + v.size() || n < lo || n > hi)
            throw bad_value(v, what);
        return n;
    }
    edgetune::InvalidArgument bad_value(const std::string& v, const char* what) const {
        return edgetune::InvalidArgument(arg_ + ": expected " + what + ", got '" + v + "'");
    }

    int argc_;
    char** argv_;
    int at_ = 0;  // argv_[0] is the program
    std::string arg_;
};

}  // namespace examples
