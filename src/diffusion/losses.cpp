#include "s2dm/diffusion/losses.h"

#include <torch/torch.h>

#include <cmath>

namespace s2dm::diffusion {

torch::Tensor sample_timesteps(int64_t batch, int T, bool antithetic, const torch::Device& device) {
  auto opts = torch::TensorOptions().dtype(torch::kLong).device(device);
  if (!antithetic) return torch::randint(0, T, {batch}, opts);
  auto half = torch::randint(0, T, {(batch + 1) / 2}, opts);
  return torch::cat({half, (T - 1) - half}).slice(0, 0, batch);
}

torch::Tensor per_sample_mse(const torch::Tensor& a, const torch::Tensor& b) {
  return (a - b).square().flatten(1).mean(1);
}

DiffusionLoss::DiffusionLoss(const LossConfig& config, const NoiseSchedule& schedule,
                             const torch::Device& device)
    : config_(config) {
  const auto& ab = schedule.alphas_cumprod();
  const int T = schedule.num_timesteps();
  std::vector<double> sqrt_ab(T), sqrt_1m_ab(T), coef(T, 0.0);
  for (int t = 0; t < T; ++t) {
    sqrt_ab[t] = std::sqrt(ab[t]);
    sqrt_1m_ab[t] = std::sqrt(1.0 - ab[t]);
    if (t >= config.skip_k) {
      double alpha_skip = ab[t] / ab[t - config.skip_k];
      coef[t] = std::sqrt((1.0 - alpha_skip) / alpha_skip);
    }
  }
  auto f32 = torch::TensorOptions().dtype(torch::kFloat32).device(device);
  sqrt_ab_ = torch::tensor(sqrt_ab, torch::kFloat64).to(f32);
  sqrt_1m_ab_ = torch::tensor(sqrt_1m_ab, torch::kFloat64).to(f32);
  skip_coef64_ = torch::tensor(coef, torch::kFloat64);
  skip_coef_ = skip_coef64_.to(f32);
}

torch::Tensor DiffusionLoss::noised(const torch::Tensor& x0, const torch::Tensor& t,
                                    const torch::Tensor& eps) const {
  auto a = sqrt_ab_.index_select(0, t).view({-1, 1, 1, 1});
  auto s = sqrt_1m_ab_.index_select(0, t).view({-1, 1, 1, 1});
  return a * x0 + s * eps;
}

LossTerms DiffusionLoss::operator()(const EpsModel& model, const torch::Tensor& x0,
                                    const torch::Tensor& t) const {
  auto eps1 = torch::randn_like(x0);
  torch::Tensor eps2;
  if (config_.type == "s2dm") eps2 = config_.noise == "shared" ? eps1 : torch::randn_like(x0);
  auto eps_hat = model(noised(x0, t, eps1), t.to(torch::kFloat32));
  return combine(eps1, eps2, eps_hat, t);
}

LossTerms DiffusionLoss::combine(const torch::Tensor& eps1, const torch::Tensor& eps2,
                                 const torch::Tensor& eps_hat, const torch::Tensor& t) const {
  LossTerms out;
  auto pred = eps_hat.to(torch::kFloat32);
  auto simple = per_sample_mse(eps1, pred);
  out.simple = simple.detach().mean();
  if (config_.type != "s2dm") {
    out.loss = simple.mean();
    out.skip_sum = torch::zeros({}, out.simple.options());
    out.skip_count = torch::zeros({}, out.simple.options().dtype(torch::kLong));
    return out;
  }
  auto c = skip_coef_.to(pred.device()).index_select(0, t).view({-1, 1, 1, 1});
  auto skip = per_sample_mse(eps2, c * pred);
  auto applies = t >= config_.skip_k;
  auto combined = torch::where(applies, config_.tau * simple + (1.0 - config_.tau) * skip, simple);
  out.loss = combined.mean();
  out.skip_sum = (skip.detach() * applies.to(skip.dtype())).sum();
  out.skip_count = applies.sum();
  return out;
}

}  // namespace s2dm::diffusion
