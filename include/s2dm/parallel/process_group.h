#pragma once
// Data-parallel training over processes on PyTorch's c10d: where a process stands in its group
// (the environment torchrun, srun or `s2dm train --nproc` give it), the process group (Gloo on
// CPUs, NCCL on GPUs) and the collectives training needs. The c10d headers stay in
// process_group.cpp.
#include <torch/types.h>

#include <chrono>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace s2dm::parallel {

// This process's place in its group.
struct Launch {
  int rank = 0, world_size = 1, local_rank = 0, local_world_size = 1;
  std::string master_addr;  // the store's host
  int master_port = 0;
  bool launcher_store = false;  // the launcher serves the store (s2dm train --nproc), not rank 0
};

// The group described by torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE,
// MASTER_ADDR, MASTER_PORT) or SLURM's (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, with
// MASTER_ADDR/MASTER_PORT); nullopt when neither describes one. Throws ConfigError naming the
// variable that is missing or bad.
std::optional<Launch> launch_from_environment();

// The backends this LibTorch build offers: "gloo", and "nccl" in CUDA builds with NCCL.
std::vector<std::string> available_backends();

// A peer rank died or fell silent past the timeout (exit code 1, not a user error).
struct PeerLost : std::runtime_error {
  using std::runtime_error::runtime_error;
};

class ProcessGroup {
 public:
  // One process alone: rank 0 of 1, whose collectives leave their tensors as they are (as EDM's
  // dist helpers do), so that training reads the same for one process and for N ranks.
  ProcessGroup();
  // Connects to the store at MASTER_ADDR:MASTER_PORT (rank 0 serves it unless the launcher does)
  // and builds `backend` ("gloo" | "nccl") over it. A port in use, an unreachable address or a
  // backend this build lacks is a ConfigError naming the variable or the key.
  ProcessGroup(const Launch& launch, const std::string& backend, std::chrono::milliseconds timeout);
  ~ProcessGroup();
  ProcessGroup(const ProcessGroup&) = delete;
  ProcessGroup& operator=(const ProcessGroup&) = delete;

  // Whether this process was launched as a rank of a c10d group (of one rank too): such a run
  // splits its batches, averages its gradients and reports its group in logs and metrics.
  bool launched() const { return impl_ != nullptr; }
  int rank() const;
  int size() const;
  int local_rank() const;
  int local_size() const;  // ranks on this machine
  const std::string& backend() const;  // "gloo", "nccl"; "none" alone

  // Each tensor summed over the ranks, in place; every all-reduce is issued before any is awaited.
  void all_reduce_sum(std::vector<torch::Tensor>& tensors);
  // Rank `root`'s tensors copied into every rank's, in place.
  void broadcast(std::vector<torch::Tensor>& tensors, int root = 0);
  // Every rank's `tensor` (the same shape on each), stacked in rank order.
  torch::Tensor all_gather(const torch::Tensor& tensor);
  // Waits, on the host, until every rank has called it (at once for one rank), for up to `timeout` (not the group's):
  // for one rank's long work (a checkpoint, FD). Through the store, because the backends' barriers
  // keep the group's timeout whatever they are given (Gloo's runs under its context's timeout,
  // NCCL's is an all-reduce under the watchdog's). A rank whose store host dies is told at once.
  void wait_for_all(std::chrono::milliseconds timeout);
  // Throws ConfigError unless every rank gives the same `value` for `what` (compared through
  // the store, so ranks with different configs stop before their first collective).
  void check_same(const std::string& what, const std::string& value);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// The mean of every rank's gradients, as DistributedDataParallel computes it: the parameters'
// gradients flattened into buckets of about `bucket_bytes`, each bucket all-reduced (sum) and
// scaled by 1/world size, then copied back.
class GradientAverager {
 public:
  GradientAverager(ProcessGroup& group, std::vector<torch::Tensor> params, int64_t bucket_bytes);
  void average();
  // Seconds the last average() took on the host (copies and communication; on a GPU, where NCCL
  // runs asynchronously, the time to issue them).
  double last_seconds() const { return last_seconds_; }

 private:
  struct Bucket {
    std::vector<size_t> params;  // indices into params_
    torch::Tensor flat;
  };
  ProcessGroup& group_;
  std::vector<torch::Tensor> params_;
  std::vector<Bucket> buckets_;
  double last_seconds_ = 0;
};

}  // namespace s2dm::parallel
