// UNet throughput: a training step (forward + L_simple + backward + clipping + Adam + EMA) and a
// sampling network evaluation (no grad), for a model config and batch size given by
// S2DM_BENCH_CONFIG (default: the CIFAR10 config) and S2DM_BENCH_BATCH (default 16); and each
// sampler's own cost per step apart from the network (BM_SamplerStep, CIFAR10 shape, batch 64,
// 10 steps, a model that returns a fixed ε), to compare with BM_SampleEval at batch 64.
// Counters: images/s (items_per_second), TFLOP/s of the model's math and MFU, its fraction of
// the device's peak (s2dm::peak_flops; S2DM_PEAK_TFLOPS overrides), and on CUDA peak_GiB, the
// most tensor memory held at once (as torch.cuda.max_memory_allocated).
// S2DM_BENCH_MIN_TIME sets the seconds each network benchmark (UNet, Inception) runs, after a
// warm-up of a fifth of it (default 10 and 5 s); the others follow --benchmark_min_time.
//
// S2DM_BENCH_DEVICE=cuda runs on the GPU, with bf16 autocast unless S2DM_BENCH_PRECISION=fp32.
// Each speed feature can be switched to measure its gain (1 = on, 0 = off; default: what
// training and sampling use): S2DM_BENCH_CHANNELS_LAST, S2DM_BENCH_FUSED_ADAM, S2DM_BENCH_TF32
// (CUDA: TF32 and the cuDNN autotuner), S2DM_BENCH_CUDA_GRAPHS (CUDA sampling).
// Compare with bench/reference_unet.py (PyTorch eager, the same architecture): bench/compare.sh.
#include <benchmark/benchmark.h>
#include <torch/torch.h>

#include <chrono>
#include <cstdlib>

#include "s2dm/core/compat.h"
#include "s2dm/core/config.h"
#include "s2dm/core/device.h"
#include "s2dm/eval/fid.h"
#include "s2dm/model/model_source.h"
#include "s2dm/sample/generate.h"
#include "s2dm/diffusion/losses.h"
#include "s2dm/optim/optim.h"
#include "s2dm/sample/samplers.h"
#include "s2dm/model/unet.h"

