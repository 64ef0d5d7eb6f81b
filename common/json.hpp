// json.hpp — the one JSON writer and reader of edgetune (header-only): the training log and
// checkpoint metrics (TrainReport::to_json / from_json), the CLI, the bench's results and the
// examples' --json lines all write through these functions.
//
// Writer: json_string() quotes and escapes; json_number() writes %.6g (or a fixed number of
// decimals), and null for NaN/Inf, which JSON cannot spell.
// Reader: parse_json() reads one complete JSON value (RFC 8259, UTF-8 passed through; \u
// escapes below 0x80 only, which is all the writer produces) into a Json tree. Malformed input
// throws CorruptData("[json] ... at byte N"). Depth is limited to 64 so hostile input cannot
// exhaust the stack.
#pragma once

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "error.hpp"

namespace edgetune {

// ---- writer ---------------------------------------------------------------------------------

inline std::string json_string(std::string_view s) {
    std::string out = "\"";
    for (char c : s) {
        if (c == '"' || c == '\\') {
            out += '\\';
            out += c;
        } else if (c == '\n') {
            out += "\\n";
        } else if (static_cast<unsigned char>(c) < 0x20) {
            char buf[8];
            std::snprintf(buf, sizeof buf, "\\u%04x", static_cast<unsigned>(c));
            out += buf;
        } else {
            out += c;
        }
    }
    return out + "\"";
}

// %.6g, or `decimals` digits after the point when decimals >= 0; null for NaN/Inf.
inline std::string json_number(double v, int decimals = -1) {
    if (!std::isfinite(v)) return "null";
    char buf[64];
    if (decimals >= 0)
        std::snprintf(buf, sizeof buf, "%.*f", decimals, v);
    else
        std::snprintf(buf, sizeof buf, "%.6g", v);
    return buf;
}

// ---- reader ---------------------------------------------------------------------------------

// A parsed JSON value. Invariant: only the member of `kind` is meaningful.
struct Json {
    enum class Kind { null, boolean, number, string, array, object };
    Kind kind = Kind::null;
    bool boolean = false;
    double number = 0.0;
    std::string string;
    std::vector<Json> array;
    std::map<std::string, Json, std::less<>> object;

    // The member `key` of an object, or nullptr (also when this is not an object).
    const Json* find(std::string_view key) const {
        if (kind != Kind::object) return nullptr;
        const auto it = object.find(key);
        return it == object.end() ? nullptr : &it->second;
    }
};

namespace json_detail {

class Parser {
public:
    explicit Parser(std::string_view text) : s_(text) {}

    Json document() {
        Json v = value(0);
        space();
        if (at_ != s_.size()) fail("trailing characters");
        return v;
    }

private:
    [[noreturn]] void fail(const std::string& what) const {
        throw CorruptData("[json] " + what + " at byte " + std::to_string(at_));
    }
    void space() {
        while (at_ < s_.size() &&
               (s_[at_] == ' ' || s_[at_] == '\n' || s_[at_] == '\r' || s_[at_] == '\t'))
            ++at_;
    }
    bool eat(char c) {
        space();
        if (at_ < s_.size() && s_[at_] == c) {
            ++at_;
            return true;
        }
        return false;
    }
    void expect(char c) {
        if (!eat(c)) fail(std::string("expected '") + c + "'");
    }
    bool word(std::string_view w) {
        if (s_.substr(at_, w.size()) != w) return false;
        at_ += w.size();
        return true;
    }

    Json value(int depth) {
        if (depth > 64) fail("nesting deeper than 64");
        space();
        if (at_ == s_.size()) fail("unexpected end");
        Json v;
        const char c = s_[at_];
        if (c == '{') {
            v.kind = Json::Kind::object;
            ++at_;
            if (eat('}')) return v;
            do {
                space();
                std::string key = string();
                expect(':');
                if (!v.object.emplace(std::move(key), value(depth + 1)).second)
                    fail("repeated key");
            } while (eat(','));
            expect('}');
        } else if (c == '[') {
            v.kind = Json::Kind::array;
            ++at_;
            if (eat(']')) return v;
            do v.array.push_back(value(depth + 1));
            while (eat(','));
            expect(']');
        } else if (c == '"') {
            v.kind = Json::Kind::string;
            v.string = string();
        } else if (word("true")) {
            v.kind = Json::Kind::boolean;
            v.boolean = true;
        } else if (word("false")) {
            v.kind = Json::Kind::boolean;
        } else if (word("null")) {
            v.kind = Json::Kind::null;
        } else {
            v.kind = Json::Kind::number;
            v.number = number();
        }
        return v;
    }

    std::string string() {
        if (at_ >= s_.size() || s_[at_] != '"') fail("expected a string");
        ++at_;
        std::string out;
        for (;;) {
            if (at_ >= s_.size()) fail("unterminated string");
            const char c = s_[at_++];
            if (c == '"') return out;
            if (static_cast<unsigned char>(c) < 0x20) fail("control character in a string");
            if (c != '\\') {
                out += c;
                continue;
            }
            if (at_ >= s_.size()) fail("unterminated escape");
            const char e = s_[at_++];
            switch (e) {
                case '"':
                    out += '"';
                    break;
                case '\\':
                    out += '\\';
                    break;
                case '/':
                    out += '/';
                    break;
                case 'b':
                    out += '\b';
                    break;
                case 'f':
                    out += '\f';
                    break;
                case 'n':
                    out += '\n';
                    break;
                case 'r':
                    out += '\r';
                    break;
                case 't':
                    out += '\t';
                    break;
                case 'u': {
                    if (at_ + 4 > s_.size()) fail("short \\u escape");
                    const std::string hex(s_.substr(at_, 4));
                    char* end = nullptr;
                    const long code = std::strtol(hex.c_str(), &end, 16);
                    if (end != hex.c_str() + 4) fail("bad \\u escape");
                    if (code >= 0x80) fail("\\u escape above 0x7f (not written by edgetune)");
                    out += static_cast<char>(code);
                    at_ += 4;
                    break;
                }
                default:
                    fail(std::string("bad escape \\") + e);
            }
        }
    }

    double number() {
        const std::size_t start = at_;
        auto digits = [&] {
            const std::size_t from = at_;
            while (at_ < s_.size() && s_[at_] >= '0' && s_[at_] <= '9') ++at_;
            return at_ > from;
        };
        if (at_ < s_.size() && s_[at_] == '-') ++at_;
        if (!digits()) fail("expected a value");
        if (at_ < s_.size() && s_[at_] == '.') {
            ++at_;
            if (!digits()) fail("expected digits after '.'");
        }
        if (at_ < s_.size() && (s_[at_] == 'e' || s_[at_] == 'E')) {
            ++at_;
            if (at_ < s_.size() && (s_[at_] == '+' || s_[at_] == '-')) ++at_;
            if (!digits()) fail("expected exponent digits");
        }
        const std::string text(s_.substr(start, at_ - start));
        return std::strtod(text.c_str(), nullptr);
    }

    std::string_view s_;
    std::size_t at_ = 0;
};

}  // namespace json_detail

inline Json parse_json(std::string_view text) {
    return json_detail::Parser(text).document();
}

}  // namespace edgetune
