#include "s2dm/model/unet.h"

#include <cmath>

#include "s2dm/core/compat.h"
#include "s2dm/core/errors.h"

namespace s2dm::model {
namespace nn = torch::nn;
namespace F = torch::nn::functional;

namespace {

nn::GroupNorm normalize(int64_t ch) { return nn::GroupNorm(nn::GroupNormOptions(32, ch).eps(1e-6)); }

nn::Conv2d conv(int64_t in, int64_t out, int64_t kernel, int64_t stride = 1, int64_t padding = 0) {
  return nn::Conv2d(nn::Conv2dOptions(in, out, kernel).stride(stride).padding(padding));
}

// swish(x) = x·sigmoid(x). (torch::silu is one kernel, but its CPU backward in LibTorch 1.13 made
// the training step ~25 % slower in bench/compare.sh.)
torch::Tensor swish(const torch::Tensor& x) { return x * torch::sigmoid(x); }

// A named container with no forward, to reproduce the reference's module tree (`temb`, `mid`,
// `down.N`, `up.N`).
std::shared_ptr<nn::Module> container() { return std::make_shared<nn::Module>(); }

}  // namespace

torch::Tensor timestep_embedding(const torch::Tensor& t, int64_t dim) {
  const int64_t half = dim / 2;
  const double scale = std::log(10000.0) / static_cast<double>(half - 1);
  auto freqs = torch::exp(torch::arange(half, t.options().dtype(torch::kFloat32)) * -scale);
  auto args = t.to(torch::kFloat32).unsqueeze(1) * freqs.unsqueeze(0);
  auto emb = torch::cat({torch::sin(args), torch::cos(args)}, 1);
  if (dim % 2 == 1) emb = F::pad(emb, F::PadFuncOptions({0, 1}));
  return emb;
}

ResnetBlockImpl::ResnetBlockImpl(int64_t in_ch, int64_t out_ch, int64_t temb_ch, double p) {
  norm1 = register_module("norm1", normalize(in_ch));
  conv1 = register_module("conv1", conv(in_ch, out_ch, 3, 1, 1));
  temb_proj = register_module("temb_proj", nn::Linear(temb_ch, out_ch));
  norm2 = register_module("norm2", normalize(out_ch));
  dropout = register_module("dropout", nn::Dropout(p));
  conv2 = register_module("conv2", conv(out_ch, out_ch, 3, 1, 1));
  if (in_ch != out_ch) nin_shortcut = register_module("nin_shortcut", conv(in_ch, out_ch, 1));
}

torch::Tensor ResnetBlockImpl::forward(const torch::Tensor& x, const torch::Tensor& temb) {
  auto h = conv1(swish(norm1(x)));
  h = h + temb_proj(swish(temb)).unsqueeze(-1).unsqueeze(-1);
  h = conv2(dropout(swish(norm2(h))));
  return (nin_shortcut ? nin_shortcut(x) : x) + h;
}

AttnBlockImpl::AttnBlockImpl(int64_t ch) {
  norm = register_module("norm", normalize(ch));
  q = register_module("q", conv(ch, ch, 1));
  k = register_module("k", conv(ch, ch, 1));
  v = register_module("v", conv(ch, ch, 1));
  proj_out = register_module("proj_out", conv(ch, ch, 1));
}

torch::Tensor AttnBlockImpl::forward(const torch::Tensor& x) {
  auto h = norm(x);
  const auto B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  // Single-head attention over the H*W positions, as [B, HW, C].
  auto flat = [&](const torch::Tensor& y) { return y.reshape({B, C, H * W}).transpose(1, 2); };
  auto out = compat::attention(flat(q(h)), flat(k(h)), flat(v(h)));
  return x + proj_out(out.transpose(1, 2).reshape({B, C, H, W}));
}

ResampleImpl::ResampleImpl(int64_t ch, bool with_conv, bool up) : up_(up) {
  if (with_conv) conv = register_module("conv", up ? s2dm::model::conv(ch, ch, 3, 1, 1) : s2dm::model::conv(ch, ch, 3, 2, 0));
}

torch::Tensor ResampleImpl::forward(const torch::Tensor& x) {
  if (up_) {
    auto h = F::interpolate(x, F::InterpolateFuncOptions()
                                   .scale_factor(std::vector<double>{2.0, 2.0})
                                   .mode(torch::kNearest));
    return conv ? conv(h) : h;
  }
  if (!conv) return F::avg_pool2d(x, F::AvgPool2dFuncOptions(2).stride(2));
  return conv(F::pad(x, F::PadFuncOptions({0, 1, 0, 1})));
}

UNetImpl::UNetImpl(const ModelConfig& config, int64_t channels, int64_t resolution)
    : config_(config), channels_(channels), resolution_(resolution) {
  const int64_t ch = config.ch, temb_ch = 4 * ch;
  const int levels = static_cast<int>(config.ch_mult.size());
  const int nblocks = config.num_res_blocks;
  auto has_attn = [&](int64_t res) {
    for (int r : config.attn_resolutions)
      if (r == res) return true;
    return false;
  };

  // Multiply-adds of one image's forward pass, counted as each layer is built at its resolution
  // (convolutions, linear layers and the attention products; norms and activations aside).
  auto conv_macs = [](int64_t in, int64_t out, int64_t kernel, int64_t out_res) {
    return in * out * kernel * kernel * out_res * out_res;
  };
  auto block_macs = [&](int64_t in, int64_t out, int64_t r) {
    return conv_macs(in, out, 3, r) + temb_ch * out + conv_macs(out, out, 3, r) + (in != out ? conv_macs(in, out, 1, r) : 0);
  };
  auto attn_macs = [&](int64_t c, int64_t r) { return 4 * conv_macs(c, c, 1, r) + 2 * (r * r) * (r * r) * c; };
  int64_t macs = ch * temb_ch + temb_ch * temb_ch + conv_macs(channels, ch, 3, resolution);

  auto temb = container();
  auto dense = nn::ModuleList();
  temb_dense_0 = nn::Linear(ch, temb_ch);
  temb_dense_1 = nn::Linear(temb_ch, temb_ch);
  dense->push_back(temb_dense_0);
  dense->push_back(temb_dense_1);
  temb->register_module("dense", dense);
  register_module("temb", temb);

  conv_in = register_module("conv_in", conv(channels, ch, 3, 1, 1));

  // A res block (and its attention block, at the attention resolutions) of a level at the
  // current resolution; the level's width becomes `out`.
  int64_t res = resolution, block_in = ch;
  auto add_block = [&](Level& level, nn::ModuleList& blocks, nn::ModuleList& attns, int64_t in, int64_t out) {
    level.blocks.push_back(ResnetBlock(in, out, temb_ch, config.dropout));
    blocks->push_back(level.blocks.back());
    macs += block_macs(in, out, res);
    block_in = out;
    if (has_attn(res)) {
      level.attns.push_back(AttnBlock(out));
      attns->push_back(level.attns.back());
      macs += attn_macs(out, res);
    }
  };

  // Encoder. Every feature it pushes onto the skip stack is one long skip (skip_channels).
  auto down = nn::ModuleList();
  for (int l = 0; l < levels; ++l) {
    Level level;
    auto blocks = nn::ModuleList(), attns = nn::ModuleList();
    const int64_t block_out = ch * config.ch_mult[l];
    for (int b = 0; b < nblocks; ++b) add_block(level, blocks, attns, block_in, block_out);
    auto module = container();
    module->register_module("block", blocks);
    module->register_module("attn", attns);
    if (l != levels - 1) {
      level.resample = Resample(block_in, config.resamp_with_conv, false);
      module->register_module("downsample", level.resample);
      res /= 2;
      if (config.resamp_with_conv) macs += conv_macs(block_in, block_in, 3, res);
    }
    down->push_back(module);
    down_levels_.push_back(std::move(level));
  }
  register_module("down", down);

  auto mid = container();
  mid_block_1 = ResnetBlock(block_in, block_in, temb_ch, config.dropout);
  mid_attn_1 = AttnBlock(block_in);
  mid_block_2 = ResnetBlock(block_in, block_in, temb_ch, config.dropout);
  mid->register_module("block_1", mid_block_1);
  mid->register_module("attn_1", mid_attn_1);
  mid->register_module("block_2", mid_block_2);
  register_module("mid", mid);
  macs += 2 * block_macs(block_in, block_in, res) + attn_macs(block_in, res);

  // Decoder, built deepest level first; the list is indexed by level like the reference's.
  skip_channels_ = model::skip_channels(config);
  up_levels_.resize(levels);
  std::vector<std::shared_ptr<nn::Module>> up_modules(levels);
  size_t skip = 0;
  for (int l = levels - 1; l >= 0; --l) {
    Level& level = up_levels_[l];
    auto blocks = nn::ModuleList(), attns = nn::ModuleList();
    const int64_t block_out = ch * config.ch_mult[l];
    for (int b = 0; b <= nblocks; ++b) add_block(level, blocks, attns, block_in + skip_channels_[skip++], block_out);
    auto module = container();
    module->register_module("block", blocks);
    module->register_module("attn", attns);
    if (l != 0) {
      level.resample = Resample(block_in, config.resamp_with_conv, true);
      module->register_module("upsample", level.resample);
      res *= 2;
      if (config.resamp_with_conv) macs += conv_macs(block_in, block_in, 3, res);
    }
    up_modules[l] = module;
  }
  auto up = nn::ModuleList();
  for (auto& m : up_modules) up->push_back(m);
  register_module("up", up);

  norm_out = register_module("norm_out", normalize(block_in));
  conv_out = register_module("conv_out", conv(block_in, channels, 3, 1, 1));
  forward_flops_ = 2 * (macs + conv_macs(block_in, channels, 3, resolution));
}

void UNetImpl::set_memory_format(torch::MemoryFormat format) {
  torch::NoGradGuard no_grad;
  for (auto& p : parameters())
    if (p.dim() == 4) p.set_data(p.data().contiguous(format));
  memory_format_ = format;
}

torch::MemoryFormat preferred_memory_format(const torch::Device&) { return torch::MemoryFormat::ChannelsLast; }

torch::Tensor UNetImpl::take_skip(std::vector<torch::Tensor>& stack, int index, const std::vector<double>& scales) const {
  auto h = std::move(stack.back());
  stack.pop_back();
  auto used = scales.empty() || scales[index] == 1.0 ? h : h * scales[index];
  if (skip_observer_) skip_observer_(index, h, used);
  return used;
}

std::vector<int64_t> skip_channels(const ModelConfig& config) {
  // conv_in's output, each encoder block's output, each downsampler's output; the decoder takes
  // them back in reverse.
  // (EDM's networks push the same features; DhariwalUNet's first convolution has ch·ch_mult[0].)
  std::vector<int64_t> pushed{config.type == "dhariwalunet" ? config.ch * config.ch_mult[0] : config.ch};
  const auto levels = config.ch_mult.size();
  for (size_t l = 0; l < levels; ++l) {
    for (int b = 0; b < config.num_res_blocks; ++b) pushed.push_back(config.ch * config.ch_mult[l]);
    if (l + 1 != levels) pushed.push_back(config.ch * config.ch_mult[l]);
  }
  return {pushed.rbegin(), pushed.rend()};
}

std::vector<double> skip_tuning_scales(const SkipTuningConfig& c, int num_skips) {
  if (!c.rho.empty()) {
    if (static_cast<int>(c.rho.size()) != num_skips)
      throw ConfigError("sample.skip_tuning.rho has " + std::to_string(c.rho.size()) + " factors, the model has " +
                        std::to_string(num_skips) + " long skips (s2dm info --checkpoint lists them)");
    return c.rho;
  }
  std::vector<double> scales(num_skips);
  for (int i = 0; i < num_skips; ++i)
    scales[i] = c.rho_bottom + (c.rho_top - c.rho_bottom) * (num_skips > 1 ? static_cast<double>(i) / (num_skips - 1) : 1.0);
  return scales;
}

torch::Tensor UNetImpl::forward(const torch::Tensor& x, const torch::Tensor& t, const std::vector<double>& skip_scales) {
  if (!skip_scales.empty() && static_cast<int>(skip_scales.size()) != num_skips())
    throw ConfigError("skip scales: got " + std::to_string(skip_scales.size()) + " factors, the model has " +
                      std::to_string(num_skips()) + " long skips");
  auto temb = temb_dense_1(swish(temb_dense_0(timestep_embedding(t, config_.ch))));

  std::vector<torch::Tensor> hs{conv_in(x.contiguous(memory_format_))};
  for (auto& level : down_levels_) {
    for (size_t b = 0; b < level.blocks.size(); ++b) {
      auto h = level.blocks[b](hs.back(), temb);
      if (!level.attns.empty()) h = level.attns[b](h);
      hs.push_back(h);
    }
    if (level.resample) hs.push_back(level.resample(hs.back()));
  }

  auto h = mid_block_2(mid_attn_1(mid_block_1(hs.back(), temb)), temb);

  int skip = 0;
  for (auto l = up_levels_.size(); l-- > 0;) {
    auto& level = up_levels_[l];
    for (size_t b = 0; b < level.blocks.size(); ++b) {
      h = level.blocks[b](torch::cat({h, take_skip(hs, skip++, skip_scales)}, 1), temb);
      if (!level.attns.empty()) h = level.attns[b](h);
    }
    if (level.resample) h = level.resample(h);
  }
  return conv_out(swish(norm_out(h))).contiguous();
}

int64_t count_parameters(const torch::nn::Module& module) {
  int64_t n = 0;
  for (const auto& p : module.parameters()) n += p.numel();
  return n;
}

}  // namespace s2dm::model
