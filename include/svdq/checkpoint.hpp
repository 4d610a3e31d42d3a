// svdq/checkpoint.hpp — safetensors files: a validating memory-mapped reader, a writer, and
// QuantizedLinear layers stored in svdq's canonical layout (docs/checkpoint.md says the same).
//
// A safetensors file is
//   bytes [0, 8)        u64 little-endian N: the header length
//   bytes [8, 8 + N)    UTF-8 JSON object: {"<tensor name>": {"dtype": "F16", "shape": [2, 3],
//                       "data_offsets": [begin, end]}, ..., "__metadata__": {"key": "value"}}
//   bytes [8 + N, end)  the data buffer; a tensor's bytes are buffer[begin, end), row-major,
//                       little-endian, with no alignment promised.
//
// A QuantizedLinear under the name <layer> is stored as (N = out_features, K = in_features,
// r = rank, S = the layer's storage dtype, "F16" or "BF16"):
//   <layer>.qweight     U8       [N, K/2]    packed 4-bit codes, element k even in the low nibble
//   <layer>.wscales     F16      [N, K/64]   int4 group scales
//                       F8_E4M3  [N, K/16]   nvfp4 group scales
//   <layer>.wtscale     F32      [1]         nvfp4 only: weight tensor scale t_w
//   <layer>.act_tscale  F32      [1]         nvfp4 only: static activation tensor scale t_act
//   <layer>.smooth      S        [K]         smoothing factors s
//   <layer>.lora_down   S        [K, r]      diag(1/s) V_r
//   <layer>.lora_up     S        [N, r]      U_r Sigma_r
//   <layer>.bias        S        [N]         only when the layer has a bias
// plus the metadata "svdq.version" (version_string()) and "svdq.layer.<layer>", a JSON object
// (as a string) with the layer's format, group_size, rank, in_features, out_features, storage,
// bias and recipe (alpha, beta, svd, weight_norm, residual_norm, seconds).
//
// Error codes, for every function below:
//   kErrorIo               the operating system failed: a file that cannot be opened, stat'ed,
//                          mapped, written or renamed (a missing file, a directory, no permission)
//   kErrorInvalidArgument  the bytes break a rule of the safetensors format (truncated, bad
//                          JSON, bad entry, offsets, overlap, ...), a name that is not in the
//                          file, a dtype a function cannot convert, a bad argument to the writer,
//                          a layer whose metadata is missing or wrong, a tensor of the wrong dtype
//   kErrorShape            a tensor's shape disagrees with its byte count (writer) or with the
//                          layer's metadata (load_quantized)
//   kErrorNullPointer      a null layer pointer or a null byte span with a non-zero size
//   kErrorOutOfMemory      an allocation failed
// Messages name the file (or "<memory>"), the tensor and the rule.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "svdq/linear.hpp"
#include "svdq/status.hpp"

