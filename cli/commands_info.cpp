// commands_info.cpp — `edgetune info`: what a database holds (its backbone and head, the
// classes by name with their sample counts, checkpoints, the last training runs as a table),
// read-only; --json prints the same as one JSON object for scripts.
#include <algorithm>
#include <cstdio>
#include <ctime>

#include "cli.hpp"
#include "json.hpp"

namespace edgetune::cli {

namespace {

std::string utc_time(std::int64_t unix_ms) {
    const std::time_t t = static_cast<std::time_t>(unix_ms / 1000);
    std::tm tm{};
    gmtime_r(&t, &tm);
    char buf[32];
    std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%S", &tm);
    return buf;
}

std::string percent(const std::optional<Metrics>& m) {
    if (!m) return "-";
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.2f%%", 100.0 * m->accuracy);
    return buf;
}

// The training log as a table, newest first.
void print_runs(const std::vector<RunRecord>& runs) {
    std::printf("runs         last %zu of the training log\n", runs.size());
    if (runs.empty()) return;
    std::printf("  %-5s %-19s  %-13s %7s %7s %7s  %-8s   %-8s  %s\n", "run", "time (UTC)",
                "outcome", "steps", "train", "valid", "before", "after", "reason");
    for (const RunRecord& run : runs) {
        TrainReport r;
        try {
            r = TrainReport::from_json(run.report);
        } catch (const CorruptData& e) {
            std::printf("  #%-4lld %s  unreadable report: %s\n", static_cast<long long>(run.id),
                        utc_time(run.created_at).c_str(), e.what());
            continue;
        }
        std::printf("  #%-4lld %-19s  %-13s %7lld %7lld %7lld  %-8s-> %-8s  %s\n",
                    static_cast<long long>(run.id), utc_time(run.created_at).c_str(),
                    outcome_name(r.outcome), static_cast<long long>(r.steps),
                    static_cast<long long>(r.train_samples),
                    static_cast<long long>(r.validation_samples), percent(r.before).c_str(),
                    percent(r.after).c_str(), r.reason.c_str());
    }
}

// Classes by label with their sample counts; with many (a vocabulary) only the most frequent
// unless --all-labels.
void print_classes(const std::vector<ClassInfo>& classes, bool all) {
    constexpr std::size_t max_listed = 40;
    std::vector<ClassInfo> listed = classes;
    const bool truncated = listed.size() > max_listed && !all;
    if (truncated) {
        std::stable_sort(listed.begin(), listed.end(), [](const ClassInfo& a, const ClassInfo& b) {
            return a.samples > b.samples;
        });
        listed.resize(max_listed);
    }
    std::size_t width = 4;
    for (const ClassInfo& c : listed) width = std::max(width, c.name.size());
    width = std::min<std::size_t>(width, 32);
    std::printf("classes      %zu%s\n  %5s  %-*s  %7s\n", classes.size(),
                truncated ? " (the 40 with most samples; --all-labels lists all)" : "", "label",
                static_cast<int>(width), "name", "samples");
    for (const ClassInfo& c : listed)
        std::printf("  %5d  %-*s  %7lld\n", c.label, static_cast<int>(width), c.name.c_str(),
                    static_cast<long long>(c.samples));
}

void print_json(Opened& o, const std::vector<CheckpointInfo>& checkpoints,
                const std::vector<RunRecord>& runs) {
    Personalizer& p = *o.personalizer;
    const Backbone& b = *o.backbone;
    std::string out = "{\"database\":" + json_string(o.db) +
                      ",\"backbone\":{\"path\":" + json_string(o.backbone_path) +
                      ",\"digest\":" + json_string(b.digest()) +
                      ",\"input\":" + json_string(input_description(b)) +
                      ",\"features\":" + std::to_string(b.feature_dim()) + "}";
    out += ",\"head\":" + json_string(head_description(o.head)) +
           ",\"samples\":" + std::to_string(p.sample_count()) + ",\"classes\":[";
    const std::vector<ClassInfo> classes = p.classes();
    for (std::size_t i = 0; i < classes.size(); ++i)
        out += (i ? "," : "") + std::string("{\"label\":") + std::to_string(classes[i].label) +
               ",\"name\":" + json_string(classes[i].name) +
               ",\"samples\":" + std::to_string(classes[i].samples) + "}";
    out += "],\"checkpoints\":[";
    for (std::size_t i = 0; i < checkpoints.size(); ++i) {
        const CheckpointInfo& c = checkpoints[i];
        out += (i ? "," : "") + std::string("{\"id\":") + std::to_string(c.id) +
               ",\"kind\":" + json_string(c.kind == CheckpointKind::base ? "base" : "trained") +
               ",\"step\":" + std::to_string(c.step) +
               ",\"created_at\":" + json_string(utc_time(c.created_at)) +
               ",\"bytes\":" + std::to_string(c.payload_bytes) +
               ",\"backbone_digest\":" + json_string(c.backbone_digest) + "}";
    }
    const std::string recipe = p.store().get_meta("cli.recipe").value_or("");
    // The recipe as the object it is; a damaged one as its text, so the output stays JSON.
    bool recipe_ok = !recipe.empty();
    try {
        if (recipe_ok) parse_json(recipe);
    } catch (const CorruptData&) {
        recipe_ok = false;
    }
    out += "],\"recipe\":" + (recipe_ok        ? recipe
                              : recipe.empty() ? std::string("null")
                                               : json_string(recipe));
    // Each run's report is the training log's own JSON (TrainReport::to_json).
    out += ",\"runs\":[";
    for (std::size_t i = 0; i < runs.size(); ++i)
        out += (i ? "," : "") + std::string("{\"id\":") + std::to_string(runs[i].id) +
               ",\"created_at\":" + json_string(utc_time(runs[i].created_at)) +
               ",\"report\":" + runs[i].report + "}";
    std::printf("%s]}\n", out.c_str());
}

}  // namespace

int cmd_info(const Args& args) {
    const std::size_t last = static_cast<std::size_t>(int_option(args, "runs", 5, 0));
    Opened o = open_db(args, Access::read_only);
    Personalizer& p = *o.personalizer;
    SampleStore& store = p.store();
    const std::vector<CheckpointInfo> checkpoints = store.list_checkpoints();
    const std::vector<RunRecord> runs = store.list_runs(last);
    if (args.flag("json")) {
        print_json(o, checkpoints, runs);
        return 0;
    }
    const Backbone& b = *o.backbone;
    std::printf("database     %s\n", o.db.c_str());
    std::printf("backbone     %s (digest %s): %s -> %lld features\n", o.backbone_path.c_str(),
                b.digest().c_str(), input_description(b).c_str(),
                static_cast<long long>(b.feature_dim()));
    std::printf("head         %s; %lld classes now\n", head_description(o.head).c_str(),
                static_cast<long long>(store.label_spec().size));
    std::printf("samples      %lld\n", static_cast<long long>(p.sample_count()));
    std::vector<ClassInfo> classes = p.classes();
    const std::vector<std::string> names = display_names(p, o.words ? &*o.words : nullptr);
    for (std::size_t i = 0; i < classes.size(); ++i) classes[i].name = names[i];
    print_classes(classes, args.flag("all-labels"));
    if (o.words)
        std::printf("vocabulary   %zu words (classes named by their labels show their word)\n",
                    o.words->words.size());
    std::printf("checkpoints  %zu\n", checkpoints.size());
    for (const CheckpointInfo& c : checkpoints)
        std::printf("  #%-4lld %-7s step %-7lld %s UTC  %lld bytes  backbone %s\n",
                    static_cast<long long>(c.id),
                    c.kind == CheckpointKind::base ? "base" : "trained",
                    static_cast<long long>(c.step), utc_time(c.created_at).c_str(),
                    static_cast<long long>(c.payload_bytes), c.backbone_digest.c_str());
    const std::string recipe = store.get_meta("cli.recipe").value_or("");
    std::printf("recipe       %s\n",
                recipe.empty() ? "(none stored: the head was not trained by edgetune train)"
                               : recipe.c_str());
    print_runs(runs);
    return 0;
}

}  // namespace edgetune::cli
