#include "s2dm/samplers.h"

#include <torch/torch.h>

#include <cmath>

#include "s2dm/config.h"
#include "s2dm/errors.h"

namespace s2dm::sample {
namespace {

torch::Tensor time_tensor(const torch::Tensor& x, double t) {
  return torch::full({x.size(0)}, t, x.options());
}

}  // namespace

torch::Tensor predict_x0(const torch::Tensor& x, const torch::Tensor& eps, double a) {
  return (x - std::sqrt(1.0 - a) * eps) / std::sqrt(a);
}

torch::Tensor sample_ddim(const EpsModel& model, torch::Tensor x, const Grid& grid, const SamplerOptions& options,
                          const Callback& callback) {
  auto gen = at::detail::createCPUGenerator(options.noise_seed);
  for (int i = 0; i < grid.steps(); ++i) {
    const double a = grid.alpha_bar[i], a_next = grid.alpha_bar[i + 1];
    auto eps = model(x, time_tensor(x, grid.t[i])).to(x.dtype());
    auto x0 = predict_x0(x, eps, a);
    if (options.clip_denoised) x0 = x0.clamp(-1.0, 1.0);
    double sigma = 0.0;
    if (options.eta > 0.0) sigma = options.eta * std::sqrt((1 - a_next) / (1 - a) * (1 - a / a_next));
    const double dir = std::sqrt(std::max(0.0, 1 - a_next - sigma * sigma));
    x = std::sqrt(a_next) * x0 + dir * eps;
    if (sigma > 0.0) x = x + sigma * torch::randn(x.sizes(), gen, x.options().device(torch::kCPU)).to(x.device());
    if (callback) callback({i, grid.steps(), grid.t[i], x, x0});
  }
  return x;
}

const std::vector<SamplerInfo>& samplers() {
  static const std::vector<SamplerInfo> registry{
      {"ddim", "DDIM (Song et al. 2021); --eta sets the stochasticity (0 = deterministic ODE)", sample_ddim,
       [](int s) { return s; }, false},
      {"ddpm", "DDPM ancestral sampling = DDIM with eta 1", 
       [](const EpsModel& m, torch::Tensor x, const Grid& g, const SamplerOptions& o, const Callback& c) {
         SamplerOptions ancestral = o;
         ancestral.eta = 1.0;
         return sample_ddim(m, std::move(x), g, ancestral, c);
       },
       [](int s) { return s; }, true},
  };
  return registry;
}

const SamplerInfo& find_sampler(const std::string& name) {
  std::vector<std::string> names;
  for (const auto& s : samplers()) {
    if (s.name == name) return s;
    names.push_back(s.name);
  }
  std::string msg = "unknown sampler '" + name + "'";
  auto near = closest_match(name, names);
  if (!near.empty()) msg += " (did you mean '" + near + "'?)";
  std::string all;
  for (const auto& n : names) all += (all.empty() ? "" : ", ") + n;
  throw ConfigError(msg + "; samplers: " + all);
}

SampleRun run_sampler(const SamplerInfo& sampler, const EpsModel& model, torch::Tensor x, const Grid& grid,
                      const SamplerOptions& options, const Callback& callback) {
  SampleRun run;
  EpsModel counted = [&](const torch::Tensor& xt, const torch::Tensor& t) {
    ++run.nfe;
    return model(xt, t);
  };
  torch::NoGradGuard no_grad;
  run.x = sampler.fn(counted, std::move(x), grid, options, callback);
  return run;
}

}  // namespace s2dm::sample
