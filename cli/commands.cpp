// commands.cpp — the commands of the `edgetune` tool: info, add, train, predict, forget, class
// and export (the table and dispatch are in edgetune.cpp).
#include <algorithm>
#include <charconv>
#include <cstdio>
#include <ctime>

#include "cli.hpp"

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

// One line of `info`'s training log: outcome, steps, validation accuracy, reason.
std::string run_summary(const std::string& json) {
    TrainReport r;
    try {
        r = TrainReport::from_json(json);
    } catch (const CorruptData& e) {
        return std::string("unreadable report: ") + e.what();
    }
    std::string s = outcome_name(r.outcome);
    s += ", " + std::to_string(r.steps) + " steps";
    char buf[96];
    if (r.before && r.after) {
        std::snprintf(buf, sizeof buf, ", validation accuracy %.2f%% -> %.2f%%",
                      100.0 * r.before->accuracy, 100.0 * r.after->accuracy);
        s += buf;
    } else if (r.after) {
        std::snprintf(buf, sizeof buf, ", validation accuracy %.2f%%", 100.0 * r.after->accuracy);
        s += buf;
    }
    if (!r.reason.empty()) s += " (" + r.reason + ")";
    return s;
}

}  // namespace

int cmd_info(const Args& args) {
    Opened o = open_db(args, Access::read_only);
    Personalizer& p = *o.personalizer;
    SampleStore& store = p.store();
    const Backbone& b = *o.backbone;
    std::printf("database     %s\n", o.db.c_str());
    std::printf("backbone     %s (digest %s): %s -> %lld features\n", o.backbone_path.c_str(),
                b.digest().c_str(), input_description(b).c_str(),
                static_cast<long long>(b.feature_dim()));
    std::printf("head         %s; %lld classes now\n", head_description(o.head).c_str(),
                static_cast<long long>(store.label_spec().size));
    const std::vector<std::int64_t> counts = p.count_per_label();
    std::printf("samples      %lld\n", static_cast<long long>(p.sample_count()));
    // Labels with samples, in label order; with many labels (a vocabulary) only the most
    // frequent ones unless --all-labels.
    constexpr std::size_t max_listed = 40;
    std::vector<std::size_t> listed;
    for (std::size_t c = 0; c < counts.size(); ++c)
        if (counts[c] > 0) listed.push_back(c);
    const std::size_t with_samples = listed.size();
    const bool truncated = with_samples > max_listed && !args.flag("all-labels");
    if (truncated) {
        std::stable_sort(listed.begin(), listed.end(),
                         [&counts](std::size_t a, std::size_t b) { return counts[a] > counts[b]; });
        listed.resize(max_listed);
    }
    for (std::size_t i = 0; i < listed.size(); ++i)
        std::printf("%s%zu: %lld",
                    i == 0       ? (truncated ? "  most frequent labels  " : "  per label  ")
                    : i % 8 == 0 ? (truncated ? "\n                         " : "\n             ")
                                 : "  ",
                    listed[i], static_cast<long long>(counts[listed[i]]));
    if (!listed.empty()) std::printf("\n");
    if (truncated)
        std::printf("  (%zu more labels with samples: --all-labels lists all)\n",
                    with_samples - listed.size());
    if (with_samples > 0 && with_samples < counts.size())
        std::printf("  (%zu of %zu labels without samples)\n", counts.size() - with_samples,
                    counts.size());
    const std::vector<CheckpointInfo> checkpoints = store.list_checkpoints();
    std::printf("checkpoints  %zu\n", checkpoints.size());
    for (const CheckpointInfo& c : checkpoints)
        std::printf("  #%-4lld %-7s step %-7lld %s UTC  %lld bytes  backbone %s\n",
                    static_cast<long long>(c.id),
                    c.kind == CheckpointKind::base ? "base" : "trained",
                    static_cast<long long>(c.step), utc_time(c.created_at).c_str(),
                    static_cast<long long>(c.payload_bytes), c.backbone_digest.c_str());
    const std::size_t last = static_cast<std::size_t>(int_option(args, "runs", 5, 0));
    const std::vector<RunRecord> runs = store.list_runs(last);
    std::printf("runs         last %zu of the training log\n", runs.size());
    for (const RunRecord& r : runs) {
        if (args.flag("json"))
            std::printf("  #%lld %s UTC  %s\n", static_cast<long long>(r.id),
                        utc_time(r.created_at).c_str(), r.report.c_str());
        else
            std::printf("  #%lld %s UTC  %s\n", static_cast<long long>(r.id),
                        utc_time(r.created_at).c_str(), run_summary(r.report).c_str());
    }
    return 0;
}

