#include "s2dm/optim/optim.h"

#include <cmath>
#include <map>

#include "s2dm/core/compat.h"
#include "s2dm/core/errors.h"

namespace s2dm::optim {

Adam::Adam(NamedTensors params, AdamOptions options) : params_(std::move(params)), options_(options) {
  for (auto& [name, p] : params_) {
    exp_avg_.push_back(torch::zeros_like(p, torch::MemoryFormat::Preserve));
    exp_avg_sq_.push_back(torch::zeros_like(p, torch::MemoryFormat::Preserve));
  }
}

void Adam::zero_grad() {
  for (auto& [name, p] : params_)
    if (p.mutable_grad().defined()) p.mutable_grad().zero_();
}

void Adam::step(double lr) {
  torch::NoGradGuard no_grad;
  ++steps_;
  if (options_.fused && compat::kHasFusedAdam && !params_.empty()) {
    std::vector<torch::Tensor> params, grads, exp_avgs, exp_avg_sqs;
    for (size_t i = 0; i < params_.size(); ++i) {
      auto& p = params_[i].second;
      if (!p.grad().defined()) continue;
      params.push_back(p);
      grads.push_back(p.grad());
      exp_avgs.push_back(exp_avg_[i]);
      exp_avg_sqs.push_back(exp_avg_sq_[i]);
    }
    if (params.empty()) return;
    if (!fused_step_.defined())
      fused_step_ = torch::zeros({}, params_.front().second.options().dtype(torch::kFloat32));
    fused_step_.fill_(static_cast<double>(steps_));
    const std::vector<torch::Tensor> steps(params.size(), fused_step_);
    compat::fused_adam(params, grads, exp_avgs, exp_avg_sqs, steps, lr, options_.beta1, options_.beta2,
                       options_.weight_decay, options_.eps, options_.decoupled);
    return;
  }
  const double bias1 = 1.0 - std::pow(options_.beta1, static_cast<double>(steps_));
  const double bias2 = 1.0 - std::pow(options_.beta2, static_cast<double>(steps_));
  const double step_size = lr / bias1;
  for (size_t i = 0; i < params_.size(); ++i) {
    auto& p = params_[i].second;
    if (!p.grad().defined()) continue;
    auto grad = p.grad();
    if (options_.weight_decay != 0.0) {
      if (options_.decoupled)
        p.mul_(1.0 - lr * options_.weight_decay);
      else
        grad = grad.add(p, options_.weight_decay);
    }
    exp_avg_[i].mul_(options_.beta1).add_(grad, 1.0 - options_.beta1);
    exp_avg_sq_[i].mul_(options_.beta2).addcmul_(grad, grad, 1.0 - options_.beta2);
    auto denom = (exp_avg_sq_[i].sqrt() / std::sqrt(bias2)).add_(options_.eps);
    p.addcdiv_(exp_avg_[i], denom, -step_size);
  }
}

NamedTensors Adam::state() const {
  NamedTensors out;
  for (size_t i = 0; i < params_.size(); ++i) {
    out.emplace_back("exp_avg." + params_[i].first, exp_avg_[i]);
    out.emplace_back("exp_avg_sq." + params_[i].first, exp_avg_sq_[i]);
  }
  out.emplace_back("step", torch::tensor(steps_, torch::kLong));
  return out;
}

void Adam::load_state(const NamedTensors& state) {
  std::map<std::string, torch::Tensor> by_name(state.begin(), state.end());
  auto take = [&](const std::string& name, torch::Tensor& into) {
    auto it = by_name.find(name);
    if (it == by_name.end()) throw CheckpointError("optimizer state lacks '" + name + "'");
    if (it->second.sizes() != into.sizes())
      throw CheckpointError("optimizer state '" + name + "' has the wrong shape");
    torch::NoGradGuard no_grad;
    into.copy_(it->second);
  };
  for (size_t i = 0; i < params_.size(); ++i) {
    take("exp_avg." + params_[i].first, exp_avg_[i]);
    take("exp_avg_sq." + params_[i].first, exp_avg_sq_[i]);
  }
  auto it = by_name.find("step");
  if (it == by_name.end()) throw CheckpointError("optimizer state lacks 'step'");
  steps_ = it->second.item<int64_t>();
}

torch::Tensor clip_grad_norm(const std::vector<torch::Tensor>& params, double max_norm) {
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> norms;
  for (const auto& p : params)
    if (p.grad().defined()) norms.push_back(p.grad().to(torch::kFloat32).norm());
  if (norms.empty()) return torch::zeros({});
  auto total = torch::stack(norms).norm();
  if (max_norm > 0.0) {
    // min(1, max_norm / norm) stays on the device (no host sync); a factor of 1 is exact.
    auto coef = (max_norm / (total + 1e-6)).clamp_max(1.0);
    for (const auto& p : params)
      if (p.grad().defined()) p.grad().mul_(coef);
  }
  return total;
}

void ema_update(torch::nn::Module& ema, const torch::nn::Module& model, double decay) {
  torch::NoGradGuard no_grad;
  auto target = ema.parameters();
  auto source = model.parameters();
  for (size_t i = 0; i < target.size(); ++i) target[i].mul_(decay).add_(source[i], 1.0 - decay);
  auto tb = ema.buffers();
  auto sb = model.buffers();
  for (size_t i = 0; i < tb.size(); ++i) tb[i].copy_(sb[i]);
}

void copy_weights(torch::nn::Module& to, const torch::nn::Module& from) {
  torch::NoGradGuard no_grad;
  auto tp = to.parameters();
  auto fp = from.parameters();
  for (size_t i = 0; i < tp.size(); ++i) tp[i].copy_(fp[i]);
  auto tb = to.buffers();
  auto fb = from.buffers();
  for (size_t i = 0; i < tb.size(); ++i) tb[i].copy_(fb[i]);
}

}  // namespace s2dm::optim
