// edgetune.cpp — the `edgetune` command-line tool: inspect and drive a personalization database
// (one SQLite file holding a user's samples, cached features, head checkpoints and training log)
// from a shell, with the same Personalizer an app embeds.
//
//   edgetune add     --db user.db --backbone bb.etb --classes 10 --csv samples.csv   (creates it)
//   edgetune train   --db user.db --epochs 5 --replay reservoir:500
//   edgetune predict --db user.db --csv rows.csv --k 3
//   edgetune info | forget | class | export ...  (edgetune help COMMAND for the options)
//
// A database is created by `add` with --backbone and --classes and records them (database.cpp):
// later commands need only --db. A different backbone than the one the database was trained
// with is refused, except by `train --upgrade-backbone` (features recomputed, head retrained).
// Only `add` creates a missing database; info, predict and export never write. Exit status: 0
// success, 1 bad input or a failure, 2 a command-line usage error, 3 training was rolled back or
// cancelled. Errors are one line on stderr: "edgetune: add: line 3: expected 785 values, got 12".
//
// Limits: classification heads only (linear, prototype, cosine); CSV is plain comma-separated
// numbers (no quoting); IDX input is unsigned-byte images (scaled to [0, 1]) with unsigned-byte
// labels.
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>

#include "cli.hpp"

using namespace edgetune;
using namespace edgetune::cli;

