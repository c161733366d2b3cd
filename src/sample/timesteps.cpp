#include "s2dm/sample/timesteps.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <fstream>
#include <optional>
#include <sstream>

#include "s2dm/core/config.h"
#include "s2dm/core/errors.h"
#include "s2dm/diffusion/psld.h"

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

// Numbers separated by commas or whitespace, in a YAML flow list ([999, 500, 0]) or a block list
// ("- 999" lines), with # comments. An empty entry (999,,0) is an error, not a skipped one.
std::vector<double> parse_numbers(const std::string& text, const std::string& origin) {
  std::string cleaned;  // (comments out)
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] == '#' && (i = text.find('\n', i)) == std::string::npos) break;
    cleaned += text[i];
  }
  bool entry = false, comma = false;  // something since the last comma; any comma at all
  for (char c : cleaned) {
    if (c == ',' && !entry) throw ConfigError(origin + ": an empty entry in the list (two commas, or one at its start)");
    if (c == ',') comma = true, entry = false;
    else if (!std::isspace(static_cast<unsigned char>(c)) && c != '[' && c != ']') entry = true;
  }
  if (comma && !entry) throw ConfigError(origin + ": an empty entry at the end of the list");
  for (char& c : cleaned)
    if (c == ',' || c == '[' || c == ']') c = ' ';
  std::istringstream in(cleaned);
  std::vector<double> out;
  std::string token;
  while (in >> token) {
    if (token == "-") continue;  // a block list's item mark
    try {
      size_t used = 0;
      out.push_back(std::stod(token, &used));
      if (used != token.size()) throw std::invalid_argument(token);
    } catch (const std::logic_error&) {
      throw ConfigError(origin + ": '" + token + "' is not a timestep");
    }
  }
  if (out.empty()) throw ConfigError(origin + ": no timesteps");
  return out;
}

// The times a spec lists itself, "999,500,0" or "[...]", or in a file "file:PATH", with the name
// that errors give them (origin); nothing for a named grid.
struct Listed {
  std::string origin;
  std::vector<double> times;
};
std::optional<Listed> listed_times(const std::string& spec) {
  if (spec.rfind("file:", 0) == 0) {
    const std::string path = spec.substr(5);
    std::ifstream in(path);
    if (!in) throw ConfigError(path + ": cannot open time-grid file");
    std::stringstream text;
    text << in.rdbuf();
    return Listed{path, parse_numbers(text.str(), path)};
  }
  if (!spec.empty() && (std::isdigit(static_cast<unsigned char>(spec[0])) || spec[0] == '['))
    return Listed{"timesteps '" + spec + "'", parse_numbers(spec, "timesteps '" + spec + "'")};
  return std::nullopt;
}

std::vector<double> checked_list(std::vector<double> ts, int T, const std::string& origin) {
  for (size_t i = 0; i < ts.size(); ++i) {
    if (!(ts[i] >= 0 && ts[i] <= T - 1))
      throw ConfigError(origin + ": timestep " + std::to_string(ts[i]) + " outside [0, " + std::to_string(T - 1) + "]");
    if (i > 0 && !(ts[i] < ts[i - 1]))
      throw ConfigError(origin + ": timesteps must be strictly decreasing (position " + std::to_string(i) + ")");
  }
  return ts;
}

}  // namespace

const std::vector<std::string>& timestep_grids() {
  static const std::vector<std::string> names{"uniform", "quad", "linspace", "trailing", "leading", "logsnr", "karras", "edm"};
  return names;
}

double time_of_alpha_bar(const NoiseSchedule& schedule, double alpha_bar) {
  double lo = -1.0, hi = schedule.num_timesteps() - 1.0;  // ᾱ decreases in t
  for (int i = 0; i < 200 && hi - lo > 1e-12; ++i) {
    double mid = 0.5 * (lo + hi);
    (schedule.alpha_bar(mid) > alpha_bar ? lo : hi) = mid;
  }
  return 0.5 * (lo + hi);
}

