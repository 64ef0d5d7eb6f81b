// commands_add.cpp — `edgetune add`: labelled samples from a CSV file, IDX image files or typed
// text (a token backbone with a vocabulary) into the database, creating it when missing.
//
// Everything is read and validated before the database is opened or created. CSV and text are
// stored in one batch (all or nothing). IDX files stream: the images stay bytes and are stored
// in chunks of `idx_chunk` samples (each chunk all or nothing), so 60,000 images need about
// their 47 MB of bytes plus a chunk instead of 188 MB of floats; a progress bar on a terminal.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>

#include "cli.hpp"

namespace edgetune::cli {

namespace {

constexpr std::size_t idx_chunk = 1024;

// "[####......] 12288/60000 images" on a terminal's stderr, redrawn at most every 100 ms.
class AddProgress {
public:
    explicit AddProgress(std::size_t total) : total_(total), tty_(isatty(STDERR_FILENO) != 0) {}
    void update(std::size_t done) {
        if (!tty_) return;
        const auto now = std::chrono::steady_clock::now();
        if (done < total_ && now - drawn_ < std::chrono::milliseconds(100)) return;
        drawn_ = now;
        constexpr int width = 30;
        const double f = static_cast<double>(done) / static_cast<double>(total_);
        char bar[width + 1];
        for (int i = 0; i < width; ++i) bar[i] = i < static_cast<int>(f * width + 0.5) ? '#' : '.';
        bar[width] = '\0';
        std::fprintf(stderr, "\r[%s] %3d%% %zu/%zu images%s", bar, static_cast<int>(100.0 * f),
                     done, total_, done == total_ ? "\n" : "");
        std::fflush(stderr);
    }

private:
    std::size_t total_;
    bool tty_;
    std::chrono::steady_clock::time_point drawn_{};
};

struct Added {
    std::int64_t kept = 0, lo = INT64_MAX, hi = 0;
    void note(const std::vector<std::int64_t>& ids) {
        for (std::int64_t id : ids)
            if (id != SampleStore::not_kept) {
                ++kept;
                lo = std::min(lo, id);
                hi = std::max(hi, id);
            }
    }
};

}  // namespace

int cmd_add(const Args& args) {
    const auto csv = args.get("csv");
    const auto images = args.get("idx-images");
    const auto labels = args.get("idx-labels");
    const auto text = args.get("text");
    if ((csv ? 1 : 0) + (images || labels ? 1 : 0) + (text ? 1 : 0) > 1)
        throw UsageError("give one of --csv, --idx-images/--idx-labels or --text");
    if (!csv && !text && !(images && labels))
        throw UsageError(
            "give --csv FILE, --idx-images FILE and --idx-labels FILE, or --text WORDS");
    if (args.get("limit") && !images) throw UsageError("--limit applies to IDX input only");
    const std::int64_t limit = int_option(args, "limit", 0, 0);
    // Parse (and validate) everything before the database is opened or created.
    Resolved setup = resolve_db(args, Access::create);
    const Backbone& backbone = *setup.backbone;
    std::vector<Sample> samples;
    idx::Data data;
    if (csv) {
        for (auto& [line, s] : read_csv(*csv, backbone, setup.classes, true))
            samples.push_back(std::move(s));
    } else if (text) {
        if (!setup.words)
            throw Failure("--text needs the backbone's vocabulary: give --vocabulary FILE once");
        samples = text_samples(*setup.words, backbone, *text, setup.classes);
    } else {
        data = read_idx(*images, *labels, limit, backbone, setup.classes);
        if (data.size() == 0) throw Failure("'" + *images + "' holds no images");
    }
    Opened o = open_resolved(args, Access::create, std::move(setup));
    Added added;
    if (data.size() == 0) {
        added.note(o.personalizer->add(samples));
    } else {
        AddProgress progress(data.size());
        for (std::size_t begin = 0; begin < data.size(); begin += idx_chunk) {
            const std::size_t end = std::min(data.size(), begin + idx_chunk);
            added.note(o.personalizer->add(idx_samples(data, begin, end)));
            progress.update(end);
        }
    }
    std::printf("added %lld sample%s", static_cast<long long>(added.kept),
                added.kept == 1 ? "" : "s");
    if (added.kept > 0)
        std::printf(" (ids %lld-%lld)", static_cast<long long>(added.lo),
                    static_cast<long long>(added.hi));
    std::printf("; %s holds %lld\n", o.db.c_str(),
                static_cast<long long>(o.personalizer->sample_count()));
    return 0;
}

}  // namespace edgetune::cli
