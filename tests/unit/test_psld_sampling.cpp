// PSLD's samplers on closed-form models: for Gaussian data every deterministic sampler is a linear
// map, which converges to the probability-flow ODE's exact flow at its order; for a two-mode
// mixture every sampler reproduces the modes' weights and means. Also the grids, the NFE, the
// conjugate integrators' reduction to the exponential integrator, the released code's EM and
// SSCS on a fixed network with fixed noise (tests/fixtures/make_psld_fixture.py), and dp grids.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "../analytic_models.h"
#include "../fixture_tensor.h"
#include "../test_util.h"
#include "s2dm/core/errors.h"
#include "s2dm/diffusion/psld.h"
#include "s2dm/sample/dp_grid.h"
#include "s2dm/sample/generate.h"
#include "s2dm/sample/grid_file.h"
#include "s2dm/sample/samplers.h"
#include "s2dm/sample/timesteps.h"

using namespace s2dm;
using namespace s2dm::sample;

namespace {

const PsldProcess& cifar10() {
  static const PsldProcess process{};  // Γ 0.01, ν 4.01, β 8, κ 0.04, t_end 10⁻³
  return process;
}

// Data x_0 ~ Σ_k w_k N(mean_k, var_k) per pixel: z_t's law is the mixture of N(P_t [mean_k, 0],
// Σ_t(var_k, κM)), whose score gives the exact ε = -L_tᵀ ∇log p_t(z). One component: Gaussian data.
struct Mixture {
  std::vector<double> weight, mean, var;
  const PsldProcess& p = cifar10();

  EpsModel model() const {
    return [*this](const torch::Tensor& z, const torch::Tensor& t) { return eps(z, t[0].item<double>()); };
  }
  torch::Tensor eps(const torch::Tensor& z, double t) const {
    const Mat2 map = p.mean_map(t);
    std::vector<torch::Tensor> log_density, scores;
    for (size_t k = 0; k < weight.size(); ++k) {
      const Mat2 cov = p.covariance(t, var[k], p.settings().kappa * p.mass()), inv = cov.inverse();
      const auto centred = z - torch::cat({torch::full_like(z.narrow(1, 0, 1), map.xx * mean[k]),
                                           torch::full_like(z.narrow(1, 1, 1), map.mx * mean[k])},
                                          1);
      const auto quad = (centred * apply(inv, centred)).sum(1, true);
      log_density.push_back(std::log(weight[k]) - 0.5 * std::log(cov.det()) - 0.5 * quad);
      scores.push_back(-apply(inv, centred));
    }
    const auto responsibility = torch::softmax(torch::stack(log_density), 0);
    const auto score = (responsibility * torch::stack(scores)).sum(0);
    return apply(p.noise_map(t).transposed() * -1.0, score);
  }
};

Grid grid(const std::string& spec, int steps) { return make_psld_grid(spec, steps, cifar10()); }

// A deterministic sampler's map on Gaussian data (it is linear): its outputs for the basis states.
Mat2 sampler_map(const std::string& name, const Grid& g, const SamplerOptions& options = {}) {
  const Mixture gaussian{{1}, {0}, {0.25}};
  const auto basis = torch::tensor({1.0, 0.0, 0.0, 1.0}, torch::kFloat64).view({2, 2, 1, 1});
  const auto out = run_sampler(find_sampler(name), gaussian.model(), basis, g, options).x.flatten();
  const auto v = out.accessor<double, 1>();
  return {v[0], v[2], v[1], v[3]};  // (columns: the images of [1, 0] and [0, 1])
}

// The exact probability-flow map from t = 1 to the grid's t_end, then the same denoising step.
Mat2 exact_map(const Grid& g) {
  const PsldProcess& p = cifar10();
  const Mixture gaussian{{1}, {0}, {0.25}};
  const double gamma = p.settings().gamma, nu = p.settings().nu, t_end = g.t[g.steps() - 1];
  const Mat2 f_bar{-gamma, p.mass_inverse(), -1, -nu}, d{gamma, 0, 0, p.mass() * nu};
  auto velocity = [&](double t) {  // dz/dt = F z - (β/2) D s, s = -Σ_t⁻¹ z
    return f_bar * (p.beta(t) / 2) + d * p.covariance(t, 0.25, p.settings().kappa * p.mass()).inverse() * (p.beta(t) / 2);
  };
  Mat2 flow;
  const int n = 40000;  // RK4 in u = √t from 1 to √t_end (the velocity grows like 1/t near 0)
  const double u0 = 1, u1 = std::sqrt(t_end), du = (u1 - u0) / n;
  auto rate = [&](double u) { return velocity(u * u) * (2 * u); };
  for (int i = 0; i < n; ++i) {
    const double u = u0 + i * du;
    const Mat2 k1 = rate(u) * flow, k2 = rate(u + du / 2) * (flow + k1 * (du / 2));
    const Mat2 k3 = rate(u + du / 2) * (flow + k2 * (du / 2)), k4 = rate(u + du) * (flow + k3 * du);
    flow = flow + (k1 + k2 * 2.0 + k3 * 2.0 + k4) * (du / 6);
  }
  // Denoising: z + t_end (-F z + (β/2) D S ε*), ε* = Lᵀ Σ⁻¹ z.
  const Mat2 s_eps = p.score_map(t_end) * p.noise_map(t_end).transposed() *
                     p.covariance(t_end, 0.25, p.settings().kappa * p.mass()).inverse();
  const Mat2 drift = f_bar * (-p.beta(t_end) / 2) + d * s_eps * (p.beta(t_end) / 2);
  return (Mat2{} + drift * t_end) * flow;
}

double distance(const Mat2& a, const Mat2& b) {
  const Mat2 e = a - b;
  return std::sqrt(e.xx * e.xx + e.xm * e.xm + e.mx * e.mx + e.mm * e.mm);
}

std::vector<std::string> psld_samplers(bool stochastic) {
  std::vector<std::string> names;
  for (const auto& s : samplers())
    if (s.process == "psld" && s.stochastic == stochastic) names.push_back(s.name);
  return names;
}

}  // namespace

