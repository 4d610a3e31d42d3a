// Safetensors reading (validating, memory-mapped), writing, and QuantizedLinear checkpoints.
// The format and the rules are stated in include/svdq/checkpoint.hpp and docs/checkpoint.md.
#include "svdq/checkpoint.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <climits>
#include <cmath>
#include <cstdlib>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <limits>
#include <new>
#include <nlohmann/json.hpp>
#include <system_error>

#include "check.hpp"
#include "svdq/formats.hpp"
#include "svdq/version.hpp"

namespace svdq {

// 16/32-bit tensors are copied between memory and files as raw bytes.
static_assert(std::endian::native == std::endian::little,
              "svdq checkpoint I/O assumes a little-endian host (safetensors is little-endian)");

namespace {

using detail::error;
using Json = nlohmann::json;
using OrderedJson = nlohmann::ordered_json;

constexpr const char* kMetadataKey = "__metadata__";
constexpr const char* kVersionKey = "svdq.version";
// Layers with a block-Hadamard rotation need format 2.0 or later (readers of 1.x refuse them with
// kErrorNotSupported); the newest major this svdq reads is SVDQ_CHECKPOINT_FORMAT_MAJOR.
constexpr int kRotatedFormatMajor = 2;  // the first format version that holds a rotation
static_assert(kRotatedFormatMajor <= SVDQ_CHECKPOINT_FORMAT_MAJOR);
constexpr const char* kLayerKeyPrefix = "svdq.layer.";
/// Largest in_features / out_features load_quantized accepts: keeps every size product in int64.
constexpr int64_t kMaxFeatures = (int64_t{1} << 31) - 1;

/// A name as it appears in messages: quoted, non-printable bytes as \xNN, cut after 120 bytes
/// (svdq::printable, which the command-line tool uses for the names it prints).
std::string quote(std::string_view s) { return "'" + printable(s, 120) + "'"; }

/// Strict UTF-8 (RFC 3629: no overlong forms, no surrogates, nothing above U+10FFFF), the rule
/// JSON strings follow.
bool valid_utf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) {
      ++i;
      continue;
    }
    int len = 0;
    uint32_t cp = 0;
    if ((c & 0xe0) == 0xc0) {
      len = 2, cp = c & 0x1f;
    } else if ((c & 0xf0) == 0xe0) {
      len = 3, cp = c & 0x0f;
    } else if ((c & 0xf8) == 0xf0) {
      len = 4, cp = c & 0x07;
    } else {
      return false;
    }
    if (s.size() - i < static_cast<size_t>(len)) return false;
    for (int j = 1; j < len; ++j) {
      const auto d = static_cast<unsigned char>(s[i + j]);
      if ((d & 0xc0) != 0x80) return false;
      cp = (cp << 6) | (d & 0x3f);
    }
    static constexpr uint32_t kMin[5] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < kMin[len] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return false;
    i += len;
  }
  return true;
}

/// numel = product(shape) and nbytes = numel * elem, or false when either overflows int64.
bool checked_sizes(const std::vector<int64_t>& shape, int64_t elem, int64_t* numel,
                   int64_t* nbytes) {
  int64_t n = 1;
  for (const int64_t d : shape)
    if (__builtin_mul_overflow(n, d, &n)) return false;
  int64_t b = 0;
  if (__builtin_mul_overflow(n, elem, &b)) return false;
  *numel = n;
  *nbytes = b;
  return true;
}

