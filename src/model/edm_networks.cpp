#include "s2dm/model/edm_networks.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "s2dm/core/errors.h"

namespace s2dm::model {
namespace {
const std::vector<double> kNoFilter{1, 1};  // (no resampling: unused)
bool has(const std::string& name, const char* part) { return name.find(part) != std::string::npos; }

// EDM's PositionalEmbedding: [cos(n f), sin(n f)], f_i = (1/10000)^(i / (C/2 - endpoint)), the
// frequencies in float32.
torch::Tensor positional_embedding(const torch::Tensor& n, int64_t channels, bool endpoint) {
  const int64_t half = channels / 2;
  const auto freqs = torch::pow(1.0 / 10000, torch::arange(half, torch::TensorOptions().dtype(torch::kFloat32).device(n.device())) /
                                                  (half - (endpoint ? 1 : 0)));
  const auto angles = torch::outer(n, freqs.to(n.dtype()));
  return torch::cat({angles.cos(), angles.sin()}, 1);
}

// The decoder's concatenation of the newest encoder output, scaled by its Skip-Tuning factor.
torch::Tensor with_skip(const torch::Tensor& x, std::vector<torch::Tensor>& skips, int& index,
                        const std::vector<double>& scales) {
  auto skip = skips.back();
  skips.pop_back();
  if (!scales.empty()) skip = skip * scales[index];
  ++index;
  return torch::cat({x, skip}, 1);
}

// A block of a network's shared settings with its own shape and role.
UNetBlock unet_block(UNetBlockOptions o, int64_t in, int64_t out, bool up, bool down, bool attention) {
  o.in_channels = in;
  o.out_channels = out;
  o.up = up;
  o.down = down;
  o.attention = attention;
  return UNetBlock(o);
}

// EDM's names of a resolution's modules start with it: "16x16_block0".
std::string level_name(int64_t res) { return std::to_string(res) + "x" + std::to_string(res); }

bool contains(const std::vector<int64_t>& values, int64_t value) {
  return std::find(values.begin(), values.end(), value) != values.end();
}

void check_skip_scales(const std::vector<double>& scales, int num_skips) {
  if (!scales.empty() && static_cast<int>(scales.size()) != num_skips)
    throw ConfigError("skip_tuning: " + std::to_string(scales.size()) + " factors for a network with " +
                      std::to_string(num_skips) + " skips");
}

}  // namespace

torch::Tensor edm_weight_init(const std::vector<int64_t>& shape, const std::string& mode, int64_t fan_in, int64_t fan_out) {
  const auto uniform = [&] { return torch::rand(shape) * 2 - 1; };
  if (mode == "xavier_uniform") return std::sqrt(6.0 / (fan_in + fan_out)) * uniform();
  if (mode == "xavier_normal") return std::sqrt(2.0 / (fan_in + fan_out)) * torch::randn(shape);
  if (mode == "kaiming_uniform") return std::sqrt(3.0 / fan_in) * uniform();
  if (mode == "kaiming_normal") return std::sqrt(1.0 / fan_in) * torch::randn(shape);
  throw ConfigError("unknown weight initialisation '" + mode + "'");
}

torch::nn::Linear edm_linear(int64_t in_features, int64_t out_features, const EdmInit& init, bool bias) {
  torch::nn::Linear layer(torch::nn::LinearOptions(in_features, out_features).bias(bias));
  torch::NoGradGuard no_grad;
  layer->weight.copy_(edm_weight_init({out_features, in_features}, init.mode, in_features, out_features) * init.weight);
  if (bias) layer->bias.copy_(edm_weight_init({out_features}, init.mode, in_features, out_features) * init.bias);
  return layer;
}

torch::nn::GroupNorm edm_group_norm(int64_t channels, double eps) {
  return torch::nn::GroupNorm(torch::nn::GroupNormOptions(std::min<int64_t>(32, channels / 4), channels).eps(eps));
}

EdmConv2dImpl::EdmConv2dImpl(int64_t in_channels, int64_t out_channels, int64_t kernel, bool bias, bool up, bool down,
                             const std::vector<double>& filter, bool fused_resample, const EdmInit& init)
    : in_channels_(in_channels), out_channels_(out_channels), up_(up), down_(down), fused_(fused_resample) {
  const int64_t fan_in = in_channels * kernel * kernel, fan_out = out_channels * kernel * kernel;
  if (kernel) {
    weight = register_parameter(
        "weight", edm_weight_init({out_channels, in_channels, kernel, kernel}, init.mode, fan_in, fan_out) * init.weight);
    if (bias) this->bias = register_parameter("bias", edm_weight_init({out_channels}, init.mode, fan_in, fan_out) * init.bias);
  }
  if (up || down) {
    // The separable FIR filter f fᵀ / (Σf)², [1, 1, k, k].
    const auto f = torch::tensor(filter, torch::kFloat32);
    resample_filter = register_buffer("resample_filter", torch::outer(f, f).unsqueeze(0).unsqueeze(1) / f.sum().square());
  }
}

torch::Tensor EdmConv2dImpl::forward(torch::Tensor x) {
  namespace F = torch::nn::functional;
  const auto w = weight.defined() ? weight.to(x.dtype()) : torch::Tensor();
  const auto f = resample_filter.defined() ? resample_filter.to(x.dtype()) : torch::Tensor();
  const int64_t w_pad = w.defined() ? w.size(-1) / 2 : 0, f_pad = f.defined() ? (f.size(-1) - 1) / 2 : 0;
  auto upsample = [&](const torch::Tensor& in, int64_t padding) {
    return F::conv_transpose2d(in, f.mul(4).tile({in_channels_, 1, 1, 1}),
                               F::ConvTranspose2dFuncOptions().groups(in_channels_).stride(2).padding(padding));
  };
  auto downsample = [&](const torch::Tensor& in, int64_t channels, int64_t padding) {
    return F::conv2d(in, f.tile({channels, 1, 1, 1}), F::Conv2dFuncOptions().groups(channels).stride(2).padding(padding));
  };
  if (fused_ && up_ && w.defined()) {
    x = upsample(x, std::max<int64_t>(f_pad - w_pad, 0));
    x = F::conv2d(x, w, F::Conv2dFuncOptions().padding(std::max<int64_t>(w_pad - f_pad, 0)));
  } else if (fused_ && down_ && w.defined()) {
    x = F::conv2d(x, w, F::Conv2dFuncOptions().padding(w_pad + f_pad));
    x = downsample(x, out_channels_, 0);
  } else {
    if (up_) x = upsample(x, f_pad);
    if (down_) x = downsample(x, in_channels_, f_pad);
    if (w.defined()) x = F::conv2d(x, w, F::Conv2dFuncOptions().padding(w_pad));
  }
  if (bias.defined()) x = x + bias.to(x.dtype()).reshape({1, -1, 1, 1});
  return x;
}

UNetBlockImpl::UNetBlockImpl(const UNetBlockOptions& o) : o_(o) {
  o_.num_heads = !o.attention ? 0 : o.num_heads ? o.num_heads : o.out_channels / o.channels_per_head;
  norm0 = register_module("norm0", edm_group_norm(o.in_channels, o.eps));
  conv0 = register_module("conv0", EdmConv2d(o.in_channels, o.out_channels, 3, true, o.up, o.down, o.resample_filter,
                                              false, o.init));
  affine = register_module("affine", edm_linear(o.emb_channels, o.out_channels * (o.adaptive_scale ? 2 : 1), o.init));
  norm1 = register_module("norm1", edm_group_norm(o.out_channels, o.eps));
  conv1 = register_module("conv1", EdmConv2d(o.out_channels, o.out_channels, 3, true, false, false, kNoFilter, false, o.init_zero));
  if (o.out_channels != o.in_channels || o.up || o.down) {
    const int64_t kernel = o.resample_proj || o.out_channels != o.in_channels ? 1 : 0;
    skip = register_module("skip", EdmConv2d(o.in_channels, o.out_channels, kernel, true, o.up, o.down,
                                             o.resample_filter, false, o.init));
  }
  if (o_.num_heads) {
    norm2 = register_module("norm2", edm_group_norm(o.out_channels, o.eps));
    qkv = register_module("qkv", EdmConv2d(o.out_channels, o.out_channels * 3, 1, true, false, false, kNoFilter, false,
                                           o.init_attn));
    proj = register_module("proj", EdmConv2d(o.out_channels, o.out_channels, 1, true, false, false, kNoFilter, false,
                                             o.init_zero));
  }
}

torch::Tensor UNetBlockImpl::forward(const torch::Tensor& input, const torch::Tensor& emb) {
  auto x = conv0(torch::silu(norm0(input)));
  const auto params = affine(emb).unsqueeze(2).unsqueeze(3).to(x.dtype());
  if (o_.adaptive_scale) {
    const auto parts = params.chunk(2, 1);  // scale, shift
    x = torch::silu(torch::addcmul(parts[1], norm1(x), parts[0] + 1));
  } else {
    x = torch::silu(norm1(x + params));
  }
  x = conv1(torch::dropout(x, o_.dropout, is_training()));
  x = (x + (skip ? skip(input) : input)) * o_.skip_scale;
  if (o_.num_heads) {
    const int64_t B = x.size(0), C = x.size(1), heads = o_.num_heads;
    const auto parts = qkv(norm2(x)).reshape({B * heads, C / heads, 3, -1}).unbind(2);
    const auto& q = parts[0];
    const auto& k = parts[1];
    const auto& v = parts[2];
    // softmax(qᵀk/√c) in float32, as EDM's AttentionOp.
    const auto w = torch::einsum("ncq,nck->nqk", {q.to(torch::kFloat32), (k / std::sqrt(static_cast<double>(k.size(1)))).to(torch::kFloat32)})
                       .softmax(2)
                       .to(q.dtype());
    const auto a = torch::einsum("nqk,nck->ncq", {w, v});
    x = (proj(a.reshape(x.sizes())) + x) * o_.skip_scale;
  }
  return x;
}

SongUNetImpl::SongUNetImpl(SongUNetOptions options) : o_(std::move(options)) {
  const auto& o = o_;
  if (o.embedding_type != "positional" && o.embedding_type != "fourier")
    throw ConfigError("embedding_type = '" + o.embedding_type + "' is not one of positional, fourier");
  if (o.encoder_type != "standard" && o.encoder_type != "skip" && o.encoder_type != "residual")
    throw ConfigError("encoder_type = '" + o.encoder_type + "' is not one of standard, skip, residual");
  if (o.decoder_type != "standard" && o.decoder_type != "skip")
    throw ConfigError("decoder_type = '" + o.decoder_type + "' is not one of standard, skip");
  const int64_t emb_channels = o.model_channels * o.channel_mult_emb, noise_channels = o.model_channels * o.channel_mult_noise;
  const EdmInit init{"xavier_uniform", 1, 0}, init_zero{"xavier_uniform", 1e-5, 0}, init_attn{"xavier_uniform", std::sqrt(0.2), 0};
  UNetBlockOptions block;
  block.emb_channels = emb_channels;
  block.dropout = o.dropout;
  block.skip_scale = std::sqrt(0.5);
  block.eps = 1e-6;
  block.resample_filter = o.resample_filter;
  block.resample_proj = true;
  block.adaptive_scale = false;
  block.num_heads = 1;
  block.init = init;
  block.init_zero = init_zero;
  block.init_attn = init_attn;
  auto block_of = [&](int64_t in, int64_t out, bool up, bool down, bool attention) {
    return unet_block(block, in, out, up, down, attention);
  };
  // Mapping.
  if (o.embedding_type == "fourier") {
    auto map_noise = register_module("map_noise", std::make_shared<torch::nn::Module>());
    freqs_ = map_noise->register_buffer("freqs", torch::randn({noise_channels / 2}) * 16);
  }
  if (o.label_dim) map_label = register_module("map_label", edm_linear(o.label_dim, noise_channels, init));
  if (o.augment_dim) map_augment = register_module("map_augment", edm_linear(o.augment_dim, noise_channels, init, false));
  map_layer0 = register_module("map_layer0", edm_linear(noise_channels, emb_channels, init));
  map_layer1 = register_module("map_layer1", edm_linear(emb_channels, emb_channels, init));
  // Encoder.
  auto enc = register_module("enc", std::make_shared<torch::nn::Module>());
  auto add = [](const std::shared_ptr<torch::nn::Module>& parent, std::vector<Item>& items, const std::string& name, auto module) {
    items.push_back({name, parent->register_module(name, module)});
  };
  int64_t cout = o.in_channels, caux = o.in_channels;
  std::vector<int64_t> skips;
  const auto levels = static_cast<int64_t>(o.channel_mult.size());
  for (int64_t level = 0; level < levels; ++level) {
    const int64_t res = o.img_resolution >> level;
    const std::string at = level_name(res);
    if (level == 0) {
      const int64_t cin = cout;
      cout = o.model_channels;
      add(enc, enc_, at + "_conv", EdmConv2d(cin, cout, 3, true, false, false, kNoFilter, false, init));
      skips.push_back(cout);
    } else {
      add(enc, enc_, at + "_down", block_of(cout, cout, false, true, false));
      skips.push_back(cout);
      if (o.encoder_type == "skip") {
        add(enc, enc_, at + "_aux_down", EdmConv2d(caux, caux, 0, true, false, true, o.resample_filter));
        add(enc, enc_, at + "_aux_skip", EdmConv2d(caux, cout, 1, true, false, false, kNoFilter, false, init));
      }
      if (o.encoder_type == "residual") {
        add(enc, enc_, at + "_aux_residual", EdmConv2d(caux, cout, 3, true, false, true, o.resample_filter, true, init));
        caux = cout;
      }
    }
    for (int64_t idx = 0; idx < o.num_blocks; ++idx) {
      const int64_t cin = cout;
      cout = o.model_channels * o.channel_mult[level];
      add(enc, enc_, at + "_block" + std::to_string(idx), block_of(cin, cout, false, false, contains(o.attn_resolutions, res)));
      skips.push_back(cout);
    }
  }
  num_skips_ = static_cast<int>(skips.size());
  // Decoder.
  auto dec = register_module("dec", std::make_shared<torch::nn::Module>());
  for (int64_t level = levels - 1; level >= 0; --level) {
    const int64_t res = o.img_resolution >> level;
    const std::string at = level_name(res);
    if (level == levels - 1) {
      add(dec, dec_, at + "_in0", block_of(cout, cout, false, false, true));
      add(dec, dec_, at + "_in1", block_of(cout, cout, false, false, false));
    } else {
      add(dec, dec_, at + "_up", block_of(cout, cout, true, false, false));
    }
    for (int64_t idx = 0; idx < o.num_blocks + 1; ++idx) {
      const int64_t cin = cout + skips.back();
      skips.pop_back();
      cout = o.model_channels * o.channel_mult[level];
      const bool attention = idx == o.num_blocks && contains(o.attn_resolutions, res);
      add(dec, dec_, at + "_block" + std::to_string(idx), block_of(cin, cout, false, false, attention));
    }
    if (o.decoder_type == "skip" || level == 0) {
      if (o.decoder_type == "skip" && level < levels - 1)
        add(dec, dec_, at + "_aux_up", EdmConv2d(o.out_channels, o.out_channels, 0, true, true, false, o.resample_filter));
      add(dec, dec_, at + "_aux_norm", edm_group_norm(cout, 1e-6));
      add(dec, dec_, at + "_aux_conv", EdmConv2d(cout, o.out_channels, 3, true, false, false, kNoFilter, false, init_zero));
    }
  }
}

torch::Tensor SongUNetImpl::forward(const torch::Tensor& input, const torch::Tensor& noise_labels, const torch::Tensor& class_labels,
                                    const torch::Tensor& augment_labels, const std::vector<double>& skip_scales) {
  check_skip_scales(skip_scales, num_skips_);
  const int64_t B = input.size(0);
  // Mapping: the noise embedding with its halves swapped (sin first), labels and augmentation added.
  const auto n = noise_labels.to(input.dtype());
  torch::Tensor emb;
  if (o_.embedding_type == "positional") {
    emb = positional_embedding(n, o_.model_channels * o_.channel_mult_noise, true);
  } else {
    const auto angles = torch::outer(n, (2 * M_PI * freqs_).to(input.dtype()));
    emb = torch::cat({angles.cos(), angles.sin()}, 1);
  }
  emb = emb.reshape({B, 2, -1}).flip(1).reshape({B, -1});
  if (map_label) {
    const auto labels = class_labels.defined() ? class_labels.to(input.dtype()) : torch::zeros({B, o_.label_dim}, input.options());
    emb = emb + map_label(labels * std::sqrt(static_cast<double>(o_.label_dim)));
  }
  if (map_augment && augment_labels.defined()) emb = emb + map_augment(augment_labels.to(input.dtype()));
  emb = torch::silu(map_layer1(torch::silu(map_layer0(emb))));
  // Encoder.
  std::vector<torch::Tensor> skips;
  auto x = input, aux = input;
  for (const auto& item : enc_) {
    if (has(item.name, "aux_down")) {
      aux = item.module->as<EdmConv2d>()->forward(aux);
    } else if (has(item.name, "aux_skip")) {
      x = skips.back() = x + item.module->as<EdmConv2d>()->forward(aux);
    } else if (has(item.name, "aux_residual")) {
      x = skips.back() = aux = (x + item.module->as<EdmConv2d>()->forward(aux)) / std::sqrt(2.0);
    } else if (auto* block = item.module->as<UNetBlock>()) {
      x = block->forward(x, emb);
      skips.push_back(x);
    } else {
      x = item.module->as<EdmConv2d>()->forward(x);
      skips.push_back(x);
    }
  }
  // Decoder: a block whose input is wider than x takes the newest skip (deepest first).
  torch::Tensor out, tmp;
  int skip_index = 0;
  for (const auto& item : dec_) {
    if (has(item.name, "aux_up")) {
      out = item.module->as<EdmConv2d>()->forward(out);
    } else if (has(item.name, "aux_norm")) {
      tmp = item.module->as<torch::nn::GroupNorm>()->forward(x);
    } else if (has(item.name, "aux_conv")) {
      tmp = item.module->as<EdmConv2d>()->forward(torch::silu(tmp));
      out = out.defined() ? tmp + out : tmp;
    } else {
      auto* block = item.module->as<UNetBlock>();
      if (x.size(1) != block->in_channels()) x = with_skip(x, skips, skip_index, skip_scales);
      x = block->forward(x, emb);
    }
  }
  return out;
}

DhariwalUNetImpl::DhariwalUNetImpl(DhariwalUNetOptions options) : o_(std::move(options)) {
  const auto& o = o_;
  const int64_t emb_channels = o.model_channels * o.channel_mult_emb;
  const EdmInit init{"kaiming_uniform", std::sqrt(1.0 / 3), std::sqrt(1.0 / 3)}, init_zero{"kaiming_uniform", 0, 0};
  UNetBlockOptions block;
  block.emb_channels = emb_channels;
  block.channels_per_head = o.channels_per_head;
  block.dropout = o.dropout;
  block.init = init;
  block.init_zero = init_zero;
  block.init_attn = init;
  auto block_of = [&](int64_t in, int64_t out, bool up, bool down, bool attention) {
    return unet_block(block, in, out, up, down, attention);
  };
  // Mapping.
  if (o.augment_dim) map_augment = register_module("map_augment", edm_linear(o.augment_dim, o.model_channels, init_zero, false));
  map_layer0 = register_module("map_layer0", edm_linear(o.model_channels, emb_channels, init));
  map_layer1 = register_module("map_layer1", edm_linear(emb_channels, emb_channels, init));
  if (o.label_dim)
    map_label = register_module(
        "map_label", edm_linear(o.label_dim, emb_channels, {"kaiming_normal", std::sqrt(static_cast<double>(o.label_dim)), 0}, false));
  // Encoder.
  auto enc = register_module("enc", std::make_shared<torch::nn::Module>());
  int64_t cout = o.in_channels;
  std::vector<int64_t> skips;
  const auto levels = static_cast<int64_t>(o.channel_mult.size());
  for (int64_t level = 0; level < levels; ++level) {
    const int64_t res = o.img_resolution >> level;
    const std::string at = level_name(res);
    if (level == 0) {
      const int64_t cin = cout;
      cout = o.model_channels * o.channel_mult[level];
      enc_.push_back(enc->register_module(at + "_conv", EdmConv2d(cin, cout, 3, true, false, false, kNoFilter, false, init)));
    } else {
      enc_.push_back(enc->register_module(at + "_down", block_of(cout, cout, false, true, false)));
    }
    skips.push_back(cout);
    for (int64_t idx = 0; idx < o.num_blocks; ++idx) {
      const int64_t cin = cout;
      cout = o.model_channels * o.channel_mult[level];
      enc_.push_back(enc->register_module(at + "_block" + std::to_string(idx), block_of(cin, cout, false, false, contains(o.attn_resolutions, res))));
      skips.push_back(cout);
    }
  }
  // Decoder.
  auto dec = register_module("dec", std::make_shared<torch::nn::Module>());
  for (int64_t level = levels - 1; level >= 0; --level) {
    const int64_t res = o.img_resolution >> level;
    const std::string at = level_name(res);
    if (level == levels - 1) {
      dec_.push_back(dec->register_module(at + "_in0", block_of(cout, cout, false, false, true)));
      dec_.push_back(dec->register_module(at + "_in1", block_of(cout, cout, false, false, false)));
    } else {
      dec_.push_back(dec->register_module(at + "_up", block_of(cout, cout, true, false, false)));
    }
    for (int64_t idx = 0; idx < o.num_blocks + 1; ++idx) {
      const int64_t cin = cout + skips.back();
      skips.pop_back();
      cout = o.model_channels * o.channel_mult[level];
      dec_.push_back(dec->register_module(at + "_block" + std::to_string(idx), block_of(cin, cout, false, false, contains(o.attn_resolutions, res))));
    }
  }
  out_norm = register_module("out_norm", edm_group_norm(cout, 1e-5));
  out_conv = register_module("out_conv", EdmConv2d(cout, o.out_channels, 3, true, false, false, kNoFilter, false, init_zero));
}

torch::Tensor DhariwalUNetImpl::forward(const torch::Tensor& input, const torch::Tensor& noise_labels, const torch::Tensor& class_labels,
                                        const torch::Tensor& augment_labels, const std::vector<double>& skip_scales) {
  check_skip_scales(skip_scales, num_skips());
  // Mapping: the noise embedding (cos first), augmentation, then the class label after the layers.
  auto emb = positional_embedding(noise_labels.to(input.dtype()), o_.model_channels, false);
  if (map_augment && augment_labels.defined()) emb = emb + map_augment(augment_labels.to(input.dtype()));
  emb = map_layer1(torch::silu(map_layer0(emb)));
  if (map_label) {
    const auto labels =
        class_labels.defined() ? class_labels.to(input.dtype()) : torch::zeros({input.size(0), o_.label_dim}, input.options());
    emb = emb + map_label(labels);
  }
  emb = torch::silu(emb);
  // Encoder.
  std::vector<torch::Tensor> skips;
  auto x = input;
  for (const auto& module : enc_) {
    x = module->as<UNetBlock>() ? module->as<UNetBlock>()->forward(x, emb) : module->as<EdmConv2d>()->forward(x);
    skips.push_back(x);
  }
  // Decoder.
  int skip_index = 0;
  for (auto& block : dec_) {
    if (x.size(1) != block->in_channels()) x = with_skip(x, skips, skip_index, skip_scales);
    x = block->forward(x, emb);
  }
  return out_conv(torch::silu(out_norm(x)));
}

}  // namespace s2dm::model
