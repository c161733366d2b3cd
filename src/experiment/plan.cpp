// Planning an experiment: the units and their keys, the state of each model's training, the
// time estimate.
#include "plan.h"

#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <set>

#include "s2dm/core/errors.h"
#include "s2dm/core/progress.h"
#include "s2dm/io/checkpoint.h"
#include "s2dm/model/model_source.h"
#include "s2dm/sample/generate.h"
#include "s2dm/sample/samplers.h"
#include "s2dm/train/train.h"

namespace s2dm::experiment {
namespace fs = std::filesystem;

std::string training_identity(Config c) {
  c.name.clear();
  c.device = "auto";
  c.threads = 0;
  c.sample = SampleConfig{};
  c.train.max_minutes = 0;
  c.train.distributed = DistributedConfig{};
  return config_identity(c);
}

std::vector<std::string> untracked_training_settings(const Config& c) {
  const auto& t = c.train;
  auto number = [](double v) { return fmt::format("{}", v); };
  return {"train.max_minutes=" + number(t.max_minutes), "train.distributed.backend=" + t.distributed.backend,
          "train.distributed.timeout=" + number(t.distributed.timeout),
          "train.distributed.bucket_mb=" + number(t.distributed.bucket_mb)};
}

std::string file_identity(const std::string& path) {
  std::error_code ec;
  const auto canonical = fs::weakly_canonical(path, ec).string();
  const auto size = fs::file_size(path, ec);
  const auto mtime = fs::last_write_time(path, ec).time_since_epoch().count();
  return canonical + "|" + std::to_string(size) + "|" + std::to_string(mtime);
}

std::string model_dir(const Experiment& e, const ModelSpec& m) { return e.out + "/models/" + m.name; }

namespace {

// What an earlier run left in a train model's run directory.
TrainState train_state(const Experiment& e, const ModelSpec& m) {
  TrainState s;
  s.run_dir = model_dir(e, m);
  s.target = m.config.train.steps;
  const auto dir = train::inspect_run_directory(s.run_dir);
  if (dir.checkpoints.empty()) return s;
  try {
    const auto newest = train::newest_checkpoint(dir);  // (as the resume will choose)
    const auto& ckpt = newest.checkpoint;
    s.checkpoint = newest.path;
    auto config = parse_config(ckpt.config_yaml, s.run_dir + " (checkpoint config)");
    // The same settings, trained as far or less far (it then resumes); a run that went further
    // trains again, since its weights are not those of the shorter run.
    const auto& wanted = m.config;
    config.train.steps = wanted.train.steps;
    s.matches = training_identity(config) == training_identity(wanted) && ckpt.step <= wanted.train.steps;
    s.step = ckpt.step;
    if (const auto it = ckpt.extra.find("train_seconds"); it != ckpt.extra.end() && wanted.train.max_minutes > 0)
      s.budget_spent = std::stod(it->second) >= 60 * wanted.train.max_minutes;
  } catch (const Error& err) {
    spdlog::warn("{} (it will be trained again)", err.what());
  }
  return s;
}

// Seconds per image per network evaluation of a model's network (random weights), for the estimate.
double eval_seconds_per_image(const Config& config, int64_t batch, const torch::Device& device) {
  torch::NoGradGuard no_grad;
  const auto network = model::make_network(config);
  network.module->eval();
  network.module->to(device);
  const int64_t b = std::clamp<int64_t>(batch, 1, 32);
  auto x = torch::randn({b, model::network_channels(config), config.data.image_size, config.data.image_size}).to(device);
  auto t = torch::full({b}, 500.0).to(device);
  network.forward(x, t, {}, {});
  const auto start = std::chrono::steady_clock::now();
  network.forward(x, t, {}, {});
  if (device.is_cuda()) torch::cuda::synchronize();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() / b;
}

// The sample settings that can change a unit's samples. Options the sampler does not read are
// reset (changing clip_denoised, which only DDIM and DDPM read, re-runs no DEIS unit), and so is
// the batch, except for samplers that draw noise (DDPM, DDIM with η > 0, churn); `auto` names the
// grid it stands for.
SampleConfig effective_settings(SampleConfig c) {
  const auto& info = sample::find_sampler(c.sampler);
  c.timesteps = sample::time_grid(c);
  std::vector<std::string> unread;
  for (const auto& key : sample::sampler_option_keys())
    if (std::find(info.options.begin(), info.options.end(), key) == info.options.end()) unread.push_back(key);
  if (c.timesteps != "karras" && c.timesteps != "edm") unread.push_back("karras_rho");
  if (c.s_churn == 0) unread.insert(unread.end(), {"s_min", "s_max", "s_noise"});
  if (!c.skip_tuning.active()) unread.push_back("skip_tuning");
  reset_sample_keys(c, unread);
  if (!sample::draws_noise(info, c)) c.batch = 0;
  return c;
}

}  // namespace

namespace {

// What a unit's grid file depends on besides the model and its step counts: the method and its
// settings, and for dp the sampler settings the grid is searched for (Skip-Tuning's given factors
// included, as they change the model; skip_tuning: tuned searches ρ on the grid of the model
// without it, run.cpp's tuned_skips says why). Empty for grids that need no file.
std::string grid_family(const Experiment& e, const SampleConfig& config) {
  const auto& s = e.grid_search;
  if (sample::uses_learned_grid(config))
    return "score " + std::to_string(s.levels) + "|" + std::to_string(s.samples) + "|" + std::to_string(s.seed);
  if (!sample::uses_dp_grid(config)) return "";
  Config c;
  c.sample = effective_settings(config);
  c.sample.steps = SampleConfig{}.steps;
  return "dp " + std::to_string(s.dp.levels) + "|" + std::to_string(s.dp.samples) + "|" + std::to_string(s.dp.sweeps) +
         "|" + std::to_string(s.seed) + "\n" + config_identity(c);
}

}  // namespace

std::vector<GridFile> grid_files(const Experiment& e, const std::vector<Unit>& units) {
  std::vector<std::string> family;
  std::map<std::pair<const ModelSpec*, std::string>, std::set<int>> steps;
  for (const auto& u : units) {
    family.push_back(grid_family(e, u.config));
    if (!family.back().empty()) steps[{u.model, family.back()}].insert(u.config.steps);
  }
  std::vector<GridFile> out(units.size());
  for (size_t i = 0; i < units.size(); ++i) {
    if (family[i].empty()) continue;
    const auto& shared = steps.at({units[i].model, family[i]});
    out[i].steps.assign(shared.begin(), shared.end());
    // ("format 2": grids of S evaluations ending at t = 0; files of the earlier format are remade.)
    std::string text = units[i].model->key + "\nformat 2\n" + family[i];
    for (int s : out[i].steps) text += "|" + std::to_string(s);
    out[i].path = e.out + "/schedules/" + units[i].model->name + "-" + hash_key(text) + ".yaml";
  }
  return out;
}

ExperimentPlan plan_units(const Experiment& e, const Measurer& measurer, const ReferenceErrors& errors) {
  ExperimentPlan plan;
  auto& units = plan.units;
  // A unit's folder and metric file follow from its key; what exists there is what an earlier
  // run finished.
  auto place = [&](Unit& u, const std::string& key) {
    u.key = key;
    u.dir = e.out + "/units/" + u.model->name + "/" + u.key;
    std::string metric = u.key + "\n" + measurer.identity() + "\n" + measurer.reference_identity(*u.model);
    if (errors.measures(u)) metric += "\n" + errors.identity(*u.model);
    u.metric_key = hash_key(metric);
    u.has_samples = fs::exists(u.dir + "/samples.npz") && fs::exists(u.dir + "/sample.json");
    u.has_metric = fs::exists(u.metric_file());
  };
  for (const auto& m : e.models)
    for (const auto& s : e.settings) {
      if (!s.applies_to(m.name)) continue;
      const SampleConfig config = sample_config(e, m, s);
      Config c;
      c.sample = effective_settings(config);
      std::string settings_text = m.key + "\n" + config_identity(c);
      // (Where S does not divide T the uniform grid once took S + 1 or more points: such units
      // sample anew rather than reuse samples of the other grid.)
      if (sample::time_grid(config) == "uniform" && m.config.diffusion.num_timesteps % config.steps != 0)
        settings_text += "uniform grid: floor(i T / S)\n";
      for (uint64_t seed : e.seeds) {
        Unit u;
        u.model = &m;
        u.setting = &s;
        u.seed = seed;
        u.config = config;
        u.nfe = sample::network_evaluations(sample::find_sampler(config.sampler), config, config.steps);
        place(u, hash_key(settings_text + "seed " + std::to_string(seed)));
        units.push_back(std::move(u));
      }
    }
  // A learned or dp grid's file (and so the key) depends on every step count that shares it.
  const auto files = grid_files(e, units);
  for (size_t i = 0; i < units.size(); ++i)
    if (!files[i].path.empty()) place(units[i], hash_key(units[i].key + "\nlearned " + files[i].path));
  // A tuned unit's ρ (and so its key) comes from its search: the model, the settings and grid it
  // samples with, the proxy's feature space and reference, and the search itself.
  const auto& t = e.tune_skip;
  const std::string search = std::to_string(t.lo()) + "|" + std::to_string(t.hi()) + "|" + std::to_string(t.points) + "|" +
                             std::to_string(t.refine) + "|" + std::to_string(t.rho_top) + "|" +
                             std::to_string(t.proxy_samples) + "|" + std::to_string(t.seed);
  for (size_t i = 0; i < units.size(); ++i) {
    auto& u = units[i];
    if (!tunes_skips(e, *u.setting)) continue;
    Config c;
    c.sample = effective_settings(u.config);
    const std::string text = u.model->key + "\n" + config_identity(c) + files[i].path + "\n" + measurer.identity() + "\n" +
                             measurer.reference_identity(*u.model) + "\n" + search;
    u.tuning_file = e.out + "/tuning/" + u.model->name + "-" + hash_key(text) + ".json";
    place(u, hash_key(u.key + "\ntuned " + u.tuning_file));
  }
  for (const auto& m : e.models)
    if (!m.train_config.empty()) plan.states[m.name] = train_state(e, m);
  return plan;
}

RunSummary show_plan(const Experiment& e, const ExperimentPlan& plan, const torch::Device& device,
                     const std::function<bool(const ModelSpec&)>& selected) {
  // The plan and a rough estimate, from one timed network evaluation per model.
  RunSummary summary;
  double total_seconds = 0;
  const auto& units = plan.units;
  std::printf("experiment %s: %zu models × %zu settings × %zu seeds = %zu units, %s samples each, %s; output %s\n",
              e.name.c_str(), e.models.size(), e.settings.size(), e.seeds.size(), units.size(),
              std::to_string(e.metric.num_samples).c_str(), e.metric.features.c_str(), e.out.c_str());
  for (const auto& m : e.models) {
    int todo = 0, done = 0, to_sample = 0;
    int64_t nfe_images = 0;
    for (const auto& u : units)
      if (u.model == &m) {
        if (u.has_metric) {
          ++done;
        } else {
          ++todo;
          if (!u.has_samples) ++to_sample, nfe_images += u.nfe * e.metric.num_samples;
        }
      }
    if (const auto& spec = e.metric.reference_error; spec.enabled() && todo > 0) {  // (at most: some may be kept)
      const SampleConfig c = reference_solution_config(e, m);
      nfe_images += static_cast<int64_t>(e.seeds.size()) * spec.samples *
                    sample::network_evaluations(sample::find_sampler(c.sampler), c, c.steps);
    }
    summary.units_total += todo + done;
    summary.units_done_before += done;
    std::string training = m.origin();
    int64_t train_steps = 0;
    if (!m.train_config.empty()) {
      const auto& state = plan.states.at(m.name);
      if (state.trained()) {
        training = "trained (" + std::to_string(state.step) + " steps" +
                   (state.step < state.target ? ", train.max_minutes spent" : "") + ")";
      } else if (todo == 0) {
        training = "not needed (every unit done)";
      } else if (state.resumable()) {
        train_steps = m.config.train.steps - state.step;
        training = "resume at step " + std::to_string(state.step) + " of " + std::to_string(m.config.train.steps);
      } else {
        train_steps = m.config.train.steps;
        training = "train " + std::to_string(train_steps) + " steps";
      }
    }
    double seconds = 0;
    if (selected(m) && todo > 0) {
      const auto setting = std::find_if(e.settings.begin(), e.settings.end(), [&](const auto& s) { return s.applies_to(m.name); });
      const double per_image = eval_seconds_per_image(m.config, sample_config(e, m, *setting).batch, device);
      // A training step costs about three evaluations per image (forward, and a backward of about
      // twice its cost); every loss evaluates the network once (L_skip reuses the prediction).
      const double per_step = per_image * m.config.train.batch_size * 3.0;
      double train_seconds = per_step * static_cast<double>(train_steps);
      if (train_steps > 0 && m.config.train.max_minutes > 0)  // (the budget ends it first; at most the whole budget)
        train_seconds = std::min(train_seconds, m.config.train.max_minutes * 60);
      seconds = per_image * static_cast<double>(nfe_images) + train_seconds;
      total_seconds += seconds;
    }
    std::printf("  %-14s %-44s units: %d done, %d to run (%d to sample)%s%s\n", m.name.c_str(), training.c_str(), done, todo,
                to_sample, selected(m) ? "" : " [skipped: --only]",
                seconds > 0 ? (", ~" + format_duration(seconds)).c_str() : "");
  }
  std::printf("estimated time: ~%s (network time only, from one timed evaluation per model)\n",
              format_duration(total_seconds).c_str());
  std::fflush(stdout);
  return summary;
}

}  // namespace s2dm::experiment
