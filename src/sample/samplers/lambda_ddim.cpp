// λ-DDIM, the conjugate integrator for VP models (Pandey et al. 2023, arXiv 2310.07894;
// mandt-lab/c-pigdm VPConjugateSampler). Time runs in t ∈ [0, 1] with timestep index t·(T-1);
// with α = √ᾱ, r = σ/α, A_t = e^{λt}/α_t and Φ_t = ∫ e^{λs} dr_s, a step t → s = t - h is
//   x_s = (1 - λh)(A_t/A_s) x_t - ((Φ_t - Φ_s)/A_s) ε_θ(x_t, t).
// λ = 0 is DDIM. Φ is tabulated once per grid.
#include <torch/torch.h>

#include <cmath>

#include "s2dm/sample/samplers.h"

namespace s2dm::sample {
namespace {

double r_of(double alpha_bar) { return std::sqrt((1 - alpha_bar) / alpha_bar); }

}  // namespace

torch::Tensor sample_lambda_ddim(const EpsModel& model, torch::Tensor x, const Grid& grid,
                                 const SamplerOptions& options, const Callback& callback) {
  const double lambda = options.lambda;
  const double T1 = grid.schedule->num_timesteps() - 1.0;
  const int S = grid.steps();
  auto unit_time = [&](double index) { return index / T1; };
  // Φ_{t_i} - Φ_{t_{i+1}} = ∫ e^{λu} dr_u over each step: a Stieltjes midpoint sum on a fine
  // partition (exactly r_{t_i} - r_{t_{i+1}} when λ = 0).
  std::vector<double> dphi(S);
  constexpr int kParts = 2000;
  for (int i = 0; i < S; ++i) {
    const double t0 = grid.t[i], t1 = grid.t[i + 1];
    double prev = r_of(grid.alpha_bar[i]), sum = 0;
    for (int k = 1; k <= kParts; ++k) {
      double rk = k == kParts ? r_of(grid.alpha_bar[i + 1]) : r_of(grid.schedule->alpha_bar(t0 + (t1 - t0) * k / kParts));
      double u = unit_time(t0 + (t1 - t0) * (k - 0.5) / kParts);
      sum += (lambda == 0.0 ? 1.0 : std::exp(lambda * u)) * (prev - rk);
      prev = rk;
    }
    dphi[i] = sum;
  }
  for (int i = 0; i < S; ++i) {
    const double t = unit_time(grid.t[i]), s = unit_time(grid.t[i + 1]), h = t - s;
    const double alpha = std::sqrt(grid.alpha_bar[i]), alpha_next = std::sqrt(grid.alpha_bar[i + 1]);
    // A_t/A_s = e^{λh} α_s/α_t and 1/A_s = α_s e^{-λs}.
    const double ratio = std::exp(lambda * h) * alpha_next / alpha;
    const double eps_coef = dphi[i] * alpha_next * std::exp(-lambda * s);
    auto eps = eval_eps(model, x, grid.t[i]);
    x = ((1 - lambda * h) * ratio) * x - eps_coef * eps;
    if (callback) callback({i, S, grid.t[i], x});
  }
  return x;
}

}  // namespace s2dm::sample
