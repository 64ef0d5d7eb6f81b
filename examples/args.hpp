// args.hpp — the examples' "--flag [value]" command lines, walked one argument at a time.
//
//   for (Args a(argc, argv); a.next();) {
//       if (a.is("--small")) small = true;
//       else if (a.is("--out")) out = a.text();
//       else return usage();
//   }
#pragma once

#include <cstdlib>
#include <string>

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
    int integer() { return std::atoi(text().c_str()); }
    long long integer64() { return std::atoll(text().c_str()); }
    float real() { return std::strtof(text().c_str(), nullptr); }

private:
    int argc_;
    char** argv_;
    int at_ = 0;  // argv_[0] is the program
    std::string arg_;
};

}  // namespace examples
