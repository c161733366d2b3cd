// Learned time grids. The score-optimal schedule: PCHIP, the cost estimate against the closed form
// for Gaussian data, a mixture against a large-sample estimate, the grid's end handling, the
// schedule's invariants and Algorithm 2. The solver-aware dp grid: the path search against brute
// force, and the grid against every hand-made one on the exact Gaussian oracle.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <chrono>
#include <cmath>

#include "../analytic_models.h"
#include "../test_util.h"
#include "s2dm/core/errors.h"
#include "s2dm/sample/dp_grid.h"
#include "s2dm/sample/generate.h"
#include "s2dm/sample/score_grid.h"
#include "s2dm/sample/grid_file.h"
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

TEST(ScoreGrid, GaussianEstimateMatchesTheClosedForm) {
  const double mu = 0.3, s = 0.5;
  s2dm::testing::Gaussian g{mu, s, &linear()};
  torch::manual_seed(s2dm::testing::test_seed(5));
  auto x0 = mu + s * torch::randn({1024, 1, 2, 2}, torch::kFloat64);
  auto est = estimate_score_cost(s2dm::testing::linear_model(g.model()), x0, {}, 200, s2dm::testing::test_seed(1), 512, false);
  EXPECT_EQ(est.nfe, 2 * 199 * 1024);
  auto exact = gaussian_cost(est.levels, s, 4);
  for (int S : {5, 10, 20}) {
    auto a = optimal_timesteps(est.levels, est.cost, S), b = optimal_timesteps(est.levels, exact, S);
    EXPECT_LT(max_gap(a, b), 15.0) << "S=" << S;  // Monte-Carlo error of 1024 samples, in timesteps
    s2dm::testing::print_margin("Gaussian score grid, S=" + std::to_string(S) + ", worst gap to the exact one", max_gap(a, b), "< 15");
  }
  // The per-level cost itself is within a few per cent where it matters.
  double total_est = 0, total_exact = 0;
  for (size_t i = 0; i < exact.size(); ++i) total_est += std::sqrt(est.cost[i]), total_exact += std::sqrt(exact[i]);
  EXPECT_NEAR(total_est / total_exact, 1.0, 0.05);
  s2dm::testing::print_margin("Gaussian |total cost / exact - 1|", std::abs(total_est / total_exact - 1), "< 0.05");
}

TEST(ScoreGrid, MixtureEstimateConvergesWithSamples) {
  s2dm::testing::GaussianMixture mix{{0.3, 0.7}, {-0.8, 0.6}, {0.15, 0.25}, &linear()};
  auto draw = [&](int n, int seed) {
    torch::manual_seed(seed);
    auto which = torch::rand({n, 1, 1, 1}, torch::kFloat64) < 0.3;
    return torch::where(which, -0.8 + 0.15 * torch::randn({n, 1, 1, 1}, torch::kFloat64),
                        0.6 + 0.25 * torch::randn({n, 1, 1, 1}, torch::kFloat64));
  };
  using s2dm::testing::test_seed;
  auto reference = estimate_score_cost(s2dm::testing::linear_model(mix.model()), draw(8192, test_seed(1)), {}, 100, test_seed(1), 8192, false);
  auto small = estimate_score_cost(s2dm::testing::linear_model(mix.model()), draw(1024, test_seed(2)), {}, 100, test_seed(2), 1024, false);
  auto a = optimal_timesteps(small.levels, small.cost, 10), b = optimal_timesteps(reference.levels, reference.cost, 10);
  EXPECT_LT(max_gap(a, b), 30.0);
  s2dm::testing::print_margin("mixture score grid of 1024 samples, worst gap to 8192's", max_gap(a, b), "< 30");
}

