#include "s2dm/io/checkpoint.h"

#include <torch/torch.h>

#include <map>

#include "s2dm/core/errors.h"
#include "s2dm/io/file_io.h"

namespace s2dm {
namespace {

const std::vector<std::pair<std::string, NamedTensors Checkpoint::*>>& groups() {
  static const std::vector<std::pair<std::string, NamedTensors Checkpoint::*>> g{
      {"model.", &Checkpoint::model},
      {"ema.", &Checkpoint::ema},
      {"optim.", &Checkpoint::optimizer},
      {"rng.", &Checkpoint::rng},
      {"schedule.", &Checkpoint::schedule}};
  return g;
}

// The CRC of the tensors' bytes, in file order.
uint32_t tensors_crc(const NamedTensors& tensors) {
  uint32_t crc = 0;
  for (const auto& [name, t] : tensors) {
    auto c = t.contiguous();
    crc = crc32_of(c.data_ptr(), c.numel() * c.element_size(), crc);
  }
  return crc;
}

}  // namespace

void save_checkpoint(const std::string& path, const Checkpoint& ckpt) {
  NamedTensors all;
  for (const auto& [prefix, member] : groups())
    for (const auto& [name, t] : ckpt.*member) all.emplace_back(prefix + name, t.detach().to(torch::kCPU).contiguous());
  Metadata meta = ckpt.extra;
  meta["format"] = kCheckpointFormat;
  meta["step"] = std::to_string(ckpt.step);
  meta["config"] = ckpt.config_yaml;
  meta["crc32"] = std::to_string(tensors_crc(all));
  save_safetensors(path, all, meta);
}

bool is_checkpoint_file(const std::string& path) {
  try {
    const auto metadata = read_safetensors_metadata(path);
    const auto format = metadata.find("format");
    return format != metadata.end() && format->second == kCheckpointFormat;
  } catch (const IoError&) {
    return false;
  }
}

Checkpoint load_checkpoint(const std::string& path) {
  Safetensors file;
  try {
    file = load_safetensors(path);
  } catch (const IoError& e) {
    throw CheckpointError(std::string(e.what()) + " (not a readable s2dm checkpoint)");
  }
  auto meta = [&](const std::string& key) -> const std::string& {
    auto it = file.metadata.find(key);
    if (it == file.metadata.end())
      throw CheckpointError(path + ": not an s2dm checkpoint (metadata lacks '" + key + "')");
    return it->second;
  };
  if (meta("format") != kCheckpointFormat)
    throw CheckpointError(path + ": unknown checkpoint format '" + meta("format") + "' (expected " +
                          kCheckpointFormat + ")");
  if (meta("crc32") != std::to_string(tensors_crc(file.tensors)))
    throw CheckpointError(path + ": checksum mismatch, the file is corrupted");

  Checkpoint ckpt;
  try {
    ckpt.step = std::stoll(meta("step"));
  } catch (const std::logic_error&) {
    throw CheckpointError(path + ": bad step '" + meta("step") + "'");
  }
  ckpt.config_yaml = meta("config");
  for (const auto& [key, value] : file.metadata)
    if (key != "format" && key != "step" && key != "config" && key != "crc32") ckpt.extra[key] = value;
  for (auto& [name, t] : file.tensors) {
    bool placed = false;
    for (const auto& [prefix, member] : groups())
      if (name.rfind(prefix, 0) == 0) {
        (ckpt.*member).emplace_back(name.substr(prefix.size()), t);
        placed = true;
        break;
      }
    if (!placed) throw CheckpointError(path + ": unexpected tensor '" + name + "'");
  }
  return ckpt;
}

NamedTensors checkpoint_weights(const Checkpoint& ckpt, bool ema) {
  const auto& w = ema ? ckpt.ema : ckpt.model;
  if (w.empty()) throw CheckpointError(std::string("checkpoint holds no ") + (ema ? "EMA" : "model") + " weights");
  return w;
}

NamedTensors named_weights(const torch::nn::Module& module) {
  NamedTensors out;
  for (const auto& item : module.named_parameters()) out.emplace_back(item.key(), item.value());
  for (const auto& item : module.named_buffers()) out.emplace_back(item.key(), item.value());
  return out;
}

void load_weights(torch::nn::Module& module, const NamedTensors& weights, const std::string& origin) {
  std::map<std::string, torch::Tensor> by_name(weights.begin(), weights.end());
  auto own = named_weights(module);
  torch::NoGradGuard no_grad;
  for (auto& [name, target] : own) {
    auto it = by_name.find(name);
    if (it == by_name.end())
      throw CheckpointError(origin + ": weights lack '" + name + "' (a different model config?)");
    if (it->second.sizes() != target.sizes())
      throw CheckpointError(origin + ": '" + name + "' has shape " + c10::str(it->second.sizes()) +
                            ", the model expects " + c10::str(target.sizes()) + " (a different model config?)");
    target.copy_(it->second);
    by_name.erase(it);
  }
  if (!by_name.empty())
    throw CheckpointError(origin + ": unexpected weight '" + by_name.begin()->first +
                          "' (a different model config?)");
}

}  // namespace s2dm
