// Running an experiment: train what is missing, sample and measure every pending unit, write the
// outputs of whatever is finished.
#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "plan.h"
#include "s2dm/core/device.h"
#include "s2dm/core/errors.h"
#include "s2dm/core/progress.h"
#include "s2dm/core/stop_signals.h"
#include "s2dm/data/data.h"
#include "s2dm/experiment/report.h"
#include "s2dm/io/file_io.h"
#include "s2dm/model/model_source.h"
#include "s2dm/sample/generate.h"
#include "s2dm/sample/schedule_file.h"
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
  row.num_samples = metric.value("num_samples", int64_t{0});
  row.sample_seconds = metric.value("sample_seconds", 0.0);
  row.metric_seconds = metric.value("metric_seconds", 0.0);
  row.key = u.key;
  row.grid_png = u.dir + "/grid.png";
  return row;
}

ReportSpec report_spec(const Experiment& e) {
  return {e.name, e.path, e.out, e.baseline, e.table_rows, e.metric.reference, e.seeds.size()};
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
  } else {
    topts.overwrite = true;
    if (fs::exists(state.run_dir)) spdlog::info("{}: settings changed, training again", state.run_dir);
  }
  const auto result = train::run_training(m.config, topts);
  ++summary.models_trained;
  return !result.interrupted;
}

// The model's learned schedule file for the step counts its units use, estimated when missing.
sample::LearnedSchedule learned_schedule(const Experiment& e, const ModelSpec& m, const std::vector<Unit>& units,
                                         const model::LoadedModel& loaded, const NoiseSchedule& schedule,
                                         const torch::Device& device) {
  sample::LearnedSchedule learned;
  const auto steps = learned_steps(units, m);
  if (steps.empty()) return learned;
  learned.file = learned_schedule_file(e, m, steps);
  if (!fs::exists(learned.file)) {
    fs::create_directories(fs::path(learned.file).parent_path());
    spdlog::info("{}: estimating the score-optimal schedule ({} levels, {} images)", m.name, e.schedule.levels,
                 e.schedule.samples);
    auto images = data::load_dataset(m.config.data).images;
    sample::learn_schedule(loaded.eps_fp32(), schedule, images, e.schedule.levels, e.schedule.samples, e.schedule.seed,
                           e.schedule.batch, steps, device, learned.file);
  }
  return learned;
}

// Samples a unit (unless an earlier run did) and measures it into its metric file. Returns false
// when `stop` ended the sampling early.
bool run_unit(const Experiment& e, Unit& u, const model::LoadedModel& loaded, const NoiseSchedule& schedule,
              const sample::LearnedSchedule& learned, Measurer& measurer, const torch::Device& device,
              const StopSignals& stop) {
  const ModelSpec& m = *u.model;
  spdlog::info("{} | {} | seed {}", m.name, u.setting->label(), u.seed);
  fs::create_directories(u.dir);
  json sample_info;
  if (!u.has_samples) {
    const std::vector<int64_t> shape{m.config.data.channels, m.config.data.image_size, m.config.data.image_size};
    auto generated = sample::generate(loaded.eps(u.config.skip_tuning), schedule, u.config, shape, device, u.seed,
                                      e.metric.num_samples, {}, true, learned, [&] { return stop.requested(); });
    if (!generated.complete) return false;
    sample::write_samples(u.dir, generated.samples, false);
    sample_info = {{"model", m.name},     {"setting", u.setting->label()}, {"seed", u.seed},
                   {"nfe", generated.nfe}, {"num_samples", e.metric.num_samples},
                   {"seconds", generated.seconds}};
    write_file_atomic(u.dir + "/sample.json", sample_info.dump(2) + "\n");
    u.has_samples = true;
  } else {
    sample_info = read_json(u.dir + "/sample.json");
  }
  const auto images = sample::read_samples_npz(u.dir + "/samples.npz");

  const auto start = std::chrono::steady_clock::now();
  const auto& extractor = measurer.extractor();
  const auto d = eval::distance(eval::feature_set(extractor, images, e.metric.batch, device), measurer.reference(m),
                                e.metric.kid);
  json metric{{"metric", extractor.distance_label()}, {"value", d.fd}};
  if (d.kid) {
    metric["kid_mean"] = d.kid->mean;
    metric["kid_std"] = d.kid->std;
  }
  metric["nfe"] = sample_info.value("nfe", u.nfe);
  metric["num_samples"] = images.size(0);
  metric["sample_seconds"] = sample_info.value("seconds", 0.0);
  metric["metric_seconds"] = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  write_file_atomic(u.metric_file(), metric.dump(2) + "\n");
  u.has_metric = true;
  spdlog::info("{} | {} | seed {}: {} = {:.4f}", m.name, u.setting->label(), u.seed, extractor.distance_label(), d.fd);
  return true;
}