TEST(PsldGrids, FollowTheReleasedCodeAndEndWithTheDenoisingStep) {
  const auto uniform = grid("uniform", 5);  // 4 integration steps from 1 to 10⁻³, then to 0
  ASSERT_EQ(uniform.steps(), 5);
  for (int i = 0; i <= 4; ++i) EXPECT_NEAR(uniform.t[i], 1 - 0.999 * i / 4, 1e-15);
  EXPECT_EQ(uniform.t[5], 0.0);
  const auto quad = grid("quad", 5);
  for (int i = 0; i <= 4; ++i) EXPECT_NEAR(quad.t[i], 1e-3 + 0.999 * (1 - i / 4.0) * (1 - i / 4.0), 1e-15);
  // logsnr and karras: their σ (√Σxx / P_xx) spaced as the VP grids space it.
  const PsldProcess& p = cifar10();
  auto sigma = [&](double t) { return std::sqrt(p.hsm_covariance(t).xx) / p.mean_map(t).xx; };
  const auto logsnr = grid("logsnr", 6);
  for (int i = 1; i < 5; ++i)
    EXPECT_NEAR(std::log(sigma(logsnr.t[i])) - std::log(sigma(logsnr.t[i - 1])),
                std::log(sigma(logsnr.t[i + 1])) - std::log(sigma(logsnr.t[i])), 1e-9);
  EXPECT_EQ(logsnr.t[0], 1.0);
  EXPECT_EQ(logsnr.t[5], 1e-3);
  const auto karras = grid("karras", 6);
  for (int i = 1; i < 5; ++i)
    EXPECT_NEAR(std::pow(sigma(karras.t[i]), 1 / 7.0) - std::pow(sigma(karras.t[i - 1]), 1 / 7.0),
                std::pow(sigma(karras.t[i + 1]), 1 / 7.0) - std::pow(sigma(karras.t[i]), 1 / 7.0), 1e-9);
  const auto list = grid("1,0.3,0.002", 99);  // (a list sets the steps)
  EXPECT_EQ(list.t, (std::vector<double>{1, 0.3, 0.002, 0}));
  for (const std::string bad : {"ddim", "1,0.3,0.5", "1.5,0.1", "0.5,0"}) EXPECT_THROW(grid(bad, 10), ConfigError) << bad;
  EXPECT_THROW(grid("uniform", 1), ConfigError);
  PsldConfig heavy_data;  // Γ > ν: P_xx crosses 0, σ(t) measures no time
  heavy_data.gamma = 4.01;
  heavy_data.nu = 0.01;
  EXPECT_THROW(make_psld_grid("logsnr", 10, PsldProcess(heavy_data)), ConfigError);
  EXPECT_NO_THROW(make_psld_grid("quad", 10, PsldProcess(heavy_data)));
}

