#pragma once
// Where a model comes from, in one place: an s2dm checkpoint, safetensors weights of the
// reference architecture + a config, or a TorchScript module + a config. Every command, the
// trainer and the experiment driver go through it, so the precision rule, the Skip-Tuning checks
// and the learned-schedule state are handled once.
//
// Two steps: resolve_model reads the files and the config (cheap, nothing on the device), so a
// bad setting fails before any work; load_model then builds the network on its device.
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "s2dm/core/config.h"
#include "s2dm/io/safetensors.h"
#include "s2dm/model/eps_model.h"
#include "s2dm/model/unet.h"

namespace s2dm::model {

// The network a config describes (model.type), with its initial weights: DDPM's UNet, an
// ε-model of t, or one of EDM's (SongUNet, DhariwalUNet), F(x, c_noise) of its preconditioning.
struct Network {
  std::shared_ptr<torch::nn::Module> module;
  // ε̂(x, t) or F(x, c_noise[, class_labels]), the long skips scaled by `skip_scales` (empty:
  // unscaled); `class_labels` (one-hot [B, label_dim]) for a class-conditional network, else undefined.
  std::function<torch::Tensor(const torch::Tensor& x, const torch::Tensor& noise, const torch::Tensor& class_labels,
                              const std::vector<double>& skip_scales)>
      forward;
  int num_skips = 0;
  // DDPM's UNet, when the network is one (null otherwise).
  UNet unet() const { return UNet(std::dynamic_pointer_cast<UNetImpl>(module)); }
};
Network make_network(const Config& config);
// The channels a network of `config` takes and returns: the images', twice that for PSLD (z = [x, m]).
int64_t network_channels(const Config& config);
// What a PSLD network sees of the continuous time t ∈ (0, 1]: DDPM's timestep 999 t, or log t for a
// SongUNet with Fourier embedding (the released code's NCSN++).
torch::Tensor psld_noise_input(const Config& config, const torch::Tensor& t);

// Exactly one of checkpoint, weights or script.
struct ModelRef {
  std::string checkpoint;  // an s2dm checkpoint ...
  bool ema = true;         //   sampled with its EMA weights (false: the raw ones)
  std::string weights;     // ... or safetensors weights of the reference UNet, with `config`
  std::string script;      // ... or a TorchScript ε-model forward(x, t), with `config`
  std::string config;      // the config (shape, schedule, architecture) for weights and script
};

struct ModelSource {
  Config config;          // resolved, overrides applied
  NamedTensors weights;   // UNet weights on the CPU (empty for TorchScript)
  NamedTensors learned;   // the checkpoint's learned-schedule state (timesteps "learned")
  std::string origin;     // the file the network comes from, for messages
  std::string script;     // the TorchScript file, when the model is one
};

// Reads the config (and weights) of `ref`, applying `overrides` ("section.key=value"). Throws
// UsageError for a ref naming none or several sources, ConfigError / CheckpointError otherwise.
ModelSource resolve_model(const ModelRef& ref, const std::vector<std::string>& overrides = {});

// Whether the network runs under bf16 autocast: on CUDA when the config's precision asks for it
// (the CPU always computes in float32).
bool bf16_autocast(const Config& config, const torch::Device& device);

// Checks that Skip-Tuning suits the model before any work: a factor list needs one factor per long
// skip, and a TorchScript module has no skips to scale. Throws ConfigError / UsageError.
void check_skip_tuning(const ModelConfig& model, const SkipTuningConfig& skip_tuning, bool torchscript = false);

// The UNet as an ε-model on its device (eval mode, no grad, its preferred memory format), under
// bf16 autocast when `bf16` is set (bf16_autocast says when); returns float32. With active `skip_tuning`, the skips are
// scaled for timesteps in [t_min, t_max] (throws ConfigError for a factor list of the wrong
// length); the network itself is left unchanged, so several ε-models may share it. On CUDA,
// evaluations replay CUDA graphs unless `cuda_graphs` is false.
EpsModel unet_eps_model(UNet unet, bool bf16, const SkipTuningConfig& skip_tuning = {}, bool cuda_graphs = true);
// Any network of `config` as an ε-model: DDPM's UNet as unet_eps_model makes it, EDM's networks
// through their preconditioning (Preconditioning::eps_model), without gradients, in float32; a
// class-conditional one (model.edm.label_dim > 0) given each batch's labels; a PSLD network as the
// ε-model of z_t at continuous times t (psld_noise_input).
ModelEps network_eps_model(const Network& network, const Config& config, const torch::Device& device, bool bf16,
                           const SkipTuningConfig& skip_tuning = {}, bool cuda_graphs = true);
// CUDA graphs captured so far by this process's ε-models (for tests and logs).
int64_t cuda_graphs_captured();

// A model on its device: its network (none for TorchScript) and the ε-models over it.
class LoadedModel {
 public:
  LoadedModel(const ModelSource& source, const torch::Device& device);
  // The ε-model with the config's precision and the given Skip-Tuning.
  ModelEps eps(const SkipTuningConfig& skip_tuning = {}, bool cuda_graphs = true) const;
  // The ε-model in float32 whatever the config's precision. Schedule estimation and search use it:
  // they compare ε at neighbouring noise levels, which differ by about 0.5 % per pixel at 1000
  // levels, bf16's resolution, so bf16 would flatten the cost they measure.
  ModelEps eps_fp32(const SkipTuningConfig& skip_tuning = {}) const;

 private:
  Config config_;
  torch::Device device_;
  Network network_;
  EpsModel script_;
};

}  // namespace s2dm::model
