// Schedule files (s2dm schedule's output) and their plots; the maths is learned_schedule.cpp's.
#include "s2dm/sample/schedule_file.h"

#include <torch/torch.h>
#include <yaml-cpp/yaml.h>

#include <array>
#include <filesystem>
#include <sstream>

#include "s2dm/core/errors.h"
#include "s2dm/data/data.h"
#include "s2dm/io/file_io.h"
#include "s2dm/io/image_io.h"
#include "s2dm/io/plot.h"
#include "s2dm/sample/timesteps.h"

namespace s2dm::sample {
namespace fs = std::filesystem;

void write_schedule_file(const std::string& path, const ScheduleCost& cost,
                         const std::map<int, std::vector<double>>& timesteps, int num_timesteps) {
  std::ostringstream out;
  out.precision(10);
  out << "# s2dm learned schedule (Williams et al. 2024): S+1 timesteps per S, from T-1 to 0\n";
  out << "num_timesteps: " << num_timesteps << "\nnfe: " << cost.nfe << "\ntimesteps:\n";
  for (const auto& [s, ts] : timesteps) {
    out << "  " << s << ": [";
    for (size_t i = 0; i < ts.size(); ++i) out << (i ? ", " : "") << ts[i];
    out << "]\n";
  }
  auto list = [&](const char* name, const std::vector<double>& v) {
    out << name << ": [";
    for (size_t i = 0; i < v.size(); ++i) out << (i ? ", " : "") << v[i];
    out << "]\n";
  };
  list("levels", cost.levels);
  list("cost", cost.cost);
  write_file_atomic(path, out.str());
}

std::vector<double> read_schedule_file(const std::string& path, int steps, int num_timesteps) {
  YAML::Node root;
  try {
    root = YAML::LoadFile(path);
  } catch (const YAML::Exception& e) {
    throw ConfigError(path + ": cannot read schedule (" + e.msg + ")");
  }
  if (!root["timesteps"] || !root["num_timesteps"]) throw ConfigError(path + ": not an s2dm schedule file");
  if (root["num_timesteps"].as<int>() != num_timesteps)
    throw ConfigError(path + ": made for T = " + root["num_timesteps"].as<std::string>() + ", the model has T = " +
                      std::to_string(num_timesteps));
  auto node = root["timesteps"][steps];
  if (!node) {
    std::string have;
    for (const auto& kv : root["timesteps"]) have += (have.empty() ? "" : ", ") + kv.first.as<std::string>();
    throw ConfigError(path + ": no schedule for " + std::to_string(steps) + " steps (it has " + have + ")");
  }
  auto ts = node.as<std::vector<double>>();
  if (static_cast<int>(ts.size()) != steps + 1) throw ConfigError(path + ": the " + std::to_string(steps) + "-step schedule is malformed");
  ts.pop_back();  // the end point is the sampler's
  return ts;
}

namespace {

// The cost curve (log scale, top) and, below it, the learned grid for the first S (black)
// against the uniform (grey) and quadratic (blue) grids, one row of markers each.
void write_schedule_plot(const std::string& path, const sample::ScheduleCost& cost, const std::vector<double>& learned,
                         int steps, const NoiseSchedule& schedule) {
  std::vector<double> mid;
  for (size_t i = 0; i + 1 < cost.levels.size(); ++i) mid.push_back(0.5 * (cost.levels[i] + cost.levels[i + 1]));
  auto curve = line_plot({{mid, cost.cost, {200, 30, 30}, false}}, 640, 300, true);
  auto row = [&](const std::vector<double>& ts, std::array<uint8_t, 3> color) {
    // A fixed x range [0, T-1] via two invisible anchors.
    Series s{ts, std::vector<double>(ts.size(), 0.0), color, true};
    Series anchors{{0.0, schedule.num_timesteps() - 1.0}, {-1.0, 1.0}, {255, 255, 255}, true};
    return line_plot({anchors, s}, 640, 40, false);
  };
  auto uniform = sample::make_timesteps("uniform", steps, schedule), quad = sample::make_timesteps("quad", steps, schedule);
  std::vector<Image> parts{curve, row(learned, {0, 0, 0}), row(uniform, {140, 140, 140}), row(quad, {40, 80, 200})};
  Image out{640, 0, 3, {}};
  for (const auto& p : parts) {
    out.pixels.insert(out.pixels.end(), p.pixels.begin(), p.pixels.end());
    out.height += p.height;
  }
  write_png(path, out);
}

}  // namespace

std::string schedule_plot_path(const std::string& schedule_file) {
  const fs::path p(schedule_file);
  return (p.parent_path() / (p.stem().string() + ".png")).string();
}

ScheduleCost learn_schedule(const EpsModel& model, const NoiseSchedule& schedule, const torch::Tensor& images,
                            int num_levels, int64_t num, uint64_t seed, int64_t batch, const std::vector<int>& steps,
                            const torch::Device& device, const std::string& out) {
  if (steps.empty()) throw ConfigError("learn_schedule: no step counts");
  auto gen = at::detail::createCPUGenerator(seed);
  num = std::min<int64_t>(num, images.size(0));
  auto x0 = data::to_model_range(images.index_select(0, torch::randperm(images.size(0), gen, torch::kLong).slice(0, 0, num)));
  auto cost = estimate_schedule_cost(model, schedule, x0.to(device), num_levels, seed, batch);
  std::map<int, std::vector<double>> grids;
  for (int s : steps) grids[s] = optimal_timesteps(cost.levels, cost.cost, s);
  write_schedule_file(out, cost, grids, schedule.num_timesteps());
  write_schedule_plot(schedule_plot_path(out), cost, grids.begin()->second, grids.begin()->first, schedule);
  return cost;
}

}  // namespace s2dm::sample
