// Grid files (s2dm schedule's output, schedule.yaml) and their plots; the maths is score_grid.cpp's.
#include "s2dm/sample/grid_file.h"

#include <torch/torch.h>
#include <yaml-cpp/yaml.h>

#include <array>
#include <filesystem>
#include <sstream>

#include "s2dm/core/errors.h"
#include "s2dm/core/yaml_reader.h"
#include "s2dm/data/data.h"
#include "s2dm/io/file_io.h"
#include "s2dm/io/image_io.h"
#include "s2dm/io/plot.h"
#include "s2dm/sample/timesteps.h"

namespace s2dm::sample {
namespace fs = std::filesystem;

namespace {

void write_list(std::ostringstream& out, const std::vector<double>& v) {
  out << "[";
  for (size_t i = 0; i < v.size(); ++i) out << (i ? ", " : "") << v[i];
  out << "]";
}

}  // namespace

void write_grid_file(const std::string& path, const GridFile& f, int num_timesteps) {
  std::ostringstream out;
  out.precision(17);  // round-trips doubles
  out << "# s2dm time grids (" << f.description() << "): S network evaluations per S, from "
      << (f.process == "psld" ? "t = 1 down to t_end" : "T-1 down to 0") << ";\n"
      << "# the sampler's end step follows, as on every grid\n";
  out << "format: 2\nmethod: " << f.method << "\n";
  if (f.process != "vp") out << "process: " << f.process << "\n";
  if (!f.sampler.empty()) out << "sampler: " << f.sampler << "\n";
  if (f.order >= 0) out << "order: " << f.order << "\n";
  out << "num_timesteps: " << num_timesteps << "\nnfe: " << f.nfe << "\ntimesteps:\n";
  for (const auto& [s, ts] : f.timesteps) {
    out << "  " << s << ": ";
    write_list(out, ts);
    out << "\n";
  }
  if (!f.settings.empty()) {
    out << "settings:\n";
    for (const auto& [key, value] : f.settings) out << "  " << key << ": " << value << "\n";
  }
  if (!f.end_error.empty()) {
    out << "end_error:\n";
    for (const auto& [s, e] : f.end_error) out << "  " << s << ": " << e << "\n";
  }
  out << "levels: ";
  write_list(out, f.levels);
  out << "\ncost: ";
  write_list(out, f.cost);
  out << "\n";
  write_file_atomic(path, out.str());
}

GridFile read_grid_file(const std::string& path, int num_timesteps) {
  if (auto why = why_not_a_file(path); !why.empty()) throw ConfigError(path + ": schedule file " + why);
  YAML::Node root;
  try {
    root = YAML::LoadFile(path);
  } catch (const YAML::Exception& e) {
    throw ConfigError(path + ": cannot read schedule (" + e.msg + ")");
  }
  if (!root.IsMap() || !root["timesteps"] || !root["num_timesteps"]) throw ConfigError(path + ": not an s2dm schedule file");
  YamlReader(path).check_unique_keys(root);
  GridFile f;
  f.origin = path;
  try {
    if (!root["format"] || root["format"].as<int>() != 2)
      throw ConfigError(path + ": written by an earlier s2dm, whose grids stopped short of t = 0; make it again "
                        "with s2dm schedule");
    if (root["num_timesteps"].as<int>() != num_timesteps)
      throw ConfigError(path + ": made for T = " + root["num_timesteps"].as<std::string>() + ", the model has T = " +
                        std::to_string(num_timesteps));
    f.method = root["method"] ? root["method"].as<std::string>() : "score";
    if (root["process"]) f.process = root["process"].as<std::string>();
    if (root["sampler"]) f.sampler = root["sampler"].as<std::string>();
    if (root["order"]) f.order = root["order"].as<int>();
    if (root["nfe"]) f.nfe = root["nfe"].as<int64_t>();
    for (const auto& kv : root["timesteps"]) {
      const int steps = kv.first.as<int>();
      auto ts = kv.second.as<std::vector<double>>();
      if (static_cast<int>(ts.size()) != steps)
        throw ConfigError(path + ": the " + std::to_string(steps) + "-step grid has " + std::to_string(ts.size()) +
                          " times");
      f.timesteps[steps] = ts;  // (make_grid checks the times when a sampler uses them)
    }
    if (const auto settings = root["settings"]; settings && settings.IsMap())
      for (const auto& kv : settings) f.settings[kv.first.as<std::string>()] = YamlReader::flow(kv.second);
    if (root["levels"]) f.levels = root["levels"].as<std::vector<double>>();
    if (root["cost"]) f.cost = root["cost"].as<std::vector<double>>();
  } catch (const YAML::Exception& e) {
    throw ConfigError(path + ": malformed schedule file (" + e.msg + ")");
  }
  return f;
}

std::vector<double> GridFile::grid(int steps) const {
  auto it = timesteps.find(steps);
  if (it == timesteps.end()) {
    std::string have;
    for (const auto& kv : timesteps) have += (have.empty() ? "" : ", ") + std::to_string(kv.first);
    throw ConfigError(origin + ": no schedule for " + std::to_string(steps) + " steps (it has " + have + ")");
  }
  return it->second;
}

void GridFile::check_model(const DiffusionModel& model) const {
  const std::string here = model.psld ? "psld" : "vp";
  if (process != here)
    throw ConfigError(origin + ": grids of a " + (process == "psld" ? "PSLD" : "VP") + " model's time, this is a " +
                      (model.psld ? "PSLD" : "VP") + " model");
}

std::string GridFile::settings_mismatch(const SampleConfig& sampling) const {
  if (method != "dp") return "";
  auto recorded = settings;
  if (recorded.empty()) {  // (a file of an s2dm that recorded the sampler and its order only)
    recorded["sampler"] = sampler;
    if (order >= 0) recorded["order"] = std::to_string(order);
  }
  std::string out;
  for (const auto& [key, here] : dp_search_settings(sampling)) {
    const auto there = recorded.find(key);
    if (there == recorded.end() || there->second == here) continue;  // (not recorded: unknown)
    out += (out.empty() ? "" : "; ") + key + " " + there->second + " there, " + here + " here";
    if (key == "sampler") break;  // (another sampler's options differ by name anyway)
  }
  return out;
}

std::string GridFile::description() const {
  if (method != "dp") return method;
  return "dp for " + sampler + (order >= 0 ? " (order " + std::to_string(order) + ")" : "");
}

namespace {

// The file's curve (log scale, top) and, below it, its grid for the first S (black) against the
// uniform (grey) and quadratic (blue) grids, one row of markers each.
void write_grid_plot(const std::string& path, const GridFile& file, const DiffusionModel& model) {
  std::vector<double> mid;
  for (size_t i = 0; i + 1 < file.levels.size(); ++i) mid.push_back(0.5 * (file.levels[i] + file.levels[i + 1]));
  auto curve = line_plot({{mid, file.cost, {200, 30, 30}, false}}, 640, 300, true);
  // (Named references, not a structured binding: C++17 lambdas cannot capture those.)
  const int steps = file.timesteps.begin()->first;
  const auto& learned = file.timesteps.begin()->second;
  auto row = [&](const std::vector<double>& ts, std::array<uint8_t, 3> color) {
    // A fixed x range, [0, T-1] (PSLD: [0, 1]), via two invisible anchors.
    Series s{ts, std::vector<double>(ts.size(), 0.0), color, true};
    Series anchors{{0.0, model.psld ? 1.0 : model.schedule.num_timesteps() - 1.0}, {-1.0, 1.0}, {255, 255, 255}, true};
    return line_plot({anchors, s}, 640, 40, false);
  };
  auto hand_made = [&](const std::string& name) {
    if (!model.psld) return make_timesteps(name, steps, model.schedule);
    auto ts = make_psld_grid(name, steps, *model.psld).t;
    ts.pop_back();  // (the denoising step's end)
    return ts;
  };
  const auto uniform = hand_made("uniform"), quad = hand_made("quad");
  std::vector<Image> parts{curve, row(learned, {0, 0, 0}), row(uniform, {140, 140, 140}), row(quad, {40, 80, 200})};
  Image out{640, 0, 3, {}};
  for (const auto& p : parts) {
    out.pixels.insert(out.pixels.end(), p.pixels.begin(), p.pixels.end());
    out.height += p.height;
  }
  write_png(path, out);
}

}  // namespace

std::string grid_plot_path(const std::string& grid_file) {
  const fs::path p(grid_file);
  return (p.parent_path() / (p.stem().string() + ".png")).string();
}

ScoreGridCost make_score_grid_file(const DiffusionModel& model, const data::ImageSet& data, int num_levels, int64_t num,
                                   uint64_t seed, int64_t batch, const std::vector<int>& steps, const std::string& out) {
  const NoiseSchedule& schedule = model.schedule;
  if (steps.empty()) throw ConfigError("make_score_grid_file: no step counts");
  const auto& labels = data.labels;
  if (model.label_dim > 0 && !labels.defined())
    throw ConfigError("score grid: the model is class-conditional (" + std::to_string(model.label_dim) +
                      " classes) and sees each image's class, but these images have no labels: use a labelled data set");
  if (model.label_dim > 0 && labels.numel() > 0 && labels.max().item<int64_t>() >= model.label_dim)
    throw ConfigError("score grid: the images have classes up to " + std::to_string(labels.max().item<int64_t>()) +
                      ", the model " + std::to_string(model.label_dim));
  auto gen = at::detail::createCPUGenerator(seed);
  num = std::min<int64_t>(num, data.images.size(0));
  const auto chosen = torch::randperm(data.images.size(0), gen, torch::kLong).slice(0, 0, num);
  auto x0 = data::to_model_range(data.images.index_select(0, chosen));
  auto cost = estimate_score_cost(model, x0, model.label_dim > 0 ? labels.index_select(0, chosen) : torch::Tensor(),
                                  num_levels, seed, batch);
  GridFile file;
  file.nfe = cost.nfe;
  file.levels = cost.levels;
  file.cost = cost.cost;
  for (int s : steps) file.timesteps[s] = score_grid(cost.levels, cost.cost, s);
  write_grid_file(out, file, schedule.num_timesteps());
  write_grid_plot(grid_plot_path(out), file, model);
  return cost;
}

GridFile make_dp_grid_file(const DiffusionModel& model, const SampleConfig& sampling, const std::vector<int>& steps,
                           const DpSearchOptions& options, const std::string& out) {
  if (steps.empty()) throw ConfigError("dp schedule: no step counts");
  const auto dp = search_dp_grids(model, sampling, steps, options);
  GridFile file;
  file.method = "dp";
  file.process = model.psld ? "psld" : "vp";
  file.sampler = sampling.sampler;
  file.settings = dp_search_settings(sampling);
  if (const auto order = file.settings.find("order"); order != file.settings.end()) file.order = std::stoi(order->second);
  file.nfe = dp.nfe;
  file.timesteps = dp.grids;
  file.levels = dp.levels;
  file.cost = dp.step_error;
  file.end_error = dp.end_error;
  write_grid_file(out, file, model.schedule.num_timesteps());
  write_grid_plot(grid_plot_path(out), file, model);
  return file;
}

}  // namespace s2dm::sample
