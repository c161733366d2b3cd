#pragma once
// safetensors (https://github.com/huggingface/safetensors): an 8-byte little-endian header
// length, a JSON header {name: {dtype, shape, data_offsets}, "__metadata__": {str: str}},
// then the raw little-endian tensor bytes. s2dm's weights interchange and checkpoint container.
#include <torch/types.h>

#include <map>
#include <string>
#include <utility>
#include <vector>

namespace s2dm {

using NamedTensors = std::vector<std::pair<std::string, torch::Tensor>>;
using Metadata = std::map<std::string, std::string>;

struct Safetensors {
  NamedTensors tensors;  // in file order, on the CPU
  Metadata metadata;
  const torch::Tensor* find(const std::string& name) const;
};

// Serialises (tensors are copied to contiguous CPU memory). Names must be unique.
std::string to_safetensors_bytes(const NamedTensors& tensors, const Metadata& metadata = {});
// Parses; `origin` names the source in IoError messages (truncation, bad header, bad offsets).
Safetensors from_safetensors_bytes(const std::string& bytes, const std::string& origin);

void save_safetensors(const std::string& path, const NamedTensors& tensors, const Metadata& metadata = {});
Safetensors load_safetensors(const std::string& path);
// The metadata alone, reading no more of the file than its header. Throws IoError.
Metadata read_safetensors_metadata(const std::string& path);

}  // namespace s2dm
