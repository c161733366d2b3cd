// Time grids and samplers, checked against numpy's grids, closed-form Gaussian and mixture
// ε-models (docs/algorithms.md §7), the identities between methods, and the documented NFE.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <set>

#include "../analytic_models.h"
#include "../fixture_tensor.h"
#include "../test_util.h"
#include "s2dm/core/errors.h"
#include "s2dm/io/checkpoint.h"
#include "s2dm/io/file_io.h"
#include "s2dm/io/npy.h"
#include "s2dm/io/npy_tensor.h"
#include "s2dm/model/model_source.h"
#include "s2dm/sample/generate.h"
#include "s2dm/diffusion/noise_schedule.h"
#include "s2dm/diffusion/precond.h"
#include "s2dm/sample/samplers.h"
#include "s2dm/sample/timesteps.h"
#include "s2dm/model/torchscript_model.h"
#include "s2dm/model/unet.h"

using namespace s2dm;
using namespace s2dm::sample;

namespace {

const NoiseSchedule& linear() { return s2dm::testing::linear_schedule(); }

std::vector<double> asc(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v;
}

std::vector<double> grid_of(const std::string& spec, int S) { return make_timesteps(spec, S, linear()); }

// A uniform continuous grid from t = 999 down to the end point (ᾱ = 1 for "one", ᾱ_0 at t = 0
// for "first").
Grid uniform_grid(int S, const std::string& final_alpha = "one") {
  std::vector<double> ts;
  for (int i = 0; i < S; ++i) ts.push_back(999.0 * (S - i) / S);
  return make_grid(ts, linear(), final_alpha);
}

SamplerOptions with_order(int order) {
  SamplerOptions o;
  o.order = order;
  return o;
}

}  // namespace

TEST(Timesteps, GridsMatchTheReferenceFormulas) {
  EXPECT_EQ(asc(grid_of("uniform", 10)), (std::vector<double>{0, 100, 200, 300, 400, 500, 600, 700, 800, 900}));
  // numpy: (np.linspace(0, np.sqrt(800), 10) ** 2).astype(int)
  EXPECT_EQ(asc(grid_of("quad", 10)), (std::vector<double>{0, 9, 39, 88, 158, 246, 355, 483, 632, 800}));
  // numpy: np.round(np.linspace(0, 999, 7))
  EXPECT_EQ(asc(grid_of("linspace", 7)), (std::vector<double>{0, 166, 333, 500, 666, 832, 999}));
  // numpy: np.round(np.arange(1000, 0, -1000/7)) - 1
  EXPECT_EQ(grid_of("trailing", 7), (std::vector<double>{999, 856, 713, 570, 428, 285, 142}));
  EXPECT_EQ(asc(grid_of("leading", 4)), (std::vector<double>{0, 250, 500, 750}));
  for (const auto& name : timestep_grids()) {
    auto ts = grid_of(name, 50);
    for (size_t i = 1; i < ts.size(); ++i) EXPECT_LT(ts[i], ts[i - 1]) << name;
  }
}

TEST(Timesteps, NamedGridsSpendSEvaluationsWhetherOrNotSDividesT) {
  // range(0, T, T // S) gives [0, 333, 666, 999] for S = 3 and all 1000 steps for S = 900: the
  // uniform grid is ⌊i·T/S⌋, i < S, which equals it where S divides T.
  EXPECT_EQ(grid_of("uniform", 3), (std::vector<double>{666, 333, 0}));
  EXPECT_EQ(grid_of("uniform", 900).size(), 900u);
  EXPECT_DOUBLE_EQ(grid_of("uniform", 900).front(), 998);  // ⌊T − T/S⌋
  for (int S : {4, 8, 20, 125, 250, 500, 1000}) {
    std::vector<double> range;
    for (int t = 0; t < 1000; t += 1000 / S) range.push_back(t);
    EXPECT_EQ(asc(grid_of("uniform", S)), range) << S;
  }
  // Every named grid: S distinct points for S not dividing T, and a sampler run on it spends S
  // evaluations. (quad is the exception: its squares coincide at large S; a warning says so.)
  s2dm::testing::Gaussian g{0.3, 0.5, &linear()};
  auto model = g.model();
  const auto diffusion = s2dm::testing::linear_model(model);
  for (const auto& name : timestep_grids())
    for (int S : {3, 7, 30, 300, 900, 999}) {
      const auto ts = grid_of(name, S);
      if (name == "quad" && S > 20) {
        EXPECT_LE(ts.size(), static_cast<size_t>(S)) << name << " S=" << S;
        continue;
      }
      ASSERT_EQ(ts.size(), static_cast<size_t>(S)) << name << " S=" << S;
      if (S > 30) continue;  // (the run below is the same at every S)
      SampleConfig sc;
      sc.timesteps = name;
      sc.steps = S;
      const auto plan = plan_sampling(sc, diffusion);
      EXPECT_EQ(plan.grid.steps(), S) << name;
      EXPECT_EQ(run_sampler(*plan.sampler, model, torch::randn({2, 1, 1, 1}, torch::kFloat64), plan.grid, plan.options).nfe, S)
          << name << " S=" << S;
    }
}

TEST(Timesteps, LogSnrAndKarrasFollowTheirSpacing) {
  auto sigma = [](double t) { double a = linear().alpha_bar(t); return std::sqrt((1 - a) / a); };
  auto ls = grid_of("logsnr", 8);
  ASSERT_EQ(ls.size(), 8u);
  EXPECT_DOUBLE_EQ(ls.front(), 999);
  EXPECT_DOUBLE_EQ(ls.back(), 0);
  for (size_t i = 2; i < ls.size(); ++i)  // equal steps in log σ (= -log-SNR / 2)
    EXPECT_NEAR(std::log(sigma(ls[i])) - std::log(sigma(ls[i - 1])), std::log(sigma(ls[1])) - std::log(sigma(ls[0])), 1e-6);
  auto k = make_timesteps("karras", 6, linear(), 7.0);
  for (size_t i = 2; i < k.size(); ++i)  // equal steps in σ^(1/ρ)
    EXPECT_NEAR(std::pow(sigma(k[i]), 1 / 7.0) - std::pow(sigma(k[i - 1]), 1 / 7.0),
                std::pow(sigma(k[1]), 1 / 7.0) - std::pow(sigma(k[0]), 1 / 7.0), 1e-6);
  EXPECT_NEAR(time_of_alpha_bar(linear(), linear().alphas_cumprod()[321]), 321.0, 1e-9);
}

