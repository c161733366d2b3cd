#pragma once
// Time grids: which timesteps a sampler visits. Each function returns a strictly decreasing
// list in timestep-index units (T-1 ... 0), duplicates removed (with a warning).
#include <string>
#include <vector>

#include "s2dm/noise_schedule.h"

namespace s2dm::sample {

// `grid` is one of uniform | quad | linspace | trailing | leading (papers.md §3).
// Throws ConfigError for an unknown grid or steps outside [1, T].
std::vector<double> make_timesteps(const std::string& grid, int steps, int num_timesteps);

// The names make_timesteps accepts.
const std::vector<std::string>& timestep_grids();

// What a sampler steps through: the times, and ᾱ at each time plus ᾱ after the last step
// (1 for final_alpha "one", ᾱ_0 for "first").
struct Grid {
  std::vector<double> t;           // S decreasing times
  std::vector<double> alpha_bar;   // S+1 values
  int steps() const { return static_cast<int>(t.size()); }
};
Grid make_grid(const std::vector<double>& timesteps, const NoiseSchedule& schedule,
               const std::string& final_alpha);

}  // namespace s2dm::sample
