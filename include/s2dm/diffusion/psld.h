#pragma once
// Phase-space Langevin diffusion (PSLD; Pandey & Mandt 2023): each image x gets a momentum m of
// its shape, and z = [x, m] (2C channels) diffuses by the linear SDE, on t ∈ [0, 1],
//   dz = (β(t)/2) F z dt + √β(t) G dw,   F = [[-Γ, M⁻¹], [-1, -ν]],   G G = diag(Γ, Mν),
// β linear from β_min to β_max, critically damped: M⁻¹ = (Γ - ν)²/4. Every 2×2 matrix here acts
// on each (x, m) pixel pair alike. Because F is constant, the kernel of z_t given z_0 is Gaussian
// in closed form in B(t) = ∫₀ᵗ β; its stationary law, the prior, is N(0, diag(1, M)). Training
// (hybrid score matching) perturbs (x_0, m_0 ~ N(0, κM)) with the kernel's Cholesky factor L_t
// and regresses the network on the standard-normal ε; the score is then -L_t⁻ᵀ ε.
// docs/algorithms.md §8 derives the closed forms; they equal the released PSLD code's
// (main/models/sde/psld.py), coefficients in float64.
#include <torch/types.h>

#include "s2dm/core/config.h"
#include "s2dm/diffusion/losses.h"
#include "s2dm/model/eps_model.h"

namespace s2dm {

// A 2×2 matrix [[xx, xm], [mx, mm]] on a pixel's (x, m) pair.
struct Mat2 {
  double xx = 1, xm = 0, mx = 0, mm = 1;

  Mat2 operator*(const Mat2& b) const {
    return {xx * b.xx + xm * b.mx, xx * b.xm + xm * b.mm, mx * b.xx + mm * b.mx, mx * b.xm + mm * b.mm};
  }
  Mat2 operator*(double s) const { return {xx * s, xm * s, mx * s, mm * s}; }
  Mat2 operator+(const Mat2& b) const { return {xx + b.xx, xm + b.xm, mx + b.mx, mm + b.mm}; }
  Mat2 operator-(const Mat2& b) const { return {xx - b.xx, xm - b.xm, mx - b.mx, mm - b.mm}; }
  Mat2 transposed() const { return {xx, mx, xm, mm}; }
  double det() const { return xx * mm - xm * mx; }
  Mat2 inverse() const;  // throws std::domain_error when singular
};

// The matrix exponential e^a.
Mat2 expm(const Mat2& a);

// z = [x, m] → [a.xx x + a.xm m, a.mx x + a.mm m], on the channel halves of z (any batch shape with
// the channels at dimension 1), in z's type.
torch::Tensor apply(const Mat2& a, const torch::Tensor& z);

class PsldProcess {
 public:
  // The settings of diffusion.psld (core/config.h; the released code's names). Throws
  // std::invalid_argument naming the setting that is out of range: Γ, ν > 0 (Γ = 0 is CLD, whose
  // network predicts ε_m alone), Γ ≠ ν (M⁻¹ > 0), m_inv 0 or critically damped, 0 < β_min ≤ β_max,
  // κ > 0 and numerical_eps in [0, 10⁻³).
  explicit PsldProcess(const PsldConfig& settings = {});

  const PsldConfig& settings() const { return s_; }
  double mass_inverse() const { return m_inv_; }  // M⁻¹ = (Γ - ν)²/4
  double mass() const { return 1 / m_inv_; }      // M, the prior's momentum variance
  double beta(double t) const;                    // β(t)
  double beta_integral(double t) const;           // B(t) = ∫₀ᵗ β

  // E[z_t | z_0] = mean_map(t) z_0.
  Mat2 mean_map(double t) const;
  // The same after the process has run for B(t) = b (mean_map(t) = mean_map_over(B(t))), and the
  // covariance below.
  Mat2 mean_map_over(double b) const;
  Mat2 covariance_over(double b, double var_x0, double var_m0) const;
  // Cov[z_t | z_0 ~ N(z_0, diag(var_x0, var_m0))], numerical_eps on the diagonal (symmetric: mx = xm).
  Mat2 covariance(double t, double var_x0, double var_m0) const;
  // Hybrid score matching's kernel, p(z_t | x_0): covariance(t, 0, κM). Training perturbs with it
  // and sampling turns ε into the score with it.
  Mat2 hsm_covariance(double t) const;
  // Its lower Cholesky factor L_t: z_t = mean_map(t) [x_0, 0] + L_t ε.
  Mat2 noise_map(double t) const;
  // -L_t⁻ᵀ: the score of the HSM kernel is score_map(t) ε.
  Mat2 score_map(double t) const;

  // The same for a batch of times t [B] (float64, on any device; no host sync): z_t of images x_0
  // [B, C, ...] with m_0 = 0 and the noise ε [B, 2C, ...], in x_0's type.
  torch::Tensor perturb(const torch::Tensor& x0, const torch::Tensor& t, const torch::Tensor& eps) const;
  // A draw of the prior N(0, diag(1, M)) from a standard-normal z [B, 2C, ...].
  torch::Tensor prior(const torch::Tensor& standard_normal) const;
  // The score -L_t⁻ᵀ ε̂ at one time.
  torch::Tensor score(const torch::Tensor& eps, double t) const;

 private:
  PsldConfig s_;
  double m_inv_;
};

// Hybrid score matching (loss.type hsm; the released code's PSLDScoreLoss in its hsm mode):
// t ~ U[t_min, 1], ε ~ N(0, I) over both halves, z_t = perturb(x_0, t, ε), and the mean over every
// element of (ε - ε̂(z_t, t))². The network takes z_t and the continuous time t [B].
class HsmLoss {
 public:
  HsmLoss(PsldProcess process, double t_min = 1e-5);
  // The times of a batch, [B] float64, from the default generator of `device`.
  torch::Tensor draw_times(int64_t batch, const torch::Device& device) const;
  // The loss of images x_0 at times t with the noise ε [B, 2C, ...].
  diffusion::LossTerms terms(const EpsModel& network, const torch::Tensor& x0, const torch::Tensor& t,
                             const torch::Tensor& eps) const;
  // Draws t, then ε, for the whole batch and computes the loss on `rows`.
  diffusion::LossTerms operator()(const EpsModel& network, const torch::Tensor& x0, diffusion::Rows rows = {}) const;
  const PsldProcess& process() const { return process_; }

 private:
  PsldProcess process_;
  double t_min_;
};

}  // namespace s2dm
