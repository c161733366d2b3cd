#pragma once
// ε-models whose answers are known in closed form (docs/algorithms.md §7), for sampler tests.
#include <torch/torch.h>

#include <cmath>
#include <vector>

#include "s2dm/diffusion/diffusion_model.h"
#include "s2dm/diffusion/noise_schedule.h"
#include "s2dm/model/eps_model.h"

namespace s2dm::testing {

// The linear β schedule of the papers (T = 1000), shared by the tests.
inline const NoiseSchedule& linear_schedule() {
  static const NoiseSchedule s = NoiseSchedule::linear(1000);
  return s;
}

// `eps` on the CPU as a diffusion model of the linear schedule, for images of `image_shape`.
inline DiffusionModel linear_model(EpsModel eps, std::vector<int64_t> image_shape = {1, 1, 1}, ModelGrids grids = {}) {
  return {{std::move(eps), {}}, linear_schedule(), std::move(image_shape), torch::kCPU, std::move(grids)};
}

// x₀ ~ Σ_k w_k N(μ_k, s_k² I): ε*(x, t) = √(1-a) Σ_k r_k(x) (x - √a μ_k)/(a s_k² + 1 - a), with
// r_k the responsibilities under the noised components N(√a μ_k, (a s_k² + 1 - a) I).
struct GaussianMixture {
  std::vector<double> weights, means, stds;
  const NoiseSchedule* schedule;

  torch::Tensor eps(const torch::Tensor& x, double a) const {
    const double d = static_cast<double>(x[0].numel());
    std::vector<torch::Tensor> log_r, terms;
    for (size_t k = 0; k < weights.size(); ++k) {
      const double var = a * stds[k] * stds[k] + 1 - a;
      auto diff = x - std::sqrt(a) * means[k];
      log_r.push_back(std::log(weights[k]) - 0.5 * d * std::log(var) -
                      diff.square().flatten(1).sum(1) / (2 * var));
      terms.push_back(diff / var);
    }
    auto r = torch::softmax(torch::stack(log_r, 1), 1);  // [B, K]
    auto out = torch::zeros_like(x);
    for (size_t k = 0; k < weights.size(); ++k)
      out = out + r.select(1, static_cast<int64_t>(k)).view({-1, 1, 1, 1}) * terms[k];
    return std::sqrt(1 - a) * out;
  }
  EpsModel model() const {
    return [m = *this](const torch::Tensor& x, const torch::Tensor& t) { return m.eps(x, m.schedule->alpha_bar(t[0].item<double>())); };
  }
};

// One Gaussian, with the exact end point of the probability-flow ODE.
struct Gaussian {
  double mu, s;
  const NoiseSchedule* schedule;
  EpsModel model() const { return GaussianMixture{{1.0}, {mu}, {s}, schedule}.model(); }
  // Where the ODE from ᾱ = a_T maps x_T at ᾱ = 1: μ + s (x_T - √a_T μ)/√(a_T s² + 1 - a_T).
  torch::Tensor endpoint(const torch::Tensor& xT, double aT) const {
    return mu + s * (xT - std::sqrt(aT) * mu) / std::sqrt(aT * s * s + 1 - aT);
  }
  // The ODE's solution at ᾱ = a from x_T at ᾱ = a_T: with v = x/√ᾱ and ρ² = (1-ᾱ)/ᾱ,
  // v - μ scales as √(s² + ρ²).
  torch::Tensor solution(const torch::Tensor& xT, double aT, double a) const {
    const double rho2_T = (1 - aT) / aT, rho2 = (1 - a) / a;
    return std::sqrt(a) * (mu + (xT / std::sqrt(aT) - mu) * std::sqrt((s * s + rho2) / (s * s + rho2_T)));
  }
};

}  // namespace s2dm::testing
