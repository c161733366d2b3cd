#include "s2dm/diffusion/noise_schedule.h"

#include <torch/torch.h>

#include <cmath>

#include "s2dm/core/errors.h"

namespace s2dm {

NoiseSchedule::NoiseSchedule(std::vector<double> betas) : betas_(std::move(betas)) {
  alphas_cumprod_.resize(betas_.size());
  double prod = 1.0;
  for (size_t i = 0; i < betas_.size(); ++i) alphas_cumprod_[i] = prod *= 1.0 - betas_[i];
}

NoiseSchedule::NoiseSchedule(const DiffusionConfig& c)
    : NoiseSchedule(c.beta_schedule == "cosine"
                        ? cosine(c.num_timesteps)
                        : linear(c.num_timesteps, c.beta_start, c.beta_end)) {}

NoiseSchedule NoiseSchedule::linear(int T, double beta_start, double beta_end) {
  std::vector<double> betas(T);
  // As numpy.linspace(beta_start, beta_end, T, dtype=float64).
  const double step = T > 1 ? (beta_end - beta_start) / (T - 1) : 0.0;
  for (int i = 0; i < T; ++i) betas[i] = i * step + beta_start;
  if (T > 1) betas[T - 1] = beta_end;
  return NoiseSchedule(std::move(betas));
}

NoiseSchedule NoiseSchedule::from_alphas_cumprod(std::vector<double> alphas_cumprod) {
  std::vector<double> betas(alphas_cumprod.size());
  for (size_t i = 0; i < betas.size(); ++i) {
    const double previous = i == 0 ? 1.0 : alphas_cumprod[i - 1];
    if (!(alphas_cumprod[i] > 0 && alphas_cumprod[i] <= previous))
      throw ConfigError("a noise schedule's alpha_bar must decrease within (0, 1] (index " + std::to_string(i) + ")");
    betas[i] = 1 - alphas_cumprod[i] / previous;
  }
  NoiseSchedule schedule(std::move(betas));
  schedule.alphas_cumprod_ = std::move(alphas_cumprod);  // (exact, not the product's rounding)
  return schedule;
}

NoiseSchedule NoiseSchedule::cosine(int T) {
  const double s = 0.008;
  auto f = [&](double t) {
    double c = std::cos((t / T + s) / (1 + s) * M_PI / 2);
    return c * c;
  };
  std::vector<double> betas(T);
  for (int i = 0; i < T; ++i) betas[i] = std::min(1.0 - f(i + 1) / f(i), 0.999);
  return NoiseSchedule(std::move(betas));
}

double NoiseSchedule::alpha_bar(double t) const {
  const int T = num_timesteps();
  if (!(t >= -1.0 && t <= T - 1))
    throw ConfigError("timestep " + std::to_string(t) + " is outside [-1, " + std::to_string(T - 1) + "]");
  auto log_ab = [&](int i) { return i < 0 ? 0.0 : std::log(alphas_cumprod_[i]); };
  int lo = static_cast<int>(std::floor(t));
  double frac = t - lo;
  if (frac == 0.0) return lo < 0 ? 1.0 : alphas_cumprod_[lo];
  return std::exp((1 - frac) * log_ab(lo) + frac * log_ab(lo + 1));
}

torch::Tensor NoiseSchedule::alphas_cumprod_tensor(const torch::Device& device) const {
  return torch::tensor(alphas_cumprod_, torch::kFloat64).to(device);
}

}  // namespace s2dm
