#pragma once
// An ε-model from a TorchScript file: a module whose forward is (x [B,C,H,W], t [B]) -> ε,
// so users can sample a PyTorch-trained model (torch.jit.script / trace, then .save).
#include <torch/types.h>

#include <string>
#include <vector>

#include "s2dm/model/eps_model.h"

namespace s2dm {

// Loads the module onto `device` and checks it: forward takes two tensors and maps a batch of
// `image_shape` ([C,H,W]) to the same shape. Throws CheckpointError naming the file otherwise.
EpsModel load_torchscript_eps_model(const std::string& path, const torch::Device& device,
                                    const std::vector<int64_t>& image_shape);

}  // namespace s2dm