TEST(PsldSamplers, NfeMatchesTheDocumentedCount) {
  const Mixture gaussian{{1}, {0}, {0.25}};
  const auto z = torch::randn({2, 2, 1, 1}, torch::kFloat64);
  for (const auto& s : samplers()) {
    if (s.process != "psld") continue;
    for (int S : {2, 3, 7}) {
      const auto run = run_sampler(s, gaussian.model(), z, grid("uniform", S), {});
      EXPECT_EQ(run.nfe, s.nfe(S)) << s.name << " S=" << S;
      EXPECT_TRUE(torch::isfinite(run.x).all().item<bool>()) << s.name;
    }
  }
  EXPECT_EQ(find_sampler("nse").nfe(50), 99);
  EXPECT_EQ(find_sampler("nvv").nfe(50), 148);
  EXPECT_EQ(find_sampler("em").nfe(50), 50);  // as the released code counts its N = 50
}

TEST(PsldSamplers, ConjugateIntegratorWithLambdaZeroIsTheExponentialIntegrator) {
  // One step from 1 to t_end of ε held at c: z' = P(t_end) P(1)⁻¹ z + ∫ P(t_end) P(s)⁻¹ (β/2) D S_s ds c
  // (the linear part exact), then the denoising step; the integral here by a fine midpoint rule in √s.
  const PsldProcess& p = cifar10();
  const Grid g = grid("uniform", 2);
  const double t_end = 1e-3, c_x = 0.7, c_m = -1.3;
  const EpsModel held = [&](const torch::Tensor& z, const torch::Tensor&) {
    return torch::cat({torch::full_like(z.narrow(1, 0, 1), c_x), torch::full_like(z.narrow(1, 1, 1), c_m)}, 1);
  };
  const Mat2 d{p.settings().gamma, 0, 0, p.mass() * p.settings().nu};
  Mat2 weight{0, 0, 0, 0};
  const int n = 200000;
  const double u0 = std::sqrt(t_end), du = (1 - u0) / n;
  for (int i = 0; i < n; ++i) {
    const double u = u0 + (i + 0.5) * du, s = u * u;
    weight = weight + p.mean_map(t_end) * p.mean_map(s).inverse() * d * p.score_map(s) * (p.beta(s) / 2 * 2 * u * du);
  }
  const Mat2 transfer = p.mean_map(t_end) * p.mean_map(1).inverse();
  const Mat2 f_bar{-p.settings().gamma, p.mass_inverse(), -1, -p.settings().nu};
  const auto z = torch::tensor({0.4, -0.9}, torch::kFloat64).view({1, 2, 1, 1});
  auto expected = apply(transfer, z) + torch::tensor({weight.xx * c_x + weight.xm * c_m, weight.mx * c_x + weight.mm * c_m},
                                                     torch::kFloat64).view({1, 2, 1, 1});
  const auto eps = held(z, {});
  expected = expected + (apply(f_bar * (-p.beta(t_end) / 2), expected) +
                         apply(d * p.score_map(t_end) * (p.beta(t_end) / 2), eps)) * t_end;
  const auto out = run_sampler(find_sampler("psld-ddim"), held, z, g, {}).x;
  EXPECT_LT((out - expected).abs().max().item<double>(), 1e-7 * expected.abs().max().item<double>()) << out << expected;
}

