#pragma once
// An experiment's outputs: results.csv (one row per model × setting × seed), results.md (the
// papers' layout: one table per model, samplers as rows, steps as columns, mean ± spread over
// seeds, and the relative improvement over the baseline model), plots as PNG (metric vs NFE,
// training loss, learned schedules) and a self-contained report/index.html.
#include <cstdint>
#include <map>
#include <string>
#include <vector>


namespace s2dm::experiment {

// What a report says about its experiment.
struct ReportSpec {
  std::string name;                   // the experiment's
  std::string path;                   // its file
  std::string out;                    // the output folder
  std::string baseline;               // the model others are compared with (may be empty)
  std::string table_rows = "sampler"; // what the tables' rows are: sampler or a swept key
  std::string reference;              // the metric's reference (train, test or a statistics file)
  size_t num_seeds = 1;
};

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
  double reference_rms = -1;          // RMS against the reference solution (metric.reference_error); -1 = none
  int64_t num_samples = 0;
  double sample_seconds = 0, metric_seconds = 0;
  std::string key;                    // the sample unit's key
  std::string grid_png;               // the unit's sample grid (absolute or relative to the cwd)
};

struct ReportInputs {
  std::vector<ResultRow> rows;
  std::map<std::string, std::string> training_metrics;  // model -> its metrics.jsonl
  std::map<std::string, std::string> grid_plots;    // "model: method" -> its grid file's plot PNG
  std::map<std::string, std::string> tuning_plots;      // "model | setting" -> its Skip-Tuning search curve PNG
  std::vector<std::string> notes;                       // lines for the report's header
};

// Writes results.csv, results.md, plots/*.png and report/index.html under spec.out.
void write_report(const ReportSpec& spec, const ReportInputs& inputs);

// The outputs, separately (write_report calls them).
std::string results_csv(const std::vector<ResultRow>& rows);
std::string results_markdown(const ReportSpec& spec, const std::vector<ResultRow>& rows);

}  // namespace s2dm::experiment
