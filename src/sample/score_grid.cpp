#include "s2dm/sample/score_grid.h"

#include <torch/torch.h>

#include <cmath>

#include "s2dm/core/errors.h"
#include "s2dm/core/progress.h"

namespace s2dm::sample {

Pchip::Pchip(std::vector<double> x, std::vector<double> y) : x_(std::move(x)), y_(std::move(y)), d_(x_.size(), 0.0) {
  const size_t n = x_.size();
  if (n < 2 || y_.size() != n) throw ConfigError("PCHIP needs at least two points of x and y");
  std::vector<double> h(n - 1), delta(n - 1);
  for (size_t i = 0; i + 1 < n; ++i) {
    h[i] = x_[i + 1] - x_[i];
    if (!(h[i] > 0)) throw ConfigError("PCHIP needs strictly increasing x");
    delta[i] = (y_[i + 1] - y_[i]) / h[i];
  }
  if (n == 2) {
    d_[0] = d_[1] = delta[0];
    return;
  }
  // Interior slopes: weighted harmonic mean where the secants agree in sign, else 0.
  for (size_t i = 1; i + 1 < n; ++i) {
    if (delta[i - 1] * delta[i] <= 0) continue;
    const double w1 = 2 * h[i] + h[i - 1], w2 = h[i] + 2 * h[i - 1];
    d_[i] = (w1 + w2) / (w1 / delta[i - 1] + w2 / delta[i]);
  }
  // End slopes: the one-sided three-point formula, limited to keep monotonicity.
  auto end_slope = [](double h0, double h1, double d0, double d1) {
    double d = ((2 * h0 + h1) * d0 - h0 * d1) / (h0 + h1);
    if (d * d0 <= 0) return 0.0;
    if (d0 * d1 <= 0 && std::abs(d) > std::abs(3 * d0)) return 3 * d0;
    return d;
  };
  d_[0] = end_slope(h[0], h[1], delta[0], delta[1]);
  d_[n - 1] = end_slope(h[n - 2], h[n - 3], delta[n - 2], delta[n - 3]);
}

double Pchip::operator()(double u) const {
  size_t i = std::upper_bound(x_.begin(), x_.end(), u) - x_.begin();
  i = std::clamp<size_t>(i, 1, x_.size() - 1) - 1;
  const double h = x_[i + 1] - x_[i], s = (u - x_[i]) / h;
  const double h00 = (1 + 2 * s) * (1 - s) * (1 - s), h10 = s * (1 - s) * (1 - s);
  const double h01 = s * s * (3 - 2 * s), h11 = s * s * (s - 1);
  return h00 * y_[i] + h10 * h * d_[i] + h01 * y_[i + 1] + h11 * h * d_[i + 1];
}

namespace {

// One level pair's cost on a batch: ε at level i of the VE point of x (level i+1) against the
// rescaled ε at level i+1; per-image squared norms summed.
double pair_cost(const EpsModel& model, const NoiseSchedule& schedule, const torch::Tensor& data,
                 const torch::Tensor& eps, double t_here, double t_next) {
  const double a_here = schedule.alpha_bar(t_here), a_next = schedule.alpha_bar(t_next);
  const double alpha = std::sqrt(a_here), alpha_next = std::sqrt(a_next);
  const double ve = std::sqrt((1 - a_here) / a_here), ve_next = std::sqrt((1 - a_next) / a_next);
  auto x = alpha_next * data + alpha_next * ve_next * eps;
  auto e_here = model((alpha / alpha_next) * x, torch::full({data.size(0)}, t_here, x.options()));
  auto e_next = model(x, torch::full({data.size(0)}, t_next, x.options()));
  return (e_here - (ve / ve_next) * e_next).to(torch::kFloat64).square().sum().item<double>();
}

torch::Tensor vector_tensor(const std::vector<double>& v) {
  return v.empty() ? torch::zeros({0}, torch::kFloat64) : torch::tensor(v, torch::kFloat64);
}

std::vector<double> uniform_levels(int num_levels, int T) {
  std::vector<double> levels;
  for (int i = 0; i < num_levels; ++i) levels.push_back((T - 1.0) * i / (num_levels - 1));
  return levels;
}

}  // namespace

ScoreGridCost estimate_score_cost(const DiffusionModel& model, const torch::Tensor& x0, const torch::Tensor& classes,
                                  int num_levels, uint64_t seed, int64_t batch, bool show_progress) {
  const NoiseSchedule& schedule = model.schedule;
  const int T = schedule.num_timesteps();
  if (num_levels < 3 || num_levels > 100 * T)
    throw ConfigError("levels = " + std::to_string(num_levels) + " must be in [3, " + std::to_string(100 * T) + "]");
  if (x0.dim() != 4 || x0.size(0) < 1) throw DataError("schedule estimation needs data [N, C, H, W]");
  if (batch < 1) throw ConfigError("schedule estimation: batch = " + std::to_string(batch) + " must be at least 1");
  ScoreGridCost out;
  out.levels = uniform_levels(num_levels, T);
  out.cost.assign(num_levels - 1, 0.0);
  torch::NoGradGuard no_grad;
  auto gen = at::detail::createCPUGenerator(seed);
  const int64_t n = x0.size(0);
  Progress progress("schedule cost", (num_levels - 1) * ((n + batch - 1) / batch), "pair");
  int64_t done = 0;
  for (int64_t start = 0; start < n; start += batch) {
    const int64_t end = std::min(n, start + batch);
    auto data = x0.slice(0, start, end).to(model.device, torch::kFloat32);
    auto eps = torch::randn(data.sizes(), gen, torch::kFloat32).to(data.device());  // common to every level
    const EpsModel network = model.eps_for(classes.defined() ? classes.slice(0, start, end) : classes);
    const double count = static_cast<double>(data.size(0));
    for (int i = 0; i + 1 < num_levels; ++i) {
      out.cost[i] += pair_cost(network, schedule, data, eps, out.levels[i], out.levels[i + 1]) / static_cast<double>(n);
      out.nfe += 2 * static_cast<int64_t>(count);
      if (show_progress) progress.update(++done);
    }
  }
  if (show_progress) progress.finish("(" + std::to_string(out.nfe) + " network evaluations)");
  return out;
}

std::vector<double> optimal_timesteps(const std::vector<double>& levels, const std::vector<double>& cost, int intervals) {
  const size_t n = levels.size();
  if (cost.size() + 1 != n) throw ConfigError("schedule: cost and levels disagree in length");
  if (intervals < 1 || intervals > static_cast<int>(n) - 1)
    throw ConfigError(std::to_string(intervals) + " intervals need a finer grid: the schedule has " + std::to_string(n) +
                      " levels (at most " + std::to_string(n - 1) + ")");
  // Λ(t_i) = Σ_{j<i} √L_j, made strictly increasing (a zero cost would make Λ flat).
  std::vector<double> lambda(n, 0.0);
  double total = 0;
  for (size_t i = 0; i + 1 < n; ++i) total += std::sqrt(std::max(0.0, cost[i]));
  const double floor = total > 0 ? 1e-12 * total : 1.0;
  for (size_t i = 0; i + 1 < n; ++i) lambda[i + 1] = lambda[i] + std::sqrt(std::max(0.0, cost[i])) + floor;
  for (auto& l : lambda) l /= lambda.back();  // scale-free: a constant factor on the cost cancels
  Pchip inverse(lambda, levels);
  std::vector<double> ts(intervals + 1);
  for (int k = 0; k <= intervals; ++k) ts[intervals - k] = inverse(static_cast<double>(k) / intervals);
  ts.front() = levels.back();  // endpoints fixed
  ts.back() = levels.front();
  for (int k = 1; k <= intervals; ++k)
    if (!(ts[k] < ts[k - 1])) throw ConfigError("schedule: the optimised grid is not strictly decreasing");
  return ts;
}

std::vector<double> score_grid(const std::vector<double>& levels, const std::vector<double>& cost, int steps) {
  if (steps < 1 || steps > static_cast<int>(levels.size()))
    throw ConfigError("steps = " + std::to_string(steps) + " needs a finer grid: the schedule has " +
                      std::to_string(levels.size()) + " levels");
  if (steps == 1) return {levels.back()};
  return optimal_timesteps(levels, cost, steps - 1);
}

OnlineGridEstimator::OnlineGridEstimator(const NoiseSchedule& schedule, int num_levels, int steps,
                                         int min_estimates, double gamma)
    : schedule_(schedule), levels_(uniform_levels(num_levels, schedule.num_timesteps())),
      sum_(num_levels - 1, 0.0), count_(num_levels - 1, 0), steps_(steps), min_estimates_(min_estimates),
      gamma_(gamma) {
  if (num_levels < 3) throw ConfigError("learned_schedule.levels must be at least 3");
  if (steps < 1 || steps > num_levels)
    throw ConfigError("learned_schedule: sample.steps = " + std::to_string(steps) + " needs at least " +
                      std::to_string(steps) + " levels (levels = " + std::to_string(num_levels) + ")");
}

bool OnlineGridEstimator::ready() const {
  return std::all_of(count_.begin(), count_.end(), [&](int64_t c) { return c >= min_estimates_; });
}

bool OnlineGridEstimator::update(const EpsModel& model, const torch::Tensor& x0, int pairs, at::Generator& gen) {
  torch::NoGradGuard no_grad;
  auto data = x0.to(torch::kFloat32);
  for (int p = 0; p < pairs; ++p) {
    const auto i = torch::randint(0, static_cast<int64_t>(sum_.size()), {1}, gen, torch::kLong).item<int64_t>();
    auto eps = torch::randn(data.sizes(), gen, torch::kFloat32).to(data.device());
    sum_[i] += pair_cost(model, schedule_, data, eps, levels_[i], levels_[i + 1]) / static_cast<double>(data.size(0));
    ++count_[i];
    nfe_ += 2 * data.size(0);
  }
  if (!ready()) return false;
  cost_.resize(sum_.size());
  for (size_t i = 0; i < sum_.size(); ++i) cost_[i] = sum_[i] / static_cast<double>(count_[i]);
  std::fill(sum_.begin(), sum_.end(), 0.0);  // the next update waits for estimates of the model as it will be
  std::fill(count_.begin(), count_.end(), 0);
  auto optimum = score_grid(levels_, cost_, steps_);
  if (timesteps_.empty()) {
    timesteps_ = optimum;
  } else {
    for (size_t k = 0; k < optimum.size(); ++k) timesteps_[k] = gamma_ * optimum[k] + (1 - gamma_) * timesteps_[k];
  }
  return true;
}

std::vector<std::pair<std::string, torch::Tensor>> OnlineGridEstimator::state() const {
  return {{"levels", torch::tensor(levels_, torch::kFloat64)},
          {"sum", torch::tensor(sum_, torch::kFloat64)},
          {"count", torch::tensor(count_, torch::kLong)},
          {"cost", vector_tensor(cost_)},
          {"timesteps", vector_tensor(timesteps_)},
          {"steps", torch::tensor(static_cast<int64_t>(steps_), torch::kLong)},
          {"nfe", torch::tensor(nfe_, torch::kLong)}};
}

namespace {

const torch::Tensor& state_entry(const std::vector<std::pair<std::string, torch::Tensor>>& state, const std::string& name) {
  for (const auto& [n, t] : state)
    if (n == name) return t;
  throw CheckpointError("schedule state lacks '" + name + "'");
}

std::vector<double> to_vector(const torch::Tensor& t) {
  auto c = t.to(torch::kFloat64).contiguous();
  return {c.data_ptr<double>(), c.data_ptr<double>() + c.numel()};
}

// Checkpoints written before the estimator kept its last cost ("cost") hold lifetime sums and a
// grid of S+1 points that stopped short of t = 0: their cost is taken as the lifetime mean and the
// grid recomputed from it.
std::vector<double> last_cost(const std::vector<std::pair<std::string, torch::Tensor>>& state) {
  for (const auto& [n, t] : state)
    if (n == "cost") return to_vector(t);
  auto sums = to_vector(state_entry(state, "sum"));
  auto counts = to_vector(state_entry(state, "count"));
  for (size_t i = 0; i < sums.size(); ++i) {
    if (counts[i] == 0) return {};
    sums[i] /= counts[i];
  }
  return sums;
}

bool holds_current_grid(const std::vector<std::pair<std::string, torch::Tensor>>& state) {
  return std::any_of(state.begin(), state.end(), [](const auto& e) { return e.first == "cost"; });
}

}  // namespace

void OnlineGridEstimator::load_state(const std::vector<std::pair<std::string, torch::Tensor>>& state) {
  if (to_vector(state_entry(state, "levels")) != levels_)
    throw CheckpointError("the checkpoint's learned schedule uses other levels than train.learned_schedule.levels");
  nfe_ = state_entry(state, "nfe").item<int64_t>();
  cost_ = last_cost(state);
  if (holds_current_grid(state)) {
    sum_ = to_vector(state_entry(state, "sum"));
    auto counts = state_entry(state, "count").to(torch::kLong).contiguous();
    count_.assign(counts.data_ptr<int64_t>(), counts.data_ptr<int64_t>() + counts.numel());
  } else {
    std::fill(sum_.begin(), sum_.end(), 0.0);
    std::fill(count_.begin(), count_.end(), 0);
  }
  // The smoothed grid carries over only at the same S (a resume may change sample.steps); any
  // other grid is derived afresh from the last cost, as the first update would.
  if (holds_current_grid(state) && state_entry(state, "steps").item<int64_t>() == steps_)
    timesteps_ = to_vector(state_entry(state, "timesteps"));
  else
    timesteps_ = cost_.empty() ? std::vector<double>{} : score_grid(levels_, cost_, steps_);
}

std::vector<double> timesteps_from_state(const std::vector<std::pair<std::string, torch::Tensor>>& state, int steps) {
  if (state.empty()) throw ConfigError("--timesteps learned: this checkpoint carries no learned schedule "
                                       "(train with train.learned_schedule.every > 0, or use learned:FILE)");
  const auto cost = last_cost(state);
  if (cost.empty()) throw ConfigError("--timesteps learned: the checkpoint's schedule has not seen every level yet");
  if (holds_current_grid(state) && state_entry(state, "steps").item<int64_t>() == steps &&
      state_entry(state, "timesteps").numel() == steps)
    return to_vector(state_entry(state, "timesteps"));
  return score_grid(to_vector(state_entry(state, "levels")), cost, steps);
}

}  // namespace s2dm::sample