namespace svdq {

/// A read-only run of bytes (not owned).
using ByteSpan = std::span<const uint8_t>;

/// Bytes per element of a safetensors dtype string: "BOOL", "U8", "I8", "F8_E4M3", "F8_E5M2",
/// "F8_E8M0" -> 1; "I16", "U16", "F16", "BF16" -> 2; "I32", "U32", "F32" -> 4; "I64", "U64",
/// "F64", "C64" -> 8. Any other string (including the sub-byte "F4", "F6_E2M3", "F6_E3M2")
/// -> 0: svdq treats it as an unknown dtype.
int64_t safetensors_dtype_size(std::string_view dtype) noexcept;

/// Largest header svdq reads (100 MB, the safetensors crate's MAX_HEADER_SIZE); a longer one is
/// taken for a corrupt length.
inline constexpr uint64_t kSafetensorsMaxHeaderBytes = 100'000'000;
/// Longest tensor name svdq reads or writes, in bytes (real checkpoints' names are < 200 bytes;
/// the bound keeps every name-processing step, e.g. a regex, cheap and bounded).
inline constexpr size_t kSafetensorsMaxNameBytes = 1024;
/// Longest "__metadata__" key, in bytes: a tensor name plus a prefix such as "svdq.layer.".
inline constexpr size_t kSafetensorsMaxMetadataKeyBytes = 2048;
/// Most dimensions a tensor may have (PyTorch allows 64 in principle; real weights have <= 5).
inline constexpr int kSafetensorsMaxDims = 16;

/// One tensor of a SafetensorsFile.
struct TensorInfo {
  std::string name;
  std::string dtype;           ///< safetensors dtype string, e.g. "F16", "U8", "F8_E4M3"
  std::vector<int64_t> shape;  ///< row-major dims, each >= 0; empty = a scalar (1 element)
  int64_t numel = 0;           ///< product of shape (1 for a scalar)
  int64_t begin = 0;           ///< data_offsets[0], relative to the start of the data buffer
  int64_t end = 0;             ///< data_offsets[1]; end - begin = numel * dtype size
  /// The tensor's bytes inside the file (valid while the SafetensorsFile lives), little-endian,
  /// no alignment promised: read 16/32-bit elements with memcpy.
  ByteSpan data;
};

/// A safetensors file, validated when opened, read through a read-only memory map (open) or an
/// owned buffer (from_bytes). Movable, not copyable; the destructor unmaps. A moved-from object
/// is empty (no tensors, no metadata). Reading never goes outside the file: every tensor's byte
/// range is checked at open. (As with any mmap, truncating the file on disk while it is open is
/// undefined: the OS may deliver SIGBUS.)
///
/// Validation (each failure a Status; see the error codes at the top of this header):
///   file shorter than 8 bytes; header length > kSafetensorsMaxHeaderBytes or past the end of the
///   file; header not UTF-8 JSON or not an object; "__metadata__" not an object of string values;
///   an entry that is not an object or lacks "dtype" (string, known to safetensors_dtype_size),
///   "shape" (array of integers >= 0) or "data_offsets" (array of 2 integers >= 0); a shape whose
///   element or byte count overflows int64; end < begin; end beyond the data buffer;
///   end - begin != numel * dtype size; two tensors with overlapping bytes; a gap before or between
///   the non-empty tensors (they must tile the data buffer from offset 0) or bytes after the last
///   one (the safetensors crate's rule); a name over kSafetensorsMaxNameBytes, a metadata key over
///   kSafetensorsMaxMetadataKeyBytes, a shape with more than kSafetensorsMaxDims dimensions. Keys
///   an entry does not need are ignored; tensor names may hold any characters (JSON strings, so
///   UTF-8).
class SafetensorsFile {
 public:
  SafetensorsFile() = default;  ///< empty: no tensors, no metadata
  ~SafetensorsFile();
  SafetensorsFile(SafetensorsFile&& other) noexcept;
  SafetensorsFile& operator=(SafetensorsFile&& other) noexcept;
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  /// Maps `path` read-only and validates it. kErrorIo if it cannot be opened or mapped (missing,
  /// a directory, no permission); kErrorInvalidArgument if its bytes are not a valid file.
  static Result<SafetensorsFile> open(const std::string& path);
  /// Validates an in-memory file (the same rules as open) and keeps the buffer.
  static Result<SafetensorsFile> from_bytes(std::vector<uint8_t> bytes);

  /// Tensor names in the order of their data in the buffer (ties, i.e. empty tensors, by name).
  const std::vector<std::string>& names() const noexcept { return names_; }
  bool contains(const std::string& name) const;
  /// The tensor's dtype, shape, offsets and bytes. kErrorInvalidArgument if there is no such name.
  Result<TensorInfo> info(const std::string& name) const;
  /// The tensor's bytes (as info(name)->data).
  Result<ByteSpan> bytes(const std::string& name) const;
  /// The tensor's elements as floats, row-major, converted exactly: dtype F32, F16, BF16 or
  /// F8_E4M3 (an E4M3 NaN byte gives NaN); any other dtype is kErrorInvalidArgument.
  Result<std::vector<float>> read_float(const std::string& name) const;
  /// "__metadata__" (empty if the file has none).
  const std::map<std::string, std::string>& metadata() const noexcept { return metadata_; }
  /// Bytes of the whole file.
  int64_t file_size() const noexcept { return static_cast<int64_t>(size_); }
  /// Where the file came from: its path, or "<memory>".
  const std::string& source() const noexcept { return source_; }

 private:
  struct Entry {
    std::string dtype;
    std::vector<int64_t> shape;
    int64_t numel = 0;
    int64_t begin = 0;
    int64_t end = 0;
  };
  Status parse();
  void release() noexcept;

