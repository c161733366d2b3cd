#pragma once
// Training losses: L_simple of DDPM and the skip-step loss L_skip of S²-DMs (docs/algorithms.md §2),
// as the authors' released code computes it.
#include <torch/types.h>

#include <string>
#include <vector>

#include "s2dm/core/config.h"
#include "s2dm/model/eps_model.h"
#include "s2dm/diffusion/noise_schedule.h"

namespace s2dm::diffusion {

// Timesteps for a batch, integers in {0..T-1}. Antithetic: t' ~ U for the first half and
// T-1-t' for the second, which lowers the variance of the loss estimate.
torch::Tensor sample_timesteps(int64_t batch, int num_timesteps, bool antithetic,
                               const torch::Device& device);

// Mean over all but the batch dimension of (a - b)², one value per sample.
torch::Tensor per_sample_mse(const torch::Tensor& a, const torch::Tensor& b);

// Scalars on the model's device: reading them (.item()) waits for the device, so the training
// loop sums them there and reads the sums only when it logs.
struct LossTerms {
  torch::Tensor loss;        // the objective (differentiable)
  torch::Tensor simple;      // batch mean of ℓ_simple (detached)
  torch::Tensor skip_sum;    // sum of ℓ_skip over the samples with t ≥ k (detached; 0 for L_simple)
  torch::Tensor skip_count;  // how many samples have t ≥ k (int64; 0 for L_simple)
};

class DiffusionLoss;

// A loss by name (loss.type): how the objective combines the prediction with the noises.
// Adding one = a combine function and a line in losses.cpp's registry; the config schema reads
// the names from it (core/registry.h).
struct LossInfo {
  std::string name, description;
  bool second_noise;  // draws ε₂ besides ε₁ (L_skip's target)
  LossTerms (*combine)(const DiffusionLoss& loss, const torch::Tensor& eps1, const torch::Tensor& eps2,
                       const torch::Tensor& eps_hat, const torch::Tensor& t);
};
const std::vector<LossInfo>& losses();
// Throws ConfigError (with a "did you mean") for an unknown name.
const LossInfo& find_loss(const std::string& name);

// The rows [begin, end) of a batch that one process of a data-parallel group evaluates: every
// rank draws the whole batch's noise, as one process would, and keeps its rows (end < 0: all).
struct Rows {
  int64_t begin = 0, end = -1;
};

class DiffusionLoss {
 public:
  DiffusionLoss(const LossConfig& config, const NoiseSchedule& schedule, const torch::Device& device);

  // Noises x0 at t with fresh ε₁ (and ε₂ for L_skip), evaluates the model once on `rows` and
  // combines.
  LossTerms operator()(const EpsModel& model, const torch::Tensor& x0, const torch::Tensor& t, Rows rows = {}) const;

  // x_t = √ᾱ_t x0 + √(1-ᾱ_t) ε.
  torch::Tensor noised(const torch::Tensor& x0, const torch::Tensor& t, const torch::Tensor& eps) const;

  // The loss given the noises and the prediction: ℓ = ℓ_simple for L_simple or t < k, else
  // τ ℓ_simple + (1-τ) ℓ_skip with ℓ_skip = mean (ε₂ - c(t) ε̂)², c(t) = √((1-α_skip)/α_skip),
  // α_skip = ᾱ_t / ᾱ_{t-k}. No stop-gradient.
  LossTerms combine(const torch::Tensor& eps1, const torch::Tensor& eps2, const torch::Tensor& eps_hat,
                    const torch::Tensor& t) const;

  // c(t) for every integer t (float64, CPU), 0 for t < k.
  const torch::Tensor& skip_coefficients() const { return skip_coef64_; }
  // c(t) for t, on t's device (float32).
  torch::Tensor skip_coefficient(const torch::Tensor& t) const;
  const LossConfig& config() const { return config_; }

 private:
  LossConfig config_;
  const LossInfo* info_;
  torch::Tensor sqrt_ab_, sqrt_1m_ab_, skip_coef_, skip_coef64_;
};

}  // namespace s2dm::diffusion
