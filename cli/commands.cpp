// commands.cpp — the commands of the `edgetune` tool: info, add, train, predict, forget, class
// and export (the table and dispatch are in edgetune.cpp).
#include <algorithm>
#include <charconv>
#include <cstdio>
#include <ctime>

#include "cli.hpp"

namespace edgetune::cli {

namespace {

// A database opened to train, with the run's recipe: the flags over --recipe's defaults, and
// for a retrain (forget, class remove) over the recipe stored with the committed head.
struct Training {
    Resolved setup;
    Recipe recipe;
    TrainOptions options;
};

Training prepare_training(const Args& args, bool retrain) {
    Training t;
    // Bad flags are usage errors before anything is opened.
    const Recipe given = resolve_recipe(args, std::nullopt);
    train_options_of(given, 0);
    validation_of(given);
    t.setup = resolve_db(args, Access::write);
    t.recipe = resolve_recipe(args, retrain ? t.setup.recipe : std::nullopt);
    t.options = train_options_of(t.recipe, t.setup.samples);
    t.setup.validation = validation_of(t.recipe);
    return t;
}

}  // namespace

int cmd_train(const Args& args) {
    Training t = prepare_training(args, false);
    const bool json = args.flag("json");
    if (!t.setup.untrained && !args.flag("again") && !args.flag("upgrade-backbone")) {
        // Nothing new: a run would only replay what the head has learned.
        TrainReport r;
        r.reason = t.setup.samples == 0 ? "the database holds no samples (edgetune add stores some)"
                                        : "nothing new: the committed head has trained on all " +
                                              std::to_string(t.setup.samples) +
                                              " stored samples (--again trains on them anyway)";
        // The backbone's new path (--backbone) is still recorded.
        if (t.setup.record_path) open_resolved(args, Access::write, std::move(t.setup));
        if (json)
            std::printf("%s\n", r.to_json().c_str());
        else
            std::printf("nothing to do: %s\n", r.reason.c_str());
        return 0;
    }
    Opened o = open_resolved(args, Access::write, std::move(t.setup));
    const TrainReport r =
        train_with_progress(*o.personalizer, t.options, args.flag("quiet"), false, {});
    record_recipe(*o.personalizer, r, t.recipe);
    print_report(r, json);
    return report_status(r);
}

int cmd_forget(const Args& args) {
    std::vector<std::string> items = args.positional();
    if (const auto list = args.get("ids")) items.push_back(*list);
    const std::vector<std::int64_t> ids = parse_ids(items);
    if (ids.empty()) throw UsageError("no sample ids given (--ids 3,7,10-12 or ids as arguments)");
    Training t = prepare_training(args, true);
    Opened o = open_resolved(args, Access::write, std::move(t.setup));
    // forget() deletes what is stored and reports the ids it did not find: an error here,
    // after the others are forgotten (a typo must not pass silently).
    const TrainReport r =
        train_with_progress(*o.personalizer, t.options, args.flag("quiet"), true, ids);
    record_recipe(*o.personalizer, r, t.recipe);
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
    std::optional<Training> t;
    if (verb == "remove") t = prepare_training(args, true);
    Opened o = t ? open_resolved(args, Access::write, std::move(t->setup))
                 : open_db(args, verb == "list" ? Access::read_only : Access::write);
    Personalizer& p = *o.personalizer;
    if (verb == "add") {
        const std::int32_t label = p.add_class(words[1]);
        std::printf("added class %d '%s'; %s has %zu classes\n", label, words[1].c_str(),
                    o.db.c_str(), p.classes().size());
    } else if (verb == "rename") {
        p.rename_class(label_of(words[1]), words[2]);
        std::printf("class %s is now '%s'\n", words[1].c_str(), words[2].c_str());
    } else if (verb == "remove") {
        const TrainReport r = p.remove_class(label_of(words[1]), t->options);
        record_recipe(p, r, t->recipe);
        std::printf("removed class %s; %s holds %lld samples in %zu classes\n", words[1].c_str(),
                    o.db.c_str(), static_cast<long long>(p.sample_count()), p.classes().size());
        print_report(r, args.flag("json"));
        return report_status(r);
    } else {
        const std::vector<std::string> names = display_names(p, o.words ? &*o.words : nullptr);
        for (const ClassInfo& c : p.classes())
            std::printf("%6d  %-24s %8lld samples\n", c.label,
                        names[static_cast<std::size_t>(c.label)].c_str(),
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
