// fuzz_database.cpp — fuzz target: opening a mutated database file (the store of a 4-float,
// 3-class personalizer) and reading everything in it: integrity check, samples, counts,
// features, checkpoints (decoded), meta and the runs log. Any edgetune::Error is an expected
// rejection (CorruptData, StorageError for "not a database", InvalidArgument for another
// declaration); a crash, a hang or another exception is a bug.
#include <cstdint>
#include <cstdlib>

#include "fuzz_util.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    static const std::string path = edgetune_fuzz::scratch_path("store.db");
    for (const char* suffix : {"-wal", "-shm"}) std::filesystem::remove(path + suffix);
    edgetune_fuzz::write_scratch(path, data, size);
    try {
        edgetune::SampleStore st =
            edgetune::SampleStore::open(path, {.input = edgetune::InputSpec::float_vector(4),
                                               .label = edgetune::LabelSpec::classes(3),
                                               .busy_timeout = std::chrono::milliseconds(0),
                                               .max_blob_bytes = 1 << 20,
                                               .cache_bytes = 1 << 20,
                                               .background_checkpoints = false,
                                               .reserve_bytes = 0});
        if (st.integrity_check() != "ok") return 0;
        st.count();
        st.count_per_label();
        std::vector<edgetune::Sample> batch;
        std::vector<std::int64_t> ids;
        for (auto cursor = st.scan({.batch = 64}); cursor.next(batch) && ids.size() < 4096;)
            for (const auto& s : batch) ids.push_back(s.id);
        const std::string digest = edgetune_fuzz::fixed_backbone()->feature_key();
        const auto missing = st.ids_missing_features(digest, 4096);
        if (missing.empty() && !ids.empty()) st.get_features(digest, ids);
        for (const auto& info : st.list_checkpoints()) {
            const auto ck = st.get_checkpoint(info.id);
            if (ck) edgetune::decode_checkpoint(ck->payload);
        }
        st.get_meta("personalize.backbone_digest");
        st.list_runs(16);
    } catch (const edgetune::Error&) {
    }
    return 0;
}