std::vector<double> make_timesteps(const std::string& spec, int S, const NoiseSchedule& schedule, double karras_rho) {
  const int T = schedule.num_timesteps();
  if (auto listed = listed_times(spec)) return checked_list(std::move(listed->times), T, listed->origin);

  if (S < 1 || S > T)
    throw ConfigError("steps = " + std::to_string(S) + " must be in [1, " + std::to_string(T) + "] (T = " +
                      std::to_string(T) + ")");
  std::vector<double> ts;
  if (spec == "uniform") {
    // ⌊i·T/S⌋ for i < S: ermongroup/ddim's range(0, T, T // S) where S divides T, and S
    // evaluations where it does not (range() would take S + 1 or more: 4 for S = 3).
    for (int64_t i = 0; i < S; ++i) ts.push_back(static_cast<double>(i * T / S));
  } else if (spec == "quad") {  // (linspace(0, sqrt(0.8 T), S) ** 2).astype(int)
    for (double v : linspace(0.0, std::sqrt(0.8 * T), S)) ts.push_back(std::floor(v * v));
  } else if (spec == "linspace") {  // round(linspace(0, T-1, S))
    for (double v : linspace(0.0, T - 1.0, S)) ts.push_back(std::nearbyint(v));
  } else if (spec == "trailing") {  // round(arange(T, 0, -T/S)) - 1
    const double step = static_cast<double>(T) / S;
    for (int i = 0; i < S; ++i) ts.push_back(std::nearbyint(T - i * step) - 1);
  } else if (spec == "leading") {  // arange(S) * (T // S)
    for (int i = 0; i < S; ++i) ts.push_back(static_cast<double>(i) * (T / S));
  } else if (spec == "logsnr" || spec == "karras" || spec == "edm") {
    // Points placed in log-SNR or in Karras' σ^(1/ρ) between the schedule's ends (t = T-1 and
    // t = 0), mapped back to t. edm is edm_sampler's own: Karras' between σ = 80 and 0.002, each
    // clamped to the schedule's range (and its times to [0, T-1], against rounding where a
    // schedule ends at 0.002 itself, as an EDM-preconditioned model's does).
    auto sigma = [&](double t) { double a = schedule.alpha_bar(t); return std::sqrt((1 - a) / a); };
    const double top = sigma(T - 1), bottom = sigma(0);
    const double hi = spec == "edm" ? std::min(80.0, top) : top, lo = spec == "edm" ? std::max(0.002, bottom) : bottom;
    const double rho = spec == "logsnr" ? 0.0 : karras_rho;
    for (int i = 0; i < S; ++i) {
      const double f = S > 1 ? static_cast<double>(i) / (S - 1) : 0.0;
      const double s = rho == 0 ? std::exp(std::log(hi) + f * (std::log(lo) - std::log(hi)))
                                : std::pow(std::pow(hi, 1 / rho) + f * (std::pow(lo, 1 / rho) - std::pow(hi, 1 / rho)), rho);
      const double t = i == 0 && hi == top         ? T - 1.0
                       : i == S - 1 && lo == bottom ? 0.0
                                                    : std::clamp(time_of_alpha_bar(schedule, 1.0 / (1.0 + s * s)), 0.0, T - 1.0);
      ts.push_back(t);
    }
  } else {
    std::string msg = "unknown time grid '" + spec + "' (";
    for (const auto& name : timestep_grids()) msg += name + ", ";
    msg += "a list like 999,500,0, file:PATH, learned, dp or learned:SCHEDULE.yaml)";
    auto near = closest_match(spec, timestep_grids());
    if (!near.empty()) msg += "; did you mean '" + near + "'?";
    throw ConfigError(msg);
  }
  std::sort(ts.begin(), ts.end(), std::greater<double>());
  ts.erase(std::unique(ts.begin(), ts.end()), ts.end());  // (plan_sampling warns about repeats)
  return ts;
}

Grid make_grid(const std::vector<double>& timesteps, const NoiseSchedule& schedule, const std::string& final_alpha) {
  if (timesteps.empty()) throw ConfigError("empty time grid");
  Grid g;
  g.schedule = &schedule;
  g.t = checked_list(timesteps, schedule.num_timesteps(), "time grid");
  if (final_alpha == "one")
    g.t.push_back(-1.0);
  else if (final_alpha == "first")
    g.t.push_back(0.0);
  else
    throw ConfigError("final_alpha = '" + final_alpha + "' is not one of one, first");
  for (double t : g.t) g.alpha_bar.push_back(schedule.alpha_bar(t));
  return g;
}

