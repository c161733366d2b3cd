// s2dm schedule: the score-optimal time schedule of a model, estimated on its data.
#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include <cmath>
#include <cxxopts.hpp>
#include <filesystem>
#include <iostream>
#include <limits>

#include "commands.h"
#include "s2dm/core/config.h"
#include "s2dm/data/data.h"
#include "s2dm/core/device.h"
#include "s2dm/core/errors.h"
#include "s2dm/model/model_source.h"
#include "s2dm/sample/dp_grid.h"
#include "s2dm/sample/grid_file.h"

namespace s2dm::cli {
namespace fs = std::filesystem;

const sample::DpSearchOptions kDp;  // the dp search's defaults

int schedule(int argc, char** argv) {
  cxxopts::Options options("s2dm schedule",
                           "Find a model's time grids: score-optimal (Williams et al. 2024, from its data) or dp "
                           "(solver-aware: the least error of a given sampler against the model's own trajectories).");
  options.add_options()("checkpoint", "s2dm checkpoint (EMA weights)", cxxopts::value<std::string>())(
      "model-script", "TorchScript ε-model forward(x, t) (with --config)", cxxopts::value<std::string>())(
      "config", "config for --model-script (shape, schedule)", cxxopts::value<std::string>())(
      "method", "score | dp", cxxopts::value<std::string>()->default_value("score"))(
      "data", "score: data config (its training set) or a folder of images", cxxopts::value<std::string>())(
      "sampler", "dp: the sampler to fit the grids to (default: the config's)", cxxopts::value<std::string>())(
      "order", "dp: its multistep order (default: the config's)", cxxopts::value<int>())(
      "steps", "step counts S to produce grids for", cxxopts::value<std::vector<int>>()->default_value("10,20,50"))(
      "levels", "fine grid of noise levels (score: 1000; dp: " + std::to_string(kDp.levels) + " candidates)",
      cxxopts::value<int>())(
      "samples", "score: data images averaged over (256); dp: reference trajectories (" + std::to_string(kDp.samples) + ")",
      cxxopts::value<int64_t>())(
      "sweeps", "dp: coordinate-search rounds with the full sampler (default: 2 for multistep and PSLD samplers, else 0)",
      cxxopts::value<int>())(
      "batch", "batch size", cxxopts::value<int64_t>()->default_value("64"))(
      "seed", "random seed (score: data subset and noise; dp: the reference noise)",
      cxxopts::value<uint64_t>()->default_value("0"))(
      "device", "auto | cpu | cuda", cxxopts::value<std::string>()->default_value("auto"))(
      "out", "schedule.yaml to write (schedule.png beside it)", cxxopts::value<std::string>());
  auto r = parse_options(options, argc, argv);
  if (!r) return 0;
  const std::string method = (*r)["method"].as<std::string>();
  if (method != "score" && method != "dp") throw UsageError("schedule: --method '" + method + "' is not one of score, dp");
  const bool dp = method == "dp";
  if (!r->count("out")) throw UsageError("schedule: --out is required");
  check_output_file(*r, "out", {"checkpoint", "model-script", "config", "data"}, {".yaml", ".yml"});
  if (!dp && !r->count("data")) throw UsageError("schedule: --method score needs --data");
  if (dp && r->count("data")) throw UsageError("schedule: --method dp needs no --data (it follows the model's own trajectories)");
  if (!dp && (r->count("sampler") || r->count("order") || r->count("sweeps")))
    throw UsageError("schedule: --sampler, --order and --sweeps are for --method dp (the score-optimal grid knows no "
                     "sampler)");
  if (r->count("checkpoint") == r->count("model-script"))
    throw UsageError("schedule: give --checkpoint C or --model-script M.pt --config F.yaml");

  // Every count checked before any work.
  const int levels = r->count("levels") ? bounded(*r, "levels", 3, kMaxTimesteps) : dp ? kDp.levels : 1000;
  const int64_t samples =
      r->count("samples") ? bounded(*r, "samples", int64_t{1}, std::numeric_limits<int64_t>::max()) : dp ? kDp.samples : 256;
  const int sweeps = r->count("sweeps") ? bounded(*r, "sweeps", 0, 1000) : -1;  // (-1: the sampler's default)
  const int64_t batch = bounded(*r, "batch", int64_t{1}, int64_t{kMaxBatch});
  const auto steps = bounded_list(*r, "steps", 1, kMaxTimesteps);
  for (int s : steps)
    if (s > levels)
      throw UsageError("--steps " + std::to_string(s) + " needs at least " + std::to_string(s) + " levels (--levels " +
                       std::to_string(levels) + ")");
  model::ModelRef ref;
  if (r->count("checkpoint")) ref.checkpoint = (*r)["checkpoint"].as<std::string>();
  if (r->count("model-script")) ref.script = (*r)["model-script"].as<std::string>();
  if (r->count("config")) ref.config = (*r)["config"].as<std::string>();
  std::vector<std::string> overrides;
  if (r->count("sampler")) overrides.push_back("sample.sampler=" + (*r)["sampler"].as<std::string>());
  if (r->count("order")) overrides.push_back("sample.order=" + std::to_string((*r)["order"].as<int>()));
  const auto source = model::resolve_model(ref, overrides);
  const Config& config = source.config;
  const std::string& origin = source.origin;
  if (config.diffusion.process == "psld" && !dp)
    throw ConfigError(origin + ": a PSLD model (diffusion.process psld): the score-optimal grid is searched on DDPM's "
                      "timesteps; use --method dp, or sample on uniform, quad, logsnr, karras grids or a list of times");
  const std::vector<int64_t> shape = image_shape(config.data);
  const std::string out = (*r)["out"].as<std::string>();
  const std::string plot = sample::grid_plot_path(out);
  const uint64_t seed = (*r)["seed"].as<uint64_t>();

  if (dp) {
    const auto device = resolve_device((*r)["device"].as<std::string>());
    set_cpu_threads(config.threads);
    const model::LoadedModel loaded(source, device);
    sample::DpSearchOptions o;
    o.levels = levels;
    o.samples = samples;
    o.search_samples = std::min<int64_t>(samples, 32);
    o.sweeps = sweeps;
    o.batch = batch;
    o.seed = seed;
    const auto file =
        sample::make_dp_grid_file(DiffusionModel::of(config, loaded.eps_fp32(), device), config.sample, steps, o, out);
    std::cout << "wrote " << out << " (" << file.description() << ": " << steps.size() << " grids, "
              << file.levels.size() << " candidate levels, " << samples << " trajectories, " << file.nfe
              << " network evaluations) and " << plot << "\n";
    for (const auto& [s, e] : file.end_error) std::cout << "  " << s << " steps: end-point RMS error " << e << " (held-out trajectories)\n";
    std::cout << "use: s2dm sample --sampler " << file.sampler << " --timesteps learned:" << out << " --steps S\n";
    return 0;
  }
  // The data, checked against the model's input shape.
  const std::string data_arg = (*r)["data"].as<std::string>();
  data::ImageSet data;
  if (fs::is_directory(data_arg)) {
    data = data::read_image_folder(data_arg, config.data.image_size, config.data.channels, "none");
  } else {
    data = data::load_dataset(load_config(data_arg).data);
  }
  if (data.images.sizes().slice(1).vec() != shape)
    throw DataError(data_arg + ": images of " + c10::str(data.images.sizes().slice(1)) + " but the model (" + origin +
                    ") takes " + c10::str(c10::IntArrayRef(shape)));
  const auto device = resolve_device((*r)["device"].as<std::string>());
  set_cpu_threads(config.threads);
  const model::LoadedModel loaded(source, device);
  const int64_t n = std::min<int64_t>(samples, data.images.size(0));
  auto cost =
      sample::make_score_grid_file(DiffusionModel::of(config, loaded.eps_fp32(), device), data, levels, n, seed, batch, steps, out);
  std::cout << "wrote " << out << " (" << steps.size() << " grids, " << levels << " levels, " << n << " images, "
            << cost.nfe << " network evaluations) and " << plot << "\nuse: s2dm sample --timesteps learned:" << out
            << " --steps S\n";
  return 0;
}

}  // namespace s2dm::cli
