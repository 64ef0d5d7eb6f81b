// edgetune.cpp — the `edgetune` command-line tool: inspect and drive a personalization database
// (one SQLite file holding a user's samples, cached features, head checkpoints and training log)
// from a shell, with the same Personalizer an app embeds.
//
//   edgetune add     --db user.db --backbone bb.etb --classes 10 --csv samples.csv
//   edgetune train   --db user.db --backbone bb.etb --classes 10 --epochs 5 --replay reservoir:500
//   edgetune predict --db user.db --backbone bb.etb --classes 10 --csv rows.csv --k 3
//   edgetune info | forget | export ...          (edgetune help COMMAND for the options)
//
// Every command takes --db, --backbone and --classes: the database is opened with that frozen
// backbone and a head over that many classes. A different backbone than the one the database
// was trained with is refused, except by `train --upgrade-backbone` (features recomputed, head
// retrained). Only `add` creates a missing database; info, predict and export never write. Exit
// status: 0 success, 1 bad input or a failure, 2 a command-line usage error, 3 training was rolled
// back or cancelled. Errors are one line on stderr: "edgetune: add: line 3: expected 785 values,
// got 12".
//
// Limits: classification heads only (linear or prototype); CSV is plain comma-separated numbers
// (no quoting); IDX input is unsigned-byte images (scaled to [0, 1]) with unsigned-byte labels.
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "idx.hpp"
#include "personalize.hpp"

using namespace edgetune;