std::string shape_string(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

/// A JSON value as a non-negative int64: "ok", or why not (for messages).
const char* json_to_index(const Json& j, int64_t* out) {
  if (j.is_number_unsigned()) {
    const auto v = j.get<uint64_t>();
    if (v > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return "is too large";
    *out = static_cast<int64_t>(v);
    return nullptr;
  }
  if (j.is_number_integer()) return "is negative";  // nlohmann parses every n >= 0 as unsigned
  return "is not an integer";
}

std::string json_type(const Json& j) { return j.type_name(); }

Status out_of_memory(const std::string& where) {
  return error(StatusCode::kErrorOutOfMemory, where, ": out of memory");
}

}  // namespace

int64_t safetensors_dtype_size(std::string_view dtype) noexcept {
  struct Entry {
    std::string_view name;
    int64_t size;
  };
  static constexpr Entry kDtypes[] = {
      {"BOOL", 1}, {"U8", 1},  {"I8", 1},  {"F8_E4M3", 1}, {"F8_E5M2", 1}, {"F8_E8M0", 1},
      {"I16", 2},  {"U16", 2}, {"F16", 2}, {"BF16", 2},    {"I32", 4},     {"U32", 4},
      {"F32", 4},  {"I64", 8}, {"U64", 8}, {"F64", 8},     {"C64", 8},
  };
  for (const auto& e : kDtypes)
    if (e.name == dtype) return e.size;
  return 0;
}

// ---------------------------------------------------------------------------------------------
// SafetensorsFile

SafetensorsFile::~SafetensorsFile() { release(); }

void SafetensorsFile::release() noexcept {
  if (map_addr_ != nullptr) munmap(map_addr_, map_len_);
  map_addr_ = nullptr;
  map_len_ = 0;
  data_ = nullptr;
  size_ = 0;
  buffer_offset_ = 0;
  owned_.clear();
  owned_.shrink_to_fit();
  names_.clear();
  entries_.clear();
  metadata_.clear();
}

SafetensorsFile::SafetensorsFile(SafetensorsFile&& other) noexcept { *this = std::move(other); }

SafetensorsFile& SafetensorsFile::operator=(SafetensorsFile&& other) noexcept {
  if (this == &other) return *this;
  release();
  source_ = std::move(other.source_);
  // A moved std::vector keeps its heap buffer, so data_ stays valid when it points into owned_.
  owned_ = std::move(other.owned_);
  data_ = other.data_;
  size_ = other.size_;
  map_addr_ = other.map_addr_;
  map_len_ = other.map_len_;
  buffer_offset_ = other.buffer_offset_;
  names_ = std::move(other.names_);
  entries_ = std::move(other.entries_);
  metadata_ = std::move(other.metadata_);
  other.map_addr_ = nullptr;  // ownership of the mapping moved here
  other.release();
  return *this;
}

Result<SafetensorsFile> SafetensorsFile::open(const std::string& path) {
  try {
    const std::string where = "SafetensorsFile::open: " + quote(path);
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);  // a FIFO never blocks
    if (fd < 0) return error(StatusCode::kErrorIo, where, ": cannot open: ", std::strerror(errno));
    struct stat st {};
    if (fstat(fd, &st) != 0) {
      const int e = errno;
      ::close(fd);
      return error(StatusCode::kErrorIo, where, ": cannot stat: ", std::strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
      ::close(fd);
      return error(StatusCode::kErrorIo, where, ": is not a regular file");
    }
    SafetensorsFile f;
    f.source_ = path;
    f.size_ = static_cast<size_t>(st.st_size);
    if (f.size_ > 0) {  // mmap of 0 bytes fails; parse() reports the empty file
      void* addr = mmap(nullptr, f.size_, PROT_READ, MAP_PRIVATE, fd, 0);
      if (addr == MAP_FAILED) {
        const int e = errno;
        ::close(fd);
        return error(StatusCode::kErrorIo, where, ": cannot mmap ", f.size_,
                     " bytes: ", std::strerror(e));
      }
      f.map_addr_ = addr;
      f.map_len_ = f.size_;
      f.data_ = static_cast<const uint8_t*>(addr);
    }
    ::close(fd);  // the mapping stays valid without the descriptor
    SVDQ_RETURN_IF_ERROR(f.parse());
    return f;
  } catch (const std::bad_alloc&) {
    return out_of_memory("SafetensorsFile::open: " + quote(path));
  }
}

Result<SafetensorsFile> SafetensorsFile::from_bytes(std::vector<uint8_t> bytes) {
  try {
    SafetensorsFile f;
    f.source_ = "<memory>";
    f.owned_ = std::move(bytes);
    f.data_ = f.owned_.data();
    f.size_ = f.owned_.size();
    SVDQ_RETURN_IF_ERROR(f.parse());
    return f;
  } catch (const std::bad_alloc&) {
    return out_of_memory("SafetensorsFile::from_bytes");
  }
}

Status SafetensorsFile::parse() {
  const std::string where = "safetensors " + quote(source_);
  constexpr auto kBad = StatusCode::kErrorInvalidArgument;
  if (size_ < 8)
    return error(kBad, where, ": file is ", size_,
                 " bytes, shorter than the 8-byte little-endian header length that starts a "
                 "safetensors file");
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | data_[i];
  if (n > kSafetensorsMaxHeaderBytes)
    return error(kBad, where, ": header length (", n, ") exceeds the limit of ",
                 kSafetensorsMaxHeaderBytes, " bytes (corrupt or not a safetensors file)");
  if (n > size_ - 8)
    return error(kBad, where, ": header length (", n, ") runs past the end of the file (",
                 size_ - 8, " bytes after the 8-byte length; truncated?)");
  buffer_offset_ = 8 + static_cast<size_t>(n);
  const int64_t buffer_size = static_cast<int64_t>(size_ - buffer_offset_);

  Json header;
  try {
    header = Json::parse(data_ + 8, data_ + buffer_offset_);
  } catch (const Json::parse_error& e) {
    return error(kBad, where, ": header is not valid JSON (parse error at byte ", e.byte,
                 " of the header)");
  } catch (const Json::exception& e) {  // e.g. out_of_range.406: a number overflows a double
    return error(kBad, where, ": header is not valid JSON (error ", e.id, ")");
  }
  if (!header.is_object())
    return error(kBad, where, ": header is a JSON ", json_type(header), ", not an object");

  struct Span {
    int64_t begin, end;
    const std::string* name;
  };
  std::vector<Span> spans;
  for (const auto& [name, value] : header.items()) {
    if (name == kMetadataKey) {
      if (!value.is_object())
        return error(kBad, where, ": \"__metadata__\" is a JSON ", json_type(value),
                     ", not an object of strings");
      for (const auto& [key, v] : value.items()) {
        if (key.size() > kSafetensorsMaxMetadataKeyBytes)
          return error(kBad, where, ": \"__metadata__\" key ", quote(key), " is ", key.size(),
                       " bytes, over the limit of ", kSafetensorsMaxMetadataKeyBytes, " bytes");
        if (!v.is_string())
          return error(kBad, where, ": \"__metadata__\" value of key ", quote(key), " is a JSON ",
                       json_type(v), ", not a string");
        metadata_[key] = v.get<std::string>();
      }
      continue;
    }
    const std::string tw = where + ": tensor " + quote(name);
    if (name.size() > kSafetensorsMaxNameBytes)
      return error(kBad, tw, ": name is ", name.size(), " bytes, over the limit of ",
                   kSafetensorsMaxNameBytes, " bytes on a tensor name");
    if (!value.is_object())
      return error(kBad, tw, " is a JSON ", json_type(value),
                   ", not an object with dtype, shape and data_offsets");
    const auto dtype_it = value.find("dtype");
    const auto shape_it = value.find("shape");
    const auto offsets_it = value.find("data_offsets");
    if (dtype_it == value.end()) return error(kBad, tw, " has no \"dtype\"");
    if (shape_it == value.end()) return error(kBad, tw, " has no \"shape\"");
    if (offsets_it == value.end()) return error(kBad, tw, " has no \"data_offsets\"");
    if (!dtype_it->is_string())
      return error(kBad, tw, ": \"dtype\" is a JSON ", json_type(*dtype_it), ", not a string");
    Entry e;
    e.dtype = dtype_it->get<std::string>();
    const int64_t elem = safetensors_dtype_size(e.dtype);
    if (elem == 0) return error(kBad, tw, ": unknown dtype ", quote(e.dtype));
    if (!shape_it->is_array())
      return error(kBad, tw, ": \"shape\" is a JSON ", json_type(*shape_it), ", not an array");
    if (shape_it->size() > static_cast<size_t>(kSafetensorsMaxDims))
      return error(kBad, tw, ": \"shape\" has ", shape_it->size(), " dimensions, over the limit of ",
                   kSafetensorsMaxDims);
    for (size_t i = 0; i < shape_it->size(); ++i) {
      int64_t d = 0;
      if (const char* why = json_to_index((*shape_it)[i], &d))
        return error(kBad, tw, ": shape[", i, "] ", why, " (dims must be integers >= 0)");
      e.shape.push_back(d);
    }
    int64_t nbytes = 0;
    if (!checked_sizes(e.shape, elem, &e.numel, &nbytes))
      return error(kBad, tw, ": shape ", shape_string(e.shape), " of ", e.dtype,
                   " overflows a 64-bit byte count");
    if (!offsets_it->is_array() || offsets_it->size() != 2)
      return error(kBad, tw, ": \"data_offsets\" is not an array of 2 integers [begin, end]");
    for (int i = 0; i < 2; ++i)
      if (const char* why = json_to_index((*offsets_it)[i], i == 0 ? &e.begin : &e.end))
        return error(kBad, tw, ": data_offsets[", i, "] ", why, " (offsets must be integers >= 0)");
    if (e.end < e.begin)
      return error(kBad, tw, ": data_offsets end (", e.end, ") is before begin (", e.begin, ")");
    if (e.end > buffer_size)
      return error(kBad, tw, ": data_offsets [", e.begin, ", ", e.end,
                   "] run past the end of the data buffer (", buffer_size, " bytes; truncated?)");
    if (e.end - e.begin != nbytes)
      return error(kBad, tw, ": data_offsets span ", e.end - e.begin, " bytes but shape ",
                   shape_string(e.shape), " of ", e.dtype, " needs ", nbytes);
    const auto [it, inserted] = entries_.emplace(name, std::move(e));
    if (nbytes > 0) spans.push_back({it->second.begin, it->second.end, &it->first});
  }

  std::sort(spans.begin(), spans.end(), [](const Span& a, const Span& b) {
    return a.begin != b.begin ? a.begin < b.begin : *a.name < *b.name;
  });
  for (size_t i = 1; i < spans.size(); ++i)
    if (spans[i].begin < spans[i - 1].end)
      return error(kBad, where, ": tensors ", quote(*spans[i - 1].name), " [", spans[i - 1].begin,
                   ", ", spans[i - 1].end, ") and ", quote(*spans[i].name), " [", spans[i].begin,
                   ", ", spans[i].end, ") overlap");
  // The safetensors crate's rule: the tensors tile the data buffer from offset 0, with no gap
  // and no byte after the last one (docs/checkpoint.md, "Validation").
  int64_t covered = 0;
  for (const Span& sp : spans) {
    if (sp.begin != covered)
      return error(kBad, where, ": tensor ", quote(*sp.name), " starts at data offset ", sp.begin,
                   ", leaving a gap after byte ", covered,
                   " (tensors must cover the data buffer contiguously from offset 0)");
    covered = sp.end;
  }
  if (covered != buffer_size)
    return error(kBad, where, ": ", buffer_size - covered, " trailing byte(s) after the last tensor (",
                 "tensors cover ", covered, " of the ", buffer_size,
                 " data bytes; the format allows none)");

  // Buffer order, ties (empty tensors) by name: entries_ iterates by name and the sort is stable.
  // The offsets travel with the names, so sorting does no map lookups (80k tensors: one pass).
  std::vector<std::pair<int64_t, const std::string*>> order;
  order.reserve(entries_.size());
  for (const auto& [name, e] : entries_) order.emplace_back(e.begin, &name);
  std::stable_sort(order.begin(), order.end(),
                   [](const auto& a, const auto& b) { return a.first < b.first; });
  names_.reserve(order.size());
  for (const auto& [begin, name] : order) names_.push_back(*name);
  return Status::Ok();
}

bool SafetensorsFile::contains(const std::string& name) const { return entries_.count(name) != 0; }

Result<TensorInfo> SafetensorsFile::info(const std::string& name) const try {
  const auto it = entries_.find(name);
  if (it == entries_.end())
    return error(StatusCode::kErrorInvalidArgument, "safetensors ", quote(source_),
                 ": no tensor named ", quote(name));
  const Entry& e = it->second;
  TensorInfo t;
  t.name = name;
  t.dtype = e.dtype;
  t.shape = e.shape;
  t.numel = e.numel;
  t.begin = e.begin;
  t.end = e.end;
  t.data = ByteSpan(data_ + buffer_offset_ + e.begin, static_cast<size_t>(e.end - e.begin));
  return t;
} catch (const std::bad_alloc&) {
  return out_of_memory("SafetensorsFile::info");
}

Result<ByteSpan> SafetensorsFile::bytes(const std::string& name) const {
  auto t = info(name);
  if (!t.ok()) return t.status();
  return t->data;
}

Result<std::vector<float>> SafetensorsFile::read_float(const std::string& name) const {
  try {
    auto t = info(name);
    if (!t.ok()) return t.status();
    const uint8_t* p = t->data.data();
    const int64_t n = t->numel;
    std::vector<float> out(static_cast<size_t>(n));
    if (t->dtype == "F32") {
      if (n > 0) std::memcpy(out.data(), p, static_cast<size_t>(n) * 4);
    } else if (t->dtype == "F16" || t->dtype == "BF16") {
      const bool half = t->dtype == "F16";
      for (int64_t i = 0; i < n; ++i) {
        uint16_t b;
        std::memcpy(&b, p + 2 * i, 2);
        out[i] = half ? half_bits_to_float(b) : bf16_bits_to_float(b);
      }
    } else if (t->dtype == "F8_E4M3") {
      for (int64_t i = 0; i < n; ++i) out[i] = decode_e4m3(p[i]);
    } else {
      return error(StatusCode::kErrorInvalidArgument, "read_float: tensor ", quote(name), " of ",
                   quote(source_), " has dtype ", t->dtype,
                   "; only F32, F16, BF16 and F8_E4M3 convert exactly to float");
    }
    return out;
  } catch (const std::bad_alloc&) {
    return out_of_memory("read_float: tensor " + quote(name));
  }
}

// ---------------------------------------------------------------------------------------------
// SafetensorsWriter

Status SafetensorsWriter::add(const std::string& name, const std::string& dtype,
                              const std::vector<int64_t>& shape, ByteSpan bytes) {
  return add_tensor(name, dtype, shape, bytes, /*borrow=*/false);
}

Status SafetensorsWriter::add_view(const std::string& name, const std::string& dtype,
                                   const std::vector<int64_t>& shape, ByteSpan bytes) {
  return add_tensor(name, dtype, shape, bytes, /*borrow=*/true);
}

Status SafetensorsWriter::add_tensor(const std::string& name, const std::string& dtype,
                                     const std::vector<int64_t>& shape, ByteSpan bytes,
                                     bool borrow) {
  const std::string where =
      std::string(borrow ? "SafetensorsWriter::add_view" : "SafetensorsWriter::add") +
      ": tensor " + quote(name);
  constexpr auto kBad = StatusCode::kErrorInvalidArgument;
  if (name == kMetadataKey) return error(kBad, where, ": the name \"__metadata__\" is reserved");
  if (!valid_utf8(name)) return error(kBad, where, ": name is not valid UTF-8");
  if (name.size() > kSafetensorsMaxNameBytes)
    return error(kBad, where, ": name is ", name.size(), " bytes, over the limit of ",
                 kSafetensorsMaxNameBytes, " bytes on a tensor name");
  if (shape.size() > static_cast<size_t>(kSafetensorsMaxDims))
    return error(kBad, where, ": shape has ", shape.size(), " dimensions, over the limit of ",
                 kSafetensorsMaxDims);
  if (index_.count(name) != 0) return error(kBad, where, ": name already added");
  const int64_t elem = safetensors_dtype_size(dtype);
  if (elem == 0) return error(kBad, where, ": unknown dtype ", quote(dtype));
  for (size_t i = 0; i < shape.size(); ++i)
    if (shape[i] < 0) return error(kBad, where, ": shape[", i, "] (", shape[i], ") is negative");
  int64_t numel = 0, nbytes = 0;
  if (!checked_sizes(shape, elem, &numel, &nbytes))
    return error(kBad, where, ": shape ", shape_string(shape), " of ", dtype,
                 " overflows a 64-bit byte count");
  if (static_cast<int64_t>(bytes.size()) != nbytes)
    return error(StatusCode::kErrorShape, where, ": ", bytes.size(), " bytes given, but shape ",
                 shape_string(shape), " of ", dtype, " needs ", nbytes);
  if (bytes.data() == nullptr && !bytes.empty())
    return error(StatusCode::kErrorNullPointer, where, ": bytes.data() is null");
  try {
    Tensor t{name, dtype, shape, {}};
    t.bytes.borrowed = borrow;
    if (borrow)
      t.bytes.view = bytes;
    else
      t.bytes.owned.assign(bytes.begin(), bytes.end());
    index_.emplace(name, tensors_.size());
    tensors_.push_back(std::move(t));
  } catch (const std::bad_alloc&) {
    index_.erase(name);
    return out_of_memory(where);
  }
  return Status::Ok();
}

Status SafetensorsWriter::set_metadata(const std::string& key, const std::string& value) try {
  if (key.size() > kSafetensorsMaxMetadataKeyBytes)
    return error(StatusCode::kErrorInvalidArgument, "SafetensorsWriter::set_metadata: key ",
                 quote(key), " is ", key.size(), " bytes, over the limit of ",
                 kSafetensorsMaxMetadataKeyBytes, " bytes");
  if (!valid_utf8(key))
    return error(StatusCode::kErrorInvalidArgument, "SafetensorsWriter::set_metadata: key ",
                 quote(key), " is not valid UTF-8");
  if (!valid_utf8(value))
    return error(StatusCode::kErrorInvalidArgument, "SafetensorsWriter::set_metadata: value of ",
                 quote(key), " is not valid UTF-8");
  metadata_[key] = value;
  return Status::Ok();
} catch (const std::bad_alloc&) {
  return out_of_memory("SafetensorsWriter::set_metadata");
}

bool SafetensorsWriter::contains(const std::string& name) const { return index_.count(name) != 0; }

namespace {

/// Appends s as a JSON string (quoted; '"', '\\' and control characters escaped; UTF-8 as is).
void append_json_string(std::string* out, std::string_view s) {
  static constexpr char kHex[] = "0123456789abcdef";
  out->push_back('"');
  for (const char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    switch (c) {
      case '"': *out += "\\\""; break;
      case '\\': *out += "\\\\"; break;
      case '\n': *out += "\\n"; break;
      case '\t': *out += "\\t"; break;
      case '\r': *out += "\\r"; break;
      case '\b': *out += "\\b"; break;
      case '\f': *out += "\\f"; break;
      default:
        if (c < 0x20) {
          *out += "\\u00";
          out->push_back(kHex[c >> 4]);
          out->push_back(kHex[c & 15]);
        } else {
          out->push_back(ch);
        }
    }
  }
  out->push_back('"');
}

}  // namespace

Result<std::string> SafetensorsWriter::header() const {
  // Written directly, in one pass: nlohmann::ordered_json looks keys up linearly, which made
  // the header quadratic in the number of tensors (40k tensors: 4.9 s; issue 10).
  try {
    std::string s = "{";
    bool first = true;
    if (!metadata_.empty()) {
      s += "\"__metadata__\":{";
      for (const auto& [k, v] : metadata_) {
        if (!first) s.push_back(',');
        first = false;
        append_json_string(&s, k);
        s.push_back(':');
        append_json_string(&s, v);
      }
      s.push_back('}');
      first = false;
    }
    int64_t offset = 0;
    for (const Tensor& t : tensors_) {
      const int64_t end = offset + static_cast<int64_t>(t.bytes.size());
      if (!first) s.push_back(',');
      first = false;
      append_json_string(&s, t.name);
      s += ":{\"dtype\":";
      append_json_string(&s, t.dtype);
      s += ",\"shape\":[";
      for (size_t i = 0; i < t.shape.size(); ++i) {
        if (i) s.push_back(',');
        s += std::to_string(t.shape[i]);
      }
      s += "],\"data_offsets\":[";
      s += std::to_string(offset);
      s.push_back(',');
      s += std::to_string(end);
      s += "]}";
      offset = end;
    }
    s.push_back('}');
    s.resize((s.size() + 7) / 8 * 8, ' ');
    return s;
  } catch (const std::bad_alloc&) {
    return out_of_memory("SafetensorsWriter: header");
  }
}

Result<std::vector<uint8_t>> SafetensorsWriter::serialize() const {
  auto h = header();
  if (!h.ok()) return h.status();
  try {
    size_t total = 8 + h->size();
    for (const Tensor& t : tensors_) total += t.bytes.size();
    std::vector<uint8_t> out;
    out.reserve(total);
    const uint64_t n = h->size();
    for (int i = 0; i < 8; ++i) out.push_back(static_cast<uint8_t>(n >> (8 * i)));
    out.insert(out.end(), h->begin(), h->end());
    for (const Tensor& t : tensors_) out.insert(out.end(), t.bytes.begin(), t.bytes.end());
    return out;
  } catch (const std::bad_alloc&) {
    return out_of_memory("SafetensorsWriter::serialize");
  }
}

namespace {

/// write(2) all of [p, p + n), retrying short writes and EINTR. false with errno set on failure.
bool write_all(int fd, const uint8_t* p, size_t n) {
  while (n > 0) {
    const ssize_t w = ::write(fd, p, std::min<size_t>(n, size_t{1} << 30));
    if (w < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

/// 64 unpredictable bits for a temporary file name (getrandom; the clock and address as a
/// fallback where getrandom is unavailable: the name is still created exclusively).
uint64_t random_bits() {
  uint64_t v = 0;
  if (getrandom(&v, sizeof v, GRND_NONBLOCK) == static_cast<ssize_t>(sizeof v)) return v;
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  v = static_cast<uint64_t>(ts.tv_nsec) ^ (static_cast<uint64_t>(ts.tv_sec) << 32) ^
      reinterpret_cast<uintptr_t>(&v) ^ (static_cast<uint64_t>(getpid()) << 16);
  return v * 0x9e3779b97f4a7c15ULL;
}

std::string file_kind(mode_t m) {
  if (S_ISDIR(m)) return "a directory";
  if (S_ISFIFO(m)) return "a FIFO";
  if (S_ISCHR(m)) return "a character device";
  if (S_ISBLK(m)) return "a block device";
  if (S_ISSOCK(m)) return "a socket";
  return "not a regular file";
}

}  // namespace

Status SafetensorsWriter::write(const std::string& path,
                                const std::function<void(const std::string&)>& on_temp) const {
  const std::string where = "SafetensorsWriter::write: " + quote(path);
  if (path.empty()) return error(StatusCode::kErrorIo, where, ": the path is empty");
  // An existing target must be a regular file (followed through links): a FIFO, a device or
  // /dev/stdout would otherwise be replaced by a regular file. Its mode is kept.
  mode_t mode = 0666;  // umask applies at creation
  bool keep_mode = false;
  struct stat st {};
  if (::stat(path.c_str(), &st) == 0) {
    if (!S_ISREG(st.st_mode))
      return error(StatusCode::kErrorIo, where, ": is ", file_kind(st.st_mode),
                   "; svdq writes regular files only and never replaces a special file");
    mode = st.st_mode & 07777;
    keep_mode = true;
  } else if (errno != ENOENT) {
    return error(StatusCode::kErrorIo, where, ": cannot stat: ", std::strerror(errno));
  }
  auto h = header();
  if (!h.ok()) return h.status();

  const size_t slash = path.rfind('/');
  const std::string dir = slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash));
  const std::string base = slash == std::string::npos ? path : path.substr(slash + 1);
  std::string tmp;
  int fd = -1;
  for (int attempt = 0; attempt < 16 && fd < 0; ++attempt) {
    char hex[17];
    std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(random_bits()));
    tmp = (slash == std::string::npos ? std::string() : path.substr(0, slash + 1)) + "." + base +
          ".tmp-" + hex;
    fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode);
    if (fd < 0 && errno != EEXIST)
      return error(StatusCode::kErrorIo, where, ": cannot create ", quote(tmp), ": ",
                   std::strerror(errno));
  }
  if (fd < 0)
    return error(StatusCode::kErrorIo, where, ": cannot create a temporary file in ", quote(dir),
                 ": 16 random names were all taken");
  if (on_temp) on_temp(tmp);
  // Every failure from here removes the temporary file.
  auto fail = [&](const char* step, int e) {
    if (fd >= 0) ::close(fd);
    ::unlink(tmp.c_str());
    if (on_temp) on_temp(std::string());
    return error(StatusCode::kErrorIo, where, ": ", step, " ", quote(tmp), " failed: ",
                 std::strerror(e));
  };
  if (keep_mode && fchmod(fd, mode) != 0) return fail("setting the mode of", errno);
  uint8_t len[8];
  const uint64_t n = h->size();
  for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>(n >> (8 * i));
  if (!write_all(fd, len, 8) ||
      !write_all(fd, reinterpret_cast<const uint8_t*>(h->data()), h->size()))
    return fail("writing", errno);
  for (const Tensor& t : tensors_)
    if (!write_all(fd, t.bytes.data(), t.bytes.size())) return fail("writing", errno);
  if (fsync(fd) != 0) return fail("fsync of", errno);
  const int fd_closed = fd;
  fd = -1;
  if (::close(fd_closed) != 0) return fail("closing", errno);
  if (std::rename(tmp.c_str(), path.c_str()) != 0) return fail("renaming over the output", errno);
  if (on_temp) on_temp(std::string());
  // Durable: the directory entry of the rename reaches the disk too.
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0)
    return error(StatusCode::kErrorIo, where, ": written, but its directory ", quote(dir),
                 " cannot be opened to fsync: ", std::strerror(errno));
  const int sync_rc = fsync(dfd);
  const int sync_errno = errno;
  ::close(dfd);
  if (sync_rc != 0 && sync_errno != EINVAL)  // EINVAL: a directory that does not support fsync
    return error(StatusCode::kErrorIo, where, ": written, but fsync of its directory ", quote(dir),
                 " failed: ", std::strerror(sync_errno));
  return Status::Ok();
}

