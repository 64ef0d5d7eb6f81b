// words.cpp — words in and out for token backbones (a keyboard's next-word model): the
// vocabulary that maps the backbone's token ids to words, `add --text` (a typed sentence into
// next-word samples) and `predict --text` (the last words into a context).
//
// A vocabulary file has one word a line; line i (from 0) is token id i, and there are as many
// lines as the backbone's vocabulary (examples/keyboard writes keyboard.vocab: "<s>" the
// sentence boundary, "<unk>" the rare words, then the words). Given once with --vocabulary to
// a writing command, it is recorded in the database's meta (`cli.vocabulary`). Text is split
// into words as examples/data/fortunes.hpp's tokenize() does (lowercase ASCII words, a boundary
// after each sentence), so the CLI sees text as the keyboard was trained on it.
#include <algorithm>
#include <fstream>

#include "cli.hpp"
#include "fortunes.hpp"

namespace edgetune::cli {

Words::Words(std::vector<std::string> list) : words(std::move(list)) {
    for (std::size_t i = 0; i < words.size(); ++i)
        ids.emplace(words[i], static_cast<std::int32_t>(i));
}

std::int32_t Words::id(const std::string& word) const {
    const auto it = ids.find(word);
    if (it != ids.end()) return it->second;
    const auto unk = ids.find(std::string(fortunes::unknown_token));
    return unk == ids.end() ? -1 : unk->second;
}

std::int32_t Words::boundary() const {
    const auto it = ids.find(std::string(fortunes::boundary_token));
    return it == ids.end() ? 0 : it->second;
}

Words parse_vocabulary(const std::string& text, const Backbone& backbone,
                       const std::string& where) {
    const BackboneConfig& c = backbone.config();
    if (c.input.kind != InputSpec::Kind::token_sequence)
        throw Failure(where + ": a vocabulary needs a token backbone; this one takes " +
                      input_description(backbone));
    std::vector<std::string> list;
    std::size_t start = 0;
    while (start < text.size()) {
        const std::size_t end = std::min(text.find('\n', start), text.size());
        list.push_back(trim(std::string_view(text).substr(start, end - start)));
        start = end + 1;
    }
    if (static_cast<std::int64_t>(list.size()) != c.vocab)
        throw Failure(where + " has " + std::to_string(list.size()) +
                      " words; the backbone's vocabulary has " + std::to_string(c.vocab));
    Words w(std::move(list));
    for (std::size_t i = 0; i < w.words.size(); ++i) {
        if (w.words[i].empty())
            throw Failure(where + ": line " + std::to_string(i + 1) + " is empty");
        if (w.ids.at(w.words[i]) != static_cast<std::int32_t>(i))
            throw Failure(where + ": line " + std::to_string(i + 1) + ": '" + w.words[i] +
                          "' is also on line " + std::to_string(w.ids.at(w.words[i]) + 1));
    }
    return w;
}

std::string read_text_file(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw Failure("cannot read '" + path + "'");
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (in.bad()) throw Failure("error while reading '" + path + "'");
    return text;
}

std::string vocabulary_text(const Words& w) {
    std::string out;
    for (const std::string& word : w.words) out += word + "\n";
    return out;
}

namespace {

std::vector<std::int32_t> encode(const Words& w, const std::string& text) {
    std::vector<std::int32_t> ids;
    for (const std::string& token : fortunes::tokenize(text)) {
        const std::int32_t id = w.id(token);
        if (id < 0)
            throw Failure("the word '" + token +
                          "' is not in the vocabulary (which has no <unk> for it)");
        ids.push_back(id);
    }
    return ids;
}

}  // namespace

std::vector<Sample> text_samples(const Words& w, const Backbone& backbone, const std::string& text,
                                 std::int64_t classes) {
    const std::vector<std::int32_t> ids = encode(w, text);
    if (ids.empty()) throw Failure("--text holds no words");
    const auto context = static_cast<std::size_t>(backbone.config().input.size);
    const std::int32_t unknown = w.id(std::string(fortunes::unknown_token));
    std::vector<std::int32_t> window(context, w.boundary());
    std::vector<Sample> out;
    for (const std::int32_t id : ids) {
        // A keyboard never suggests "<unk>": it is a context, never a label.
        if (id != unknown) {
            if (id >= classes)
                throw Failure("the word '" + w.words[static_cast<std::size_t>(id)] + "' (id " +
                              std::to_string(id) + ") is not a class of the head (" +
                              std::to_string(classes) + " classes)");
            out.push_back(Sample{.tokens = window, .label = id});
        }
        std::rotate(window.begin(), window.begin() + 1, window.end());
        window.back() = id;
    }
    return out;
}

Sample prompt_sample(const Words& w, const Backbone& backbone, const std::string& text) {
    const auto context = static_cast<std::size_t>(backbone.config().input.size);
    std::vector<std::int32_t> window(context, w.boundary());
    // The text is an unfinished sentence: its boundaries are dropped (as examples/keyboard's
    // prompts), and its last words, padded with the boundary, are the context.
    for (const std::int32_t id : encode(w, text)) {
        if (id == w.boundary()) continue;
        std::rotate(window.begin(), window.begin() + 1, window.end());
        window.back() = id;
    }
    return Sample{.tokens = window};
}

std::vector<std::string> display_names(const Personalizer& p, const Words* w) {
    std::vector<std::string> names;
    for (const ClassInfo& c : p.classes()) {
        // A class still named by its label shows the vocabulary's word for it.
        const bool numbered = c.name == std::to_string(c.label);
        names.push_back(numbered && w && static_cast<std::size_t>(c.label) < w->words.size()
                            ? w->words[static_cast<std::size_t>(c.label)]
                            : c.name);
    }
    return names;
}

}  // namespace edgetune::cli