TEST(Timesteps, ListsFilesDuplicatesAndBadInput) {
  EXPECT_EQ(grid_of("999,500.5,0", 0), (std::vector<double>{999, 500.5, 0}));
  s2dm::testing::TempDir dir;
  s2dm::testing::write_bytes(dir / "g.txt", "# my grid\n[900, 600, 300]\n");
  EXPECT_EQ(grid_of("file:" + (dir / "g.txt"), 0), (std::vector<double>{900, 600, 300}));
  s2dm::testing::write_bytes(dir / "up.txt", "100 200");
  EXPECT_THROW(grid_of("file:" + (dir / "up.txt"), 0), ConfigError);
  s2dm::testing::write_bytes(dir / "far.txt", "1500 200");
  EXPECT_THROW(grid_of("file:" + (dir / "far.txt"), 0), ConfigError);
  EXPECT_THROW(grid_of("file:" + (dir / "none.txt"), 0), ConfigError);
  EXPECT_THROW(grid_of("900,abc", 0), ConfigError);
  // A block YAML list reads as the flow one; an empty entry is refused, not dropped.
  s2dm::testing::write_bytes(dir / "block.txt", "# a grid\n- 999\n- 500  # half\n- 0\n");
  EXPECT_EQ(grid_of("file:" + (dir / "block.txt"), 0), (std::vector<double>{999, 500, 0}));
  for (const char* empty : {"999,,0", ",999,0", "999,0,", "[999, , 0]"}) EXPECT_THROW(grid_of(empty, 0), ConfigError) << empty;
  s2dm::testing::write_bytes(dir / "commented.txt", "999 # one, two\n0\n");
  EXPECT_EQ(grid_of("file:" + (dir / "commented.txt"), 0), (std::vector<double>{999, 0}));
  auto q = grid_of("quad", 100);  // the quadratic grid repeats small steps
  EXPECT_LT(q.size(), 100u);
  EXPECT_EQ(std::set<double>(q.begin(), q.end()).size(), q.size());
  EXPECT_THROW(grid_of("linspace", 1001), ConfigError);
  EXPECT_THROW(grid_of("linspace", 0), ConfigError);
  try {
    grid_of("quadratic", 10);
    FAIL();
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("did you mean 'quad'"), std::string::npos) << e.what();
  }
  EXPECT_THROW(make_grid({5, 10}, linear(), "one"), ConfigError);
  auto g = make_grid({999, 10}, linear(), "first");
  EXPECT_EQ(g.steps(), 2);
  EXPECT_DOUBLE_EQ(g.alpha_bar.back(), 0.9999);
  EXPECT_DOUBLE_EQ(make_grid({999, 10}, linear(), "one").alpha_bar.back(), 1.0);
}

TEST(Samplers, NfeMatchesTheDocumentedCount) {
  s2dm::testing::Gaussian g{0.3, 0.5, &linear()};
  auto model = g.model();
  auto x = torch::randn({2, 1, 1, 1}, torch::kFloat64);
  for (const auto& s : samplers())
    for (int S : {1, 2, 3, 4, 7, 12}) {
      if (s.process != "vp") continue;  // (test_psld_sampling.cpp)
      auto run = run_sampler(s, model, x, uniform_grid(S), {});
      EXPECT_EQ(run.nfe, s.nfe(S)) << s.name << " S=" << S;
      EXPECT_TRUE(torch::isfinite(run.x).all().item<bool>()) << s.name;
    }
  EXPECT_EQ(find_sampler("pndm").nfe(10), 19);
  EXPECT_EQ(find_sampler("spndm").nfe(10), 11);
  EXPECT_EQ(find_sampler("plms").nfe(10), 11);
  EXPECT_EQ(find_sampler("heun").nfe(18), 35);  // EDM's CIFAR10 setting
  SamplerOptions afs;
  afs.afs = true;
  EXPECT_EQ(network_evaluations(find_sampler("ipndm"), afs, 5), 4);
  EXPECT_EQ(run_sampler(find_sampler("dpmpp-3m"), model, x, uniform_grid(5), afs).nfe, 4);
}

// afs_restart: the analytical ε̂ = x_T drives one DDIM step (every sampler's first step is first
// order), then the sampler starts afresh on the rest of the grid; the run reports every step.
TEST(Samplers, TheRestartedAnalyticalFirstStepIsADdimStepThenTheSamplerAfresh) {
  s2dm::testing::Gaussian g{0.3, 0.5, &linear()};
  const auto model = g.model();
  const auto x = torch::randn({3, 1, 1, 1}, torch::kFloat64);
  const Grid grid = make_grid(grid_of("karras", 7), linear(), "one");
  SamplerOptions keep, restart;
  keep.afs = restart.afs = restart.afs_restart = true;
  const auto after_first = transfer(x, x, grid.alpha_bar[0], grid.alpha_bar[1]);
  Grid rest = grid;
  rest.t.erase(rest.t.begin());
  rest.alpha_bar.erase(rest.alpha_bar.begin());
  int restarted = 0;
  for (const auto& s : samplers()) {
    if (std::find(s.options.begin(), s.options.end(), "afs_restart") == s.options.end()) continue;
    ++restarted;
    std::vector<int> reported;
    auto run = run_sampler(s, model, x, grid, restart, [&](const StepInfo& step) {
      EXPECT_EQ(step.total, 7) << s.name;
      reported.push_back(step.index);
    });
    EXPECT_EQ(run.nfe, 6) << s.name;
    EXPECT_EQ(reported, (std::vector<int>{0, 1, 2, 3, 4, 5, 6})) << s.name;
    auto afresh = run_sampler(s, model, after_first, rest, {});
    EXPECT_LT((run.x - afresh.x).abs().max().item<double>(), 1e-10) << s.name;
    // Kept in the history, the analytical value changes the later steps of a multistep solver.
    EXPECT_GT((run.x - run_sampler(s, model, x, grid, keep).x).abs().max().item<double>(), 1e-6) << s.name;
  }
  EXPECT_EQ(restarted, 8);
}