const std::vector<std::string>& psld_time_grids() {
  static const std::vector<std::string> names{"uniform", "quad", "logsnr", "karras"};
  return names;
}

Grid psld_grid(std::vector<double> times, const PsldProcess& process, const std::string& origin) {
  if (times.empty()) throw ConfigError(origin + ": empty time grid");
  for (size_t i = 0; i < times.size(); ++i) {
    if (!(times[i] > 0 && times[i] <= 1))
      throw ConfigError(origin + ": PSLD time " + std::to_string(times[i]) + " outside (0, 1]");
    if (i > 0 && !(times[i] < times[i - 1]))
      throw ConfigError(origin + ": times must be strictly decreasing (position " + std::to_string(i) + ")");
  }
  Grid g;
  g.psld = &process;
  g.t = std::move(times);
  g.t.push_back(0.0);
  return g;
}

Grid make_psld_grid(const std::string& spec, int steps, const PsldProcess& process, double karras_rho) {
  const double t_end = process.settings().t_end;
  if (auto listed = listed_times(spec)) return psld_grid(std::move(listed->times), process, listed->origin);
  if (steps < 2 || steps > kMaxTimesteps)
    throw ConfigError("steps = " + std::to_string(steps) + ": a PSLD sampler takes at least 2 (the last denoises)");
  const int n = steps - 1;  // integration steps from t = 1 to t_end
  // σ(t) = √Σxx / P_xx, the noise-to-signal ratio of the data coordinate under the HSM kernel,
  // which falls as t does: logsnr and karras space it as for VP models. (Where Γ > ν, P_xx =
  // e^{-cB/2}(1 + (ν - Γ)B/4) reaches 0 at some t and σ is no time's measure.)
  if ((spec == "logsnr" || spec == "karras") && process.settings().gamma > process.settings().nu)
    throw ConfigError("time grid '" + spec + "' spaces PSLD's σ(t) = √Σxx / P_xx, which needs nu >= gamma (P_xx > 0); "
                      "use uniform or quad");
  auto sigma = [&](double t) { return std::sqrt(process.hsm_covariance(t).xx) / process.mean_map(t).xx; };
  std::vector<double> ts;
  for (int i = 0; i <= n; ++i) {
    const double f = static_cast<double>(i) / n;
    if (spec == "uniform") {
      ts.push_back(1 - (1 - t_end) * f);
    } else if (spec == "quad") {  // the released code's "quadratic": dense near the data
      ts.push_back(t_end + (1 - t_end) * (1 - f) * (1 - f));
    } else if (spec == "logsnr" || spec == "karras") {
      const double hi = sigma(1.0), lo = sigma(t_end), rho = karras_rho;
      const double target = spec == "logsnr"
                                ? std::exp(std::log(hi) + f * (std::log(lo) - std::log(hi)))
                                : std::pow(std::pow(hi, 1 / rho) + f * (std::pow(lo, 1 / rho) - std::pow(hi, 1 / rho)), rho);
      double a = t_end, b = 1.0;  // σ increases in t
      for (int k = 0; k < 200 && b - a > 1e-15; ++k) (sigma(0.5 * (a + b)) < target ? a : b) = 0.5 * (a + b);
      ts.push_back(i == 0 ? 1.0 : i == n ? t_end : 0.5 * (a + b));
    } else {
      std::string msg = "unknown PSLD time grid '" + spec + "' (";
      for (const auto& name : psld_time_grids()) msg += name + ", ";
      msg += "a list of times like 1,0.5,0.001, or file:PATH)";
      if (const auto near = closest_match(spec, psld_time_grids()); !near.empty()) msg += "; did you mean '" + near + "'?";
      throw ConfigError(msg);
    }
  }
  return psld_grid(std::move(ts), process, "time grid '" + spec + "'");
}

}  // namespace s2dm::sample
