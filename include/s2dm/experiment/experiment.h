#pragma once
// The experiment driver: one YAML file names models (train configs to train, or checkpoints),
// a sweep of sampling settings, a metric and seeds; `s2dm run` trains what is missing, samples
// and measures every model × setting × seed, reuses whatever an earlier run finished (each unit
// is keyed by a hash of everything that determines its result), and writes results.csv,
// results.md, plots and report/index.html (report.h).
#include <cstdint>
#include <functional>
#include <algorithm>
#include <map>
#include <string>
#include <vector>

#include "s2dm/core/config.h"
#include "s2dm/sample/dp_grid.h"

namespace s2dm::experiment {

struct ModelSpec {
  std::string name;
  std::string train_config;        // a train config to train (resolved path) ...
  std::vector<std::string> set;    // ... with these overrides ("section.key=value")
  std::string checkpoint;          // ... or a checkpoint to load
  bool ema = true;                 // sample with the EMA weights of a checkpoint
  std::string weights;             // ... or safetensors weights (a converted EDM network, ...)
  std::string weights_config;      //     with their config
  Config config;                   // the resolved config (training settings, shape, schedule)
  std::string key;                 // hash of what determines the weights
  int line = 0;                    // where it is declared

  // Where the weights come from, for messages and the report: "checkpoint PATH", "weights PATH".
  std::string origin() const;
};

// One point of the sweep: the sample settings that differ from the experiment's base, by key.
struct Setting {
  std::map<std::string, std::string> values;  // "sampler" -> "ddim", "steps" -> "10", ...
  // The models it samples (its sweep block's `models`; empty: every model), e.g. a PSLD sampler's
  // setting for the PSLD models of an experiment that compares them with VP ones.
  std::vector<std::string> models;
  std::string label() const;                  // "sampler=ddim steps=10"
  bool applies_to(const std::string& model) const {
    return models.empty() || std::find(models.begin(), models.end(), model) != models.end();
  }
};

// Beside the metric, each unit's error against a high-accuracy solution of its model's
// probability-flow ODE from the same initial noise: the RMS per pixel (data scale [-1, 1], both
// clipped to it) of the unit's first `samples` images. It measures the sampler and grid alone,
// blind to what a feature space does not see; stochastic samplers have none. 0 samples: off.
struct ReferenceErrorSpec {
  int64_t samples = 0;
  std::string sampler = "auto";    // auto: dpmpp-2m for VP models, rse for PSLD's
  int steps = 500;
  std::string timesteps = "auto";  // a named grid (auto: the sampler's own)
  bool enabled() const { return samples > 0; }
};

struct MetricSpec {
  std::string features = "inception";  // inception[:W] | classifier | classifier:PATH
  int64_t num_samples = 10000;
  std::string reference = "train";     // train | test | a statistics .npz
  int64_t reference_num = 50000;       // data images behind the reference (train/test)
  bool kid = false;
  int64_t batch = 100;                 // feature-extraction batch
  int classifier_epochs = 2;           // for features: classifier (trained on the data)
  ReferenceErrorSpec reference_error;
};

// The time-grid searches run on each model (the experiment file's `schedule` section, s2dm
// schedule's settings): score-optimal grids for timesteps "learned", dp grids for timesteps "dp".
struct GridSearchSpec {
  int levels = 100;
  int64_t samples = 256;
  int64_t batch = 64;
  uint64_t seed = 0;
  struct DpSpec {  // (defaults: sample::DpSearchOptions's)
    int levels = sample::DpSearchOptions{}.levels;        // candidate levels
    int64_t samples = sample::DpSearchOptions{}.samples;  // reference trajectories
    int sweeps = sample::DpSearchOptions{}.sweeps;        // coordinate-search rounds (-1: the sampler's default)
  } dp;                                                   // (batch and seed are the ones above)
};

// The Skip-Tuning search for settings with `skip_tuning: tuned` (Ma et al. 2024): ρ_bottom is
// searched in [lo, hi] (ρ_top fixed) on a cheap proxy, the Fréchet distance of `proxy_samples`
// samples in the metric's feature space with the same initial noise for every candidate; the
// winner is then measured like any unit, on the full metric.
struct TuneSkipSpec {
  std::vector<double> range{0.0, 1.0};  // [lo, hi] of ρ_bottom (the deepest skip off .. untouched)
  double lo() const { return range.at(0); }
  double hi() const { return range.at(1); }
  int points = 11;             // an even grid over the range first ...
  int refine = 3;              // ... then this many halvings of the spacing around the best
  double rho_top = 1.0;
  int64_t proxy_samples = 256;
  uint64_t seed = 12345;       // the proxy's initial noise
};

struct TableSpec {
  std::string rows = "sampler";  // what the tables' rows are: sampler or a swept key
};

struct Experiment {
  std::string path;             // the experiment file
  std::string name;
  std::string out;              // output directory (default runs/<name>)
  std::string device = "auto";
  int threads = 0;
  std::vector<uint64_t> seeds{0};
  std::vector<ModelSpec> models;
  std::string baseline;         // the model the others are compared with (may be empty)
  std::map<std::string, std::string> sample;  // fixed sample.* settings (YAML text per key)
  std::vector<Setting> settings;              // the sweep, expanded
  std::vector<std::string> sweep_keys;        // the swept keys, in file order
  MetricSpec metric;
  GridSearchSpec grid_search;  // (the file's `schedule` section)
  TuneSkipSpec tune_skip;
  TableSpec table;
};

// Reads and checks an experiment file: unknown keys, missing train configs or checkpoints,
// invalid sampler settings for any model (each setting is resolved against each model's
// config) and inconsistent choices fail here, before any work, with the file and line.
Experiment load_experiment(const std::string& path);

// The sample config of `model` at `setting`: the model's config, the experiment's fixed sample
// settings, then the setting's values. Throws ConfigError naming the experiment file.
SampleConfig sample_config(const Experiment& experiment, const ModelSpec& model, const Setting& setting);

// The sample config of `model`'s reference solution (metric.reference_error): the experiment's
// fixed settings for the batch and class, the reference's sampler, steps and grid with its default
// options, and no Skip-Tuning (the error is measured against the model's own ODE).
SampleConfig reference_solution_config(const Experiment& experiment, const ModelSpec& model);

// Whether a setting asks for the Skip-Tuning search (skip_tuning: tuned, swept or fixed).
bool tunes_skips(const Experiment& experiment, const Setting& setting);

// The minimum of f on [lo, hi]: f at `points` even points, then `refine` rounds that try the
// midpoints on either side of the best so far. Returns every (x, f(x)) tried, sorted by x.
std::vector<std::pair<double, double>> search_minimum(const std::function<double(double)>& f, double lo, double hi,
                                                     int points, int refine);

struct RunOptions {
  bool dry_run = false;               // print the plan and the estimate, do nothing
  std::vector<std::string> only;      // model names to run (empty = all)
};

struct RunSummary {
  int units_total = 0, units_done_before = 0, units_run = 0;
  int models_trained = 0;
  bool interrupted = false;
};

// Runs (or, with dry_run, plans) the experiment; writes the outputs of whatever is finished.
RunSummary run_experiment(const Experiment& experiment, const RunOptions& options);

// 16 hex digits of a 64-bit FNV-1a hash: the key of a unit's inputs.
std::string hash_key(const std::string& text);

}  // namespace s2dm::experiment