// Data far from mean 0 (Fashion-MNIST's is −0.43 on [−1, 1]): the analytical ε̂(x_T) = x_T says
// x̂₀ ≈ 0 where the exact model's x̂₀ is near the mean, and the solvers that extrapolate their
// history carry that gap on. At 5 Karras steps on the exact Gaussian model (measured: keep 0.077,
// 0.35, 0.48; restart 0.020, 0.031, 0.028) restarting cuts iPNDM's, (3M)'s and UniPC's RMS error
// at least threefold. (Not everywhere: on 5 log-SNR steps iPNDM does better keeping it, 0.098
// against 0.117; README, "Few-step sampling".)
TEST(Samplers, RestartingAfterTheAnalyticalFirstStepKeepsItsGapOutOfTheHistory) {
  s2dm::testing::Gaussian g{-0.43, 0.5, &linear()};
  const auto model = g.model();
  torch::manual_seed(0);
  const auto x = torch::randn({256, 1, 1, 1}, torch::kFloat64);
  const Grid grid = make_grid(grid_of("karras", 5), linear(), "one");
  const auto truth = g.endpoint(x, grid.alpha_bar[0]);
  SamplerOptions keep, restart;
  keep.afs = restart.afs = restart.afs_restart = true;
  for (const char* name : {"ipndm", "dpmpp-3m", "unipc"}) {
    auto error = [&](const SamplerOptions& o) {
      return (run_sampler(find_sampler(name), model, x, grid, o).x - truth).square().mean().sqrt().item<double>();
    };
    EXPECT_LT(3 * error(restart), error(keep)) << name;
  }
}

namespace {

// heun against NVlabs/edm's edm_sampler, run by tests/fixtures/make_edm_sampler_fixture.py with its
// defaults (18 noise levels from σ = 80, ρ = 7) on the exact denoiser of this mixture: heun on the
// same levels, as times of the linear schedule, from the same latents gives edm_sampler's output.
using s2dm::testing::fixture_tensor;

// The noise levels edm_sampler stepped through, as times of the linear schedule (the last
// level, 0, is the end point ᾱ = 1).
std::vector<double> edm_sampler_times() {
  const auto sigmas = fixture_tensor("edm_sampler_sigmas.npy");
  std::vector<double> ts;
  for (int64_t i = 0; i + 1 < sigmas.size(0); ++i) {
    const double sigma = sigmas[i].item<double>();
    ts.push_back(std::max(0.0, time_of_alpha_bar(linear(), 1 / (1 + sigma * sigma))));
  }
  return ts;
}

// `sampler` from edm_sampler's latents down its levels, as times of the linear schedule, on the
// mixture's exact ε-model: what every reference fixture ran.
SampleRun run_on_reference_levels(const std::string& sampler, const SamplerOptions& options) {
  const Grid grid = make_grid(edm_sampler_times(), linear(), "one");
  s2dm::testing::GaussianMixture mix{{0.3, 0.7}, {-1.5, 1.0}, {0.2, 0.3}, &linear()};
  // The references' x_T = σ_0 · latents lives in x/√ᾱ; s2dm's state is x.
  const double sigma_0 = fixture_tensor("edm_sampler_sigmas.npy")[0].item<double>();
  const auto xT = std::sqrt(grid.alpha_bar[0]) * sigma_0 * fixture_tensor("edm_sampler_latents.npy");
  return run_sampler(find_sampler(sampler), mix.model(), xT, grid, options);
}

// ... equals a reference implementation's output there.
void expect_equals_reference(const std::string& sampler, const SamplerOptions& options, const std::string& expected_file,
                             int nfe) {
  const auto expected = fixture_tensor(expected_file);
  const auto run = run_on_reference_levels(sampler, options);
  EXPECT_EQ(run.nfe, nfe) << sampler;
  const double error = (run.x - expected).abs().max().item<double>();
  s2dm::testing::print_margin(sampler + " against " + expected_file + ", largest difference", error, "1e-8");
  EXPECT_LT(error, 1e-8);
  // (Both modes are reached: the comparison is not of a trivial map.)
  EXPECT_GT((expected < -0.25).sum().item<int64_t>(), 10);
  EXPECT_GT((expected > -0.25).sum().item<int64_t>(), 10);
}

}  // namespace

TEST(Samplers, HeunEqualsEdmsOwnSampler) { expect_equals_reference("heun", {}, "edm_sampler_out.npy", 35); }

TEST(Samplers, HeunWithChurnEqualsEdmsOwnSampler) {
  // EDM's ImageNet-64 churn; edm_sampler's randn_like drew as s2dm does (image j's generator
  // seeded with j at noise seed 0), so the same noise enters both.
  SamplerOptions churn;
  churn.s_churn = 40;
  churn.s_min = 0.05;
  churn.s_max = 50;
  churn.s_noise = 1.003;
  expect_equals_reference("heun", churn, "edm_sampler_churn_out.npy", 35);
  // (The churn changes the result: it is not compared with the deterministic output.)
  EXPECT_GT((fixture_tensor("edm_sampler_churn_out.npy") - fixture_tensor("edm_sampler_out.npy")).abs().max().item<double>(), 0.1);
}

// The few-step samplers against their references (tests/fixtures/make_few_step_fixture.py):
// zju-pi/diff-sampler's ipndm_sampler and ipndm_v_sampler, k-diffusion's sample_dpmpp_3m_sde at eta 0.
TEST(Samplers, IpndmEqualsDiffSamplersOwn) {
  expect_equals_reference("ipndm", {}, "ipndm_out.npy", 18);
  expect_equals_reference("ipndm", with_order(2), "ipndm_order2_out.npy", 18);
  // diff-sampler's ipndm_v_sampler misplaces a parenthesis in its order-3 weights (right on equal
  // steps only) and its order-4 weights are not Adams–Bashforth's at all (see the fixture script):
  // ipndm-v equals it at order 2, and at order 3 with the parenthesis mended, which gives the
  // Adams–Bashforth polynomial's weights on any grid. Its order 4 (the default, as diff-sampler's)
  // converges at fourth order (DeterministicSamplersConvergeAtTheirOrder); diff-sampler's does not.
  expect_equals_reference("ipndm-v", with_order(2), "ipndm_v_order2_out.npy", 18);
  expect_equals_reference("ipndm-v", with_order(3), "ipndm_v_order3_corrected_out.npy", 18);
  EXPECT_GT((run_on_reference_levels("ipndm-v", {}).x - fixture_tensor("ipndm_v_out.npy")).abs().max().item<double>(), 1e-3);
  SamplerOptions afs;
  afs.afs = true;
  expect_equals_reference("ipndm", afs, "ipndm_afs_out.npy", 17);
  // (The fixtures differ from one another by far more than the bound: each option is seen.)
  for (const char* other : {"ipndm_order2_out.npy", "ipndm_v_order3_corrected_out.npy", "ipndm_afs_out.npy"})
    EXPECT_GT((fixture_tensor(other) - fixture_tensor("ipndm_out.npy")).abs().max().item<double>(), 1e-5) << other;
}

