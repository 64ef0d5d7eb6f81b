// fortunes.hpp — real English text by category from the Debian `fortunes` files, turned into
// next-word samples for word-level language models (examples/keyboard, tests).
//
// A fortune file is one category (computers, definitions, ...): entries separated by a line
// holding only `%`. list_categories() skips `.dat` index files, `.u8` links and subfolders
// (e.g. `off/`, whose files are rot13-encoded).
//
//   auto entries = fortunes::read_entries(fortunes::default_dir, {"science", "work"});
//   std::vector<std::vector<std::string>> docs;
//   for (const auto& e : entries) docs.push_back(fortunes::tokenize(e.text));
//   auto vocab = fortunes::Vocabulary::build(docs, 2000);
//   auto samples = fortunes::make_samples(vocab.encode(docs), 3);  // 3 previous ids -> next id
//
// Limits: the tokenizer is ASCII only (see tokenize()); the vocabulary is closed (rare words
// map to <unk>), so a model built on it can never suggest a word it has not seen.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "matrix.hpp"

namespace edgetune::fortunes {

// Where Debian's `fortunes` package installs its files.
inline constexpr const char* default_dir = "/usr/share/games/fortunes";

// The sentence-boundary token: tokenize() emits it at the end of every sentence and entry,
// and make_samples() pads contexts with it (so it also means "start of a sentence").
inline constexpr std::string_view boundary_token = "<s>";
inline constexpr std::string_view unknown_token = "<unk>";

struct Entry {
    std::string category;
    std::string text;  // the entry's lines joined by '\n', without the `%` separators
};

// Category names found in `dir` (regular files only; no `.dat`, `.u8`, dotfiles or
// subfolders), sorted. Throws edgetune::Error if `dir` cannot be listed.
std::vector<std::string> list_categories(const std::string& dir = default_dir);

// The entries of one category file, in file order; empty entries are skipped.
// Throws edgetune::Error if the file cannot be read.
std::vector<Entry> read_category(const std::string& dir, const std::string& category);

// The entries of several categories, concatenated in the given order.
std::vector<Entry> read_entries(const std::string& dir, const std::vector<std::string>& categories);

// Splits text into lowercase word tokens, ASCII only:
//   * a word is a run of letters and digits; an apostrophe between two such characters stays
//     inside the word ("it's", "don't"); letters are lowercased;
//   * `.`, `!` or `?` followed by whitespace, a closing quote/bracket or the end of the text
//     ends a sentence and emits boundary_token ("adj.:" does not: ':' follows the '.');
//   * all other punctuation, and every non-ASCII byte, separates words and is dropped
//     ("son-of-a-bitch" -> son of a bitch, "186,282" -> 186 282);
//   * the token list always ends with boundary_token unless it is empty; a boundary never
//     follows another boundary.
std::vector<std::string> tokenize(std::string_view text);

// A closed word list. Invariant: id 0 is boundary_token, id 1 is unknown_token, ids 2..size-1
// are the most frequent words of the text it was built from (ties broken alphabetically, so
// the same text always gives the same ids).
class Vocabulary {
public:
    static constexpr std::int32_t boundary = 0;
    static constexpr std::int32_t unknown = 1;

    // Keeps the `size` - 2 most frequent words of `docs` (boundary tokens are not counted as
    // words). Throws edgetune::InvalidArgument if size < 3.
    static Vocabulary build(const std::vector<std::vector<std::string>>& docs, std::size_t size);

    // The word's id, or `unknown`.
    std::int32_t id(std::string_view word) const;
    // The word of an id; throws edgetune::InvalidArgument outside [0, size()).
    const std::string& word(std::int32_t id) const;
    std::size_t size() const { return words_.size(); }

    IdList encode(const std::vector<std::string>& tokens) const;
    std::vector<IdList> encode(const std::vector<std::vector<std::string>>& docs) const;

    // Fraction of the word tokens of `docs` (boundaries excluded) that map to `unknown`.
    double unknown_rate(const std::vector<std::vector<std::string>>& docs) const;

private:
    std::vector<std::string> words_;
    std::unordered_map<std::string, std::int32_t> ids_;
};

// Next-word samples: sample i has the `context` ids before a token as its input and the token
// as its label. Invariant: contexts.size() == labels.size() * context.
struct NextWordSamples {
    std::int64_t context = 0;  // L
    IdList contexts;           // [n * L], row-major: sample i is contexts[i*L, (i+1)*L)
    IdList labels;             // [n]
    std::size_t size() const { return labels.size(); }
    // Sample i's context as its own list [L].
    IdList context_of(std::size_t i) const;
};

// One sample per token of every doc (each doc is an encoded entry). The context is the L
// previous ids of the same doc, padded on the left with `boundary` at the doc's start; it
// crosses sentence boundaries inside a doc (the boundary id is then part of it).
// Tokens equal to `unknown` are never labels when skip_unknown_labels (a keyboard never
// suggests "<unk>"), but still appear in later contexts.
NextWordSamples make_samples(const std::vector<IdList>& docs, std::int64_t context,
                             bool skip_unknown_labels = true);

}  // namespace edgetune::fortunes