// ---------------------------------------------------------------------------------------------
// QuantizedLinear checkpoints

namespace {

const char* svd_name(SvdMethod m) { return m == SvdMethod::kExact ? "exact" : "randomized"; }

template <typename T>
ByteSpan as_bytes(const std::vector<T>& v) {
  return ByteSpan(reinterpret_cast<const uint8_t*>(v.data()), v.size() * sizeof(T));
}

}  // namespace

Status add_quantized(SafetensorsWriter& writer, const std::string& layer,
                     const QuantizedLinear& q) {
  const std::string where = "add_quantized: layer " + quote(layer);
  constexpr auto kBad = StatusCode::kErrorInvalidArgument;
  if (layer.empty()) return error(kBad, where, ": the layer name must not be empty");
  if (Status s = validate(q); !s.ok()) return Status(s.code(), where + ": " + s.message());
  if (q.format == Format::kInt4 && (q.wtscale != 1.0f || q.act_tensor_scale != 1.0f))
    return error(kBad, where, ": an int4 layer stores no tensor scales, so wtscale (", q.wtscale,
                 ") and act_tensor_scale (", q.act_tensor_scale, ") must be 1");
  const struct {
    const char* name;
    double v;
  } finite_fields[] = {{"info.alpha", q.info.alpha},
                       {"info.beta", q.info.beta},
                       {"info.weight_norm", q.info.weight_norm},
                       {"info.residual_norm", q.info.residual_norm},
                       {"info.seconds", q.info.seconds},
                       {"info.score", q.info.score}};
  for (const auto& f : finite_fields)
    if (!std::isfinite(f.v))
      return error(kBad, where, ": ", f.name, " (", f.v, ") must be finite (stored as JSON)");
  for (size_t i = 0; i < q.info.selection.size(); ++i)
    if (!std::isfinite(q.info.selection[i].score))
      return error(kBad, where, ": info.selection[", i, "].score (", q.info.selection[i].score,
                   ") must be finite (stored as JSON)");
  const std::string metadata_key = kLayerKeyPrefix + layer;

  try {
    const std::string names[] = {".qweight", ".wscales",   ".wtscale", ".act_tscale",
                                 ".smooth",  ".lora_down", ".lora_up", ".bias", ".wcscales"};
    for (const std::string& suffix : names)
      if (writer.contains(layer + suffix))
        return error(kBad, where, ": the writer already holds a tensor ", quote(layer + suffix));

    const int64_t n = q.out_features, k = q.in_features, r = q.rank;
    const bool int4 = q.format == Format::kInt4;
    const char* s16 = q.storage == DType::kF16 ? "F16" : "BF16";
    SVDQ_RETURN_IF_ERROR(writer.add(layer + ".qweight", "U8", {n, k / 2}, as_bytes(q.qweight)));
    SVDQ_RETURN_IF_ERROR(writer.add(layer + ".wscales", int4 ? "F16" : "F8_E4M3", {n, k / q.group},
                                    as_bytes(q.wscales)));
    if (!int4) {
      SVDQ_RETURN_IF_ERROR(writer.add(layer + ".wtscale", "F32", {1},
                                      ByteSpan(reinterpret_cast<const uint8_t*>(&q.wtscale), 4)));
      SVDQ_RETURN_IF_ERROR(
          writer.add(layer + ".act_tscale", "F32", {1},
                     ByteSpan(reinterpret_cast<const uint8_t*>(&q.act_tensor_scale), 4)));
    }
    SVDQ_RETURN_IF_ERROR(writer.add(layer + ".smooth", s16, {k}, as_bytes(q.smooth)));
    SVDQ_RETURN_IF_ERROR(writer.add(layer + ".lora_down", s16, {k, r}, as_bytes(q.lora_down)));
    SVDQ_RETURN_IF_ERROR(writer.add(layer + ".lora_up", s16, {n, r}, as_bytes(q.lora_up)));
    if (!q.bias.empty())
      SVDQ_RETURN_IF_ERROR(writer.add(layer + ".bias", s16, {n}, as_bytes(q.bias)));
    if (!q.wcscales.empty())
      SVDQ_RETURN_IF_ERROR(writer.add(layer + ".wcscales", s16, {n}, as_bytes(q.wcscales)));
    // A layer is written with the oldest format version that holds it: 2.0 only for the
    // Nunchaku variants (unsigned activations, per-channel wcscales), which a 1.x reader would
    // misread (it ignores unknown fields and tensors) and so must refuse.
    // A rotated layer (issue 13) is 2.0 for the same reason: a 1.x reader would run it unrotated.
    const bool v2 = q.act_unsigned || !q.wcscales.empty() || q.rotation != Rotation::kNone;

    const Json meta = {{"format", format_name(q.format)},
                       {"group_size", q.group},
                       {"rank", q.rank},
                       {"in_features", k},
                       {"out_features", n},
                       {"storage", dtype_name(q.storage)},
                       {"bias", !q.bias.empty()},
                       {"alpha", static_cast<double>(q.info.alpha)},
                       {"beta", static_cast<double>(q.info.beta)},
                       {"svd", svd_name(q.info.svd)},
                       {"weight_norm", q.info.weight_norm},
                       {"residual_norm", q.info.residual_norm},
                       // The checkpoint format version; no wall-clock time (info.seconds) is
                       // stored, so the same layer always gives the same bytes.
                       {"format_version", v2 ? "2.0" : "1.0"}};
    // Provenance of the recipe (issue 13): how the layer was made, read back by load_quantized.
    Json m = meta;
    if (q.rotation != Rotation::kNone) m["rotation"] = rotation_name(q.rotation);
    m["recipe"] = q.info.recipe;
    m["score"] = q.info.score;
    m["candidates_scored"] = q.info.candidates_scored;
    m["refine_iterations"] = q.info.refine_iterations;
    m["holdout_rows"] = q.info.holdout_rows;
    m["notes"] = q.info.notes;
    Json sel = Json::array();
    for (const auto& c : q.info.selection) sel.push_back({{"recipe", c.recipe}, {"score", c.score}});
    m["selection"] = std::move(sel);
    if (q.act_unsigned) {
      m["act_unsigned"] = true;
      m["act_shift"] = static_cast<double>(q.act_shift);
    }
    return writer.set_metadata(metadata_key, m.dump());
  } catch (const std::bad_alloc&) {
    return out_of_memory(where);
  }
}