TEST(Samplers, DpmSolverPlusPlus3mEqualsKDiffusionsOwn) {
  // k-diffusion's second step is the "heun" form of the 2nd-order update and it keeps third order
  // to the end (18 steps: diffusers' lower_order_final would not act either).
  SamplerOptions k_diffusion;
  k_diffusion.solver_type = "heun";
  k_diffusion.lower_order_final = false;
  expect_equals_reference("dpmpp-3m", k_diffusion, "dpmpp_3m_out.npy", 18);
  // The midpoint form (diffusers' default) differs only at that second step, by far more than the bound.
  SamplerOptions midpoint = k_diffusion;
  midpoint.solver_type = "midpoint";
  const auto other = run_on_reference_levels("dpmpp-3m", midpoint).x;
  EXPECT_GT((other - fixture_tensor("dpmpp_3m_out.npy")).abs().max().item<double>(), 1e-6);
}

TEST(Samplers, DpmSolverPlusPlusSdeEqualsKDiffusionsOwn) {
  // k-diffusion's sample_dpmpp_2m_sde (midpoint) and sample_dpmpp_3m_sde (its second step the heun
  // form) at eta 1, their noise drawn as s2dm's at noise seed 0 (image j from a generator seeded j).
  expect_equals_reference("dpmpp-2m-sde", {}, "dpmpp_2m_sde_out.npy", 18);
  SamplerOptions k_diffusion;
  k_diffusion.solver_type = "heun";
  expect_equals_reference("dpmpp-3m-sde", k_diffusion, "dpmpp_3m_sde_out.npy", 18);
  // (The noise matters: the SDE's end points are not the ODE's.)
  EXPECT_GT((fixture_tensor("dpmpp_3m_sde_out.npy") - fixture_tensor("dpmpp_3m_out.npy")).abs().max().item<double>(), 0.1);
}

TEST(Samplers, DpmSolverPlusPlusAndUniPcEqualDiffusersOwn) {
  // diffusers' DPMSolverMultistepScheduler and UniPCMultistepScheduler (lower_order_final: at 10
  // steps their last step is first order and the one before at most second), on their own 10
  // timesteps of the linear schedule, from x_T = the latents; the SDE's noise drawn as s2dm's at
  // noise seed 0. Their steps compute in float32: 1e-5.
  std::vector<double> ts;
  const auto timesteps = fixture_tensor("diffusers_timesteps.npy");
  for (int64_t i = 0; i < timesteps.size(0); ++i) ts.push_back(timesteps[i].item<double>());
  s2dm::testing::GaussianMixture mix{{0.3, 0.7}, {-1.5, 1.0}, {0.2, 0.3}, &linear()};
  const SamplerOptions defaults;
  SamplerOptions bh1 = with_order(2), no_corrector;
  bh1.solver_type = "bh1";
  no_corrector.corrector = false;
  struct Case {
    std::string sampler, file;
    const SamplerOptions& options;
    std::string end;
  };
  for (const auto& c : std::vector<Case>{{"dpmpp-3m", "diffusers_dpmpp_3m_out.npy", defaults, "one"},
                                         {"dpmpp-2m", "diffusers_dpmpp_2m_out.npy", defaults, "one"},
                                         {"unipc", "diffusers_unipc_out.npy", defaults, "one"},
                                         {"unipc", "diffusers_unipc_bh1_order2_out.npy", bh1, "first"},
                                         {"unipc", "diffusers_unipc_no_corrector_out.npy", no_corrector, "one"},
                                         {"dpmpp-2m-sde", "diffusers_dpmpp_2m_sde_out.npy", defaults, "one"}}) {
    const auto run = run_sampler(find_sampler(c.sampler), mix.model(), fixture_tensor("edm_sampler_latents.npy"),
                                 make_grid(ts, linear(), c.end), c.options);
    EXPECT_EQ(run.nfe, 10);
    const double error = (run.x - fixture_tensor(c.file)).abs().max().item<double>();
    s2dm::testing::print_margin(c.sampler + " against " + c.file + ", largest difference", error, "1e-5");
    EXPECT_LT(error, 1e-5) << c.file;
    // (Each differs from the default UniPC's by far more than the bound: every option is seen.)
    if (c.file != "diffusers_unipc_out.npy") {
      EXPECT_GT((fixture_tensor(c.file) - fixture_tensor("diffusers_unipc_out.npy")).abs().max().item<double>(), 1e-3);
    }
  }
}

TEST(Timesteps, EdmIsEdmSamplersOwnDiscretisation) {
  // edm_sampler's 18 levels from σ = 80 (below the linear schedule's σ at T - 1, 157) to its
  // σ_min (the schedule's σ at t = 0, above EDM's 0.002), ρ = 7.
  const auto expected = edm_sampler_times();
  const auto edm = grid_of("edm", 18);
  ASSERT_EQ(edm.size(), expected.size());
  for (size_t i = 0; i < edm.size(); ++i) EXPECT_NEAR(edm[i], expected[i], 1e-9) << i;
  EXPECT_LT(edm.front(), 990);  // (not the schedule's end: karras starts there)
  EXPECT_EQ(grid_of("karras", 18).front(), 999);
}

