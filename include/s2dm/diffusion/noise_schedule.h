#pragma once
// The variance-preserving noise schedule: β_t and ᾱ_t = ∏_{s≤t}(1-β_s), 0-indexed, in float64.
#include <torch/types.h>

#include <vector>

#include "s2dm/core/config.h"

namespace s2dm {

class NoiseSchedule {
 public:
  explicit NoiseSchedule(const DiffusionConfig& config);
  // Linear β from `beta_start` to `beta_end` over `num_timesteps` steps.
  static NoiseSchedule linear(int num_timesteps, double beta_start = 1e-4, double beta_end = 0.02);
  // Nichol & Dhariwal's cosine schedule (s = 0.008, β clipped at 0.999).
  static NoiseSchedule cosine(int num_timesteps);
  // A schedule given by its ᾱ table (decreasing, in (0, 1]), as a preconditioned model's σ levels.
  static NoiseSchedule from_alphas_cumprod(std::vector<double> alphas_cumprod);

  int num_timesteps() const { return static_cast<int>(betas_.size()); }
  const std::vector<double>& betas() const { return betas_; }
  const std::vector<double>& alphas_cumprod() const { return alphas_cumprod_; }
  // ᾱ at a real-valued time t ∈ [-1, T-1]: log ᾱ interpolated linearly between integer
  // indices, with ᾱ(-1) = 1 (the clean data). Integer t gives the table value exactly.
  double alpha_bar(double t) const;
  // The table as a float64 tensor on `device`.
  torch::Tensor alphas_cumprod_tensor(const torch::Device& device = torch::kCPU) const;

 private:
  explicit NoiseSchedule(std::vector<double> betas);
  std::vector<double> betas_, alphas_cumprod_;
};

}  // namespace s2dm
