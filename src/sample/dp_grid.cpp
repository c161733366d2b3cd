// Solver-aware optimal grids: reference trajectories, jump costs, the cheapest path, and the
// coordinate search with the full sampler (dp_grid.h says what each step is for).
#include "s2dm/sample/dp_grid.h"

#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <optional>

#include "s2dm/core/errors.h"
#include "s2dm/core/progress.h"
#include "s2dm/core/yaml_reader.h"
#include "s2dm/sample/draw.h"
#include "s2dm/sample/samplers.h"
#include "s2dm/sample/timesteps.h"

namespace s2dm::sample {

std::vector<double> dp_candidate_levels(const NoiseSchedule& schedule, int count) {
  const int T = schedule.num_timesteps();
  if (count < 2) throw ConfigError("dp: levels = " + std::to_string(count) + " must be at least 2");
  std::vector<double> all;
  const int in_t = count - count / 2, in_snr = count / 2;
  for (int i = 0; i < in_t; ++i) all.push_back(in_t > 1 ? (T - 1.0) * i / (in_t - 1) : 0.0);
  auto log_snr = [&](double t) { const double a = schedule.alpha_bar(t); return std::log(a / (1 - a)); };
  const double hi = log_snr(0), lo = log_snr(T - 1);
  for (int i = 1; i + 1 < in_snr; ++i) {
    const double l = hi + (lo - hi) * i / (in_snr - 1);
    all.push_back(time_of_alpha_bar(schedule, 1 / (1 + std::exp(-l))));
  }
  std::sort(all.begin(), all.end());
  std::vector<double> levels{0.0};
  for (double t : all)
    if (t - levels.back() >= 0.25 && T - 1.0 - t >= 0.25) levels.push_back(t);
  levels.push_back(T - 1.0);
  return levels;
}

std::vector<double> dp_candidate_levels(const DiffusionModel& model, int count) {
  if (!model.psld) return dp_candidate_levels(model.schedule, count);
  if (count < 2) throw ConfigError("dp: levels = " + std::to_string(count) + " must be at least 2");
  // Half uniform in t from t_end to 1, half spaced as the logsnr grid (the quadratic one where
  // logsnr does not exist), merged; near-duplicates dropped.
  const PsldProcess& p = *model.psld;
  const double t_end = p.settings().t_end;
  const int in_t = count - count / 2, in_sigma = count / 2;
  std::vector<double> all{t_end, 1.0};
  for (int i = 1; i + 1 < in_t; ++i) all.push_back(t_end + (1 - t_end) * i / (in_t - 1));
  if (in_sigma >= 2) {
    const auto spaced = make_psld_grid(p.settings().nu >= p.settings().gamma ? "logsnr" : "quad", in_sigma, p).t;
    all.insert(all.end(), spaced.begin(), spaced.end() - 1);  // (without the denoising step's 0)
  }
  std::sort(all.begin(), all.end());
  std::vector<double> levels{t_end};
  for (double t : all)
    if (t - levels.back() >= 1e-6 && 1 - t >= 1e-6) levels.push_back(t);
  levels.push_back(1.0);
  return levels;
}

int dp_max_steps(const DiffusionModel& model, int levels) {
  return static_cast<int>(dp_candidate_levels(model, levels).size());
}

std::vector<int> cheapest_path(const std::vector<std::vector<double>>& cost, int jumps) {
  const int n = static_cast<int>(cost.size());
  if (jumps < 1 || jumps > n - 1)
    throw ConfigError("dp: " + std::to_string(jumps) + " jumps need more candidate levels (there are " +
                      std::to_string(n) + ")");
  const double inf = std::numeric_limits<double>::infinity();
  // best[m][j]: the least cost of reaching candidate j from the last one in m jumps; from[m][j]
  // the candidate it came from.
  std::vector<std::vector<double>> best(jumps + 1, std::vector<double>(n, inf));
  std::vector<std::vector<int>> from(jumps + 1, std::vector<int>(n, -1));
  best[0][n - 1] = 0.0;
  for (int m = 1; m <= jumps; ++m)
    for (int j = 0; j < n; ++j)
      for (int i = j + 1; i < n; ++i)
        if (best[m - 1][i] + cost[i][j] < best[m][j]) {
          best[m][j] = best[m - 1][i] + cost[i][j];
          from[m][j] = i;
        }
  std::vector<int> path{0};
  for (int m = jumps; m > 0; --m) path.push_back(from[m][path.back()]);
  std::reverse(path.begin(), path.end());
  return path;
}

namespace {

// The time the search works in: a VP model's timestep indices (T-1 ... 0, then the end point
// final_alpha names) or a PSLD model's times (1 ... t_end, then the denoising step to 0).
struct TimeAxis {
  const DiffusionModel& model;
  std::string final_alpha;

