// svdq/nunchaku.hpp — Nunchaku's SVDQuant checkpoints <-> svdq's canonical QuantizedLinear.
//
// Nunchaku (and DeepCompressor, which writes its files) stores each W4A4 layer in the GEMM
// kernel's fragment order, padded (N, K to 128, rank to 16), with its scales n-tile-major and its
// bias/smooth/wcscales permuted inside each 128-block. docs/checkpoint.md §5 gives the layout,
// with the sources it was read from. This header converts both ways, losslessly, for the layers
// svdq's format represents exactly:
//   int4: every group scale exactly representable in fp16 (Nunchaku's may be bf16; svdq's are
//         fp16). Layers Nunchaku feeds unsigned, shifted activations (the second linear of a
//         GELU MLP, recognised by name) import with QuantizedLinear::act_unsigned;
//   nvfp4: equal wcscales fold into svdq's fp32 tensor scale t_w when the product with wtscale
//         is an exact fp32; otherwise (per-channel ones too) they become QuantizedLinear::wcscales.
// Other layers are reported by name with the reason (NunchakuSkipped) and not converted: AWQ
// W4A16 layers, bf16 scales that fp16 cannot hold, a wtscale that is not a positive finite fp32.
//
// Errors (a Status naming the file, the layer and the tensor; nothing is returned or written):
//   kErrorInvalidArgument  a missing tensor, a tensor of the wrong dtype, bad metadata or
//                          options, a layer that to_nunchaku cannot write exactly
//   kErrorShape            a tensor of the wrong shape, padded sizes that are not multiples of
//                          128 (N, K) or 16 (rank), true sizes that disagree with them
//   kErrorIo               a file or folder that cannot be read or written
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "svdq/checkpoint.hpp"
#include "svdq/linear.hpp"
#include "svdq/status.hpp"