namespace {

// An on/off switch from the environment, or `fallback` when unset.
bool env_flag(const char* name, bool fallback) {
  const char* v = std::getenv(name);
  return v ? std::string(v) != "0" : fallback;
}

struct Setup {
  s2dm::Config config;
  int64_t batch;
  torch::Device device{torch::kCPU};
  bool bf16 = false;
  torch::MemoryFormat memory_format = torch::MemoryFormat::Contiguous;
  Setup() {
    const char* path = std::getenv("S2DM_BENCH_CONFIG");
    config = path ? s2dm::load_config(path) : s2dm::parse_config("data: {dataset: cifar10, channels: 3}", "cifar10");
    const char* b = std::getenv("S2DM_BENCH_BATCH");
    batch = b ? std::atoll(b) : 16;
    s2dm::set_cpu_threads(config.threads);
    device = s2dm::resolve_device(std::getenv("S2DM_BENCH_DEVICE") ? std::getenv("S2DM_BENCH_DEVICE") : "cpu");
    if (device.is_cuda()) s2dm::use_fast_cuda_math(env_flag("S2DM_BENCH_TF32", true));
    const char* precision = std::getenv("S2DM_BENCH_PRECISION");
    bf16 = device.is_cuda() && !(precision && std::string(precision) == "fp32");
    const bool channels_last = s2dm::model::preferred_memory_format(device) == torch::MemoryFormat::ChannelsLast;
    if (env_flag("S2DM_BENCH_CHANNELS_LAST", channels_last)) memory_format = torch::MemoryFormat::ChannelsLast;
  }
  std::vector<int64_t> shape() const {
    return {batch, config.data.channels, config.data.image_size, config.data.image_size};
  }
  s2dm::model::UNet unet() const {
    s2dm::model::UNet net(config.model, config.data.channels, config.data.image_size);
    net->to(device);
    net->set_memory_format(memory_format);
    return net;
  }
  // Images/s, TFLOP/s and MFU for `passes` forward-equivalents per image, over `seconds`.
  void report(benchmark::State& state, const s2dm::model::UNet& net, double passes, double seconds) const {
    state.SetItemsProcessed(state.iterations() * batch);
    state.counters["batch"] = static_cast<double>(batch);
    const double flops_per_second = passes * static_cast<double>(net->forward_flops()) *
                                    static_cast<double>(state.iterations() * batch) / seconds;
    state.counters["TFLOP/s"] = flops_per_second / 1e12;
    if (const double peak = s2dm::peak_flops(device, bf16); peak > 0) state.counters["MFU"] = flops_per_second / peak;
    if (device.is_cuda()) state.counters["peak_GiB"] = static_cast<double>(s2dm::peak_memory(device)) / (1 << 30);
  }
};

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

void sync(const torch::Device& d) {
  if (d.is_cuda()) torch::cuda::synchronize();
}

void BM_TrainStep(benchmark::State& state) {
  Setup s;
  torch::manual_seed(0);
  auto net = s.unet(), ema = s.unet();
  s2dm::NamedTensors params;
  for (const auto& p : net->named_parameters()) params.emplace_back(p.key(), p.value());
  s2dm::optim::AdamOptions adam_options;
  adam_options.fused = env_flag("S2DM_BENCH_FUSED_ADAM", true);
  s2dm::optim::Adam adam(params, adam_options);
  s2dm::NoiseSchedule schedule(s.config.diffusion);
  s2dm::diffusion::DiffusionLoss loss(s.config.loss, schedule, s.device);
  auto x0 = torch::randn(s.shape(), torch::TensorOptions().device(s.device));
  auto all = net->parameters();
  s2dm::reset_peak_memory(s.device);
  const auto start = std::chrono::steady_clock::now();
  for (auto _ : state) {
    adam.zero_grad();
    auto t = s2dm::diffusion::sample_timesteps(s.batch, schedule.num_timesteps(), true, s.device);
    s2dm::diffusion::LossTerms terms;
    {
      s2dm::compat::CudaAutocast autocast(s.bf16, torch::kBFloat16);
      terms = loss([&](const torch::Tensor& x, const torch::Tensor& tt) { return net->forward(x, tt); }, x0, t);
    }
    terms.loss.backward();
    s2dm::optim::clip_grad_norm(all, 1.0);
    adam.step(2e-4);
    s2dm::optim::ema_update(*ema, *net, 0.9999);
    sync(s.device);
  }
  s.report(state, net, 3.0, seconds_since(start));  // backward ≈ 2 forwards
}

// One network evaluation as samplers make it (through the ε-model: memory format, bf16, CUDA graphs).
void BM_SampleEval(benchmark::State& state) {
  Setup s;
  torch::manual_seed(0);
  auto net = s.unet();
  auto model = s2dm::model::unet_eps_model(net, s.bf16, {}, env_flag("S2DM_BENCH_CUDA_GRAPHS", true));
  net->set_memory_format(s.memory_format);  // (the ε-model chose the preferred one)
  auto x = torch::randn(s.shape(), torch::TensorOptions().device(s.device));
  auto t = torch::full({s.batch}, 500.0f, torch::TensorOptions().device(s.device));
  s2dm::reset_peak_memory(s.device);
  const auto start = std::chrono::steady_clock::now();
  for (auto _ : state) {
    benchmark::DoNotOptimize(model(x, t));
    sync(s.device);
  }
  s.report(state, net, 1.0, seconds_since(start));
}

void BM_SamplerStep(benchmark::State& state) {
  const auto& info = s2dm::sample::samplers().at(static_cast<size_t>(state.range(0)));
  state.SetLabel(info.name);
  const auto schedule = s2dm::NoiseSchedule::linear(1000);
  auto grid = s2dm::sample::make_grid(s2dm::sample::make_timesteps("quad", 10, schedule), schedule, "one");
  auto x = torch::randn({64, 3, 32, 32});
  auto eps = torch::randn({64, 3, 32, 32}) * 0.1;
  s2dm::EpsModel model = [&](const torch::Tensor&, const torch::Tensor&) { return eps; };
  for (auto _ : state) benchmark::DoNotOptimize(s2dm::sample::run_sampler(info, model, x, grid, {}).x);
  state.SetItemsProcessed(state.iterations() * grid.steps());  // items/s = sampler steps per second
}

// FID feature extraction on S2DM_BENCH_DEVICE: 32x32 images (resized to 299x299 inside), batch
// S2DM_BENCH_BATCH (default 50), random weights.
void BM_InceptionFeatures(benchmark::State& state) {
  Setup s;
  const int64_t batch = std::getenv("S2DM_BENCH_BATCH") ? s.batch : 50;
  s2dm::eval::FidInception net;
  net->eval();
  net->to(s.device);
  s2dm::eval::FeatureExtractor inception{"inception", [net](const torch::Tensor& x) mutable {
                                           return net->forward(x.to(torch::kFloat32) / 255.0);
                                         }};
  auto images = torch::randint(0, 256, {batch, 3, 32, 32}, torch::kUInt8);
  for (auto _ : state) {
    benchmark::DoNotOptimize(s2dm::eval::extract_features(inception, images, batch, s.device, false));
    sync(s.device);
  }
  state.SetItemsProcessed(state.iterations() * batch);
}

// The Fréchet distance of two 2048-d statistics of state.range(0) samples each (fewer than 2048:
// singular covariances), and as the reference one symmetric eigendecomposition of a 2048-d
// covariance (the distance takes two, then one of the product's, at most 2048-d).
void BM_Frechet2048(benchmark::State& state) {
  Setup s;
  const int64_t n = state.range(0);
  auto a = s2dm::eval::feature_stats(torch::randn({n, 2048}, torch::kFloat64));
  auto b = s2dm::eval::feature_stats(torch::randn({n, 2048}, torch::kFloat64) * 1.1 + 0.1);
  for (auto _ : state) benchmark::DoNotOptimize(s2dm::eval::frechet_distance(a, b));
}
void BM_Eigh2048(benchmark::State& state) {
  Setup s;
  auto a = s2dm::eval::feature_stats(torch::randn({4096, 2048}, torch::kFloat64));
  for (auto _ : state) benchmark::DoNotOptimize(torch::linalg_eigh(a.sigma, "L"));
}

// The seconds a network's benchmark runs: S2DM_BENCH_MIN_TIME, else `fallback`.
double model_min_time(double fallback) {
  const char* given = std::getenv("S2DM_BENCH_MIN_TIME");
  return given ? std::atof(given) : fallback;
}

}  // namespace

BENCHMARK(BM_InceptionFeatures)->Unit(benchmark::kMillisecond)->UseRealTime()->MinWarmUpTime(model_min_time(5) / 5)->MinTime(model_min_time(5));
BENCHMARK(BM_Frechet2048)->Arg(1000)->Arg(4096)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(3.0);
BENCHMARK(BM_Eigh2048)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(3.0);
BENCHMARK(BM_SamplerStep)->DenseRange(0, 9)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(1.0);
BENCHMARK(BM_TrainStep)->Unit(benchmark::kMillisecond)->UseRealTime()->MinWarmUpTime(model_min_time(10) / 5)->MinTime(model_min_time(10));
BENCHMARK(BM_SampleEval)->Unit(benchmark::kMillisecond)->UseRealTime()->MinWarmUpTime(model_min_time(10) / 5)->MinTime(model_min_time(10));
BENCHMARK_MAIN();