namespace {

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
// Command-line parsing

// `--name value`, `--name=value` and value-less flags, checked against what the command
// accepts; everything else is positional.
class Args {
public:
    Args(int argc, char** argv, int first, const std::set<std::string>& options,
         const std::set<std::string>& flags) {
        for (int i = first; i < argc; ++i) {
            std::string arg = argv[i];
            if (arg.size() < 3 || arg.compare(0, 2, "--") != 0) {
                positional_.push_back(arg);
                continue;
            }
            std::string name = arg.substr(2);
            std::optional<std::string> value;
            if (const auto eq = name.find('='); eq != std::string::npos) {
                value = name.substr(eq + 1);
                name.resize(eq);
            }
            if (flags.count(name)) {
                if (value) throw UsageError("option '--" + name + "' takes no value");
                flags_.insert(name);
            } else if (options.count(name)) {
                if (!value) {
                    if (i + 1 >= argc) throw UsageError("option '--" + name + "' needs a value");
                    value = argv[++i];
                }
                values_[name] = *value;
            } else {
                throw UsageError("unknown option '--" + name + "'");
            }
        }
    }

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

std::string trim(std::string_view s) {
    const auto begin = s.find_first_not_of(" \t\r");
    if (begin == std::string_view::npos) return "";
    const auto end = s.find_last_not_of(" \t\r");
    return std::string(s.substr(begin, end - begin + 1));
}

// Whole-string integer / float parsing (no locale, no trailing garbage).
std::optional<std::int64_t> to_int(std::string_view s) {
    std::int64_t v = 0;
    const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
    if (ec != std::errc() || end != s.data() + s.size() || s.empty()) return std::nullopt;
    return v;
}

std::optional<float> to_float(std::string_view s) {
    // A leading '+' is accepted once: "+-1" and "++1" are not numbers.
    if (!s.empty() && s.front() == '+') {
        s.remove_prefix(1);
        if (!s.empty() && (s.front() == '-' || s.front() == '+')) return std::nullopt;
    }
    float v = 0.0f;
    const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
    if (ec != std::errc() || end != s.data() + s.size() || s.empty()) return std::nullopt;
    return v;
}

std::int64_t int_option(const Args& args, const std::string& name, std::int64_t fallback,
                        std::int64_t min, std::int64_t max = INT64_MAX) {
    const auto text = args.get(name);
    if (!text) return fallback;
    const auto v = to_int(*text);
    if (!v) throw UsageError("--" + name + ": expected an integer, got '" + *text + "'");
    if (*v < min || *v > max)
        throw UsageError("--" + name + " = " + *text + " must be >= " + std::to_string(min) +
                         (max < INT64_MAX ? " and <= " + std::to_string(max) : ""));
    return *v;
}

float float_option(const Args& args, const std::string& name, float fallback) {
    const auto text = args.get(name);
    if (!text) return fallback;
    const auto v = to_float(*text);
    if (!v || !std::isfinite(*v) || *v < 0.0f)
        throw UsageError("--" + name + ": expected a number >= 0, got '" + *text + "'");
    return *v;
}

// ---------------------------------------------------------------------------------------
// Opening the database

const std::set<std::string> common_options = {"db", "backbone", "classes", "head"};
const char* const common_help =
    "  --db FILE         the personalization database (SQLite, created 0600 by `add`)\n"
    "  --backbone FILE   the frozen backbone (.etb, e.g. from examples/train_backbone)\n"
    "  --classes N       number of classes of the head\n"
    "  --head KIND       linear (default) or prototype (nearest-class-mean init, cosine)\n"
    "  --help            this text\n";

struct Opened {
    std::shared_ptr<const Backbone> backbone;
    std::unique_ptr<Personalizer> personalizer;
    std::string db;
};

std::int64_t classes_option(const Args& args) {
    if (!args.get("classes")) throw UsageError("missing option --classes");
    return int_option(args, "classes", 0, 1, 1 << 24);
}

std::shared_ptr<const Backbone> load_backbone(const Args& args) {
    const std::string path = args.require("backbone");
    if (!std::filesystem::exists(path)) throw Failure("backbone '" + path + "' does not exist");
    return Backbone::load(path);
}

HeadSpec head_option(const Args& args, std::int64_t classes) {
    const std::string head = args.get("head").value_or("linear");
    if (head == "linear") return HeadSpec::linear(classes);
    if (head == "prototype") return HeadSpec::prototype(classes);
    throw UsageError("--head: expected linear or prototype, got '" + head + "'");
}

TrainOptions parse_train_options(const Args& args);

// How a command opens the database: only `add` creates it; read-only commands never write
// (no feature filling, no owed retrain, no upgrade); --upgrade-backbone (train) allows a
// backbone change.
enum class Access { read_only, write, create };

// Opens the database with the given (or --backbone's) backbone.
Opened open_db(const Args& args, Access access,
               std::shared_ptr<const Backbone> backbone = nullptr) {
    const bool create = access == Access::create;
    Opened o;
    o.db = args.require("db");
    const std::int64_t classes = classes_option(args);
    PersonalizerOptions options;
    options.head = head_option(args, classes);
    o.backbone = backbone ? std::move(backbone) : load_backbone(args);
    if (!create && !std::filesystem::exists(o.db))
        throw Failure("database '" + o.db + "' does not exist (`edgetune add` creates it)");
    options.backbone = o.backbone;
    options.read_only = access == Access::read_only;
    options.upgrade_backbone = access != Access::read_only && args.flag("upgrade-backbone");
    if (options.upgrade_backbone) options.upgrade_training = parse_train_options(args);
    o.personalizer = Personalizer::open(o.db, options);
    if (const auto upgrade = o.personalizer->last_upgrade())
        std::fprintf(stderr,
                     "edgetune: note: '%s' was trained with another backbone; features were "
                     "recomputed and the head retrained: %s\n",
                     o.db.c_str(), upgrade->reason.c_str());
    return o;
}

std::string input_description(const Backbone& b) {
    const InputSpec& in = b.config().input;
    if (in.kind == InputSpec::Kind::float_vector) return std::to_string(in.size) + " floats";
    return std::to_string(in.size) + " token ids < " + std::to_string(b.config().vocab);
}

// ---------------------------------------------------------------------------------------
// Reading samples

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
                      std::to_string(fields.size()));
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
std::vector<Sample> read_idx(const std::string& images_path, const std::string& labels_path,
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
    std::vector<Sample> out;
    for (std::size_t i = 0; i < data.size(); ++i) {
        Sample s;
        const std::uint8_t* image = data.pixels.data() + i * pixels;
        s.input.resize(static_cast<std::size_t>(pixels));
        for (std::size_t k = 0; k < s.input.size(); ++k)
            s.input[k] = static_cast<float>(image[k]) / 255.0f;
        const std::uint8_t y = data.labels[i];
        if (y >= classes)
            throw Failure("'" + labels_path + "': label " + std::to_string(y) + " of item " +
                          std::to_string(i) + " out of range for " + std::to_string(classes) +
                          " classes");
        s.label = y;
        out.push_back(std::move(s));
    }
    return out;
}

// ---------------------------------------------------------------------------------------
// Training options and the progress bar

const std::set<std::string> train_options = {"epochs", "batch",     "lr",          "optimizer",
                                             "replay", "max-steps", "deadline-ms", "seed"};
const char* const train_help =
    "  --epochs N           passes over the training set (default 5)\n"
    "  --batch N            samples per step (default 32)\n"
    "  --optimizer KIND     adam (default) or sgd\n"
    "  --lr RATE            learning rate (default: adam 1e-3, sgd 0.01)\n"
    "  --replay POLICY      all (default) | reservoir:N (new + N older samples)\n"
    "                       | balanced:N (new + up to N older samples per class)\n"
    "  --max-steps N        stop after N steps (0 = no limit)\n"
    "  --deadline-ms MS     stop after MS milliseconds (0 = none)\n"
    "  --seed N             shuffling and replay draws (default 0)\n";

Replay parse_replay(const std::string& text) {
    if (text == "all") return Replay::all();
    const auto colon = text.find(':');
    const std::string kind = text.substr(0, colon);
    const auto size = colon == std::string::npos ? std::nullopt : to_int(text.substr(colon + 1));
    if ((kind == "reservoir" || kind == "balanced") && (!size || *size <= 0))
        throw UsageError("--replay " + kind + ":N needs a sample count N > 0, got '" + text + "'");
    if (kind == "reservoir") return Replay::reservoir(*size);
    if (kind == "balanced") return Replay::class_balanced(*size);
    throw UsageError("--replay: expected all, reservoir:N or balanced:N, got '" + text + "'");
}

TrainOptions parse_train_options(const Args& args) {
    TrainOptions o;
    o.epochs = static_cast<int>(int_option(args, "epochs", 5, 0, 1000000));
    o.batch = int_option(args, "batch", 32, 1);
    o.max_steps = int_option(args, "max-steps", 0, 0);
    o.deadline = std::chrono::milliseconds(int_option(args, "deadline-ms", 0, 0));
    o.seed = static_cast<std::uint64_t>(int_option(args, "seed", 0, 0));
    const std::string optimizer = args.get("optimizer").value_or("adam");
    if (optimizer == "adam")
        o.optimizer = AdamOptions{.lr = float_option(args, "lr", 1e-3f)};
    else if (optimizer == "sgd")
        o.optimizer = SgdOptions{.lr = float_option(args, "lr", 0.01f)};
    else
        throw UsageError("--optimizer: expected adam or sgd, got '" + optimizer + "'");
    o.replay = parse_replay(args.get("replay").value_or("all"));
    return o;
}

// Progress on stderr: a redrawn bar on a terminal, one line per epoch otherwise (logs, CI).
// Steps per epoch are known once the first epoch ends; before that the bar follows the step or
// time budget if there is one.
class ProgressBar {
public:
    explicit ProgressBar(const TrainOptions& o) : options_(o), tty_(isatty(STDERR_FILENO) != 0) {}

