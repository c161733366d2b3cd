#include "commands.h"

#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include <algorithm>
#include <cxxopts.hpp>
#include <filesystem>
#include <iostream>

#include "s2dm/io/checkpoint.h"
#include "s2dm/core/config.h"
#include "s2dm/core/device.h"
#include "s2dm/core/errors.h"
#include "s2dm/core/schema.h"
#include "s2dm/io/file_io.h"
#include "s2dm/sample/generate.h"
#include "s2dm/io/npy_tensor.h"
#include "s2dm/sample/samplers.h"
#include "s2dm/sample/timesteps.h"
#include "s2dm/model/model_source.h"
#include "s2dm/train/train.h"
#include "s2dm/parallel/launcher.h"
#include "s2dm/parallel/process_group.h"
#include "s2dm/model/unet.h"

namespace s2dm::cli {
namespace fs = std::filesystem;

std::optional<cxxopts::ParseResult> parse_options(cxxopts::Options& options, int argc, char** argv) {
  options.add_options()("h,help", "show this help");
  auto result = options.parse(argc, argv);
  if (result.count("help")) {
    std::cout << options.help() << "\n";
    return std::nullopt;
  }
  if (!result.unmatched().empty()) throw UsageError("unexpected argument '" + result.unmatched().front() + "'");
  // (An empty path or value would otherwise stand for a default: --run-dir "" trained into runs/NAME.)
  for (const auto& argument : result.arguments())
    if (argument.value().empty()) throw UsageError("--" + argument.key() + ": empty value");
  return result;
}

void check_output_file(const cxxopts::ParseResult& r, const std::string& flag, const std::vector<std::string>& inputs,
                       const std::vector<std::string>& extensions) {
  const std::string out = r[flag].as<std::string>();
  std::error_code ec;
  if (fs::is_directory(out, ec)) throw UsageError("--" + flag + " " + out + ": is a directory (expected a file)");
  for (const auto& input : inputs)
    if (r.count(input) && fs::equivalent(out, r[input].as<std::string>(), ec))
      throw UsageError("--" + flag + " " + out + ": is the " + input + " it reads (it would be overwritten)");
  const std::string extension = fs::path(out).extension().string();
  if (!extensions.empty() && std::find(extensions.begin(), extensions.end(), extension) == extensions.end())
    throw UsageError("--" + flag + " " + out + ": expected a " + extensions.front() + " file");
}

namespace {

std::vector<std::string> sets(const cxxopts::ParseResult& r) {
  if (!r.count("set")) return {};
  // cxxopts splits list values at commas; a piece without '=' continues the previous value
  // (--set sample.skip_tuning.rho=[1,0.9]).
  std::vector<std::string> out;
  for (const auto& piece : r["set"].as<std::vector<std::string>>()) {
    if (piece.find('=') == std::string::npos && !out.empty())
      out.back() += "," + piece;
    else
      out.push_back(piece);
  }
  return out;
}

// Initial noise for images of `shape` [C, H, W]: float32 NCHW, at least one image, finite.
torch::Tensor read_noise(const std::string& path, const std::vector<int64_t>& shape) {
  NpyArray a = load_npy(path);
  if (a.dtype != "<f4" || a.shape.size() != 4)
    throw DataError(path + ": initial noise must be float32 NCHW (dtype <f4, 4 dimensions), got " + a.dtype +
                    " with " + std::to_string(a.shape.size()) + " dimensions");
  if (std::vector<int64_t>(a.shape.begin() + 1, a.shape.end()) != shape) {
    std::string takes = "[N";
    for (int64_t d : shape) takes += ", " + std::to_string(d);
    throw DataError(path + ": initial noise of shape " + c10::str(c10::IntArrayRef(a.shape)) + ", the model takes " +
                    takes + "]");
  }
  if (a.shape[0] == 0) throw DataError(path + ": holds no images (shape " + c10::str(c10::IntArrayRef(a.shape)) + ")");
  auto noise = to_tensor(a, path);
  if (!torch::isfinite(noise).all().item<bool>()) throw DataError(path + ": initial noise holds NaN or Inf");
  return noise;
}

void write_float_npy(const std::string& path, const torch::Tensor& x) { save_npy(path, to_npy_array(x.to(torch::kFloat32))); }

}  // namespace

namespace {

// The network a config describes: its type, parameters, noise process and conditioning, and the
// long skips Skip-Tuning scales.
void describe_model(const Config& config) {
  const auto& m = config.model;
  const auto parameters = model::count_parameters(*model::make_network(config).module);
  const std::string process =
      m.type == "ddpm" ? "ε-prediction, " + config.diffusion.beta_schedule + " β, T = " + std::to_string(config.diffusion.num_timesteps)
                       : "EDM's " + m.edm.precond + " preconditioning";
  const std::string conditioning =
      m.type != "ddpm" && m.edm.label_dim > 0 ? std::to_string(m.edm.label_dim) + " classes" : "unconditional";
  std::printf("network:        %s, %ld parameters (%s; %s), %dx%dx%d images\n", m.type.c_str(), static_cast<long>(parameters),
              process.c_str(), conditioning.c_str(), config.data.channels, config.data.image_size, config.data.image_size);
  const auto skips = model::skip_channels(m);
  std::printf("long skips:     %zu (Skip-Tuning index: 0 = deepest)\n", skips.size());
  for (size_t i = 0; i < skips.size(); ++i) std::printf("  skip %2zu: %4ld channels\n", i, static_cast<long>(skips[i]));
}

}  // namespace

int info(int argc, char** argv) {
  cxxopts::Options options("s2dm info", "Versions, CUDA availability, the chosen device and threads; with "
                                        "--checkpoint or --config, the model and its long skips.");
  options.add_options()("device", "device to report (auto|cpu|cuda)", cxxopts::value<std::string>()->default_value("auto"))(
      "threads", "CPU threads (0 = all cores)", cxxopts::value<int>()->default_value("0"))(
      "checkpoint", "describe this checkpoint's model", cxxopts::value<std::string>())(
      "config", "describe the model of this config (e.g. a converted EDM network's)", cxxopts::value<std::string>());
  auto r = parse_options(options, argc, argv);
  if (!r) return 0;
  set_cpu_threads(bounded(*r, "threads", 0, kMaxThreads));
  std::cout << runtime_info(resolve_device((*r)["device"].as<std::string>()));
  std::string backends;
  for (const auto& b : parallel::available_backends()) backends += (backends.empty() ? "" : ", ") + b;
  std::cout << "distributed:    " << (backends.empty() ? "none (no Gloo headers at build time: libgloo-dev)" : backends)
            << " (c10d; s2dm train --nproc N, torchrun or srun)\n";
  if (r->count("checkpoint")) {
    const auto path = (*r)["checkpoint"].as<std::string>();
    auto ckpt = load_checkpoint(path);
    auto config = parse_config(ckpt.config_yaml, path + " (config)");
    const auto seconds = ckpt.extra.find("train_seconds");  // (absent in older checkpoints)
    char trained[64] = "";
    if (seconds != ckpt.extra.end())
      std::snprintf(trained, sizeof trained, ", %.1f min of training", std::stod(seconds->second) / 60);
    std::printf("checkpoint:     %s (step %ld%s)\n", path.c_str(), static_cast<long>(ckpt.step), trained);
    describe_model(config);
  }
  if (r->count("config")) describe_model(load_config((*r)["config"].as<std::string>()));
  return 0;
}

int train(int argc, char** argv) {
  cxxopts::Options options("s2dm train", "Train an ε-prediction UNet (L_simple, optionally + L_skip).");
  options.add_options()("config", "training config (YAML)", cxxopts::value<std::string>())(
      "steps", "total optimisation steps (overrides train.steps)", cxxopts::value<int64_t>())(
      "run-dir", "run directory (default runs/<name>)", cxxopts::value<std::string>())(
      "device", "auto | cpu | cuda | cuda:N", cxxopts::value<std::string>())(
      "set", "override a config value: section.key=value (repeatable)", cxxopts::value<std::vector<std::string>>())(
      "resume", "continue the run in --run-dir from its newest checkpoint that loads")(
      "overwrite", "replace what s2dm wrote in an existing run directory (other files stay)")(
      "nproc", "train data-parallel as N processes on this machine (one per GPU; on the CPU they share the cores)",
      cxxopts::value<int>());
  auto r = parse_options(options, argc, argv);
  if (!r) return 0;
  train::TrainOptions opts;
  opts.resume = r->count("resume") > 0;
  opts.overwrite = r->count("overwrite") > 0;
  if (opts.resume && opts.overwrite) throw UsageError("train: --resume and --overwrite exclude each other");
  opts.overrides = sets(*r);
  if (r->count("device")) opts.overrides.push_back("device=" + (*r)["device"].as<std::string>());
  if (r->count("steps")) opts.steps = bounded(*r, "steps", int64_t{0}, std::numeric_limits<int64_t>::max());
  const int nproc = r->count("nproc") ? bounded(*r, "nproc", 1, parallel::kMaxLocalRanks) : 0;
  Config config;
  if (r->count("config")) {
    config = load_config((*r)["config"].as<std::string>(), opts.overrides);
  } else if (!opts.resume) {
    throw UsageError("train: --config is required (or --resume with --run-dir)");
  }
  if (r->count("run-dir")) opts.run_dir = (*r)["run-dir"].as<std::string>();
  else if (opts.resume && !r->count("config")) throw UsageError("train: --resume needs --run-dir or --config");
  if (r->count("nproc")) {  // the same command line, without --nproc, as each rank's
    std::vector<std::string> args;
    for (int i = 0; i < argc; ++i) {
      const std::string arg = argv[i];
      if (arg == "--nproc") ++i;
      else if (arg.rfind("--nproc=", 0) != 0) args.push_back(arg);
    }
    return parallel::launch_local_group(nproc, args);
  }
  auto result = train::run_training(config, opts);
  if (result.rank == 0)  // (rank 0 speaks for a data-parallel group)
    std::cout << "run directory: " << result.run_dir << "\ncheckpoint:    " << train::latest_checkpoint(result.run_dir)
              << "\nstep:          " << result.step << "\n";
  return result.interrupted ? 130 : 0;
}

namespace {

model::ModelRef model_ref(const cxxopts::ParseResult& r) {
  model::ModelRef ref;
  auto get = [&](const char* flag) { return r.count(flag) ? r[flag].as<std::string>() : std::string(); };
  ref.checkpoint = get("checkpoint");
  ref.ema = !r.count("raw");
  ref.weights = get("weights");
  ref.script = get("model-script");
  ref.config = get("config");
  return ref;
}

// The sampling flags, set on the config's fields (checked afterwards with the rest).
void apply_sample_flags(const cxxopts::ParseResult& r, Config& config) {
  auto& s = config.sample;
  if (r.count("sampler")) s.sampler = r["sampler"].as<std::string>();
  if (r.count("steps")) s.steps = r["steps"].as<int>();
  if (r.count("eta")) s.eta = r["eta"].as<double>();
  if (r.count("order")) s.order = r["order"].as<int>();
  if (r.count("lambda")) s.lambda = r["lambda"].as<double>();
  if (r.count("timesteps")) s.timesteps = r["timesteps"].as<std::string>();
  if (r.count("num")) s.num = r["num"].as<int64_t>();
  if (r.count("batch")) s.batch = r["batch"].as<int>();
  if (r.count("seed")) config.seed = r["seed"].as<uint64_t>();
  if (r.count("class")) s.class_label = r["class"].as<int>();
  if (r.count("device")) config.device = r["device"].as<std::string>();
  // A flag its sampler does not read would be recorded in sample.yaml and change nothing. (An
  // order it does not read is check_options' error.)
  const auto& sampler = sample::find_sampler(s.sampler);
  for (const auto& flag : sample::sampler_option_keys())
    if (flag != "order" && r.count(flag) &&
        std::find(sampler.options.begin(), sampler.options.end(), flag) == sampler.options.end())
      throw UsageError("--" + flag + ": sampler '" + sampler.name + "' does not read " + flag +
                       " (s2dm samplers lists what each reads)");
  if (r.count("skip-tuning")) {
    const auto text = r["skip-tuning"].as<std::string>();
    const auto comma = text.find(',');
    auto number = [&](const std::string& piece) {
      size_t used = 0;
      double value = 0;
      try {
        value = std::stod(piece, &used);
      } catch (const std::logic_error&) {
      }
      if (used == 0 || used != piece.size())
        throw UsageError("--skip-tuning " + text + ": expected RHO_BOTTOM[,RHO_TOP], one or two numbers");
      return value;
    };
    s.skip_tuning.rho_bottom = number(text.substr(0, comma));
    s.skip_tuning.rho_top = comma == std::string::npos ? 1.0 : number(text.substr(comma + 1));
  }
  check_config(config, "the command line");
}

// The samplers that read a sample option, for a flag's help: "ddim, ddpm".
std::string samplers_reading(const std::string& option) {
  std::string names;
  for (const auto& s : sample::samplers())
    if (std::find(s.options.begin(), s.options.end(), option) != s.options.end() || (option == "order" && s.max_order >= 0))
      names += (names.empty() ? "" : ", ") + s.name;
  return names;
}

// The --timesteps forms: the named grids, then lists, files and the model's own grids.
std::string time_grid_forms() {
  std::string forms;
  for (const auto& name : sample::timestep_grids()) forms += name + ", ";
  return "auto (the sampler's own), " + forms + "a list 999,500,0, file:PATH, learned or learned:FILE";
}

std::string psld_time_grid_forms() {
  std::string forms;
  for (const auto& name : sample::psld_time_grids()) forms += name + ", ";
  return "auto, " + forms + "a list of times 1,0.5,0.001 or file:PATH";
}

}  // namespace

int samplers(int argc, char** argv) {
  cxxopts::Options options("s2dm samplers", "List the samplers, their options and NFE for S steps.");
  options.add_options()("steps", "step counts to show NFE for",
                        cxxopts::value<std::vector<int>>()->default_value("10,20,50,100"));
  auto r = parse_options(options, argc, argv);
  if (!r) return 0;
  const auto steps = bounded_list(*r, "steps", 1, kMaxTimesteps);
  std::printf("%-14s %-48s", "sampler", "options");
  for (int s : steps) std::printf(" %6s", ("S=" + std::to_string(s)).c_str());
  std::printf("  description\n");
  for (const auto& s : sample::samplers()) {
    std::string opts;
    for (const auto& o : s.options) {
      opts += (opts.empty() ? "" : ", ") + o;
      if (o == "solver_type") opts += " (" + schema::join(s.solver_types, "|") + ")";
    }
    if (s.max_order >= 0)
      opts += " [" + std::to_string(s.min_order) + "-" + std::to_string(s.max_order) + ", default " +
              std::to_string(s.default_order) + "]";
    std::printf("%-14s %-48s", s.name.c_str(), opts.empty() ? "-" : opts.c_str());
    for (int n : steps) std::printf(" %6d", s.nfe(n));
    std::printf("  %s (grid auto: %s)\n", s.description.c_str(), s.default_grid.c_str());
  }
  std::printf("\nNFE: network evaluations per image for S steps.\nTime grids (--timesteps): %s\n(karras: sample.karras_rho; "
              "learned: a checkpoint's online score grid; learned:FILE: s2dm schedule's score or dp grids);\n"
              "sample.final_alpha one|first.\nPSLD models' time grids: %s.\n", time_grid_forms().c_str(),
              psld_time_grid_forms().c_str());
  return 0;
}

int sample(int argc, char** argv) {
  cxxopts::Options options("s2dm sample", "Sample images with a chosen sampler and time grid.");
  options.add_options()("checkpoint", "s2dm checkpoint (EMA weights unless --raw)", cxxopts::value<std::string>())(
      "raw", "use the raw (non-EMA) weights of the checkpoint")(
      "weights", "safetensors weights of the reference architecture", cxxopts::value<std::string>())(
      "model-script", "TorchScript ε-model with forward(x, t)", cxxopts::value<std::string>())(
      "config", "config giving shape and schedule (and the architecture for --weights)", cxxopts::value<std::string>())(
      "sampler", "sampler name (s2dm samplers lists them)", cxxopts::value<std::string>())(
      "steps", "sampling steps S", cxxopts::value<int>())(
      "eta", "eta (" + samplers_reading("eta") + ")", cxxopts::value<double>())(
      "order", "multistep order (" + samplers_reading("order") + ")", cxxopts::value<int>())(
      "lambda", "lambda (" + samplers_reading("lambda") + ")", cxxopts::value<double>())(
      "skip-tuning", "Skip-Tuning: RHO_BOTTOM[,RHO_TOP] (deepest and top skip factors; RHO_TOP defaults to 1)",
      cxxopts::value<std::string>())(
      "timesteps", "time grid: " + time_grid_forms(), cxxopts::value<std::string>())(
      "num", "number of images", cxxopts::value<int64_t>())("batch", "batch size", cxxopts::value<int>())(
      "seed", "random seed", cxxopts::value<uint64_t>())(
      "class", "a class-conditional model's class for every image (default: each image's own, from its seed)",
      cxxopts::value<int>())(
      "noise", "initial noise x_T as float32 NCHW .npy (sets the number of images)", cxxopts::value<std::string>())(
      "out", "output directory", cxxopts::value<std::string>())(
      "save-float", "also save the final samples as float32 NCHW .npy", cxxopts::value<std::string>())(
      "no-png", "skip the numbered PNG files (samples.npz and grid.png only)")(
      "device", "auto | cpu | cuda | cuda:N", cxxopts::value<std::string>())(
      "set", "override a config value: section.key=value (repeatable)", cxxopts::value<std::vector<std::string>>());
  auto r = parse_options(options, argc, argv);
  if (!r) return 0;
  if (!r->count("out")) throw UsageError("sample: --out DIR is required");
  const std::string out = (*r)["out"].as<std::string>();
  sample::check_sample_output(out);
  if (r->count("raw") && !r->count("checkpoint")) throw UsageError("--raw picks a checkpoint's weights: give --checkpoint");
  if (r->count("save-float")) {  // a .npy file, not a folder nor one of the files --out holds
    const fs::path floats = (*r)["save-float"].as<std::string>();
    std::error_code ec;  // (--out may not exist yet)
    if (fs::is_directory(floats, ec)) throw UsageError("--save-float " + floats.string() + ": is a directory");
    if (fs::weakly_canonical(fs::absolute(floats).parent_path(), ec) == fs::weakly_canonical(fs::absolute(out), ec) &&
        sample::is_sample_output_name(floats.filename().string()))
      throw UsageError("--save-float " + floats.string() + ": a file that --out " + out + " writes");
  }
  auto source = model::resolve_model(model_ref(*r), sets(*r));
  apply_sample_flags(*r, source.config);
  const Config& config = source.config;
  // The model's settings first, its network once they hold: a bad setting fails before any work.
  auto model = DiffusionModel::of(config, {}, torch::kCPU, {source.learned, "", false});
  const auto plan = sample::plan_sampling(config.sample, model);
  model::check_skip_tuning(config.model, config.sample.skip_tuning, !source.script.empty());
  const std::vector<int64_t> shape = model.state_shape();  // (a PSLD model's z = [x, m], standard normal)
  torch::Tensor noise;
  if (r->count("noise")) {  // (it sets the number of images)
    noise = read_noise((*r)["noise"].as<std::string>(), shape);
    if (r->count("num") && (*r)["num"].as<int64_t>() != noise.size(0))
      throw UsageError("--num " + std::to_string((*r)["num"].as<int64_t>()) + " but --noise " +
                       (*r)["noise"].as<std::string>() + " holds " + std::to_string(noise.size(0)) + " images");
    source.config.sample.num = noise.size(0);
    if (std::error_code ec; r->count("save-float") &&
                            fs::equivalent((*r)["save-float"].as<std::string>(), (*r)["noise"].as<std::string>(), ec))
      throw UsageError("--save-float " + (*r)["save-float"].as<std::string>() + ": is the --noise file itself");
  }
  sample::check_sample_output(out, r->count("no-png") ? 0 : config.sample.num);
  set_cpu_threads(config.threads);
  const torch::Device device = resolve_device(config.device);
  const model::LoadedModel loaded(source, device);
  model.eps = loaded.eps(config.sample.skip_tuning);
  model.device = device;
  if (!plan.warning.empty()) spdlog::warn("{}", plan.warning);
  auto generated = sample::generate(model, plan, {config.seed, 0, config.sample.num, noise});
  // What produced these samples: first as incomplete, so that a folder left half-written is still
  // recognisably this command's output, then whole.
  const std::string settings = to_yaml(config);
  sample::clear_sample_output(out);  // (an earlier output's images, which the new ones may not all replace)
  write_file_atomic(out + "/sample.yaml",
                    settings + "result:\n  complete: false\n  images: " + std::to_string(generated.samples.size(0)) + "\n");
  sample::write_samples(out, generated.samples, !r->count("no-png"));
  if (r->count("save-float")) write_float_npy((*r)["save-float"].as<std::string>(), generated.samples);
  std::ostringstream record;
  record.precision(17);
  record << settings << "result:\n  complete: true\n  images: " << generated.samples.size(0) << "\n  model: \"" << source.origin << "\""
         << "\n  steps: " << plan.grid.steps() << "\n  nfe: " << generated.nfe << "\n  seconds: " << generated.seconds
         << "\n  device: \"" << device.str() << "\"\n  timesteps: [";
  for (size_t i = 0; i < plan.grid.t.size(); ++i) record << (i ? ", " : "") << plan.grid.t[i];
  record << "]\n";
  write_file_atomic(out + "/sample.yaml", record.str());
  std::cout << "samples: " << out << "/samples.npz (" << generated.samples.size(0) << " images, " << generated.nfe
            << " network evaluations each)\ngrid:    " << out << "/grid.png\n";
  return 0;
}

int export_weights(int argc, char** argv) {
  cxxopts::Options options("s2dm export", "Write a checkpoint's model weights as safetensors (reference names).");
  options.add_options()("checkpoint", "s2dm checkpoint", cxxopts::value<std::string>())(
      "ema", "export the EMA weights (default: the raw weights)")(
      "out", "output .safetensors file", cxxopts::value<std::string>());
  auto r = parse_options(options, argc, argv);
  if (!r) return 0;
  if (!r->count("checkpoint") || !r->count("out")) throw UsageError("export: --checkpoint and --out are required");
  check_output_file(*r, "out", {"checkpoint"});
  auto ckpt = load_checkpoint((*r)["checkpoint"].as<std::string>());
  auto weights = checkpoint_weights(ckpt, r->count("ema") > 0);
  save_safetensors((*r)["out"].as<std::string>(), weights,
                   {{"format", "pt"}, {"s2dm_config", ckpt.config_yaml}, {"step", std::to_string(ckpt.step)}});
  std::cout << "wrote " << (*r)["out"].as<std::string>() << " (" << weights.size() << " tensors, "
            << (r->count("ema") ? "EMA" : "raw") << " weights, step " << ckpt.step << ")\n";
  return 0;
}

}  // namespace s2dm::cli
