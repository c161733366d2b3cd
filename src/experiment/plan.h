#pragma once
// The experiment driver's plan (internal to src/experiment): the units (model × setting × seed)
// with the keys that identify their results, the state of each model's training, and the
// measurer (feature space + reference statistics) they share.
#include <torch/types.h>

#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "s2dm/diffusion/diffusion_model.h"
#include "s2dm/eval/fid.h"
#include "s2dm/experiment/experiment.h"
#include "s2dm/model/model_source.h"

namespace s2dm::experiment {

// What determines a model's weights, without the settings that do not (name, device, threads,
// the sample section, train.distributed.*, which changes at most the order of float sums, and
// the time budget train.max_minutes): a changed timeout keeps the model, a raised budget resumes
// it (its units, keyed on the budget too, are sampled again).
std::string training_identity(Config config);
// The settings training_identity leaves out that a resumed run takes from the experiment rather
// than from its checkpoint, as --set overrides.
std::vector<std::string> untracked_training_settings(const Config& config);
// A file's path, size and modification time: what a key depends on when it names a file.
std::string file_identity(const std::string& path);

struct Unit {
  const ModelSpec* model = nullptr;
  const Setting* setting = nullptr;
  uint64_t seed = 0;
  SampleConfig config;
  std::string key, metric_key, dir;
  int64_t nfe = 0;
  bool has_samples = false, has_metric = false;
  std::string tuning_file;  // skip_tuning: tuned: the Skip-Tuning search's result (shared by the seeds)
  std::string metric_file() const { return dir + "/metric-" + metric_key + ".json"; }
};

// The state of a train model's run directory.
struct TrainState {
  std::string run_dir;
  int64_t step = -1;      // -1: nothing usable
  std::string checkpoint;  // the newest checkpoint that loads
  bool matches = false;   // the checkpoint was trained with this config
  int64_t target = 0;      // the steps wanted
  bool budget_spent = false;  // the wanted train.max_minutes was spent by the checkpoint's step
  // Trained to the steps wanted, or as far as the time budget allowed (a finished run).
  bool trained() const { return matches && (step == target || budget_spent); }
  bool resumable() const { return matches && step >= 0 && !trained(); }
};

std::string model_dir(const Experiment& e, const ModelSpec& m);

// The metric's feature space and reference statistics (cached under the output folder), loaded
// when first needed.
class Measurer {
 public:
  Measurer(const Experiment& e, torch::Device device);
  // What a metric value depends on besides the samples: the feature space ...
  const std::string& identity() const { return identity_; }
  // ... and the reference of a model.
  std::string reference_identity(const ModelSpec& m) const;
  const eval::FeatureExtractor& extractor();
  const eval::FeatureSet& reference(const ModelSpec& m);

 private:
  const Experiment& e_;
  torch::Device device_;
  std::string identity_, classifier_;
  eval::FeatureExtractor extractor_;
  std::map<std::string, eval::FeatureSet> references_;
};

// metric.reference_error: each model's reference solutions (the first images of a seed, sampled
// once and kept under reference_solutions/) and a unit's error against them.
class ReferenceErrors {
 public:
  explicit ReferenceErrors(const Experiment& e) : e_(e) {}
  // What a unit's error depends on besides its samples ("" when it is off).
  std::string identity(const ModelSpec& m) const;
  // Whether the unit has an error to measure: it is on, and the unit's sampler is deterministic.
  bool measures(const Unit& u) const;
  // The RMS per pixel, both clipped to [-1, 1], between `head` (the unit's first images, float) and
  // the reference solution from the same noise, sampled when it is missing by the unit's `model`
  // with `loaded`'s float32 ε-model without Skip-Tuning. Nothing when `stop` ended that sampling.
  std::optional<double> rms(const Unit& u, const torch::Tensor& head, const DiffusionModel& model,
                            const model::LoadedModel& loaded, const std::function<bool()>& stop) const;

 private:
  const Experiment& e_;
};

struct ExperimentPlan {
  std::vector<Unit> units;
  std::map<std::string, TrainState> states;  // by model name, for the models to train
};
// Every unit of the experiment, keyed, with what an earlier run left of it, and the state of each
// train model's run. (A unit's metric key names the reference error only where it measures one.)
ExperimentPlan plan_units(const Experiment& e, const Measurer& measurer, const ReferenceErrors& errors);
// Prints the plan and a rough time estimate (one timed network evaluation per model).
// `selected` says which models run (--only).
RunSummary show_plan(const Experiment& e, const ExperimentPlan& plan, const torch::Device& device,
                     const std::function<bool(const ModelSpec&)>& selected);

// The file each unit's learned or dp grid comes from: the model's score-optimal schedule, or its
// dp grids for the unit's sampler settings, for every step count of the units that share it
// (found once, kept under schedules/). Empty for grids that need no file.
struct GridFile {
  std::string path;
  std::vector<int> steps;
};
std::vector<GridFile> grid_files(const Experiment& e, const std::vector<Unit>& units);

}  // namespace s2dm::experiment
