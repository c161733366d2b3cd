#include "s2dm/sample/generate.h"

#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>

#include "s2dm/data/data.h"
#include "s2dm/core/errors.h"
#include "s2dm/io/file_io.h"
#include "s2dm/io/image_io.h"
#include "s2dm/io/npy_tensor.h"
#include "s2dm/core/progress.h"
#include "s2dm/sample/score_grid.h"
#include "s2dm/sample/grid_file.h"

namespace s2dm::sample {

namespace {

// The grids of a schedule file, checked against the model; `warning` names settings the file's
// dp grids were not searched for.
GridFile model_grid_file(const std::string& path, const DiffusionModel& model, const SampleConfig& c, std::string& warning) {
  auto file = read_grid_file(path, model.schedule.num_timesteps());
  file.check_model(model);
  if (const auto mismatch = file.settings_mismatch(c); !mismatch.empty())
    warning = path + " holds grids searched for other sample settings: " + mismatch;
  return file;
}

[[noreturn]] void dp_needs_a_file(const SampleConfig& c) {
  throw ConfigError("timesteps dp: the experiment driver searches dp grids; elsewhere make them with s2dm schedule "
                    "--method dp --sampler " + c.sampler + " and sample with --timesteps learned:FILE");
}

std::vector<double> own_grid(const ModelGrids& grids, const SampleConfig& c, const NoiseSchedule& schedule) {
  if (!grids.file.empty()) return read_grid_file(grids.file, schedule.num_timesteps()).grid(c.steps);
  if (grids.state.empty() && grids.uniform_until_ready) return make_timesteps("uniform", c.steps, schedule);
  if (uses_dp_grid(c)) dp_needs_a_file(c);
  return timesteps_from_state(grids.state, c.steps);
}

}  // namespace

SamplingPlan plan_sampling(const SampleConfig& c, const DiffusionModel& model) {
  const NoiseSchedule& schedule = model.schedule;
  if (c.batch < 1) throw ConfigError("sample.batch = " + std::to_string(c.batch) + " must be at least 1");
  SamplingPlan plan;
  plan.sampler = &find_sampler(c.sampler, model.psld ? "psld" : "vp");
  plan.options = sampler_options(c);
  check_options(*plan.sampler, plan.options);
  plan.batch = c.batch;
  check_class_label(c.class_label, model.label_dim);
  plan.class_label = c.class_label;
  if (model.psld) {
    if (uses_learned_grid(c))
      throw ConfigError("timesteps = learned: the score-optimal grid is searched on DDPM's timesteps; a PSLD model samples "
                        "on uniform, quad, logsnr, karras, dp, a list of times, file:PATH or learned:FILE (a dp file)");
    std::string file = c.timesteps.rfind("learned:", 0) == 0 ? c.timesteps.substr(8) : "";
    if (uses_dp_grid(c)) {
      file = model.grids.file;
      if (file.empty() && !model.grids.uniform_until_ready) dp_needs_a_file(c);
    }
    // (dp without its file yet: the uniform grid stands in while the driver checks the settings)
    plan.grid = !file.empty() ? psld_grid(model_grid_file(file, model, c, plan.warning).grid(c.steps), *model.psld, file)
                              : make_psld_grid(uses_dp_grid(c) ? "uniform" : time_grid(c), c.steps, *model.psld, c.karras_rho);
    return plan;
  }
  std::vector<double> timesteps;
  std::string file;  // the schedule file the grid comes from, if any (errors name it)
  if (uses_learned_grid(c) || uses_dp_grid(c)) {
    timesteps = own_grid(model.grids, c, schedule);
    file = model.grids.file;
  } else if (c.timesteps.rfind("learned:", 0) == 0) {
    file = c.timesteps.substr(8);
    timesteps = model_grid_file(file, model, c, plan.warning).grid(c.steps);
  } else {
    const std::string name = time_grid(c);
    timesteps = make_timesteps(name, c.steps, schedule, c.karras_rho);
    const auto& named = timestep_grids();
    if (std::find(named.begin(), named.end(), name) != named.end() && static_cast<int>(timesteps.size()) < c.steps)
      plan.warning = "time grid '" + name + "' with " + std::to_string(c.steps) + " steps repeats timesteps; " +
                     std::to_string(timesteps.size()) + " distinct steps remain";
  }
  try {
    plan.grid = make_grid(timesteps, schedule, c.final_alpha);
  } catch (const ConfigError& e) {
    if (file.empty()) throw;
    throw ConfigError(file + ": its grid for " + std::to_string(c.steps) + " steps: " + e.what());
  }
  return plan;
}

Generated generate(const DiffusionModel& model, const SamplingPlan& plan, const Draw& draw, bool show_progress,
                   const std::function<bool()>& stop) {
  const torch::Tensor& noise = draw.noise;
  const auto shape = model.state_shape();
  int64_t num = draw.num;
  if (noise.defined()) {
    if (noise.dim() != 4 || noise.sizes().slice(1).vec() != shape)
      throw DataError("initial noise has shape " + c10::str(noise.sizes()) + ", the model expects [N, " +
                      c10::str(c10::IntArrayRef(shape)) + "]");
    num = noise.size(0);
  }
  if (num < 1) throw ConfigError("no images to sample (" + std::to_string(num) + " asked for)");
  struct Stopped {};
  Generated out;
  std::vector<torch::Tensor> parts;
  Progress progress("sampling " + plan.sampler->name + " (" + std::to_string(plan.grid.steps()) + " steps)", num, "img");
  auto start = std::chrono::steady_clock::now();
  for (int64_t first = 0; first < num; first += plan.batch) {
    int64_t count = std::min<int64_t>(plan.batch, num - first);
    // (An image's class is drawn after its x_T from its generator, so it is the same with --noise.)
    auto state = noise.defined() && model.label_dim == 0
                     ? InitialState{}
                     : initial_state(draw.first + first, count, shape, draw.seed, model.label_dim);
    auto x = noise.defined() ? noise.slice(0, first, first + count) : state.noise;
    if (model.edm_prior) x = x * std::sqrt(1 - plan.grid.alpha_bar[0]);
    if (model.psld) x = model.psld->prior(x);
    if (plan.class_label >= 0) state.classes.fill_(plan.class_label);
    const EpsModel eps = model.eps_for(state.classes);
    // A stop request ends the sampling at the next network evaluation, not only between batches
    // (a batch of a 1000-step sampler takes minutes).
    const EpsModel checked = !stop ? eps : EpsModel([&](const torch::Tensor& x, const torch::Tensor& t) {
      if (stop()) throw Stopped{};
      return eps(x, t);
    });
    SamplerOptions options = plan.options;
    options.noise_seed = draw.seed * 7919ull;
    options.first_image = draw.first + first;
    SampleRun run;
    try {
      run = run_sampler(*plan.sampler, checked, x.to(model.device, torch::kFloat32), plan.grid, options);
    } catch (const Stopped&) {
      out.complete = false;
      break;
    }
    out.nfe = run.nfe;
    parts.push_back(model.images(run.x).to(torch::kCPU));
    if (show_progress) progress.update(first + count);
  }
  out.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (show_progress) progress.finish("(" + std::to_string(out.nfe) + " network evaluations per image)");
  out.samples = parts.empty() ? torch::empty({0}) : torch::cat(parts);
  return out;
}

namespace {

torch::Tensor nhwc_uint8(const torch::Tensor& samples) {
  return data::to_uint8(samples).permute({0, 2, 3, 1}).contiguous();
}

}  // namespace

void write_grid(const std::string& path, const torch::Tensor& samples) {
  auto images = nhwc_uint8(samples.slice(0, 0, 64));
  write_png(path, tile_images(images.data_ptr<uint8_t>(), static_cast<int>(images.size(0)),
                            static_cast<int>(images.size(1)), static_cast<int>(images.size(2)),
                            static_cast<int>(images.size(3))));
}

torch::Tensor read_samples_npz(const std::string& path) {
  auto arrays = load_npz(path);
  auto it = arrays.find("arr_0");
  if (it == arrays.end()) throw DataError(path + ": no arr_0 (samples) in this .npz");
  const auto& a = it->second;
  if (a.dtype != "|u1" || a.shape.size() != 4 || (a.shape[3] != 1 && a.shape[3] != 3))
    throw DataError(path + ": arr_0 must be uint8 NHWC with 1 or 3 channels");
  if (a.shape[0] == 0 || a.shape[1] == 0 || a.shape[2] == 0)
    throw DataError(path + ": arr_0 holds no images (shape " + c10::str(c10::IntArrayRef(a.shape)) + ")");
  return to_tensor(a, path).permute({0, 3, 1, 2}).contiguous();
}

namespace {

// The index of a numbered PNG ("000012.png" -> 12), else -1.
int64_t png_index(const std::string& name) {
  const std::string stem = name.size() > 4 ? name.substr(0, name.size() - 4) : "";
  if (name.size() < 10 || name.compare(name.size() - 4, 4, ".png") != 0 || stem.size() > 18 ||
      stem.find_first_not_of("0123456789") != std::string::npos)
    return -1;
  return std::stoll(stem);
}

// The files of an s2dm sample output in `dir`.
std::vector<std::filesystem::path> sample_output_files(const std::string& dir) {
  std::vector<std::filesystem::path> files;
  std::error_code ec;
  if (!std::filesystem::is_directory(dir, ec)) return files;
  for (const auto& entry : std::filesystem::directory_iterator(dir))
    if (is_sample_output_name(entry.path().filename().string())) files.push_back(entry.path());
  return files;
}

// s2dm sample's record in `dir` ("" when there is none of it): the resolved settings, then its result.
std::string sample_record(const std::string& dir) {
  try {
    const std::string record = read_file_bytes(dir + "/sample.yaml");
    return record.find("\nresult:\n") == std::string::npos ? "" : record;
  } catch (const IoError&) {
    return "";
  }
}

// The numbered PNGs a record says its run wrote (0 for none).
int64_t recorded_images(const std::string& record) {
  const std::string key = "\n  images: ";
  const auto at = record.find(key);
  return at == std::string::npos ? 0 : std::max<int64_t>(0, std::atoll(record.c_str() + at + key.size()));
}

}  // namespace

bool is_sample_output_name(const std::string& name) {
  return png_index(name) >= 0 || name == "samples.npz" || name == "grid.png" || name == "sample.yaml";
}

void check_sample_output(const std::string& dir, int64_t pngs) {
  std::error_code ec;
  if (std::filesystem::exists(dir, ec) && !std::filesystem::is_directory(dir, ec))
    throw UsageError("--out " + dir + ": exists and is not a directory");
  const auto files = sample_output_files(dir);
  const std::string record = sample_record(dir);
  if (!files.empty() && record.empty())
    throw UsageError("--out " + dir + ": holds " + files.front().filename().string() +
                     ", but no record of s2dm sample (sample.yaml), so not an earlier output of it: choose another --out");
  // A numbered PNG the earlier run did not write, which a new one would replace.
  const int64_t earlier = recorded_images(record);
  for (const auto& file : files)
    if (const int64_t index = png_index(file.filename().string()); index >= earlier && index < pngs)
      throw UsageError("--out " + dir + ": holds " + file.filename().string() + ", which its earlier output did not "
                       "write and " + std::to_string(pngs) + " new images would replace: move it away");
}

void clear_sample_output(const std::string& dir) {
  remove_dead_writers_temporaries(dir);  // (of an earlier run stopped while writing)
  // The images the record counts (numbered PNGs beyond them are someone else's), and the rest.
  const int64_t images = recorded_images(sample_record(dir));
  for (const auto& file : sample_output_files(dir)) {
    const std::string name = file.filename().string();
    const int64_t index = png_index(name);
    if (name != "sample.yaml" && (index < 0 || index < images)) std::filesystem::remove(file);
  }
}

void write_samples(const std::string& dir, const torch::Tensor& samples, bool pngs) {
  std::filesystem::create_directories(dir);
  auto images = nhwc_uint8(samples);
  const int64_t n = images.size(0), h = images.size(1), w = images.size(2), c = images.size(3);
  if (pngs) {
    for (int64_t i = 0; i < n; ++i) {
      auto img = images[i];
      char name[32];
      std::snprintf(name, sizeof name, "%06ld.png", static_cast<long>(i));
      write_png(dir + "/" + name,
                Image{static_cast<int>(w), static_cast<int>(h), static_cast<int>(c),
                      std::vector<uint8_t>(img.data_ptr<uint8_t>(), img.data_ptr<uint8_t>() + h * w * c)});
    }
  }
  save_npz(dir + "/samples.npz", {{"arr_0", to_npy_array(images)}});
  write_grid(dir + "/grid.png", samples);
}

}  // namespace s2dm::sample
