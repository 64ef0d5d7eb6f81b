// input.cpp — samples for the `edgetune` tool: CSV rows (label, then the backbone's input
// values) and IDX image/label files, validated with messages that name the line and value.
#include <cmath>
#include <fstream>
#include <iostream>

#include "cli.hpp"
#include "idx.hpp"

namespace edgetune::cli {

namespace {

// Lines of a file, or of stdin for "-".
std::vector<std::string> read_lines(const std::string& path) {
    std::vector<std::string> lines;
    std::string line;
    if (path == "-") {
        while (std::getline(std::cin, line)) lines.push_back(line);
        return lines;
    }
    std::ifstream in(path);
    if (!in) throw Failure("cannot read '" + path + "'");
    while (std::getline(in, line)) lines.push_back(line);
    if (in.bad()) throw Failure("error while reading '" + path + "'");
    return lines;
}

// One CSV row of the backbone's input (after an optional leading label) into `sample`.
// `line` numbers the error; returns false for blank and '#' comment lines.
bool parse_row(const std::string& text, std::size_t line, const Backbone& backbone,
               std::int64_t classes, bool labelled, Sample& sample) {
    const std::string row = trim(text);
    if (row.empty() || row[0] == '#') return false;
    std::vector<std::string_view> fields;
    for (std::size_t start = 0;;) {
        const std::size_t comma = row.find(',', start);
        fields.push_back(std::string_view(row).substr(
            start, comma == std::string::npos ? std::string::npos : comma - start));
        if (comma == std::string::npos) break;
        start = comma + 1;
    }
    const InputSpec& in = backbone.config().input;
    const auto expected = static_cast<std::size_t>(in.size) + (labelled ? 1 : 0);
    const std::string where = "line " + std::to_string(line) + ": ";
    if (fields.size() != expected)
        throw Failure(where + "expected " + std::to_string(expected) + " values, got " +
                      std::to_string(fields.size()) +
                      (!labelled && fields.size() == expected + 1
                           ? " (rows that start with a label need --labelled)"
                           : ""));
    sample = Sample{};
    std::size_t at = 0;
    if (labelled) {
        const std::string field = trim(fields[0]);
        const auto label = to_int(field);
        if (!label) throw Failure(where + "label '" + field + "' is not an integer");
        if (*label < 0 || *label >= classes)
            throw Failure(where + "label " + field + " out of range for " +
                          std::to_string(classes) + " classes");
        sample.label = static_cast<std::int32_t>(*label);
        at = 1;
    }
    for (std::size_t k = at; k < fields.size(); ++k) {
        const std::string field = trim(fields[k]);
        const std::string column = "value " + std::to_string(k - at + 1);
        if (in.kind == InputSpec::Kind::float_vector) {
            const auto v = to_float(field);
            if (!v) throw Failure(where + column + " '" + field + "' is not a number");
            if (!std::isfinite(*v))
                throw Failure(where + column + " is " + field + " (not finite)");
            sample.input.push_back(*v);
        } else {
            const auto v = to_int(field);
            if (!v) throw Failure(where + column + " '" + field + "' is not a token id");
            if (*v < 0 || *v >= backbone.config().vocab)
                throw Failure(where + column + " = " + field +
                              " out of range for a vocabulary of " +
                              std::to_string(backbone.config().vocab));
            sample.tokens.push_back(static_cast<std::int32_t>(*v));
        }
    }
    return true;
}

}  // namespace

std::string input_description(const Backbone& b) {
    const InputSpec& in = b.config().input;
    if (in.kind == InputSpec::Kind::float_vector) return std::to_string(in.size) + " floats";
    return std::to_string(in.size) + " token ids < " + std::to_string(b.config().vocab);
}

// Rows of a CSV file; each keeps its 1-based line number for messages.
std::vector<std::pair<std::size_t, Sample>> read_csv(const std::string& path,
                                                     const Backbone& backbone, std::int64_t classes,
                                                     bool labelled) {
    std::vector<std::pair<std::size_t, Sample>> rows;
    const std::vector<std::string> lines = read_lines(path);
    for (std::size_t i = 0; i < lines.size(); ++i) {
        Sample s;
        if (parse_row(lines[i], i + 1, backbone, classes, labelled, s))
            rows.emplace_back(i + 1, std::move(s));
    }
    if (rows.empty()) throw Failure("'" + path + "' holds no rows");
    return rows;
}

// IDX images and labels (examples/data/idx.hpp): the first `limit` (0 = all) as samples,
// pixels scaled to [0, 1] as examples/train_backbone does.
idx::Data read_idx(const std::string& images_path, const std::string& labels_path,
                   std::int64_t limit, const Backbone& backbone, std::int64_t classes) {
    const InputSpec& in = backbone.config().input;
    if (in.kind != InputSpec::Kind::float_vector)
        throw Failure("IDX images need a backbone taking floats; this one takes " +
                      input_description(backbone));
    idx::Data data;
    try {
        data = idx::read(images_path, labels_path, limit);
    } catch (const Error& e) {
        // The reader's message names the file and the field; drop its "[idx] " prefix.
        const std::string what = e.what();
        throw Failure(what.rfind("[idx] ", 0) == 0 ? what.substr(6) : what);
    }
    const std::uint64_t pixels = std::uint64_t{data.rows} * data.cols;
    if (pixels != static_cast<std::uint64_t>(in.size))
        throw Failure("images are " + std::to_string(data.rows) + "x" + std::to_string(data.cols) +
                      " = " + std::to_string(pixels) + " values, the backbone takes " +
                      std::to_string(in.size));
    for (std::size_t i = 0; i < data.size(); ++i)
        if (data.labels[i] >= classes)
            throw Failure("'" + labels_path + "': label " + std::to_string(data.labels[i]) +
                          " of item " + std::to_string(i) + " out of range for " +
                          std::to_string(classes) + " classes");
    return data;
}

std::vector<Sample> idx_samples(const idx::Data& data, std::size_t begin, std::size_t end) {
    const std::size_t pixels = std::size_t{data.rows} * data.cols;
    std::vector<Sample> out(end - begin);
    for (std::size_t i = begin; i < end; ++i) {
        Sample& s = out[i - begin];
        const std::uint8_t* image = data.pixels.data() + i * pixels;
        s.input.resize(pixels);
        for (std::size_t k = 0; k < pixels; ++k) s.input[k] = static_cast<float>(image[k]) / 255.0f;
        s.label = data.labels[i];
    }
    return out;
}

}  // namespace edgetune::cli
