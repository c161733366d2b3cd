#pragma once
// Samplers. Each is one function with the same signature (as k-diffusion's sample_*): it
// integrates x from grid.t[0] down the grid to grid.t[S] and returns the result. They see the
// network only as an EpsModel; a registry maps names to them. Algorithms: docs/algorithms.md §3.
#include <torch/types.h>

#include <functional>
#include <string>
#include <vector>

#include "s2dm/core/config.h"
#include "s2dm/model/eps_model.h"
#include "s2dm/sample/timesteps.h"

namespace s2dm::sample {

// The settings a sampler reads (core/config.h's SamplerSettings, the sample.* keys) and the noise
// stream of the batch it integrates.
struct SamplerOptions : SamplerSettings {
  uint64_t noise_seed = 0;  // stochastic samplers: image j of the batch draws its noise from a
  int64_t first_image = 0;  // generator of its own, seeded by (noise_seed, first_image + j)
};

struct StepInfo {
  int index;               // 0-based step
  int total;
  double t;                // the time just left
  const torch::Tensor& x;  // the state after the step
};
using Callback = std::function<void(const StepInfo&)>;

using SamplerFn = std::function<torch::Tensor(const EpsModel& model, torch::Tensor x, const Grid& grid,
                                              const SamplerOptions& options, const Callback& callback)>;

// ---- shared helpers ----
// The noise a stochastic sampler adds: image j of the batch draws from a generator of its own,
// seeded by (noise_seed, first_image + j), so that an image is the same whatever batch it is in.
class ImageNoise {
 public:
  ImageNoise(const SamplerOptions& options, const torch::Tensor& like);
  torch::Tensor operator()();  // standard normal, of `like`'s shape, type and device
 private:
  std::vector<at::Generator> generators_;
  torch::Tensor like_;
};

// ε̂ at time t for a batch.
torch::Tensor eval_eps(const EpsModel& model, const torch::Tensor& x, double t);
// x̂₀ = (x - √(1-ᾱ) ε) / √ᾱ
torch::Tensor predict_x0(const torch::Tensor& x, const torch::Tensor& eps, double alpha_bar);
// The deterministic DDIM/PNDM transfer φ(x, ε, a → a') in PNDM's numerically stable form:
// √(a'/a) x - (a' - a) / (√a (√((1-a')a) + √((1-a)a'))) ε.
torch::Tensor transfer(const torch::Tensor& x, const torch::Tensor& eps, double a, double a_next);

// A registry entry. Adding a sampler = its file (one function with SamplerFn's signature) and
// one line in samplers.cpp's registry; a new option also needs its SamplerSettings field
// (core/config.h) and its schema line (src/core/config_schema.h).
struct SamplerInfo {
  std::string name, description;
  std::vector<std::string> options;        // the sample.* keys it reads (the driver's unit key uses them)
  SamplerFn fn;
  std::function<int(int steps)> nfe;       // network evaluations for S steps
  bool stochastic;
  int min_order, max_order, default_order; // -1 each when it has no order
  // Deterministic samplers: the order of accuracy on the probability-flow ODE at a multistep
  // order (-1 for samplers without one); the convergence test checks every sampler against it.
  std::function<int(int order)> accuracy;
  // The time grid it samples on when the settings name none (sample.timesteps auto).
  std::string default_grid = "uniform";
  // The models it samples: "vp" (DDPM's and EDM's ε-models; SamplerFn's grid has ᾱ) or "psld"
  // (PSLD's, on z = [x, m]; the grid is a PSLD grid, timesteps.h).
  std::string process = "vp";
  // The values of sample.solver_type it takes besides auto (its default first).
  std::vector<std::string> solver_types = {};
};
const std::vector<SamplerInfo>& samplers();
// Whether sampling with these settings draws noise (DDPM; DDIM with η > 0; EDM's churn).
bool draws_noise(const SamplerInfo& sampler, const SamplerSettings& settings);
// Every key some sampler reads (the union of their `options`).
std::vector<std::string> sampler_option_keys();
// Throws ConfigError (with a "did you mean") for an unknown name.
const SamplerInfo& find_sampler(const std::string& name);
// The sampler of that name for a model of `process` (vp | psld): throws ConfigError naming the
// samplers of that process when the sampler is another's.
const SamplerInfo& find_sampler(const std::string& name, const std::string& process);
// The sampler options of the sample settings (noise_seed aside, which is per batch).
SamplerOptions sampler_options(const SampleConfig& config);
// Checks the options against the sampler (order range, ...); throws ConfigError.
void check_options(const SamplerInfo& sampler, const SamplerOptions& options);
// Network evaluations for S steps with these settings (the analytical first step saves one).
int network_evaluations(const SamplerInfo& sampler, const SamplerSettings& settings, int steps);

// Runs a sampler without gradients and counts the network evaluations it spent.
struct SampleRun {
  torch::Tensor x;
  int64_t nfe = 0;
};
SampleRun run_sampler(const SamplerInfo& sampler, const EpsModel& model, torch::Tensor x, const Grid& grid,
                      const SamplerOptions& options, const Callback& callback = {});

}  // namespace s2dm::sample