namespace {

// ---------------------------------------------------------------------------------------
// Command table and main

struct Command {
    const char* name;
    const char* summary;
    const char* usage;  // the lines after "usage: edgetune NAME --db FILE"
    std::set<std::string> options;
    std::set<std::string> flags;
    bool training;  // takes the training options
    int (*run)(const Args&);
};

const std::vector<Command>& commands() {
    static const std::vector<Command> table = {
        {"info",
         "backbone, head, classes with their samples, checkpoints and the last training runs",
         " [--runs N] [--json] [--all-labels]\n\n"
         "  --runs N          how many training runs to list (default 5)\n"
         "  --all-labels      list every class (default: the 40 with most samples when more)\n"
         "  --json            all of it as one JSON object (runs: the training log's reports)\n",
         {"runs"},
         {"json", "all-labels"},
         false,
         cmd_info},
        {"add",
         "store labelled samples from a CSV file, IDX files or typed text",
         " [--backbone FILE --classes N [--head KIND]]\n"
         "       (--csv FILE | --idx-images FILE --idx-labels FILE [--limit N] | --text WORDS)\n\n"
         "  --csv FILE        one sample a line: label, then the backbone's D input values,\n"
         "                    comma-separated ('-' reads stdin; blank and # lines skipped)\n"
         "  --idx-images FILE IDX images (u8, .gz or plain; pixels scaled to [0, 1])\n"
         "  --idx-labels FILE IDX labels (u8)\n"
         "  --limit N         the first N images only (default: all); IDX input is stored in\n"
         "                    chunks of 1024 images (each all or nothing), with a progress bar\n"
         "                    on a terminal\n"
         "  --text WORDS      typed text (a token backbone with a vocabulary): every word\n"
         "                    becomes a sample, labelled by the word, after the previous words\n"
         "All rows are validated before anything is stored. A missing database is created with\n"
         "--backbone and --classes (and --head), which it records for every later command.\n",
         {"csv", "idx-images", "idx-labels", "limit", "text"},
         {},
         false,
         cmd_add},
        {"train",
         "train the head on what is stored (guarded: a worse head is rolled back)",
         " [training options] [--json] [--quiet] [--again] [--upgrade-backbone]\n\n"
         "  --json            print the report as JSON\n"
         "  --quiet           no progress bar on stderr\n"
         "  --again           train even when nothing is new since the last committed run\n"
         "                    (without it, such a run does nothing and says so)\n"
         "  --upgrade-backbone  with --backbone FILE, another backbone than the database's:\n"
         "                    recompute its features with FILE and retrain the head from a\n"
         "                    fresh base with the training options; kept only if it validates\n"
         "                    as well as the previous head, and then recorded as the database's\n"
         "                    backbone (without it, every command refuses another backbone)\n"
         "A run that commits stores its recipe with the head: forget and class remove retrain\n"
         "with it (flags given override it).\n",
         {},
         {"json", "quiet", "again", "upgrade-backbone"},
         true,
         cmd_train},
        {"predict",
         "top-k classes for CSV rows, by name; with --labelled, accuracy per class",
         " (--csv FILE [--labelled] | --text WORDS) [--k N] [--json]\n\n"
         "  --csv FILE        one input a line: the backbone's D values ('-' reads stdin)\n"
         "  --k N             classes per row, best first (default 3); a calibrated head\n"
         "                    answers `unknown` for an input no class accepts\n"
         "  --labelled        rows start with a label (as for add); also prints top-1 and top-k\n"
         "                    accuracy, the accuracy of each class and the most-confused pairs\n"
         "  --text WORDS      the last words typed (a token backbone with a vocabulary): the\n"
         "                    k most likely next words\n"
         "  --json            rows (and the accuracies) as one JSON object\n",
         {"csv", "k", "text"},
         {"labelled", "json"},
         false,
         cmd_predict},
        {"forget",
         "delete samples; retrains from the base head if they were trained on",
         " (--ids LIST | ID...) [training options] [--json] [--quiet]\n\n"
         "  --ids LIST        comma-separated ids and ranges: 3,7,10-12\n"
         "Ids that are not stored are an error after the others are forgotten. The retraining\n"
         "from the base head (exact unlearning) uses the recipe stored with the committed head;\n"
         "training options given override it.\n",
         {"ids"},
         {"json", "quiet"},
         true,
         cmd_forget},
        {"class",
         "add, list, rename or remove named classes",
         " (add NAME | list | rename LABEL NAME | remove LABEL) [training options] [--json]\n\n"
         "  add NAME          a new class (its label is the next free one); names are unique\n"
         "  list              label, name and stored samples of every class\n"
         "  rename LABEL NAME a new name for a class\n"
         "  remove LABEL      erase the class's samples and retrain from the base head without\n"
         "                    it (exact unlearning); the labels above it shift down by one\n",
         {},
         {"json"},
         true,
         cmd_class},
        {"export",
         "write the committed head as a checkpoint file",
         " --out FILE\n\n"
         "  --out FILE        the checkpoint file (envelope + cereal payload; written "
         "atomically)\n",
         {"out"},
         {},
         false,
         cmd_export},
    };
    return table;
}

void print_overview(std::FILE* out) {
    std::fprintf(
        out,
        "edgetune — on-device personalization: manage a personalization database\n\n"
        "usage: edgetune COMMAND --db FILE [options]\n"
        "       edgetune add --db FILE --backbone FILE --classes N ...   (creates FILE)\n\n"
        "commands:\n");
    for (const Command& c : commands()) std::fprintf(out, "  %-9s %s\n", c.name, c.summary);
    std::fprintf(out, "  %-9s %s\n", "import",
                 "converts an ONNX model into a backbone file (edgetune import --help)");
    std::fprintf(out,
                 "\nevery command:\n%s\n"
                 "edgetune help COMMAND (or edgetune COMMAND --help) for its options.\n"
                 "exit status: 0 ok, 1 bad input or failure, 2 usage error, 3 training rolled "
                 "back or cancelled\n",
                 common_help);
}

void print_help(const Command& c) {
    std::printf("edgetune %s — %s\n\nusage: edgetune %s --db FILE%s", c.name, c.summary, c.name,
                c.usage);
    if (c.training) std::printf("\ntraining options:\n%s", train_help);
    std::printf("\nevery command:\n%s", common_help);
}

const Command* find_command(const std::string& name) {
    for (const Command& c : commands())
        if (name == c.name) return &c;
    return nullptr;
}

#ifndef EDGETUNE_IMPORT_SCRIPT  // cli/meson.build sets the source tree's copy
#define EDGETUNE_IMPORT_SCRIPT "tools/onnx_import.py"
#endif
// `edgetune import model.onnx backbone.etb [...]`: the ONNX converter runs on the developer's
// machine in Python (python3-onnx), so this replaces the process with tools/onnx_import.py
// ($EDGETUNE_IMPORT_SCRIPT, else an installed edgetune-import beside this program, else the
// source tree's copy; its #! line picks /usr/bin/python3,
// Debian's, which has python3-onnx) and passes the arguments through.
// Installed (meson install), the script is `edgetune-import` next to this program.
std::string import_script() {
    if (const char* env = std::getenv("EDGETUNE_IMPORT_SCRIPT"); env && *env) return env;
    std::error_code ec;
    const std::filesystem::path self = std::filesystem::read_symlink("/proc/self/exe", ec);
    if (!ec) {
        const std::filesystem::path installed = self.parent_path() / "edgetune-import";
        if (std::filesystem::exists(installed, ec)) return installed.string();
    }
    return EDGETUNE_IMPORT_SCRIPT;
}

int run_import(int argc, char** argv) {
    const std::string script = import_script();
    std::vector<char*> args{const_cast<char*>(script.c_str())};
    for (int i = 2; i < argc; ++i) args.push_back(argv[i]);
    args.push_back(nullptr);
    ::execv(script.c_str(), args.data());
    std::fprintf(stderr, "edgetune: import: cannot run %s: %s\n", script.c_str(),
                 std::strerror(errno));
    return exit_failure;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 2) {
        print_overview(stderr);
        return exit_usage;
    }
    const std::string name = argv[1];
    if (name == "--help" || name == "-h" || name == "help") {
        if (argc > 2) {
            if (const Command* c = find_command(argv[2])) {
                print_help(*c);
                return 0;
            }
            std::fprintf(stderr, "edgetune: unknown command '%s' (see edgetune --help)\n", argv[2]);
            return exit_usage;
        }
        print_overview(stdout);
        return 0;
    }
    if (name == "import") return run_import(argc, argv);
    if (name == "--version") {
        std::printf("edgetune 0.1.0\n");
        return 0;
    }
    const Command* command = find_command(name);
    if (command == nullptr) {
        std::fprintf(stderr, "edgetune: unknown command '%s' (see edgetune --help)\n",
                     name.c_str());
        return exit_usage;
    }
    try {
        std::set<std::string> options = common_options;
        options.insert(command->options.begin(), command->options.end());
        if (command->training) options.insert(train_options.begin(), train_options.end());
        std::set<std::string> flags = command->flags;
        flags.insert("help");
        const Args args(argc, argv, 2, options, flags);
        if (args.flag("help")) {
            print_help(*command);
            return 0;
        }
        if (!args.positional().empty() && std::string(command->name) != "forget" &&
            std::string(command->name) != "class")
            throw UsageError("unexpected argument '" + args.positional().front() + "'");
        return command->run(args);
    } catch (const UsageError& e) {
        std::fprintf(stderr, "edgetune: %s: %s (see edgetune %s --help)\n", command->name, e.what(),
                     command->name);
        return exit_usage;
    } catch (const std::exception& e) {
        // Failure and edgetune::Error (InvalidArgument, CorruptData, StorageError, ...): their
        // messages already name what failed.
        std::string message = e.what();
        std::replace(message.begin(), message.end(), '\n', ' ');
        std::fprintf(stderr, "edgetune: %s: %s\n", command->name, message.c_str());
        return exit_failure;
    }
}
