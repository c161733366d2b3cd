#pragma once
// Grid files (schedule.yaml): what `s2dm schedule` writes (the S-step time grids of a model's
// score-optimal or solver-aware dp grid search, with the curve they came from) and a plot beside each. Read back by
// timesteps "learned:FILE" and by the experiment driver.
#include <torch/types.h>

#include <map>
#include <string>
#include <vector>

#include "s2dm/data/data.h"
#include "s2dm/diffusion/diffusion_model.h"
#include "s2dm/sample/dp_grid.h"
#include "s2dm/sample/score_grid.h"

namespace s2dm::sample {

// A grid file's contents. Every grid holds S evaluation times from T-1 down to 0 (a PSLD
// model's: times from 1 down to t_end); the sampler's end step follows, as on every other grid.
struct GridFile {
  std::string method = "score";                  // score (Williams et al.) | dp (solver-aware)
  std::string process = "vp";                    // the model's: vp (timestep indices) | psld (times)
  std::string sampler;                           // dp: the sampler the grids were searched for,
  int order = -1;                                //     and its order (-1: the sampler's default)
  int64_t nfe = 0;                               // network evaluations spent
  std::map<int, std::vector<double>> timesteps;  // S -> its grid
  std::vector<double> levels, cost;  // score: cost between neighbouring levels; dp: error of one-level jumps
  std::map<int, double> end_error;   // dp: the sampler's RMS end-point error on each grid (held out)
  std::map<std::string, std::string> settings;  // dp: dp_search_settings of the search
  std::string origin;                // the file read, for messages

  // dp: how `sampling` differs from the settings the grids were searched for ("" when it does
  // not), e.g. "lambda 0.5 there, 0 here".
  std::string settings_mismatch(const SampleConfig& sampling) const;

  // The grid for S steps. Throws ConfigError naming the file when it holds none.
  std::vector<double> grid(int steps) const;
  // Throws ConfigError unless the grids are in `model`'s time (a VP model's or a PSLD model's).
  void check_model(const DiffusionModel& model) const;
  // "score" or e.g. "dp for deis (order 3)", for messages.
  std::string description() const;
};

// schedule.yaml, read back by --timesteps learned:FILE.
void write_grid_file(const std::string& path, const GridFile& file, int num_timesteps);
// Throws ConfigError when the file is not a grid file, was made for another T, or by an s2dm
// whose grids stopped short of t = 0 (before format 2).
GridFile read_grid_file(const std::string& path, int num_timesteps);

// What `s2dm schedule` does: the cost on `num_levels` levels, averaged over `num` images drawn
// (by `seed`) from `data` (uint8 NCHW; a class-conditional model needs their labels, its classes),
// the grids for each S in `steps`, written as `out` (schedule.yaml) with a plot beside it
// (<stem>.png: the cost curve, then the learned grid of the first S against the uniform and
// quadratic grids). Returns the cost.
ScoreGridCost make_score_grid_file(const DiffusionModel& model, const data::ImageSet& data, int num_levels, int64_t num,
                                   uint64_t seed, int64_t batch, const std::vector<int>& steps, const std::string& out);
// What `s2dm schedule --method dp` does: search_dp_grids for `sampling` (sampler, order, end point),
// written as `out` with a plot beside it (the one-level jump error, then the dp grid of the first
// S against the uniform and quadratic grids).
GridFile make_dp_grid_file(const DiffusionModel& model, const SampleConfig& sampling, const std::vector<int>& steps,
                           const DpSearchOptions& options, const std::string& out);
// The plot path beside a grid file.
std::string grid_plot_path(const std::string& grid_file);

}  // namespace s2dm::sample
