#pragma once
// Training checkpoints: one safetensors file holding the model ("model.*"), its EMA ("ema.*"),
// the optimizer state ("optim.*"), the RNG state ("rng.*") and a learned schedule
// ("schedule.*", optional), with the step, the resolved
// config and the data position in its metadata, and a CRC-32 of the tensor bytes that is
// verified on load. Written atomically (temporary name, fsync, rename).
#include <torch/nn/module.h>
#include <torch/types.h>

#include <string>

#include "s2dm/io/safetensors.h"

namespace s2dm {

struct Checkpoint {
  int64_t step = 0;
  std::string config_yaml;  // the resolved config
  NamedTensors model, ema, optimizer;
  NamedTensors rng;         // generator states by device name ("cpu", "cuda:0")
  NamedTensors schedule;    // the online learned-schedule state, when training estimates one
  Metadata extra;           // anything else (data position, ...)
};

inline constexpr const char* kCheckpointFormat = "s2dm-checkpoint-v1";

void save_checkpoint(const std::string& path, const Checkpoint& checkpoint);
// Throws CheckpointError for a missing, truncated, foreign or corrupted file.
Checkpoint load_checkpoint(const std::string& path);
// Whether `path` is a file of s2dm's checkpoint format, from its header alone (never throws):
// tells s2dm's checkpoints from another program's files of the same name.
bool is_checkpoint_file(const std::string& path);

// Model weights (by the reference names) from a checkpoint (EMA or raw) or a plain
// safetensors weights file. Throws CheckpointError.
NamedTensors checkpoint_weights(const Checkpoint& checkpoint, bool ema);
// Loads weights into `module` by name, requiring the same names and shapes.
void load_weights(torch::nn::Module& module, const NamedTensors& weights, const std::string& origin);
// The module's parameters and buffers by name, in registration order.
NamedTensors named_weights(const torch::nn::Module& module);

}  // namespace s2dm
