#pragma once
// Device selection and CPU threading.
#include <torch/types.h>

#include <string>

namespace s2dm {

// "auto" (CUDA when this LibTorch has it and a GPU is visible, else CPU), "cpu", "cuda", "cuda:N".
// Throws ConfigError for an unknown name or CUDA asked for where there is none.
torch::Device resolve_device(const std::string& name);

// Sets LibTorch's intra-op threads (0 = every core; Debian's LibTorch defaults to one).
void set_cpu_threads(int threads);

// One line per fact: LibTorch version, CUDA availability, devices, threads.
std::string runtime_info(const torch::Device& device);

}  // namespace s2dm
