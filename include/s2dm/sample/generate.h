#pragma once
// Producing samples from a model: the sampling plan, batching, the sampler, and
// the output files (numbered PNGs, samples.npz with arr_0 uint8 NHWC, grid.png, optionally
// float32 NCHW .npy).
#include <torch/types.h>

#include <functional>
#include <string>

#include "s2dm/core/config.h"
#include "s2dm/diffusion/diffusion_model.h"
#include "s2dm/sample/draw.h"
#include "s2dm/sample/samplers.h"

namespace s2dm::sample {

// The time grid the settings name: sample.timesteps, or for `auto` the sampler's default grid.
inline std::string time_grid(const SampleConfig& config) {
  return config.timesteps == "auto" ? find_sampler(config.sampler).default_grid : config.timesteps;
}

// Whether the settings ask for the model's own score-optimal grid ("learned"), which its source
// must provide (a checkpoint's state, an online estimate, or a schedule file the driver estimates).
inline bool uses_learned_grid(const SampleConfig& config) { return config.timesteps == "learned"; }
// Whether they ask for the model's dp grid for their sampler ("dp"): a schedule file the
// experiment driver searches (elsewhere: s2dm schedule --method dp, then learned:FILE).
inline bool uses_dp_grid(const SampleConfig& config) { return config.timesteps == "dp"; }

// How to sample: the settings of a config, resolved and checked (sampler name, its options, the
// time grid, the batch), so that a bad setting fails before any work.
struct SamplingPlan {
  const SamplerInfo* sampler = nullptr;
  SamplerOptions options;
  Grid grid;
  int64_t batch = 1;
  int class_label = -1;  // a class-conditional model's class for every image; -1: each image's own
  std::string warning;  // e.g. a named grid whose steps repeat timesteps (fewer distinct steps)
};
// The plan of `config` for `model` (its noise schedule, classes and own grids; its network is not
// needed). Time grids: timesteps.h's, "learned" and "dp" (from model.grids) and "learned:FILE" (a
// schedule file). The plan's grid refers to model.schedule: sample with the model it was made for.
SamplingPlan plan_sampling(const SampleConfig& config, const DiffusionModel& model);

struct Generated {
  torch::Tensor samples;  // float32 [N,C,H,W] on the CPU, not clipped
  int64_t nfe = 0;        // network evaluations per image
  double seconds = 0.0;
  bool complete = true;   // false when `stop` ended it early (samples then holds fewer images)
};

// Samples `draw` from `model` as `plan` says; a class-conditional model's images have their
// classes from the draw (initial_state) or the plan's class_label. `stop`, when given, is asked before every network
// evaluation whether to end early (the batch under way is dropped).
Generated generate(const DiffusionModel& model, const SamplingPlan& plan, const Draw& draw, bool show_progress = true,
                   const std::function<bool()>& stop = {});

// s2dm sample's output folder: numbered PNGs, samples.npz, grid.png and sample.yaml, its record
// (written before the images, marked incomplete, and again after them). check_sample_output throws
// UsageError, before any work, unless `dir` is new, holds none of those names, or holds an
// earlier output (s2dm's sample.yaml) and no numbered PNG of someone else's that `pngs` new images
// would replace; clear_sample_output then removes that output's images (the
// numbered PNGs its record counts, samples.npz, grid.png), so no stale image stays beside the new
// ones; the caller replaces the record.
void check_sample_output(const std::string& dir, int64_t pngs = 0);
void clear_sample_output(const std::string& dir);
// Whether a file name is one that s2dm sample writes into its output folder.
bool is_sample_output_name(const std::string& name);
// Writes numbered PNGs (when `pngs`), samples.npz and grid.png (first 64) into `dir`.
void write_samples(const std::string& dir, const torch::Tensor& samples, bool pngs = true);
// The images of a samples.npz (arr_0, uint8 NHWC with 1 or 3 channels) as uint8 NCHW.
// Throws DataError naming the file.
torch::Tensor read_samples_npz(const std::string& path);
// A grid PNG of up to 64 samples.
void write_grid(const std::string& path, const torch::Tensor& samples);

}  // namespace s2dm::sample