Status save_quantized(const std::string& path,
                      const std::vector<std::pair<std::string, const QuantizedLinear*>>& layers,
                      const std::map<std::string, std::string>& extra_metadata) {
  try {
    SafetensorsWriter w;
    for (const auto& [k, v] : extra_metadata) SVDQ_RETURN_IF_ERROR(w.set_metadata(k, v));
    SVDQ_RETURN_IF_ERROR(w.set_metadata(kVersionKey, version_string()));
    for (size_t i = 0; i < layers.size(); ++i) {
      const auto& [name, layer] = layers[i];
      if (layer == nullptr)
        return error(StatusCode::kErrorNullPointer, "save_quantized: layers[", i, "] (",
                     quote(name), ") is a null pointer");
      SVDQ_RETURN_IF_ERROR(add_quantized(w, name, *layer));
    }
    return w.write(path);
  } catch (const std::bad_alloc&) {
    return out_of_memory("save_quantized: " + quote(path));
  }
}

Result<std::vector<std::string>> quantized_layers(const SafetensorsFile& file) {
  try {
    std::vector<std::string> out;
    const std::string prefix = kLayerKeyPrefix;
    for (const auto& [key, value] : file.metadata()) {
      if (key.compare(0, prefix.size(), prefix) != 0) continue;
      const Json j = Json::parse(value, nullptr, /*allow_exceptions=*/false);
      if (!j.is_object())
        return error(StatusCode::kErrorInvalidArgument, "quantized_layers: ", quote(file.source()),
                     ": metadata ", quote(key), " is not a JSON object describing a layer");
      out.push_back(key.substr(prefix.size()));
    }
    return out;
  } catch (const std::bad_alloc&) {
    return out_of_memory("quantized_layers");
  }
}

