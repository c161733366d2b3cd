#include "s2dm/core/device.h"

#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <dlfcn.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <thread>
#if S2DM_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDACachingAllocator.h>
#endif

#include "s2dm/core/compat.h"
#include "s2dm/core/errors.h"

namespace s2dm {

#if S2DM_WITH_CUDA
namespace {
// The CUDA device a torch::Device names ("cuda" alone: the first).
c10::DeviceIndex cuda_index(const torch::Device& device) { return device.has_index() ? device.index() : 0; }
}  // namespace
#endif

torch::Device resolve_device(const std::string& name) {
  if (name == "auto") return resolve_device(torch::cuda::is_available() ? "cuda" : "cpu");
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
    use_fast_cuda_math(true);
    if (const char* env = std::getenv("S2DM_DETERMINISTIC"); env && std::string(env) == "1") use_deterministic_cuda();
    return device;
  }
  throw ConfigError("device = '" + name + "' is not one of auto, cpu, cuda, cuda:N");
}

torch::Device rank_device(const torch::Device& resolved, int local_rank, int visible_gpus) {
  if (!resolved.is_cuda()) return resolved;
  return {torch::kCUDA, static_cast<c10::DeviceIndex>(local_rank % std::max(1, visible_gpus))};
}

void make_current(const torch::Device& device) {
  if (device.is_cuda()) c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA)->setDevice(device);
}

void use_fast_cuda_math(bool fast) {
  auto& context = at::globalContext();
  context.setAllowTF32CuBLAS(fast);
  context.setAllowTF32CuDNN(fast);
  context.setBenchmarkCuDNN(fast);
}

void use_deterministic_cuda() {
  auto& context = at::globalContext();
  context.setBenchmarkCuDNN(false);
  context.setDeterministicCuDNN(true);
  context.setDeterministicAlgorithms(true, /*warn_only=*/true);
  setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8", /*overwrite=*/0);
}

int64_t device_memory(const torch::Device& device) {
#if S2DM_WITH_CUDA
  if (device.is_cuda())
    return static_cast<int64_t>(at::cuda::getDeviceProperties(cuda_index(device))->totalGlobalMem);
#else
  (void)device;
#endif
  return 0;
}

int64_t peak_memory(const torch::Device& device) {
#if S2DM_WITH_CUDA
  if (device.is_cuda())  // ([0]: the sum over the allocator's pools)
    return c10::cuda::CUDACachingAllocator::getDeviceStats(cuda_index(device)).allocated_bytes[0].peak;
#else
  (void)device;
#endif
  return 0;
}

void reset_peak_memory(const torch::Device& device) {
#if S2DM_WITH_CUDA
  if (device.is_cuda())
    c10::cuda::CUDACachingAllocator::resetPeakStats(cuda_index(device));
#else
  (void)device;
#endif
}

double peak_flops(const torch::Device& device, bool bf16) {
  if (const char* given = std::getenv("S2DM_PEAK_TFLOPS")) return std::atof(given) * 1e12;
  if (device.is_cuda()) {
#if S2DM_WITH_CUDA
    // Dense TFLOP/s from NVIDIA's data sheets: bf16 and TF32 tensor cores, plain fp32.
    struct Peak {
      const char* name;
      double bf16, tf32, fp32;
    };
    static const Peak peaks[] = {{"H200", 989.4, 494.7, 66.9}, {"H100 PCIe", 756.5, 378.0, 51.2},
                                 {"H100", 989.4, 494.7, 66.9}, {"A100", 312.0, 156.0, 19.5},
                                 {"L40S", 362.1, 183.2, 91.6}, {"L4", 121.0, 60.0, 30.3}};
    const std::string name = at::cuda::getDeviceProperties(cuda_index(device))->name;
    const bool tf32 = at::globalContext().allowTF32CuBLAS();
    for (const auto& p : peaks)
      if (name.find(p.name) != std::string::npos) return (bf16 ? p.bf16 : tf32 ? p.tf32 : p.fp32) * 1e12;
#else
    (void)bf16;
#endif
    return 0.0;
  }
  // CPU: threads x clock x fp32 FLOP per cycle (two FMA units of 16 lanes with AVX-512, 8 with AVX2).
  std::ifstream cpuinfo("/proc/cpuinfo");
  double mhz = 0, per_cycle = 0;
  for (std::string line; std::getline(cpuinfo, line) && (mhz == 0 || per_cycle == 0);) {
    if (line.rfind("cpu MHz", 0) == 0) mhz = std::atof(line.substr(line.find(':') + 1).c_str());
    if (line.rfind("flags", 0) == 0)
      per_cycle = line.find(" avx512f") != std::string::npos ? 64 : line.find(" fma") != std::string::npos ? 32 : 8;
  }
  return torch::get_num_threads() * mhz * 1e6 * per_cycle;
}

void set_cpu_threads(int threads) {
  int n = threads > 0 ? threads : static_cast<int>(std::thread::hardware_concurrency());
  if (n < 1) n = 1;
  torch::set_num_threads(n);
  // OpenBLAS, where it is the BLAS behind LibTorch, keeps its own pool of busy-waiting threads,
  // one per core, that LibTorch's setting does not reach. LibTorch already spreads its work
  // over its n threads, which call BLAS themselves: a second pool only fights them for the
  // cores (bench/bench_unet.cpp on 2 cores: 2.6x faster with OpenBLAS on one thread).
  using SetThreads = void (*)(int);
  if (auto set_openblas = reinterpret_cast<SetThreads>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads")))
    set_openblas(1);
  choose_cpu_convolutions();
}

void choose_cpu_convolutions() {
  const char* onednn = std::getenv("S2DM_CPU_ONEDNN");
  at::globalContext().setUserEnabledMkldnn(onednn ? std::string(onednn) != "0" : compat::kOneDnnConvolutionsAreRight);
}

std::string runtime_info(const torch::Device& device) {
  std::string s;
  s += "libtorch:       " + compat::torch_version() + "\n";
  s += "cuda available: " + std::string(torch::cuda::is_available() ? "yes" : "no") + "\n";
  s += "cuda devices:   " + std::to_string(torch::cuda::device_count()) + "\n";
  s += "device:         " + device.str() + "\n";
#if S2DM_WITH_CUDA
  if (device.is_cuda()) {
    char figures[96];
    const double peak = peak_flops(device, true);
    std::snprintf(figures, sizeof figures, "%.0f GiB, peak %.0f TFLOP/s bf16",
                  static_cast<double>(device_memory(device)) / (1 << 30), peak / 1e12);
    s += "gpu:            " + std::string(at::cuda::getDeviceProperties(cuda_index(device))->name) + ", " + figures +
         (peak > 0 ? "" : " (not in s2dm's table: S2DM_PEAK_TFLOPS gives it)") + "\n";
  }
#endif
  s += "fused adam:     " + std::string(compat::kHasFusedAdam ? "yes" : "no") + "\n";
  s += "cpu threads:    " + std::to_string(torch::get_num_threads()) + " (of " +
       std::to_string(std::thread::hardware_concurrency()) + " cores)\n";
  s += "cpu convolution:" + std::string(at::globalContext().userEnabledMkldnn() ? " oneDNN" : " LibTorch's own") + "\n";
  return s;
}

}  // namespace s2dm
