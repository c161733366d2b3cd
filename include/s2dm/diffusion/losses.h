#pragma once
// Training losses: L_simple of DDPM and the skip-step loss L_skip of S²-DMs (docs/algorithms.md §2),
// as the authors' released code computes it; EDM's losses for its networks (DenoiserLoss).
#include <torch/types.h>

#include <string>
#include <vector>

#include "s2dm/core/config.h"
#include "s2dm/model/eps_model.h"
#include "s2dm/diffusion/noise_schedule.h"
#include "s2dm/diffusion/precond.h"

namespace s2dm::diffusion {

// Timesteps for a batch, integers in {0..T-1}. Antithetic: t' ~ U for the first half and
// T-1-t' for the second, which lowers the variance of the loss estimate.
torch::Tensor sample_timesteps(int64_t batch, int num_timesteps, bool antithetic,
                               const torch::Device& device);

// Mean over all but the batch dimension of (a - b)², one value per sample.
torch::Tensor per_sample_mse(const torch::Tensor& a, const torch::Tensor& b);

// What a loss reports for the log besides the objective: a term of metrics.jsonl (`name`), on the
// model's device (reading it waits for the device, so the training loop sums terms there and reads
// the sums only when it logs). Either a batch mean (`count` undefined: the log line reports its
// mean over the interval's micro-batches, steps and ranks), or a sum over the samples it applies
// to, with their number (the log line reports sum / count over the interval and the ranks, 0
// when none applied).
struct LoggedTerm {
  std::string name;
  torch::Tensor value;  // detached
  torch::Tensor count;  // int64, or undefined for a batch mean
};

struct LossTerms {
  torch::Tensor loss;              // the objective (differentiable; logged as "loss")
  std::vector<LoggedTerm> logged;  // the loss's own terms, in the log line's order
  // The term called `name`; throws std::out_of_range.
  const LoggedTerm& term(const std::string& name) const;
};

// What a loss computes from: this rank's rows of a micro-batch.
struct LossBatch {
  torch::Tensor x0;          // clean images
  torch::Tensor t;           // their timesteps (int64), drawn by DiffusionLoss::draw_timesteps
  torch::Tensor eps1, eps2;  // the noises drawn (eps2 undefined unless the loss asks for it)
};

class DiffusionLoss;

// A loss by name (loss.type): what it computes from the batch and the network. Adding one = its
// function and a line in losses.cpp's registry; the config schema reads the names from it
// (core/registry.h).
struct LossInfo {
  std::string name, description;
  bool second_noise;  // draws ε₂ besides ε₁ (L_skip's target)
  LossTerms (*compute)(const DiffusionLoss& loss, const LossBatch& batch, const EpsModel& network);
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
  // `antithetic`: train.antithetic, how draw_timesteps draws.
  DiffusionLoss(const LossConfig& config, const NoiseSchedule& schedule, const torch::Device& device,
                bool antithetic = true);

  // The noise levels of a batch: its timesteps (sample_timesteps).
  torch::Tensor draw_timesteps(int64_t batch) const;
  // Draws ε₁ (and ε₂ for L_skip) for the whole batch, and lets the loss compute its terms on
  // `rows` (the network evaluated once).
  LossTerms operator()(const EpsModel& model, const torch::Tensor& x0, const torch::Tensor& t, Rows rows = {}) const;
  // ε̂ of `network` on the batch's x_t = noised(x0, t, ε₁), in float32.
  torch::Tensor predict(const EpsModel& network, const LossBatch& batch) const;

  // x_t = √ᾱ_t x0 + √(1-ᾱ_t) ε.
  torch::Tensor noised(const torch::Tensor& x0, const torch::Tensor& t, const torch::Tensor& eps) const;

  // The loss given the noises and the prediction ε̂ (the network's output, as if it had been
  // called): ℓ = ℓ_simple for L_simple or t < k, else τ ℓ_simple + (1-τ) ℓ_skip with
  // ℓ_skip = mean (ε₂ - c(t) ε̂)², c(t) = √((1-α_skip)/α_skip), α_skip = ᾱ_t / ᾱ_{t-k}. No stop-gradient.
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
  int num_timesteps_;
  bool antithetic_;
  torch::Device device_;
  torch::Tensor sqrt_ab_, sqrt_1m_ab_, skip_coef_, skip_coef64_;
};

// The loss of EDM's networks (loss.type edm): NVlabs/edm's VPLoss, VELoss or EDMLoss, as its
// train.py pairs them with the preconditioning: E λ(σ) ‖D(y + σn; σ) - y‖², n ~ N(0, I), σ from
// the loss's own distribution (docs/algorithms.md §1):
//   vp:  σ = σ(t), t ~ U(ε_t, 1)          λ = 1/σ²
//   ve:  ln σ ~ U(ln σ_min, ln σ_max)    λ = 1/σ²
//   edm: ln σ ~ N(P_mean, P_std²)         λ = (σ² + σ_data²)/(σ σ_data)²
// λ c_out² = 1 for each: a unit-weight regression of the network's output on its own target.
// A mean over pixels and images, where EDM sums the pixels: a constant factor, which Adam's
// update does not see (but for its ε and gradient clipping).
class DenoiserLoss {
 public:
  // Throws std::invalid_argument for iDDPM's preconditioning, for which EDM defines no loss.
  DenoiserLoss(Preconditioning precond, const LossConfig& config);
  // The levels of a batch, [B] float32, from the default generator of `device`: one uniform or
  // normal draw per image, as EDM draws them.
  torch::Tensor draw_sigmas(int64_t batch, const torch::Device& device) const;
  torch::Tensor weights(const torch::Tensor& sigma) const;  // λ(σ)
  // The loss of images y at levels `sigma` [B] with the standard-normal noise n.
  LossTerms terms(const Preconditioning::Network& network, const torch::Tensor& y, const torch::Tensor& sigma,
                  const torch::Tensor& n) const;
  // Draws σ, then n, for the whole batch (EDM's order) and computes the loss on `rows`.
  LossTerms operator()(const Preconditioning::Network& network, const torch::Tensor& y, Rows rows = {}) const;

 private:
  Preconditioning precond_;
  double p_mean_, p_std_;
};

}  // namespace s2dm::diffusion