namespace {

/// Reads the layer's metadata into the scalar fields of q (no tensors yet).
Status parse_layer_metadata(const std::string& where, const std::string& text, QuantizedLinear* q,
                            bool* has_bias_flag, bool* bias_flag, long* format_major) {
  constexpr auto kBad = StatusCode::kErrorInvalidArgument;
  const Json j = Json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object()) return error(kBad, where, ": metadata is not a JSON object");

  auto get_int = [&](const char* key, int64_t lo, int64_t hi, int64_t* out) -> Status {
    const auto it = j.find(key);
    if (it == j.end()) return error(kBad, where, ": metadata has no \"", key, "\"");
    int64_t v = 0;
    if (const char* why = json_to_index(*it, &v))
      return error(kBad, where, ": metadata \"", key, "\" ", why);
    if (v < lo || v > hi)
      return error(kBad, where, ": metadata \"", key, "\" (", v, ") must be in [", lo, ", ", hi,
                   "]");
    *out = v;
    return Status::Ok();
  };
  auto get_string = [&](const char* key, bool required, std::string* out) -> Status {
    const auto it = j.find(key);
    if (it == j.end())
      return required ? error(kBad, where, ": metadata has no \"", key, "\"") : Status::Ok();
    if (!it->is_string()) return error(kBad, where, ": metadata \"", key, "\" is not a string");
    *out = it->get<std::string>();
    return Status::Ok();
  };
  auto get_number = [&](const char* key, double* out) -> Status {
    const auto it = j.find(key);
    if (it == j.end()) return Status::Ok();  // optional: keeps the default 0
    if (!it->is_number()) return error(kBad, where, ": metadata \"", key, "\" is not a number");
    *out = it->get<double>();
    return Status::Ok();
  };

