// detail/head_checkpoint.hpp — the head checkpoint: what a committed head is stored and exported as
// (private to personalize/; the byte layout and its attrs are in storage/FORMAT.md).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "detail/head.hpp"
#include "personalize.hpp"

namespace edgetune::detail {

// A head checkpoint decoded. seen[c]: class c has been trained on (its prototype is set).
struct HeadCheckpoint {
    std::vector<std::pair<std::string, Matrix>> tensors;  // Head::tensors() order
    OptimizerState optimizer;
    std::int64_t step = 0;
    std::vector<bool> seen;
};

// kind "head"; attrs head (HeadSpec::to_string), backbone_digest, seen_classes ("0"/"1" per
// class); the head's tensors; the optimizer state; step; rng state; metrics (a TrainReport's
// JSON, or "{}").
std::vector<std::uint8_t> encode_head_checkpoint(const Head& head, const std::string& digest,
                                                 const OptimizerState& optimizer, std::int64_t step,
                                                 const std::vector<bool>& seen, const Rng& rng,
                                                 const std::string& metrics);

// Decodes a payload written by encode_head_checkpoint for a head of `classes` outputs: seen has
// `classes` entries (a missing or short seen_classes attr leaves the rest false). Throws
// CorruptData on bad bytes (decode_checkpoint).
HeadCheckpoint decode_head_checkpoint(std::span<const std::uint8_t> payload, std::int64_t classes);

}  // namespace edgetune::detail
