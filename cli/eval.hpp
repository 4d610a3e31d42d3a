// cli/eval.hpp — `svdq eval MODEL QUANT ROWS` and the row fingerprints that let it refuse
// calibration rows (docs/cli.md, docs/quality.md).
#pragma once

#include <CLI/CLI.hpp>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

namespace svdq_cli {

/// Metadata key under which `svdq calibrate` (in the statistics file) and `svdq quantize` (in the
/// checkpoint) keep the fingerprints of the calibration rows of one layer.
inline std::string calib_rows_key(const std::string& layer) { return "svdq.calib_rows." + layer; }

/// FNV-1a 64 of one row's fp32 bit patterns (after conversion of the stored dtype to fp32).
uint64_t row_fingerprint(const float* row, int64_t k);

/// Adds the fingerprints of `rows` (M x K) to `hashes`; `encode` makes the metadata value: sorted
/// unique 16-hex-digit hashes, concatenated.
void add_row_fingerprints(const std::vector<float>& rows, int64_t m, int64_t k,
                          std::vector<uint64_t>* hashes);
std::string encode_fingerprints(std::vector<uint64_t> hashes);

/// Registers `svdq eval` on the app; the returned function runs it (call it when the subcommand
/// was parsed) and returns the exit code.
std::function<int()> add_eval_command(CLI::App& app);

}  // namespace svdq_cli