  // The format version first: a newer major version may mean anything below.
  std::string fv = "1.0";  // files written before the field existed
  SVDQ_RETURN_IF_ERROR(get_string("format_version", false, &fv));
  {
    const long major = std::strtol(fv.c_str(), nullptr, 10);
    if (fv.empty() || fv[0] < '0' || fv[0] > '9')
      return error(kBad, where, ": metadata \"format_version\" (", quote(fv),
                   ") is not MAJOR.MINOR");
    if (major > SVDQ_CHECKPOINT_FORMAT_MAJOR)
      return error(StatusCode::kErrorNotSupported, where, ": checkpoint format version ", fv,
                   " is newer than this svdq ", version_string(), " reads (",
                   SVDQ_CHECKPOINT_FORMAT_MAJOR, ".x); upgrade svdq to load it");
    *format_major = major;
    // "rotation" (format 2.0): absent or "none" = no rotation.
    std::string rot = "none";
    SVDQ_RETURN_IF_ERROR(get_string("rotation", false, &rot));
    if (rot == "none") {
      q->rotation = Rotation::kNone;
    } else if (rot == "block-hadamard") {
      q->rotation = Rotation::kBlockHadamard;
    } else {
      return error(kBad, where, ": metadata \"rotation\" (", quote(rot),
                   ") must be \"none\" or \"block-hadamard\"");
    }
    if (q->rotation != Rotation::kNone && major < kRotatedFormatMajor)
      return error(kBad, where, ": metadata \"rotation\" (", quote(rot),
                   ") needs format_version >= ", kRotatedFormatMajor, ".0, the file says ", fv);
  }
  std::string format, storage, svd = "randomized";
  SVDQ_RETURN_IF_ERROR(get_string("format", true, &format));
  auto f = parse_format(format);
  if (!f.ok())
    return error(kBad, where, ": metadata \"format\" (", quote(format),
                 ") must be \"int4\" or \"nvfp4\"");
  q->format = *f;
  SVDQ_RETURN_IF_ERROR(get_string("storage", true, &storage));
  if (storage == "f16") {
    q->storage = DType::kF16;
  } else if (storage == "bf16") {
    q->storage = DType::kBF16;
  } else {
    return error(kBad, where, ": metadata \"storage\" (", quote(storage),
                 ") must be \"f16\" or \"bf16\"");
  }
  int64_t group = 0, rank = 0;
  SVDQ_RETURN_IF_ERROR(get_int("group_size", 1, INT_MAX, &group));
  if (group != group_size(q->format))
    return error(kBad, where, ": metadata \"group_size\" (", group, ") must be ",
                 group_size(q->format), " for ", format);
  q->group = static_cast<int>(group);
  SVDQ_RETURN_IF_ERROR(get_int("in_features", 1, kMaxFeatures, &q->in_features));
  SVDQ_RETURN_IF_ERROR(get_int("out_features", 1, kMaxFeatures, &q->out_features));
  SVDQ_RETURN_IF_ERROR(get_int("rank", 0, std::min(q->in_features, q->out_features), &rank));
  q->rank = static_cast<int>(rank);
  if (q->in_features % q->group != 0)
    return error(StatusCode::kErrorShape, where, ": metadata \"in_features\" (", q->in_features,
                 ") must be a multiple of group_size ", q->group);

