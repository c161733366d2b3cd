#pragma once
// Samplers. Each is one function with the same signature (as k-diffusion's sample_*):
// it integrates from x at grid.t[0] down the grid and returns the final sample. They see the
// network only as an EpsModel; a registry maps names to them.
#include <torch/types.h>

#include <functional>
#include <string>
#include <vector>

#include "s2dm/eps_model.h"
#include "s2dm/timesteps.h"

namespace s2dm::sample {

struct SamplerOptions {
  double eta = 0.0;            // DDIM stochasticity (0 deterministic, 1 = DDPM ancestral)
  bool clip_denoised = false;  // clip x̂₀ to [-1, 1]
  uint64_t noise_seed = 0;     // for the per-step noise of stochastic samplers
};

struct StepInfo {
  int index;                  // 0-based step
  int total;
  double t;                   // the time just left
  const torch::Tensor& x;     // the state after the step
  const torch::Tensor& x0;    // the model's estimate of the clean sample at t
};
using Callback = std::function<void(const StepInfo&)>;

using SamplerFn = std::function<torch::Tensor(const EpsModel& model, torch::Tensor x, const Grid& grid,
                                              const SamplerOptions& options, const Callback& callback)>;

// x̂₀ = (x - √(1-ᾱ) ε) / √ᾱ
torch::Tensor predict_x0(const torch::Tensor& x, const torch::Tensor& eps, double alpha_bar);

// DDIM (Song et al. 2021), generalised with η: x' = √a' x̂₀ + √(1-a'-σ²) ε + σ z,
// σ = η √((1-a')/(1-a)) √(1 - a/a').
torch::Tensor sample_ddim(const EpsModel& model, torch::Tensor x, const Grid& grid,
                          const SamplerOptions& options, const Callback& callback = {});

struct SamplerInfo {
  std::string name, description;
  SamplerFn fn;
  std::function<int(int steps)> nfe;  // network evaluations for S steps
  bool stochastic;
};
const std::vector<SamplerInfo>& samplers();
// Throws ConfigError (with a "did you mean") for an unknown name.
const SamplerInfo& find_sampler(const std::string& name);

// Runs a sampler and counts the network evaluations it spent.
struct SampleRun {
  torch::Tensor x;
  int64_t nfe = 0;
};
SampleRun run_sampler(const SamplerInfo& sampler, const EpsModel& model, torch::Tensor x, const Grid& grid,
                      const SamplerOptions& options, const Callback& callback = {});

}  // namespace s2dm::sample