TEST(ScoreGrid, InvariantsAndErrors) {
  std::vector<double> levels;
  for (int i = 0; i < 50; ++i) levels.push_back(999.0 * i / 49);
  auto cost = gaussian_cost(levels, 0.5, 4);
  for (int intervals : {1, 2, 10, 49}) {
    auto ts = optimal_timesteps(levels, cost, intervals);
    ASSERT_EQ(static_cast<int>(ts.size()), intervals + 1);
    EXPECT_DOUBLE_EQ(ts.front(), 999.0);
    EXPECT_DOUBLE_EQ(ts.back(), 0.0);
    for (int k = 1; k <= intervals; ++k) EXPECT_LT(ts[k], ts[k - 1]) << intervals;
  }
  auto scaled = cost;
  for (auto& c : scaled) c *= 7.5;
  EXPECT_LT(max_gap(optimal_timesteps(levels, scaled, 10), optimal_timesteps(levels, cost, 10)), 1e-9);
  EXPECT_THROW(optimal_timesteps(levels, cost, 50), ConfigError);
  EXPECT_THROW(optimal_timesteps(levels, cost, 0), ConfigError);
  EXPECT_EQ(score_grid(levels, cost, 1), std::vector<double>{999.0});
  EXPECT_EQ(score_grid(levels, cost, 50).size(), 50u);
  EXPECT_THROW(score_grid(levels, cost, 51), ConfigError);
  // The schedule file: S-step grids for --timesteps learned:FILE, checked against T.
  s2dm::testing::TempDir dir;
  GridFile file;
  file.levels = levels;
  file.cost = cost;
  file.nfe = 42;
  file.timesteps[10] = score_grid(levels, cost, 10);
  write_grid_file(dir / "s.yaml", file, 1000);
  auto grid = read_grid_file(dir / "s.yaml", 1000).grid(10);
  EXPECT_EQ(grid, file.timesteps[10]);
  EXPECT_THROW(read_grid_file(dir / "s.yaml", 1000).grid(20), ConfigError);
  EXPECT_THROW(read_grid_file(dir / "s.yaml", 500), ConfigError);
  EXPECT_THROW(read_grid_file(dir / "none.yaml", 1000), ConfigError);
  // A file of the first format (S+1 points, the last dropped) is refused with a way out.
  s2dm::testing::write_bytes(dir / "old.yaml", "num_timesteps: 1000\ntimesteps:\n  2: [999, 500, 0]\n");
  try {
    read_grid_file(dir / "old.yaml", 1000);
    ADD_FAILURE() << "an old schedule file was read";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("make it again"), std::string::npos) << e.what();
  }
  // The sampling plan reads it for timesteps learned:FILE, and for "learned" given the file: S
  // evaluations, the last at t = 0, then the end step (ᾱ = 1), as on the uniform grid.
  SampleConfig c;
  c.steps = 10;
  c.timesteps = "learned:" + (dir / "s.yaml");
  const auto& schedule = linear();
  auto with_grids = [](ModelGrids grids) { return s2dm::testing::linear_model({}, {1, 1, 1}, std::move(grids)); };
  const auto model = with_grids({});
  const auto plan = plan_sampling(c, model);
  EXPECT_EQ(std::vector<double>(plan.grid.t.begin(), plan.grid.t.end() - 1), grid);
  EXPECT_EQ(plan.grid.t[9], 0.0);
  EXPECT_EQ(plan.grid.t[10], -1.0);
  EXPECT_EQ(plan.grid.t.size(), plan_sampling([&] { auto u = c; u.timesteps = "uniform"; return u; }(), model).grid.t.size());
  EXPECT_TRUE(plan.warning.empty());
  c.timesteps = "learned";
  EXPECT_EQ(plan_sampling(c, with_grids({{}, dir / "s.yaml", false})).grid.t, plan.grid.t);
  EXPECT_THROW(plan_sampling(c, model), ConfigError);  // no state, no file
  EXPECT_EQ(plan_sampling(c, with_grids({{}, "", true})).grid.t[1], make_timesteps("uniform", 10, schedule)[1]);
  // A dp file of an earlier s2dm names only its sampler and order; using it with another sampler
  // is allowed, with a warning.
  file.method = "dp";
  file.sampler = "deis";
  file.order = 2;
  write_grid_file(dir / "dp.yaml", file, 1000);
  EXPECT_EQ(read_grid_file(dir / "dp.yaml", 1000).description(), "dp for deis (order 2)");
  c.timesteps = "learned:" + (dir / "dp.yaml");
  c.sampler = "deis";
  c.order = 2;
  EXPECT_TRUE(plan_sampling(c, model).warning.empty());
  c.sampler = "ddim";
  c.order = -1;
  EXPECT_NE(plan_sampling(c, model).warning.find("other sample settings: sampler deis there, ddim here"),
            std::string::npos)
      << plan_sampling(c, model).warning;
}

