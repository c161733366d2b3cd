// UNet throughput on the CPU: a training step (forward + L_simple + backward + Adam + EMA) and a
// sampling network evaluation (no grad), for a model config and batch size given by
// S2DM_BENCH_CONFIG (default: the CIFAR10 config) and S2DM_BENCH_BATCH (default 16); and each
// sampler's own cost per step apart from the network (BM_SamplerStep, CIFAR10 shape, batch 64,
// 10 steps, a model that returns a fixed ε), to compare with BM_SampleEval at batch 64.
// S2DM_BENCH_DEVICE=cuda runs on the GPU, with bf16 autocast unless S2DM_BENCH_PRECISION=fp32.
// Compare with bench/reference_unet.py (PyTorch eager, the same architecture): bench/compare.sh.
#include <benchmark/benchmark.h>
#include <torch/torch.h>

#include <cstdlib>

#include "s2dm/compat.h"
#include "s2dm/config.h"
#include "s2dm/device.h"
#include "s2dm/fid.h"
#include "s2dm/losses.h"
#include "s2dm/optim.h"
#include "s2dm/samplers.h"
#include "s2dm/unet.h"

namespace {

struct Setup {
  s2dm::Config config;
  int64_t batch;
  torch::Device device{torch::kCPU};
  bool bf16 = false;
  Setup() {
    const char* path = std::getenv("S2DM_BENCH_CONFIG");
    config = path ? s2dm::load_config(path) : s2dm::parse_config("data: {dataset: cifar10, channels: 3}", "cifar10");
    const char* b = std::getenv("S2DM_BENCH_BATCH");
    batch = b ? std::atoll(b) : 16;
    s2dm::set_cpu_threads(config.threads);
    device = s2dm::resolve_device(std::getenv("S2DM_BENCH_DEVICE") ? std::getenv("S2DM_BENCH_DEVICE") : "cpu");
    const char* precision = std::getenv("S2DM_BENCH_PRECISION");
    bf16 = device.is_cuda() && !(precision && std::string(precision) == "fp32");
  }
  std::vector<int64_t> shape() const {
    return {batch, config.data.channels, config.data.image_size, config.data.image_size};
  }
};

void sync(const torch::Device& d) {
  if (d.is_cuda()) torch::cuda::synchronize();
}

void BM_TrainStep(benchmark::State& state) {
  Setup s;
  torch::manual_seed(0);
  s2dm::model::UNet net(s.config.model, s.config.data.channels, s.config.data.image_size);
  s2dm::model::UNet ema(s.config.model, s.config.data.channels, s.config.data.image_size);
  net->to(s.device);
  ema->to(s.device);
  s2dm::NamedTensors params;
  for (const auto& p : net->named_parameters()) params.emplace_back(p.key(), p.value());
  s2dm::train::Adam adam(params, {});
  s2dm::NoiseSchedule schedule(s.config.diffusion);
  s2dm::diffusion::DiffusionLoss loss(s.config.loss, schedule, s.device);
  auto x0 = torch::randn(s.shape(), torch::TensorOptions().device(s.device));
  auto all = net->parameters();
  for (auto _ : state) {
    adam.zero_grad();
    auto t = s2dm::diffusion::sample_timesteps(s.batch, schedule.num_timesteps(), true, s.device);
    s2dm::diffusion::LossTerms terms;
    {
      s2dm::compat::CudaAutocast autocast(s.bf16, torch::kBFloat16);
      terms = loss([&](const torch::Tensor& x, const torch::Tensor& tt) { return net->forward(x, tt); }, x0, t);
    }
    terms.loss.backward();
    s2dm::train::clip_grad_norm(all, 1.0);
    adam.step(2e-4);
    s2dm::train::ema_update(*ema, *net, 0.9999);
    sync(s.device);
  }
  state.SetItemsProcessed(state.iterations() * s.batch);
  state.counters["batch"] = static_cast<double>(s.batch);
}

void BM_SampleEval(benchmark::State& state) {
  Setup s;
  torch::manual_seed(0);
  s2dm::model::UNet net(s.config.model, s.config.data.channels, s.config.data.image_size);
  net->to(s.device);
  net->eval();
  torch::NoGradGuard no_grad;
  auto x = torch::randn(s.shape(), torch::TensorOptions().device(s.device));
  auto t = torch::full({s.batch}, 500.0f, torch::TensorOptions().device(s.device));
  s2dm::compat::CudaAutocast autocast(s.bf16, torch::kBFloat16);
  for (auto _ : state) {
    benchmark::DoNotOptimize(net->forward(x, t));
    sync(s.device);
  }
  state.SetItemsProcessed(state.iterations() * s.batch);
  state.counters["batch"] = static_cast<double>(s.batch);
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

// FID feature extraction: 32x32 images (resized to 299x299 inside), batch 50, random weights.
void BM_InceptionFeatures(benchmark::State& state) {
  Setup s;
  s2dm::eval::FidInception net;
  net->eval();
  s2dm::eval::FeatureExtractor inception{"inception", [net](const torch::Tensor& x) mutable {
                                           return net->forward(x.to(torch::kFloat32) / 255.0);
                                         }};
  auto images = torch::randint(0, 256, {50, 3, 32, 32}, torch::kUInt8);
  for (auto _ : state) benchmark::DoNotOptimize(s2dm::eval::extract_features(inception, images, 50, torch::kCPU, false));
  state.SetItemsProcessed(state.iterations() * 50);
}

// The Fréchet distance of two 2048-d statistics (Cholesky + one symmetric eigendecomposition).
void BM_Frechet2048(benchmark::State& state) {
  Setup s;
  auto a = s2dm::eval::feature_stats(torch::randn({4096, 2048}, torch::kFloat64));
  auto b = s2dm::eval::feature_stats(torch::randn({4096, 2048}, torch::kFloat64) * 1.1 + 0.1);
  for (auto _ : state) benchmark::DoNotOptimize(s2dm::eval::frechet_distance(a, b));
}

}  // namespace

BENCHMARK(BM_InceptionFeatures)->Unit(benchmark::kMillisecond)->UseRealTime()->MinWarmUpTime(1.0)->MinTime(5.0);
BENCHMARK(BM_Frechet2048)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(3.0);
BENCHMARK(BM_SamplerStep)->DenseRange(0, 9)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(1.0);
BENCHMARK(BM_TrainStep)->Unit(benchmark::kMillisecond)->UseRealTime()->MinWarmUpTime(2.0)->MinTime(10.0);
BENCHMARK(BM_SampleEval)->Unit(benchmark::kMillisecond)->UseRealTime()->MinWarmUpTime(2.0)->MinTime(10.0);
BENCHMARK_MAIN();
