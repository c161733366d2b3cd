#include "s2dm/train/train.h"

#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <regex>

#include "s2dm/io/checkpoint.h"
#include "s2dm/core/compat.h"
#include "s2dm/data/data.h"
#include "s2dm/core/device.h"
#include "s2dm/core/errors.h"
#include "s2dm/eval/fid.h"
#include "s2dm/model/model_source.h"
#include "s2dm/io/file_io.h"
#include "s2dm/sample/generate.h"
#include "s2dm/diffusion/losses.h"
#include "s2dm/train/optim.h"
#include "s2dm/core/progress.h"
#include "s2dm/sample/learned_schedule.h"
#include "s2dm/core/stop_signals.h"
#include "s2dm/model/unet.h"

namespace s2dm::train {
namespace fs = std::filesystem;

namespace {

NamedTensors rng_states(const torch::Device& device) {
  NamedTensors out{{"cpu", compat::default_generator(torch::kCPU).get_state()}};
  if (device.is_cuda()) out.emplace_back("cuda", compat::default_generator(device).get_state());
  return out;
}

void restore_rng(const NamedTensors& states, const torch::Device& device) {
  for (const auto& [name, state] : states) {
    if (name == "cpu") compat::default_generator(torch::kCPU).set_state(state);
    else if (name == "cuda" && device.is_cuda()) compat::default_generator(device).set_state(state);
  }
}

int64_t step_of(const fs::path& p) {
  static const std::regex pattern("step_(\\d+)\\.ckpt");
  std::smatch m;
  std::string name = p.filename().string();
  return std::regex_match(name, m, pattern) ? std::stoll(m[1]) : -1;
}

// Keeps metrics.jsonl consistent with a resumed step: drops lines written after it.
void truncate_metrics(const std::string& path, int64_t step) {
  if (!fs::exists(path)) return;
  std::ifstream in(path);
  std::string line, kept;
  while (std::getline(in, line)) {
    try {
      if (nlohmann::json::parse(line).value("step", int64_t{0}) <= step) kept += line + "\n";
    } catch (const nlohmann::json::exception&) {
      // a torn last line from a crash: drop it
    }
  }
  write_file_atomic(path, kept);
}

// The logged quantities summed over the steps since the last log line, on the device: the
// loop reads them (one host sync) only to log or before a checkpoint, never per micro-batch.
class IntervalSums {
 public:
  explicit IntervalSums(const torch::Device& device) : device_(device) { reset(); }

  void add_micro_batch(const diffusion::LossTerms& terms, int grad_accum) {
    loss_.add_(terms.loss.detach(), 1.0 / grad_accum);
    simple_.add_(terms.simple, 1.0 / grad_accum);
    skip_sum_.add_(terms.skip_sum);
    skip_count_.add_(terms.skip_count);
  }
  void add_step(const torch::Tensor& grad_norm) {
    grad_norm_.add_(grad_norm);
    ++steps_;
  }

  // A diverged loss never reaches a checkpoint: throws when any step since the last log line
  // had a NaN or infinite loss.
  void check_finite(int64_t step, const std::string& run_dir) const {
    const double loss = loss_.item<double>();
    if (!std::isfinite(loss))
      throw std::runtime_error("loss is " + std::to_string(loss) + " at a step in (" + std::to_string(step - steps_) +
                               ", " + std::to_string(step) + "] (diverged; lower train.lr?); the last good checkpoint is kept in " +
                               checkpoint_dir(run_dir));
  }

  // The metrics line of the interval ending at `step` (means per step); starts the next interval.
  nlohmann::ordered_json take_line(int64_t step, double lr, int64_t images_per_step, const std::string& run_dir) {
    check_finite(step, run_dir);
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    const auto n = static_cast<double>(std::max<int64_t>(steps_, 1));
    const auto skip_count = skip_count_.item<int64_t>();
    nlohmann::ordered_json line{{"step", step},
                                {"loss", loss_.item<double>() / n},
                                {"loss_simple", simple_.item<double>() / n},
                                {"loss_skip", skip_count ? skip_sum_.item<double>() / static_cast<double>(skip_count) : 0.0},
                                {"lr", lr},
                                {"grad_norm", grad_norm_.item<double>() / n},
                                {"images_per_sec", static_cast<double>(steps_ * images_per_step) / secs}};
    reset();
    return line;
  }

 private:
  void reset() {
    auto f32 = torch::TensorOptions().dtype(torch::kFloat32).device(device_);
    loss_ = torch::zeros({}, f32);
    simple_ = torch::zeros({}, f32);
    skip_sum_ = torch::zeros({}, f32);
    grad_norm_ = torch::zeros({}, f32);
    skip_count_ = torch::zeros({}, f32.dtype(torch::kLong));
    steps_ = 0;
    start_ = std::chrono::steady_clock::now();
  }