    void update(const Progress& p) {
        if (first_step_ < 0) first_step_ = p.step - 1;
        const std::int64_t done = p.step - first_step_;
        if (p.epoch != epoch_) {
            if (epoch_ == 1 && steps_per_epoch_ == 0) steps_per_epoch_ = done - 1;
            if (!tty_ && epoch_ > 0) print_epoch_line(false);
            epoch_ = p.epoch;
        }
        last_ = p;
        done_ = done;
        const auto now = std::chrono::steady_clock::now();
        if (tty_ && now - drawn_ > std::chrono::milliseconds(80)) {
            draw(false);
            drawn_ = now;
        }
    }

    void finish() {
        if (epoch_ == 0) return;
        if (tty_)
            draw(true);
        else
            print_epoch_line(true);
    }

private:
    double fraction() const {
        double f = -1.0;
        std::int64_t total = steps_per_epoch_ > 0 ? steps_per_epoch_ * options_.epochs : 0;
        if (options_.max_steps > 0)
            total = total > 0 ? std::min(total, options_.max_steps) : options_.max_steps;
        if (total > 0) f = static_cast<double>(done_) / static_cast<double>(total);
        if (options_.deadline.count() > 0)
            f = std::max(f, static_cast<double>(last_.elapsed.count()) /
                                static_cast<double>(options_.deadline.count()));
        return std::min(f, 1.0);
    }

