#pragma once
// Which images a sampling run draws, their initial noise x_T and, for a class-conditional model,
// their classes.
#include <torch/types.h>

#include <cstdint>
#include <vector>

namespace s2dm::sample {

// Images [first, first + num) of `seed`. Image i's x_T, class and a stochastic sampler's step
// noises depend only on (seed, i), so a share [first, first + num) of a larger draw (a rank's,
// under data parallelism) is those images of the whole. `noise` (float32 NCHW, CPU), when defined,
// replaces their x_T and sets num.
struct Draw {
  uint64_t seed = 0;
  int64_t first = 0;
  int64_t num = 0;
  torch::Tensor noise;
};

struct InitialState {
  torch::Tensor noise;    // x_T, float32 [count, C, H, W]
  torch::Tensor classes;  // int64 [count] in [0, label_dim); undefined when label_dim is 0
};

// x_T and classes of images [first, first+count): image i's come from its own generator seeded by
// seed·1000003 + i, x_T first, then its class uniform in [0, label_dim), as EDM's generate.py draws
// latents and class labels from each image's seed (with seed 0, image i's generator is EDM's of
// seed i). An image depends neither on the batch size nor on how many are drawn.
InitialState initial_state(int64_t first, int64_t count, const std::vector<int64_t>& image_shape, uint64_t seed,
                           int64_t label_dim = 0);
// Throws ConfigError unless `class_label` (sample.class_label) is -1 or one of a model's label_dim classes.
void check_class_label(int class_label, int64_t label_dim);

inline torch::Tensor initial_noise(int64_t first, int64_t count, const std::vector<int64_t>& image_shape, uint64_t seed) {
  return initial_state(first, count, image_shape, seed).noise;
}

}  // namespace s2dm::sample