TEST(ScoreGrid, GridOfSEvaluationsEndsAtZeroWithEqualCostBetweenThem) {
  // The score-optimal grid from the closed-form Gaussian cost: S evaluations from T-1 down to
  // t = 0, the same footing as the uniform, quadratic and log-SNR grids, with equal Λ = Σ √L
  // between neighbours (the earlier grid had S+1 points and dropped t = 0, so its last
  // evaluation came before the others').
  std::vector<double> levels;
  for (int i = 0; i < 1000; ++i) levels.push_back(i);
  const auto cost = gaussian_cost(levels, 0.5, 4);
  std::vector<double> lambda{0};
  for (double c : cost) lambda.push_back(lambda.back() + std::sqrt(c));
  Pchip lambda_of(levels, lambda);
  for (int S : {2, 5, 10, 20}) {
    const auto ts = score_grid(levels, cost, S);
    ASSERT_EQ(static_cast<int>(ts.size()), S);
    EXPECT_EQ(ts.front(), 999.0);
    EXPECT_EQ(ts.back(), 0.0);
    for (int k = 1; k < S; ++k)
      EXPECT_NEAR(lambda_of(ts[k - 1]) - lambda_of(ts[k]), lambda.back() / (S - 1), 1e-6 * lambda.back()) << S << " " << k;
  }
}

TEST(ScoreGrid, OnlineEstimateConvergesToTheOfflineOne) {
  // A fixed model (the exact Gaussian ε) seen through Algorithm 2's random level pairs.
  s2dm::testing::Gaussian g{0.3, 0.5, &linear()};
  auto model = g.model();
  torch::manual_seed(s2dm::testing::test_seed(7));
  auto data = 0.3 + 0.5 * torch::randn({4096, 1, 2, 2}, torch::kFloat64);
  OnlineGridEstimator online(linear(), 30, 5, 16, 0.2);
  auto gen = at::detail::createCPUGenerator(s2dm::testing::test_seed(3));
  int moves = 0;
  for (int step = 0; step < 800; ++step) {
    auto batch = data.slice(0, (step * 64) % 4096, (step * 64) % 4096 + 64);
    moves += online.update(model, batch, 8, gen);
  }
  ASSERT_TRUE(online.has_grid());
  EXPECT_GT(moves, 5);
  auto offline = estimate_score_cost(s2dm::testing::linear_model(model), data, {}, 30, 1, 4096, false);
  auto exact = gaussian_cost(offline.levels, 0.5, 4);
  auto mean = online.cost();  // the last update's: 16 or more estimates of 64 images per pair
  double rel = 0;
  for (size_t i = 0; i < mean.size(); ++i) rel = std::max(rel, std::abs(mean[i] - offline.cost[i]) / offline.cost[i]);
  EXPECT_LT(rel, 0.35);
  std::printf("%d updates; worst relative gap of the last update's cost to the offline one: %.3f\n", moves, rel);
  const double online_gap = max_gap(online.timesteps(), score_grid(offline.levels, offline.cost, 5));
  const double offline_gap = max_gap(score_grid(offline.levels, offline.cost, 5), score_grid(offline.levels, exact, 5));
  EXPECT_LT(online_gap, 25.0);
  EXPECT_LT(offline_gap, 10.0);
  s2dm::testing::print_margin("online estimate: worst relative cost gap", rel, "< 0.35");
  s2dm::testing::print_margin("online estimate: worst grid gap to the offline one", online_gap, "< 25");
  s2dm::testing::print_margin("offline estimate: worst grid gap to the exact one", offline_gap, "< 10");
  // The state round-trips (checkpoints) and gives the grid for any S.
  OnlineGridEstimator copy(linear(), 30, 5, 16, 0.2);
  copy.load_state(online.state());
  EXPECT_EQ(copy.timesteps(), online.timesteps());
  EXPECT_EQ(timesteps_from_state(online.state(), 5), online.timesteps());
  EXPECT_EQ(timesteps_from_state(online.state(), 12), score_grid(online.levels(), online.cost(), 12));
  EXPECT_THROW(timesteps_from_state({}, 5), ConfigError);
  OnlineGridEstimator other(linear(), 20, 5, 16, 0.2);
  EXPECT_THROW(other.load_state(online.state()), CheckpointError);
}

