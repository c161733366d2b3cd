#pragma once
// The ε-model as samplers and losses see it: (x [B,C,H,W], t [B]) -> ε̂ [B,C,H,W].
// t is in timestep-index units, real-valued in [0, T-1]. The UNet, a TorchScript module and
// analytic test models all fit behind it.
#include <torch/types.h>

#include <functional>

namespace s2dm {

using EpsModel = std::function<torch::Tensor(const torch::Tensor& x, const torch::Tensor& t)>;

}  // namespace s2dm
