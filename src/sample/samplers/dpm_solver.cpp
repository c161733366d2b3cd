// DPM-Solver++ multistep (Lu et al. 2022; LuChengTHU/dpm-solver, diffusers' DPMSolverMultistepScheduler,
// k-diffusion's sample_dpmpp_2m and sample_dpmpp_3m_sde at eta 0): exponential integrators in
// λ = log(α/σ) on the data prediction D = x̂₀, which is extrapolated from the last two (2M) or
// three (3M) values by its divided differences. With clip_denoised, D is clipped to [-1, 1] before
// it enters the step (the static thresholding of the paper's pixel-space setting, diffusers'
// clip_sample for this solver). The SDE variants (k-diffusion's sample_dpmpp_2m_sde and _3m_sde,
// diffusers' sde-dpmsolver++) solve the reverse SDE with the same extrapolation: the linear part
// decays at twice the rate, ĥ = 2h in the weights, e^{-h} more on x, and fresh noise restores
// the variance the decay took, σ' √(1 - e^{-2h}).
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <deque>
#include <optional>

#include "s2dm/sample/samplers.h"

namespace s2dm::sample {
namespace {

torch::Tensor dpmpp_multistep(const EpsModel& model, torch::Tensor x, const Grid& grid, const SamplerOptions& options,
                              const Callback& callback, int max_order, bool sde) {
  std::deque<torch::Tensor> denoised;  // D at the last steps, newest first
  std::deque<double> h_before;         // the λ-lengths of the steps between them, newest first
  const int S = grid.steps();
  std::optional<ImageNoise> noise;
  if (sde) noise.emplace(options, x);
  for (int i = 0; i < S; ++i) {
    const double a = grid.alpha_bar[i], a_next = grid.alpha_bar[i + 1];
    const double alpha = std::sqrt(a), sigma = std::sqrt(1 - a);
    const double alpha_next = std::sqrt(a_next), sigma_next = std::sqrt(1 - a_next);
    auto d0 = predict_x0(x, eval_eps(model, x, grid.t[i]), a);
    if (options.clip_denoised) d0 = d0.clamp(-1.0, 1.0);
    denoised.push_front(d0);
    if (static_cast<int>(denoised.size()) > max_order) denoised.pop_back();
    if (sigma_next == 0.0) {
      x = d0;  // the step to ᾱ = 1 ends on the data prediction (h = ∞)
    } else {
      const double h = std::log(alpha_next / sigma_next) - std::log(alpha / sigma);
      // Warm-up from first order; with lower_order_final on short grids (diffusers' < 15 steps),
      // the last steps drop back to order 1 (the last) and 2 (the one before), which steadies them.
      int order = static_cast<int>(denoised.size());
      if (options.lower_order_final && S < 15) order = std::min(order, S - i);
      const double hh = sde ? 2 * h : h;     // the rate of the linear part, in λ
      const double phi_1 = std::expm1(-hh);  // e^{-ĥ} - 1
      x = (sigma_next / sigma) * std::exp(h - hh) * x - alpha_next * phi_1 * d0;
      // taylor: every term the exact integral of D's Taylor extrapolation (heun's second step, and
      // the second difference at the full weight its integral asks for).
      const bool taylor = options.solver_type == "taylor";
      if (order == 2) {
        const auto d1 = (d0 - denoised[1]) * (h / h_before[0]);
        // midpoint: D extrapolated to the step's middle in λ; heun: the exact integral of the
        // linear extrapolation (the two agree to second order).
        const bool heun = taylor || options.solver_type == "heun";
        x = x + (heun ? alpha_next * (phi_1 / hh + 1) : -0.5 * alpha_next * phi_1) * d1;
      } else if (order == 3) {
        const double r0 = h_before[0] / h, r1 = h_before[1] / h;
        const auto d1_0 = (d0 - denoised[1]) / r0, d1_1 = (denoised[1] - denoised[2]) / r1;
        const auto d1 = d1_0 + (d1_0 - d1_1) * (r0 / (r0 + r1));
        // ≈ h²D″/2: the published (3M) weighs it as if it were h²D″, which leaves it second order.
        const auto d2 = (d1_0 - d1_1) / (r0 + r1);
        x = x + alpha_next * (phi_1 / hh + 1) * d1 - (taylor ? 2 : 1) * alpha_next * ((phi_1 + hh) / (hh * hh) - 0.5) * d2;
      }
      if (sde) x = x + sigma_next * std::sqrt(-std::expm1(-2 * h)) * (*noise)();
      h_before.push_front(h);
      if (h_before.size() > 2) h_before.pop_back();
    }
    if (callback) callback({i, S, grid.t[i], x});
  }
  return x;
}

}  // namespace

torch::Tensor sample_dpmpp_2m(const EpsModel& model, torch::Tensor x, const Grid& grid, const SamplerOptions& options,
                              const Callback& callback) {
  return dpmpp_multistep(model, std::move(x), grid, options, callback, 2, false);
}

torch::Tensor sample_dpmpp_2m_sde(const EpsModel& model, torch::Tensor x, const Grid& grid,
                                  const SamplerOptions& options, const Callback& callback) {
  return dpmpp_multistep(model, std::move(x), grid, options, callback, 2, true);
}

torch::Tensor sample_dpmpp_3m_sde(const EpsModel& model, torch::Tensor x, const Grid& grid,
                                  const SamplerOptions& options, const Callback& callback) {
  return dpmpp_multistep(model, std::move(x), grid, options, callback, 3, true);
}

torch::Tensor sample_dpmpp_3m(const EpsModel& model, torch::Tensor x, const Grid& grid, const SamplerOptions& options,
                              const Callback& callback) {
  return dpmpp_multistep(model, std::move(x), grid, options, callback, 3, false);
}

}  // namespace s2dm::sample