  const auto bias_it = j.find("bias");
  *has_bias_flag = bias_it != j.end();
  if (*has_bias_flag) {
    if (!bias_it->is_boolean()) return error(kBad, where, ": metadata \"bias\" is not a boolean");
    *bias_flag = bias_it->get<bool>();
  }
  double alpha = 0, beta = 0;
  SVDQ_RETURN_IF_ERROR(get_number("alpha", &alpha));
  SVDQ_RETURN_IF_ERROR(get_number("beta", &beta));
  q->info.alpha = static_cast<float>(alpha);
  q->info.beta = static_cast<float>(beta);
  SVDQ_RETURN_IF_ERROR(get_string("svd", false, &svd));
  if (svd == "randomized") {
    q->info.svd = SvdMethod::kRandomized;
  } else if (svd == "exact") {
    q->info.svd = SvdMethod::kExact;
  } else {
    return error(kBad, where, ": metadata \"svd\" (", quote(svd),
                 ") must be \"randomized\" or \"exact\"");
  }
  SVDQ_RETURN_IF_ERROR(get_number("weight_norm", &q->info.weight_norm));
  SVDQ_RETURN_IF_ERROR(get_number("residual_norm", &q->info.residual_norm));
  SVDQ_RETURN_IF_ERROR(get_number("seconds", &q->info.seconds));
  // Provenance (optional on read: older files and hand-made checkpoints have none).
  q->info.score = -1;
  SVDQ_RETURN_IF_ERROR(get_number("score", &q->info.score));
  int64_t count = 0;
  if (j.contains("candidates_scored")) {
    SVDQ_RETURN_IF_ERROR(get_int("candidates_scored", 0, INT_MAX, &count));
    q->info.candidates_scored = static_cast<int>(count);
  }
  if (j.contains("refine_iterations")) {
    SVDQ_RETURN_IF_ERROR(get_int("refine_iterations", 0, INT_MAX, &count));
    q->info.refine_iterations = static_cast<int>(count);
  }
  if (j.contains("holdout_rows")) {
    SVDQ_RETURN_IF_ERROR(get_int("holdout_rows", 0, INT64_MAX, &q->info.holdout_rows));
  }
  SVDQ_RETURN_IF_ERROR(get_string("recipe", false, &q->info.recipe));
  SVDQ_RETURN_IF_ERROR(get_string("notes", false, &q->info.notes));
  if (const auto sel = j.find("selection"); sel != j.end()) {
    if (!sel->is_array()) return error(kBad, where, ": metadata \"selection\" is not an array");
    for (size_t i = 0; i < sel->size(); ++i) {
      const Json& e = (*sel)[i];
      const auto r = e.is_object() ? e.find("recipe") : e.end();
      const auto sc = e.is_object() ? e.find("score") : e.end();
      if (r == e.end() || sc == e.end() || !r->is_string() || !sc->is_number())
        return error(kBad, where, ": metadata \"selection\"[", i,
                     "] is not an object {\"recipe\": string, \"score\": number}");
      q->info.selection.push_back({r->get<std::string>(), sc->get<double>()});
    }
  }
  // The 2.0 variants (docs/checkpoint.md §2): a 1.x file cannot hold them.
  if (const auto u = j.find("act_unsigned"); u != j.end()) {
    if (!u->is_boolean()) return error(kBad, where, ": metadata \"act_unsigned\" is not a boolean");
    q->act_unsigned = u->get<bool>();
  }
  if (const auto sh = j.find("act_shift"); sh != j.end()) {
    if (!sh->is_number()) return error(kBad, where, ": metadata \"act_shift\" is not a number");
    const double v = sh->get<double>();
    q->act_shift = static_cast<float>(v);
    if (static_cast<double>(q->act_shift) != v)
      return error(kBad, where, ": metadata \"act_shift\" (", v, ") is not an fp32 value");
  }
  if ((q->act_unsigned || j.contains("act_shift")) && *format_major < 2)
    return error(kBad, where, ": metadata \"act_unsigned\"/\"act_shift\" need format_version 2.0 or "
                 "newer, the file says ", quote(fv));
  return Status::Ok();
}

