// Time grids and DDIM, checked against numpy's grids and the exact probability-flow endpoint
// for Gaussian data (papers.md §7).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

#include "s2dm/errors.h"
#include "s2dm/generate.h"
#include "s2dm/noise_schedule.h"
#include "s2dm/samplers.h"
#include "s2dm/timesteps.h"

using namespace s2dm;
using namespace s2dm::sample;

namespace {

std::vector<double> asc(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v;
}

// The exact ε-model for x₀ ~ N(μ, s² I): ε*(x, t) = √(1-a)(x - √a μ)/(a s² + 1 - a).
struct GaussianData {
  double mu, s;
  const NoiseSchedule& schedule;
  torch::Tensor eps(const torch::Tensor& x, const torch::Tensor& t) const {
    double a = schedule.alpha_bar(t[0].item<double>());
    return std::sqrt(1 - a) * (x - std::sqrt(a) * mu) / (a * s * s + 1 - a);
  }
  // Where the probability-flow ODE from ᾱ = a_T maps x_T at ᾱ = 1.
  torch::Tensor endpoint(const torch::Tensor& xT, double aT) const {
    return mu + s * (xT - std::sqrt(aT) * mu) / std::sqrt(aT * s * s + 1 - aT);
  }
};

}  // namespace

TEST(Timesteps, GridsMatchTheReferenceFormulas) {
  EXPECT_EQ(asc(make_timesteps("uniform", 10, 1000)), (std::vector<double>{0, 100, 200, 300, 400, 500, 600, 700, 800, 900}));
  // numpy: (np.linspace(0, np.sqrt(800), 10) ** 2).astype(int)
  EXPECT_EQ(asc(make_timesteps("quad", 10, 1000)), (std::vector<double>{0, 9, 39, 88, 158, 246, 355, 483, 632, 800}));
  // numpy: np.round(np.linspace(0, 999, 7))
  EXPECT_EQ(asc(make_timesteps("linspace", 7, 1000)), (std::vector<double>{0, 166, 333, 500, 666, 832, 999}));
  // numpy: np.round(np.arange(1000, 0, -1000/7)) - 1
  EXPECT_EQ(make_timesteps("trailing", 7, 1000), (std::vector<double>{999, 856, 713, 570, 428, 285, 142}));
  EXPECT_EQ(asc(make_timesteps("leading", 4, 1000)), (std::vector<double>{0, 250, 500, 750}));
  auto ts = make_timesteps("linspace", 50, 1000);
  for (size_t i = 1; i < ts.size(); ++i) EXPECT_LT(ts[i], ts[i - 1]);
}

TEST(Timesteps, DuplicatesRemovedAndBadInputRejected) {
  auto q = make_timesteps("quad", 100, 1000);  // the quadratic grid repeats small steps
  EXPECT_LT(q.size(), 100u);
  EXPECT_EQ(std::set<double>(q.begin(), q.end()).size(), q.size());
  EXPECT_THROW(make_timesteps("linspace", 1001, 1000), ConfigError);
  EXPECT_THROW(make_timesteps("linspace", 0, 1000), ConfigError);
  try {
    make_timesteps("quadratic", 10, 1000);
    FAIL();
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("did you mean 'quad'"), std::string::npos) << e.what();
  }
  auto s = NoiseSchedule::linear(1000);
  EXPECT_THROW(make_grid({5, 10}, s, "one"), ConfigError);
  EXPECT_THROW(make_grid({1000}, s, "one"), ConfigError);
  auto g = make_grid({999, 0}, s, "first");
  EXPECT_DOUBLE_EQ(g.alpha_bar.back(), 0.9999);
  EXPECT_DOUBLE_EQ(make_grid({999, 0}, s, "one").alpha_bar.back(), 1.0);
}

TEST(Ddim, DeterministicAtEtaZeroAndCountsNfe) {
  auto s = NoiseSchedule::linear(1000);
  GaussianData g{0.3, 0.5, s};
  EpsModel model = [&](const torch::Tensor& x, const torch::Tensor& t) { return g.eps(x, t); };
  auto grid = make_grid(make_timesteps("uniform", 20, 1000), s, "one");
  auto x = torch::randn({4, 1, 2, 2}, torch::kFloat64);
  auto& ddim = find_sampler("ddim");
  auto a = run_sampler(ddim, model, x, grid, {});
  auto b = run_sampler(ddim, model, x, grid, {});
  EXPECT_TRUE(torch::equal(a.x, b.x));
  EXPECT_EQ(a.nfe, 20);
  EXPECT_EQ(ddim.nfe(20), 20);
  // η = 1 draws noise: different from η = 0, reproducible from its seed.
  SamplerOptions stochastic{1.0, false, 5};
  auto c = run_sampler(ddim, model, x, grid, stochastic), d = run_sampler(ddim, model, x, grid, stochastic);
  EXPECT_TRUE(torch::equal(c.x, d.x));
  EXPECT_FALSE(torch::allclose(c.x, a.x));
}

