#include "s2dm/sample/draw.h"

#include <ATen/CPUGeneratorImpl.h>

namespace s2dm::sample {

torch::Tensor initial_noise(int64_t first, int64_t count, const std::vector<int64_t>& image_shape, uint64_t seed) {
  std::vector<int64_t> one{1};
  one.insert(one.end(), image_shape.begin(), image_shape.end());
  std::vector<torch::Tensor> xs;
  for (int64_t i = first; i < first + count; ++i) {
    auto gen = at::detail::createCPUGenerator(seed * 1000003ull + static_cast<uint64_t>(i));
    xs.push_back(at::randn(one, gen, torch::kFloat32));
  }
  return at::cat(xs);
}

}  // namespace s2dm::sample
