#pragma once
// The training loop's run (private to src/train/): train.cpp defines it, run_training.cpp starts it.
#include <nlohmann/json.hpp>
#include <torch/types.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "metrics.h"
#include "s2dm/core/config.h"
#include "s2dm/core/errors.h"
#include "s2dm/core/stop_signals.h"
#include "s2dm/data/data.h"
#include "s2dm/diffusion/losses.h"
#include "s2dm/diffusion/noise_schedule.h"
#include "s2dm/diffusion/psld.h"
#include "s2dm/io/checkpoint.h"
#include "s2dm/model/model_source.h"
#include "s2dm/parallel/process_group.h"
#include "s2dm/sample/generate.h"
#include "s2dm/sample/score_grid.h"
#include "s2dm/optim/optim.h"
#include "s2dm/train/train.h"

namespace s2dm::train {

// A training run: the networks, the optimiser, the data and the loop's steps, each a method.
// With a process group (data parallelism) every rank runs the same loop on its rows of each
// batch; rank 0 alone writes the run directory.
class Trainer {
 public:
  Trainer(Config config, std::string run_dir, bool resuming, parallel::ProcessGroup& group);
  Trainer(const Trainer&) = delete;  // (members refer to each other)
  Trainer& operator=(const Trainer&) = delete;
  // Continues from a checkpoint of this run (weights, optimiser, RNG, data position, schedule).
  void resume(Checkpoint ckpt);
  TrainResult run();
  std::string config_yaml() const { return to_yaml(config_); }
  int64_t step() const { return step_; }

 private:
  void synchronise_weights();
  struct Stop {
    bool signalled = false;    // SIGINT/SIGTERM on some rank
    bool out_of_time = false;  // train.max_minutes spent on some rank
  };
  Stop stop_agreed() const;
  std::vector<bool> on_some_rank(std::vector<bool> flags) const;
  double training_seconds() const;
  void check_weights_agree();
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& noise, int micro);
  diffusion::LossTerms loss_terms(const torch::Tensor& x0, int micro);
  void optimiser_step();
  void update_online_grid();
  void write_log_line();
  void save();
  void write_checkpoint();
  sample::Generated ema_samples(uint64_t seed, int64_t num) const;
  void wait_for_rank0();
  void sample_grid();
  void evaluate();
  void settle_owed();
  // A line that cannot be appended (a full disk) stops the run: the log would otherwise end
  // silently while training went on.
  void metrics_line(const nlohmann::ordered_json& line) {
    if (!writes_) return;
    metrics_ << line.dump() << "\n" << std::flush;
    if (!metrics_) throw IoError(run_dir_ + "/metrics.jsonl: cannot append (" + std::strerror(errno) + ")");
  }

  const Config config_;
  const TrainConfig& tc_ = config_.train;
  const std::string run_dir_;
  parallel::ProcessGroup& group_;    // one process alone: a group of one whose collectives do nothing
  const bool writes_;                // rank 0 (or the only process) writes the run directory
  const bool resuming_;
  diffusion::Rows rows_;             // this rank's rows of each micro-batch
  std::unique_ptr<parallel::GradientAverager> averager_;
  torch::Device device_{torch::kCPU};
  bool autocast_ = false;
  data::ImageSet dataset_;
  std::unique_ptr<data::Batcher> batcher_;
  model::Network net_, ema_;          // (model.type's network)
  std::vector<torch::Tensor> params_;  // net_'s, for clipping
  std::unique_ptr<optim::Adam> adam_;
  NoiseSchedule schedule_;
  std::unique_ptr<sample::OnlineGridEstimator> online_;
  std::unique_ptr<diffusion::DiffusionLoss> loss_;            // DDPM's UNet: L_simple or L_skip
  std::unique_ptr<diffusion::DenoiserLoss> denoiser_loss_;    // EDM's networks
  std::unique_ptr<HsmLoss> hsm_loss_;                         // PSLD
  std::optional<TrainingEvaluation> evaluation_;
  std::ofstream metrics_;
  std::unique_ptr<IntervalSums> sums_;
  int64_t step_ = 0;
  double seconds_before_ = 0;  // training time of the runs this one resumes
  std::chrono::steady_clock::time_point clock_start_ = std::chrono::steady_clock::now();
  double lr_ = 0;
  torch::Tensor last_x0_;
  std::string logged_loss_;
  std::optional<StopSignals> signals_;  // SIGINT/SIGTERM while run() trains
  // The work beside training that the current step still owes: set when the step is done, cleared
  // as each is done. A signal that interrupts it leaves it owed in the checkpoint, and a resumed
  // run does it first, so its metrics are an uninterrupted run's.
  struct Owed {
    bool grid = false, evaluation = false;
  } owed_;
};

}  // namespace s2dm::train