  std::string source_;
  const uint8_t* data_ = nullptr;  ///< the whole file: mapping or owned_.data()
  size_t size_ = 0;
  void* map_addr_ = nullptr;  ///< non-null when data_ is an mmap of map_len_ bytes
  size_t map_len_ = 0;
  std::vector<uint8_t> owned_;
  size_t buffer_offset_ = 0;  ///< 8 + header length
  std::vector<std::string> names_;
  std::map<std::string, Entry> entries_;
  std::map<std::string, std::string> metadata_;
};

/// Builds a safetensors file: tensors laid out contiguously in insertion order, header padded
/// with spaces to a multiple of 8 bytes, "__metadata__" first and the tensors after it in
/// insertion order. The result is a file that the reference (Rust/Python) safetensors reader
/// accepts. add() copies the bytes, so the source may go away afterwards; add_view() does not
/// (the bytes must stay valid until the last serialize()/write()), so a tensor passed through
/// from a memory-mapped SafetensorsFile is streamed to the output without a copy in memory.
class SafetensorsWriter {
 public:
  /// Adds a tensor. name: any valid UTF-8 except "__metadata__", not already added, at most
  /// kSafetensorsMaxNameBytes. dtype: a string known to safetensors_dtype_size. shape: dims >= 0
  /// (empty = scalar), at most kSafetensorsMaxDims of them. bytes: exactly
  /// numel * dtype size bytes, row-major little-endian. Errors: kErrorInvalidArgument (name,
  /// dtype, negative dim, overflow), kErrorShape (byte count), kErrorNullPointer.
  Status add(const std::string& name, const std::string& dtype, const std::vector<int64_t>& shape,
             ByteSpan bytes);
  /// As add(), but keeps a view of `bytes` instead of a copy: they must stay valid and unchanged
  /// until the writer's last serialize() or write().
  Status add_view(const std::string& name, const std::string& dtype,
                  const std::vector<int64_t>& shape, ByteSpan bytes);
  /// Sets (or replaces) a metadata entry. Key and value must be valid UTF-8; the key at most
  /// kSafetensorsMaxMetadataKeyBytes.
  Status set_metadata(const std::string& key, const std::string& value);
  bool contains(const std::string& name) const;
  /// The whole file as bytes.
  Result<std::vector<uint8_t>> serialize() const;
  /// Writes the file atomically and durably: to a temporary file in path's directory, named
  /// ".<file name>.tmp-<16 random hex digits>" and created exclusively (O_CREAT | O_EXCL |
  /// O_NOFOLLOW: a planted file or symbolic link is never opened), with the mode of an existing
  /// regular file at path or else 0666 & ~umask; the data is fsync'ed, the file renamed over
  /// path, and the directory fsync'ed. A reader never sees half a file; on every failure the
  /// temporary file is removed. path must not be a FIFO, device, socket or directory (those are
  /// refused, never replaced). on_temp, when set, is called with the temporary file's path once
  /// it exists and with "" once it is gone (renamed or removed), so a program can remove it
  /// from a signal handler. kErrorIo when the file cannot be created, written, synced or renamed.
  Status write(const std::string& path,
               const std::function<void(const std::string&)>& on_temp = {}) const;

 private:
  /// A tensor's bytes: owned (add) or borrowed (add_view).
  struct Bytes {
    std::vector<uint8_t> owned;
    ByteSpan view;
    bool borrowed = false;
    const uint8_t* data() const noexcept { return borrowed ? view.data() : owned.data(); }
    size_t size() const noexcept { return borrowed ? view.size() : owned.size(); }
    bool empty() const noexcept { return size() == 0; }
    const uint8_t* begin() const noexcept { return data(); }
    const uint8_t* end() const noexcept { return data() + size(); }
  };
  struct Tensor {
    std::string name;
    std::string dtype;
    std::vector<int64_t> shape;
    Bytes bytes;
  };
  Status add_tensor(const std::string& name, const std::string& dtype,
                    const std::vector<int64_t>& shape, ByteSpan bytes, bool borrow);
  Result<std::string> header() const;

  std::vector<Tensor> tensors_;
  std::map<std::string, size_t> index_;
  std::map<std::string, std::string> metadata_;
};

/// Adds a quantized layer under the name `layer` (tensors "<layer>.qweight", ... and the metadata
/// "svdq.layer.<layer>", as at the top of this header). The layer must pass validate(); layer
/// must be non-empty; an int4 layer must have wtscale = act_tensor_scale = 1 (int4 stores none);
/// info.alpha, info.beta, info.weight_norm, info.residual_norm and info.seconds must be finite.
/// Does not set "svdq.version" (save_quantized does).
Status add_quantized(SafetensorsWriter& writer, const std::string& layer, const QuantizedLinear& q);

/// Writes the layers (name, layer; no null pointers, no repeated names) to one file, with
/// "svdq.version" and the extra metadata (svdq's own "svdq.*" keys win over extra ones).
Status save_quantized(const std::string& path,
                      const std::vector<std::pair<std::string, const QuantizedLinear*>>& layers,
                      const std::map<std::string, std::string>& extra_metadata = {});

/// Names of the layers in the file (every "svdq.layer.<layer>" metadata key), sorted.
/// kErrorInvalidArgument if one's value is not a JSON object.
Result<std::vector<std::string>> quantized_layers(const SafetensorsFile& file);

/// Reads layer `layer` back exactly as it was saved (every field, info included). Checks the
/// metadata (types and ranges of each field; group_size = group_size(format)), each tensor's
/// presence, dtype and shape against it, then validate(). A rank-0 layer may omit its lora
/// tensors. Errors: no such layer or bad metadata or wrong dtype or missing tensor
/// (kErrorInvalidArgument), wrong shape (kErrorShape).
Result<QuantizedLinear> load_quantized(const SafetensorsFile& file, const std::string& layer);

}  // namespace svdq