    void draw(bool final) {
        constexpr int width = 30;
        const double f = final ? 1.0 : fraction();
        char bar[width + 1];
        for (int i = 0; i < width; ++i)
            bar[i] = f >= 0.0 && i < static_cast<int>(f * width + 0.5) ? '#' : '.';
        bar[width] = '\0';
        std::fprintf(
            stderr, "\r[%s] %s epoch %d/%d  step %lld  loss %.4f  %.1f s%s", bar,
            f >= 0.0 ? (std::to_string(static_cast<int>(100.0 * f)) + "%").c_str() : "  ?%",
            last_.epoch, options_.epochs, static_cast<long long>(done_),
            static_cast<double>(last_.loss), static_cast<double>(last_.elapsed.count()) / 1000.0,
            final ? "\n" : "   ");
        std::fflush(stderr);
    }

    // Non-terminal output: the end of every epoch, at most about 20 lines per run (the last
    // epoch always).
    void print_epoch_line(bool last) {
        const int stride = std::max(1, options_.epochs / 20);
        if (last_.epoch == printed_ || (!last && last_.epoch % stride != 0)) return;
        printed_ = last_.epoch;
        std::fprintf(stderr, "epoch %d/%d  step %lld  loss %.4f  %.1f s\n", last_.epoch,
                     options_.epochs, static_cast<long long>(done_),
                     static_cast<double>(last_.loss),
                     static_cast<double>(last_.elapsed.count()) / 1000.0);
    }