namespace {

// Every deterministic sampler at every multistep order converges on `model` (the Gaussian g's
// ε-model on `schedule`) at the order it declares. Error against the exact PF-ODE solution at
// S = 10, 20, 40, 80, 160 on a log-SNR grid; observed order log2(e_S / e_2S): for first-order
// methods at every refinement, for the others at the last one (80 -> 160), once the warm-up steps
// no longer dominate (UniPC-3 reaches its order only there). Theory: DDIM, λ-DDIM and DEIS of
// order 0 are first order; a multistep method whose ε extrapolation is exact for polynomials of
// degree r is of order r + 1 (DEIS of order r, iPNDM-v of r + 1 points); UniPC's corrector adds one
// to its predictor's order; the PNDM family, iPNDM, S-PNDM, PLMS and DPM-Solver++(2M) are second
// order here (PNDM's multistep weights assume steps uniform in ρ, which costs the higher orders on
// any other grid), and so is DPM-Solver++(3M) as published (its second difference at half weight;
// solver_type taylor, at full weight, is third order).
void expect_convergence_orders(const EpsModel& model, const NoiseSchedule& schedule, const s2dm::testing::Gaussian& g) {
  struct Case {
    std::string sampler;
    SamplerOptions options;
    double order;  // the theoretical order
  };
  std::vector<Case> cases;
  // (lower_order_final off: UniPC's, as its references', ends on a first-order step at every S,
  // which would cap its observed order at 2.)
  SamplerOptions defaults;
  defaults.lower_order_final = false;
  for (const auto& s : samplers()) {
    if (s.stochastic || s.process != "vp") continue;
    if (s.max_order < 0) cases.push_back({s.name, defaults, static_cast<double>(s.accuracy(-1))});
    for (int order = std::max(s.min_order, 0); order <= s.max_order; ++order) {
      SamplerOptions o = defaults;
      o.order = order;
      cases.push_back({s.name, o, static_cast<double>(s.accuracy(order))});
    }
  }
  SamplerOptions lam = defaults;
  lam.lambda = 0.5;
  cases.push_back({"lambda-ddim", lam, 1});
  // DPM-Solver++(3M) with its second difference at the weight its integral asks for is third order.
  SamplerOptions taylor = defaults;
  taylor.solver_type = "taylor";
  cases.push_back({"dpmpp-3m", taylor, 3});
  // UniPC's predictor alone is of its order; the corrector adds one.
  for (int order : {2, 3}) {
    SamplerOptions predictor = defaults;
    predictor.order = order;
    predictor.corrector = false;
    cases.push_back({"unipc", predictor, static_cast<double>(order)});
  }
  torch::manual_seed(0);
  auto case_label = [](const Case& c) {
    return c.sampler + " order " + std::to_string(c.options.order) + (c.options.lambda ? " lambda" : "") +
           (c.options.corrector ? "" : " predictor") + (c.options.solver_type == "auto" ? "" : " " + c.options.solver_type);
  };
  auto xT = torch::randn({32, 1, 1, 1}, torch::kFloat64);
  const int T = schedule.num_timesteps();
  auto exact = g.solution(xT, schedule.alpha_bar(T - 1), schedule.alpha_bar(0));
  // S steps from t = T - 1 to t = 0 (ᾱ_0), uniform in log-SNR: t, ρ and log ρ are all smooth
  // functions of the step index, so every method can show its order.
  auto grid = [&](int S) {
    auto ts = make_timesteps("logsnr", S + 1, schedule);
    ts.pop_back();  // 0 is appended as the end point
    return make_grid(ts, schedule, "first");
  };
  std::map<std::string, double> final_error;
  for (const auto& c : cases) {
    std::vector<double> errors;
    for (int S : {10, 20, 40, 80, 160})
      errors.push_back((run_sampler(find_sampler(c.sampler), model, xT, grid(S), c.options).x - exact).abs().max().item<double>());
    const std::string label = case_label(c);
    for (size_t i = c.order == 1 ? 1 : 4; i < errors.size(); ++i) {
      const double observed = std::log2(errors[i - 1] / errors[i]);
      const std::string where = label + " S=" + std::to_string(10 << i) + ": " + std::to_string(errors[i - 1]) +
                                " -> " + std::to_string(errors[i]);
      if (c.order == 1) {
        EXPECT_GT(observed, 0.8) << where;
        EXPECT_LT(observed, 1.3) << where;
      } else {
        EXPECT_GT(observed, c.order - 0.7) << where;  // clearly above first order, near the theory
      }
    }
    final_error[label] = errors.back();
  }
  // Higher order pays: at 160 steps every multistep method beats DDIM by a wide margin.
  for (const auto& c : cases) {
    const std::string label = case_label(c);
    if (c.order > 1) {
      EXPECT_LT(final_error[label], final_error["ddim order -1"] / 5) << label;
    }
  }
}

// A network that makes `precond`'s denoiser the exact one of g's data, D(x̃; σ) = μ + s²(x̃ - μ)/(s² + σ²):
// σ read back from c_noise, x̃ from c_in x̃, F = (D - c_skip x̃)/c_out.
Preconditioning::Network exact_network(const Preconditioning& precond, const s2dm::testing::Gaussian& g) {
  return [precond, g](const torch::Tensor& input, const torch::Tensor& c_noise) {
    const auto& k = precond.kind();
    torch::Tensor sigma;
    if (k == "ve") sigma = 2 * c_noise.exp();
    if (k == "edm") sigma = (4 * c_noise).exp();
    if (k == "vp") {  // (EDM's defaults: β_d 19.9, β_min 0.1, M 1000)
      const auto t = c_noise / 999;
      sigma = (0.5 * 19.9 * t * t + 0.1 * t).expm1().sqrt();
    }
    const auto c = precond.coefficients(sigma);
    const auto x = input / c.in;
    const auto d = g.mu + g.s * g.s / (g.s * g.s + sigma.square().reshape({-1, 1, 1, 1})) * (x - g.mu);
    return (d - c.skip * x) / c.out;
  };
}

}  // namespace

TEST(Samplers, DeterministicSamplersConvergeAtTheirOrder) {
  const s2dm::testing::Gaussian g{0.3, 0.5, &linear()};
  expect_convergence_orders(g.model(), linear(), g);
}

TEST(Samplers, DeterministicSamplersConvergeOnPreconditionedModels) {
  // EDM's preconditionings around the exact network of Gaussian data: the models enter through
  // their noise process (Preconditioning::schedule) and its ε-model, and every sampler converges
  // at its order there as on a DDPM model.
  for (const auto& precond : {Preconditioning::edm(), Preconditioning::vp(), Preconditioning::ve()}) {
    SCOPED_TRACE(precond.kind());
    const auto schedule = precond.schedule();
    const s2dm::testing::Gaussian g{0.3, 0.5, &schedule};
    expect_convergence_orders(precond.eps_model(exact_network(precond, g), schedule), schedule, g);
    // (The ε-model is the Gaussian's exact one: the convergence is that of the samplers.)
    const auto x = torch::randn({4, 1, 1, 1}, torch::kFloat64);
    const auto t = torch::full({4}, 321.5, torch::kFloat64);
    EXPECT_LT((precond.eps_model(exact_network(precond, g), schedule)(x, t) - g.model()(x, t)).abs().max().item<double>(), 1e-9);
  }
}

TEST(Samplers, EndingAtAlphaOneConverges) {
  // The default end point ᾱ = 1 (t = -1): every deterministic sampler approaches the exact
  // end point as S grows.
  s2dm::testing::Gaussian g{0.3, 0.5, &linear()};
  auto model = g.model();
  auto xT = torch::randn({32, 1, 1, 1}, torch::kFloat64);
  auto exact = g.endpoint(xT, linear().alpha_bar(999));
  for (const auto& s : samplers()) {
    if (s.stochastic || s.process != "vp") continue;
    double e20 = (run_sampler(s, model, xT, uniform_grid(20), {}).x - exact).abs().max().item<double>();
    double e160 = (run_sampler(s, model, xT, uniform_grid(160), {}).x - exact).abs().max().item<double>();
    // (The PNDM family converges slowly here: its last step extrapolates ε ∝ ρ ∝ √(t+1).)
    EXPECT_LT(e160, e20 / 2) << s.name;
  }
}

