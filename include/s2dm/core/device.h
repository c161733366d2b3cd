#pragma once
// Device selection and CPU threading.
#include <torch/types.h>

#include <string>

namespace s2dm {

// "auto" (CUDA when this LibTorch has it and a GPU is visible, else CPU), "cpu", "cuda", "cuda:N".
// Throws ConfigError for an unknown name or CUDA asked for where there is none. Choosing CUDA
// turns on use_fast_cuda_math, and use_deterministic_cuda where S2DM_DETERMINISTIC=1.
torch::Device resolve_device(const std::string& name);

// The device of rank `local_rank` on its machine: `resolved` itself on the CPU; on CUDA the GPU
// local_rank modulo the GPUs visible to the process (each rank its own GPU where the machine's
// GPUs are visible to all; GPU 0 where each task sees one, as SLURM's per-task
// CUDA_VISIBLE_DEVICES gives it).
torch::Device rank_device(const torch::Device& resolved, int local_rank, int visible_gpus);
// Makes a CUDA device the current one (NCCL's communicators and new CUDA streams use it); no
// effect on the CPU.
void make_current(const torch::Device& device);

// CUDA math for training and sampling: TF32 tensor cores in matmuls and convolutions (fp32
// range, 10-bit products, fp32 sums) and cuDNN's autotuner (shapes repeat, so tuning pays
// once). FID features never use TF32 (compat::NoTf32). No effect on the CPU.
void use_fast_cuda_math(bool fast);
// Runs that repeat bit for bit on one GPU (S2DM_DETERMINISTIC=1): cuDNN's autotuner off (the
// algorithm it picks varies from process to process, and with it the rounding), deterministic
// cuDNN algorithms, PyTorch's deterministic implementations where an op has one (a warning where
// it has none), and cuBLAS's fixed workspace (CUBLAS_WORKSPACE_CONFIG, unless set). TF32 stays on:
// it rounds the same way every run. Call before the first CUDA work; no effect on the CPU.
void use_deterministic_cuda();

// A CUDA device's memory in bytes (0 for the CPU).
int64_t device_memory(const torch::Device& device);

// The most bytes of tensors LibTorch's caching allocator held at once on a CUDA device since
// the last reset_peak_memory (what Python's torch.cuda.max_memory_allocated reports); 0 on the CPU.
int64_t peak_memory(const torch::Device& device);
void reset_peak_memory(const torch::Device& device);

// The device's peak FLOP/s for the UNet's math, to state throughput as a fraction of it (model
// FLOP/s utilisation): bf16 or fp32 (TF32 when on) tensor-core peaks of known NVIDIA GPUs, or
// for the CPU threads x clock x FMA width. S2DM_PEAK_TFLOPS overrides; 0 = unknown.
double peak_flops(const torch::Device& device, bool bf16);

// Sets LibTorch's intra-op threads (0 = every core; Debian's LibTorch defaults to one), and
// OpenBLAS, where it is loaded, to one thread inside each of them; and chooses the CPU
// convolutions (below). Every command calls it before any work.
void set_cpu_threads(int threads);

// Runs CPU convolutions through oneDNN where it computes them right (compat::
// kOneDnnConvolutionsAreRight: LibTorch 1.13), through LibTorch's own convolution elsewhere
// (slower for training: 2.8-3.6x on LibTorch 2.6, 2 cores). S2DM_CPU_ONEDNN=1 or 0 overrides,
// for a LibTorch 2.x whose oneDNN passes Convolutions.CpuFloat32EqualsFloat64ForEveryChannelCount.
// Process-wide.
void choose_cpu_convolutions();

// One line per fact: LibTorch version, CUDA availability, devices, threads.
std::string runtime_info(const torch::Device& device);

}  // namespace s2dm