namespace svdq {

/// The shift Nunchaku adds to GELU(x) before quantizing it unsigned (SHIFT_GELU in
/// src/kernels/zgemm/gemm_w4a4_launch_impl.cuh): 0.171875 = 11/64, exact in every dtype.
inline constexpr float kNunchakuGeluShift = 0.171875f;

/// True (unpadded) sizes of one layer. rank < 0: take the padded rank from the file.
struct NunchakuLayerShape {
  int64_t in_features = 0;   ///< K
  int64_t out_features = 0;  ///< N
  int rank = -1;             ///< r
};

/// Tensor key names: Nunchaku's legacy/C++ names (`smooth`, `smooth_orig`, `lora_down`,
/// `lora_up`) or its v2 Python names (`smooth_factor`, `smooth_factor_orig`, `proj_down`,
/// `proj_up`). qweight, wscales, wcscales, wtscale and bias are the same in both.
enum class NunchakuNames : uint8_t { kLegacy = 0, kV2 = 1 };

struct NunchakuImportOptions {
  /// True sizes per layer name; they win over the file's "svdq.nunchaku.<layer>" metadata. A
  /// layer with neither keeps its padded sizes (the padding then becomes part of the layer).
  std::map<std::string, NunchakuLayerShape> shapes;
  /// int4 layers whose name ends with one of these (after a '.', or the whole name; "net.2" is
  /// the diffusers name of a feed-forward's second linear) get unsigned, shifted activations in
  /// Nunchaku's runtime: they import with act_unsigned = true and act_shift = unsigned_shift
  /// (the file's bias already holds the shift's branch contribution). Empty the list to import
  /// them as signed layers (their arithmetic then differs from Nunchaku's).
  std::vector<std::string> unsigned_layers = {"mlp_fc2", "mlp_context_fc2", "net.2"};
  float unsigned_shift = kNunchakuGeluShift;
};

/// A layer of the file that import does not convert, with the reason.
struct NunchakuSkipped {
  std::string layer;
  std::string reason;
};

struct NunchakuImport {
  std::vector<std::pair<std::string, QuantizedLinear>> layers;  ///< sorted by name
  std::vector<NunchakuSkipped> skipped;                         ///< sorted by name
  /// Tensors that belong to no converted layer (other parameters, skipped layers, and the unused
  /// smooth_orig of converted ones): (index into the files, tensor name), in file order.
  std::vector<std::pair<size_t, std::string>> other_tensors;
};

/// Imports every W4A4 layer of the files (one single-file release, or the two files of a legacy
/// release; a layer's tensors must all be in one file). A layer is the prefix of a tensor named
/// "<layer>.qweight". Per layer it checks every tensor's presence, dtype and shape against the
/// padded sizes and the true sizes, then unpacks (docs/checkpoint.md §5.3). storage = the dtype
/// of smooth; an all-zero bias (+0.0 everywhere, what DeepCompressor writes for "no bias")
/// imports as no bias. info.notes says "imported from Nunchaku".
Result<NunchakuImport> import_nunchaku(const std::vector<const SafetensorsFile*>& files,
                                       const NunchakuImportOptions& options = {});

/// Opens `path` (a .safetensors file, or a folder holding transformer_blocks.safetensors and
/// optionally unquantized_layers.safetensors) and imports it. The files stay open in `files`
/// (other_tensors refers to them).
Result<NunchakuImport> load_nunchaku(const std::string& path, std::vector<SafetensorsFile>& files,
                                     const NunchakuImportOptions& options = {});

struct NunchakuExportOptions {
  NunchakuNames names = NunchakuNames::kLegacy;
  /// Also write the "svdq.nunchaku.<layer>" metadata (true sizes), which import reads back.
  bool shape_metadata = true;
  /// Write smooth_orig (= smooth; unused by Nunchaku's runtime). `svdq convert --to nunchaku`
  /// turns it off for a layer whose input file still carries the imported original.
  bool smooth_orig = true;
  /// The names Nunchaku runs with unsigned activations (as NunchakuImportOptions). An int4
  /// layer is refused when its act_unsigned disagrees with its name, or when an unsigned one's
  /// act_shift is not kNunchakuGeluShift. Empty: no check.
  std::vector<std::string> unsigned_layers = {"mlp_fc2", "mlp_context_fc2", "net.2"};
};

/// Adds the tensors of `layer` in Nunchaku's layout, dtypes and padding, byte for byte what
/// DeepCompressor's packer writes for the same layer (with its padding values: codes 0, scales,
/// smooth and bias 1, lora 0; a layer without bias gets zeros), plus smooth_orig = smooth and,
/// for nvfp4, the layer's per-channel wcscales (and an F32 wtscale = t_w when t_w != 1), or
/// without them wcscales = t_w on every channel when the storage dtype holds t_w exactly (no
/// wtscale tensor), else wcscales = 1 and an F32 wtscale = t_w. Every 16-bit tensor has the
/// layer's storage dtype. Refuses (kErrorInvalidArgument, nothing added) a layer it cannot write
/// exactly: an int4 fp16 scale that bf16 cannot hold when storage is bf16, an nvfp4 layer with
/// act_tensor_scale != 1, an int4 layer whose act_unsigned/act_shift disagree with what
/// Nunchaku runs for its name (options.unsigned_layers), a layer that fails validate(). Sets the "svdq.nunchaku.<layer>"
/// metadata when asked; not quantization_config (save_nunchaku does).
Status add_nunchaku(SafetensorsWriter& writer, const std::string& layer, const QuantizedLinear& q,
                    const NunchakuExportOptions& options = {});

/// Writes the layers to one file with Nunchaku's "quantization_config" metadata (format of the
/// layers, which must all share one format and one storage dtype; rank = the largest padded
/// rank). Builds everything in memory first: on any error nothing is written.
Status save_nunchaku(const std::string& path,
                     const std::vector<std::pair<std::string, const QuantizedLinear*>>& layers,
                     const NunchakuExportOptions& options = {},
                     const std::map<std::string, std::string>& extra_metadata = {});

/// True when Nunchaku runs an int4 layer of this name with unsigned shifted activations: the name
/// ends with one of `names` after a '.' (or is one of them).
bool nunchaku_unsigned_by_name(const std::string& layer,
                               const std::vector<std::string>& names = {"mlp_fc2", "mlp_context_fc2",
                                                                        "net.2"});

/// The quantization_config JSON string Nunchaku's loaders read (docs/checkpoint.md §5.2).
std::string nunchaku_quantization_config(Format format, int rank);

}  // namespace svdq
