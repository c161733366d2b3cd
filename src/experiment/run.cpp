// Running an experiment: train what is missing, sample and measure every pending unit, write the
// outputs of whatever is finished.
#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <map>
#include <optional>
#include <nlohmann/json.hpp>

#include "plan.h"
#include "s2dm/core/device.h"
#include "s2dm/core/errors.h"
#include "s2dm/core/progress.h"
#include "s2dm/core/stop_signals.h"
#include "s2dm/data/data.h"
#include "s2dm/experiment/report.h"
#include "s2dm/io/file_io.h"
#include "s2dm/io/image_io.h"
#include "s2dm/io/plot.h"
#include "s2dm/model/model_source.h"
#include "s2dm/sample/generate.h"
#include "s2dm/sample/grid_file.h"
#include "s2dm/train/train.h"

namespace s2dm::experiment {
namespace fs = std::filesystem;
using json = nlohmann::ordered_json;

namespace {

ResultRow result_row(const Unit& u, const json& metric) {
  ResultRow row;
  row.model = u.model->name;
  row.setting = u.setting->values;
  row.sampler = u.config.sampler;
  row.steps = u.config.steps;
  row.seed = u.seed;
  row.nfe = metric.value("nfe", u.nfe);
  row.metric = metric.at("metric").get<std::string>();
  row.value = metric.at("value").get<double>();
  if (metric.contains("kid_mean")) row.kid_mean = metric["kid_mean"], row.kid_std = metric["kid_std"];
  row.reference_rms = metric.value("reference_rms", -1.0);
  row.num_samples = metric.value("num_samples", int64_t{0});
  row.sample_seconds = metric.value("sample_seconds", 0.0);
  row.metric_seconds = metric.value("metric_seconds", 0.0);
  row.key = u.key;
  row.grid_png = u.dir + "/grid.png";
  return row;
}

ReportSpec report_spec(const Experiment& e) {
  return {e.name, e.path, e.out, e.baseline, e.table.rows, e.metric.reference, e.seeds.size()};
}

json read_json(const std::string& path) {
  auto j = json::parse(read_file_bytes(path), nullptr, false);
  if (j.is_discarded()) throw DataError(path + ": not valid JSON");
  return j;
}

// Trains (or resumes) a train model unless its run is complete; returns false when a signal
// interrupted the training.
bool ensure_trained(const ModelSpec& m, const TrainState& state, RunSummary& summary) {
  if (state.trained()) return true;
  train::TrainOptions topts;
  topts.run_dir = state.run_dir;
  if (state.resumable()) {
    topts.resume = true;
    topts.steps = m.config.train.steps;
    topts.overrides = untracked_training_settings(m.config);  // (the checkpoint's may differ)
  } else {
    topts.overwrite = true;
    if (fs::exists(state.run_dir)) spdlog::info("{}: settings changed, training again", state.run_dir);
  }
  const auto result = train::run_training(m.config, topts);
  ++summary.models_trained;
  return !result.interrupted;
}

std::string tuning_plot_path(const std::string& tuning_file) {
  return fs::path(tuning_file).replace_extension(".png").string();
}

// The unit's learned or dp grid file (none for other grids), found when missing: the model's
// score-optimal schedule from its data, or its dp grids for the unit's sampler settings.
ModelGrids unit_grids(const Experiment& e, const Unit& u, const GridFile& file, const model::LoadedModel& loaded,
                      const torch::Device& device) {
  ModelGrids grids;
  grids.file = file.path;
  if (file.path.empty() || fs::exists(file.path)) return grids;
  const ModelSpec& m = *u.model;
  fs::create_directories(fs::path(file.path).parent_path());
  if (sample::uses_learned_grid(u.config)) {
    spdlog::info("{}: estimating the score-optimal grids ({} levels, {} images)", m.name, e.grid_search.levels,
                 e.grid_search.samples);
    sample::make_score_grid_file(DiffusionModel::of(m.config, loaded.eps_fp32(), device),
                                 data::load_dataset(m.config.data), e.grid_search.levels,
                                 e.grid_search.samples, e.grid_search.seed, e.grid_search.batch, file.steps, file.path);
  } else {
    spdlog::info("{}: searching the dp grids for {} ({} candidate levels, {} trajectories)", m.name, u.setting->label(),
                 e.grid_search.dp.levels, e.grid_search.dp.samples);
    sample::DpSearchOptions o;
    o.levels = e.grid_search.dp.levels;
    o.samples = e.grid_search.dp.samples;
    o.search_samples = std::min<int64_t>(o.samples, o.search_samples);
    o.sweeps = e.grid_search.dp.sweeps;
    o.batch = e.grid_search.batch;
    o.seed = e.grid_search.seed;
    sample::make_dp_grid_file(DiffusionModel::of(m.config, loaded.eps_fp32(u.config.skip_tuning), device), u.config,
                              file.steps, o, file.path);
  }
  return grids;
}

// The Skip-Tuning of a unit with skip_tuning: tuned: its search's winner, searched when its file is
// missing (tune_skip: ρ_bottom on the proxy, with common random numbers), written with the curve
// and a plot of it beside. Nothing when `stop` ended the search (it starts again next time).
// The order with a learned or dp grid: the grid first, for the model without Skip-Tuning (the
// search needs a grid that does not move with ρ), then ρ on that grid, which the unit samples
// with; searching the grid again for the tuned model would make ρ tuned for another grid.
std::optional<SkipTuningConfig> tuned_skips(const Experiment& e, const Unit& u, const model::LoadedModel& loaded,
                                            DiffusionModel model, Measurer& measurer, const StopSignals& stop) {
  const auto& t = e.tune_skip;
  SkipTuningConfig skips = u.config.skip_tuning;
  skips.rho_top = t.rho_top;
  if (!fs::exists(u.tuning_file)) {
    const ModelSpec& m = *u.model;
    spdlog::info("{} | {}: searching ρ_bottom in [{}, {}] on {} proxy samples", m.name, u.setting->label(), t.lo(), t.hi(),
                 t.proxy_samples);
    struct Stopped {};
    std::vector<std::pair<double, double>> curve;
    try {
      curve = search_minimum(
          [&](double rho) {
            SampleConfig c = u.config;
            c.skip_tuning = skips;
            c.skip_tuning.rho_bottom = rho;
            model.eps = loaded.eps(c.skip_tuning);
            const auto generated = sample::generate(model, sample::plan_sampling(c, model),
                                                    {t.seed, 0, t.proxy_samples, {}}, false, [&] { return stop.requested(); });
            if (!generated.complete) throw Stopped{};
            const auto features = eval::feature_set(measurer.extractor(), data::to_uint8(generated.samples),
                                                    e.metric.batch, model.device, false);
            const double fd = eval::distance(features, measurer.reference(m), false).fd;
            spdlog::info("  ρ_bottom {:.4f}: proxy {} {:.4f}", rho, measurer.extractor().distance_label(), fd);
            return fd;
          },
          t.lo(), t.hi(), t.points, t.refine);
    } catch (const Stopped&) {
      return std::nullopt;
    }
    auto best = *std::min_element(curve.begin(), curve.end(), [](auto& a, auto& b) { return a.second < b.second; });
    if (best.first == t.lo() && t.lo() > 0)  // (at 0 the deepest skip is off: the search's natural end)
      spdlog::warn("{} | {}: the proxy is still falling at ρ_bottom = {} (the range's end): widen tune_skip.range", m.name,
                   u.setting->label(), t.lo());
    json record{{"rho_bottom", best.first}, {"rho_top", t.rho_top}, {"proxy_fd", best.second},
                {"proxy_samples", t.proxy_samples}, {"metric", measurer.extractor().distance_label()},
                {"grid_file", model.grids.file}, {"curve", curve}};
    fs::create_directories(fs::path(u.tuning_file).parent_path());
    std::vector<double> x, y;
    for (const auto& [rho, fd] : curve) x.push_back(rho), y.push_back(fd);
    write_png(tuning_plot_path(u.tuning_file), line_plot({{x, y, {200, 30, 30}, false}, {{best.first}, {best.second}, {0, 0, 0}, true}}));
    write_file_atomic(u.tuning_file, record.dump(2) + "\n");
  }
  skips.rho_bottom = read_json(u.tuning_file).at("rho_bottom").get<double>();
  return skips;
}

// Samples a unit (unless an earlier run did) from `model`, which has the unit's Skip-Tuning and
// grids, and measures it into its metric file. Returns false when `stop` ended the sampling early.
bool run_unit(const Experiment& e, Unit& u, const DiffusionModel& model, const model::LoadedModel& loaded,
              Measurer& measurer, const ReferenceErrors& errors, const StopSignals& stop) {
  const ModelSpec& m = *u.model;
  spdlog::info("{} | {} | seed {}", m.name, u.setting->label(), u.seed);
  fs::create_directories(u.dir);
  const auto stopped = [&] { return stop.requested(); };
  const auto plan = sample::plan_sampling(u.config, model);
  const int64_t head_size = e.metric.reference_error.samples;
  torch::Tensor head;  // the first images, unclipped, for the reference error
  json sample_info;
  if (!u.has_samples) {
    if (!plan.warning.empty()) spdlog::warn("{}", plan.warning);
    auto generated = sample::generate(model, plan, {u.seed, 0, e.metric.num_samples, {}}, true, stopped);
    if (!generated.complete) return false;
    if (errors.measures(u)) head = generated.samples.slice(0, 0, head_size);
    sample::write_samples(u.dir, generated.samples, false);
    sample_info = {{"model", m.name},     {"setting", u.setting->label()}, {"seed", u.seed},
                   {"nfe", generated.nfe}, {"num_samples", e.metric.num_samples},
                   {"seconds", generated.seconds}};
    if (const auto& skips = u.config.skip_tuning; skips.active())  // (tuned: the search's result)
      sample_info["skip_tuning"] = {{"rho_bottom", skips.rho_bottom}, {"rho_top", skips.rho_top}, {"rho", skips.rho}};
    write_file_atomic(u.dir + "/sample.json", sample_info.dump(2) + "\n");
    u.has_samples = true;
  } else {
    sample_info = read_json(u.dir + "/sample.json");
  }
  const auto images = sample::read_samples_npz(u.dir + "/samples.npz");
  std::optional<double> reference_rms;
  if (errors.measures(u)) {
    if (!head.defined()) {  // (samples of an earlier run, kept as uint8: the same first images again)
      const auto again = sample::generate(model, plan, {u.seed, 0, head_size, {}}, false, stopped);
      if (!again.complete) return false;
      head = again.samples;
    }
    reference_rms = errors.rms(u, head, model, loaded, stopped);
    if (!reference_rms) return false;
  }

  const auto start = std::chrono::steady_clock::now();
  const auto& extractor = measurer.extractor();
  const auto d = eval::distance(eval::feature_set(extractor, images, e.metric.batch, model.device), measurer.reference(m),
                                e.metric.kid);
  json metric{{"metric", extractor.distance_label()}, {"value", d.fd}};
  if (d.kid) {
    metric["kid_mean"] = d.kid->mean;
    metric["kid_std"] = d.kid->std;
  }
  if (reference_rms) metric["reference_rms"] = *reference_rms;
  metric["nfe"] = sample_info.value("nfe", u.nfe);
  metric["num_samples"] = images.size(0);
  metric["sample_seconds"] = sample_info.value("seconds", 0.0);
  metric["metric_seconds"] = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  write_file_atomic(u.metric_file(), metric.dump(2) + "\n");
  u.has_metric = true;
  spdlog::info("{} | {} | seed {}: {} = {:.4f}{}", m.name, u.setting->label(), u.seed, extractor.distance_label(), d.fd,
               reference_rms ? fmt::format(", RMS against the reference solution {:.4g}", *reference_rms) : "");
  return true;
}

// results.csv, results.md and the report, with notes on what ran; returns the units finished.
int write_outputs(const Experiment& e, const std::vector<Unit>& units, ReportInputs& inputs) {
  for (const auto& m : e.models) {
    if (!m.train_config.empty() && fs::exists(model_dir(e, m) + "/metrics.jsonl"))
      inputs.training_metrics[m.name] = model_dir(e, m) + "/metrics.jsonl";
  }
  const auto files = grid_files(e, units);
  for (size_t i = 0; i < units.size(); ++i) {
    const auto plot = sample::grid_plot_path(files[i].path);
    if (files[i].path.empty() || !fs::exists(plot)) continue;
    const auto file = sample::read_grid_file(files[i].path, noise_schedule_of(units[i].model->config).num_timesteps());
    std::string label = units[i].model->name + ": " + (file.method == "dp" ? file.description() : "score-optimal");
    if (file.method == "dp")  // the other settings it was searched for (e.g. Skip-Tuning)
      for (const auto& [key, value] : units[i].setting->values)
        if (key != "sampler" && key != "steps" && key != "timesteps") label += ", " + key + "=" + value;
    inputs.grid_plots.emplace(label, plot);
  }
  int done = 0;
  for (const auto& u : units) done += u.has_metric;
  inputs.notes.push_back(std::to_string(done) + " of " + std::to_string(units.size()) + " units finished (" +
                         std::to_string(e.models.size()) + " models, " + std::to_string(e.settings.size()) + " settings, " +
                         std::to_string(e.seeds.size()) + " seeds); " + std::to_string(e.metric.num_samples) +
                         " samples per unit; features " + e.metric.features + ", reference " + e.metric.reference + ".");
  for (const auto& m : e.models) {
    if (!m.train_config.empty()) {
      std::string with;
      for (const auto& o : m.set) with += (with.empty() ? " with " : ", ") + o;
      inputs.notes.push_back(m.name + ": " + m.train_config + with + " (loss " + m.config.loss.type + ", " +
                             std::to_string(m.config.train.steps) + " steps)");
    } else {
      inputs.notes.push_back(m.name + ": " + m.origin() + (m.checkpoint.empty() ? "" : m.ema ? " (EMA weights)" : " (raw weights)"));
    }
  }
  for (const auto& u : units) {
    if (u.tuning_file.empty() || !fs::exists(u.tuning_file) || u.seed != units.front().seed) continue;
    const auto record = read_json(u.tuning_file);
    const std::string label = u.model->name + " | " + u.setting->label();
    inputs.tuning_plots[label] = tuning_plot_path(u.tuning_file);
    char line[200];
    std::snprintf(line, sizeof line, ": Skip-Tuning ρ_bottom = %.4g (ρ_top %.3g), proxy %s %.4g on %lld samples",
                  record.at("rho_bottom").get<double>(), record.at("rho_top").get<double>(),
                  record.at("metric").get<std::string>().c_str(), record.at("proxy_fd").get<double>(),
                  static_cast<long long>(record.at("proxy_samples").get<int64_t>()));
    inputs.notes.push_back(label + line);
  }
  write_report(report_spec(e), inputs);
  return done;
}

constexpr const char* kOutputMarker = ".s2dm-experiment";

// The output folder must be the driver's (it writes results.csv, log.txt, report/ and more there):
// new, empty, marked, or an earlier run's (its experiment.yaml and units/). Throws ConfigError.
void check_output_folder(const Experiment& e) {
  std::error_code ec;
  if (!fs::exists(e.out, ec)) return;
  if (!fs::is_directory(e.out, ec)) throw ConfigError(e.path + ": out = " + e.out + " is a file, not a folder");
  if (fs::exists(e.out + "/" + kOutputMarker, ec) ||
      (fs::exists(e.out + "/experiment.yaml", ec) && fs::is_directory(e.out + "/units", ec)))
    return;
  for (const auto& entry : fs::directory_iterator(e.out))
    if (entry.path().filename() != DirectoryLock::kFileName)
      throw ConfigError(e.path + ": out = " + e.out + " holds " + entry.path().filename().string() +
                        " and is no experiment's output folder (s2dm never writes over what it did not write): choose "
                        "another out");
}

}  // namespace

RunSummary run_experiment(const Experiment& e, const RunOptions& options) {
  StopSignals stop;
  set_cpu_threads(e.threads);
  const auto device = resolve_device(e.device);
  for (const auto& name : options.only)
    if (std::none_of(e.models.begin(), e.models.end(), [&](const ModelSpec& m) { return m.name == name; }))
      throw ConfigError("--only " + name + ": " + e.path + " has no model of that name");
  auto selected = [&](const ModelSpec& m) {
    return options.only.empty() || std::find(options.only.begin(), options.only.end(), m.name) != options.only.end();
  };

  check_output_folder(e);
  Measurer measurer(e, device);
  const ReferenceErrors errors(e);
  ExperimentPlan plan = plan_units(e, measurer, errors);
  auto& units = plan.units;
  RunSummary summary = show_plan(e, plan, device, selected);
  if (options.dry_run) return summary;

  const DirectoryLock lock(e.out);  // one driver per output directory
  write_file_atomic(e.out + "/" + kOutputMarker, "s2dm experiment output: s2dm run writes and replaces its files here\n");
  if (int n = remove_dead_writers_temporaries(e.out))
    spdlog::info("{}: removed {} temporary file(s) of an earlier run that was killed while writing", e.out, n);
  write_file_atomic(e.out + "/experiment.yaml", read_file_bytes(e.path));
  LogFile log_file(e.out + "/log.txt");
  ReportInputs inputs;
  auto collect = [&]() {
    inputs.rows.clear();
    for (const auto& u : units)
      if (fs::exists(u.metric_file())) inputs.rows.push_back(result_row(u, read_json(u.metric_file())));
  };

  // Every selected model's weights first (trained or resumed here, or the given checkpoint)...
  std::map<const ModelSpec*, model::ModelRef> refs;
  for (const auto& m : e.models) {
    const bool pending = std::any_of(units.begin(), units.end(), [&](const Unit& u) { return u.model == &m && !u.has_metric; });
    if (!selected(m) || !pending) continue;
    if (stop.requested()) break;
    model::ModelRef ref;
    ref.checkpoint = m.checkpoint;
    ref.ema = m.ema;
    ref.weights = m.weights;
    ref.config = m.weights_config;
    if (!m.train_config.empty()) {
      const auto& state = plan.states.at(m.name);
      if (!ensure_trained(m, state, summary)) {
        summary.interrupted = true;
        break;
      }
      // (latest.ckpt, but for a finished run whose latest.ckpt was lost: its newest step file)
      ref.checkpoint = state.trained() ? state.checkpoint : train::latest_checkpoint(state.run_dir);
    }
    refs[&m] = ref;
  }

  // ...then the units, the fewest evaluations first whatever the model: a run stopped early has
  // whole low-NFE columns, every model and seed, rather than one model's every budget.
  std::vector<Unit*> pending;
  if (!summary.interrupted)
    for (auto& u : units)
      if (refs.count(u.model) && !u.has_metric) pending.push_back(&u);
  std::stable_sort(pending.begin(), pending.end(), [](const Unit* a, const Unit* b) { return a->nfe < b->nfe; });
  const auto files = grid_files(e, units);
  std::optional<model::LoadedModel> loaded;
  const ModelSpec* loaded_for = nullptr;
  for (Unit* u : pending) {
    if (stop.requested()) break;
    if (fs::exists(u->metric_file())) {  // a setting that differs only in what this sampler ignores
      u->has_metric = true;
      continue;
    }
    const ModelSpec& m = *u->model;
    if (loaded_for != &m) {  // (a train model's overrides are in its checkpoint's config; weights take theirs here)
      loaded.reset();
      loaded.emplace(model::resolve_model(refs.at(&m), m.weights.empty() ? std::vector<std::string>{} : m.set), device);
      loaded_for = &m;
    }
    auto model = DiffusionModel::of(m.config, {}, device, unit_grids(e, *u, files[u - units.data()], *loaded, device));
    if (!u->tuning_file.empty()) {
      const auto tuned = tuned_skips(e, *u, *loaded, model, measurer, stop);
      if (!tuned) break;
      u->config.skip_tuning = *tuned;
    }
    model.eps = loaded->eps(u->config.skip_tuning);
    if (!run_unit(e, *u, model, *loaded, measurer, errors, stop)) break;
    ++summary.units_run;
    collect();
    write_file_atomic(e.out + "/results.csv", results_csv(inputs.rows));
  }
  summary.interrupted = summary.interrupted || stop.requested();

  // The outputs, from every finished unit (also those of models --only left out).
  collect();
  const int done = write_outputs(e, units, inputs);
  if (summary.interrupted) spdlog::warn("interrupted: {} units finished this time; run again to continue", summary.units_run);
  std::printf("%d units run now, %d reused, %d of %zu done; wrote %s/results.csv, results.md, report/index.html\n",
              summary.units_run, summary.units_done_before, done, units.size(), e.out.c_str());
  return summary;
}

}  // namespace s2dm::experiment