// results.csv, results.md and the report, with notes on what ran; returns the units finished.
int write_outputs(const Experiment& e, const std::vector<Unit>& units, ReportInputs& inputs) {
  for (const auto& m : e.models) {
    if (!m.train_config.empty() && fs::exists(model_dir(e, m) + "/metrics.jsonl"))
      inputs.training_metrics[m.name] = model_dir(e, m) + "/metrics.jsonl";
    if (const auto steps = learned_steps(units, m); !steps.empty()) {
      const auto plot = sample::schedule_plot_path(learned_schedule_file(e, m, steps));
      if (fs::exists(plot)) inputs.schedule_plots[m.name] = plot;
    }
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
      inputs.notes.push_back(m.name + ": checkpoint " + m.checkpoint + (m.ema ? " (EMA weights)" : " (raw weights)"));
    }
  }
  write_report(report_spec(e), inputs);
  return done;
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

  Measurer measurer(e, device);
  Plan plan = plan_units(e, measurer);
  auto& units = plan.units;
  RunSummary summary = show_plan(e, plan, device, selected);
  if (options.dry_run) return summary;

  fs::create_directories(e.out);
  write_file_atomic(e.out + "/experiment.yaml", read_file_bytes(e.path));
  LogFile log_file(e.out + "/log.txt");
  ReportInputs inputs;
  auto collect = [&]() {
    inputs.rows.clear();
    for (const auto& u : units)
      if (fs::exists(u.metric_file())) inputs.rows.push_back(result_row(u, read_json(u.metric_file())));
  };

  for (const auto& m : e.models) {
    if (!selected(m)) continue;
    std::vector<Unit*> pending;
    for (auto& u : units)
      if (u.model == &m && !u.has_metric) pending.push_back(&u);
    if (pending.empty()) continue;
    if (stop.requested()) break;

    // The weights: trained (or resumed) here, or the given checkpoint.
    model::ModelRef ref;
    ref.checkpoint = m.checkpoint;
    ref.ema = m.ema;
    if (!m.train_config.empty()) {
      const auto& state = plan.states.at(m.name);
      if (!ensure_trained(m, state, summary)) {
        summary.interrupted = true;
        break;
      }
      ref.checkpoint = train::latest_checkpoint(state.run_dir);
    }
    const model::LoadedModel loaded(model::resolve_model(ref), device);
    const NoiseSchedule schedule(m.config.diffusion);
    const auto learned = learned_schedule(e, m, units, loaded, schedule, device);

    for (Unit* u : pending) {
      if (stop.requested()) break;
      if (fs::exists(u->metric_file())) {  // a setting that differs only in what this sampler ignores
        u->has_metric = true;
        continue;
      }
      if (!run_unit(e, *u, loaded, schedule, learned, measurer, device, stop)) break;
      ++summary.units_run;
      collect();
      write_file_atomic(e.out + "/results.csv", results_csv(inputs.rows));
    }
    if (stop.requested()) break;
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
