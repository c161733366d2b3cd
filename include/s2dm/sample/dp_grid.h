#pragma once
// Solver-aware optimal time grids ("dp"), after the trajectory-regularity line of work (GITS,
// Chen et al. 2024; docs/algorithms.md §5): for one sampler, the grid of S network evaluations
// whose steps make the least error against the model's own trajectories.
//
//  1. Reference trajectories: x_T ~ N(0, I), from a noise stream of the search's own (not the
//     images that sampling with the same seed draws, on which the grid is later measured),
//     integrated from T-1 to the end point by a third-order multistep solver on a fine grid that
//     contains every candidate level, keeping the state at each candidate. (PSLD models: z from
//     the prior, times from 1 to t_end, then the denoising step; the exponential integrator with
//     4x the substeps, PSLD's samplers being first order.)
//  2. The cost of a jump i → j between candidates: the RMS error of the sampler's own step from
//     the reference state at i (its first step: for λ-DDIM λ-DDIM's, for multistep samplers
//     their first-order start; DDIM's for samplers whose step evaluates the network elsewhere)
//     against the reference state at j.
//  3. Dynamic programming: the path of S-1 jumps from T-1 to 0 with the least total cost; the
//     sampler's end step from t = 0 follows, as on every grid.
//  4. Multistep samplers use ε from earlier grid points, and PSLD's dynamics carry a step's error
//     on and turn it, which a pairwise cost cannot see: `sweeps` rounds of coordinate search then move single grid points among the candidates,
//     keeping a move when the full sampler's end-point error against the reference falls (real
//     network evaluations on `search_samples` trajectories).
//  5. The end-point error reported for each grid is measured on `holdout` further trajectories
//     that neither the costs nor the search saw.
#include <torch/types.h>

#include <map>
#include <string>
#include <vector>

#include "s2dm/core/config.h"
#include "s2dm/diffusion/diffusion_model.h"

namespace s2dm::sample {

struct DpSearchOptions {
  int levels = 100;             // candidate times asked for (dp_candidate_levels keeps at most levels - 2)
  int substeps = 4;             // reference solver steps per candidate interval
  int64_t samples = 64;         // reference trajectories for the jump costs
  int64_t search_samples = 32;  // of them, the ones the coordinate search runs the sampler on
  int64_t holdout = 16;         // further trajectories, for the end-point error reported
  int sweeps = -1;              // coordinate-search rounds; -1: 2 for multistep and PSLD samplers, 0 for the others
  int64_t batch = 64;           // network batch
  uint64_t seed = 0;            // the reference noise's stream
  bool show_progress = true;
};

struct DpGrids {
  std::vector<double> levels;          // the candidates, increasing from 0 to T-1 (PSLD: from t_end to 1)
  std::vector<double> step_error;      // the cost of each one-level jump (levels - 1 values)
  std::map<int, std::vector<double>> grids;        // S → S evaluation times, T-1 ... 0 (PSLD: 1 ... t_end)
  std::map<int, double> end_error;     // S → the sampler's RMS end-point error on the grid (held-out trajectories)
  int64_t nfe = 0;                     // network evaluations spent
};

// The candidate levels: at most `count` - 2 increasing times from 0 to T-1, half uniform in t and
// half uniform in log-SNR (dense where the noise is small; the two halves share both ends),
// merged and kept at least 0.25 apart.
std::vector<double> dp_candidate_levels(const NoiseSchedule& schedule, int count);
// A model's candidates: a VP model's as above; a PSLD model's from t_end to 1, half uniform in t
// and half spaced as its logsnr grid.
std::vector<double> dp_candidate_levels(const DiffusionModel& model, int count);

// The most steps a dp grid over `levels` requested candidates can have: one evaluation per
// candidate kept. Check a step count against it before any work.
int dp_max_steps(const DiffusionModel& model, int levels);

// The cheapest path of `jumps` jumps from the last candidate to the first, where cost[i][j]
// (i > j) is the cost of jumping from candidate i to candidate j. Returns candidate indices,
// decreasing. Throws ConfigError when jumps is not in [1, candidates - 1].
std::vector<int> cheapest_path(const std::vector<std::vector<double>>& cost, int jumps);

// The sample settings a dp search depends on, resolved, as text by key: the sampler, its order
// (the default spelled out), every option it reads, the end point and Skip-Tuning (which changes
// the model). A dp file records them; using it with other settings warns, naming the keys.
std::map<std::string, std::string> dp_search_settings(const SampleConfig& sampling);

// The dp grids of `model` for `sampling` (its sampler, order and end point; deterministic samplers
// only, else ConfigError) for each S in `steps`.
DpGrids search_dp_grids(const DiffusionModel& model, const SampleConfig& sampling, const std::vector<int>& steps,
                        const DpSearchOptions& options);

}  // namespace s2dm::sample