TEST(PsldSamplers, DeterministicSamplersConvergeToTheExactFlowAtFirstOrder) {
  // Gaussian data: every deterministic sampler is a linear map; its distance to the exact map
  // (RK4 with 40000 steps) halves as the steps double (first order), on the quadratic grid where
  // the split samplers are stable (on the uniform one the stiff momentum (βν/2 = 16) needs more).
  SamplerOptions lambda;
  lambda.lambda = 0.5;
  struct Case {
    std::string name;
    SamplerOptions options;
  };
  std::vector<Case> cases;
  for (const auto& name : psld_samplers(false)) cases.push_back({name, {}});
  cases.push_back({"psld-ddim", lambda});
  cases.push_back({"psld-ddim-ones", lambda});
  double lowest = 10, highest = 0;
  for (const auto& c : cases) {
    std::vector<double> errors;  // relative to the exact map
    for (int steps : {101, 201, 401}) {
      const auto g = grid("quad", steps);
      const Mat2 exact = exact_map(g);
      errors.push_back(distance(sampler_map(c.name, g, c.options), exact) / distance(exact, {0, 0, 0, 0}));
    }
    for (int i = 0; i + 1 < 3; ++i) {
      const double order = std::log2(errors[i] / errors[i + 1]);
      EXPECT_GT(order, 0.8) << c.name << " errors " << errors[0] << " " << errors[1] << " " << errors[2];
      EXPECT_LT(order, 1.3) << c.name << " errors " << errors[0] << " " << errors[1] << " " << errors[2];
      lowest = std::min(lowest, order);
      highest = std::max(highest, order);
    }
    // (Near the prior the score all but cancels the friction, and what is left turns (x, m) at
    // (β/2)√M⁻¹ = 8 radians per unit time: first-order phase errors, which no sampler here
    // integrates exactly, keep the error near 10⁻¹ at 400 steps.)
    EXPECT_LT(errors.back(), 0.3) << c.name;
  }
  s2dm::testing::print_margin("PSLD deterministic samplers: observed orders from", lowest, "> 0.8");
  s2dm::testing::print_margin("PSLD deterministic samplers: observed orders up to", highest, "< 1.3");
}

TEST(PsldSamplers, ReducedSymplecticEulerLeadsAtEveryBudget) {
  // §4 of the issue with the exact score: each deterministic sampler's map against the exact flow
  // (Gaussian data, quadratic grid) at about 20, 50 and 100 NFE, the naive splitting samplers at
  // as many evaluations (fewer steps). Reduced symplectic Euler is the most accurate at each, by
  // 1.8x or more (README quotes the table this prints).
  for (int budget : {20, 50, 100}) {
    std::string table;
    double rse = 0, best_other = 1e300;
    for (const auto& name : psld_samplers(false)) {
      if (name == "psld-ddim-ones") continue;  // (λ = 0: the same as psld-ddim)
      const int per_step = name == "nse" ? 2 : name == "nvv" ? 3 : 1;
      const int steps = (budget + per_step - 1) / per_step;  // (NFE = per_step·S - per_step + 1)
      const auto g = grid("quad", steps);
      const Mat2 exact = exact_map(g);
      const double error = distance(sampler_map(name, g), exact) / distance(exact, {0, 0, 0, 0});
      table += " " + name + " " + std::to_string(error).substr(0, 6);
      if (name == "rse")
        rse = error;
      else
        best_other = std::min(best_other, error);
    }
    EXPECT_LT(rse * 1.5, best_other) << budget << " NFE:" << table;
    s2dm::testing::print_margin("PSLD samplers at " + std::to_string(budget) + " NFE, relative errors:" + table +
                                    "; rse's advantage over the next best",
                                best_other / rse, "> 1.5");
  }
}

