#pragma once
// Adam / AdamW with state kept as named tensors (so checkpoints hold it by parameter name),
// the EMA of weights, and global grad-norm clipping. The update rule is PyTorch's.
#include <torch/torch.h>

#include <string>
#include <utility>
#include <vector>

#include "s2dm/io/safetensors.h"

namespace s2dm::optim {

struct AdamOptions {
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0.0;
  bool decoupled = false;  // AdamW: decay the weights directly instead of adding to the gradient
  // PyTorch's fused kernel (one launch for all parameters) from LibTorch 2.6 on;
  // else, or when false, the same rule parameter by parameter.
  bool fused = true;
};

class Adam {
 public:
  Adam(NamedTensors params, AdamOptions options);
  // One update with learning rate `lr`, using each parameter's .grad() (skips those without).
  void step(double lr);
  void zero_grad();
  int64_t steps() const { return steps_; }

  // "exp_avg.<name>", "exp_avg_sq.<name>" and "step" (int64 scalar).
  NamedTensors state() const;
  // Restores state(); throws CheckpointError naming a missing or mis-shaped tensor.
  void load_state(const NamedTensors& state);

 private:
  NamedTensors params_;
  AdamOptions options_;
  std::vector<torch::Tensor> exp_avg_, exp_avg_sq_;
  int64_t steps_ = 0;
  torch::Tensor fused_step_;  // steps_ as the fused kernel reads it (float32, on the device)
};

// Scales all gradients so their global L2 norm is at most `max_norm` (0 = only measure).
// Returns the norm before clipping, as a scalar on the parameters' device (read it when needed).
torch::Tensor clip_grad_norm(const std::vector<torch::Tensor>& params, double max_norm);

// ema ← decay·ema + (1-decay)·model, parameter by parameter (buffers copied).
void ema_update(torch::nn::Module& ema, const torch::nn::Module& model, double decay);

// Copies every parameter and buffer of `from` into `to` (same architecture).
void copy_weights(torch::nn::Module& to, const torch::nn::Module& from);

}  // namespace s2dm::optim
