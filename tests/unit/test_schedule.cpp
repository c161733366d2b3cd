// The learned, score-optimal schedule: PCHIP, the cost estimate against the closed form for
// Gaussian data, a mixture against a large-sample estimate, and the schedule's invariants.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

#include "../analytic_models.h"
#include "../test_util.h"
#include "s2dm/core/errors.h"
#include "s2dm/sample/generate.h"
#include "s2dm/sample/learned_schedule.h"
#include "s2dm/sample/schedule_file.h"
#include "s2dm/sample/timesteps.h"

using namespace s2dm;
using namespace s2dm::sample;

namespace {

const NoiseSchedule& linear() { return s2dm::testing::linear_schedule(); }

// For x₀ ~ N(μ, s² I) in d dimensions: L_i = d σ̃_i² (s² + σ̃_{i+1}²) [1/(s² + σ̃_i²) - 1/(s² + σ̃_{i+1}²)]².
std::vector<double> gaussian_cost(const std::vector<double>& levels, double s, int d) {
  std::vector<double> cost;
  auto ve2 = [](double t) { double a = linear().alpha_bar(t); return (1 - a) / a; };
  for (size_t i = 0; i + 1 < levels.size(); ++i) {
    const double a = ve2(levels[i]), b = ve2(levels[i + 1]);
    const double diff = 1 / (s * s + a) - 1 / (s * s + b);
    cost.push_back(d * a * (s * s + b) * diff * diff);
  }
  return cost;
}

double max_gap(const std::vector<double>& a, const std::vector<double>& b) {
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, std::abs(a[i] - b[i]));
  return m;
}

}  // namespace

TEST(Pchip, MonotoneDataGiveAMonotoneInterpolantWithoutOvershoot) {
  std::vector<double> x{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}, y{0, 0, 0, 1, 1, 1, 5, 5, 6, 10};
  Pchip p(x, y);
  double prev = -1;
  for (int k = 0; k <= 9000; ++k) {
    const double u = k / 1000.0, v = p(u);
    EXPECT_GE(v, prev - 1e-12) << u;
    const int i = std::min(8, static_cast<int>(u));
    EXPECT_GE(v, y[i] - 1e-12) << u;  // never leaves the bracket of its interval
    EXPECT_LE(v, y[i + 1] + 1e-12) << u;
    prev = v;
  }
  for (size_t i = 0; i < x.size(); ++i) EXPECT_NEAR(p(x[i]), y[i], 1e-12);
  Pchip line({0, 1, 3}, {1, 3, 7});  // linear data stay linear
  EXPECT_NEAR(line(2.0), 5.0, 1e-12);
  EXPECT_THROW(Pchip({0, 0}, {1, 2}), ConfigError);
}

TEST(LearnedSchedule, GaussianEstimateMatchesTheClosedForm) {
  const double mu = 0.3, s = 0.5;
  s2dm::testing::Gaussian g{mu, s, &linear()};
  torch::manual_seed(5);
  auto x0 = mu + s * torch::randn({1024, 1, 2, 2}, torch::kFloat64);
  auto est = estimate_schedule_cost(g.model(), linear(), x0, 200, 1, 512, false);
  EXPECT_EQ(est.nfe, 2 * 199 * 1024);
  auto exact = gaussian_cost(est.levels, s, 4);
  for (int S : {5, 10, 20}) {
    auto a = optimal_timesteps(est.levels, est.cost, S), b = optimal_timesteps(est.levels, exact, S);
    EXPECT_LT(max_gap(a, b), 15.0) << "S=" << S;  // Monte-Carlo error of 1024 samples, in timesteps
  }
  // The per-level cost itself is within a few per cent where it matters.
  double total_est = 0, total_exact = 0;
  for (size_t i = 0; i < exact.size(); ++i) total_est += std::sqrt(est.cost[i]), total_exact += std::sqrt(exact[i]);
  EXPECT_NEAR(total_est / total_exact, 1.0, 0.05);
}

TEST(LearnedSchedule, MixtureEstimateConvergesWithSamples) {
  s2dm::testing::GaussianMixture mix{{0.3, 0.7}, {-0.8, 0.6}, {0.15, 0.25}, &linear()};
  auto draw = [&](int n, int seed) {
    torch::manual_seed(seed);
    auto which = torch::rand({n, 1, 1, 1}, torch::kFloat64) < 0.3;
    return torch::where(which, -0.8 + 0.15 * torch::randn({n, 1, 1, 1}, torch::kFloat64),
                        0.6 + 0.25 * torch::randn({n, 1, 1, 1}, torch::kFloat64));
  };
  auto reference = estimate_schedule_cost(mix.model(), linear(), draw(8192, 1), 100, 1, 8192, false);
  auto small = estimate_schedule_cost(mix.model(), linear(), draw(1024, 2), 100, 2, 1024, false);
  auto a = optimal_timesteps(small.levels, small.cost, 10), b = optimal_timesteps(reference.levels, reference.cost, 10);
  EXPECT_LT(max_gap(a, b), 30.0);
}