TEST(PsldSamplers, MixtureSamplesMatchMeansAndWeights) {
  // Two separated modes: at 400 steps every PSLD sampler puts each mode's share and mean within
  // Monte-Carlo error (4 standard errors) plus a discretisation allowance.
  const Mixture mixture{{0.3, 0.7}, {-1.5, 1.0}, {0.04, 0.09}};
  const int n = 2000;
  torch::manual_seed(s2dm::testing::test_seed(7));
  const auto z = cifar10().prior(torch::randn({n, 2, 1, 1}, torch::kFloat64));
  const double share_tol = 4 * std::sqrt(0.3 * 0.7 / n);
  double worst = 0;
  SamplerOptions options;
  options.noise_seed = s2dm::testing::test_seed(11);
  for (const auto& s : samplers()) {
    if (s.process != "psld") continue;
    const auto x = run_sampler(s, mixture.model(), z, grid("quad", 400), options).x.narrow(1, 0, 1).flatten();
    const auto left = x < -0.25;
    const double share = left.to(torch::kFloat64).mean().item<double>();
    const double mean_left = x.masked_select(left).mean().item<double>(), mean_right = x.masked_select(~left).mean().item<double>();
    const double tol_left = 4 * 0.2 / std::sqrt(0.3 * n) + 0.03, tol_right = 4 * 0.3 / std::sqrt(0.7 * n) + 0.03;
    EXPECT_NEAR(share, 0.3, share_tol) << s.name;
    EXPECT_NEAR(mean_left, -1.5, tol_left) << s.name;
    EXPECT_NEAR(mean_right, 1.0, tol_right) << s.name;
    worst = std::max({worst, std::abs(share - 0.3) / share_tol, std::abs(mean_left + 1.5) / tol_left,
                      std::abs(mean_right - 1.0) / tol_right});
  }
  s2dm::testing::print_margin("PSLD mixture samples: worst deviation / its tolerance", worst, "< 1");
}

TEST(PsldSamplers, ProcessMismatchIsAClearError) {
  try {
    find_sampler("ddim", "psld");
    FAIL() << "ddim accepted for a PSLD model";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("PSLD models"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("sscs"), std::string::npos) << e.what();
  }
  EXPECT_THROW(find_sampler("sscs", "vp"), ConfigError);
  EXPECT_EQ(find_sampler("sscs", "psld").name, "sscs");
}

TEST(PsldSamplers, EulerMaruyamaAndSscsEqualTheReleasedCode) {
  // The released samplers (make_psld_fixture.py) around the stand-in network ε̂ = tanh(z)/2 + t z/10
  // (evaluated in float32, as the released code feeds its network), with s2dm's noise streams.
  const EpsModel stand_in = [](const torch::Tensor& z, const torch::Tensor& t) {
    const auto z32 = z.to(torch::kFloat32), t32 = t.to(torch::kFloat32).view({-1, 1, 1, 1});
    return torch::tanh(z32) / 2 + t32 * z32 / 10;
  };
  const auto z = s2dm::testing::fixture_tensor("psld_sampler_z.npy");
  SamplerOptions options;
  options.noise_seed = 3;
  for (const auto& [name, spec] : {std::pair<std::string, std::string>{"em", "uniform"}, {"sscs", "quad"}}) {
    const auto expected = s2dm::testing::fixture_tensor("psld_sampler_" + name + ".npy");
    const auto out = run_sampler(find_sampler(name), stand_in, z, grid(spec, 8), options).x;
    const double error = ((out - expected).norm() / expected.norm()).item<double>();
    EXPECT_LT(error, 1e-6) << name;
    s2dm::testing::print_margin("released " + name + ": relative distance", error, "< 1e-6");
  }
}

