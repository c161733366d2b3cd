#include "s2dm/sample/draw.h"

#include <ATen/CPUGeneratorImpl.h>

#include <string>

#include "s2dm/core/errors.h"

namespace s2dm::sample {

InitialState initial_state(int64_t first, int64_t count, const std::vector<int64_t>& image_shape, uint64_t seed,
                           int64_t label_dim) {
  std::vector<int64_t> one{1};
  one.insert(one.end(), image_shape.begin(), image_shape.end());
  std::vector<torch::Tensor> xs, classes;
  for (int64_t i = first; i < first + count; ++i) {
    auto gen = at::detail::createCPUGenerator(seed * 1000003ull + static_cast<uint64_t>(i));
    xs.push_back(at::randn(one, gen, torch::kFloat32));
    if (label_dim > 0) classes.push_back(at::randint(label_dim, {1}, gen, torch::kLong));
  }
  InitialState out{at::cat(xs), {}};
  if (label_dim > 0) out.classes = at::cat(classes);
  return out;
}

void check_class_label(int class_label, int64_t label_dim) {
  if (class_label < label_dim) return;
  throw ConfigError("sample.class_label = " + std::to_string(class_label) + ": " +
                    (label_dim == 0 ? std::string("the model is unconditional (it has no classes)")
                                    : "the model has classes 0 to " + std::to_string(label_dim - 1)));
}

}  // namespace s2dm::sample
