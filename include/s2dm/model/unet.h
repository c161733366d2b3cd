#pragma once
// The ε-prediction UNet of DDPM/DDIM (ermongroup/ddim models/diffusion.py). Parameter names
// equal that PyTorch Model's state_dict keys, so its checkpoints load unchanged.
//
// The decoder concatenates a stored encoder feature before every up-block; these long skips
// are numbered i = 0 (deepest) ... num_skips()-1 (next to the input/output), and each passes
// through one place that scales it (Skip-Tuning). Scales of 1 leave the model untouched.
#include <torch/torch.h>

#include <functional>
#include <vector>

#include "s2dm/core/config.h"

namespace s2dm::model {

// Sinusoidal timestep embedding of DDPM (float t allowed): [B] -> [B, dim].
torch::Tensor timestep_embedding(const torch::Tensor& t, int64_t dim);

class ResnetBlockImpl : public torch::nn::Module {
 public:
  ResnetBlockImpl(int64_t in_ch, int64_t out_ch, int64_t temb_ch, double dropout);
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& temb);

 private:
  torch::nn::GroupNorm norm1{nullptr}, norm2{nullptr};
  torch::nn::Conv2d conv1{nullptr}, conv2{nullptr}, nin_shortcut{nullptr};
  torch::nn::Linear temb_proj{nullptr};
  torch::nn::Dropout dropout{nullptr};
};
TORCH_MODULE(ResnetBlock);

class AttnBlockImpl : public torch::nn::Module {
 public:
  explicit AttnBlockImpl(int64_t ch);
  torch::Tensor forward(const torch::Tensor& x);

 private:
  torch::nn::GroupNorm norm{nullptr};
  torch::nn::Conv2d q{nullptr}, k{nullptr}, v{nullptr}, proj_out{nullptr};
};
TORCH_MODULE(AttnBlock);

// Downsample (pad (0,1,0,1) + 3x3 stride-2 conv, or 2x2 average pooling) and Upsample
// (nearest x2, then a 3x3 conv when with_conv).
class ResampleImpl : public torch::nn::Module {
 public:
  ResampleImpl(int64_t ch, bool with_conv, bool up);
  torch::Tensor forward(const torch::Tensor& x);

 private:
  bool up_;
  torch::nn::Conv2d conv{nullptr};
};
TORCH_MODULE(Resample);

class UNetImpl : public torch::nn::Module {
 public:
  UNetImpl(const ModelConfig& config, int64_t channels, int64_t resolution);
  // `skip_scales`: one factor per long skip (deepest first) for Skip-Tuning; empty = 1 everywhere.
  // Throws ConfigError for a list of the wrong length.
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& t, const std::vector<double>& skip_scales = {});

  const ModelConfig& config() const { return config_; }
  int64_t channels() const { return channels_; }
  int64_t resolution() const { return resolution_; }

  // Floating-point operations of one image's forward pass (2 per multiply-add in convolutions,
  // linear layers and attention products), for throughput as a fraction of the device's peak.
  int64_t forward_flops() const { return forward_flops_; }

  // Long skip connections, deepest first.
  int num_skips() const { return static_cast<int>(skip_channels_.size()); }
  const std::vector<int64_t>& skip_channels() const { return skip_channels_; }
  // The layout of the convolution weights and of the activations: channels_last (NHWC) lets
  // cuDNN pick its tensor-core kernels; NCHW (contiguous) is the default. Outputs are NCHW.
  void set_memory_format(torch::MemoryFormat format);
  torch::MemoryFormat memory_format() const { return memory_format_; }
  // Sees every skip as the decoder takes it: its index, the stored feature, and what is
  // concatenated (the feature times its factor). For inspection and tests.
  using SkipObserver = std::function<void(int index, const torch::Tensor& stored, const torch::Tensor& used)>;
  void set_skip_observer(SkipObserver observer) { skip_observer_ = std::move(observer); }

 private:
  torch::Tensor take_skip(std::vector<torch::Tensor>& stack, int index, const std::vector<double>& scales) const;

  ModelConfig config_;
  int64_t channels_, resolution_, forward_flops_ = 0;
  std::vector<int64_t> skip_channels_;
  SkipObserver skip_observer_;
  torch::MemoryFormat memory_format_ = torch::MemoryFormat::Contiguous;

  torch::nn::Linear temb_dense_0{nullptr}, temb_dense_1{nullptr};
  torch::nn::Conv2d conv_in{nullptr}, conv_out{nullptr};
  ResnetBlock mid_block_1{nullptr}, mid_block_2{nullptr};
  AttnBlock mid_attn_1{nullptr};
  torch::nn::GroupNorm norm_out{nullptr};
  // Per level: the res blocks, attention blocks and resampler (absent at the last/first level).
  struct Level {
    std::vector<ResnetBlock> blocks;
    std::vector<AttnBlock> attns;
    Resample resample{nullptr};
  };
  std::vector<Level> down_levels_, up_levels_;
};
TORCH_MODULE(UNet);

// The channels of a UNet's long skips, deepest first, from its config alone (no network built).
std::vector<int64_t> skip_channels(const ModelConfig& config);
inline int num_skips(const ModelConfig& config) { return static_cast<int>(skip_channels(config).size()); }

// Skip-Tuning factors for a model with `num_skips` long skips (deepest first): the explicit
// list, or rho_bottom + (rho_top - rho_bottom)·i/(num_skips-1). Throws ConfigError for a list of
// the wrong length.
std::vector<double> skip_tuning_scales(const SkipTuningConfig& config, int num_skips);

// The UNet's memory format for training and sampling on a device: channels_last, for cuDNN's
// tensor-core kernels on CUDA; on the CPU it measured 12 % faster for training with LibTorch 1.13
// and within noise with 2.6 (bench/bench_unet.cpp, S2DM_BENCH_CHANNELS_LAST).
torch::MemoryFormat preferred_memory_format(const torch::Device& device);

// Parameter count of a module.
int64_t count_parameters(const torch::nn::Module& module);

}  // namespace s2dm::model
