#include "s2dm/device.h"

#include <thread>

#include "s2dm/compat.h"
#include "s2dm/errors.h"

namespace s2dm {

torch::Device resolve_device(const std::string& name) {
  if (name == "auto") return torch::cuda::is_available() ? torch::Device("cuda") : torch::Device("cpu");
  if (name == "cpu") return torch::kCPU;
  if (name == "cuda" || name.rfind("cuda:", 0) == 0) {
    if (!torch::cuda::is_available())
      throw ConfigError("device = '" + name +
                        "': this LibTorch has no CUDA or no GPU is visible (use auto or cpu)");
    torch::Device device("cpu");
    try {
      device = torch::Device(name);
    } catch (const c10::Error&) {
      throw ConfigError("device = '" + name + "' is not a valid device name");
    }
    if (device.has_index() && device.index() >= static_cast<int>(torch::cuda::device_count()))
      throw ConfigError("device = '" + name + "': only " +
                        std::to_string(torch::cuda::device_count()) + " CUDA device(s) visible");
    return device;
  }
  throw ConfigError("device = '" + name + "' is not one of auto, cpu, cuda, cuda:N");
}

void set_cpu_threads(int threads) {
  int n = threads > 0 ? threads : static_cast<int>(std::thread::hardware_concurrency());
  if (n < 1) n = 1;
  torch::set_num_threads(n);
}

std::string runtime_info(const torch::Device& device) {
  std::string s;
  s += "libtorch:       " + compat::torch_version() + "\n";
  s += "cuda available: " + std::string(torch::cuda::is_available() ? "yes" : "no") + "\n";
  s += "cuda devices:   " + std::to_string(torch::cuda::device_count()) + "\n";
  s += "device:         " + device.str() + "\n";
  s += "cpu threads:    " + std::to_string(torch::get_num_threads()) + " (of " +
       std::to_string(std::thread::hardware_concurrency()) + " cores)\n";
  return s;
}

}  // namespace s2dm
