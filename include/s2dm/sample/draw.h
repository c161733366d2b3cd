#pragma once
// Which images a sampling run draws, and their initial noise x_T.
#include <torch/types.h>

#include <cstdint>
#include <vector>

namespace s2dm::sample {

// Images [first, first + num) of `seed`. Image i's x_T and a stochastic sampler's step noises
// depend only on (seed, i), so a share [first, first + num) of a larger draw (a rank's, under data
// parallelism) is those images of the whole. `noise` (float32 NCHW, CPU), when defined, replaces
// their x_T and sets num.
struct Draw {
  uint64_t seed = 0;
  int64_t first = 0;
  int64_t num = 0;
  torch::Tensor noise;
};

// x_T for images [first, first+count): image i's noise comes from its own generator seeded by
// (seed, i), so an image does not depend on the batch size or on how many are drawn.
torch::Tensor initial_noise(int64_t first, int64_t count, const std::vector<int64_t>& image_shape, uint64_t seed);

}  // namespace s2dm::sample
