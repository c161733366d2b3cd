#include "s2dm/diffusion/precond.h"

#include <torch/torch.h>

#include <cmath>

namespace s2dm {

Preconditioning Preconditioning::vp(double beta_d, double beta_min, int M, double epsilon_t) {
  Preconditioning p;
  p.kind_ = "vp";
  p.beta_d_ = beta_d;
  p.beta_min_ = beta_min;
  p.M_ = M;
  p.epsilon_t_ = epsilon_t;
  // σ(t) = √(exp(β_d t²/2 + β_min t) - 1) on [ε_t, 1] (VP-SDE's continuous DDPM schedule).
  auto sigma = [&](double t) { return std::sqrt(std::expm1(0.5 * beta_d * t * t + beta_min * t)); };
  p.sigma_min_ = sigma(epsilon_t);
  p.sigma_max_ = sigma(1);
  return p;
}

Preconditioning Preconditioning::ve(double sigma_min, double sigma_max) {
  Preconditioning p;
  p.kind_ = "ve";
  p.sigma_min_ = sigma_min;
  p.sigma_max_ = sigma_max;
  return p;
}

Preconditioning Preconditioning::iddpm(double C_1, double C_2, int M) {
  Preconditioning p;
  p.kind_ = "iddpm";
  p.M_ = M;
  // The cosine schedule's levels, from u_M = 0 up: u_{j-1} = √((u_j² + 1) / max(ᾱ_{j-1}/ᾱ_j, C_1) - 1).
  // (In float64: EDM computes them in float32, where the small levels come from differences of
  // numbers near 1, so its table is exact only to ~1e-3 there and differs between PyTorch builds.)
  auto alpha_bar = [&](int j) { return std::pow(std::sin(0.5 * M_PI * j / M / (C_2 + 1)), 2); };
  p.u_.assign(M + 1, 0.0);
  for (int j = M; j > 0; --j)
    p.u_[j - 1] = std::sqrt((p.u_[j] * p.u_[j] + 1) / std::max(alpha_bar(j - 1) / alpha_bar(j), C_1) - 1);
  p.sigma_min_ = p.u_[M - 1];
  p.sigma_max_ = p.u_[0];
  return p;
}

Preconditioning Preconditioning::edm(double sigma_data, double sigma_min, double sigma_max) {
  Preconditioning p;
  p.kind_ = "edm";
  p.sigma_data_ = sigma_data;
  p.sigma_min_ = sigma_min;
  p.sigma_max_ = sigma_max;
  return p;
}

Preconditioning Preconditioning::of(const EdmModelConfig& c) {
  if (c.precond == "vp") return vp();
  if (c.precond == "ve") return ve();
  if (c.precond == "iddpm") return iddpm();
  return edm(c.sigma_data);
}

NoiseSchedule noise_schedule_of(const Config& config) {
  // (A PSLD model has no use for one; it keeps the DDPM schedule of its config.)
  if (config.model.type == "ddpm" || config.diffusion.process == "psld") return NoiseSchedule(config.diffusion);
  return Preconditioning::of(config.model.edm).schedule();
}

namespace {

// The index of the level nearest to each σ (the first of equally near ones, as argmin).
torch::Tensor nearest_level(const std::vector<double>& u, const torch::Tensor& sigma) {
  const auto levels = torch::tensor(u, torch::kFloat64).to(sigma.device());
  return (sigma.to(torch::kFloat64).reshape({-1, 1}) - levels.reshape({1, -1})).abs().argmin(1);
}

}  // namespace

torch::Tensor Preconditioning::vp_sigma(const torch::Tensor& t) const {
  return ((0.5 * beta_d_ * t.square() + beta_min_ * t).exp() - 1).sqrt();
}

torch::Tensor Preconditioning::round_sigma(const torch::Tensor& sigma) const {
  if (kind_ != "iddpm") return sigma;
  return torch::tensor(u_, torch::kFloat64).to(sigma.device()).index_select(0, nearest_level(u_, sigma)).to(sigma.dtype());
}

Preconditioning::Coefficients Preconditioning::coefficients(const torch::Tensor& sigma_batch) const {
  const auto s = sigma_batch.reshape({-1, 1, 1, 1});
  const auto one = torch::ones_like(s);
  if (kind_ == "ve") return {one, s, one, (0.5 * s).log().flatten()};
  if (kind_ == "edm") {
    const double d2 = sigma_data_ * sigma_data_;
    return {d2 / (s * s + d2), s * sigma_data_ / (s * s + d2).sqrt(), 1 / (s * s + d2).sqrt(), (s.log() / 4).flatten()};
  }
  // vp and iddpm: x/√(σ² + 1) is the DDPM x_t, and F predicts ε.
  const auto in = 1 / (s * s + 1).sqrt();
  if (kind_ == "vp") {
    // c_noise = (M - 1) t(σ), t the inverse of σ(t).
    const auto t = ((beta_min_ * beta_min_ + 2 * beta_d_ * (1 + s * s).log()).sqrt() - beta_min_) / beta_d_;
    return {one, -s, in, ((M_ - 1) * t).flatten()};
  }
  return {one, -s, in, (M_ - 1 - nearest_level(u_, s.flatten())).to(s.dtype())};
}

torch::Tensor Preconditioning::denoise(const Network& network, const torch::Tensor& x, const torch::Tensor& sigma) const {
  const auto c = coefficients(sigma);
  auto f = network(c.in * x, c.noise);
  if (output_factor() > 1) f = f.narrow(1, 0, x.size(1));  // (iDDPM's variance channels)
  return c.skip * x + c.out * f;
}

NoiseSchedule Preconditioning::schedule() const {
  std::vector<double> alpha_bar;
  if (kind_ == "vp") {
    for (int j = 0; j < M_; ++j) {
      const double t = epsilon_t_ + (1 - epsilon_t_) * j / (M_ - 1);
      alpha_bar.push_back(std::exp(-(0.5 * beta_d_ * t * t + beta_min_ * t)));  // 1/(1 + σ(t)²)
    }
  } else if (kind_ == "iddpm") {
    for (int j = M_ - 1; j >= 0; --j) alpha_bar.push_back(1 / (1 + u_[j] * u_[j]));
  } else {
    const int T = 1000;
    const double lo = std::log(std::max(sigma_min_, 0.002)), hi = std::log(std::min(sigma_max_, 80.0));
    for (int j = 0; j < T; ++j) {
      const double sigma = std::exp(lo + (hi - lo) * j / (T - 1));
      alpha_bar.push_back(1 / (1 + sigma * sigma));
    }
  }
  return NoiseSchedule::from_alphas_cumprod(std::move(alpha_bar));
}

EpsModel Preconditioning::eps_model(Network network, NoiseSchedule schedule) const {
  return [precond = *this, network = std::move(network), schedule = std::move(schedule)](const torch::Tensor& x, const torch::Tensor& t) {
    std::vector<double> scale(t.size(0)), sigma(t.size(0));
    const auto times = t.to(torch::kCPU, torch::kFloat64).contiguous();
    for (int64_t i = 0; i < t.size(0); ++i) {
      const double a = schedule.alpha_bar(times.data_ptr<double>()[i]);
      scale[i] = 1 / std::sqrt(a);
      sigma[i] = std::sqrt((1 - a) / a);
    }
    const auto options = torch::TensorOptions().dtype(x.scalar_type()).device(x.device());
    const auto s = torch::tensor(sigma, torch::kFloat64).to(options);
    const auto x_tilde = x * torch::tensor(scale, torch::kFloat64).to(options).reshape({-1, 1, 1, 1});
    return (x_tilde - precond.denoise(network, x_tilde, s)) / s.reshape({-1, 1, 1, 1});
  };
}

}  // namespace s2dm
