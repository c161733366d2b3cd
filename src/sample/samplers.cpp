// The sampler registry and the helpers the samplers share.
#include "s2dm/sample/samplers.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <utility>

#include "s2dm/core/config.h"
#include "s2dm/core/errors.h"
#include "s2dm/core/registry.h"
#include "s2dm/core/schema.h"

namespace s2dm::sample {

torch::Tensor eval_eps(const EpsModel& model, const torch::Tensor& x, double t) {
  return model(x, torch::full({x.size(0)}, t, x.options())).to(x.dtype());
}

torch::Tensor predict_x0(const torch::Tensor& x, const torch::Tensor& eps, double a) {
  return (x - std::sqrt(1.0 - a) * eps) / std::sqrt(a);
}

torch::Tensor transfer(const torch::Tensor& x, const torch::Tensor& eps, double a, double a_next) {
  const double x_coef = std::sqrt(a_next / a);
  const double eps_coef = (a_next - a) / (std::sqrt(a) * (std::sqrt((1 - a_next) * a) + std::sqrt((1 - a) * a_next)));
  return x_coef * x - eps_coef * eps;
}

// The samplers, each in its own file under samplers/.
torch::Tensor sample_ddim(const EpsModel&, torch::Tensor, const Grid&, const SamplerOptions&, const Callback&);
torch::Tensor sample_ddpm(const EpsModel&, torch::Tensor, const Grid&, const SamplerOptions&, const Callback&);
torch::Tensor sample_pndm(const EpsModel&, torch::Tensor, const Grid&, const SamplerOptions&, const Callback&);
torch::Tensor sample_spndm(const EpsModel&, torch::Tensor, const Grid&, const SamplerOptions&, const Callback&);
torch::Tensor sample_plms(const EpsModel&, torch::Tensor, const Grid&, const SamplerOptions&, const Callback&);
torch::Tensor sample_deis(const EpsModel&, torch::Tensor, const Grid&, const SamplerOptions&, const Callback&);
torch::Tensor sample_deis_rho(const EpsModel&, torch::Tensor, const Grid&, const SamplerOptions&, const Callback&);
torch::Tensor sample_deis_logrho(const EpsModel&, torch::Tensor, const Grid&, const SamplerOptions&, const Callback&);
torch::Tensor sample_dpmpp_2m(const EpsModel&, torch::Tensor, const Grid&, const SamplerOptions&, const Callback&);
torch::Tensor sample_dpmpp_3m(const EpsModel&, torch::Tensor, const Grid&, const SamplerOptions&, const Callback&);
torch::Tensor sample_dpmpp_2m_sde(const EpsModel&, torch::Tensor, const Grid&, const SamplerOptions&, const Callback&);
torch::Tensor sample_dpmpp_3m_sde(const EpsModel&, torch::Tensor, const Grid&, const SamplerOptions&, const Callback&);
torch::Tensor sample_ipndm(const EpsModel&, torch::Tensor, const Grid&, const SamplerOptions&, const Callback&);
torch::Tensor sample_ipndm_v(const EpsModel&, torch::Tensor, const Grid&, const SamplerOptions&, const Callback&);
torch::Tensor sample_unipc(const EpsModel&, torch::Tensor, const Grid&, const SamplerOptions&, const Callback&);
torch::Tensor sample_lambda_ddim(const EpsModel&, torch::Tensor, const Grid&, const SamplerOptions&, const Callback&);
torch::Tensor sample_euler(const EpsModel&, torch::Tensor, const Grid&, const SamplerOptions&, const Callback&);
torch::Tensor sample_heun(const EpsModel&, torch::Tensor, const Grid&, const SamplerOptions&, const Callback&);
// PSLD's (samplers/psld.cpp)
torch::Tensor sample_psld_em(const EpsModel&, torch::Tensor, const Grid&, const SamplerOptions&, const Callback&);
torch::Tensor sample_psld_pf_euler(const EpsModel&, torch::Tensor, const Grid&, const SamplerOptions&, const Callback&);
torch::Tensor sample_psld_sscs(const EpsModel&, torch::Tensor, const Grid&, const SamplerOptions&, const Callback&);
torch::Tensor sample_psld_ddim(const EpsModel&, torch::Tensor, const Grid&, const SamplerOptions&, const Callback&);
torch::Tensor sample_psld_ddim_ones(const EpsModel&, torch::Tensor, const Grid&, const SamplerOptions&, const Callback&);
torch::Tensor sample_psld_nse(const EpsModel&, torch::Tensor, const Grid&, const SamplerOptions&, const Callback&);
torch::Tensor sample_psld_rse(const EpsModel&, torch::Tensor, const Grid&, const SamplerOptions&, const Callback&);
torch::Tensor sample_psld_nvv(const EpsModel&, torch::Tensor, const Grid&, const SamplerOptions&, const Callback&);
torch::Tensor sample_psld_rvv(const EpsModel&, torch::Tensor, const Grid&, const SamplerOptions&, const Callback&);
torch::Tensor sample_psld_csps(const EpsModel&, torch::Tensor, const Grid&, const SamplerOptions&, const Callback&);
torch::Tensor sample_psld_noba(const EpsModel&, torch::Tensor, const Grid&, const SamplerOptions&, const Callback&);
torch::Tensor sample_psld_roba(const EpsModel&, torch::Tensor, const Grid&, const SamplerOptions&, const Callback&);

const std::vector<SamplerInfo>& samplers() {
  auto steps = [](int s) { return s; };
  auto plus_one = [](int s) { return s + 1; };
  auto first = [](int) { return 1; };
  auto second = [](int) { return 2; };
  auto none = [](int) { return 0; };
  // A multistep method whose ε extrapolation is exact for polynomials of degree r is of order
  // r + 1; the PNDM family is second order on grids not uniform in ρ.
  auto multistep = [](int r) { return r + 1; };
  // iPNDM's fixed weights assume equal steps in ρ: on other grids its orders above 1 are second.
  // DPM-Solver++(3M) as published weights its second difference by half (docs/algorithms.md §3):
  // second order too; its solver_type taylor is third order.
  auto ipndm_accuracy = [](int points) { return std::min(points, 2); };
  const std::vector<std::string> dpm_solver_types{"midpoint", "heun", "taylor"};
  const std::vector<std::string> churn{"s_churn", "s_min", "s_max", "s_noise"};
  static const std::vector<SamplerInfo> registry{
      {"ddim", "DDIM (Song et al. 2021); eta 0 is the probability-flow ODE", {"eta", "clip_denoised"}, sample_ddim, steps,
       false, -1, -1, -1, first},
      {"ddpm", "DDPM ancestral sampling (DDIM with eta 1); variance small (β̃) or large (σ̂)", {"variance", "clip_denoised"},
       sample_ddpm, steps, true, -1, -1, -1, none},
      {"pndm", "F-PNDM: 3 pseudo Runge-Kutta steps, then 4th-order pseudo linear multistep", {}, sample_pndm,
       [](int s) { return s < 3 ? 4 * s : s + 9; }, false, -1, -1, -1, second},
      {"spndm", "S-PNDM: a pseudo improved-Euler step, then 2nd-order pseudo linear multistep", {}, sample_spndm,
       plus_one, false, -1, -1, -1, second},
      {"plms", "PLMS (LDM / diffusers skip_prk_steps): Euler restart, then Adams-Bashforth 2, 3, 4", {}, sample_plms,
       plus_one, false, -1, -1, -1, second},
      {"ipndm", "iPNDM: Adams-Bashforth in ρ = σ/α with fixed weights, order 1-4 in points, Euler first step",
       {"order", "afs", "afs_restart"}, sample_ipndm, steps, false, 1, 4, 4, ipndm_accuracy},
      {"ipndm-v", "iPNDM with variable-step weights, order 1-4 in points (= deis-rho of order - 1)", {"order", "afs", "afs_restart"},
       sample_ipndm_v, steps, false, 1, 4, 4, [](int points) { return points; }},
      {"deis", "DEIS tAB: exponential integrator, Lagrange extrapolation of ε in t (order 0 = DDIM)", {"order", "afs", "afs_restart"},
       sample_deis, steps, false, 0, 3, 3, multistep},
      {"deis-rho", "DEIS ρAB: Adams-Bashforth in ρ = σ/α with exact polynomial integrals", {"order", "afs", "afs_restart"},
       sample_deis_rho, steps, false, 1, 3, 3, multistep},
      {"deis-logrho", "DEIS multistep with ε polynomial in log ρ (diffusers' DEIS)",
       {"order", "lower_order_final", "afs", "afs_restart"}, sample_deis_logrho, steps, false, 1, 3, 3, multistep},
      {"dpmpp-2m", "DPM-Solver++(2M): 2nd-order multistep on x̂₀ in λ = log(α/σ)",
       {"lower_order_final", "clip_denoised", "solver_type", "afs", "afs_restart"}, sample_dpmpp_2m, steps, false, -1, -1, -1, second,
       "uniform", "vp", dpm_solver_types},
      {"dpmpp-3m", "DPM-Solver++(3M): multistep on x̂₀ in λ with a second difference (second order as published)",
       {"lower_order_final", "clip_denoised", "solver_type", "afs", "afs_restart"}, sample_dpmpp_3m, steps, false, -1, -1, -1,
       second, "uniform", "vp", dpm_solver_types},
      {"dpmpp-2m-sde", "DPM-Solver++(2M) SDE: the reverse SDE, 2nd-order multistep on x̂₀ in λ, noise at every step",
       {"lower_order_final", "clip_denoised", "solver_type", "afs"}, sample_dpmpp_2m_sde, steps, true, -1, -1, -1, none,
       "uniform", "vp", dpm_solver_types},
      {"dpmpp-3m-sde", "DPM-Solver++(3M) SDE: the reverse SDE, (3M)'s multistep on x̂₀ in λ, noise at every step",
       {"lower_order_final", "clip_denoised", "solver_type", "afs"}, sample_dpmpp_3m_sde, steps, true, -1, -1, -1, none,
       "uniform", "vp", dpm_solver_types},
      {"unipc", "UniPC: predictor UniP of order 1-3 on x̂₀ in λ, corrector UniC (order + 1) at no extra evaluation",
       {"order", "solver_type", "corrector", "lower_order_final", "clip_denoised", "afs", "afs_restart"}, sample_unipc, steps, false,
       1, 3, 3, multistep, "uniform", "vp", {"bh2", "bh1"}},
      {"lambda-ddim", "λ-DDIM, the conjugate integrator (Pandey et al. 2023); lambda 0 = DDIM", {"lambda"},
       sample_lambda_ddim, steps, false, -1, -1, -1, first},
      {"euler", "Euler in σ = √((1-ᾱ)/ᾱ) on x/√ᾱ (EDM, Karras et al. 2022); DDIM η = 0 up to rounding", churn,
       sample_euler, steps, false, -1, -1, -1, first, "edm"},
      {"heun", "Heun's 2nd-order method in σ, EDM's edm_sampler (churn optional); the last step is Euler", churn,
       sample_heun, [](int s) { return 2 * s - 1; }, false, -1, -1, -1, second, "edm"},
      // PSLD's: S - 1 integration steps from t = 1 to t_end, then 1 denoising step.
      {"em", "PSLD: Euler-Maruyama on the reverse SDE (the released PSLD code's)", {}, sample_psld_em, steps, true,
       -1, -1, -1, none, "uniform", "psld"},
      {"pf-euler", "PSLD: Euler on the probability-flow ODE", {}, sample_psld_pf_euler, steps, false, -1, -1, -1, first,
       "uniform", "psld"},
      {"sscs", "PSLD: symmetric splitting (SSCS, the released PSLD code's): exact linear half steps, Euler on the score",
       {}, sample_psld_sscs, steps, true, -1, -1, -1, none, "uniform", "psld"},
      {"psld-ddim", "PSLD: λ-DDIM, the conjugate integrator with B = λI; lambda 0 = the exponential integrator",
       {"lambda"}, sample_psld_ddim, steps, false, -1, -1, -1, first, "uniform", "psld"},
      {"psld-ddim-ones", "PSLD: the conjugate integrator with B = λ·(all-ones 2x2)", {"lambda"}, sample_psld_ddim_ones,
       steps, false, -1, -1, -1, first, "uniform", "psld"},
      {"nse", "PSLD: naive symplectic Euler (momentum, then position), 2 evaluations a step", {}, sample_psld_nse,
       [](int s) { return 2 * s - 1; }, false, -1, -1, -1, first, "uniform", "psld"},
      {"rse", "PSLD: reduced symplectic Euler, one evaluation a step", {}, sample_psld_rse, steps, false, -1, -1, -1,
       first, "uniform", "psld"},
      {"nvv", "PSLD: naive velocity Verlet, 3 evaluations a step", {}, sample_psld_nvv, [](int s) { return 3 * s - 2; },
       false, -1, -1, -1, first, "uniform", "psld"},
      {"rvv", "PSLD: reduced velocity Verlet, one evaluation a step", {}, sample_psld_rvv, steps, false, -1, -1, -1, first,
       "uniform", "psld"},
      {"csps", "PSLD: conjugate symplectic Euler (each split flow solved exactly with ε held), one evaluation a step",
       {}, sample_psld_csps, steps, false, -1, -1, -1, first, "uniform", "psld"},
      {"noba", "PSLD: naive OBA splitting of the reverse SDE, 2 evaluations a step", {"lambda_s"}, sample_psld_noba,
       [](int s) { return 2 * s - 1; }, true, -1, -1, -1, none, "uniform", "psld"},
      {"roba", "PSLD: reduced OBA splitting of the reverse SDE (lambda_s: the position's noise), one evaluation a step",
       {"lambda_s"}, sample_psld_roba, steps, true, -1, -1, -1, none, "uniform", "psld"},
  };
  return registry;
}

bool draws_noise(const SamplerInfo& sampler, const SamplerSettings& settings) {
  return sampler.stochastic || settings.eta != 0 || settings.s_churn != 0;
}

ImageNoise::ImageNoise(const SamplerOptions& options, const torch::Tensor& like) : like_(like) {
  for (int64_t j = 0; j < like.size(0); ++j)
    generators_.push_back(
        at::detail::createCPUGenerator(options.noise_seed * 1000003ull + static_cast<uint64_t>(options.first_image + j)));
}

torch::Tensor ImageNoise::operator()() {
  std::vector<torch::Tensor> rows;
  for (auto& gen : generators_) rows.push_back(torch::randn(like_.sizes().slice(1), gen, like_.options().device(torch::kCPU)));
  return torch::stack(rows).to(like_.device());
}

namespace {

// The names of the samplers that `keep`, comma-separated.
template <class Keep>
std::string join_names(const std::vector<SamplerInfo>& all, Keep keep) {
  std::string out;
  for (const auto& s : all)
    if (keep(s)) out += (out.empty() ? "" : ", ") + s.name;
  return out;
}

}  // namespace

std::vector<std::string> sampler_option_keys() {
  std::vector<std::string> keys;
  for (const auto& s : samplers())
    for (const auto& key : s.options)
      if (std::find(keys.begin(), keys.end(), key) == keys.end()) keys.push_back(key);
  return keys;
}

SamplerOptions sampler_options(const SampleConfig& c) {
  SamplerOptions o;
  static_cast<SamplerSettings&>(o) = c;
  return o;
}

const SamplerInfo& find_sampler(const std::string& name) {
  return find_by_name(samplers(), name, "sampler", "samplers");
}

const SamplerInfo& find_sampler(const std::string& name, const std::string& process) {
  const SamplerInfo& sampler = find_sampler(name);
  if (sampler.process == process) return sampler;
  const std::string own = join_names(samplers(), [&](const SamplerInfo& s) { return s.process == process; });
  auto kind = [](const std::string& p) { return p == "psld" ? std::string("PSLD models") : "VP models (DDPM's and EDM's)"; };
  throw ConfigError("sampler '" + name + "' samples " + kind(sampler.process) + ", and this is one of the " +
                    kind(process) + " (diffusion.process " + process + "), whose samplers are " + own);
}

void check_options(const SamplerInfo& sampler, const SamplerOptions& options) {
  if (options.order >= 0) {
    if (sampler.max_order < 0)
      throw ConfigError("sampler '" + sampler.name + "' has no order option (order = " + std::to_string(options.order) + ")");
    if (options.order < sampler.min_order || options.order > sampler.max_order)
      throw ConfigError("order = " + std::to_string(options.order) + " is out of range for '" + sampler.name + "' [" +
                        std::to_string(sampler.min_order) + ", " + std::to_string(sampler.max_order) + "]");
  }
  if (options.variance != "small" && options.variance != "large")
    throw ConfigError("variance = '" + options.variance + "' is not one of small, large");
  if (!std::isfinite(options.lambda)) throw ConfigError("lambda must be finite");
  const auto& types = sampler.solver_types;
  if (options.solver_type != "auto" && std::find(types.begin(), types.end(), options.solver_type) == types.end())
    throw ConfigError("solver_type = '" + options.solver_type + "' is not one of '" + sampler.name + "''s: auto" +
                      (types.empty() ? std::string(" (it has no variants)") : ", " + schema::join(types)));
  auto reads = [](const SamplerInfo& s, const char* key) {
    return std::find(s.options.begin(), s.options.end(), key) != s.options.end();
  };
  if (options.afs && !reads(sampler, "afs"))
    throw ConfigError("sampler '" + sampler.name + "' has no analytical first step (afs = true); these have: " +
                      join_names(samplers(), [&](const SamplerInfo& s) { return reads(s, "afs"); }));
  if (options.afs_restart && !options.afs)
    throw ConfigError("afs_restart = true restarts after the analytical first step: set afs = true");
  if (options.afs_restart && !reads(sampler, "afs_restart"))
    throw ConfigError("sampler '" + sampler.name + "' draws noise: afs_restart is for the deterministic samplers " +
                      join_names(samplers(), [&](const SamplerInfo& s) { return reads(s, "afs_restart"); }));
}

int network_evaluations(const SamplerInfo& sampler, const SamplerSettings& settings, int steps) {
  return sampler.nfe(steps) - (settings.afs ? 1 : 0);
}

namespace {

// Steps [from, to) of a grid.
Grid steps_of(const Grid& grid, int from, int to) {
  Grid part = grid;
  part.t.assign(grid.t.begin() + from, grid.t.begin() + to + 1);
  part.alpha_bar.assign(grid.alpha_bar.begin() + from, grid.alpha_bar.begin() + to + 1);
  return part;
}

}  // namespace

SampleRun run_sampler(const SamplerInfo& sampler, const EpsModel& model, torch::Tensor x, const Grid& grid,
                      const SamplerOptions& options, const Callback& callback) {
  check_options(sampler, options);
  SampleRun run;
  bool first = true;
  EpsModel counted = [&](const torch::Tensor& xt, const torch::Tensor& t) {
    // The analytical first step: at ᾱ ≈ 0 the state is all noise and ε̂(x_T) = x_T.
    if (std::exchange(first, false) && options.afs) return xt;
    ++run.nfe;
    return model(xt, t);
  };
  torch::NoGradGuard no_grad;
  const int steps = grid.steps();
  if (!options.afs_restart || steps < 2) {
    run.x = sampler.fn(counted, std::move(x), grid, options, callback);
    return run;
  }
  // The sampler's own first step on the analytical value alone, then the sampler afresh on the
  // rest of the grid, its history holding network evaluations only.
  auto offset_by = [&](int offset) -> Callback {
    if (!callback) return {};
    return [&callback, offset, steps](const StepInfo& s) { callback({s.index + offset, steps, s.t, s.x}); };
  };
  SamplerOptions rest = options;
  rest.afs = rest.afs_restart = false;
  x = sampler.fn(counted, std::move(x), steps_of(grid, 0, 1), options, offset_by(0));
  run.x = sampler.fn(counted, std::move(x), steps_of(grid, 1, steps), rest, offset_by(1));
  return run;
}

}  // namespace s2dm::sample
