// svdq/calibration.hpp — calibration statistics files: what an engine records with
// ActivationStats during a few forward passes, saved for `svdq quantize --calib`.
//
// File format: safetensors. Per layer `<layer>`:
//   <layer>.absmax   F32 [K]       per-channel absmax
//   <layer>.samples  F32 [S, K]    the reservoir sample of raw input rows (S may be 0: omitted)
//   <layer>.gram     F64 [K, K]    X^T X, only when it was accumulated
// Metadata: "svdq.calib.<layer>" = JSON {"rows_observed": n, "max_rows": cap, "seed": s}.
#pragma once

#include <map>
#include <string>

#include "svdq/checkpoint.hpp"
#include "svdq/stats.hpp"
#include "svdq/status.hpp"

namespace svdq {

/// Writes the statistics of several layers (by layer name) to one file, with optional extra
/// metadata entries (e.g. `svdq calibrate`'s fingerprints of the rows it read).
SVDQ_API Status save_calibration(const std::string& path,
                                 const std::map<std::string, ActivationStats>& layers,
                                 const std::map<std::string, std::string>& extra_metadata = {});

/// Reads a file written by save_calibration back (every field exactly).
Result<std::map<std::string, ActivationStats>> load_calibration(const std::string& path);
/// The same from an already opened (or in-memory, SafetensorsFile::from_bytes) file.
Result<std::map<std::string, ActivationStats>> load_calibration(const SafetensorsFile& file);

}  // namespace svdq
