#pragma once
// EDM's preconditionings (Karras et al. 2022, Table 1; NVlabs/edm's VPPrecond, VEPrecond,
// iDDPMPrecond and EDMPrecond): the denoiser of a network F,
//   D(x; σ) = c_skip(σ) x + c_out(σ) F(c_in(σ) x; c_noise(σ)),
// x in the variance-exploding variables (x = y + σ n), with the σ range each one supports.
// Computed in the inputs' type (EDM computes in float32) and the σ ranges and iDDPM's level table
// in float64 (EDM's VP σ_min, 9.77e-4, is σ(1e-5) rounded in float32, the exact value 1.0005e-3;
// its float32 iDDPM table is exact to ~1e-3 at the smallest levels).
#include <torch/types.h>

#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "s2dm/core/config.h"
#include "s2dm/diffusion/noise_schedule.h"
#include "s2dm/model/eps_model.h"

namespace s2dm {

class Preconditioning {
 public:
  // The network: F(c_in x, c_noise), c_noise of shape [B].
  using Network = std::function<torch::Tensor(const torch::Tensor& input, const torch::Tensor& c_noise)>;
  struct Coefficients {
    torch::Tensor skip, out, in, noise;  // [B, 1, 1, 1] each, noise [B]
  };

  // EDM's defaults for each; the names are those of EDM's classes' arguments.
  static Preconditioning vp(double beta_d = 19.9, double beta_min = 0.1, int M = 1000, double epsilon_t = 1e-5);
  static Preconditioning ve(double sigma_min = 0.02, double sigma_max = 100);
  static Preconditioning iddpm(double C_1 = 0.001, double C_2 = 0.008, int M = 1000);
  static Preconditioning edm(double sigma_data = 0.5, double sigma_min = 0,
                             double sigma_max = std::numeric_limits<double>::infinity());

  // The preconditioning a model config names (model.edm.precond), with EDM's settings.
  static Preconditioning of(const EdmModelConfig& config);

  const std::string& kind() const { return kind_; }  // vp | ve | iddpm | edm
  double sigma_min() const { return sigma_min_; }
  double sigma_max() const { return sigma_max_; }
  double sigma_data() const { return sigma_data_; }  // (edm)
  double epsilon_t() const { return epsilon_t_; }    // (vp)
  // Channels of F's output per image channel (iDDPM's network also predicts variances: 2).
  int output_factor() const { return kind_ == "iddpm" ? 2 : 1; }

  // σ(t) = √(exp(β_d t²/2 + β_min t) - 1) of the VP-SDE (vp only), in t's type.
  torch::Tensor vp_sigma(const torch::Tensor& t) const;
  // σ as the network can take it: iDDPM's nearest level u_j, the others' σ unchanged.
  torch::Tensor round_sigma(const torch::Tensor& sigma) const;
  Coefficients coefficients(const torch::Tensor& sigma) const;  // sigma: [B]
  // D(x; σ) for a batch x [B, C, H, W] and its levels sigma [B].
  torch::Tensor denoise(const Network& network, const torch::Tensor& x, const torch::Tensor& sigma) const;
  // The model's noise process in s2dm's variance-preserving view, x = x̃/√(1 + σ²), ᾱ = 1/(1 + σ²):
  // T times spanning the σ levels it samples, ascending in t. vp: its σ(τ) at τ = ε_t + (1 - ε_t)
  // t/(T - 1) (T = M, the DDPM formulation it comes from); iddpm: its levels u_{M-1} ... u_0; ve,
  // edm: log-uniform between max(σ_min, 0.002) and min(σ_max, 80), edm_sampler's range, T = 1000.
  // Every time grid, sampler and grid search reads the model through this schedule.
  NoiseSchedule schedule() const;
  // The ε-model the samplers see: ε̂(x, t) = (x̃ - D(x̃; σ))/σ with x̃ = x/√ᾱ(t) and
  // σ = √((1 - ᾱ(t))/ᾱ(t)), ᾱ from `schedule` (this preconditioning's schedule()).
  EpsModel eps_model(Network network, NoiseSchedule schedule) const;
  // iDDPM's levels u_0 > ... > u_M = 0 (empty for the others).
  const std::vector<double>& iddpm_levels() const { return u_; }

 private:
  std::string kind_;
  double sigma_min_ = 0, sigma_max_ = 0, sigma_data_ = 0.5;
  double beta_d_ = 0, beta_min_ = 0, epsilon_t_ = 0;  // vp
  int M_ = 1000;                      // vp, iddpm
  std::vector<double> u_;             // iddpm
};

// A model's noise process: the DDPM schedule of config.diffusion for model.type ddpm, the
// preconditioning's (Preconditioning::schedule) for EDM's networks.
NoiseSchedule noise_schedule_of(const Config& config);

}  // namespace s2dm
