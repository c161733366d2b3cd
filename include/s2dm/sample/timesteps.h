#pragma once
// Time grids: which timesteps a sampler visits. make_timesteps returns a strictly decreasing
// list in timestep-index units (T-1 ... 0; fractional values allowed), duplicates removed;
// make_grid appends the end point (ᾱ = 1 or ᾱ_0) and the ᾱ values.
#include <string>
#include <vector>

#include "s2dm/diffusion/noise_schedule.h"

namespace s2dm {
class PsldProcess;
}

namespace s2dm::sample {

// `spec` is one of
//   uniform | quad | linspace | trailing | leading   (the reference definitions, docs/algorithms.md §3)
//   logsnr      S points uniform in log-SNR between t = T-1 and t = 0
//   karras      S points with σ = √((1-ᾱ)/ᾱ) spaced as Karras et al. (ρ = `karras_rho`)
//   999,500,... an explicit comma-separated list (S is then the list's length)
//   file:PATH   a file of timesteps (whitespace, comma or YAML-list separated)
// (Learned grids, "learned" and "learned:FILE", are resolved by plan_sampling, generate.h.)
// Throws ConfigError for an unknown grid, S outside [1, T], or a list that is not strictly
// decreasing or leaves [0, T-1].
std::vector<double> make_timesteps(const std::string& spec, int steps, const NoiseSchedule& schedule,
                                   double karras_rho = 7.0);

// The grid names make_timesteps knows (besides lists and files).
const std::vector<std::string>& timestep_grids();

// What a sampler steps through: S+1 decreasing times, the last being the end point (-1 for
// ᾱ = 1, 0 for ᾱ_0), with ᾱ at each; the schedule gives ᾱ between them.
struct Grid {
  std::vector<double> t;
  std::vector<double> alpha_bar;
  const NoiseSchedule* schedule = nullptr;
  // A PSLD grid's process (null for a VP grid): t are continuous times, 1 = t[0] > ... > t[S-1] =
  // t_end, and t[S] = 0, the denoising step's end; alpha_bar is empty.
  const PsldProcess* psld = nullptr;
  int steps() const { return static_cast<int>(t.size()) - 1; }
};
Grid make_grid(const std::vector<double>& timesteps, const NoiseSchedule& schedule, const std::string& final_alpha);

// A PSLD model's grid for `steps` steps, the released code's convention: steps - 1 integration
// steps from t = 1 down to t_end (diffusion.psld.t_end), then one denoising step to 0. `spec`:
// uniform | quad (t_end + (1 - t_end)(1 - i/n)², dense near the data) | logsnr | karras (spaced
// in the x coordinate's noise-to-signal ratio √Σxx / P_xx as for VP models) | a decreasing list of
// times in (0, 1] (its last is where the denoising step starts) | file:PATH. Throws ConfigError.
Grid make_psld_grid(const std::string& spec, int steps, const PsldProcess& process, double karras_rho = 7.0);
// The PSLD grid through `times` (strictly decreasing, in (0, 1]; the last is where the denoising
// step starts); throws ConfigError naming `origin`.
Grid psld_grid(std::vector<double> times, const PsldProcess& process, const std::string& origin);
const std::vector<std::string>& psld_time_grids();

// Inverse of the schedule's ᾱ(t) on [-1, T-1] (bisection on the continuous interpolation).
double time_of_alpha_bar(const NoiseSchedule& schedule, double alpha_bar);

}  // namespace s2dm::sample