  torch::Device device_;
  torch::Tensor loss_, simple_, skip_sum_, skip_count_, grad_norm_;
  int64_t steps_ = 0;
  std::chrono::steady_clock::time_point start_;
};

// Writes step_<N>.ckpt, points latest.ckpt at it (a hard link swapped in atomically) and keeps
// the newest `keep_last` step files.
void write_rotated_checkpoint(const std::string& run_dir, const Checkpoint& ckpt, int keep_last) {
  const std::string dir = checkpoint_dir(run_dir);
  const std::string path = dir + "/step_" + std::to_string(ckpt.step) + ".ckpt";
  save_checkpoint(path, ckpt);
  const std::string tmp = dir + "/latest.ckpt.tmp";
  std::error_code ec;
  fs::remove(tmp, ec);
  fs::create_hard_link(path, tmp, ec);
  if (ec) fs::copy_file(path, tmp, fs::copy_options::overwrite_existing);
  fs::rename(tmp, latest_checkpoint(run_dir));
  std::vector<std::pair<int64_t, fs::path>> steps;
  for (const auto& e : fs::directory_iterator(dir))
    if (step_of(e.path()) >= 0) steps.emplace_back(step_of(e.path()), e.path());
  std::sort(steps.begin(), steps.end());
  for (size_t i = 0; i + static_cast<size_t>(keep_last) < steps.size(); ++i) fs::remove(steps[i].second);
  spdlog::info("checkpoint {}", path);
}

// FID/FD and KID of EMA samples against the training data, in the configured feature space
// (train.eval_every): the reference features are computed once.
class TrainingEvaluation {
 public:
  TrainingEvaluation(const TrainConfig& tc, const torch::Tensor& data_images, const torch::Device& device)
      : num_(tc.eval_num), device_(device), extractor_(eval::make_feature_extractor(tc.eval_features, device)) {
    auto images = data_images.slice(0, 0, std::min<int64_t>(data_images.size(0), 10 * num_));
    reference_ = eval::feature_set(extractor_, images, kBatch, device, false);
    spdlog::info("{} every {} steps: {} samples against {} training images", extractor_.distance_label(), tc.eval_every,
                 num_, images.size(0));
  }

  // The metrics line of `generated` (samples of the EMA model) at `step`.
  nlohmann::ordered_json measure(const sample::Generated& generated, int64_t step) const {
    const auto d = eval::distance(eval::feature_set(extractor_, data::to_uint8(generated.samples), kBatch, device_, false),
                                  reference_);
    spdlog::info("step {}: {} {:.4f}", step, extractor_.distance_label(), d.fd);
    return {{"step", step},           {"fd", d.fd},       {"kid_mean", d.kid->mean}, {"kid_std", d.kid->std},
            {"features", extractor_.name}, {"eval_num", num_}, {"nfe", generated.nfe}};
  }
  int num() const { return num_; }