TEST(Ddim, ConvergesToExactEndpointAtFirstOrder) {
  auto s = NoiseSchedule::linear(1000);
  GaussianData g{0.3, 0.5, s};
  EpsModel model = [&](const torch::Tensor& x, const torch::Tensor& t) { return g.eps(x, t); };
  torch::manual_seed(0);
  auto xT = torch::randn({64, 1, 1, 1}, torch::kFloat64);
  auto exact = g.endpoint(xT, s.alpha_bar(999));
  std::vector<double> errors;
  for (int S : {10, 20, 40, 80}) {
    // A uniform continuous grid from 999 to 0 (fractional t allowed), then to ᾱ = 1.
    std::vector<double> ts;
    for (int i = 0; i < S; ++i) ts.push_back(999.0 * (S - i) / S);
    auto out = run_sampler(find_sampler("ddim"), model, xT, make_grid(ts, s, "one"), {});
    errors.push_back((out.x - exact).abs().max().item<double>());
  }
  for (size_t i = 1; i < errors.size(); ++i) {
    double order = std::log2(errors[i - 1] / errors[i]);
    EXPECT_GT(order, 0.8) << "S=" << (10 << i) << " errors " << errors[i - 1] << " -> " << errors[i];
    EXPECT_LT(order, 1.3) << "S=" << (10 << i);
  }
}

TEST(Ddim, EtaOneHasThePosteriorVariance) {
  // With ε̂ = 0 and x = 0, one DDIM step with η = 1 yields pure noise of variance β̃ =
  // (1-a')/(1-a)·(1 - a/a'), DDPM's posterior variance.
  auto s = NoiseSchedule::linear(1000);
  EpsModel zero = [](const torch::Tensor& x, const torch::Tensor&) { return torch::zeros_like(x); };
  auto grid = make_grid({600, 500}, s, "one");
  grid.t.resize(1);
  grid.alpha_bar.resize(2);
  auto x = torch::zeros({200000}, torch::kFloat64).view({-1, 1, 1, 1});
  auto out = run_sampler(find_sampler("ddpm"), zero, x, grid, {0.0, false, 11});
  double a = s.alpha_bar(600), an = s.alpha_bar(500);
  double var = (1 - an) / (1 - a) * (1 - a / an);
  EXPECT_NEAR(out.x.var().item<double>() / var, 1.0, 0.02);
}

TEST(Samplers, UnknownNameSuggests) {
  try {
    find_sampler("ddmi");
    FAIL();
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("did you mean 'ddim'"), std::string::npos) << e.what();
  }
}

TEST(Generate, SeededNoiseIndependentOfBatching) {
  auto all = initial_noise(0, 6, {1, 4, 4}, 3);
  auto tail = initial_noise(4, 2, {1, 4, 4}, 3);
  EXPECT_TRUE(torch::equal(all.slice(0, 4), tail));
  EXPECT_FALSE(torch::equal(initial_noise(0, 1, {1, 4, 4}, 4), all.slice(0, 0, 1)));
  auto sched = NoiseSchedule::linear(1000);
  GaussianData g{0.0, 1.0, sched};
  EpsModel model = [&](const torch::Tensor& x, const torch::Tensor& t) { return g.eps(x, t); };
  SampleConfig sc;
  sc.steps = 5;
  sc.batch = 2;
  auto a = generate(model, sched, sc, {1, 4, 4}, torch::kCPU, 3, 5, {}, false);
  sc.batch = 5;
  auto b = generate(model, sched, sc, {1, 4, 4}, torch::kCPU, 3, 5, {}, false);
  EXPECT_TRUE(torch::allclose(a.samples, b.samples));
  EXPECT_EQ(a.samples.size(0), 5);
  EXPECT_EQ(a.nfe, 5);
}