TEST(ScoreGrid, AStateForAnotherStepCountGivesThatManySteps) {
  // `s2dm train --resume --set sample.steps=S`: a checkpoint's grid for 4 steps, loaded by an
  // estimator for S steps, is S steps derived from the last cost, and updates keep S (it used to
  // keep the 4 points: a stale grid for S = 2, writes past its end for S = 7).
  auto ones = EpsModel([](const torch::Tensor& x, const torch::Tensor&) { return torch::ones_like(x); });
  auto data = torch::zeros({8, 1, 2, 2}, torch::kFloat64);
  OnlineGridEstimator online(linear(), 12, 4, 3, 0.5);
  auto gen = at::detail::createCPUGenerator(1);
  while (!online.update(ones, data, 1, gen)) {
  }
  for (int steps : {2, 7}) {
    OnlineGridEstimator resumed(linear(), 12, steps, 3, 0.5);
    resumed.load_state(online.state());
    EXPECT_EQ(resumed.timesteps(), score_grid(online.levels(), online.cost(), steps)) << steps;
    while (!resumed.update(ones, data, 1, gen)) {
    }
    EXPECT_EQ(resumed.timesteps().size(), static_cast<size_t>(steps)) << steps;
    EXPECT_EQ(timesteps_from_state(resumed.state(), steps), resumed.timesteps()) << steps;
  }
}

