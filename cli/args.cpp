// args.cpp — command-line parsing of the `edgetune` tool: options and flags, numbers, id lists.
#include <algorithm>
#include <cfloat>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>

#include "cli.hpp"

namespace edgetune::cli {

Args::Args(int argc, char** argv, int first, const std::set<std::string>& options,
           const std::set<std::string>& flags) {
    for (int i = first; i < argc; ++i) {
        std::string arg = argv[i];
        if (arg.size() < 3 || arg.compare(0, 2, "--") != 0) {
            positional_.push_back(arg);
            continue;
        }
        std::string name = arg.substr(2);
        std::optional<std::string> value;
        if (const auto eq = name.find('='); eq != std::string::npos) {
            value = name.substr(eq + 1);
            name.resize(eq);
        }
        if (flags.count(name)) {
            if (value) throw UsageError("option '--" + name + "' takes no value");
            flags_.insert(name);
        } else if (options.count(name)) {
            if (!value) {
                if (i + 1 >= argc) throw UsageError("option '--" + name + "' needs a value");
                value = argv[++i];
            }
            values_[name] = *value;
        } else {
            throw UsageError("unknown option '--" + name + "'");
        }
    }
}

std::string trim(std::string_view s) {
    const auto begin = s.find_first_not_of(" \t\r");
    if (begin == std::string_view::npos) return "";
    const auto end = s.find_last_not_of(" \t\r");
    return std::string(s.substr(begin, end - begin + 1));
}

std::optional<std::int64_t> to_int(std::string_view s) {
    std::int64_t v = 0;
    const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
    if (ec != std::errc() || end != s.data() + s.size() || s.empty()) return std::nullopt;
    return v;
}

std::optional<float> to_float(std::string_view s) {
    // A leading '+' is accepted once: "+-1" and "++1" are not numbers.
    if (!s.empty() && s.front() == '+') {
        s.remove_prefix(1);
        if (!s.empty() && (s.front() == '-' || s.front() == '+')) return std::nullopt;
    }
    // Parsed as a double, then rounded to float: 1e-50 is a number (it underflows to 0), and
    // so is 1e39 (it overflows to inf, which the callers reject as not finite).
    double v = 0.0;
    const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
    if (s.empty() || end != s.data() + s.size()) return std::nullopt;
    if (ec == std::errc::result_out_of_range)
        v = std::strtod(std::string(s).c_str(), nullptr);  // 0 or a denormal, or +-HUGE_VAL
    else if (ec != std::errc())
        return std::nullopt;
    if (std::isfinite(v) && std::fabs(v) > static_cast<double>(FLT_MAX))
        return v > 0 ? std::numeric_limits<float>::infinity()
                     : -std::numeric_limits<float>::infinity();
    return static_cast<float>(v);
}

std::int64_t int_of(const std::string& name, const std::optional<std::string>& text,
                    std::int64_t fallback, std::int64_t min, std::int64_t max) {
    if (!text) return fallback;
    const auto v = to_int(*text);
    if (!v) throw UsageError("--" + name + ": expected an integer, got '" + *text + "'");
    if (*v < min || *v > max)
        throw UsageError("--" + name + " = " + *text + " must be >= " + std::to_string(min) +
                         (max < INT64_MAX ? " and <= " + std::to_string(max) : ""));
    return *v;
}

float float_of(const std::string& name, const std::optional<std::string>& text, float fallback) {
    if (!text) return fallback;
    const auto v = to_float(*text);
    if (!v || !std::isfinite(*v) || *v < 0.0f)
        throw UsageError("--" + name + ": expected a number >= 0, got '" + *text + "'");
    return *v;
}

std::int64_t int_option(const Args& args, const std::string& name, std::int64_t fallback,
                        std::int64_t min, std::int64_t max) {
    return int_of(name, args.get(name), fallback, min, max);
}

// At most this many ids in all: a range like 1-9223372036854775807 is refused before it is
// expanded, and so are many ranges that add up.
constexpr std::int64_t max_forget_ids = 10'000'000;

std::vector<std::int64_t> parse_ids(const std::vector<std::string>& items) {
    std::vector<std::int64_t> ids;
    std::int64_t total = 0;
    for (const std::string& item : items) {
        std::size_t start = 0;
        for (;;) {
            const std::size_t comma = item.find(',', start);
            const std::string part = trim(
                item.substr(start, comma == std::string::npos ? std::string::npos : comma - start));
            if (!part.empty()) {
                const auto dash = part.find('-', 1);
                const auto lo = to_int(part.substr(0, dash));
                const auto hi = dash == std::string::npos ? lo : to_int(part.substr(dash + 1));
                if (!lo || !hi || *lo <= 0 || *hi < *lo)
                    throw UsageError("bad sample id '" + part + "' (expected N or N-M, ids > 0)");
                // hi >= lo > 0, so hi - lo cannot overflow.
                if (*hi - *lo >= max_forget_ids - total)
                    throw UsageError("id range '" + part + "' makes more than " +
                                     std::to_string(max_forget_ids) + " ids");
                total += *hi - *lo + 1;
                for (std::int64_t id = *lo; id <= *hi; ++id) ids.push_back(id);
            }
            if (comma == std::string::npos) break;
            start = comma + 1;
        }
    }
    std::sort(ids.begin(), ids.end());
    ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
    return ids;
}

}  // namespace edgetune::cli