TEST(LearnedSchedule, InvariantsAndErrors) {
  std::vector<double> levels;
  for (int i = 0; i < 50; ++i) levels.push_back(999.0 * i / 49);
  auto cost = gaussian_cost(levels, 0.5, 4);
  for (int S : {1, 2, 10, 49}) {
    auto ts = optimal_timesteps(levels, cost, S);
    ASSERT_EQ(static_cast<int>(ts.size()), S + 1);
    EXPECT_DOUBLE_EQ(ts.front(), 999.0);
    EXPECT_DOUBLE_EQ(ts.back(), 0.0);
    for (int k = 1; k <= S; ++k) EXPECT_LT(ts[k], ts[k - 1]) << S;
  }
  auto scaled = cost;
  for (auto& c : scaled) c *= 7.5;
  EXPECT_LT(max_gap(optimal_timesteps(levels, scaled, 10), optimal_timesteps(levels, cost, 10)), 1e-9);
  EXPECT_THROW(optimal_timesteps(levels, cost, 50), ConfigError);
  EXPECT_THROW(optimal_timesteps(levels, cost, 0), ConfigError);
  // The schedule file: S-step grids for --timesteps learned:FILE, checked against T.
  s2dm::testing::TempDir dir;
  ScheduleCost sc{levels, cost, 42};
  write_schedule_file(dir / "s.yaml", sc, {{10, optimal_timesteps(levels, cost, 10)}}, 1000);
  auto grid = read_schedule_file(dir / "s.yaml", 10, 1000);
  EXPECT_EQ(grid.size(), 10u);
  EXPECT_DOUBLE_EQ(grid.front(), 999.0);
  EXPECT_THROW(read_schedule_file(dir / "s.yaml", 20, 1000), ConfigError);
  EXPECT_THROW(read_schedule_file(dir / "s.yaml", 10, 500), ConfigError);
  EXPECT_THROW(read_schedule_file(dir / "none.yaml", 10, 1000), ConfigError);
  // The sampling plan reads it for timesteps learned:FILE, and for "learned" given the file.
  SampleConfig c;
  c.steps = 10;
  c.timesteps = "learned:" + (dir / "s.yaml");
  const auto& schedule = linear();
  const auto plan = plan_sampling(c, schedule);
  EXPECT_EQ(std::vector<double>(plan.grid.t.begin(), plan.grid.t.end() - 1), grid);
  c.timesteps = "learned";
  EXPECT_EQ(plan_sampling(c, schedule, {{}, dir / "s.yaml", false}).grid.t, plan.grid.t);
  EXPECT_THROW(plan_sampling(c, schedule), ConfigError);  // no state, no file
  EXPECT_EQ(plan_sampling(c, schedule, {{}, "", true}).grid.t[1], make_timesteps("uniform", 10, schedule)[1]);
}

TEST(LearnedSchedule, OnlineEstimateConvergesToTheOfflineOne) {
  // A fixed model (the exact Gaussian ε) seen through Algorithm 2's random level pairs.
  s2dm::testing::Gaussian g{0.3, 0.5, &linear()};
  auto model = g.model();
  torch::manual_seed(7);
  auto data = 0.3 + 0.5 * torch::randn({4096, 1, 2, 2}, torch::kFloat64);
  OnlineScheduleEstimator online(linear(), 30, 5, 40, 0.2);
  auto gen = at::detail::createCPUGenerator(3);
  int moves = 0;
  for (int step = 0; step < 400; ++step) {
    auto batch = data.slice(0, (step * 64) % 4096, (step * 64) % 4096 + 64);
    moves += online.update(model, batch, 8, gen);
  }
  ASSERT_TRUE(online.ready());
  EXPECT_GT(moves, 10);
  auto offline = estimate_schedule_cost(model, linear(), data, 30, 1, 4096, false);
  auto exact = gaussian_cost(offline.levels, 0.5, 4);
  auto mean = online.mean_cost();
  double rel = 0;
  for (size_t i = 0; i < mean.size(); ++i) rel = std::max(rel, std::abs(mean[i] - offline.cost[i]) / offline.cost[i]);
  EXPECT_LT(rel, 0.35);  // ~ 4 / sqrt(estimates x 64 images x 4 dims) per level pair
  EXPECT_LT(max_gap(online.timesteps(), optimal_timesteps(offline.levels, offline.cost, 5)), 25.0);
  EXPECT_LT(max_gap(optimal_timesteps(offline.levels, offline.cost, 5), optimal_timesteps(offline.levels, exact, 5)), 10.0);
  // The state round-trips (checkpoints) and gives the grid for any S.
  OnlineScheduleEstimator copy(linear(), 30, 5, 40, 0.2);
  copy.load_state(online.state());
  EXPECT_EQ(copy.timesteps(), online.timesteps());
  auto ts = timesteps_from_state(online.state(), 5);
  EXPECT_EQ(ts.size(), 5u);
  EXPECT_EQ(timesteps_from_state(online.state(), 12).size(), 12u);
  EXPECT_THROW(timesteps_from_state({}, 5), ConfigError);
  OnlineScheduleEstimator other(linear(), 20, 5, 40, 0.2);
  EXPECT_THROW(other.load_state(online.state()), CheckpointError);
}
