#include "s2dm/model/model_source.h"

#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include <atomic>
#include <map>
#include <memory>
#if S2DM_WITH_CUDA
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

#include "s2dm/core/compat.h"
#include "s2dm/core/errors.h"
#include "s2dm/diffusion/precond.h"
#include "s2dm/io/checkpoint.h"
#include "s2dm/model/edm_networks.h"
#include "s2dm/model/torchscript_model.h"

namespace s2dm::model {

namespace {

std::atomic<int64_t> captured{0};

torch::Tensor eager(UNetImpl& net, const torch::Tensor& x, const torch::Tensor& t, const std::vector<double>& scales,
                    bool bf16) {
  compat::CudaAutocast autocast(bf16, torch::kBFloat16);
  return net.forward(x, t, scales).to(torch::kFloat32);
}

#if S2DM_WITH_CUDA
// The network evaluation replayed from CUDA graphs: captured once per input shape and set of
// skip factors (which the graph holds as constants), then one launch per evaluation instead of
// hundreds of kernel launches. A shape whose capture fails runs eagerly from then on.
class GraphedForward {
 public:
  torch::Tensor operator()(UNetImpl& net, const torch::Tensor& x, const torch::Tensor& t,
                           const std::vector<double>& scales, bool bf16) {
    Key key{x.sizes().vec(), scales};
    auto it = graphs_.find(key);
    if (it == graphs_.end()) it = graphs_.emplace(key, capture(net, x, t, scales, bf16)).first;
    Graph* graph = it->second.get();
    if (!graph) return eager(net, x, t, scales, bf16);
    graph->x.copy_(x);
    graph->t.copy_(t);
    graph->graph.replay();
    return graph->out.clone();
  }

 private:
  using Key = std::pair<std::vector<int64_t>, std::vector<double>>;
  struct Graph {
    at::cuda::CUDAGraph graph;
    torch::Tensor x, t, out;
  };

  static std::unique_ptr<Graph> capture(UNetImpl& net, const torch::Tensor& x, const torch::Tensor& t,
                                        const std::vector<double>& scales, bool bf16) {
    auto graph = std::make_unique<Graph>();
    graph->x = x.clone();
    graph->t = t.clone();
    const auto index = x.device().index();
    c10::cuda::CUDAGuard on_device(x.device());
    torch::cuda::synchronize(index);
    // Capture runs on a side stream of the input's device (capture must begin and end on it),
    // after warm-up there (cuDNN tuning, workspace allocation); the autocast cache is off, as
    // cached casts would live outside the graph.
    c10::cuda::CUDAStreamGuard side(c10::cuda::getStreamFromPool(false, index));
    const bool cache = at::autocast::is_autocast_cache_enabled();
    at::autocast::set_autocast_cache_enabled(false);
    bool capturing = false;
    try {
      for (int i = 0; i < 2; ++i) eager(net, graph->x, graph->t, scales, bf16);
      torch::cuda::synchronize(index);
      graph->graph.capture_begin();
      capturing = true;
      graph->out = eager(net, graph->x, graph->t, scales, bf16);
      capturing = false;
      graph->graph.capture_end();
      ++captured;
    } catch (const std::exception& e) {
      if (capturing) {
        try {
          graph->graph.capture_end();
        } catch (const std::exception&) {
        }
      }
      spdlog::warn("CUDA graph capture failed for input {} ({}); evaluating eagerly", c10::str(x.sizes()), e.what());
      graph.reset();
    }
    at::autocast::set_autocast_cache_enabled(cache);
    torch::cuda::synchronize(index);
    return graph;
  }

