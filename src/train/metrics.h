#pragma once
// What a training run logs (private to src/train/): the sums behind each metrics.jsonl line, the
// training-time evaluation (FD and KID of EMA samples), and the log cut back to a resumed step.
#include <nlohmann/json.hpp>
#include <torch/types.h>

#include <chrono>
#include <string>
#include <vector>

#include "s2dm/core/config.h"
#include "s2dm/diffusion/losses.h"
#include "s2dm/eval/fid.h"
#include "s2dm/parallel/process_group.h"
#include "s2dm/sample/generate.h"

namespace s2dm::train {

// Keeps metrics.jsonl consistent with a resumed step: drops lines written after it.
void truncate_metrics(const std::string& path, int64_t step);

// The logged quantities summed over the steps since the last log line, on the device: the
// loop reads them (one host sync) only to log or before a checkpoint, never per micro-batch.
// Under data parallelism each rank sums its own rows; reading all-reduces the sums, so every
// rank reads the same (global) values at the same steps.
class IntervalSums {
 public:
  IntervalSums(const torch::Device& device, parallel::ProcessGroup& group);
  void add_micro_batch(const diffusion::LossTerms& terms, int grad_accum);
  // `allreduce_seconds`: the step's gradient averaging over the ranks (0 for one process).
  void add_step(const torch::Tensor& grad_norm, double allreduce_seconds);
  // A diverged loss never reaches a checkpoint: throws when any step since the last log line
  // had a NaN or infinite loss.
  void check_finite(int64_t step, const std::string& run_dir) const;
  // The metrics line of the interval ending at `step` (means per step); starts the next interval.
  nlohmann::ordered_json take_line(int64_t step, double lr, int64_t images_per_step, const std::string& run_dir);

 private:
  // The sums over the ranks, host-side: the loss and the batch-mean terms (means over the
  // ranks) first, then each other term's sum and count.
  std::vector<double> totals() const;
  size_t mean_terms() const;  // how many of the loss's terms are batch means
  void reset();
  void reset_terms();

  // A loss's logged term, summed over the interval (diffusion::LoggedTerm says how it is read).
  struct Sum {
    std::string name;
    bool batch_mean;
    torch::Tensor value, count;
  };

  torch::Device device_;
  parallel::ProcessGroup& group_;
  torch::Tensor loss_, grad_norm_;
  std::vector<Sum> terms_;  // the loss's terms, in its order (known from its first micro-batch)
  double allreduce_seconds_ = 0;
  int64_t steps_ = 0;
  std::chrono::steady_clock::time_point start_;
};

// FID/FD and KID of EMA samples against the training data, in the configured feature space
// (train.eval_every): the reference features are computed once.
class TrainingEvaluation {
 public:
  TrainingEvaluation(const TrainConfig& tc, const torch::Tensor& data_images, const torch::Device& device);
  // The metrics line of `generated` (samples of the EMA model) at `step`.
  nlohmann::ordered_json measure(const sample::Generated& generated, int64_t step) const;
  int num() const { return num_; }

 private:
  static constexpr int64_t kBatch = 250;
  int num_;
  torch::Device device_;
  eval::FeatureExtractor extractor_;
  eval::FeatureSet reference_;
};

}  // namespace s2dm::train
