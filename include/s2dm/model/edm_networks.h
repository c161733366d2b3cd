#pragma once
// EDM's networks (NVlabs/edm training/networks.py): SongUNet, the DDPM++ and NCSN++ architectures
// of Song et al., and DhariwalUNet, ADM, as EDM re-implements them, with EDM's parameter names (its
// state_dict keys: map_noise, map_label, map_augment, map_layer0/1, enc.<res>x<res>_...,
// dec.<res>x<res>_..., out_norm, out_conv), so a converted EDM checkpoint loads one to one. Each is
// F(x, c_noise, class_labels, augment_labels); a preconditioning (diffusion/precond.h) makes the
// denoiser of it. The decoder's long skips (each encoder output, taken deepest first) pass through
// one place that scales them (Skip-Tuning).
#include <torch/torch.h>

#include <string>
#include <utility>
#include <vector>

namespace s2dm::model {

// The arguments both networks take (EDM's names; SongUNet's defaults).
struct EdmUNetOptions {
  int64_t img_resolution = 32, in_channels = 3, out_channels = 3;
  int64_t label_dim = 0;    // class labels (one-hot), 0 = unconditional
  int64_t augment_dim = 0;  // EDM's augmentation labels (zeros, or absent, at sampling)
  int64_t model_channels = 128;
  std::vector<int64_t> channel_mult{1, 2, 2, 2};
  int64_t channel_mult_emb = 4;
  int64_t num_blocks = 4;
  std::vector<int64_t> attn_resolutions{16};
  double dropout = 0.10;
};

struct SongUNetOptions : EdmUNetOptions {
  std::string embedding_type = "positional";  // positional (DDPM++) | fourier (NCSN++)
  int64_t channel_mult_noise = 1;             // 1 (DDPM++) | 2 (NCSN++)
  std::string encoder_type = "standard";      // standard | skip | residual (NCSN++)
  std::string decoder_type = "standard";      // standard | skip
  std::vector<double> resample_filter{1, 1};  // [1, 1] (DDPM++) | [1, 3, 3, 1] (NCSN++)
};

// EDM's weight initialisation: the mode's distribution (xavier_uniform, xavier_normal,
// kaiming_uniform, kaiming_normal) over the layer's fans, times `weight` (biases times `bias`).
struct EdmInit {
  std::string mode = "kaiming_normal";
  double weight = 1, bias = 0;
};
torch::Tensor edm_weight_init(const std::vector<int64_t>& shape, const std::string& mode, int64_t fan_in, int64_t fan_out);

// EDM's fully connected layer (weight [out, in], bias [out]).
torch::nn::Linear edm_linear(int64_t in_features, int64_t out_features, const EdmInit& init, bool bias = true);

// EDM's convolution: an optional k x k kernel with FIR up- or downsampling by 2 (its
// `resample_filter` buffer), fused with the kernel where asked.
class EdmConv2dImpl : public torch::nn::Module {
 public:
  EdmConv2dImpl(int64_t in_channels, int64_t out_channels, int64_t kernel, bool bias = true, bool up = false,
                bool down = false, const std::vector<double>& resample_filter = {1, 1}, bool fused_resample = false,
                const EdmInit& init = {});
  torch::Tensor forward(torch::Tensor x);

 private:
  int64_t in_channels_, out_channels_;
  bool up_, down_, fused_;
  torch::Tensor weight, bias, resample_filter;
};
TORCH_MODULE(EdmConv2d);

// EDM's UNetBlock: GroupNorm, SiLU, 3x3 convolutions with the embedding added (or, adaptive,
// scaling and shifting), a projected shortcut where the shape changes, optional self-attention.
struct UNetBlockOptions {
  int64_t in_channels, out_channels, emb_channels;
  bool up = false, down = false, attention = false;
  int64_t num_heads = 0;  // (with attention; 0: out_channels / channels_per_head)
  int64_t channels_per_head = 64;
  double dropout = 0, skip_scale = 1, eps = 1e-5;
  std::vector<double> resample_filter{1, 1};
  bool resample_proj = false, adaptive_scale = true;
  EdmInit init, init_zero{"kaiming_normal", 0, 0}, init_attn;
};
class UNetBlockImpl : public torch::nn::Module {
 public:
  explicit UNetBlockImpl(const UNetBlockOptions& o);
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& emb);
  int64_t in_channels() const { return o_.in_channels; }

 private:
  UNetBlockOptions o_;
  torch::nn::GroupNorm norm0{nullptr}, norm1{nullptr}, norm2{nullptr};
  EdmConv2d conv0{nullptr}, conv1{nullptr}, skip{nullptr}, qkv{nullptr}, proj{nullptr};
  torch::nn::Linear affine{nullptr};
};
TORCH_MODULE(UNetBlock);

// EDM's GroupNorm: min(32, C/4) groups.
torch::nn::GroupNorm edm_group_norm(int64_t channels, double eps);

class SongUNetImpl : public torch::nn::Module {
 public:
  explicit SongUNetImpl(SongUNetOptions options);
  // x [B, in, R, R], noise labels [B]; class labels [B, label_dim] (undefined: zeros), augment
  // labels [B, augment_dim] (undefined: none). `skip_scales`: one factor per long skip, deepest
  // first (Skip-Tuning); empty = 1 everywhere.
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& noise_labels, const torch::Tensor& class_labels = {},
                        const torch::Tensor& augment_labels = {}, const std::vector<double>& skip_scales = {});
  const SongUNetOptions& options() const { return o_; }
  int num_skips() const { return num_skips_; }

 private:
  // A module of enc or dec, in EDM's order, and what it does there.
  struct Item {
    std::string name;
    std::shared_ptr<torch::nn::Module> module;
  };
  SongUNetOptions o_;
  int num_skips_ = 0;
  torch::Tensor freqs_;  // (fourier embedding: map_noise.freqs)
  torch::nn::Linear map_label{nullptr}, map_augment{nullptr}, map_layer0{nullptr}, map_layer1{nullptr};
  std::vector<Item> enc_, dec_;
};
TORCH_MODULE(SongUNet);

struct DhariwalUNetOptions : EdmUNetOptions {
  DhariwalUNetOptions() {  // (ADM's defaults)
    img_resolution = 64;
    model_channels = 192;
    channel_mult = {1, 2, 3, 4};
    num_blocks = 3;
    attn_resolutions = {32, 16, 8};
  }
  // Attention heads of out_channels / channels_per_head (EDM fixes 64; a smaller value lets small
  // test networks have attention).
  int64_t channels_per_head = 64;
};

class DhariwalUNetImpl : public torch::nn::Module {
 public:
  explicit DhariwalUNetImpl(DhariwalUNetOptions options);
  // As SongUNet's forward.
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& noise_labels, const torch::Tensor& class_labels = {},
                        const torch::Tensor& augment_labels = {}, const std::vector<double>& skip_scales = {});
  const DhariwalUNetOptions& options() const { return o_; }
  int num_skips() const { return static_cast<int>(enc_.size()); }

 private:
  DhariwalUNetOptions o_;
  torch::nn::Linear map_augment{nullptr}, map_layer0{nullptr}, map_layer1{nullptr}, map_label{nullptr};
  std::vector<std::shared_ptr<torch::nn::Module>> enc_;
  std::vector<UNetBlock> dec_;
  torch::nn::GroupNorm out_norm{nullptr};
  EdmConv2d out_conv{nullptr};
};
TORCH_MODULE(DhariwalUNet);

}  // namespace s2dm::model
