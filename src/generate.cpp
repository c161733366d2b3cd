#include "s2dm/generate.h"

#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#if S2DM_WITH_CUDA
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

#include "s2dm/compat.h"
#include "s2dm/data.h"
#include "s2dm/errors.h"
#include "s2dm/image_io.h"
#include "s2dm/npy_tensor.h"
#include "s2dm/progress.h"
#include "s2dm/schedule_opt.h"

namespace s2dm::sample {

namespace {

std::atomic<int64_t> captured{0};

#if S2DM_WITH_CUDA
// The network evaluation replayed from CUDA graphs: captured once per input shape and set of
// skip factors (which the graph holds as constants), then one launch per evaluation instead of
// hundreds of kernel launches. A shape whose capture fails runs eagerly from then on.
class GraphedForward {
 public:
  torch::Tensor operator()(model::UNetImpl& net, const torch::Tensor& x, const torch::Tensor& t, bool bf16) {
    Key key{x.sizes().vec(), net.skip_scales()};
    auto it = graphs_.find(key);
    if (it == graphs_.end()) it = graphs_.emplace(key, capture(net, x, t, bf16)).first;
    Graph* graph = it->second.get();
    if (!graph) return eager(net, x, t, bf16);
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

  static torch::Tensor eager(model::UNetImpl& net, const torch::Tensor& x, const torch::Tensor& t, bool bf16) {
    compat::CudaAutocast autocast(bf16, torch::kBFloat16);
    return net.forward(x, t).to(torch::kFloat32);
  }

  static std::unique_ptr<Graph> capture(model::UNetImpl& net, const torch::Tensor& x, const torch::Tensor& t,
                                        bool bf16) {
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
      for (int i = 0; i < 2; ++i) eager(net, graph->x, graph->t, bf16);
      torch::cuda::synchronize(index);
      graph->graph.capture_begin();
      capturing = true;
      graph->out = eager(net, graph->x, graph->t, bf16);
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

EpsModel unet_eps_model(model::UNet unet, bool bf16, const SkipTuningConfig& skip_tuning, bool cuda_graphs) {
  unet->eval();
  auto net = unet.ptr();
  const auto device = net->parameters().front().device();
  net->set_memory_format(model::preferred_memory_format(device));
  std::vector<double> scales;
  if (skip_tuning.active()) scales = model::skip_tuning_scales(skip_tuning, net->num_skips());
  const double t_min = skip_tuning.t_min, t_max = skip_tuning.t_max;
  bf16 = bf16 && device.is_cuda();
#if S2DM_WITH_CUDA
  auto graphed = cuda_graphs && device.is_cuda() ? std::make_shared<GraphedForward>() : nullptr;
#else
  (void)cuda_graphs;
#endif
  return [=](const torch::Tensor& x, const torch::Tensor& t) {
    torch::NoGradGuard no_grad;
    if (scales.empty()) {
      net->set_skip_scales({});  // (another ε-model of the same network may have set some)
    } else {                     // samplers evaluate one time per batch
      const double time = t[0].item<double>();
      net->set_skip_scales(time >= t_min && time <= t_max ? scales : std::vector<double>{});
    }
    auto x_in = x.to(device, torch::kFloat32), t_in = t.to(device, torch::kFloat32);
#if S2DM_WITH_CUDA
    if (graphed) return (*graphed)(*net, x_in, t_in, bf16);
#endif
    compat::CudaAutocast autocast(bf16, torch::kBFloat16);
    return net->forward(x_in, t_in).to(torch::kFloat32);
  };
}

torch::Tensor initial_noise(int64_t first, int64_t count, const std::vector<int64_t>& shape, uint64_t seed) {
  std::vector<int64_t> one{1};
  one.insert(one.end(), shape.begin(), shape.end());
  std::vector<torch::Tensor> xs;
  for (int64_t i = first; i < first + count; ++i) {
    auto gen = at::detail::createCPUGenerator(seed * 1000003ull + static_cast<uint64_t>(i));
    xs.push_back(torch::randn(one, gen, torch::kFloat32));
  }
  return torch::cat(xs);
}

SamplingPlan plan_sampling(const SampleConfig& c, const NoiseSchedule& schedule, const NamedTensors& learned) {
  SamplingPlan plan;
  plan.sampler = &find_sampler(c.sampler);
  plan.options.eta = c.eta;
  plan.options.clip_denoised = c.clip_denoised;
  plan.options.order = c.order;
  plan.options.lambda = c.lambda;
  plan.options.lower_order_final = c.lower_order_final;
  plan.options.variance = c.variance;
  check_options(*plan.sampler, plan.options);
  auto timesteps = c.timesteps == "learned" ? timesteps_from_state(learned, c.steps)
                                            : make_timesteps(c.timesteps, c.steps, schedule, c.karras_rho);
  plan.grid = make_grid(timesteps, schedule, c.final_alpha);
  return plan;
}

Generated generate(const EpsModel& model, const NoiseSchedule& schedule, const SampleConfig& config,
                   const std::vector<int64_t>& shape, const torch::Device& device, uint64_t seed, int64_t num,
                   const torch::Tensor& noise, bool show_progress, const NamedTensors& learned,
                   const std::function<bool()>& stop) {
  const SamplingPlan plan = plan_sampling(config, schedule, learned);
  if (noise.defined()) {
    if (noise.dim() != 4 || noise.sizes().slice(1).vec() != shape)
      throw DataError("initial noise has shape " + c10::str(noise.sizes()) + ", the model expects [N, " +
                      c10::str(c10::IntArrayRef(shape)) + "]");
    num = noise.size(0);
  }
  Generated out;
  std::vector<torch::Tensor> parts;
  Progress progress("sampling " + plan.sampler->name + " (" + std::to_string(plan.grid.steps()) + " steps)", num, "img");
  auto start = std::chrono::steady_clock::now();
  for (int64_t first = 0; first < num; first += config.batch) {
    if (stop && stop()) {
      out.complete = false;
      break;
    }
    int64_t count = std::min<int64_t>(config.batch, num - first);
    auto x = noise.defined() ? noise.slice(0, first, first + count) : initial_noise(first, count, shape, seed);
    SamplerOptions options = plan.options;
    options.noise_seed = seed * 7919ull + static_cast<uint64_t>(first);
    auto run = run_sampler(*plan.sampler, model, x.to(device, torch::kFloat32), plan.grid, options);
    out.nfe = run.nfe;
    parts.push_back(run.x.to(torch::kCPU));
    if (show_progress) progress.update(first + count);
  }
  out.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (show_progress) progress.finish("(" + std::to_string(out.nfe) + " network evaluations per image)");
  out.samples = parts.empty() ? torch::empty({0}) : torch::cat(parts);
  return out;
}

namespace {

torch::Tensor nhwc_uint8(const torch::Tensor& samples) {
  return data::to_uint8(samples).permute({0, 2, 3, 1}).contiguous();
}

}  // namespace

void write_grid(const std::string& path, const torch::Tensor& samples) {
  auto images = nhwc_uint8(samples.slice(0, 0, 64));
  write_png(path, tile_images(images.data_ptr<uint8_t>(), static_cast<int>(images.size(0)),
                            static_cast<int>(images.size(1)), static_cast<int>(images.size(2)),
                            static_cast<int>(images.size(3))));
}

torch::Tensor read_samples_npz(const std::string& path) {
  auto arrays = load_npz(path);
  auto it = arrays.find("arr_0");
  if (it == arrays.end()) throw DataError(path + ": no arr_0 (samples) in this .npz");
  const auto& a = it->second;
  if (a.dtype != "|u1" || a.shape.size() != 4 || (a.shape[3] != 1 && a.shape[3] != 3))
    throw DataError(path + ": arr_0 must be uint8 NHWC with 1 or 3 channels");
  return to_tensor(a, path).permute({0, 3, 1, 2}).contiguous();
}

void write_samples(const std::string& dir, const torch::Tensor& samples, bool pngs) {
  std::filesystem::create_directories(dir);
  auto images = nhwc_uint8(samples);
  const int64_t n = images.size(0), h = images.size(1), w = images.size(2), c = images.size(3);
  if (pngs) {
    for (int64_t i = 0; i < n; ++i) {
      auto img = images[i];
      char name[32];
      std::snprintf(name, sizeof name, "%06ld.png", static_cast<long>(i));
      write_png(dir + "/" + name,
                Image{static_cast<int>(w), static_cast<int>(h), static_cast<int>(c),
                      std::vector<uint8_t>(img.data_ptr<uint8_t>(), img.data_ptr<uint8_t>() + h * w * c)});
    }
  }
  save_npz(dir + "/samples.npz", {{"arr_0", to_npy_array(images)}});
  write_grid(dir + "/grid.png", samples);
}

}  // namespace s2dm::sample