    TrainOptions options_;
    bool tty_;
    std::int64_t first_step_ = -1, done_ = 0, steps_per_epoch_ = 0;
    int epoch_ = 0, printed_ = 0;
    Progress last_;
    std::chrono::steady_clock::time_point drawn_{};
};

const char* outcome_name(TrainReport::Outcome o) {
    switch (o) {
        case TrainReport::Outcome::committed:
            return "committed";
        case TrainReport::Outcome::rolled_back:
            return "rolled back";
        case TrainReport::Outcome::nothing_to_do:
            return "nothing to do";
        case TrainReport::Outcome::cancelled:
            return "cancelled";
    }
    return "?";
}

void print_report(const TrainReport& r, bool json) {
    if (json) {
        std::printf("%s\n", r.to_json().c_str());
        return;
    }
    std::printf("outcome     %s (%s)\n", outcome_name(r.outcome), r.reason.c_str());
    std::printf("steps       %lld in %d epochs, %.2f s\n", static_cast<long long>(r.steps),
                r.epochs, static_cast<double>(r.duration.count()) / 1000.0);
    std::printf("samples     %lld training, %lld validation\n",
                static_cast<long long>(r.train_samples),
                static_cast<long long>(r.validation_samples));
    if (!r.loss_curve.empty()) {
        // At most 5 + 5 epochs: the first and the last ones.
        const std::size_t n = r.loss_curve.size();
        std::printf("loss/epoch ");
        for (std::size_t i = 0; i < n; ++i) {
            if (n > 12 && i == 5) {
                std::printf(" ...");
                i = n - 6;
                continue;
            }
            std::printf(" %.4f", static_cast<double>(r.loss_curve[i]));
        }
        std::printf("\n");
    }
    auto metrics = [](const Metrics& m) {
        char buf[96];
        std::snprintf(buf, sizeof buf, "accuracy %.2f%%, loss %.4f", 100.0 * m.accuracy, m.loss);
        return std::string(buf);
    };
    if (r.before) std::printf("validation  before: %s\n", metrics(*r.before).c_str());
    if (r.after) std::printf("validation  after:  %s\n", metrics(*r.after).c_str());
    if (r.retrained_from_base) std::printf("retrained from the base head\n");
}

int report_status(const TrainReport& r) {
    return r.outcome == TrainReport::Outcome::rolled_back ||
                   r.outcome == TrainReport::Outcome::cancelled
               ? exit_rolled_back
               : 0;
}

TrainReport train_with_progress(Personalizer& p, TrainOptions options, bool quiet, bool forget_ids,
                                std::span<const std::int64_t> ids) {
    ProgressBar bar(options);
    if (!quiet) options.on_progress = [&bar](const Progress& pr) { bar.update(pr); };
    TrainReport r = forget_ids ? p.forget(ids, options) : p.train(options);
    if (!quiet) bar.finish();
    return r;
}

// ---------------------------------------------------------------------------------------
// Small helpers for `info`

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

// At most this many ids in all: a range like 1-9223372036854775807 is refused before it is
// expanded, and so are many ranges that add up.
constexpr std::int64_t max_forget_ids = 10'000'000;

std::vector<std::int64_t> parse_ids(const std::vector<std::string>& items) {
    std::vector<std::int64_t> ids;
    std::int64_t total = 0;
    for (const std::string& item : items) {
        std::size_t start = 0;
        for (;;) {
            const std::size_t comma = item.find(',', start);
            const std::string part = trim(
                item.substr(start, comma == std::string::npos ? std::string::npos : comma - start));
            if (!part.empty()) {
                const auto dash = part.find('-', 1);
                const auto lo = to_int(part.substr(0, dash));
                const auto hi = dash == std::string::npos ? lo : to_int(part.substr(dash + 1));
                if (!lo || !hi || *lo <= 0 || *hi < *lo)
                    throw UsageError("bad sample id '" + part + "' (expected N or N-M, ids > 0)");
                // hi >= lo > 0, so hi - lo cannot overflow.
                if (*hi - *lo >= max_forget_ids - total)
                    throw UsageError("id range '" + part + "' makes more than " +
                                     std::to_string(max_forget_ids) + " ids");
                total += *hi - *lo + 1;
                for (std::int64_t id = *lo; id <= *hi; ++id) ids.push_back(id);
            }
            if (comma == std::string::npos) break;
            start = comma + 1;
        }
    }
    std::sort(ids.begin(), ids.end());
    ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
    return ids;
}

// ---------------------------------------------------------------------------------------
// Commands

int cmd_info(const Args& args) {
    Opened o = open_db(args, Access::read_only);
    Personalizer& p = *o.personalizer;
    SampleStore& store = p.store();
    const Backbone& b = *o.backbone;
    std::printf("database     %s\n", o.db.c_str());
    std::printf("backbone     %s (digest %s): %s -> %lld features\n",
                args.require("backbone").c_str(), b.digest().c_str(), input_description(b).c_str(),
                static_cast<long long>(b.feature_dim()));
    std::printf("head         %s, %lld classes\n", args.get("head").value_or("linear").c_str(),
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
    args.require("db");
    const std::int64_t classes = classes_option(args);
    head_option(args, classes);
    const std::shared_ptr<const Backbone> backbone = load_backbone(args);
    std::vector<Sample> samples;
    if (csv) {
        for (auto& [line, s] : read_csv(*csv, *backbone, classes, true))
            samples.push_back(std::move(s));
    } else {
        samples = read_idx(*images, *labels, limit, *backbone, classes);
        if (samples.empty()) throw Failure("'" + *images + "' holds no images");
    }
    Opened o = open_db(args, Access::create, backbone);
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

// ---------------------------------------------------------------------------------------
// Command table and main

struct Command {
    const char* name;
    const char* summary;
    const char* usage;  // the lines after "usage: edgetune NAME --db F --backbone F --classes N"
    std::set<std::string> options;
    std::set<std::string> flags;
    bool training;  // takes the training options
    int (*run)(const Args&);
};

const std::vector<Command>& commands() {
    static const std::vector<Command> table = {
        {"info",
         "samples per label, checkpoints and the last training runs",
         " [--runs N] [--json] [--all-labels]\n\n"
         "  --runs N          how many training runs to list (default 5)\n"
         "  --all-labels      list every label's count (default: the 40 most frequent when more)\n"
         "  --json            print the runs' reports as stored (JSON)\n",
         {"runs"},
         {"json"},
         false,
         cmd_info},
        {"add",
         "store labelled samples from a CSV file or IDX files",
         " (--csv FILE | --idx-images FILE --idx-labels FILE [--limit N])\n\n"
         "  --csv FILE        one sample a line: label, then the backbone's D input values,\n"
         "                    comma-separated ('-' reads stdin; blank and # lines skipped)\n"
         "  --idx-images FILE IDX images (u8, .gz or plain; pixels scaled to [0, 1])\n"
         "  --idx-labels FILE IDX labels (u8)\n"
         "  --limit N         the first N images only (default: all)\n"
         "All rows are validated before anything is stored; the database is created if missing.\n",
         {"csv", "idx-images", "idx-labels", "limit"},
         {},
         false,
         cmd_add},
        {"train",
         "train the head on what is stored (guarded: a worse head is rolled back)",
         " [training options] [--json] [--quiet] [--upgrade-backbone]\n\n"
         "  --json            print the report as JSON\n"
         "  --quiet           no progress bar on stderr\n"
         "  --upgrade-backbone  the database was trained with another backbone: recompute its\n"
         "                    features with this one and retrain the head from a fresh base\n"
         "                    with the training options; kept only if it validates as well as\n"
         "                    the previous head (without it, every command refuses the other\n"
         "                    backbone)\n",
         {},
         {"json", "quiet", "upgrade-backbone"},
         true,
         cmd_train},
        {"predict",
         "top-k labels for CSV rows",
         " --csv FILE [--k N] [--labelled]\n\n"
         "  --csv FILE        one input a line: the backbone's D values ('-' reads stdin)\n"
         "  --k N             labels per row, best first (default 3)\n"
         "  --labelled        rows start with a label (as for add); also prints top-1 accuracy\n",
         {"csv", "k"},
         {"labelled"},
         false,
         cmd_predict},
        {"forget",
         "delete samples; retrains from the base head if they were trained on",
         " (--ids LIST | ID...) [training options] [--json] [--quiet]\n\n"
         "  --ids LIST        comma-separated ids and ranges: 3,7,10-12\n"
         "Every id must be stored, or nothing is deleted. The training options apply to the\n"
         "retraining from the base head (exact unlearning).\n",
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
    std::fprintf(out,
                 "edgetune — on-device personalization: manage a personalization database\n\n"
                 "usage: edgetune COMMAND --db FILE --backbone FILE --classes N [options]\n\n"
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
    std::printf("edgetune %s — %s\n\nusage: edgetune %s --db FILE --backbone FILE --classes N%s",
                c.name, c.summary, c.name, c.usage);
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