  std::map<Key, std::unique_ptr<Graph>> graphs_;
};
#endif

}  // namespace

int64_t cuda_graphs_captured() { return captured; }

EpsModel unet_eps_model(UNet unet, bool bf16, const SkipTuningConfig& skip_tuning, bool cuda_graphs) {
  unet->eval();
  auto net = unet.ptr();
  const auto device = net->parameters().front().device();
  net->set_memory_format(preferred_memory_format(device));
  std::vector<double> tuned;
  if (skip_tuning.active()) tuned = skip_tuning_scales(skip_tuning, net->num_skips());
  const double t_min = skip_tuning.t_min, t_max = skip_tuning.t_max;
#if S2DM_WITH_CUDA
  auto graphed = cuda_graphs && device.is_cuda() ? std::make_shared<GraphedForward>() : nullptr;
#else
  (void)cuda_graphs;
#endif
  const std::vector<double> none;
  return [=](const torch::Tensor& x, const torch::Tensor& t) {
    torch::NoGradGuard no_grad;
    // Samplers evaluate one time per batch, so its first entry decides.
    const bool in_window = !tuned.empty() && [&] {
      const double time = t[0].item<double>();
      return time >= t_min && time <= t_max;
    }();
    const auto& scales = in_window ? tuned : none;
    auto x_in = x.to(device, torch::kFloat32), t_in = t.to(device, torch::kFloat32);
#if S2DM_WITH_CUDA
    if (graphed) return (*graphed)(*net, x_in, t_in, scales, bf16);
#endif
    return eager(*net, x_in, t_in, scales, bf16);
  };
}

namespace {

std::vector<int64_t> wide(const std::vector<int>& v) { return {v.begin(), v.end()}; }

// What EDM's networks take from the config's shared keys and model.edm.
void set_shared_options(EdmUNetOptions& o, const Config& config) {
  const auto& m = config.model;
  o.img_resolution = config.data.image_size;
  o.in_channels = o.out_channels = network_channels(config);
  o.label_dim = m.edm.label_dim;
  o.augment_dim = m.edm.augment_dim;
  o.model_channels = m.ch;
  o.channel_mult = wide(m.ch_mult);
  o.channel_mult_emb = m.edm.channel_mult_emb;
  o.num_blocks = m.num_res_blocks;
  o.attn_resolutions = wide(m.attn_resolutions);
  o.dropout = m.dropout;
}

// EDM's network as an ε-model through its preconditioning, the skips scaled (Skip-Tuning) at
// times in [t_min, t_max]; a class-conditional network's for each batch's labels.
ModelEps edm_eps_model(const Network& net, const Config& config, const torch::Device& device,
                       const SkipTuningConfig& skip_tuning) {
  const auto precond = Preconditioning::of(config.model.edm);
  const auto schedule = noise_schedule_of(config);
  const std::vector<double> tuned = skip_tuning.active() ? skip_tuning_scales(skip_tuning, net.num_skips) : std::vector<double>{};
  const double t_min = skip_tuning.t_min, t_max = skip_tuning.t_max;
  auto given = [=](const torch::Tensor& labels) -> EpsModel {
    auto with_scales = [&](std::vector<double> scales) {
      return precond.eps_model(
          [net, labels, scales, device](const torch::Tensor& input, const torch::Tensor& c_noise) {
            torch::NoGradGuard no_grad;
            return net.forward(input.to(device, torch::kFloat32), c_noise.to(device, torch::kFloat32), labels, scales)
                .to(input.dtype());
          },
          schedule);
    };
    const EpsModel plain = with_scales({});
    if (tuned.empty()) return plain;
    const EpsModel scaled = with_scales(tuned);
    return [=](const torch::Tensor& x, const torch::Tensor& t) {
      const double time = t[0].item<double>();  // (samplers evaluate one time per batch)
      return (time >= t_min && time <= t_max ? scaled : plain)(x, t);
    };
  };
  if (config.model.edm.label_dim > 0) return {{}, given};
  return {given({}), {}};
}

}  // namespace

Network make_network(const Config& config) {
  const auto& m = config.model;
  Network n;
  n.num_skips = num_skips(m);
  if (m.type == "songunet") {
    model::SongUNetOptions o;
    set_shared_options(o, config);
    o.embedding_type = m.edm.embedding_type;
    o.channel_mult_noise = m.edm.channel_mult_noise;
    o.encoder_type = m.edm.encoder_type;
    o.decoder_type = m.edm.decoder_type;
    o.resample_filter = m.edm.resample_filter;
    SongUNet net(o);
    n.module = net.ptr();
    n.forward = [net = net.ptr()](const torch::Tensor& x, const torch::Tensor& c, const torch::Tensor& labels,
                                  const std::vector<double>& s) { return net->forward(x, c, labels, {}, s); };
  } else if (m.type == "dhariwalunet") {
    model::DhariwalUNetOptions o;
    set_shared_options(o, config);
    o.channels_per_head = m.edm.channels_per_head;
    if (m.edm.precond == "iddpm") o.out_channels = 2 * o.in_channels;  // (iDDPM's network also predicts variances)
    DhariwalUNet net(o);
    n.module = net.ptr();
    n.forward = [net = net.ptr()](const torch::Tensor& x, const torch::Tensor& c, const torch::Tensor& labels,
                                  const std::vector<double>& s) { return net->forward(x, c, labels, {}, s); };
  } else {
    UNet net(m, network_channels(config), config.data.image_size);
    n.module = net.ptr();
    n.forward = [net = net.ptr()](const torch::Tensor& x, const torch::Tensor& t, const torch::Tensor&,
                                  const std::vector<double>& s) { return net->forward(x, t, s); };
  }
  return n;
}

bool bf16_autocast(const Config& config, const torch::Device& device) {
  return device.is_cuda() && config.train.precision == "bf16";
}

ModelSource resolve_model(const ModelRef& ref, const std::vector<std::string>& overrides) {
  const int given = !ref.checkpoint.empty() + !ref.weights.empty() + !ref.script.empty();
  if (given != 1)
    throw UsageError("give exactly one model: --checkpoint C, --weights F.safetensors --config F.yaml, or "
                     "--model-script M.pt --config F.yaml");
  ModelSource m;
  if (!ref.checkpoint.empty()) {
    m.origin = ref.checkpoint;
    auto ckpt = load_checkpoint(m.origin);
    m.config = parse_config(ckpt.config_yaml, m.origin + " (config)", overrides);
    // (The weights are a network of the trained process: no override turns them into another's.)
    const std::string trained = parse_config(ckpt.config_yaml, m.origin + " (config)").diffusion.process;
    if (m.config.diffusion.process != trained)
      throw ConfigError(m.origin + ": diffusion.process = '" + m.config.diffusion.process + "': the checkpoint holds a " +
                        trained + " model, which samples as one");
    m.weights = checkpoint_weights(ckpt, ref.ema);
    m.learned = std::move(ckpt.schedule);
    return m;
  }
  if (ref.config.empty())
    throw UsageError(std::string(ref.script.empty() ? "--weights" : "--model-script") + " needs --config (shape and schedule)");
  m.config = load_config(ref.config, overrides);
  if (!ref.script.empty()) {
    m.script = m.origin = ref.script;
    return m;
  }
  m.origin = ref.weights;
  try {
    m.weights = load_safetensors(m.origin).tensors;
  } catch (const IoError& e) {
    throw CheckpointError(e.what());
  }
  return m;
}

void check_skip_tuning(const ModelConfig& model, const SkipTuningConfig& skip_tuning, bool torchscript) {
  if (!skip_tuning.active()) return;
  if (torchscript)
    throw UsageError("Skip-Tuning needs the UNet's skips: it works with --checkpoint and --weights, not --model-script");
  skip_tuning_scales(skip_tuning, num_skips(model));
}

LoadedModel::LoadedModel(const ModelSource& source, const torch::Device& device)
    : config_(source.config), device_(device) {
  const auto& c = source.config;
  if (!source.script.empty()) {
    script_ = load_torchscript_eps_model(source.script, device, {network_channels(c), c.data.image_size, c.data.image_size});
    return;
  }
  network_ = make_network(c);
  load_weights(*network_.module, source.weights, source.origin);
  network_.module->to(device);
  network_.module->eval();
}

int64_t network_channels(const Config& config) {
  return config.diffusion.process == "psld" ? 2 * config.data.channels : config.data.channels;
}

torch::Tensor psld_noise_input(const Config& config, const torch::Tensor& t) {
  const bool fourier = config.model.type == "songunet" && config.model.edm.embedding_type == "fourier";
  return fourier ? t.log() : t * 999;
}

namespace {

// A PSLD network's output is ε̂ itself (the released code does not precondition); the skips are
// scaled (Skip-Tuning) at network times 999 t in [t_min, t_max].
EpsModel psld_eps_model(const Network& net, const Config& config, const torch::Device& device, bool bf16,
                        const SkipTuningConfig& skip_tuning, bool cuda_graphs) {
  if (const auto unet = net.unet()) {
    const EpsModel indexed = unet_eps_model(unet, bf16, skip_tuning, cuda_graphs);
    return [indexed](const torch::Tensor& z, const torch::Tensor& t) { return indexed(z, t * 999); };
  }
  const std::vector<double> tuned =
      skip_tuning.active() ? skip_tuning_scales(skip_tuning, net.num_skips) : std::vector<double>{}, none;
  const double t_min = skip_tuning.t_min, t_max = skip_tuning.t_max;
  return [=](const torch::Tensor& z, const torch::Tensor& t) {
    torch::NoGradGuard no_grad;
    const double time = t[0].item<double>() * 999;  // (samplers evaluate one time per batch)
    const auto& scales = time >= t_min && time <= t_max ? tuned : none;
    const auto noise = psld_noise_input(config, t.to(device, torch::kFloat32));
    compat::CudaAutocast autocast(bf16, torch::kBFloat16);
    return net.forward(z.to(device, torch::kFloat32), noise, {}, scales).to(z.dtype());
  };
}

}  // namespace

ModelEps network_eps_model(const Network& network, const Config& config, const torch::Device& device, bool bf16,
                           const SkipTuningConfig& skip_tuning, bool cuda_graphs) {
  if (config.diffusion.process == "psld") return {psld_eps_model(network, config, device, bf16, skip_tuning, cuda_graphs), {}};
  if (const auto unet = network.unet()) return {unet_eps_model(unet, bf16, skip_tuning, cuda_graphs), {}};
  return edm_eps_model(network, config, device, skip_tuning);
}

ModelEps LoadedModel::eps(const SkipTuningConfig& skip_tuning, bool cuda_graphs) const {
  check_skip_tuning(config_.model, skip_tuning, bool(script_));
  if (script_) return {script_, {}};
  return network_eps_model(network_, config_, device_, bf16_autocast(config_, device_), skip_tuning, cuda_graphs);
}

ModelEps LoadedModel::eps_fp32(const SkipTuningConfig& skip_tuning) const {
  check_skip_tuning(config_.model, skip_tuning, bool(script_));
  if (script_) return {script_, {}};
  return network_eps_model(network_, config_, device_, /*bf16=*/false, skip_tuning);
}

}  // namespace s2dm::model