/// The bytes of tensor `name`, which must exist with the given dtype and shape.
Result<ByteSpan> expect_tensor(const SafetensorsFile& file, const std::string& where,
                               const std::string& name, const char* dtype,
                               const std::vector<int64_t>& shape, const char* what) {
  if (!file.contains(name))
    return error(StatusCode::kErrorInvalidArgument, where, ": tensor ", quote(name), " (", what,
                 ") is missing");
  auto t = file.info(name);
  if (!t.ok()) return t.status();
  if (t->dtype != dtype)
    return error(StatusCode::kErrorInvalidArgument, where, ": tensor ", quote(name), " (", what,
                 ") has dtype ", t->dtype, ", expected ", dtype);
  if (t->shape != shape)
    return error(StatusCode::kErrorShape, where, ": tensor ", quote(name), " (", what,
                 ") has shape ", shape_string(t->shape), ", expected ", shape_string(shape));
  return t->data;
}

template <typename T>
void copy_into(ByteSpan bytes, std::vector<T>* out) {
  out->resize(bytes.size() / sizeof(T));
  if (!bytes.empty()) std::memcpy(out->data(), bytes.data(), bytes.size());
}

}  // namespace

Result<QuantizedLinear> load_quantized(const SafetensorsFile& file, const std::string& layer) {
  const std::string where = "load_quantized: " + quote(file.source()) + ": layer " + quote(layer);
  try {
    const auto meta = file.metadata().find(kLayerKeyPrefix + layer);
    if (meta == file.metadata().end())
      return error(StatusCode::kErrorInvalidArgument, where, ": no such layer (no metadata key ",
                   quote(kLayerKeyPrefix + layer), ")");
    QuantizedLinear q;
    bool has_bias_flag = false, bias_flag = false;
    long major = 1;
    SVDQ_RETURN_IF_ERROR(
        parse_layer_metadata(where, meta->second, &q, &has_bias_flag, &bias_flag, &major));

    const int64_t n = q.out_features, k = q.in_features, r = q.rank;
    const bool int4 = q.format == Format::kInt4;
    const char* s16 = q.storage == DType::kF16 ? "F16" : "BF16";

    auto qweight = expect_tensor(file, where, layer + ".qweight", "U8", {n, k / 2}, "packed codes");
    if (!qweight.ok()) return qweight.status();
    copy_into(*qweight, &q.qweight);
    auto wscales = expect_tensor(file, where, layer + ".wscales", int4 ? "F16" : "F8_E4M3",
                                 {n, k / q.group}, "group scales");
    if (!wscales.ok()) return wscales.status();
    copy_into(*wscales, &q.wscales);
    if (!int4) {
      auto wt = expect_tensor(file, where, layer + ".wtscale", "F32", {1}, "weight tensor scale");
      if (!wt.ok()) return wt.status();
      std::memcpy(&q.wtscale, wt->data(), 4);
      auto at =
          expect_tensor(file, where, layer + ".act_tscale", "F32", {1}, "activation tensor scale");
      if (!at.ok()) return at.status();
      std::memcpy(&q.act_tensor_scale, at->data(), 4);
    } else {
      for (const char* suffix : {".wtscale", ".act_tscale"})
        if (file.contains(layer + suffix))
          return error(StatusCode::kErrorInvalidArgument, where, ": tensor ", quote(layer + suffix),
                       " must not exist for an int4 layer");
    }
    auto smooth = expect_tensor(file, where, layer + ".smooth", s16, {k}, "smoothing factors");
    if (!smooth.ok()) return smooth.status();
    copy_into(*smooth, &q.smooth);
    const bool lora_optional =
        r == 0 && !file.contains(layer + ".lora_down") && !file.contains(layer + ".lora_up");
    if (!lora_optional) {
      auto down = expect_tensor(file, where, layer + ".lora_down", s16, {k, r}, "low-rank down");
      if (!down.ok()) return down.status();
      copy_into(*down, &q.lora_down);
      auto up = expect_tensor(file, where, layer + ".lora_up", s16, {n, r}, "low-rank up");
      if (!up.ok()) return up.status();
      copy_into(*up, &q.lora_up);
    }
    const bool bias_present = file.contains(layer + ".bias");
    if (has_bias_flag && bias_flag != bias_present)
      return error(StatusCode::kErrorInvalidArgument, where, ": metadata \"bias\" is ",
                   bias_flag ? "true" : "false", " but tensor ", quote(layer + ".bias"),
                   bias_present ? " exists" : " is missing");
    if (bias_present) {
      auto bias = expect_tensor(file, where, layer + ".bias", s16, {n}, "bias");
      if (!bias.ok()) return bias.status();
      copy_into(*bias, &q.bias);
    }
    if (file.contains(layer + ".wcscales")) {
      if (int4 || major < 2)
        return error(StatusCode::kErrorInvalidArgument, where, ": tensor ", quote(layer + ".wcscales"),
                     " (per-channel weight scales) needs an nvfp4 layer and format_version 2.0 or "
                     "newer");
      auto wc = expect_tensor(file, where, layer + ".wcscales", s16, {n}, "per-channel weight scales");
      if (!wc.ok()) return wc.status();
      copy_into(*wc, &q.wcscales);
    }
    if (Status s = validate(q); !s.ok()) return Status(s.code(), where + ": " + s.message());
    return q;
  } catch (const std::bad_alloc&) {
    return out_of_memory(where);
  }
}

}  // namespace svdq