int cmd_add(const Args& args) {
    const auto csv = args.get("csv");
    const auto images = args.get("idx-images");
    const auto labels = args.get("idx-labels");
    if (csv && (images || labels))
        throw UsageError("give either --csv or --idx-images/--idx-labels, not both");
    if (!csv && !(images && labels))
        throw UsageError("give --csv FILE, or --idx-images FILE and --idx-labels FILE");
    if (args.get("limit") && csv) throw UsageError("--limit applies to IDX input only");
    const std::int64_t limit = int_option(args, "limit", 0, 0);
    // Parse (and validate) everything before the database is opened or created.
    Resolved setup = resolve_db(args, Access::create);
    const Backbone& backbone = *setup.backbone;
    std::vector<Sample> samples;
    if (csv) {
        for (auto& [line, s] : read_csv(*csv, backbone, setup.classes, true))
            samples.push_back(std::move(s));
    } else {
        samples = read_idx(*images, *labels, limit, backbone, setup.classes);
        if (samples.empty()) throw Failure("'" + *images + "' holds no images");
    }
    Opened o = open_resolved(args, Access::create, std::move(setup));
    const std::vector<std::int64_t> ids = o.personalizer->add(samples);
    std::int64_t kept = 0, lo = INT64_MAX, hi = 0;
    for (std::int64_t id : ids)
        if (id != SampleStore::not_kept) {
            ++kept;
            lo = std::min(lo, id);
            hi = std::max(hi, id);
        }
    std::printf("added %lld sample%s", static_cast<long long>(kept), kept == 1 ? "" : "s");
    if (kept > 0)
        std::printf(" (ids %lld-%lld)", static_cast<long long>(lo), static_cast<long long>(hi));
    std::printf("; %s holds %lld\n", o.db.c_str(),
                static_cast<long long>(o.personalizer->sample_count()));
    return 0;
}

int cmd_train(const Args& args) {
    const TrainOptions options = parse_train_options(args);
    Opened o = open_db(args, Access::write);
    const TrainReport r =
        train_with_progress(*o.personalizer, options, args.flag("quiet"), false, {});
    print_report(r, args.flag("json"));
    return report_status(r);
}

int cmd_predict(const Args& args) {
    const int k = static_cast<int>(int_option(args, "k", 3, 1, 1 << 24));
    const bool labelled = args.flag("labelled");
    Opened o = open_db(args, Access::read_only);
    const auto classes = o.personalizer->store().label_spec().size;
    const auto rows = read_csv(args.require("csv"), *o.backbone, classes, labelled);
    std::int64_t correct = 0;
    for (const auto& [line, sample] : rows) {
        const std::vector<Prediction> top = o.personalizer->predict(sample, k);
        std::printf("line %zu:", line);
        for (std::size_t i = 0; i < top.size(); ++i)
            if (top[i].unknown)
                std::printf(" unknown (best %.1f%%)",
                            100.0 * static_cast<double>(top[i].probability));
            else
                std::printf("%s %d (%.1f%%)", i == 0 ? "" : ",", top[i].label,
                            100.0 * static_cast<double>(top[i].probability));
        if (labelled) {
            std::printf("  [label %d]", sample.label);
            correct += !top.empty() && top[0].label == sample.label;
        }
        std::printf("\n");
    }
    if (labelled)
        std::printf("top-1 accuracy %.2f%% (%lld of %zu)\n",
                    100.0 * static_cast<double>(correct) / static_cast<double>(rows.size()),
                    static_cast<long long>(correct), rows.size());
    return 0;
}

