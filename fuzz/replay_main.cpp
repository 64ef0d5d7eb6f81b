// replay_main.cpp — runs a fuzz target over files, as a plain program (the gcc build of every
// target, like SQLite's fuzzcheck): each argument is a file or a directory of files (sorted;
// a missing one is skipped).
// Prints "fuzz replay: NAME N inputs" and exits 0; a bug aborts or crashes it, which the test
// reports. The same target sources link against libFuzzer in the clang build (fuzz/run).
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size);

int main(int argc, char** argv) {
    std::vector<std::filesystem::path> files;
    for (int i = 1; i < argc; ++i) {
        const std::filesystem::path p = argv[i];
        if (!std::filesystem::exists(p)) continue;  // e.g. no crash was ever found
        if (std::filesystem::is_directory(p)) {
            for (const auto& e : std::filesystem::directory_iterator(p))
                if (e.is_regular_file()) files.push_back(e.path());
        } else {
            files.push_back(p);
        }
    }
    std::sort(files.begin(), files.end());
    if (files.empty()) {
        std::fprintf(stderr, "fuzz replay: no inputs given\n");
        return 1;
    }
    for (const auto& f : files) {
        std::ifstream in(f, std::ios::binary);
        const std::vector<char> bytes{std::istreambuf_iterator<char>(in), {}};
        LLVMFuzzerTestOneInput(reinterpret_cast<const std::uint8_t*>(bytes.data()), bytes.size());
    }
    std::printf("fuzz replay: %s %zu inputs\n", std::filesystem::path(argv[0]).filename().c_str(),
                files.size());
    return 0;
}
