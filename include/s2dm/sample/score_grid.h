#pragma once
// Score-optimal time grids (Williams et al. 2024, docs/algorithms.md §5): the cost of moving samples
// from one noise level to the next is the work a Langevin corrector must do,
//   L_i = E ‖ε_θ((α_i/α_{i+1}) x, t_i) - (σ̃_i/σ̃_{i+1}) ε_θ(x, t_{i+1})‖²,  x = α_{i+1} x₀ + σ_{i+1} ε,
// estimated on a fine grid of levels with common random numbers (the same x₀ and ε for every
// level); Λ(t_i) = Σ_{j<i} √L_j is inverted with a monotone cubic so that every step costs the same.
#include <torch/types.h>

#include <string>
#include <vector>

#include "s2dm/diffusion/diffusion_model.h"

namespace s2dm::sample {

// Fritsch–Carlson monotone piecewise-cubic (PCHIP) interpolation: monotone data give a monotone
// interpolant, without overshoot. x strictly increasing.
class Pchip {
 public:
  Pchip(std::vector<double> x, std::vector<double> y);
  double operator()(double u) const;

 private:
  std::vector<double> x_, y_, d_;
};

struct ScoreGridCost {
  std::vector<double> levels;  // increasing times t_0 = 0 < ... < t_{n-1} = T-1
  std::vector<double> cost;    // L_i between levels i and i+1 (n-1 values)
  int64_t nfe = 0;             // network evaluations spent
};

// Estimates the cost of `model` on `num_levels` levels spread uniformly over [0, T-1], averaging
// over the data x0 ([N, C, H, W] in [-1, 1]) with one noise draw per image, in batches of `batch`.
// A class-conditional model sees each image's class, `classes` (int64 [N]; else undefined).
ScoreGridCost estimate_score_cost(const DiffusionModel& model, const torch::Tensor& x0, const torch::Tensor& classes,
                                  int num_levels, uint64_t seed, int64_t batch, bool show_progress = true);

// Their Algorithm 1: `intervals`+1 decreasing times from T-1 to 0 with equal Λ between neighbours.
// Throws ConfigError when `intervals` is not in [1, levels - 1]. Multiplying the cost by a
// constant changes nothing.
std::vector<double> optimal_timesteps(const std::vector<double>& levels, const std::vector<double>& cost, int intervals);

// The score-optimal grid of S network evaluations, on the footing of every other grid: S times
// from T-1 down to t = 0 (S-1 intervals of equal cost), after which the sampler takes its end
// step (to ᾱ = 1) as it does for uniform, quad or log-SNR grids. S = 1 is {T-1}.
std::vector<double> score_grid(const std::vector<double>& levels, const std::vector<double>& cost, int steps);

// Their Algorithm 2, during training: cost estimates for random level pairs accumulate per pair;
// once every pair has `min_estimates` estimates since the last update, the grid for `steps`
// moves towards the optimum of their mean, t ← γ t* + (1-γ) t (the first time it jumps there),
// and the counts start again, so that each update sees the model as it is now, not costs from
// early training.
class OnlineGridEstimator {
 public:
  OnlineGridEstimator(const NoiseSchedule& schedule, int num_levels, int steps, int min_estimates, double gamma);
  // Estimates the cost of `pairs` level pairs drawn from `generator` on the batch x0 (no grad;
  // the noise comes from `generator` too). Returns true when the grid moved.
  bool update(const EpsModel& model, const torch::Tensor& x0, int pairs, at::Generator& generator);
  bool ready() const;  // every pair has `min_estimates` new estimates
  bool has_grid() const { return !timesteps_.empty(); }
  const std::vector<double>& cost() const { return cost_; }  // the mean cost of the last update
  const std::vector<double>& levels() const { return levels_; }
  const std::vector<double>& timesteps() const { return timesteps_; }  // empty until ready
  int steps() const { return steps_; }
  int64_t nfe() const { return nfe_; }
  // For checkpoints: "levels", "sum", "count" (since the last update), "cost", "timesteps",
  // "steps", "nfe" as tensors.
  std::vector<std::pair<std::string, torch::Tensor>> state() const;
  void load_state(const std::vector<std::pair<std::string, torch::Tensor>>& state);

 private:
  const NoiseSchedule& schedule_;
  std::vector<double> levels_, sum_;
  std::vector<int64_t> count_;
  std::vector<double> cost_, timesteps_;
  int steps_, min_estimates_;
  double gamma_;
  int64_t nfe_ = 0;
};

// The grid for S steps (score_grid's footing) from a checkpoint's schedule state: its smoothed
// timesteps when S is the estimator's S, else the optimum of its last mean cost. Throws
// ConfigError when it holds none yet.
std::vector<double> timesteps_from_state(const std::vector<std::pair<std::string, torch::Tensor>>& state, int steps);

}  // namespace s2dm::sample
