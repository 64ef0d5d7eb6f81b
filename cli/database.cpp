// database.cpp — how the `edgetune` tool opens a personalization database: the database
// remembers its setup, so after it is created every command needs only --db.
//
// The Personalizer records the backbone digest (`personalize.backbone_digest`) and the head spec
// (`personalize.head`, the initial class count among it) in the store's meta table
// (storage/FORMAT.md); this tool adds the backbone file's path (`cli.backbone`), the recipe of
// the committed head (`cli.recipe`) and a token backbone's vocabulary (`cli.vocabulary`).
// Before the database is opened, SampleStore::read_meta reads them without a write (an empty
// or foreign file is refused, never turned into a store). --backbone, --head and --classes are then
// needed only to create a database, and
// --backbone to upgrade it; given anyway, they must agree with what the database holds, or the
// error says both in words.
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <sstream>

#include "cli.hpp"

namespace edgetune::cli {

const std::set<std::string> common_options = {"db",   "backbone",   "classes",
                                              "head", "vocabulary", "init-seed"};
const char* const common_help =
    "  --db FILE         the personalization database (SQLite, created 0600 by `add`); it\n"
    "                    records its backbone and head, so the options below are needed only\n"
    "                    to create it (and --backbone to upgrade it: train --upgrade-backbone)\n"
    "  --backbone FILE   the frozen backbone (.etb, e.g. from examples/train_backbone)\n"
    "  --classes N       number of classes of the head (more can be added: edgetune class add)\n"
    "  --head KIND       linear (default), prototype (nearest-class-mean init) or cosine\n"
    "                    (cosine prototypes)\n"
    "  --init-seed N     the head's initialization and the validation split (default 0;\n"
    "                    recorded when the database is created)\n"
    "  --vocabulary FILE a token backbone's words, one a line (line i is token id i, e.g.\n"
    "                    examples/keyboard's keyboard.vocab); a writing command records it\n"
    "  --help            this text\n";

namespace {

constexpr const char* key_digest = "personalize.backbone_digest";
constexpr const char* key_head = "personalize.head";
constexpr const char* key_trained_upto = "personalize.trained_upto";
constexpr const char* key_backbone_path = "cli.backbone";
constexpr const char* key_seed = "cli.seed";  // PersonalizerOptions::seed (--init-seed)
constexpr const char* key_recipe = "cli.recipe";
constexpr const char* key_vocabulary =
    "cli.vocabulary";  // words.cpp: one word a line  // recipe.cpp: the recipe of the committed
                       // head

// What a database file records of its setup, read without opening it as a store.
struct Setup {
    std::string digest;
    std::string head_text;  // personalize.head as stored
    std::optional<std::string> backbone_path;
    std::optional<std::string> recipe;      // cli.recipe
    std::optional<std::string> vocabulary;  // cli.vocabulary
    std::int64_t trained_upto = 0;          // personalize.trained_upto
    std::uint64_t seed = 0;                 // cli.seed
};

// Reads the setup of an existing, non-empty database file (SampleStore::read_meta: nothing is
// written); Failure if it is not a personalization database.
Setup read_setup(const std::string& path) {
    std::vector<std::pair<std::string, std::string>> meta;
    try {
        meta = SampleStore::read_meta(path);
    } catch (const StorageError& e) {
        throw Failure("'" + path + "' is not an edgetune database (" + e.what() + ")");
    }
    Setup s;
    bool has_digest = false;
    for (const auto& [key, value] : meta) {
        if (key == key_digest) {
            s.digest = value;
            has_digest = true;
        } else if (key == key_head) {
            s.head_text = value;
        } else if (key == key_backbone_path) {
            s.backbone_path = value;
        } else if (key == key_recipe) {
            s.recipe = value;
        } else if (key == key_vocabulary) {
            s.vocabulary = value;
        } else if (key == key_trained_upto) {
            s.trained_upto = to_int(value).value_or(0);
        } else if (key == key_seed) {
            s.seed = static_cast<std::uint64_t>(to_int(value).value_or(0));
        }
    }
    if (!has_digest || s.head_text.empty())
        throw Failure("'" + path + "' is a store without a personalization setup (no backbone " +
                      "digest or head recorded)");
    return s;
}

// The live class count, the stored samples and whether any is newer than the committed head,
// from the store opened read-only (once the backbone and head are known). A store that needs a
// migration first (an older file) cannot be read that way: the head's initial count then, and
// "something new" (the Personalizer migrates it when it opens).
void read_counts(const std::string& path, const Backbone& backbone, const HeadSpec& head,
                 std::int64_t trained_upto, Resolved& r) {
    r.classes = head.outputs;
    r.untrained = true;
    try {
        StoreOptions o;
        o.input = backbone.config().input;
        o.label = LabelSpec::classes(head.outputs);
        o.read_only = true;
        o.background_checkpoints = false;
        const SampleStore store = SampleStore::open(path, o);
        r.classes = store.label_spec().size;
        r.samples = store.count();
        r.untrained = !store.ids_after(trained_upto, 1).empty();
    } catch (const StorageError&) {
    }
}

// personalize.head (HeadSpec::to_string) back into a HeadSpec.
HeadSpec parse_head(const std::string& text, const std::string& db) {
    HeadSpec h;
    try {
        h = HeadSpec::parse(text);
    } catch (const CorruptData& e) {
        throw Failure("'" + db + "' records a head edgetune cannot read: " + e.what());
    }
    if (!h.classifies())
        throw Failure("'" + db + "' holds a regression head; edgetune handles classifiers only");
    return h;
}

std::int64_t classes_option(const Args& args) {
    if (!args.get("classes")) throw UsageError("missing option --classes (creating a database)");
    return int_option(args, "classes", 0, 1, 1 << 24);
}

HeadSpec head_option(const Args& args, std::int64_t classes) {
    const std::string head = args.get("head").value_or("linear");
    if (head == "linear") return HeadSpec::linear(classes);
    if (head == "prototype") return HeadSpec::prototype(classes);
    if (head == "cosine") return HeadSpec::cosine_prototype(classes);
    throw UsageError("--head: expected linear, prototype or cosine, got '" + head + "'");
}

std::string head_kind(const HeadSpec& h) {
    switch (h.kind) {
        case HeadSpec::Kind::linear:
            return "linear";
        case HeadSpec::Kind::mlp:
            return "mlp";
        case HeadSpec::Kind::prototype:
            return h.cosine ? "cosine" : "prototype";
        case HeadSpec::Kind::regression:
            return "regression";
    }
    return "?";
}

// --backbone / --head / --classes given for an existing database must agree with it.
void check_given_head(const Args& args, const HeadSpec& held, std::int64_t live,
                      const std::string& db) {
    const auto classes = args.get("classes");
    const auto head = args.get("head");
    if (!classes && !head) return;
    const std::int64_t want_classes = classes ? classes_option(args) : live;
    const HeadSpec want = head_option(args, want_classes);
    const bool same_kind = !head || (head_kind(want) == head_kind(held));
    const bool same_classes = !classes || want_classes == live || want_classes == held.outputs;
    if (same_kind && same_classes) return;
    std::string given = head ? "--head " + *head : "";
    if (classes) given += (given.empty() ? "" : " ") + std::string("--classes ") + *classes;
    throw Failure("'" + db + "' holds a " + head_description(held) + " (" + std::to_string(live) +
                  " classes now); " + given +
                  " was given (--head and --classes only apply when a database is created; leave "
                  "them out)");
}

std::string absolute_path(const std::string& path) {
    std::error_code ec;
    const auto p = std::filesystem::absolute(path, ec);
    return ec ? path : p.lexically_normal().string();
}

// The backbone of an existing database: --backbone if given (it must be the one recorded,
// unless upgrading), else the recorded file (its digest must still match).
std::shared_ptr<const Backbone> setup_backbone(const Args& args, const Setup& s,
                                               const std::string& db, bool upgrade,
                                               std::shared_ptr<const Backbone> given,
                                               std::string& path) {
    const std::string held =
        (s.backbone_path ? "backbone '" + *s.backbone_path + "'" : std::string("a backbone")) +
        " (digest " + s.digest + ")";
    if (const auto option = args.get("backbone")) {
        path = *option;
        if (!given) given = load_backbone(path);
        if (given->digest() != s.digest && !upgrade)
            throw Failure("'" + db + "' holds the features and head of " + held + "; the " +
                          "backbone given, '" + path + "', is another one (digest " +
                          given->digest() +
                          "). Leave out --backbone to use the database's own, or move the "
                          "database to this one with `edgetune train --upgrade-backbone "
                          "--backbone " +
                          path + "` (nothing was changed)");
        return given;
    }
    if (upgrade) throw UsageError("--upgrade-backbone needs --backbone FILE (the new backbone)");
    if (!s.backbone_path)
        throw Failure("'" + db + "' does not record its backbone file (it holds " + held +
                      "); give --backbone FILE once and a writing command records it");
    path = *s.backbone_path;
    if (!std::filesystem::exists(path))
        throw Failure("'" + db + "' was created with " + held +
                      ", which does not exist any more; give --backbone FILE");
    auto b = load_backbone(path);
    if (b->digest() != s.digest)
        throw Failure("the backbone file '" + path + "' recorded by '" + db +
                      "' has changed (digest " + b->digest() + ", the database holds features " +
                      "of " + s.digest + "); restore it, or move the database to it with " +
                      "`edgetune train --upgrade-backbone --backbone " + path + "`");
    return b;
}

}  // namespace

std::shared_ptr<const Backbone> load_backbone(const std::string& path) {
    if (!std::filesystem::exists(path)) throw Failure("backbone '" + path + "' does not exist");
    return Backbone::load(path);
}

std::string head_description(const HeadSpec& h) {
    std::string s = head_kind(h) + " head";
    if (h.kind == HeadSpec::Kind::mlp) {
        s += " [";
        for (std::size_t i = 0; i < h.hidden.size(); ++i)
            s += (i ? "," : "") + std::to_string(h.hidden[i]);
        s += "]";
    }
    return s + " created with " + std::to_string(h.outputs) + " classes";
}

Resolved resolve_db(const Args& args, Access access, std::shared_ptr<const Backbone> backbone) {
    Resolved r;
    r.db = args.require("db");
    std::error_code ec;
    const bool exists = std::filesystem::exists(r.db, ec);
    const bool empty = exists && std::filesystem::is_regular_file(r.db, ec) &&
                       std::filesystem::file_size(r.db, ec) == 0;
    if (!exists || (empty && access == Access::create)) {
        if (access != Access::create)
            throw Failure("database '" + r.db +
                          "' does not exist (`edgetune add --backbone FILE --classes N` creates "
                          "it)");
        r.create = true;
        r.head = head_option(args, classes_option(args));
        r.backbone_path = args.require("backbone");
        r.backbone = backbone ? std::move(backbone) : load_backbone(r.backbone_path);
        r.classes = r.head.outputs;
        r.seed = static_cast<std::uint64_t>(int_option(args, "init-seed", 0, 0));
        if (const auto file = args.get("vocabulary")) {
            r.words = parse_vocabulary(read_text_file(*file), *r.backbone, "'" + *file + "'");
            r.record_words = true;
        }
        return r;
    }
    if (empty) throw Failure("'" + r.db + "' is an empty file, not an edgetune database");
    const Setup s = read_setup(r.db);
    r.head = parse_head(s.head_text, r.db);
    r.recipe = s.recipe;
    r.seed = s.seed;
    if (args.get("init-seed") &&
        static_cast<std::uint64_t>(int_option(args, "init-seed", 0, 0)) != s.seed)
        throw Failure("'" + r.db + "' was created with --init-seed " + std::to_string(s.seed) +
                      "; --init-seed applies only when a database is created");
    const bool upgrade = access != Access::read_only && args.flag("upgrade-backbone");
    r.backbone = setup_backbone(args, s, r.db, upgrade, std::move(backbone), r.backbone_path);
    read_counts(r.db, *r.backbone, r.head, s.trained_upto, r);
    check_given_head(args, r.head, r.classes, r.db);
    r.record_path = access != Access::read_only &&
                    s.backbone_path.value_or("") != absolute_path(r.backbone_path);
    if (const auto file = args.get("vocabulary")) {
        const std::string text = read_text_file(*file);
        r.words = parse_vocabulary(text, *r.backbone, "'" + *file + "'");
        r.record_words =
            access != Access::read_only && s.vocabulary.value_or("") != vocabulary_text(*r.words);
    } else if (s.vocabulary && !s.vocabulary->empty()) {
        r.words = parse_vocabulary(*s.vocabulary, *r.backbone,
                                   "the vocabulary recorded in '" + r.db + "'");
    }
    return r;
}

Opened open_db(const Args& args, Access access, std::shared_ptr<const Backbone> backbone) {
    return open_resolved(args, access, resolve_db(args, access, std::move(backbone)));
}

Opened open_resolved(const Args& args, Access access, Resolved r) {
    Opened o;
    o.db = r.db;
    o.head = r.head;
    o.backbone = r.backbone;
    o.backbone_path = r.backbone_path;
    o.words = r.words;
    PersonalizerOptions options;
    options.head = r.head;
    options.backbone = r.backbone;
    options.read_only = access == Access::read_only;
    options.validation_fraction = r.validation;
    options.seed = r.seed;
    options.upgrade_backbone = access != Access::read_only && args.flag("upgrade-backbone");
    if (options.upgrade_backbone)
        options.upgrade_training = train_options_of(resolve_recipe(args, {}), r.samples);
    o.personalizer = Personalizer::open(o.db, options);
    if (const auto upgrade = o.personalizer->last_upgrade())
        std::fprintf(stderr,
                     "edgetune: note: '%s' was trained with another backbone; features were "
                     "recomputed and the head retrained: %s\n",
                     o.db.c_str(), upgrade->reason.c_str());
    // The backbone file is recorded when the database is created, and again when a writing
    // command was given another path to the same backbone (or upgraded it).
    if (r.create && r.seed != 0) o.personalizer->store().set_meta(key_seed, std::to_string(r.seed));
    if (r.create || r.record_path)
        o.personalizer->store().set_meta(key_backbone_path, absolute_path(r.backbone_path));
    if (r.record_words) o.personalizer->store().set_meta(key_vocabulary, vocabulary_text(*r.words));
    return o;
}

void record_recipe(Personalizer& p, const TrainReport& report, const Recipe& r) {
    if (report.outcome == TrainReport::Outcome::committed)
        p.store().set_meta(key_recipe, recipe_json(r));
}

}  // namespace edgetune::cli
