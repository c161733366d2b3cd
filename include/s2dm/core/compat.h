#pragma once
// Every difference between the LibTorch versions s2dm builds against (Debian's 1.13 on CPU,
// 2.x with CUDA) lives here, so the rest of the code reads as one version.
#include <ATen/autocast_mode.h>
#include <torch/torch.h>
#include <torch/version.h>

#include <cmath>
#include <string>
#include <vector>

namespace s2dm::compat {

#if TORCH_VERSION_MAJOR >= 2 && (TORCH_VERSION_MAJOR > 2 || TORCH_VERSION_MINOR >= 4)
#define S2DM_TORCH_DEVICE_TYPED_AUTOCAST 1
#else
#define S2DM_TORCH_DEVICE_TYPED_AUTOCAST 0
#endif

// Turns CUDA autocast on (with the given lower-precision dtype) or off for this thread.
inline void set_cuda_autocast(bool enabled, at::ScalarType dtype) {
#if S2DM_TORCH_DEVICE_TYPED_AUTOCAST
  at::autocast::set_autocast_enabled(at::kCUDA, enabled);
  at::autocast::set_autocast_dtype(at::kCUDA, dtype);
#else
  at::autocast::set_enabled(enabled);
  at::autocast::set_autocast_gpu_dtype(dtype);
#endif
  if (!enabled) at::autocast::clear_cache();
}

// RAII: autocast on for the scope when `enabled`.
class CudaAutocast {
 public:
  CudaAutocast(bool enabled, at::ScalarType dtype) : enabled_(enabled) {
    if (enabled_) set_cuda_autocast(true, dtype);
  }
  ~CudaAutocast() {
    if (enabled_) set_cuda_autocast(false, at::kBFloat16);
  }
  CudaAutocast(const CudaAutocast&) = delete;
  CudaAutocast& operator=(const CudaAutocast&) = delete;

 private:
  bool enabled_;
};

// The default random generator of a device (CPU or a CUDA device).
inline at::Generator default_generator(const torch::Device& device) {
  return at::globalContext().defaultGenerator(device);
}

// Single-head softmax attention over [B, N, C] tensors: softmax(q kᵀ / √C) v.
// LibTorch 2.x has a fused kernel (flash / memory-efficient on CUDA).
inline torch::Tensor attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v) {
#if TORCH_VERSION_MAJOR >= 2
  return at::scaled_dot_product_attention(q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1)).squeeze(1);
#else
  auto w = torch::bmm(q, k.transpose(1, 2)) * (1.0 / std::sqrt(static_cast<double>(q.size(2))));
  return torch::bmm(torch::softmax(w, -1), v);
#endif
}

// RAII: no TF32 in cuBLAS / cuDNN for the scope (feature extraction for FID must not depend
// on the GPU generation).
class NoTf32 {
 public:
  NoTf32()
      : cublas_(at::globalContext().allowTF32CuBLAS()), cudnn_(at::globalContext().allowTF32CuDNN()) {
    at::globalContext().setAllowTF32CuBLAS(false);
    at::globalContext().setAllowTF32CuDNN(false);
  }
  ~NoTf32() {
    at::globalContext().setAllowTF32CuBLAS(cublas_);
    at::globalContext().setAllowTF32CuDNN(cudnn_);
  }
  NoTf32(const NoTf32&) = delete;
  NoTf32& operator=(const NoTf32&) = delete;

 private:
  bool cublas_, cudnn_;
};

// Fused Adam/AdamW (one kernel over all parameters) on CPU and CUDA: in LibTorch from 2.4, used
// from 2.6, whose stride check accepts channels_last 1x1-convolution gradients.
#define S2DM_TORCH_FUSED_ADAM (TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 6))
inline constexpr bool kHasFusedAdam = S2DM_TORCH_FUSED_ADAM;

// One Adam (decoupled: AdamW) update of every parameter with PyTorch's fused kernel. `steps`
// holds each parameter's step count (already incremented), as float32 on its device.
inline void fused_adam(std::vector<torch::Tensor>& params, std::vector<torch::Tensor>& grads,
                       std::vector<torch::Tensor>& exp_avgs, std::vector<torch::Tensor>& exp_avg_sqs,
                       const std::vector<torch::Tensor>& steps, double lr, double beta1, double beta2,
                       double weight_decay, double eps, bool decoupled) {
#if S2DM_TORCH_FUSED_ADAM
  const std::vector<torch::Tensor> no_max_exp_avg_sqs;  // (amsgrad off)
  if (decoupled)
    at::_fused_adamw_(params, grads, exp_avgs, exp_avg_sqs, no_max_exp_avg_sqs, steps, lr, beta1, beta2,
                      weight_decay, eps, /*amsgrad=*/false, /*maximize=*/false);
  else
    at::_fused_adam_(params, grads, exp_avgs, exp_avg_sqs, no_max_exp_avg_sqs, steps, lr, beta1, beta2,
                     weight_decay, eps, /*amsgrad=*/false, /*maximize=*/false);
#else
  (void)params, (void)grads, (void)exp_avgs, (void)exp_avg_sqs, (void)steps, (void)lr, (void)beta1, (void)beta2,
      (void)weight_decay, (void)eps, (void)decoupled;
  TORCH_CHECK(false, "s2dm uses fused Adam from LibTorch 2.6 on");
#endif
}

// c10d's TCPStore: LibTorch 2.3 on defaults to a libuv server; s2dm uses the classic one, which
// every version has and which behaves the same on all of them. (A template: the c10d headers
// stay out of this one.)
template <class TCPStoreOptions>
void classic_tcp_store(TCPStoreOptions& options) {
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 3)
  options.useLibUV = false;
#else
  (void)options;
#endif
}

// Whether LibTorch may run float32 CPU convolutions through oneDNN ("mkldnn"). Debian 13's
// LibTorch 2.6 links oneDNN 3.6, which computes some of them wrongly: NaN or O(1) errors in the
// forward pass for 24 or 40 input channels, and NaN input gradients for other shapes that come
// and go with the stack's layout (a SongUNet training run failed in one launch of ~20, in most
// launches with ONEDNN_MAX_CPU_ISA=AVX2). LibTorch's own convolution (im2col and BLAS) is right
// on all of them; Debian 12's 1.13 links oneDNN 2.6, which is right, and keeps it.
inline constexpr bool kOneDnnConvolutionsAreRight = TORCH_VERSION_MAJOR < 2;

inline std::string torch_version() {
  return std::to_string(TORCH_VERSION_MAJOR) + "." + std::to_string(TORCH_VERSION_MINOR) + "." +
         std::to_string(TORCH_VERSION_PATCH);
}

}  // namespace s2dm::compat
