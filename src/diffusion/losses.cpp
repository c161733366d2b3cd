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

LossTerms simple_loss(const DiffusionLoss& loss, const LossBatch& batch, const EpsModel& network) {
  auto simple = per_sample_mse(batch.eps1, loss.predict(network, batch));
  LossTerms out;
  out.loss = simple.mean();
  const auto mean = simple.detach().mean();
  // (loss_skip too, always 0: metrics.jsonl has one set of keys for both of today's losses)
  out.logged = {{"loss_simple", mean, {}},
                {"loss_skip", torch::zeros({}, mean.options()), torch::zeros({}, mean.options().dtype(torch::kLong))}};
  return out;
}

LossTerms s2dm_loss(const DiffusionLoss& loss, const LossBatch& batch, const EpsModel& network) {
  const auto& config = loss.config();
  const auto pred = loss.predict(network, batch);
  auto simple = per_sample_mse(batch.eps1, pred);
  auto skip = per_sample_mse(batch.eps2, loss.skip_coefficient(batch.t).view({-1, 1, 1, 1}) * pred);
  auto applies = batch.t >= config.skip_k;
  auto combined = torch::where(applies, config.tau * simple + (1.0 - config.tau) * skip, simple);
  LossTerms out;
  out.loss = combined.mean();
  out.logged = {{"loss_simple", simple.detach().mean(), {}},
                {"loss_skip", (skip.detach() * applies.to(skip.dtype())).sum(), applies.sum()}};
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
// (and EDM's networks' loss and PSLD's hybrid score matching, computed by DenoiserLoss and
// HsmLoss rather than from DDPM's timesteps)
std::vector<std::string> loss_names() {
  auto names = names_of(diffusion::losses());
  names.push_back("edm");
  names.push_back("hsm");
  return names;
}
}  // namespace s2dm

namespace s2dm::diffusion {

const LossInfo& find_loss(const std::string& name) { return find_by_name(losses(), name, "loss", "losses"); }

const LoggedTerm& LossTerms::term(const std::string& name) const {
  for (const auto& t : logged)
    if (t.name == name) return t;
  throw std::out_of_range("the loss logs no term '" + name + "'");
}

DiffusionLoss::DiffusionLoss(const LossConfig& config, const NoiseSchedule& schedule, const torch::Device& device,
                             bool antithetic)
    : config_(config),
      info_(&find_loss(config.type)),
      num_timesteps_(schedule.num_timesteps()),
      antithetic_(antithetic),
      device_(device) {
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

torch::Tensor DiffusionLoss::draw_timesteps(int64_t batch) const {
  return sample_timesteps(batch, num_timesteps_, antithetic_, device_);
}

torch::Tensor DiffusionLoss::predict(const EpsModel& network, const LossBatch& batch) const {
  return network(noised(batch.x0, batch.t, batch.eps1), batch.t.to(torch::kFloat32)).to(torch::kFloat32);
}

LossTerms DiffusionLoss::operator()(const EpsModel& model, const torch::Tensor& x0, const torch::Tensor& t,
                                    Rows rows) const {
  auto eps1 = torch::randn_like(x0);
  torch::Tensor eps2;
  if (info_->second_noise) eps2 = config_.noise == "shared" ? eps1 : torch::randn_like(x0);
  LossBatch batch{x0, t, eps1, eps2};
  if (rows.end >= 0)
    for (auto* part : {&batch.x0, &batch.t, &batch.eps1, &batch.eps2})
      if (part->defined()) *part = part->slice(0, rows.begin, rows.end);
  return info_->compute(*this, batch, model);
}

LossTerms DiffusionLoss::combine(const torch::Tensor& eps1, const torch::Tensor& eps2,
                                 const torch::Tensor& eps_hat, const torch::Tensor& t) const {
  return info_->compute(*this, {torch::zeros_like(eps1), t, eps1, eps2},
                        [&](const torch::Tensor&, const torch::Tensor&) { return eps_hat; });
}

DenoiserLoss::DenoiserLoss(Preconditioning precond, const LossConfig& config)
    : precond_(std::move(precond)), p_mean_(config.p_mean), p_std_(config.p_std) {
  if (precond_.kind() == "iddpm")  // (train::check_trainable tells the user)
    throw std::invalid_argument("EDM defines no loss for iDDPM's preconditioning");
}

torch::Tensor DenoiserLoss::draw_sigmas(int64_t batch, const torch::Device& device) const {
  const auto options = torch::TensorOptions().dtype(torch::kFloat32).device(device);
  if (precond_.kind() == "edm") return (torch::randn({batch}, options) * p_std_ + p_mean_).exp();
  const auto u = torch::rand({batch}, options);
  if (precond_.kind() == "vp") return precond_.vp_sigma(1 + u * (precond_.epsilon_t() - 1));
  return precond_.sigma_min() * torch::pow(precond_.sigma_max() / precond_.sigma_min(), u);
}

torch::Tensor DenoiserLoss::weights(const torch::Tensor& sigma) const {
  if (precond_.kind() != "edm") return 1 / sigma.square();
  const double d = precond_.sigma_data();
  return (sigma.square() + d * d) / (sigma * d).square();
}

LossTerms DenoiserLoss::terms(const Preconditioning::Network& network, const torch::Tensor& y,
                              const torch::Tensor& sigma, const torch::Tensor& n) const {
  const auto s = sigma.reshape({-1, 1, 1, 1});
  const auto denoised = precond_.denoise(network, y + n * s, sigma).to(y.scalar_type());  // (from autocast)
  LossTerms out;
  out.loss = (weights(sigma) * per_sample_mse(denoised, y)).mean();
  return out;
}

LossTerms DenoiserLoss::operator()(const Preconditioning::Network& network, const torch::Tensor& y, Rows rows) const {
  auto sigma = draw_sigmas(y.size(0), y.device());
  auto n = torch::randn_like(y);
  auto images = y;
  if (rows.end >= 0)
    for (auto* part : {&images, &sigma, &n}) *part = part->slice(0, rows.begin, rows.end);
  return terms(network, images, sigma, n);
}

}  // namespace s2dm::diffusion
