// fortunes.cpp — fortune-file reader, tokenizer, vocabulary and next-word samples
// (see fortunes.hpp for the rules).
#include "fortunes.hpp"

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <system_error>

#include "error.hpp"

namespace edgetune::fortunes {

namespace {

bool ends_with(const std::string& s, std::string_view suffix) {
    return s.size() >= suffix.size() &&
           s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

bool is_word_char(char c) {
    const auto u = static_cast<unsigned char>(c);
    return (u >= 'a' && u <= 'z') || (u >= 'A' && u <= 'Z') || (u >= '0' && u <= '9');
}

bool is_space(char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

bool is_closer(char c) {
    return c == '"' || c == '\'' || c == ')' || c == ']' || c == '}';
}

}  // namespace

std::vector<std::string> list_categories(const std::string& dir) {
    std::error_code ec;
    std::filesystem::directory_iterator it(dir, ec);
    if (ec) throw Error("[fortunes] cannot list '" + dir + "': " + ec.message());
    std::vector<std::string> names;
    for (const auto& entry : it) {
        // NOTE: `.u8` files are symlinks to their category: is_regular_file follows them, so
        // they are excluded by name, not by type.
        if (!entry.is_regular_file(ec)) continue;
        const std::string name = entry.path().filename().string();
        if (name.empty() || name[0] == '.' || ends_with(name, ".dat") || ends_with(name, ".u8"))
            continue;
        names.push_back(name);
    }
    std::sort(names.begin(), names.end());
    return names;
}

std::vector<Entry> read_category(const std::string& dir, const std::string& category) {
    const std::string path = dir + "/" + category;
    std::ifstream in(path, std::ios::binary);
    if (!in) throw Error("[fortunes] cannot read '" + path + "'");
    std::vector<Entry> entries;
    std::string line, text;
    auto flush = [&] {
        if (text.find_first_not_of(" \t\r\n") != std::string::npos)
            entries.push_back({category, text});
        text.clear();
    };
    while (std::getline(in, line)) {
        if (!line.empty() && line.back() == '\r') line.pop_back();
        if (line == "%") {
            flush();
            continue;
        }
        if (!text.empty()) text += '\n';
        text += line;
    }
    if (in.bad()) throw Error("[fortunes] error while reading '" + path + "'");
    flush();
    return entries;
}

std::vector<Entry> read_entries(const std::string& dir,
                                const std::vector<std::string>& categories) {
    std::vector<Entry> all;
    for (const std::string& c : categories) {
        std::vector<Entry> part = read_category(dir, c);
        all.insert(all.end(), std::make_move_iterator(part.begin()),
                   std::make_move_iterator(part.end()));
    }
    return all;
}

std::vector<std::string> tokenize(std::string_view text) {
    std::vector<std::string> tokens;
    auto end_sentence = [&tokens] {
        if (!tokens.empty() && tokens.back() != boundary_token) tokens.emplace_back(boundary_token);
    };
    const std::size_t n = text.size();
    std::size_t i = 0;
    while (i < n) {
        const char c = text[i];
        if (is_word_char(c)) {
            std::string word;
            while (i < n) {
                if (is_word_char(text[i])) {
                    word += static_cast<char>(std::tolower(static_cast<unsigned char>(text[i])));
                    ++i;
                } else if (text[i] == '\'' && i + 1 < n && is_word_char(text[i + 1])) {
                    word += '\'';
                    ++i;
                } else {
                    break;
                }
            }
            tokens.push_back(std::move(word));
            continue;
        }
        if (c == '.' || c == '!' || c == '?') {
            // Skip the rest of a run like "?!" or "...", then any closing quotes/brackets.
            std::size_t j = i + 1;
            while (j < n && (text[j] == '.' || text[j] == '!' || text[j] == '?')) ++j;
            std::size_t k = j;
            while (k < n && is_closer(text[k])) ++k;
            if (k == n || is_space(text[k])) end_sentence();
            i = j;
            continue;
        }
        ++i;  // any other punctuation, whitespace or non-ASCII byte separates words
    }
    end_sentence();
    return tokens;
}

Vocabulary Vocabulary::build(const std::vector<std::vector<std::string>>& docs, std::size_t size) {
    if (size < 3)
        throw InvalidArgument("[Vocabulary.build] size = " + std::to_string(size) +
                              " must be >= 3 (boundary, unknown and at least one word)");
    std::unordered_map<std::string, std::int64_t> counts;
    for (const auto& doc : docs)
        for (const std::string& t : doc)
            if (t != boundary_token) ++counts[t];
    std::vector<std::pair<std::string, std::int64_t>> sorted(counts.begin(), counts.end());
    std::sort(sorted.begin(), sorted.end(), [](const auto& a, const auto& b) {
        return a.second > b.second || (a.second == b.second && a.first < b.first);
    });
    Vocabulary v;
    v.words_ = {std::string(boundary_token), std::string(unknown_token)};
    for (std::size_t i = 0; i < sorted.size() && v.words_.size() < size; ++i)
        v.words_.push_back(sorted[i].first);
    for (std::size_t i = 0; i < v.words_.size(); ++i)
        v.ids_.emplace(v.words_[i], static_cast<std::int32_t>(i));
    return v;
}

std::int32_t Vocabulary::id(std::string_view word) const {
    const auto it = ids_.find(std::string(word));
    return it == ids_.end() ? unknown : it->second;
}

const std::string& Vocabulary::word(std::int32_t id) const {
    if (id < 0 || static_cast<std::size_t>(id) >= words_.size())
        throw InvalidArgument("[Vocabulary.word] id " + std::to_string(id) + " out of range for " +
                              std::to_string(words_.size()) + " words");
    return words_[static_cast<std::size_t>(id)];
}

IdList Vocabulary::encode(const std::vector<std::string>& tokens) const {
    IdList ids;
    ids.reserve(tokens.size());
    for (const std::string& t : tokens) ids.push_back(id(t));
    return ids;
}

std::vector<IdList> Vocabulary::encode(const std::vector<std::vector<std::string>>& docs) const {
    std::vector<IdList> out;
    out.reserve(docs.size());
    for (const auto& doc : docs) out.push_back(encode(doc));
    return out;
}

double Vocabulary::unknown_rate(const std::vector<std::vector<std::string>>& docs) const {
    std::int64_t words = 0, unknown_words = 0;
    for (const auto& doc : docs)
        for (const std::string& t : doc) {
            if (t == boundary_token) continue;
            ++words;
            unknown_words += id(t) == unknown;
        }
    return words == 0 ? 0.0 : static_cast<double>(unknown_words) / static_cast<double>(words);
}

IdList NextWordSamples::context_of(std::size_t i) const {
    const auto len = static_cast<std::size_t>(context);
    return IdList(contexts.begin() + static_cast<std::ptrdiff_t>(i * len),
                  contexts.begin() + static_cast<std::ptrdiff_t>((i + 1) * len));
}

NextWordSamples make_samples(const std::vector<IdList>& docs, std::int64_t context,
                             bool skip_unknown_labels) {
    if (context <= 0)
        throw InvalidArgument("[make_samples] context = " + std::to_string(context) +
                              " must be > 0");
    NextWordSamples out;
    out.context = context;
    const auto len = static_cast<std::size_t>(context);
    IdList window(len);
    for (const IdList& doc : docs) {
        std::fill(window.begin(), window.end(), Vocabulary::boundary);
        for (std::int32_t token : doc) {
            if (!(skip_unknown_labels && token == Vocabulary::unknown)) {
                out.contexts.insert(out.contexts.end(), window.begin(), window.end());
                out.labels.push_back(token);
            }
            std::rotate(window.begin(), window.begin() + 1, window.end());
            window.back() = token;
        }
    }
    return out;
}

}  // namespace edgetune::fortunes
