// EDM's samplers (Karras et al. 2022, Algorithm 2 / `edm_sampler`): Euler and Heun's second-order
// method on the probability-flow ODE in the variables of a variance-exploding process,
// x̃ = x/√ᾱ and σ = √((1-ᾱ)/ᾱ), where dx̃/dσ = ε̂ (the denoiser's (x̃ - D(x̃; σ))/σ), with EDM's
// optional stochastic churn. Any VP model is one such process, so both run on every model.
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <optional>

#include "s2dm/sample/samplers.h"

namespace s2dm::sample {
namespace {

double sigma_of(double alpha_bar) { return std::sqrt((1 - alpha_bar) / alpha_bar); }
double alpha_bar_of(double sigma) { return 1 / (1 + sigma * sigma); }

torch::Tensor edm_steps(const EpsModel& model, torch::Tensor x, const Grid& grid, const SamplerOptions& options,
                        const Callback& callback, bool heun) {
  const int S = grid.steps();
  // Churn (Algorithm 2, lines 4-6): γ = min(S_churn / S, √2 - 1) at levels in [S_min, S_max];
  // σ̂ = (1 + γ) σ, kept within the schedule (σ at its last time), where the model is defined.
  const double gamma = std::min(options.s_churn / S, std::sqrt(2.0) - 1);
  std::optional<ImageNoise> noise;
  double sigma_top = 0;
  if (gamma > 0) {
    noise.emplace(options, x);
    sigma_top = sigma_of(grid.schedule->alpha_bar(grid.schedule->num_timesteps() - 1));
  }
  for (int i = 0; i < S; ++i) {
    double a = grid.alpha_bar[i], t = grid.t[i], sigma = sigma_of(a);
    const double a_next = grid.alpha_bar[i + 1];
    auto x_tilde = x / std::sqrt(a);
    if (noise) {
      const auto z = (*noise)();  // (drawn at every step, as edm_sampler does)
      if (sigma >= options.s_min && sigma <= options.s_max) {
        const double sigma_hat = std::max(sigma, std::min((1 + gamma) * sigma, sigma_top));
        x_tilde = x_tilde + std::sqrt(sigma_hat * sigma_hat - sigma * sigma) * options.s_noise * z;
        if (sigma_hat != sigma) {
          sigma = sigma_hat;
          a = alpha_bar_of(sigma_hat);
          t = time_of_alpha_bar(*grid.schedule, a);
        }
      }
    }
    const double h = sigma_of(a_next) - sigma;
    const auto d = eval_eps(model, std::sqrt(a) * x_tilde, t);
    auto x_tilde_next = x_tilde + h * d;
    // As edm_sampler: the last step, to the end point, stays an Euler step (NFE = 2S - 1).
    if (heun && i + 1 < S) {
      const auto d_next = eval_eps(model, std::sqrt(a_next) * x_tilde_next, grid.t[i + 1]);
      x_tilde_next = x_tilde + h * (0.5 * d + 0.5 * d_next);
    }
    x = std::sqrt(a_next) * x_tilde_next;
    if (callback) callback({i, S, grid.t[i], x});
  }
  return x;
}

}  // namespace

torch::Tensor sample_euler(const EpsModel& model, torch::Tensor x, const Grid& grid, const SamplerOptions& options,
                           const Callback& callback) {
  return edm_steps(model, std::move(x), grid, options, callback, false);
}

torch::Tensor sample_heun(const EpsModel& model, torch::Tensor x, const Grid& grid, const SamplerOptions& options,
                          const Callback& callback) {
  return edm_steps(model, std::move(x), grid, options, callback, true);
}

}  // namespace s2dm::sample
