// EDM's deterministic samplers (Karras et al. 2022, Algorithm 1 / `edm_sampler` with S_churn = 0):
// Euler and Heun's second-order method on the probability-flow ODE in the variables of a
// variance-exploding process, x̃ = x/√ᾱ and σ = √((1-ᾱ)/ᾱ), where dx̃/dσ = ε̂ (the denoiser's
// (x̃ - D(x̃; σ))/σ). Any VP model is one such process, so both run on every model.
#include <torch/torch.h>

#include <cmath>

#include "s2dm/sample/samplers.h"

namespace s2dm::sample {
namespace {

double sigma_of(double alpha_bar) { return std::sqrt((1 - alpha_bar) / alpha_bar); }

torch::Tensor edm_steps(const EpsModel& model, torch::Tensor x, const Grid& grid, const Callback& callback, bool heun) {
  for (int i = 0; i < grid.steps(); ++i) {
    const double a = grid.alpha_bar[i], a_next = grid.alpha_bar[i + 1];
    const double h = sigma_of(a_next) - sigma_of(a);
    const auto x_tilde = x / std::sqrt(a);
    const auto d = eval_eps(model, x, grid.t[i]);
    auto x_tilde_next = x_tilde + h * d;
    // As edm_sampler: the last step, to the end point, stays an Euler step (NFE = 2S - 1).
    if (heun && i + 1 < grid.steps()) {
      const auto d_next = eval_eps(model, std::sqrt(a_next) * x_tilde_next, grid.t[i + 1]);
      x_tilde_next = x_tilde + h * (0.5 * d + 0.5 * d_next);
    }
    x = std::sqrt(a_next) * x_tilde_next;
    if (callback) callback({i, grid.steps(), grid.t[i], x});
  }
  return x;
}

}  // namespace

torch::Tensor sample_euler(const EpsModel& model, torch::Tensor x, const Grid& grid, const SamplerOptions&,
                           const Callback& callback) {
  return edm_steps(model, std::move(x), grid, callback, false);
}

torch::Tensor sample_heun(const EpsModel& model, torch::Tensor x, const Grid& grid, const SamplerOptions&,
                          const Callback& callback) {
  return edm_steps(model, std::move(x), grid, callback, true);
}

}  // namespace s2dm::sample
