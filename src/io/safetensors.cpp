#include "s2dm/io/safetensors.h"

#include <torch/torch.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "s2dm/core/errors.h"
#include "s2dm/io/file_io.h"

namespace s2dm {
namespace {

const std::vector<std::pair<std::string, torch::ScalarType>>& dtype_names() {
  static const std::vector<std::pair<std::string, torch::ScalarType>> names{
      {"F64", torch::kFloat64}, {"F32", torch::kFloat32}, {"F16", torch::kFloat16},
      {"BF16", torch::kBFloat16}, {"I64", torch::kInt64}, {"I32", torch::kInt32},
      {"I16", torch::kInt16},   {"I8", torch::kInt8},     {"U8", torch::kUInt8},
      {"BOOL", torch::kBool}};
  return names;
}

std::string dtype_name(torch::ScalarType t) {
  for (const auto& [name, type] : dtype_names())
    if (type == t) return name;
  throw IoError(std::string("safetensors: unsupported dtype ") + c10::toString(t));
}

}  // namespace

const torch::Tensor* Safetensors::find(const std::string& name) const {
  for (const auto& [n, t] : tensors)
    if (n == name) return &t;
  return nullptr;
}

std::string to_safetensors_bytes(const NamedTensors& tensors, const Metadata& metadata) {
  nlohmann::ordered_json header;
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::vector<torch::Tensor> data;
  std::set<std::string> seen;
  size_t offset = 0;
  for (const auto& [name, tensor] : tensors) {
    if (!seen.insert(name).second) throw IoError("safetensors: duplicate tensor name '" + name + "'");
    auto t = tensor.detach().to(torch::kCPU).contiguous();
    size_t nbytes = t.numel() * t.element_size();
    header[name] = {{"dtype", dtype_name(t.scalar_type())},
                    {"shape", t.sizes().vec()},
                    {"data_offsets", {offset, offset + nbytes}}};
    offset += nbytes;
    data.push_back(t);
  }
  std::string json = header.dump();
  json.append((8 - json.size() % 8) % 8, ' ');  // align the data to 8 bytes
  std::string out(8, '\0');
  uint64_t n = json.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  out += json;
  out.reserve(out.size() + offset);
  for (const auto& t : data) out.append(static_cast<const char*>(t.data_ptr()), t.numel() * t.element_size());
  return out;
}

namespace {

// The JSON header's length, from a file's first 8 bytes (`start`) and its size; checked.
uint64_t header_length(const std::string& start, uint64_t file_size, const std::string& origin) {
  if (start.size() < 8 || file_size < 8)
    throw IoError(origin + ": not a safetensors file (shorter than its 8-byte header length)");
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= static_cast<uint64_t>(static_cast<unsigned char>(start[i])) << (8 * i);
  if (n > file_size - 8 || n > (100u << 20))
    throw IoError(origin + ": not a safetensors file or truncated (header length " + std::to_string(n) + ", file size " +
                  std::to_string(file_size) + ")");
  return n;
}

nlohmann::json parse_header(const char* begin, uint64_t n, const std::string& origin) {
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(begin, begin + n);
  } catch (const nlohmann::json::exception& e) {
    throw IoError(origin + ": corrupt safetensors header: " + e.what());
  }
  if (!header.is_object()) throw IoError(origin + ": corrupt safetensors header: not a JSON object");
  return header;
}

}  // namespace

Metadata read_safetensors_metadata(const std::string& path) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) throw IoError(path + ": cannot open (" + std::strerror(errno) + ")");
  const auto size = static_cast<uint64_t>(in.tellg());
  std::string start(8, '\0');
  in.seekg(0);
  in.read(start.data(), 8);
  start.resize(static_cast<size_t>(in.gcount()));
  std::string json(header_length(start, size, path), '\0');
  in.read(json.data(), static_cast<std::streamsize>(json.size()));
  if (static_cast<size_t>(in.gcount()) != json.size()) throw IoError(path + ": read failed");
  const auto header = parse_header(json.data(), json.size(), path);
  Metadata out;
  try {
    if (header.contains("__metadata__"))
      for (auto m = header["__metadata__"].begin(); m != header["__metadata__"].end(); ++m)
        out[m.key()] = m->get<std::string>();
  } catch (const nlohmann::json::exception& e) {
    throw IoError(path + ": corrupt safetensors header: " + e.what());
  }
  return out;
}

Safetensors from_safetensors_bytes(const std::string& bytes, const std::string& origin) {
  auto fail = [&](const std::string& why) -> IoError { return IoError(origin + ": " + why); };
  const uint64_t n = header_length(bytes.substr(0, 8), bytes.size(), origin);
  const nlohmann::json header = parse_header(bytes.data() + 8, n, origin);
  const size_t data_start = 8 + n, data_size = bytes.size() - data_start;

  Safetensors out;
  std::vector<std::tuple<size_t, std::string, torch::Tensor>> ordered;
  try {
    for (auto it = header.begin(); it != header.end(); ++it) {
      if (it.key() == "__metadata__") {
        for (auto m = it->begin(); m != it->end(); ++m) out.metadata[m.key()] = m->get<std::string>();
        continue;
      }
      const auto& entry = *it;
      std::string dtype = entry.at("dtype").get<std::string>();
      auto type_it = std::find_if(dtype_names().begin(), dtype_names().end(),
                                  [&](const auto& p) { return p.first == dtype; });
      if (type_it == dtype_names().end()) throw fail("tensor '" + it.key() + "' has unsupported dtype " + dtype);
      // Integers only: nlohmann converts a number such as 1e24 with a cast that overflows.
      for (const char* key : {"shape", "data_offsets"})
        for (const auto& n : entry.at(key))
          if (!n.is_number_integer()) throw fail("tensor '" + it.key() + "': " + key + " holds " + n.dump() + ", not an integer");
      auto shape = entry.at("shape").get<std::vector<int64_t>>();
      auto offsets = entry.at("data_offsets").get<std::vector<uint64_t>>();
      if (offsets.size() != 2 || offsets[0] > offsets[1] || offsets[1] > data_size)
        throw fail("tensor '" + it.key() + "' lies outside the file (truncated?)");
      const uint64_t nbytes = offsets[1] - offsets[0];
      if (claimed_bytes(shape, c10::elementSize(type_it->second), nbytes) != static_cast<int64_t>(nbytes))
        throw fail("tensor '" + it.key() + "': shape and byte range disagree");
      auto t = torch::empty(shape, torch::TensorOptions().dtype(type_it->second));
      if (nbytes) std::memcpy(t.data_ptr(), bytes.data() + data_start + offsets[0], nbytes);
      ordered.emplace_back(offsets[0], it.key(), t);
    }
  } catch (const nlohmann::json::exception& e) {
    throw fail(std::string("corrupt safetensors header: ") + e.what());
  }
  std::stable_sort(ordered.begin(), ordered.end(),
                   [](const auto& a, const auto& b) { return std::get<0>(a) < std::get<0>(b); });
  for (auto& [offset, name, t] : ordered) out.tensors.emplace_back(name, t);
  return out;
}

void save_safetensors(const std::string& path, const NamedTensors& tensors, const Metadata& metadata) {
  write_file_atomic(path, to_safetensors_bytes(tensors, metadata));
}

Safetensors load_safetensors(const std::string& path) {
  return from_safetensors_bytes(read_file_bytes(path), path);
}

}  // namespace s2dm