TEST(PsldSamplers, DpGridsFollowTheExactFlowCloserThanTheHandMadeOnes) {
  // The dp search on a PSLD model (Gaussian data, exact ε): its grids run from 1 to t_end, and take
  // the one-step samplers (and nvv, its jumps costed by the exponential integrator) closer to the
  // exact probability-flow map's image than the quadratic and uniform grids of the same NFE. (Not
  // so pf-euler, whose error exceeds the map's size at these NFE on every grid, nor grids nearly
  // as dense as the candidates: at 64 of 100 the hand-made grids' freedom wins.) A grid file
  // round-trips into a sampling plan; a VP model refuses it, and stochastic samplers are refused.
  const Mixture gaussian{{1}, {0}, {0.25}};
  Config config;
  config.diffusion.process = "psld";
  config.data.channels = 1;
  config.data.image_size = 1;
  const auto model = DiffusionModel::of(config, ModelEps{gaussian.model(), {}});
  DpSearchOptions o;
  o.levels = 100;
  o.samples = 16;
  o.holdout = 4;
  o.seed = s2dm::testing::test_seed(0);
  o.show_progress = false;
  double worst = 0;
  for (const std::string name : {"psld-ddim", "rse", "csps", "nvv"}) {
    SampleConfig c;
    c.sampler = name;
    const auto dp = search_dp_grids(model, c, {16, 32}, o);
    EXPECT_EQ(dp.levels.front(), cifar10().settings().t_end);
    EXPECT_EQ(dp.levels.back(), 1.0);
    for (const auto& [steps, times] : dp.grids) {
      ASSERT_EQ(static_cast<int>(times.size()), steps) << name;
      EXPECT_EQ(times.front(), 1.0);
      EXPECT_EQ(times.back(), cifar10().settings().t_end);
      const Grid g = psld_grid(times, cifar10(), "dp");
      const Mat2 exact = exact_map(g);
      // (The image's error from the prior's z = [ξ, √M ξ'], as the search measures it.)
      auto x_row = [](const Mat2& a) { return Mat2{a.xx, a.xm * std::sqrt(cifar10().mass()), 0, 0}; };
      const double on_dp = distance(x_row(sampler_map(name, g)), x_row(exact));
      for (const char* hand_made : {"quad", "uniform"}) {
        const double on_hand = distance(x_row(sampler_map(name, grid(hand_made, steps))), x_row(exact));
        EXPECT_LT(on_dp, on_hand) << name << " " << steps << " steps against " << hand_made;
        worst = std::max(worst, on_dp / on_hand);
      }
    }
  }
  s2dm::testing::print_margin("PSLD dp grids: worst error ratio to the quadratic and uniform grids", worst, "< 1");

  SampleConfig c;
  c.sampler = "rse";
  c.steps = 4;
  s2dm::testing::TempDir dir;
  const std::string path = dir / "dp.yaml";
  o.levels = 10;
  const auto file = make_dp_grid_file(model, c, {4}, o, path);
  c.timesteps = "learned:" + path;
  const auto plan = plan_sampling(c, model);
  auto expected = file.timesteps.at(4);
  expected.push_back(0.0);
  EXPECT_EQ(plan.grid.t, expected);
  EXPECT_TRUE(plan.grid.psld != nullptr);
  auto refused = [](const std::function<void()>& f, const std::string& needle) {
    try {
      f();
      ADD_FAILURE() << "accepted; expected an error with: " << needle;
    } catch (const ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  c.sampler = "ddim";
  refused([&] { plan_sampling(c, s2dm::testing::linear_model(gaussian.model())); },
          "grids of a PSLD model's time, this is a VP model");
  c.sampler = "em";
  refused([&] { search_dp_grids(model, c, {4}, o); }, "is stochastic");
}