TEST(Samplers, MixtureSamplesMatchMeansAndWeights) {
  // Two well separated modes; at 100 steps every deterministic sampler (and DDPM) must put
  // each mode's share and mean within Monte-Carlo error.
  s2dm::testing::GaussianMixture mix{{0.3, 0.7}, {-1.5, 1.0}, {0.2, 0.3}, &linear()};
  auto model = mix.model();
  const int n = 2000;
  torch::manual_seed(s2dm::testing::test_seed(1));
  auto xT = torch::randn({n, 1, 1, 1}, torch::kFloat64);
  const double share_tol = 4 * std::sqrt(0.3 * 0.7 / n);
  double worst = 0;  // the largest deviation, in units of its tolerance
  for (const auto& s : samplers()) {
    if (s.process != "vp") continue;
    auto x = run_sampler(s, model, xT, uniform_grid(100), {}).x.flatten();
    auto left = x < -0.25;
    double share = left.to(torch::kFloat64).mean().item<double>();
    EXPECT_NEAR(share, 0.3, share_tol) << s.name;
    double mean_left = x.masked_select(left).mean().item<double>();
    double mean_right = x.masked_select(~left).mean().item<double>();
    EXPECT_NEAR(mean_left, -1.5, 4 * 0.2 / std::sqrt(0.3 * n) + 0.02) << s.name;
    EXPECT_NEAR(mean_right, 1.0, 4 * 0.3 / std::sqrt(0.7 * n) + 0.02) << s.name;
    worst = std::max({worst, std::abs(share - 0.3) / share_tol,
                      std::abs(mean_left + 1.5) / (4 * 0.2 / std::sqrt(0.3 * n) + 0.02),
                      std::abs(mean_right - 1.0) / (4 * 0.3 / std::sqrt(0.7 * n) + 0.02)});
  }
  s2dm::testing::print_margin("mixture samples: worst deviation / its tolerance", worst, "< 1");
}

TEST(Samplers, IdentitiesHoldToRounding) {
  s2dm::testing::GaussianMixture mix{{0.5, 0.5}, {-1.0, 1.0}, {0.3, 0.3}, &linear()};
  auto model = mix.model();
  auto xT = torch::randn({16, 1, 2, 2}, torch::kFloat64);
  auto grid = make_grid(grid_of("quad", 17), linear(), "one");
  auto ddim = run_sampler(find_sampler("ddim"), model, xT, grid, {}).x;
  // DEIS of order 0 is DDIM; λ-DDIM with λ = 0 is DDIM.
  EXPECT_TRUE(torch::allclose(run_sampler(find_sampler("deis"), model, xT, grid, with_order(0)).x, ddim, 1e-10, 1e-10));
  EXPECT_TRUE(torch::allclose(run_sampler(find_sampler("lambda-ddim"), model, xT, grid, {}).x, ddim, 1e-10, 1e-10));
  // iPNDM of order 1 is Euler in σ, which is DDIM; so is UniPC's predictor of order 1 (the
  // first-order exponential integrator on x̂₀). iPNDM with variable-step weights is DEIS ρAB.
  EXPECT_TRUE(torch::allclose(run_sampler(find_sampler("ipndm"), model, xT, grid, with_order(1)).x, ddim, 1e-10, 1e-10));
  SamplerOptions predictor = with_order(1);
  predictor.corrector = false;
  EXPECT_TRUE(torch::allclose(run_sampler(find_sampler("unipc"), model, xT, grid, predictor).x, ddim, 1e-10, 1e-10));
  for (int points : {2, 3, 4})
    EXPECT_TRUE(torch::equal(run_sampler(find_sampler("ipndm-v"), model, xT, grid, with_order(points)).x,
                             run_sampler(find_sampler("deis-rho"), model, xT, grid, with_order(points - 1)).x));
  // EDM's Euler in σ on x/√ᾱ is DDIM η = 0 in other variables.
  EXPECT_TRUE(torch::allclose(run_sampler(find_sampler("euler"), model, xT, grid, {}).x, ddim, 1e-10, 1e-10));
  // PNDM's transfer is the DDIM η = 0 step.
  auto e = torch::randn({16, 1, 2, 2}, torch::kFloat64);
  const double a = linear().alpha_bar(700), an = linear().alpha_bar(350);
  auto ddim_step = std::sqrt(an) * predict_x0(xT, e, a) + std::sqrt(1 - an) * e;
  EXPECT_TRUE(torch::allclose(transfer(xT, e, a, an), ddim_step, 1e-12, 1e-12));
  // DDIM η = 1 draws its noise with DDPM's posterior variance β̃.
  EpsModel zero = [](const torch::Tensor& x, const torch::Tensor&) { return torch::zeros_like(x); };
  auto one_step = make_grid({600, 500}, linear(), "one");
  one_step.t.resize(2);
  one_step.alpha_bar.resize(2);
  SamplerOptions seeded;
  seeded.noise_seed = 11;
  auto noise = run_sampler(find_sampler("ddpm"), zero, torch::zeros({200000, 1, 1, 1}, torch::kFloat64), one_step,
                           seeded).x;
  const double a600 = linear().alpha_bar(600), a500 = linear().alpha_bar(500);
  const double var = (1 - a500) / (1 - a600) * (1 - a600 / a500);
  EXPECT_NEAR(noise.var().item<double>() / var, 1.0, 0.02);
}

TEST(Samplers, ClippingKeepsTheDataPredictionInRange) {
  // ε̂ = 0 makes x̂₀ = x/√ᾱ, far outside [-1, 1] at high noise: unclipped, DDIM and DPM-Solver++
  // end outside the data range; clipped, both end on a clipped x̂₀, inside it.
  EpsModel zero = [](const torch::Tensor& x, const torch::Tensor&) { return torch::zeros_like(x); };
  auto xT = torch::randn({64, 1, 2, 2}, torch::kFloat64);
  auto grid = make_grid(grid_of("logsnr", 10), linear(), "one");
  SamplerOptions clipped;
  clipped.clip_denoised = true;
  for (const char* name : {"ddim", "dpmpp-2m"}) {
    EXPECT_GT(run_sampler(find_sampler(name), zero, xT, grid, {}).x.abs().max().item<double>(), 2.0) << name;
    EXPECT_LE(run_sampler(find_sampler(name), zero, xT, grid, clipped).x.abs().max().item<double>(), 1.0) << name;
  }
}

