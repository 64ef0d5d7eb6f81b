// commands_predict.cpp — `edgetune predict`: the top-k classes of CSV rows by name (or
// "unknown" from a calibrated head), and with --labelled the report people read: top-1 and
// top-k accuracy, accuracy per class and the most-confused pairs; --json for scripts.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>

#include "cli.hpp"
#include "json.hpp"

namespace edgetune::cli {

namespace {

struct Row {
    std::size_t line = 0;
    std::int32_t label = -1;  // --labelled only
    std::vector<Prediction> top;
};

// How often rows of class `truth` were answered `predicted` (unknown_label: unknown).
struct Confusion {
    std::int32_t truth = 0, predicted = 0;
    std::int64_t count = 0;
};

std::string name_of(const std::vector<std::string>& names, std::int32_t label) {
    if (label == Prediction::unknown_label) return "unknown";
    return label >= 0 && static_cast<std::size_t>(label) < names.size()
               ? names[static_cast<std::size_t>(label)]
               : std::to_string(label);
}

// The wrong answers, most frequent first (ties: lower true label, then lower predicted).
std::vector<Confusion> confusions(const std::vector<Row>& rows) {
    std::map<std::pair<std::int32_t, std::int32_t>, std::int64_t> counts;
    for (const Row& r : rows)
        if (!r.top.empty() && r.top[0].label != r.label) ++counts[{r.label, r.top[0].label}];
    std::vector<Confusion> out;
    for (const auto& [pair, n] : counts) out.push_back({pair.first, pair.second, n});
    std::stable_sort(out.begin(), out.end(),
                     [](const Confusion& a, const Confusion& b) { return a.count > b.count; });
    return out;
}

void print_rows(const std::vector<Row>& rows, const std::vector<std::string>& names,
                bool labelled) {
    for (const Row& r : rows) {
        std::printf("line %zu:", r.line);
        for (std::size_t i = 0; i < r.top.size(); ++i)
            if (r.top[i].unknown)
                std::printf(" unknown (best %.1f%%)",
                            100.0 * static_cast<double>(r.top[i].probability));
            else
                std::printf("%s %s (%.1f%%)", i == 0 ? "" : ",",
                            name_of(names, r.top[i].label).c_str(),
                            100.0 * static_cast<double>(r.top[i].probability));
        if (labelled) std::printf("  [label %s]", name_of(names, r.label).c_str());
        std::printf("\n");
    }
}

// Per-class accuracy (Personalizer::evaluate) and the most-confused pairs.
void print_labelled(const Metrics& m, const std::vector<Row>& rows,
                    const std::vector<std::string>& names) {
    const auto n = static_cast<long long>(rows.size());
    std::printf("top-1 accuracy %.2f%% (%lld of %lld)\n", 100.0 * m.accuracy,
                std::llround(m.accuracy * static_cast<double>(n)), n);
    if (m.top_k > 1) std::printf("top-%d accuracy %.2f%%\n", m.top_k, 100.0 * m.top_k_accuracy);
    std::printf("balanced accuracy %.2f%% (the mean of the classes' accuracies)\n",
                100.0 * m.balanced_accuracy);
    std::size_t width = 4;
    for (const std::string& s : names) width = std::max(width, s.size());
    width = std::min<std::size_t>(width, 32);
    // The accuracies are the head's best class (Personalizer::evaluate); a calibrated head
    // answers some rows `unknown` instead, counted in their own column.
    std::vector<std::int64_t> unknown_of(m.class_samples.size(), 0);
    for (const Row& r : rows)
        if (!r.top.empty() && r.top[0].unknown) ++unknown_of[static_cast<std::size_t>(r.label)];
    const bool any_unknown =
        std::any_of(unknown_of.begin(), unknown_of.end(), [](std::int64_t n) { return n > 0; });
    std::printf("per class:\n  %5s  %-*s  %7s  %8s%s\n", "label", static_cast<int>(width), "name",
                "samples", "accuracy", any_unknown ? "  answered unknown" : "");
    for (std::size_t c = 0; c < m.class_samples.size(); ++c) {
        if (m.class_samples[c] == 0) continue;
        std::printf("  %5zu  %-*s  %7lld  %7.2f%%", c, static_cast<int>(width), names[c].c_str(),
                    static_cast<long long>(m.class_samples[c]), 100.0 * m.class_accuracy[c]);
        if (any_unknown) std::printf("  %16lld", static_cast<long long>(unknown_of[c]));
        std::printf("\n");
    }
    const std::vector<Confusion> wrong = confusions(rows);
    if (wrong.empty()) {
        std::printf("no row was confused\n");
    } else {
        std::printf("most confused (true -> answered: rows, share of the true class):\n");
        for (std::size_t i = 0; i < wrong.size() && i < 5; ++i) {
            const Confusion& w = wrong[i];
            const auto of = std::count_if(rows.begin(), rows.end(),
                                          [&](const Row& r) { return r.label == w.truth; });
            std::printf("  %s -> %s: %lld (%.1f%%)\n", name_of(names, w.truth).c_str(),
                        name_of(names, w.predicted).c_str(), static_cast<long long>(w.count),
                        100.0 * static_cast<double>(w.count) / static_cast<double>(of));
        }
        if (wrong.size() > 5) std::printf("  (%zu more pairs)\n", wrong.size() - 5);
    }
    const auto unknown = std::count_if(
        rows.begin(), rows.end(), [](const Row& r) { return !r.top.empty() && r.top[0].unknown; });
    if (unknown > 0)
        std::printf("answered unknown: %lld of %lld rows\n", static_cast<long long>(unknown), n);
}

void print_json(const std::vector<Row>& rows, const std::vector<std::string>& names,
                const std::optional<Metrics>& m) {
    std::string out = "{\"rows\":[";
    for (std::size_t i = 0; i < rows.size(); ++i) {
        const Row& r = rows[i];
        out += (i ? "," : "") + std::string("{\"line\":") + std::to_string(r.line);
        if (m) out += ",\"label\":" + std::to_string(r.label);
        out += ",\"top\":[";
        for (std::size_t j = 0; j < r.top.size(); ++j)
            out += (j ? "," : "") + std::string("{\"label\":") + std::to_string(r.top[j].label) +
                   ",\"name\":" + json_string(name_of(names, r.top[j].label)) +
                   ",\"probability\":" + json_number(r.top[j].probability) + "}";
        out += "]}";
    }
    out += "]";
    if (m) {
        out += ",\"accuracy\":" + json_number(m->accuracy) +
               ",\"top_k\":" + std::to_string(m->top_k) +
               ",\"top_k_accuracy\":" + json_number(m->top_k_accuracy) +
               ",\"balanced_accuracy\":" + json_number(m->balanced_accuracy) + ",\"classes\":[";
        for (std::size_t c = 0; c < m->class_samples.size(); ++c)
            out += (c ? "," : "") + std::string("{\"label\":") + std::to_string(c) +
                   ",\"name\":" + json_string(names[c]) +
                   ",\"samples\":" + std::to_string(m->class_samples[c]) +
                   ",\"accuracy\":" + json_number(m->class_accuracy[c]) + "}";
        out += "],\"confusions\":[";
        const std::vector<Confusion> wrong = confusions(rows);
        for (std::size_t i = 0; i < wrong.size(); ++i)
            out += (i ? "," : "") + std::string("{\"label\":") + std::to_string(wrong[i].truth) +
                   ",\"answered\":" + std::to_string(wrong[i].predicted) +
                   ",\"rows\":" + std::to_string(wrong[i].count) + "}";
        out += "]";
    }
    std::printf("%s}\n", out.c_str());
}

// The next words after a text (a token backbone with a vocabulary): the suggestions.
int predict_text(const Opened& o, const std::vector<std::string>& names, const std::string& text,
                 int k, bool json) {
    if (!o.words)
        throw Failure("--text needs the backbone's vocabulary: give --vocabulary FILE once");
    const Sample context = prompt_sample(*o.words, *o.backbone, text);
    const std::vector<Prediction> top = o.personalizer->predict(context, k);
    std::string seen;
    for (const std::int32_t id : context.tokens)
        seen += (seen.empty() ? "" : " ") + o.words->words[static_cast<std::size_t>(id)];
    if (json) {
        std::string out =
            "{\"text\":" + json_string(text) + ",\"context\":" + json_string(seen) + ",\"top\":[";
        for (std::size_t j = 0; j < top.size(); ++j)
            out += (j ? "," : "") + std::string("{\"label\":") + std::to_string(top[j].label) +
                   ",\"word\":" + json_string(name_of(names, top[j].label)) +
                   ",\"probability\":" + json_number(top[j].probability) + "}";
        std::printf("%s]}\n", out.c_str());
        return 0;
    }
    std::printf("after \"%s\" (the model reads: %s):", text.c_str(), seen.c_str());
    for (std::size_t i = 0; i < top.size(); ++i)
        std::printf("%s %s (%.1f%%)", i == 0 ? "" : ",", name_of(names, top[i].label).c_str(),
                    100.0 * static_cast<double>(top[i].probability));
    std::printf("\n");
    return 0;
}

}  // namespace

int cmd_predict(const Args& args) {
    const int k = static_cast<int>(int_option(args, "k", 3, 1, 1 << 24));
    const bool labelled = args.flag("labelled");
    if (args.get("text") && (args.get("csv") || labelled))
        throw UsageError("give either --text or --csv (with --labelled), not both");
    if (!args.get("text") && !args.get("csv")) throw UsageError("give --csv FILE or --text WORDS");
    Opened o = open_db(args, Access::read_only);
    const Personalizer& p = *o.personalizer;
    const std::vector<std::string> names = display_names(p, o.words ? &*o.words : nullptr);
    if (const auto text = args.get("text"))
        return predict_text(o, names, *text, k, args.flag("json"));
    const auto input = read_csv(args.require("csv"), *o.backbone,
                                static_cast<std::int64_t>(names.size()), labelled);
    std::vector<Row> rows;
    std::vector<Sample> samples;
    for (const auto& [line, sample] : input) {
        rows.push_back({line, labelled ? sample.label : -1, p.predict(sample, k)});
        if (labelled) samples.push_back(sample);
    }
    std::optional<Metrics> metrics;
    if (labelled) metrics = p.evaluate(samples, k);
    if (args.flag("json")) {
        print_json(rows, names, metrics);
        return 0;
    }
    print_rows(rows, names, labelled);
    if (metrics) print_labelled(*metrics, rows, names);
    return 0;
}

}  // namespace edgetune::cli
