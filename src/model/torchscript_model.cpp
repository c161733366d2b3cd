#include "s2dm/model/torchscript_model.h"

#include <torch/script.h>

#include <filesystem>
#include <memory>

#include "s2dm/core/errors.h"

namespace s2dm {

EpsModel load_torchscript_eps_model(const std::string& path, const torch::Device& device,
                                    const std::vector<int64_t>& image_shape) {
  if (!std::filesystem::exists(path)) throw CheckpointError(path + ": file not found");
  auto module = std::make_shared<torch::jit::script::Module>();
  try {
    *module = torch::jit::load(path, device);
  } catch (const c10::Error& e) {
    throw CheckpointError(path + ": not a loadable TorchScript module (" + e.what_without_backtrace() + ")");
  }
  module->eval();
  auto method = module->find_method("forward");
  if (!method) throw CheckpointError(path + ": the module has no forward method");
  const auto& args = method->function().getSchema().arguments();
  if (args.size() != 3)  // self, x, t
    throw CheckpointError(path + ": forward must take (x, t), it takes " + std::to_string(args.size() - 1) +
                          " argument(s)");
  EpsModel model = [module](const torch::Tensor& x, const torch::Tensor& t) {
    torch::NoGradGuard no_grad;
    auto out = module->forward({x.to(torch::kFloat32), t.to(torch::kFloat32)});
    if (!out.isTensor()) throw CheckpointError("TorchScript model returned something other than a tensor");
    return out.toTensor().to(x.dtype());
  };
  // A trial call on one noise image: the output must be a tensor of the input's shape.
  std::vector<int64_t> shape{2};
  shape.insert(shape.end(), image_shape.begin(), image_shape.end());
  torch::Tensor y;
  try {
    y = model(torch::randn(shape, torch::TensorOptions().device(device)),
              torch::full({2}, 500.0, torch::TensorOptions().device(device)));
  } catch (const c10::Error& e) {
    throw CheckpointError(path + ": forward(x, t) failed on x of shape " + c10::str(c10::IntArrayRef(shape)) + " (" +
                          e.what_without_backtrace() + ")");
  }
  if (y.sizes() != c10::IntArrayRef(shape))
    throw CheckpointError(path + ": forward(x, t) returned shape " + c10::str(y.sizes()) + " for x of shape " +
                          c10::str(c10::IntArrayRef(shape)) + " (expected ε of x's shape)");
  return model;
}

}  // namespace s2dm