TEST(Samplers, StochasticSamplersAreSeeded) {
  s2dm::testing::Gaussian g{0.3, 0.5, &linear()};
  auto model = g.model();
  auto x = torch::randn({4, 1, 2, 2}, torch::kFloat64);
  auto grid = uniform_grid(20);
  SamplerOptions o;
  o.eta = 1.0;
  o.noise_seed = 5;
  auto c = run_sampler(find_sampler("ddim"), model, x, grid, o), d = run_sampler(find_sampler("ddim"), model, x, grid, o);
  EXPECT_TRUE(torch::equal(c.x, d.x));
  EXPECT_FALSE(torch::allclose(c.x, run_sampler(find_sampler("ddim"), model, x, grid, {}).x));
  SamplerOptions large = o;
  large.variance = "large";
  EXPECT_FALSE(torch::allclose(run_sampler(find_sampler("ddpm"), model, x, grid, large).x,
                               run_sampler(find_sampler("ddpm"), model, x, grid, o).x));
}

TEST(Samplers, BadOptionsRejected) {
  try {
    find_sampler("ddmi");
    FAIL();
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("did you mean 'ddim'"), std::string::npos) << e.what();
  }
  EXPECT_THROW(check_options(find_sampler("deis"), with_order(4)), ConfigError);
  EXPECT_THROW(check_options(find_sampler("deis-rho"), with_order(0)), ConfigError);
  EXPECT_THROW(check_options(find_sampler("dpmpp-2m"), with_order(2)), ConfigError);
  EXPECT_NO_THROW(check_options(find_sampler("deis"), with_order(0)));
  SamplerOptions v;
  v.variance = "huge";
  EXPECT_THROW(check_options(find_sampler("ddpm"), v), ConfigError);
  EXPECT_THROW(check_options(find_sampler("ipndm"), with_order(5)), ConfigError);
  SamplerOptions solver;
  for (const char* sampler : {"dpmpp-3m", "unipc", "ddim"})
    for (const char* type : {"rk4", "bh1", "heun"}) {
      solver.solver_type = type;
      const auto& own = find_sampler(sampler).solver_types;
      if (std::find(own.begin(), own.end(), type) == own.end())
        EXPECT_THROW(check_options(find_sampler(sampler), solver), ConfigError) << sampler << " " << type;
      else
        EXPECT_NO_THROW(check_options(find_sampler(sampler), solver)) << sampler << " " << type;
    }
  SamplerOptions afs;
  afs.afs = true;
  EXPECT_NO_THROW(check_options(find_sampler("ipndm"), afs));
  SamplerOptions restart_alone;
  restart_alone.afs_restart = true;
  EXPECT_THROW(check_options(find_sampler("ipndm"), restart_alone), ConfigError);
  SamplerOptions restart = afs;
  restart.afs_restart = true;
  EXPECT_NO_THROW(check_options(find_sampler("unipc"), restart));
  EXPECT_THROW(check_options(find_sampler("dpmpp-2m-sde"), restart), ConfigError);  // (it draws noise)
  try {  // (DDPM's first step draws noise on an evaluated ε̂: it has no analytical first step)
    check_options(find_sampler("ddpm"), afs);
    FAIL();
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("ipndm"), std::string::npos) << e.what();
  }
}

TEST(Generate, SeededNoiseIndependentOfBatching) {
  auto all = initial_noise(0, 6, {1, 4, 4}, 3);
  auto tail = initial_noise(4, 2, {1, 4, 4}, 3);
  EXPECT_TRUE(torch::equal(all.slice(0, 4), tail));
  EXPECT_FALSE(torch::equal(initial_noise(0, 1, {1, 4, 4}, 4), all.slice(0, 0, 1)));
  s2dm::testing::Gaussian g{0.0, 1.0, &linear()};
  const auto model = s2dm::testing::linear_model(g.model(), {1, 4, 4});
  SampleConfig sc;
  sc.steps = 5;
  sc.batch = 2;
  auto sample = [&](const Draw& draw) { return generate(model, plan_sampling(sc, model), draw, false); };
  auto a = sample({3, 0, 5, {}});
  sc.batch = 5;
  auto b = sample({3, 0, 5, {}});
  EXPECT_TRUE(torch::allclose(a.samples, b.samples));
  EXPECT_EQ(a.samples.size(0), 5);
  EXPECT_EQ(a.nfe, 5);
  // Stochastic samplers too: each image draws its noise from a generator of its own.
  sc.eta = 0.5;
  sc.batch = 2;
  a = sample({3, 0, 5, {}});
  sc.batch = 5;
  b = sample({3, 0, 5, {}});
  EXPECT_TRUE(torch::allclose(a.samples, b.samples));
  // A share [2, 5) of the draw (a rank's) is those images of the whole: x_T and step noises alike.
  auto share = sample({3, 2, 3, {}});
  EXPECT_TRUE(torch::allclose(share.samples, b.samples.slice(0, 2)));
  auto x_t = initial_noise(2, 3, {1, 4, 4}, 3);
  share = sample({3, 2, 0, x_t});
  EXPECT_TRUE(torch::allclose(share.samples, b.samples.slice(0, 2)));
  sc.eta = 0;
  sc.sampler = "plms";
  EXPECT_EQ(sample({3, 0, 2, {}}).nfe, 6);
  EXPECT_THROW(sample({3, 0, 0, {}}), ConfigError);
}

TEST(Generate, AStopRequestEndsTheSamplingAtTheNextNetworkEvaluation) {
  // A batch of a 1000-step sampler takes minutes on a real model: the request is asked before
  // every evaluation, not only between batches.
  s2dm::testing::Gaussian g{0.0, 1.0, &linear()};
  int evaluations = 0;
  const EpsModel counted = [&](const torch::Tensor& x, const torch::Tensor& t) {
    ++evaluations;
    return g.model()(x, t);
  };
  SampleConfig sc;
  sc.steps = 1000;
  sc.batch = 4;
  const auto model = s2dm::testing::linear_model(counted, {1, 2, 2});
  auto out = generate(model, plan_sampling(sc, model), {0, 0, 8, {}}, false, [&] { return evaluations >= 10; });
  EXPECT_FALSE(out.complete);
  EXPECT_EQ(evaluations, 10);
  EXPECT_EQ(out.samples.size(0), 0);
  evaluations = 0;
  sc.steps = 5;
  out = generate(model, plan_sampling(sc, model), {0, 0, 8, {}}, false, [] { return false; });
  EXPECT_TRUE(out.complete);
  EXPECT_EQ(evaluations, 10);  // two batches of five steps
}

