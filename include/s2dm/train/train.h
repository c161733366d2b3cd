#pragma once
// The training loop: L_simple [+ L_skip], Adam/AdamW with warm-up and clipping, gradient
// accumulation, EMA, checkpoints (periodic, final, and on SIGINT/SIGTERM), metrics and
// sample grids, into a run directory (docs/design.md). Resuming continues bit-identically on CPU.
#include <cstdint>
#include <string>
#include <vector>

#include "s2dm/core/config.h"
#include "s2dm/train/run_directory.h"

namespace s2dm::train {

struct TrainOptions {
  std::string run_dir;             // empty = runs/<config.name>
  bool resume = false;             // continue from the run directory's newest checkpoint that loads
  bool overwrite = false;          // replace what s2dm wrote in an existing run directory
  int64_t steps = -1;              // overrides train.steps (also on resume)
  std::vector<std::string> overrides;  // --set values, applied on resume too
};

struct TrainResult {
  std::string run_dir;
  int64_t step = 0;
  bool interrupted = false;  // stopped by a signal (a checkpoint was written)
  int rank = 0;              // this process's rank in a data-parallel group (0 when alone)
};

// `config` is ignored on resume (the run directory's checkpoint carries the config).
TrainResult run_training(const Config& config, const TrainOptions& options);

// Throws ConfigError, naming `origin`, for a config s2dm cannot train: a loss that does not suit
// the network (EDM's networks train with loss.type edm, the DDPM UNet with simple or s2dm),
// iDDPM's preconditioning (EDM defines no loss for it), class labels or augmentation inputs.
void check_trainable(const Config& config, const std::string& origin);

}  // namespace s2dm::train