TEST(ScoreGrid, OnlineEstimateForgetsCostsFromBeforeItsLastUpdate) {
  // Algorithm 2 re-estimates once every level pair has `min_estimates` estimates since the last
  // update. A model that ignores x and returns c·1 has the exact pair cost d c² (1 - r_i)², r_i the
  // ratio of σ̃ at the two levels, whatever the noise: after the model changes from c = 1 to c = 2,
  // the next update must see 4 times the first cost, not a mix of both models.
  auto constant = [](double c) {
    return EpsModel([c](const torch::Tensor& x, const torch::Tensor&) { return torch::full_like(x, c); });
  };
  auto data = torch::zeros({8, 1, 2, 2}, torch::kFloat64);
  OnlineGridEstimator online(linear(), 12, 4, 3, 0.5);
  auto gen = at::detail::createCPUGenerator(1);
  int updates = 0;
  while (!updates) updates += online.update(constant(1.0), data, 1, gen);
  const auto first = online.cost();
  for (size_t i = 0; i < first.size(); ++i) {
    auto ve = [](double t) { double a = linear().alpha_bar(t); return std::sqrt((1 - a) / a); };
    const double r = ve(online.levels()[i]) / ve(online.levels()[i + 1]);
    EXPECT_NEAR(first[i], 4 * (1 - r) * (1 - r), 1e-6 * first[i]);  // (the model runs in float32)
  }
  const auto count_after = [&] {
    for (const auto& [name, t] : online.state())
      if (name == "count") return t.sum().item<int64_t>();
    return int64_t{-1};
  };
  EXPECT_EQ(count_after(), 0);  // the counts start again
  EXPECT_FALSE(online.ready());
  EXPECT_TRUE(online.has_grid());
  while (updates < 2) updates += online.update(constant(2.0), data, 1, gen);
  for (size_t i = 0; i < first.size(); ++i) EXPECT_NEAR(online.cost()[i], 4 * first[i], 1e-9 * first[i]) << i;
  // The same costs give the same grid (the cost's scale cancels), and the state round-trips.
  OnlineGridEstimator copy(linear(), 12, 4, 3, 0.5);
  copy.load_state(online.state());
  EXPECT_EQ(copy.cost(), online.cost());
  EXPECT_EQ(timesteps_from_state(online.state(), 4), online.timesteps());
  // A checkpoint of the earlier format (lifetime sums, S+1 points, no "cost") still gives S
  // evaluations ending at t = 0.
  std::vector<std::pair<std::string, torch::Tensor>> old;
  for (const auto& [name, t] : online.state())
    if (name != "cost") old.emplace_back(name, name == "count" ? torch::ones_like(t) : t);
  for (auto& [name, t] : old)
    if (name == "sum") t = torch::tensor(online.cost(), torch::kFloat64);
    else if (name == "timesteps") t = torch::linspace(999, 0, 5, torch::kFloat64);
  const auto ts = timesteps_from_state(old, 4);
  ASSERT_EQ(ts.size(), 4u);
  EXPECT_EQ(ts.back(), 0.0);
  EXPECT_EQ(ts, score_grid(online.levels(), online.cost(), 4));
  copy.load_state(old);
  EXPECT_EQ(copy.timesteps(), ts);
}

TEST(DpGrids, CheapestPathMatchesBruteForce) {
  torch::manual_seed(3);
  const int n = 9;
  auto r = torch::rand({n, n}, torch::kFloat64);
  std::vector<std::vector<double>> cost(n, std::vector<double>(n));
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < n; ++j) cost[i][j] = r[i][j].item<double>() * (1 + (i - j) * (i - j) % 5);
  for (int jumps = 1; jumps < n; ++jumps) {
    // Every strictly decreasing path n-1 -> ... -> 0 of `jumps` jumps: choose its jumps-1 interior points.
    double best = 1e300;
    for (int mask = 0; mask < (1 << (n - 2)); ++mask) {
      if (__builtin_popcount(mask) != jumps - 1) continue;
      std::vector<int> path{n - 1};
      for (int k = n - 2; k >= 1; --k)
        if (mask & (1 << (k - 1))) path.push_back(k);
      path.push_back(0);
      double c = 0;
      for (size_t m = 0; m + 1 < path.size(); ++m) c += cost[path[m]][path[m + 1]];
      best = std::min(best, c);
    }
    const auto path = cheapest_path(cost, jumps);
    ASSERT_EQ(static_cast<int>(path.size()), jumps + 1);
    EXPECT_EQ(path.front(), n - 1);
    EXPECT_EQ(path.back(), 0);
    double c = 0;
    for (size_t m = 0; m + 1 < path.size(); ++m) {
      EXPECT_GT(path[m], path[m + 1]);
      c += cost[path[m]][path[m + 1]];
    }
    EXPECT_NEAR(c, best, 1e-12) << jumps;
  }
  EXPECT_THROW(cheapest_path(cost, 0), ConfigError);
  EXPECT_THROW(cheapest_path(cost, n), ConfigError);
  const auto levels = dp_candidate_levels(linear(), 100);
  EXPECT_LE(levels.size(), 100u);
  EXPECT_GT(levels.size(), 90u);
  EXPECT_EQ(levels.front(), 0.0);
  EXPECT_EQ(levels.back(), 999.0);
  for (size_t k = 1; k < levels.size(); ++k) EXPECT_GE(levels[k] - levels[k - 1], 0.25);
  EXPECT_LT(levels[5], 5.0);  // dense where the noise is small (log-SNR half)
}

