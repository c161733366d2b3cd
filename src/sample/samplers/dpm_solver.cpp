// DPM-Solver++(2M) (Lu et al. 2022; LuChengTHU/dpm-solver, k-diffusion's sample_dpmpp_2m):
// a second-order multistep solver in λ = log(α/σ) on the data prediction D = x̂₀. With
// clip_denoised, D is clipped to [-1, 1] before it enters the step (the static thresholding of the
// paper's pixel-space setting, diffusers' clip_sample for this solver).
#include <torch/torch.h>

#include <cmath>

#include "s2dm/sample/samplers.h"

namespace s2dm::sample {

torch::Tensor sample_dpmpp_2m(const EpsModel& model, torch::Tensor x, const Grid& grid, const SamplerOptions& options,
                              const Callback& callback) {
  torch::Tensor previous;  // D from the step before
  double h_previous = 0.0;
  const int S = grid.steps();
  for (int i = 0; i < S; ++i) {
    const double a = grid.alpha_bar[i], a_next = grid.alpha_bar[i + 1];
    const double alpha = std::sqrt(a), sigma = std::sqrt(1 - a);
    const double alpha_next = std::sqrt(a_next), sigma_next = std::sqrt(1 - a_next);
    auto denoised = predict_x0(x, eval_eps(model, x, grid.t[i]), a);
    if (options.clip_denoised) denoised = denoised.clamp(-1.0, 1.0);
    if (sigma_next == 0.0) {
      x = denoised;  // the step to ᾱ = 1 ends on the data prediction (h = ∞)
    } else {
      const double h = std::log(alpha_next / sigma_next) - std::log(alpha / sigma);
      const bool first_order = !previous.defined() || (options.lower_order_final && S < 15 && i == S - 1);
      torch::Tensor d = denoised;
      if (!first_order) {
        const double r = h_previous / h;
        d = denoised + (denoised - previous) / (2 * r);
      }
      x = (sigma_next / sigma) * x - alpha_next * std::expm1(-h) * d;
      h_previous = h;
    }
    previous = denoised;
    if (callback) callback({i, S, grid.t[i], x});
  }
  return x;
}

}  // namespace s2dm::sample
