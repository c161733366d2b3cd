#include "s2dm/timesteps.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>

#include "s2dm/config.h"
#include "s2dm/errors.h"

namespace s2dm::sample {
namespace {

// numpy.linspace(start, stop, n)
std::vector<double> linspace(double start, double stop, int n) {
  std::vector<double> out(n);
  const double step = n > 1 ? (stop - start) / (n - 1) : 0.0;
  for (int i = 0; i < n; ++i) out[i] = i * step + start;
  if (n > 1) out[n - 1] = stop;
  return out;
}

}  // namespace

const std::vector<std::string>& timestep_grids() {
  static const std::vector<std::string> names{"uniform", "quad", "linspace", "trailing", "leading"};
  return names;
}

std::vector<double> make_timesteps(const std::string& grid, int S, int T) {
  if (S < 1 || S > T)
    throw ConfigError("steps = " + std::to_string(S) + " must be in [1, " + std::to_string(T) + "] (T = " +
                      std::to_string(T) + ")");
  std::vector<double> ts;
  if (grid == "uniform") {  // range(0, T, T // S), as ermongroup/ddim
    for (int t = 0; t < T; t += T / S) ts.push_back(t);
  } else if (grid == "quad") {  // (linspace(0, sqrt(0.8 T), S) ** 2).astype(int)
    for (double v : linspace(0.0, std::sqrt(0.8 * T), S)) ts.push_back(std::floor(v * v));
  } else if (grid == "linspace") {  // round(linspace(0, T-1, S))
    for (double v : linspace(0.0, T - 1.0, S)) ts.push_back(std::nearbyint(v));
  } else if (grid == "trailing") {  // round(arange(T, 0, -T/S)) - 1
    const double step = static_cast<double>(T) / S;
    for (int i = 0; i < S; ++i) ts.push_back(std::nearbyint(T - i * step) - 1);
  } else if (grid == "leading") {  // arange(S) * (T // S)
    for (int i = 0; i < S; ++i) ts.push_back(static_cast<double>(i) * (T / S));
  } else {
    std::string msg = "unknown time grid '" + grid + "' (one of uniform, quad, linspace, trailing, leading)";
    auto near = closest_match(grid, timestep_grids());
    if (!near.empty()) msg += "; did you mean '" + near + "'?";
    throw ConfigError(msg);
  }
  std::sort(ts.begin(), ts.end(), std::greater<double>());
  size_t before = ts.size();
  ts.erase(std::unique(ts.begin(), ts.end()), ts.end());
  if (ts.size() != before)
    spdlog::warn("time grid '{}' with {} steps repeats timesteps; {} distinct steps remain", grid, S, ts.size());
  return ts;
}

Grid make_grid(const std::vector<double>& timesteps, const NoiseSchedule& schedule, const std::string& final_alpha) {
  if (timesteps.empty()) throw ConfigError("empty time grid");
  Grid g;
  g.t = timesteps;
  for (size_t i = 0; i < timesteps.size(); ++i) {
    if (i > 0 && !(timesteps[i] < timesteps[i - 1]))
      throw ConfigError("time grid is not strictly decreasing at position " + std::to_string(i));
    if (timesteps[i] < 0 || timesteps[i] > schedule.num_timesteps() - 1)
      throw ConfigError("timestep " + std::to_string(timesteps[i]) + " outside [0, " +
                        std::to_string(schedule.num_timesteps() - 1) + "]");
    g.alpha_bar.push_back(schedule.alpha_bar(timesteps[i]));
  }
  if (final_alpha == "one")
    g.alpha_bar.push_back(1.0);
  else if (final_alpha == "first")
    g.alpha_bar.push_back(schedule.alphas_cumprod()[0]);
  else
    throw ConfigError("final_alpha = '" + final_alpha + "' is not one of one, first");
  return g;
}

}  // namespace s2dm::sample