  // A sampler's grid through candidate times (decreasing).
  Grid grid(const std::vector<double>& times) const {
    return model.psld ? psld_grid(times, *model.psld, "dp grid") : make_grid(times, model.schedule, final_alpha);
  }
  // A grid whose first step is the jump `from` → `to` (a PSLD grid's second is the denoising step,
  // which a jump's cost ignores).
  Grid jump(double from, double to) const {
    if (model.psld) return psld_grid({from, to}, *model.psld, "dp jump");
    return {{from, to}, {model.schedule.alpha_bar(from), model.schedule.alpha_bar(to)}, &model.schedule};
  }
  // The reference solver on the fine grid: DEIS of order 3 for VP models; for PSLD the exponential
  // integrator (psld-ddim, λ = 0; its samplers are first order, so it takes 4x the substeps).
  const SamplerInfo& reference() const { return find_sampler(model.psld ? "psld-ddim" : "deis"); }
  SamplerOptions reference_options() const {
    SamplerOptions o;
    if (!model.psld) o.order = 3;
    return o;
  }
  int substeps(const DpSearchOptions& o) const { return model.psld ? 4 * o.substeps : o.substeps; }
};

// The states of the reference trajectories at every candidate level ([levels, n, D], float64,
// CPU; index k is levels[k]) and at the end point ([n, D]).
struct Reference {
  torch::Tensor states, eps, end;
};

// The ε-model of trajectories [first, first + count) (a class-conditional model's, for their classes).
using BatchEps = std::function<EpsModel(int64_t first, int64_t count)>;

Reference reference_trajectories(const BatchEps& batch_eps, const TimeAxis& axis, const torch::Tensor& noise,
                                 const std::vector<double>& levels, const DpSearchOptions& o, const torch::Device& device,
                                 int64_t& nfe) {
  const int n_levels = static_cast<int>(levels.size()), substeps = axis.substeps(o);
  std::vector<double> fine;  // decreasing, candidate k at index (n_levels - 1 - k) * substeps
  for (int k = n_levels - 1; k > 0; --k)
    for (int s = 0; s < substeps; ++s) fine.push_back(levels[k] + (levels[k - 1] - levels[k]) * s / substeps);
  fine.push_back(levels[0]);
  const Grid grid = axis.grid(fine);
  const SamplerInfo* solver = &axis.reference();  // (a pointer: GCC 14 warns on a reference here)
  const SamplerOptions solver_options = axis.reference_options();
  const int64_t n = noise.size(0), dim = noise[0].numel();
  const int64_t image_dim = axis.model.images(noise.slice(0, 0, 1)).numel();
  Reference ref{torch::empty({n_levels, n, dim}, torch::kFloat64), torch::empty({n_levels, n, dim}, torch::kFloat64),
                torch::empty({n, image_dim}, torch::kFloat64)};
  Progress progress("dp reference", n, "trajectory");
  for (int64_t first = 0; first < n; first += o.batch) {
    const int64_t count = std::min(o.batch, n - first);
    auto keep = [&](int k, const torch::Tensor& x) {
      ref.states[k].slice(0, first, first + count).copy_(x.reshape({count, dim}).to(torch::kCPU, torch::kFloat64));
    };
    const EpsModel model = batch_eps(first, count);
    auto x = noise.slice(0, first, first + count).to(device);
    keep(n_levels - 1, x);
    auto run = run_sampler(*solver, model, x, grid, solver_options, [&](const StepInfo& step) {
      const int f = step.index + 1;
      if (f % substeps == 0 && f / substeps < n_levels) keep(n_levels - 1 - f / substeps, step.x);
    });
    ref.end.slice(0, first, first + count)
        .copy_(axis.model.images(run.x).reshape({count, image_dim}).to(torch::kCPU, torch::kFloat64));
    nfe += run.nfe * count;
    for (int k = 0; k < n_levels; ++k) {  // ε at each candidate's reference state
      auto xk = ref.states[k].slice(0, first, first + count).reshape(noise.slice(0, 0, count).sizes());
      auto e = eval_eps(model, xk.to(device, torch::kFloat32), levels[k]);
      ref.eps[k].slice(0, first, first + count).copy_(e.reshape({count, dim}).to(torch::kCPU, torch::kFloat64));
    }
    nfe += n_levels * count;
    if (o.show_progress) progress.update(first + count);
  }
  if (o.show_progress) progress.finish();
  return ref;
}

// The search's noise: a stream of its own, so that no trajectory starts where image i of sampling
// seed `seed` does (initial_state seeds image i's generator by seed·1000003 + i). A
// class-conditional model's trajectories have classes too: `class_label`, else drawn after the noise.
InitialState search_draw(int64_t count, const std::vector<int64_t>& image_shape, uint64_t seed, int64_t label_dim,
                         int class_label) {
  std::vector<int64_t> shape{count};
  shape.insert(shape.end(), image_shape.begin(), image_shape.end());
  auto gen = at::detail::createCPUGenerator(seed ^ 0xD1B54A32D192ED03ull);
  InitialState out{torch::randn(shape, gen, torch::kFloat32), {}};
  if (label_dim > 0)
    out.classes = class_label >= 0 ? torch::full({count}, class_label, torch::kLong)
                                   : torch::randint(label_dim, {count}, gen, torch::kLong);
  return out;
}

// One step of `sampler` from time `from` to `to`, from `x` whose ε there is `eps` (no network
// evaluation). `elsewhere`, when given, tells whether the step asked for ε anywhere else (PNDM's
// Runge-Kutta start does): its result then means nothing.
torch::Tensor sampler_step(const SamplerInfo& sampler, const SamplerOptions& options, const TimeAxis& axis, double from,
                           double to, const torch::Tensor& x, const torch::Tensor& eps, bool* elsewhere = nullptr) {
  torch::Tensor stepped;  // the state after the first step (the rest of a PSLD grid is its denoising step)
  int calls = 0;
  const EpsModel known = [&](const torch::Tensor& at, const torch::Tensor& t) {
    if (elsewhere && !stepped.defined())
      *elsewhere |= ++calls > 1 || t.flatten()[0].item<double>() != from || !torch::equal(at, x);
    return eps;
  };
  sampler.fn(known, x, axis.jump(from, to), options, [&](const StepInfo& step) {
    if (!stepped.defined()) stepped = step.x;
  });
  return stepped;
}

// The step that costs the jumps of a sampler which evaluates the network between grid points:
// DDIM's for VP models, PSLD's exponential integrator for PSLD models.
torch::Tensor plain_step(const TimeAxis& axis, double from, double to, const torch::Tensor& x, const torch::Tensor& eps) {
  if (axis.model.psld) return sampler_step(find_sampler("psld-ddim"), {}, axis, from, to, x, eps);
  return transfer(x, eps, axis.model.schedule.alpha_bar(from), axis.model.schedule.alpha_bar(to));
}

// cost[i][j], i > j: the RMS error of the sampler's step (else plain_step's) from the reference
// state at level i to level j, against the reference state at j.
std::vector<std::vector<double>> jump_costs(const Reference& ref, const std::vector<double>& levels, const TimeAxis& axis,
                                            const SamplerInfo& sampler, const SamplerOptions& options) {
  const int n_levels = static_cast<int>(levels.size());
  const double n = static_cast<double>(ref.states.size(1));
  // (The states are flat [n, D]; a sampler's step needs the model's [n, C, H, W].)
  std::vector<int64_t> shape{ref.states.size(1)};
  const auto state = axis.model.state_shape();
  shape.insert(shape.end(), state.begin(), state.end());
  auto at = [&](const torch::Tensor& flat) { return flat.reshape(shape); };
  bool elsewhere = false;
  sampler_step(sampler, options, axis, levels[1], levels[0], at(ref.states[1]), at(ref.eps[1]), &elsewhere);
  const bool own_step = !elsewhere;
  if (!own_step)
    spdlog::info("dp: {}'s step evaluates the network between grid points; jumps are costed by {}'s", sampler.name,
                 axis.model.psld ? "the exponential integrator" : "DDIM");
  std::vector<std::vector<double>> cost(n_levels, std::vector<double>(n_levels, 0.0));
  for (int i = 1; i < n_levels; ++i) {
    // (With the analytical first step, the jumps from the top level take x_T itself for ε, as
    // run_sampler does.)
    const auto x = at(ref.states[i]), eps = options.afs && i == n_levels - 1 ? x : at(ref.eps[i]);
    for (int j = 0; j < i; ++j) {
      const auto step = own_step ? sampler_step(sampler, options, axis, levels[i], levels[j], x, eps)
                                 : plain_step(axis, levels[i], levels[j], x, eps);
      cost[i][j] = std::sqrt((step.reshape(ref.states[j].sizes()) - ref.states[j]).square().sum().item<double>() / n);
    }
  }
  return cost;
}

}  // namespace

std::map<std::string, std::string> dp_search_settings(const SampleConfig& sampling) {
  const SamplerInfo& sampler = find_sampler(sampling.sampler);
  Config config;
  config.sample = sampling;
  if (sampler.max_order >= 0 && sampling.order < 0) config.sample.order = sampler.default_order;
  const YAML::Node sample = YAML::Load(to_yaml(config))["sample"];
  std::map<std::string, std::string> out{{"sampler", sampler.name}};
  std::vector<std::string> keys = sampler.options;
  if (sampler.max_order >= 0) keys.push_back("order");
  keys.push_back("final_alpha");
  for (const auto& key : keys) out[key] = YamlReader::flow(sample[key]);
  out["skip_tuning"] = sampling.skip_tuning.active() ? YamlReader::flow(sample["skip_tuning"]) : "off";
  // (A class-conditional model's trajectories all of one class, when sampling fixes it.)
  if (sampling.class_label >= 0) out["class_label"] = std::to_string(sampling.class_label);
  return out;
}

DpGrids search_dp_grids(const DiffusionModel& diffusion, const SampleConfig& sampling, const std::vector<int>& steps,
                        const DpSearchOptions& o) {
  const NoiseSchedule& schedule = diffusion.schedule;
  const torch::Device& device = diffusion.device;
  const TimeAxis axis{diffusion, sampling.final_alpha};
  const std::string process = diffusion.psld ? "psld" : "vp";
  const SamplerInfo& sampler = find_sampler(sampling.sampler, process);
  const SamplerOptions options = sampler_options(sampling);
  check_options(sampler, options);
  check_class_label(sampling.class_label, diffusion.label_dim);
  if (draws_noise(sampler, options))
    throw ConfigError("dp grids are searched for deterministic samplers; '" + sampler.name + "'" +
                      (options.eta != 0 ? " with eta = " + std::to_string(options.eta) : "") +
                      (options.s_churn != 0 ? " with s_churn = " + std::to_string(options.s_churn) : "") + " is stochastic");
  if (o.substeps < 1 || o.samples < 1 || o.batch < 1 || o.search_samples < 1)
    throw ConfigError("dp: substeps, samples, search samples and batch must be positive");
  const int max_steps = dp_max_steps(diffusion, o.levels);
  for (int s : steps) {
    if (diffusion.psld && s < 2)
      throw ConfigError("dp: " + std::to_string(s) + " steps: a PSLD sampler takes at least 2 (the last denoises)");
    if (s < 1 || s > max_steps)
      throw ConfigError("dp: " + std::to_string(s) + " steps need as many candidate times; levels = " +
                        std::to_string(o.levels) + " keeps " + std::to_string(max_steps) + " (raise levels)");
  }
  const auto& read = sampler.options;
  if (options.clip_denoised && std::find(read.begin(), read.end(), "clip_denoised") != read.end())
    spdlog::warn("dp: the reference is the probability-flow ODE, which {} with clip_denoised does not follow: the "
                 "grid is searched against end points its samples never reach (measured on Fashion-MNIST: worse "
                 "than the hand-made grids); search dp for the unclipped sampler",
                 sampler.name);
  const int order = options.order >= 0 ? options.order : sampler.default_order;
  // (PSLD's one-step samplers search too: a step's error rotates on through PSLD's dynamics, which
  // a sum of pairwise costs misses; on the Gaussian oracle the cheapest path alone loses to the
  // quadratic grid.)
  const int sweeps = o.sweeps >= 0 ? o.sweeps : diffusion.psld || sampler.accuracy(order) > 1 ? 2 : 0;

  DpGrids out;
  out.levels = dp_candidate_levels(diffusion, o.levels);
  // Trajectories [0, samples) for the costs (the first search_samples also for the search), then
  // the held-out ones.
  const int64_t holdout = std::max<int64_t>(o.holdout, 1);
  const auto drawn = search_draw(o.samples + holdout, diffusion.state_shape(), o.seed, diffusion.label_dim, sampling.class_label);
  // (Started where sampling starts: EDM's networks at σ_T z, generate() says why; PSLD's at its prior.)
  const torch::Tensor noise = diffusion.edm_prior ? drawn.noise * std::sqrt(1 - schedule.alpha_bar(out.levels.back()))
                              : diffusion.psld    ? diffusion.psld->prior(drawn.noise)
                                                  : drawn.noise;
  const BatchEps batch_eps = [&](int64_t first, int64_t count) {
    return diffusion.eps_for(drawn.classes.defined() ? drawn.classes.slice(0, first, first + count) : drawn.classes);
  };
  auto ref = reference_trajectories(batch_eps, axis, noise, out.levels, o, device, out.nfe);
  const Reference fitted{ref.states.slice(1, 0, o.samples), ref.eps.slice(1, 0, o.samples), ref.end.slice(0, 0, o.samples)};
  const auto cost = jump_costs(fitted, out.levels, axis, sampler, options);
  for (size_t k = 0; k + 1 < out.levels.size(); ++k) out.step_error.push_back(cost[k + 1][k]);

  // The full sampler's RMS end-point error on a grid of candidate indices (decreasing), over the
  // trajectories [first, first + count).
  auto end_error = [&](const std::vector<int>& path, int64_t first_trajectory, int64_t trajectories) {
    std::vector<double> ts;
    for (int k : path) ts.push_back(out.levels[k]);
    const Grid grid = axis.grid(ts);
    double sum = 0;
    for (int64_t first = first_trajectory; first < first_trajectory + trajectories; first += o.batch) {
      const int64_t count = std::min(o.batch, first_trajectory + trajectories - first);
      auto run = run_sampler(sampler, batch_eps(first, count), noise.slice(0, first, first + count).to(device), grid, options);
      out.nfe += run.nfe * count;
      auto x = diffusion.images(run.x).reshape({count, -1}).to(torch::kCPU, torch::kFloat64);
      sum += (x - ref.end.slice(0, first, first + count)).square().sum().item<double>();
    }
    return std::sqrt(sum / static_cast<double>(trajectories));
  };
  const int64_t m = std::min(o.search_samples, o.samples);

  const int top = static_cast<int>(out.levels.size()) - 1;
  // A named grid of S steps on the candidates (each time to the nearest, the ends to the ends), or
  // nothing where two times fall on one candidate.
  auto snapped = [&](const std::string& name, int S) -> std::optional<std::vector<int>> {
    std::vector<double> times;
    try {
      times = diffusion.psld ? make_psld_grid(name, S, *diffusion.psld).t : make_timesteps(name, S, schedule);
    } catch (const ConfigError&) {  // (a grid this process does not have)
      return std::nullopt;
    }
    if (static_cast<int>(times.size()) < S) return std::nullopt;
    std::vector<int> path;
    for (int k = 0; k < S; ++k) {
      const auto& c = out.levels;
      const auto above = std::lower_bound(c.begin(), c.end(), times[k]);
      int index = static_cast<int>(above - c.begin());
      if (index == static_cast<int>(c.size()) || (index > 0 && times[k] - c[index - 1] < c[index] - times[k])) --index;
      path.push_back(k == 0 ? top : k + 1 == S ? 0 : index);
      if (k > 0 && path[k] >= path[k - 1]) return std::nullopt;
    }
    return path;
  };
  for (int S : steps) {
    std::vector<int> path = S == 1 ? std::vector<int>{top} : cheapest_path(cost, S - 1);
    double error = end_error(path, 0, m);
    // The coordinate search moves times a few candidates at a time, so it starts from the best of
    // the cheapest path and the hand-made grids: one-step costs misjudge a multistep sampler's
    // steps (DPM-Solver++(3M)'s long last steps, stable on Karras' grid, are not on that path).
    for (const char* name : {"logsnr", "karras", "quad", "uniform"}) {
      const auto start = sweeps > 0 && S > 2 ? snapped(name, S) : std::nullopt;
      if (!start) continue;
      if (const double e = end_error(*start, 0, m); e < error) path = *start, error = e;
    }
    Progress progress("dp search, " + std::to_string(S) + " steps", sweeps, "sweep");
    for (int sweep = 0; sweep < sweeps; ++sweep) {
      for (int delta : {4, 2, 1})
        for (int p = 1; p + 1 < S; ++p)
          for (int direction : {-1, 1}) {
            const int moved = path[p] + direction * delta;
            if (moved <= path[p + 1] || moved >= path[p - 1]) continue;
            auto trial = path;
            trial[p] = moved;
            const double e = end_error(trial, 0, m);
            if (e < error) path = std::move(trial), error = e;
          }
      if (o.show_progress) progress.update(sweep + 1);
    }
    std::vector<double> ts;
    for (int k : path) ts.push_back(out.levels[k]);
    out.grids[S] = ts;
    out.end_error[S] = end_error(path, o.samples, holdout);
  }
  return out;
}

}  // namespace s2dm::sample
