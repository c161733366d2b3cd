#pragma once
// The Inception-v3 of FID (pytorch-fid's FIDInceptionA/C/E_1/E_2 on torchvision's network):
// parameter names as torchvision's, so the converted pytorch-fid weights load by name. Images in
// [0, 1] are resized bilinearly to 299x299 (align_corners false) and mapped to [-1, 1]; the
// features are the 2048-d output of the final average pool. fp32 throughout.
#include <torch/torch.h>

#include <string>

namespace s2dm::eval {

// conv (no bias) + BatchNorm (eps 0.001) + ReLU, named conv / bn.
class BasicConv2dImpl : public torch::nn::Module {
 public:
  BasicConv2dImpl(int64_t in, int64_t out, std::vector<int64_t> kernel, std::vector<int64_t> stride = {1, 1},
                  std::vector<int64_t> padding = {0, 0});
  torch::Tensor forward(const torch::Tensor& x);

 private:
  torch::nn::Conv2d conv{nullptr};
  torch::nn::BatchNorm2d bn{nullptr};
};
TORCH_MODULE(BasicConv2d);

class FidInceptionImpl : public torch::nn::Module {
 public:
  FidInceptionImpl();
  // Images [N, 3, H, W] in [0, 1] (grey images repeated to 3 channels first) -> [N, 2048].
  torch::Tensor forward(const torch::Tensor& images);
  // The network on already resized and normalised input [N, 3, 299, 299] in [-1, 1].
  torch::Tensor features(const torch::Tensor& x);

 private:
  struct Layers;
  std::shared_ptr<Layers> layers_;
};
TORCH_MODULE(FidInception);

// pytorch-fid's preprocessing: grey -> RGB, bilinear resize to 299x299, then 2x - 1.
torch::Tensor fid_preprocess(const torch::Tensor& images);

// Loads weights from a safetensors file converted by scripts/convert_fid_inception.py.
// Throws CheckpointError for a missing file or missing / mis-shaped tensors.
void load_inception_weights(FidInception& net, const std::string& path);

}  // namespace s2dm::eval