int cmd_forget(const Args& args) {
    std::vector<std::string> items = args.positional();
    if (const auto list = args.get("ids")) items.push_back(*list);
    const std::vector<std::int64_t> ids = parse_ids(items);
    if (ids.empty()) throw UsageError("no sample ids given (--ids 3,7,10-12 or ids as arguments)");
    const TrainOptions options = parse_train_options(args);
    Opened o = open_db(args, Access::write);
    // forget() deletes what is stored and reports the ids it did not find: an error here,
    // after the others are forgotten (a typo must not pass silently).
    const TrainReport r =
        train_with_progress(*o.personalizer, options, args.flag("quiet"), true, ids);
    const std::vector<std::int64_t>& missing = r.not_found;
    std::printf("forgot %zu samples; %s holds %lld\n", ids.size() - missing.size(), o.db.c_str(),
                static_cast<long long>(o.personalizer->sample_count()));
    print_report(r, args.flag("json"));
    if (!missing.empty()) {
        std::string list;
        for (std::size_t i = 0; i < missing.size() && i < 10; ++i)
            list += (i ? ", " : "") + std::to_string(missing[i]);
        if (missing.size() > 10) list += ", ...";
        throw Failure(std::to_string(missing.size()) + " of the " + std::to_string(ids.size()) +
                      " ids are not stored: " + list);
    }
    return report_status(r);
}

// edgetune class add NAME | list | rename LABEL NAME | remove LABEL [training options]
int cmd_class(const Args& args) {
    const std::vector<std::string>& words = args.positional();
    if (words.empty()) throw UsageError("no subcommand (add, list, rename or remove)");
    const std::string& verb = words[0];
    const std::size_t want = verb == "list" ? 1 : verb == "add" || verb == "remove" ? 2 : 3;
    if (verb != "add" && verb != "list" && verb != "rename" && verb != "remove")
        throw UsageError("unknown subcommand '" + verb + "' (add, list, rename or remove)");
    if (words.size() != want)
        throw UsageError("'class " + verb + "' takes " + std::to_string(want - 1) + " argument" +
                         (want == 2 ? "" : "s") + ", got " + std::to_string(words.size() - 1));
    auto label_of = [](const std::string& text) {
        std::int32_t v = -1;
        const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
        if (ec != std::errc() || end != text.data() + text.size() || v < 0)
            throw UsageError("bad class label '" + text + "' (expected a number >= 0)");
        return v;
    };
    Opened o = open_db(args, verb == "list" ? Access::read_only : Access::write);
    Personalizer& p = *o.personalizer;
    if (verb == "add") {
        const std::int32_t label = p.add_class(words[1]);
        std::printf("added class %d '%s'; %s has %zu classes\n", label, words[1].c_str(),
                    o.db.c_str(), p.classes().size());
    } else if (verb == "rename") {
        p.rename_class(label_of(words[1]), words[2]);
        std::printf("class %s is now '%s'\n", words[1].c_str(), words[2].c_str());
    } else if (verb == "remove") {
        const TrainReport r = p.remove_class(label_of(words[1]), parse_train_options(args));
        std::printf("removed class %s; %s holds %lld samples in %zu classes\n", words[1].c_str(),
                    o.db.c_str(), static_cast<long long>(p.sample_count()), p.classes().size());
        print_report(r, args.flag("json"));
        return report_status(r);
    } else {
        for (const ClassInfo& c : p.classes())
            std::printf("%6d  %-24s %8lld samples\n", c.label, c.name.c_str(),
                        static_cast<long long>(c.samples));
    }
    return 0;
}

int cmd_export(const Args& args) {
    const std::string out = args.require("out");
    Opened o = open_db(args, Access::read_only);
    // The library's own head checkpoint (storage/FORMAT.md), decoded here only to print it.
    const std::vector<std::uint8_t> bytes = o.personalizer->head_checkpoint();
    const Checkpoint c = decode_checkpoint(bytes);
    const auto trained = o.personalizer->store().latest_checkpoint(CheckpointKind::trained);
    write_file_atomic(out, bytes);
    std::printf("wrote %s: %zu bytes, step %lld, tensors", out.c_str(), bytes.size(),
                static_cast<long long>(c.step));
    for (const auto& [name, value] : c.tensors)
        std::printf(" %s %s", name.c_str(), shape_str(value).c_str());
    std::printf("%s\n", trained ? "" : " (untrained base head)");
    return 0;
}

}  // namespace edgetune::cli
