// DDIM (Song et al. 2021) and DDPM's ancestral sampler as its η = 1 case.
#include <torch/torch.h>

#include <cmath>

#include "s2dm/sample/samplers.h"

namespace s2dm::sample {
namespace {

// One generalised DDIM step: x' = √a' x̂₀ + √(1-a'-σ_dir²) ε + σ_noise z.
torch::Tensor ddim_steps(const EpsModel& model, torch::Tensor x, const Grid& grid, const SamplerOptions& options,
                         const Callback& callback, double eta, bool large_variance) {
  ImageNoise noise(options, x);
  for (int i = 0; i < grid.steps(); ++i) {
    const double a = grid.alpha_bar[i], a_next = grid.alpha_bar[i + 1];
    auto eps = eval_eps(model, x, grid.t[i]);
    auto x0 = predict_x0(x, eps, a);
    if (options.clip_denoised) x0 = x0.clamp(-1.0, 1.0);
    // σ = η √((1-a')/(1-a)) √(1 - a/a'); DDIM's σ̂ variant draws noise of std √(1 - a/a') instead.
    const double sigma = eta * std::sqrt((1 - a_next) / (1 - a) * (1 - a / a_next));
    const double noise_std = large_variance ? std::sqrt(1 - a / a_next) : sigma;
    x = std::sqrt(a_next) * x0 + std::sqrt(std::max(0.0, 1 - a_next - sigma * sigma)) * eps;
    const bool last = i + 1 == grid.steps();  // σ̂ adds no noise on the final step (as DDPM at t = 0)
    if (noise_std > 0 && !(large_variance && last))
      x = x + noise_std * noise();
    if (callback) callback({i, grid.steps(), grid.t[i], x});
  }
  return x;
}

}  // namespace

torch::Tensor sample_ddim(const EpsModel& model, torch::Tensor x, const Grid& grid, const SamplerOptions& options,
                          const Callback& callback) {
  return ddim_steps(model, std::move(x), grid, options, callback, options.eta, false);
}

torch::Tensor sample_ddpm(const EpsModel& model, torch::Tensor x, const Grid& grid, const SamplerOptions& options,
                          const Callback& callback) {
  return ddim_steps(model, std::move(x), grid, options, callback, 1.0, options.variance == "large");
}

}  // namespace s2dm::sample