 private:
  static constexpr int64_t kBatch = 250;
  int num_;
  torch::Device device_;
  eval::FeatureExtractor extractor_;
  eval::FeatureSet reference_;
};

}  // namespace

std::string checkpoint_dir(const std::string& run_dir) { return run_dir + "/checkpoints"; }
std::string latest_checkpoint(const std::string& run_dir) { return checkpoint_dir(run_dir) + "/latest.ckpt"; }

TrainResult run_training(const Config& given, const TrainOptions& opts) {
  const std::string run_dir = opts.run_dir.empty() ? "runs/" + given.name : opts.run_dir;
  Config config = given;
  Checkpoint resumed;
  if (opts.resume) {
    const std::string path = latest_checkpoint(run_dir);
    if (!fs::exists(path)) throw CheckpointError(path + ": no checkpoint to resume from");
    resumed = load_checkpoint(path);
    config = parse_config(resumed.config_yaml, path + " (config)", opts.overrides);
  } else if (fs::exists(run_dir) && !fs::is_empty(run_dir)) {
    if (!opts.overwrite)
      throw ConfigError(run_dir + ": run directory exists (use --resume to continue it or --overwrite to replace it)");
    fs::remove_all(run_dir);
  }
  if (opts.steps >= 0) config.train.steps = opts.steps;
  const auto& tc = config.train;

  fs::create_directories(checkpoint_dir(run_dir));
  fs::create_directories(run_dir + "/samples");
  write_file_atomic(run_dir + "/config.yaml", to_yaml(config));
  LogFile log_file(run_dir + "/log.txt");
  const std::string metrics_path = run_dir + "/metrics.jsonl";
  if (opts.resume) truncate_metrics(metrics_path, resumed.step);

  set_cpu_threads(config.threads);
  const torch::Device device = resolve_device(config.device);
  const bool autocast = model::bf16_autocast(config, device);
  torch::manual_seed(config.seed);
  spdlog::info("run {}: {} on {} ({} threads{})", run_dir, opts.resume ? "resuming" : "training", device.str(),
               torch::get_num_threads(), autocast ? ", bf16 autocast" : "");

  auto dataset = data::load_dataset(config.data);
  spdlog::info("data: {} images of {}x{}x{} from {}", dataset.images.size(0), dataset.images.size(1),
               dataset.images.size(2), dataset.images.size(3), dataset.source);
  data::Batcher batcher(dataset, device, tc.batch_size, config.seed, config.data.random_flip);

  model::UNet unet(config.model, config.data.channels, config.data.image_size);
  model::UNet ema(config.model, config.data.channels, config.data.image_size);
  unet->to(device);
  ema->to(device);
  unet->set_memory_format(model::preferred_memory_format(device));
  ema->set_memory_format(model::preferred_memory_format(device));
  copy_weights(*ema, *unet);
  ema->eval();
  spdlog::info("model: {:.2f} M parameters, {} long skips", model::count_parameters(*unet) / 1e6,
               model::num_skips(config.model));

  NamedTensors params;
  for (const auto& item : unet->named_parameters()) params.emplace_back(item.key(), item.value());
  Adam adam(params, {tc.beta1, tc.beta2, tc.eps, tc.weight_decay, tc.optimizer == "adamw"});

  NoiseSchedule schedule(config.diffusion);
  if (config.sample.timesteps == "learned" && tc.learned_schedule.every == 0)
    throw ConfigError("sample.timesteps = learned during training needs train.learned_schedule.every > 0");
  // A bad sample section fails now, not after training.
  sample::plan_sampling(config.sample, schedule, {{}, "", /*uniform_until_ready=*/true});
  std::unique_ptr<sample::OnlineScheduleEstimator> online;
  if (tc.learned_schedule.every > 0) {
    const auto& ls = tc.learned_schedule;
    online = std::make_unique<sample::OnlineScheduleEstimator>(schedule, ls.levels, config.sample.steps,
                                                               ls.min_estimates, ls.gamma);
    // Overhead: 2·pairs·batch network evaluations every `every` steps, against 3 passes (forward
    // and backward) of batch_size·grad_accum images per step.
    spdlog::info("learned schedule: {} pairs x {} images every {} steps (~{:.1f} % of the training compute)",
                 ls.pairs, ls.batch, ls.every,
                 100.0 * 2 * ls.pairs * ls.batch / (3.0 * ls.every * tc.batch_size * tc.grad_accum));
  }
  diffusion::DiffusionLoss loss_fn(config.loss, schedule, device);

  int64_t step = 0;
  if (opts.resume) {
    load_weights(*unet, resumed.model, "checkpoint model");
    load_weights(*ema, resumed.ema, "checkpoint ema");
    adam.load_state(resumed.optimizer);
    restore_rng(resumed.rng, device);
    batcher.seek(std::stoll(resumed.extra.at("data_epoch")), std::stoll(resumed.extra.at("data_cursor")));
    if (online && !resumed.schedule.empty()) online->load_state(resumed.schedule);
    step = resumed.step;
    resumed = Checkpoint{};
    spdlog::info("resumed at step {}", step);
  }

  auto save = [&](int64_t at_step) {
    Checkpoint ckpt;
    ckpt.step = at_step;
    ckpt.config_yaml = to_yaml(config);
    ckpt.model = named_weights(*unet);
    ckpt.ema = named_weights(*ema);
    ckpt.optimizer = adam.state();
    ckpt.rng = rng_states(device);
    ckpt.extra = {{"data_epoch", std::to_string(batcher.epoch())}, {"data_cursor", std::to_string(batcher.cursor())}};
    if (online) ckpt.schedule = online->state();
    write_rotated_checkpoint(run_dir, ckpt, tc.keep_last);
  };

  std::ofstream metrics(metrics_path, std::ios::app);
  // EMA samples for grids and evaluations; a learned grid that is not ready yet is the uniform one.
  std::optional<TrainingEvaluation> evaluation;
  if (tc.eval_every > 0) evaluation.emplace(tc, dataset.images, device);
  const std::vector<int64_t> image_shape{config.data.channels, config.data.image_size, config.data.image_size};
  auto ema_samples = [&](uint64_t seed, int64_t num) {
    const sample::LearnedSchedule learned{online && online->ready() ? online->state() : NamedTensors{}, "", true};
    return sample::generate(model::unet_eps_model(ema, autocast, config.sample.skip_tuning), schedule, config.sample,
                            image_shape, device, seed, num, {}, false, learned);
  };
  auto evaluate = [&](int64_t at_step) {
    metrics << evaluation->measure(ema_samples(config.seed + 1, evaluation->num()), at_step).dump() << "\n" << std::flush;
  };
  auto sample_grid = [&](int64_t at_step) {
    if (tc.sample_num <= 0) return;
    const std::string path = run_dir + "/samples/step_" + std::to_string(at_step) + ".png";
    sample::write_grid(path, ema_samples(config.seed, tc.sample_num).samples);
    spdlog::info("samples {}", path);
  };

  StopSignals signals;
  const int64_t start_step = step;
  Progress progress("train", tc.steps - start_step, "step");
  IntervalSums sums(device);
  auto params_only = unet->parameters();
  torch::Tensor last_x0;
  std::string logged_loss;
  unet->train();

  while (step < tc.steps) {
    if (signals.requested()) {
      spdlog::warn("signal {} received: writing a checkpoint at step {} and stopping", signals.signal(), step);
      sums.check_finite(step, run_dir);
      save(step);
      return {run_dir, step, true};
    }
    adam.zero_grad();
    for (int micro = 0; micro < tc.grad_accum; ++micro) {
      auto x0 = batcher.next();
      last_x0 = x0;
      auto t = diffusion::sample_timesteps(tc.batch_size, schedule.num_timesteps(), tc.antithetic, device);
      diffusion::LossTerms terms;
      {
        compat::CudaAutocast guard(autocast, torch::kBFloat16);
        terms = loss_fn([&](const torch::Tensor& x, const torch::Tensor& tt) { return unet->forward(x, tt); }, x0, t);
      }
      (terms.loss / tc.grad_accum).backward();
      sums.add_micro_batch(terms, tc.grad_accum);
    }
    const double lr = tc.warmup > 0 ? tc.lr * std::min(1.0, static_cast<double>(step + 1) / tc.warmup) : tc.lr;
    sums.add_step(clip_grad_norm(params_only, tc.grad_clip));
    adam.step(lr);
    ema_update(*ema, *unet, tc.ema_decay);
    ++step;
    if (online && step % tc.learned_schedule.every == 0) {
      // On the EMA model and the last micro-batch, with its own generator (the training RNG
      // stream is untouched); a few evaluations, too few for CUDA graphs to pay.
      sums.check_finite(step, run_dir);
      auto gen = at::detail::createCPUGenerator(config.seed * 0x9E3779B97F4A7C15ull + static_cast<uint64_t>(step));
      auto ema_model = model::unet_eps_model(ema, autocast, {}, /*cuda_graphs=*/false);
      if (online->update(ema_model, last_x0.slice(0, 0, tc.learned_schedule.batch), tc.learned_schedule.pairs, gen)) {
        nlohmann::ordered_json line{{"step", step}, {"schedule_timesteps", online->timesteps()},
                                    {"schedule_cost", online->mean_cost()}, {"schedule_nfe", online->nfe()}};
        metrics << line.dump() << "\n" << std::flush;
      }
    }
    progress.update(step - start_step, logged_loss);

    if (step % tc.log_every == 0 || step == tc.steps) {
      const auto line = sums.take_line(step, lr, tc.batch_size * tc.grad_accum, run_dir);
      metrics << line.dump() << "\n" << std::flush;
      char loss_text[48];
      std::snprintf(loss_text, sizeof loss_text, "loss %.4f", line["loss"].get<double>());
      logged_loss = loss_text;
    }
    if (step % tc.ckpt_every == 0 && step != tc.steps) {
      sums.check_finite(step, run_dir);
      save(step);
    }
    if (tc.sample_every > 0 && step % tc.sample_every == 0 && step != tc.steps) {
      sums.check_finite(step, run_dir);
      sample_grid(step);
      unet->train();
    }
    if (evaluation && step % tc.eval_every == 0 && step != tc.steps) {
      sums.check_finite(step, run_dir);
      evaluate(step);
      unet->train();
    }
  }
  progress.finish();
  if (step > start_step || !fs::exists(latest_checkpoint(run_dir))) {
    sums.check_finite(step, run_dir);
    save(step);
  }
  sample_grid(step);
  if (evaluation && step > start_step) evaluate(step);
  return {run_dir, step, false};
}

}  // namespace s2dm::train
