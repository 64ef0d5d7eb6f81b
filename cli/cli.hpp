// cli.hpp — what the files of the `edgetune` command-line tool share: errors and exit codes,
// argument parsing (args.cpp), opening a database with the setup it records (database.cpp),
// reading samples (input.cpp), words of token backbones (words.cpp), the training recipe
// (recipe.cpp), progress and the training report (training.cpp) and the commands
// (commands*.cpp), dispatched by edgetune.cpp.
#pragma once

#include <cstdint>
#include <cstdio>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "idx.hpp"
#include "personalize.hpp"

namespace edgetune::cli {

// Bad input or a failed operation: exit 1.
struct Failure : std::runtime_error {
    using std::runtime_error::runtime_error;
};
// A malformed command line: exit 2.
struct UsageError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

constexpr int exit_failure = 1;
constexpr int exit_usage = 2;
constexpr int exit_rolled_back = 3;

// ---------------------------------------------------------------------------------------
// Command-line parsing (args.cpp)

// `--name value`, `--name=value` and value-less flags, checked against what the command
// accepts; everything else is positional.
class Args {
public:
    Args(int argc, char** argv, int first, const std::set<std::string>& options,
         const std::set<std::string>& flags);

    bool flag(const std::string& name) const { return flags_.count(name) > 0; }
    std::optional<std::string> get(const std::string& name) const {
        const auto it = values_.find(name);
        return it == values_.end() ? std::nullopt : std::optional<std::string>(it->second);
    }
    std::string require(const std::string& name) const {
        auto v = get(name);
        if (!v) throw UsageError("missing option --" + name);
        return *v;
    }
    const std::vector<std::string>& positional() const { return positional_; }

private:
    std::map<std::string, std::string> values_;
    std::set<std::string> flags_;
    std::vector<std::string> positional_;
};

std::string trim(std::string_view s);
// Whole-string integer / float parsing (no locale, no trailing garbage).
std::optional<std::int64_t> to_int(std::string_view s);
std::optional<float> to_float(std::string_view s);
// The value of option --name given as `text` (nullopt: not given, `fallback`); UsageError
// naming the option for anything else than an integer in [min, max] / a finite number >= 0.
std::int64_t int_of(const std::string& name, const std::optional<std::string>& text,
                    std::int64_t fallback, std::int64_t min, std::int64_t max = INT64_MAX);
float float_of(const std::string& name, const std::optional<std::string>& text, float fallback);
std::int64_t int_option(const Args& args, const std::string& name, std::int64_t fallback,
                        std::int64_t min, std::int64_t max = INT64_MAX);
// Sample ids and ranges ("3,7,10-12"), sorted and unique; bounded (UsageError past 10 million).
std::vector<std::int64_t> parse_ids(const std::vector<std::string>& items);

// ---------------------------------------------------------------------------------------
// Opening the database (database.cpp)

extern const std::set<std::string> common_options;
extern const char* const common_help;

// A token backbone's vocabulary (words.cpp): word i is token id i.
struct Words {
    std::vector<std::string> words;
    std::map<std::string, std::int32_t> ids;
    explicit Words(std::vector<std::string> list);
    // The word's id; a word not in the list is "<unk>"'s id, or -1 without one.
    std::int32_t id(const std::string& word) const;
    std::int32_t boundary() const;  // "<s>"'s id (0 without one)
};

struct Opened {
    std::shared_ptr<const Backbone> backbone;
    std::string backbone_path;  // the file it was loaded from
    HeadSpec head;              // the head spec the database was created with
    std::unique_ptr<Personalizer> personalizer;
    std::string db;
    std::optional<Words> words;  // token backbones with a vocabulary (recorded or --vocabulary)
};

// How a command opens the database: only `add` creates it; read-only commands never write
// (no feature filling, no owed retrain, no upgrade); --upgrade-backbone (train) allows a
// backbone change.
enum class Access { read_only, write, create };

// The database's setup, resolved before it is opened: what it records, or (create) what the
// command line asks for.
struct Resolved {
    std::string db;
    bool create = false;                // the database does not exist yet (Access::create only)
    bool record_path = false;           // the backbone's path is to be recorded (again)
    HeadSpec head;                      // as recorded (its outputs: the initial class count)
    std::int64_t classes = 0;           // the live class count
    std::int64_t samples = 0;           // stored samples
    bool untrained = true;              // some stored sample is newer than the committed head
    std::optional<std::string> recipe;  // the recipe that trained the committed head (JSON)
    float validation = 0.2f;  // PersonalizerOptions::validation_fraction of a training open
    std::uint64_t seed = 0;   // PersonalizerOptions::seed, recorded at creation (--init-seed)
    std::shared_ptr<const Backbone> backbone;
    std::string backbone_path;
    std::optional<Words> words;  // the vocabulary: --vocabulary's, else the recorded one
    bool record_words = false;   // --vocabulary is to be recorded
};

// Reads the setup the database records (backbone, head; nothing written); --backbone, --head
// and --classes are needed only to create it (or --backbone to upgrade). `backbone`: one
// already loaded from --backbone.
Resolved resolve_db(const Args& args, Access access,
                    std::shared_ptr<const Backbone> backbone = nullptr);
// Opens what resolve_db resolved.
Opened open_resolved(const Args& args, Access access, Resolved r);
// Both.
Opened open_db(const Args& args, Access access, std::shared_ptr<const Backbone> backbone = nullptr);
std::shared_ptr<const Backbone> load_backbone(const std::string& path);
std::string head_description(const HeadSpec& h);

// ---------------------------------------------------------------------------------------
// Words in and out (words.cpp)

// A vocabulary file's text (one word a line, as many as the backbone's vocabulary); `where`
// names it in errors.
Words parse_vocabulary(const std::string& text, const Backbone& backbone, const std::string& where);
std::string vocabulary_text(const Words& w);
std::string read_text_file(const std::string& path);
// A typed text as next-word samples (each word after its context of the previous words).
std::vector<Sample> text_samples(const Words& w, const Backbone& backbone, const std::string& text,
                                 std::int64_t classes);
// The last words of a text as a context to predict the next word from.
Sample prompt_sample(const Words& w, const Backbone& backbone, const std::string& text);
// The classes' names, a class still named by its label showing its word when `w` is given.
std::vector<std::string> display_names(const Personalizer& p, const Words* w);

// ---------------------------------------------------------------------------------------
// Reading samples (input.cpp)

// "784 floats", "3 token ids < 1000": what the backbone takes.
std::string input_description(const Backbone& b);
// Rows of a CSV file; each keeps its 1-based line number for messages.
std::vector<std::pair<std::size_t, Sample>> read_csv(const std::string& path,
                                                     const Backbone& backbone, std::int64_t classes,
                                                     bool labelled);
// IDX images and labels: the first `limit` (0 = all), checked against the backbone's input
// width and the class count. Kept as bytes (60,000 images are 47 MB, as floats 188 MB).
idx::Data read_idx(const std::string& images_path, const std::string& labels_path,
                   std::int64_t limit, const Backbone& backbone, std::int64_t classes);
// Images [begin, end) as samples, pixels scaled to [0, 1].
std::vector<Sample> idx_samples(const idx::Data& data, std::size_t begin, std::size_t end);

// ---------------------------------------------------------------------------------------
// Training options, progress and reports (training.cpp)

extern const std::set<std::string> train_options;
extern const char* const train_help;

// A training recipe (recipe.cpp): the training options' values by flag name.
using Recipe = std::map<std::string, std::string>;
// The recipe of a run: defaults < `stored` (the recipe that trained the head, as JSON: forget
// and class remove) < --recipe NAME < the flags given.
Recipe resolve_recipe(const Args& args, const std::optional<std::string>& stored);
// Its TrainOptions; `stored_samples` sizes a cosine schedule without a length. UsageError
// naming the flag for a bad value.
TrainOptions train_options_of(const Recipe& r, std::int64_t stored_samples);
float validation_of(const Recipe& r);
std::string recipe_json(const Recipe& r);
// Stores the recipe with the head a run committed (`cli.recipe`; database.cpp).
void record_recipe(Personalizer& p, const TrainReport& report, const Recipe& r);
const char* outcome_name(TrainReport::Outcome o);
void print_report(const TrainReport& r, bool json);
int report_status(const TrainReport& r);
// train(), or forget(ids) when forget_ids, with a progress bar on stderr unless quiet.
TrainReport train_with_progress(Personalizer& p, TrainOptions options, bool quiet, bool forget_ids,
                                std::span<const std::int64_t> ids);

// ---------------------------------------------------------------------------------------
// Commands (commands_*.cpp)

int cmd_info(const Args& args);
int cmd_add(const Args& args);
int cmd_train(const Args& args);
int cmd_predict(const Args& args);
int cmd_forget(const Args& args);
int cmd_class(const Args& args);
int cmd_export(const Args& args);

}  // namespace edgetune::cli