TEST(DpGrids, StepCountsAreCheckedAgainstTheCandidatesKeptBeforeAnyWork) {
  // Both halves of the candidates share the two ends: 10 levels keep at most 8 times, and a grid
  // of S steps needs S of them. S = levels - 1 or levels used to pass the check and fail after
  // the reference pass.
  s2dm::testing::Gaussian g{0.3, 0.5, &linear()};
  int64_t calls = 0;
  EpsModel counted = [&](const torch::Tensor& x, const torch::Tensor& t) { ++calls; return g.model()(x, t); };
  DpSearchOptions o;
  o.levels = 10;
  o.samples = 2;
  o.search_samples = 2;
  o.show_progress = false;
  const int max_steps = dp_max_steps(s2dm::testing::linear_model(counted, {1, 2, 2}), o.levels);
  EXPECT_EQ(max_steps, static_cast<int>(dp_candidate_levels(linear(), o.levels).size()));
  EXPECT_EQ(max_steps, o.levels - 2);
  SampleConfig config;
  for (int S : {max_steps + 1, o.levels - 1, o.levels, 0}) {
    EXPECT_THROW(search_dp_grids(s2dm::testing::linear_model(counted, {1, 2, 2}), config, {1, S}, o), ConfigError) << S;
    EXPECT_EQ(calls, 0) << S;
  }
  const auto dp = search_dp_grids(s2dm::testing::linear_model(counted, {1, 2, 2}), config, {1, max_steps}, o);
  EXPECT_EQ(dp.grids.at(1).size(), 1u);
  EXPECT_EQ(dp.grids.at(max_steps).size(), static_cast<size_t>(max_steps));
}

TEST(DpGrids, BeatsEveryHandMadeGridOnTheGaussianOracle) {
  // Gaussian data, exact ε: the probability-flow ODE's end point is known in closed form. The dp
  // grid, found from the model's own trajectories, must end nearer to it than the uniform,
  // quadratic, log-SNR, Karras and score-optimal grids of the same S (S evaluations each, then
  // the end step to ᾱ = 1; S - 1 with the analytical first step): for DDIM from the cheapest path
  // alone, for the multistep samplers after the coordinate search with the full sampler (their
  // default).
  const double mu = 0.3, s = 0.5;
  s2dm::testing::Gaussian g{mu, s, &linear()};
  const std::vector<int64_t> shape{1, 4, 4};
  std::vector<double> levels;
  for (int i = 0; i < 1000; ++i) levels.push_back(i);
  const auto cost = gaussian_cost(levels, s, 16);
  // Fresh noise, not the trajectories the grids were found on.
  const auto xT = initial_noise(0, 512, shape, s2dm::testing::test_seed(99)).to(torch::kFloat64);
  const auto exact = g.endpoint(xT, linear().alpha_bar(999));
  for (const std::string recipe : {"ddim", "deis", "dpmpp-2m", "ipndm", "ipndm afs", "dpmpp-3m", "unipc", "unipc afs"}) {
    const std::string sampler = recipe.substr(0, recipe.find(' '));
    SampleConfig config;
    config.sampler = sampler;
    config.afs = recipe.find(" afs") != std::string::npos;
    DpSearchOptions o;
    o.show_progress = false;
    o.seed = s2dm::testing::test_seed(o.seed);
    const auto dp = search_dp_grids(s2dm::testing::linear_model(g.model(), shape), config, {5, 10, 20}, o);
    auto end_error = [&](const std::vector<double>& ts) {
      auto run = run_sampler(find_sampler(sampler), g.model(), xT, make_grid(ts, linear(), "one"), sampler_options(config));
      return (run.x - exact).square().sum({1, 2, 3}).mean().sqrt().item<double>();
    };
    for (int S : {5, 10, 20}) {
      const auto& grid = dp.grids.at(S);
      ASSERT_EQ(static_cast<int>(grid.size()), S);
      EXPECT_EQ(grid.front(), 999.0);
      EXPECT_EQ(grid.back(), 0.0);
      const double mine = end_error(grid);
      double best_other = 1e300;
      for (const std::string name : {"uniform", "quad", "logsnr", "karras", "score"}) {
        const auto ts = name == "score" ? score_grid(levels, cost, S) : make_timesteps(name, S, linear());
        const double other = end_error(ts);
        EXPECT_LT(mine, other) << recipe << " against " << name << ", S = " << S;
        best_other = std::min(best_other, other);
      }
      s2dm::testing::print_margin("dp end error / best hand-made grid's, " + recipe + " S=" + std::to_string(S),
                                  mine / best_other, "< 1");
    }
  }
}

