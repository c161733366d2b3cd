#pragma once
// An experiment's outputs: results.csv (one row per model × setting × seed), results.md (the
// papers' layout: one table per model, samplers as rows, steps as columns, mean ± spread over
// seeds, and the relative improvement over the baseline model), plots as PNG (metric vs NFE,
// training loss, learned schedules) and a self-contained report/index.html.
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "s2dm/experiment/experiment.h"

namespace s2dm::experiment {

struct ResultRow {
  std::string model;
  std::map<std::string, std::string> setting;  // the swept values
  std::string sampler;
  int steps = 0;
  uint64_t seed = 0;
  int64_t nfe = 0;
  std::string metric;                 // "FD[fmnist-cnn]", "FID[inception]"
  double value = 0;
  double kid_mean = -1, kid_std = -1; // -1 = not measured
  int64_t num_samples = 0;
  double sample_seconds = 0, metric_seconds = 0;
  std::string key;                    // the sample unit's key
  std::string grid_png;               // the unit's sample grid (absolute or relative to the cwd)
};

struct ReportInputs {
  std::vector<ResultRow> rows;
  std::map<std::string, std::string> training_metrics;  // model -> its metrics.jsonl
  std::map<std::string, std::string> schedule_plots;    // model -> learned schedule plot PNG
  std::vector<std::string> notes;                       // lines for the report's header
};

// Writes results.csv, results.md, plots/*.png and report/index.html under experiment.out.
void write_report(const Experiment& experiment, const ReportInputs& inputs);

// The outputs, separately (write_report calls them).
std::string results_csv(const std::vector<ResultRow>& rows);
std::string results_markdown(const Experiment& experiment, const std::vector<ResultRow>& rows);

}  // namespace s2dm::experiment