TEST(SkipTuning, AppliesOnlyInsideItsTimeRange) {
  const ModelConfig m = s2dm::testing::tiny_unet({});
  torch::manual_seed(4);
  model::UNet net(m, 1, 8);
  auto plain = model::unet_eps_model(net, false);
  auto x = torch::randn({2, 1, 8, 8});
  auto at = [](double t) { return torch::full({2}, t); };
  const auto untuned = plain(x, at(700));
  SkipTuningConfig st;
  st.rho_bottom = 0.6;
  st.t_min = 500;
  st.t_max = 999;
  auto tuned = model::unet_eps_model(net, false, st);
  EXPECT_TRUE(torch::equal(tuned(x, at(100)), plain(x, at(100))));
  EXPECT_FALSE(torch::allclose(tuned(x, at(700)), plain(x, at(700))));
  // The network is shared: the untuned model stays untuned after the tuned one ran.
  EXPECT_TRUE(torch::equal(plain(x, at(700)), untuned));
  st.rho = {1.0, 2.0};
  EXPECT_THROW(model::unet_eps_model(net, false, st), ConfigError);
}

// The model source: exactly one of checkpoint, weights or script; the config (with overrides)
// before any network; the loaded ε-model equals the UNet's.
TEST(ModelSource, ResolvesOneSourceAndLoadsIt) {
  s2dm::testing::TempDir dir;
  Config config;
  config.model = s2dm::testing::tiny_unet({});
  config.data.channels = 1;
  config.data.image_size = 8;
  torch::manual_seed(6);
  model::UNet net(config.model, 1, 8);
  save_safetensors(dir / "w.safetensors", named_weights(*net));
  s2dm::write_file_atomic(dir / "c.yaml", to_yaml(config));

  model::ModelRef ref;
  EXPECT_THROW(model::resolve_model(ref), UsageError);
  ref.weights = dir / "w.safetensors";
  EXPECT_THROW(model::resolve_model(ref), UsageError);  // weights need a config
  ref.script = "m.pt";
  ref.config = dir / "c.yaml";
  EXPECT_THROW(model::resolve_model(ref), UsageError);  // two sources
  ref.script.clear();
  const auto source = model::resolve_model(ref, {"sample.steps=3"});
  EXPECT_EQ(source.config.sample.steps, 3);
  EXPECT_EQ(source.origin, ref.weights);

  const model::LoadedModel loaded(source, torch::kCPU);
  auto x = torch::randn({2, 1, 8, 8});
  auto t = torch::full({2}, 300.0);
  EXPECT_TRUE(torch::equal(loaded.eps().eps(x, t), model::unet_eps_model(net, false)(x, t)));
  EXPECT_TRUE(torch::equal(loaded.eps_fp32().eps(x, t), loaded.eps().eps(x, t)));  // the CPU computes in float32
  if (torch::cuda::is_available()) {
    // Schedule estimation and search run in float32 whatever train.precision says (bf16 here).
    ASSERT_EQ(source.config.train.precision, "bf16");
    const model::LoadedModel on_gpu(source, torch::kCUDA);
    model::UNet copy(config.model, 1, 8);
    load_weights(*copy, source.weights, "w");
    copy->to(torch::kCUDA);
    auto xg = x.to(torch::kCUDA), tg = t.to(torch::kCUDA);
    const auto fp32 = model::unet_eps_model(copy, false, {}, false)(xg, tg);
    EXPECT_TRUE(torch::allclose(on_gpu.eps_fp32().eps(xg, tg), fp32, 1e-5, 1e-5));
    EXPECT_FALSE(torch::allclose(on_gpu.eps().eps(xg, tg), fp32, 1e-5, 1e-5)) << "bf16 autocast left no trace";
  }
  SkipTuningConfig st;
  st.rho = {1.0, 0.5};
  EXPECT_THROW(model::check_skip_tuning(source.config.model, st), ConfigError);  // the model has 4 skips
  EXPECT_THROW(loaded.eps(st), ConfigError);
  st.rho = {1.0, 0.5, 0.5, 1.0};
  EXPECT_NO_THROW(model::check_skip_tuning(source.config.model, st));
  EXPECT_THROW(model::check_skip_tuning(source.config.model, st, /*torchscript=*/true), UsageError);
}

TEST(CudaGraphs, ReplaysEqualEagerEvaluations) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device (scripts/gpu_check.sh runs this on one)";
  const ModelConfig m = s2dm::testing::tiny_unet({4});
  torch::manual_seed(5);
  model::UNet net(m, 3, 8);
  net->to(torch::kCUDA);
  const int64_t captured_before = model::cuda_graphs_captured();
  for (const bool bf16 : {false, true}) {
    auto eager = model::unet_eps_model(net, bf16, {}, false), graphed = model::unet_eps_model(net, bf16, {}, true);
    for (const int64_t batch : {3, 3, 5, 3}) {  // a new shape is captured; a known one replays
      auto x = torch::randn({batch, 3, 8, 8}, torch::kCUDA);
      auto t = torch::rand({batch}, torch::kCUDA) * 999;
      EXPECT_TRUE(torch::allclose(graphed(x, t), eager(x, t), 1e-4, 1e-4)) << "batch " << batch << " bf16 " << bf16;
    }
  }
  EXPECT_EQ(model::cuda_graphs_captured() - captured_before, 4) << "one capture per shape and precision, no eager fallback";
}

TEST(TorchScript, GaussianFixtureMatchesTheExactModel) {
  const std::string dir = std::string(S2DM_SOURCE_DIR) + "/tests/fixtures/";
  auto script = load_torchscript_eps_model(dir + "gaussian_eps.pt", torch::kCPU, {1, 2, 2});
  s2dm::testing::Gaussian g{0.3, 0.5, &linear()};
  auto exact = g.model();
  auto x = torch::randn({3, 1, 2, 2}, torch::kFloat64);
  for (double t : {0.0, 10.5, 500.0, 999.0}) {
    auto tt = torch::full({3}, t, torch::kFloat64);
    EXPECT_TRUE(torch::allclose(script(x, tt), exact(x, tt), 1e-5, 1e-5)) << t;
  }
  EXPECT_THROW(load_torchscript_eps_model(dir + "bad_signature.pt", torch::kCPU, {1, 2, 2}), CheckpointError);
  EXPECT_THROW(load_torchscript_eps_model(dir + "bad_shape.pt", torch::kCPU, {1, 2, 2}), CheckpointError);
  EXPECT_THROW(load_torchscript_eps_model(dir + "make_torchscript_fixtures.py", torch::kCPU, {1, 2, 2}), CheckpointError);
  EXPECT_THROW(load_torchscript_eps_model(dir + "missing.pt", torch::kCPU, {1, 2, 2}), CheckpointError);
}