TEST(DpGrids, JumpsAreCostedByTheSamplersOwnStep) {
  // Zero-mean Gaussian data: every state on a trajectory is c_t·z for its standard-normal z, and
  // one step of a sampler from c_i·z gives d_ij·z, so a jump's cost is |d_ij - c_j|·RMS(z), the
  // same RMS(z) for every jump. The costs of λ-DDIM's jumps relative to its largest are then
  // |d_ij - c_j| relative to theirs, computed here from λ-DDIM's own step on the exact states.
  // (Every jump used to be costed by DDIM's step, whose pattern differs.)
  s2dm::testing::Gaussian g{0.0, 0.5, &linear()};
  const std::vector<int64_t> shape{1, 2, 2};
  DpSearchOptions o;
  o.levels = 12;
  o.samples = 8;
  o.search_samples = 2;
  o.holdout = 2;
  o.show_progress = false;
  SampleConfig ddim, lambda = ddim;
  lambda.sampler = "lambda-ddim";
  lambda.lambda = 2.0;
  const auto dp = search_dp_grids(s2dm::testing::linear_model(g.model(), shape), lambda, {3}, o);
  const double aT = linear().alpha_bar(999);
  const auto z = torch::ones({1, 1, 2, 2}, torch::kFloat64);
  auto exact = [&](double t) { return g.solution(z, aT, linear().alpha_bar(t)); };
  auto step_errors = [&](const SampleConfig& c) {
    std::vector<double> out;
    for (size_t k = 0; k + 1 < dp.levels.size(); ++k) {
      const double from = dp.levels[k + 1], to = dp.levels[k];
      const Grid grid{{from, to}, {linear().alpha_bar(from), linear().alpha_bar(to)}, &linear()};
      const auto x = run_sampler(find_sampler(c.sampler), g.model(), exact(from), grid, sampler_options(c)).x;
      out.push_back((x - exact(to)).abs().max().item<double>());
    }
    return out;
  };
  const auto own = step_errors(lambda), ddims = step_errors(ddim);
  const size_t top = std::max_element(own.begin(), own.end()) - own.begin();
  int compared = 0, unlike_ddim = 0;
  double worst = 0;
  for (size_t k = 0; k < own.size(); ++k) {
    if (own[k] < 0.01 * own[top]) continue;  // (below the reference solver's own error)
    ++compared;
    const double expected = own[k] / own[top], measured = dp.step_error[k] / dp.step_error[top];
    EXPECT_NEAR(measured, expected, 0.02 * expected) << "jump " << k + 1 << " -> " << k;
    worst = std::max(worst, std::abs(measured - expected) / expected);
    unlike_ddim += std::abs(ddims[k] / ddims[top] - expected) > 0.1 * expected;
  }
  EXPECT_GE(compared, 5);
  EXPECT_GE(unlike_ddim, 3) << "λ = 2 should cost jumps unlike DDIM";
  s2dm::testing::print_margin("dp: λ-DDIM jump costs against the closed form, worst relative gap", worst, "< 0.02");
}

