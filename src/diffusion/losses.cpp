#include "s2dm/diffusion/losses.h"

#include <torch/torch.h>

#include <cmath>

#include "s2dm/core/registry.h"

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

namespace {

LossTerms simple_loss(const DiffusionLoss&, const torch::Tensor& eps1, const torch::Tensor&, const torch::Tensor& pred,
                      const torch::Tensor&) {
  LossTerms out;
  auto simple = per_sample_mse(eps1, pred);
  out.simple = simple.detach().mean();
  out.loss = simple.mean();
  out.skip_sum = torch::zeros({}, out.simple.options());
  out.skip_count = torch::zeros({}, out.simple.options().dtype(torch::kLong));
  return out;
}

LossTerms s2dm_loss(const DiffusionLoss& loss, const torch::Tensor& eps1, const torch::Tensor& eps2,
                    const torch::Tensor& pred, const torch::Tensor& t) {
  const auto& config = loss.config();
  LossTerms out;
  auto simple = per_sample_mse(eps1, pred);
  out.simple = simple.detach().mean();
  auto skip = per_sample_mse(eps2, loss.skip_coefficient(t).view({-1, 1, 1, 1}) * pred);
  auto applies = t >= config.skip_k;
  auto combined = torch::where(applies, config.tau * simple + (1.0 - config.tau) * skip, simple);
  out.loss = combined.mean();
  out.skip_sum = (skip.detach() * applies.to(skip.dtype())).sum();
  out.skip_count = applies.sum();
  return out;
}

}  // namespace

const std::vector<LossInfo>& losses() {
  static const std::vector<LossInfo> registry{
      {"simple", "L_simple of DDPM: the ε-prediction error", false, simple_loss},
      {"s2dm", "S²-DM: τ L_simple + (1-τ) L_skip for t ≥ k (the skip-step target ε₂)", true, s2dm_loss},
  };
  return registry;
}

}  // namespace s2dm::diffusion

namespace s2dm {
std::vector<std::string> loss_names() { return names_of(diffusion::losses()); }
}  // namespace s2dm

namespace s2dm::diffusion {

const LossInfo& find_loss(const std::string& name) { return find_by_name(losses(), name, "loss", "losses"); }

DiffusionLoss::DiffusionLoss(const LossConfig& config, const NoiseSchedule& schedule,
                             const torch::Device& device)
    : config_(config), info_(&find_loss(config.type)) {
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

torch::Tensor DiffusionLoss::skip_coefficient(const torch::Tensor& t) const {
  return skip_coef_.to(t.device()).index_select(0, t);
}

LossTerms DiffusionLoss::operator()(const EpsModel& model, const torch::Tensor& x0, const torch::Tensor& t,
                                    Rows rows) const {
  auto eps1 = torch::randn_like(x0);
  torch::Tensor eps2;
  if (info_->second_noise) eps2 = config_.noise == "shared" ? eps1 : torch::randn_like(x0);
  if (rows.end < 0) return combine(eps1, eps2, model(noised(x0, t, eps1), t.to(torch::kFloat32)), t);
  auto keep = [&](const torch::Tensor& a) { return a.defined() ? a.slice(0, rows.begin, rows.end) : a; };
  auto x0_rows = keep(x0), t_rows = keep(t), eps1_rows = keep(eps1);
  return combine(eps1_rows, keep(eps2), model(noised(x0_rows, t_rows, eps1_rows), t_rows.to(torch::kFloat32)), t_rows);
}

LossTerms DiffusionLoss::combine(const torch::Tensor& eps1, const torch::Tensor& eps2,
                                 const torch::Tensor& eps_hat, const torch::Tensor& t) const {
  return info_->combine(*this, eps1, eps2, eps_hat.to(torch::kFloat32), t);
}

}  // namespace s2dm::diffusion
