// s2dm schedule: the score-optimal time schedule of a model, estimated on its data.
#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include <cmath>
#include <cxxopts.hpp>
#include <filesystem>
#include <iostream>

#include "commands.h"
#include "s2dm/core/config.h"
#include "s2dm/data/data.h"
#include "s2dm/core/device.h"
#include "s2dm/core/errors.h"
#include "s2dm/model/model_source.h"
#include "s2dm/sample/schedule_file.h"

namespace s2dm::cli {
namespace fs = std::filesystem;

int schedule(int argc, char** argv) {
  cxxopts::Options options("s2dm schedule",
                           "Estimate the score-optimal time schedule (Williams et al. 2024) of a model on its data.");
  options.add_options()("checkpoint", "s2dm checkpoint (EMA weights)", cxxopts::value<std::string>())(
      "model-script", "TorchScript ε-model forward(x, t) (with --config)", cxxopts::value<std::string>())(
      "config", "config for --model-script (shape, schedule)", cxxopts::value<std::string>())(
      "data", "data config (its training set) or a folder of images", cxxopts::value<std::string>())(
      "steps", "step counts S to produce grids for", cxxopts::value<std::vector<int>>()->default_value("10,20,50"))(
      "levels", "fine grid of noise levels the cost is estimated on", cxxopts::value<int>()->default_value("1000"))(
      "samples", "data images averaged over", cxxopts::value<int64_t>()->default_value("256"))(
      "batch", "batch size", cxxopts::value<int64_t>()->default_value("64"))(
      "seed", "random seed (data subset and the common noise)", cxxopts::value<uint64_t>()->default_value("0"))(
      "device", "auto | cpu | cuda", cxxopts::value<std::string>()->default_value("auto"))(
      "out", "schedule.yaml to write (schedule.png beside it)", cxxopts::value<std::string>());
  auto r = parse_options(options, argc, argv);
  if (!r) return 0;
  if (!r->count("out") || !r->count("data")) throw UsageError("schedule: --data and --out are required");
  if (r->count("checkpoint") == r->count("model-script"))
    throw UsageError("schedule: give --checkpoint C or --model-script M.pt --config F.yaml");

  model::ModelRef ref;
  if (r->count("checkpoint")) ref.checkpoint = (*r)["checkpoint"].as<std::string>();
  if (r->count("model-script")) ref.script = (*r)["model-script"].as<std::string>();
  if (r->count("config")) ref.config = (*r)["config"].as<std::string>();
  const auto source = model::resolve_model(ref);
  const Config& config = source.config;
  const std::string& origin = source.origin;
  NoiseSchedule noise_schedule(config.diffusion);
  const int levels = (*r)["levels"].as<int>();
  auto steps = (*r)["steps"].as<std::vector<int>>();
  for (int s : steps)
    if (s < 1 || s > levels - 1)
      throw ConfigError("--steps " + std::to_string(s) + " needs at least " + std::to_string(s + 1) + " levels (--levels " +
                        std::to_string(levels) + ")");
  // The data, checked against the model's input shape.
  const std::string data_arg = (*r)["data"].as<std::string>();
  data::ImageSet data;
  if (fs::is_directory(data_arg)) {
    data = data::read_image_folder(data_arg, config.data.image_size, config.data.channels, "none");
  } else {
    data = data::load_dataset(load_config(data_arg).data);
  }
  const std::vector<int64_t> shape{config.data.channels, config.data.image_size, config.data.image_size};
  if (data.images.sizes().slice(1).vec() != shape)
    throw DataError(data_arg + ": images of " + c10::str(data.images.sizes().slice(1)) + " but the model (" + origin +
                    ") takes " + c10::str(c10::IntArrayRef(shape)));
  const auto device = resolve_device((*r)["device"].as<std::string>());
  set_cpu_threads(config.threads);
  const model::LoadedModel model(source, device);
  const std::string out = (*r)["out"].as<std::string>();
  const int64_t n = std::min<int64_t>((*r)["samples"].as<int64_t>(), data.images.size(0));
  auto cost = sample::learn_schedule(model.eps(), noise_schedule, data.images, levels, n, (*r)["seed"].as<uint64_t>(),
                                     (*r)["batch"].as<int64_t>(), steps, device, out);
  const std::string plot = sample::schedule_plot_path(out);
  std::cout << "wrote " << out << " (" << steps.size() << " grids, " << levels << " levels, " << n << " images, "
            << cost.nfe << " network evaluations) and " << plot << "\nuse: s2dm sample --timesteps learned:" << out
            << " --steps S\n";
  return 0;
}

}  // namespace s2dm::cli
