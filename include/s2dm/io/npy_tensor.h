#pragma once
// Tensors to and from NpyArray (npy.h stays free of LibTorch): float32, float64 and uint8.
#include <torch/types.h>

#include <cstring>
#include <string>

#include "s2dm/core/errors.h"
#include "s2dm/io/npy.h"

namespace s2dm {

// A C-ordered copy of `t` (on the CPU) as .npy data; throws DataError for another dtype.
inline NpyArray to_npy_array(const torch::Tensor& t) {
  const auto c = t.to(torch::kCPU).contiguous();
  std::string dtype;
  switch (c.scalar_type()) {
    case torch::kFloat32: dtype = "<f4"; break;
    case torch::kFloat64: dtype = "<f8"; break;
    case torch::kUInt8: dtype = "|u1"; break;
    default: throw DataError("cannot store a " + std::string(c10::toString(c.scalar_type())) + " tensor as .npy");
  }
  return {dtype, c.sizes().vec(), std::string(static_cast<const char*>(c.data_ptr()), c.numel() * c.element_size())};
}

// The array as a tensor of its own dtype; throws DataError (naming `origin`) for another dtype.
inline torch::Tensor to_tensor(const NpyArray& a, const std::string& origin) {
  torch::ScalarType type;
  if (a.dtype == "<f4") type = torch::kFloat32;
  else if (a.dtype == "<f8") type = torch::kFloat64;
  else if (a.dtype == "|u1") type = torch::kUInt8;
  else throw DataError(origin + ": unsupported dtype " + a.dtype + " (expected <f4, <f8 or |u1)");
  auto t = torch::empty(a.shape, type);
  if (!a.data.empty()) std::memcpy(t.data_ptr(), a.data.data(), a.data.size());  // (an empty tensor has no data pointer)
  return t;
}

}  // namespace s2dm