TEST(DpGrids, SearchesOnNoiseOfItsOwnAndReportsHeldOutErrors) {
  // The trajectories start from none of the images that sampling with the search's seed draws,
  // and `holdout` more trajectories than the costs use are integrated, for the errors reported.
  s2dm::testing::Gaussian g{0.3, 0.5, &linear()};
  const std::vector<int64_t> shape{1, 2, 2};
  std::vector<torch::Tensor> starts;
  EpsModel recording = [&](const torch::Tensor& x, const torch::Tensor& t) {
    if (t.flatten()[0].item<double>() == 999.0)
      for (int64_t i = 0; i < x.size(0); ++i) starts.push_back(x[i].to(torch::kFloat32).clone());
    return g.model()(x, t);
  };
  DpSearchOptions o;
  o.levels = 10;
  o.samples = 6;
  o.search_samples = 3;
  o.holdout = 4;
  o.sweeps = 0;
  o.show_progress = false;
  const auto dp = search_dp_grids(s2dm::testing::linear_model(recording, shape), SampleConfig{}, {4}, o);
  ASSERT_GT(dp.end_error.at(4), 0.0);
  std::vector<torch::Tensor> distinct;
  for (const auto& s : starts)
    if (std::none_of(distinct.begin(), distinct.end(), [&](const torch::Tensor& d) { return torch::equal(d, s); }))
      distinct.push_back(s);
  EXPECT_EQ(distinct.size(), static_cast<size_t>(o.samples + o.holdout));
  const auto sampling = initial_noise(0, 64, shape, o.seed);
  for (const auto& s : distinct)
    for (int64_t i = 0; i < sampling.size(0); ++i) EXPECT_FALSE(torch::allclose(s, sampling[i])) << "image " << i;
}

TEST(DpGrids, FilesRecordEverySettingAndWarnOnAnyOther) {
  s2dm::testing::Gaussian g{0.3, 0.5, &linear()};
  s2dm::testing::TempDir dir;
  DpSearchOptions o;
  o.levels = 8;
  o.samples = 2;
  o.search_samples = 2;
  o.holdout = 1;
  o.show_progress = false;
  auto warning_for = [&](const SampleConfig& searched, const SampleConfig& used) {
    const std::string path = dir / "dp.yaml";
    const auto model = s2dm::testing::linear_model(g.model(), {1, 2, 2});
    make_dp_grid_file(model, searched, {3}, o, path);
    SampleConfig c = used;
    c.steps = 3;
    c.timesteps = "learned:" + path;
    return plan_sampling(c, model).warning;
  };
  SampleConfig lambda;
  lambda.sampler = "lambda-ddim";
  lambda.lambda = 0.5;
  EXPECT_EQ(warning_for(lambda, lambda), "");
  auto other = lambda;
  other.lambda = 0;
  EXPECT_NE(warning_for(lambda, other).find("lambda 0.5 there, 0.0 here"), std::string::npos) << warning_for(lambda, other);
  other = lambda;
  other.final_alpha = "first";
  EXPECT_NE(warning_for(lambda, other).find("final_alpha one there, first here"), std::string::npos);
  other = lambda;
  other.skip_tuning.rho_bottom = 0.8;
  EXPECT_NE(warning_for(lambda, other).find("skip_tuning off there"), std::string::npos);
  // The default order is recorded as the order it is (DEIS: 3), and compared.
  SampleConfig deis;
  deis.sampler = "deis";
  auto order3 = deis;
  order3.order = 3;
  EXPECT_EQ(warning_for(deis, order3), "");
  auto order2 = deis;
  order2.order = 2;
  EXPECT_NE(warning_for(deis, order2).find("order 3 there, 2 here"), std::string::npos);
  EXPECT_NE(read_grid_file(dir / "dp.yaml", 1000).settings.count("order"), 0u);
}
