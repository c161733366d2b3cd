#pragma once
// Arrays of tests/fixtures (.npy files the fixture scripts there write) as tensors.
#include <torch/types.h>

#include <string>

#include "s2dm/io/npy.h"
#include "s2dm/io/npy_tensor.h"

namespace s2dm::testing {

// tests/fixtures/`name` in its own dtype.
inline torch::Tensor fixture_tensor(const std::string& name) {
  return to_tensor(load_npy(std::string(S2DM_SOURCE_DIR) + "/tests/fixtures/" + name), name);
}

}  // namespace s2dm::testing
