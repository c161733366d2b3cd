#pragma once
// The ε-model as samplers and losses see it: (x [B,C,H,W], t [B]) -> ε̂ [B,C,H,W].
// t is in timestep-index units, real-valued in [0, T-1]. The UNet, a TorchScript module and
// analytic test models all fit behind it.
#include <torch/types.h>

#include <functional>

namespace s2dm {

using EpsModel = std::function<torch::Tensor(const torch::Tensor& x, const torch::Tensor& t)>;

// A class-conditional network's ε-model for one batch: the ε-model of images whose one-hot class
// labels are `class_labels` [B, label_dim] (EDM's class_labels). Samplers keep seeing an EpsModel;
// whoever batches the images binds each batch's labels.
using ClassEpsModel = std::function<EpsModel(const torch::Tensor& class_labels)>;

// A network's ε, conditional or not: one of the two is set.
struct ModelEps {
  EpsModel eps;              // an unconditional network's ...
  ClassEpsModel for_labels;  // ... or a class-conditional one's
};

}  // namespace s2dm
