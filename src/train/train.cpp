#include "s2dm/train/train.h"

#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <thread>

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
#include "s2dm/parallel/process_group.h"
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

// Keeps the training stream (the default generators) out of work beside training (evaluation,
// sample grids): such work may draw from them (a feature network's initialisation does), and a
// run resumed after it must see the stream that an uninterrupted run sees.
class TrainingStreamGuard {
 public:
  explicit TrainingStreamGuard(const torch::Device& device) : device_(device), saved_(rng_states(device)) {}
  ~TrainingStreamGuard() { restore_rng(saved_, device_); }
  TrainingStreamGuard(const TrainingStreamGuard&) = delete;
  TrainingStreamGuard& operator=(const TrainingStreamGuard&) = delete;

 private:
  torch::Device device_;
  NamedTensors saved_;
};

// Steps between the ranks' agreements on a stop (README: a signal stops a group of ranks within
// this many steps).
constexpr int64_t kStopCheckSteps = 10;

// A signal arrived while the EMA model was sampling (a grid, an evaluation): on every rank.
struct SamplingInterrupted {};

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
// Under data parallelism each rank sums its own rows; reading all-reduces the sums, so every
// rank reads the same (global) values at the same steps.
class IntervalSums {
 public:
  IntervalSums(const torch::Device& device, parallel::ProcessGroup* group) : device_(device), group_(group) { reset(); }

  void add_micro_batch(const diffusion::LossTerms& terms, int grad_accum) {
    loss_.add_(terms.loss.detach(), 1.0 / grad_accum);
    simple_.add_(terms.simple, 1.0 / grad_accum);
    skip_sum_.add_(terms.skip_sum);
    skip_count_.add_(terms.skip_count);
  }
  // `allreduce_seconds`: the step's gradient averaging over the ranks (0 for one process).
  void add_step(const torch::Tensor& grad_norm, double allreduce_seconds) {
    grad_norm_.add_(grad_norm);
    allreduce_seconds_ += allreduce_seconds;
    ++steps_;
  }

  // A diverged loss never reaches a checkpoint: throws when any step since the last log line
  // had a NaN or infinite loss.
  void check_finite(int64_t step, const std::string& run_dir) const {
    const double loss = totals()[0];
    if (!std::isfinite(loss))
      throw std::runtime_error("loss is " + std::to_string(loss) + " at a step in (" + std::to_string(step - steps_) +
                               ", " + std::to_string(step) + "] (diverged; lower train.lr?); " +
                               (std::filesystem::exists(latest_checkpoint(run_dir))
                                    ? "the last good checkpoint is kept in " + checkpoint_dir(run_dir)
                                    : "no checkpoint was written before it"));
  }

  // The metrics line of the interval ending at `step` (means per step); starts the next interval.
  nlohmann::ordered_json take_line(int64_t step, double lr, int64_t images_per_step, const std::string& run_dir) {
    check_finite(step, run_dir);
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    const auto n = static_cast<double>(std::max<int64_t>(steps_, 1));
    const auto sums = totals();
    const auto skip_count = static_cast<int64_t>(sums[3]);
    nlohmann::ordered_json line{{"step", step},
                                {"loss", sums[0] / n},
                                {"loss_simple", sums[1] / n},
                                {"loss_skip", skip_count ? sums[2] / static_cast<double>(skip_count) : 0.0},
                                {"lr", lr},
                                {"grad_norm", grad_norm_.item<double>() / n},
                                {"images_per_sec", static_cast<double>(steps_ * images_per_step) / secs}};
    if (group_) line["allreduce_seconds"] = allreduce_seconds_ / n;
    reset();
    return line;
  }

 private:
  // loss, loss_simple (means over the ranks), skip_sum and skip_count (sums over the ranks).
  std::array<double, 4> totals() const {
    auto packed = torch::stack({loss_.to(torch::kFloat64), simple_.to(torch::kFloat64), skip_sum_.to(torch::kFloat64),
                                skip_count_.to(torch::kFloat64)});
    if (group_) {
      std::vector<torch::Tensor> one{packed};
      group_->all_reduce_sum(one);
      packed.narrow(0, 0, 2).div_(group_->size());
    }
    packed = packed.cpu();
    const double* v = packed.data_ptr<double>();
    return {v[0], v[1], v[2], v[3]};
  }

  void reset() {
    auto f32 = torch::TensorOptions().dtype(torch::kFloat32).device(device_);
    loss_ = torch::zeros({}, f32);
    simple_ = torch::zeros({}, f32);
    skip_sum_ = torch::zeros({}, f32);
    grad_norm_ = torch::zeros({}, f32);
    skip_count_ = torch::zeros({}, f32.dtype(torch::kLong));
    allreduce_seconds_ = 0;
    steps_ = 0;
    start_ = std::chrono::steady_clock::now();
  }

  torch::Device device_;
  parallel::ProcessGroup* group_;
  torch::Tensor loss_, simple_, skip_sum_, skip_count_, grad_norm_;
  double allreduce_seconds_ = 0;
  int64_t steps_ = 0;
  std::chrono::steady_clock::time_point start_;
};

// Writes latest.ckpt, links step_<N>.ckpt to it and keeps the newest `keep_last` step files.
// latest.ckpt comes first, written atomically: whenever the process dies, it is the newest
// complete checkpoint.
void write_rotated_checkpoint(const std::string& run_dir, const Checkpoint& ckpt, int keep_last) {
  const std::string dir = checkpoint_dir(run_dir), latest = latest_checkpoint(run_dir);
  const std::string path = step_checkpoint(run_dir, ckpt.step);
  save_checkpoint(latest, ckpt);
  std::error_code ec;
  fs::remove(path, ec);
  fs::create_hard_link(latest, path, ec);
  if (ec) fs::copy_file(latest, path, fs::copy_options::overwrite_existing);
  sync_directory(dir);
  std::vector<std::pair<int64_t, fs::path>> steps;
  for (const auto& e : fs::directory_iterator(dir))  // (s2dm's own step files: no link of someone's)
    if (const int64_t step = step_of(e.path().filename().string()); step >= 0 && !e.is_symlink())
      steps.emplace_back(step, e.path());
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

namespace {

// A training run: the networks, the optimiser, the data and the loop's steps, each a method.
// With a process group (data parallelism) every rank runs the same loop on its rows of each
// batch; rank 0 alone writes the run directory.
class Trainer {
 public:
  Trainer(Config config, std::string run_dir, bool resuming, parallel::ProcessGroup* group);
  Trainer(const Trainer&) = delete;  // (members refer to each other)
  Trainer& operator=(const Trainer&) = delete;
  // Continues from a checkpoint of this run (weights, optimiser, RNG, data position, schedule).
  void resume(Checkpoint ckpt);
  TrainResult run();
  std::string config_yaml() const { return to_yaml(config_); }
  int64_t step() const { return step_; }

 private:
  void synchronise_weights();
  struct Stop {
    bool signalled = false;    // SIGINT/SIGTERM on some rank
    bool out_of_time = false;  // train.max_minutes spent on some rank
  };
  Stop stop_agreed() const;
  std::vector<bool> on_some_rank(std::vector<bool> flags) const;
  double training_seconds() const;
  void check_weights_agree();
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& t, int micro);
  void optimiser_step();
  void update_online_schedule();
  void write_log_line();
  void save();
  void write_checkpoint();
  sample::Generated ema_samples(uint64_t seed, int64_t num) const;
  void wait_for_rank0();
  void sample_grid();
  void evaluate();
  void settle_owed();
  // A line that cannot be appended (a full disk) stops the run: the log would otherwise end
  // silently while training went on.
  void metrics_line(const nlohmann::ordered_json& line) {
    if (!writes_) return;
    metrics_ << line.dump() << "\n" << std::flush;
    if (!metrics_) throw IoError(run_dir_ + "/metrics.jsonl: cannot append (" + std::strerror(errno) + ")");
  }

  const Config config_;
  const TrainConfig& tc_ = config_.train;
  const std::string run_dir_;
  parallel::ProcessGroup* const group_;  // null: one process
  const bool writes_;                // rank 0 (or the only process) writes the run directory
  const bool resuming_;
  diffusion::Rows rows_;             // this rank's rows of each micro-batch
  std::unique_ptr<parallel::GradientAverager> averager_;
  torch::Device device_{torch::kCPU};
  bool autocast_ = false;
  data::ImageSet dataset_;
  std::unique_ptr<data::Batcher> batcher_;
  model::UNet unet_{nullptr}, ema_{nullptr};
  std::vector<torch::Tensor> params_;  // unet_'s, for clipping
  std::unique_ptr<Adam> adam_;
  NoiseSchedule schedule_;
  std::unique_ptr<sample::OnlineScheduleEstimator> online_;
  std::unique_ptr<diffusion::DiffusionLoss> loss_;
  std::optional<TrainingEvaluation> evaluation_;
  std::ofstream metrics_;
  std::unique_ptr<IntervalSums> sums_;
  int64_t step_ = 0;
  double seconds_before_ = 0;  // training time of the runs this one resumes
  std::chrono::steady_clock::time_point clock_start_ = std::chrono::steady_clock::now();
  double lr_ = 0;
  torch::Tensor last_x0_;
  std::string logged_loss_;
  std::optional<StopSignals> signals_;  // SIGINT/SIGTERM while run() trains
  // The work beside training that the current step still owes: set when the step is done, cleared
  // as each is done. A signal that interrupts it leaves it owed in the checkpoint, and a resumed
  // run does it first, so its metrics are an uninterrupted run's.
  struct Owed {
    bool grid = false, evaluation = false;
  } owed_;
};

Trainer::Trainer(Config config, std::string run_dir, bool resuming, parallel::ProcessGroup* group)
    : config_(std::move(config)),
      run_dir_(std::move(run_dir)),
      group_(group),
      writes_(!group || group->rank() == 0),
      resuming_(resuming),
      schedule_(config_.diffusion) {
  // Ranks on one machine share its cores.
  const int cores = static_cast<int>(std::thread::hardware_concurrency());
  set_cpu_threads(config_.threads > 0 || !group_ ? config_.threads : std::max(1, cores / group_->local_size()));
  device_ = resolve_device(config_.device);
  if (config_.deterministic && device_.is_cuda()) use_deterministic_cuda();
  if (group_ && device_.is_cuda()) {  // one GPU per rank
    device_ = rank_device(device_, group_->local_rank(), static_cast<int>(torch::cuda::device_count()));
    make_current(device_);
  }
  autocast_ = model::bf16_autocast(config_, device_);
  torch::manual_seed(config_.seed);
  spdlog::info("run {}: {} on {} ({} threads{})", run_dir_, resuming ? "resuming" : "training", device_.str(),
               torch::get_num_threads(), autocast_ ? ", bf16 autocast" : "");
  if (group_) {
    const int64_t share = tc_.batch_size / group_->size();
    rows_ = {group_->rank() * share, (group_->rank() + 1) * share};
    spdlog::info("data parallel: rank {} of {} ({}), rows [{}, {}) of each batch of {}", group_->rank(),
                 group_->size(), group_->backend(), rows_.begin, rows_.end, tc_.batch_size);
  }

  dataset_ = data::load_dataset(config_.data);
  spdlog::info("data: {} images of {}x{}x{} from {}", dataset_.images.size(0), dataset_.images.size(1),
               dataset_.images.size(2), dataset_.images.size(3), dataset_.source);
  batcher_ = std::make_unique<data::Batcher>(dataset_, device_, tc_.batch_size, config_.seed, config_.data.random_flip);

  unet_ = model::UNet(config_.model, config_.data.channels, config_.data.image_size);
  ema_ = model::UNet(config_.model, config_.data.channels, config_.data.image_size);
  for (auto* net : {&unet_, &ema_}) {
    (*net)->to(device_);
    (*net)->set_memory_format(model::preferred_memory_format(device_));
  }
  copy_weights(*ema_, *unet_);
  ema_->eval();
  spdlog::info("model: {:.2f} M parameters, {} long skips", model::count_parameters(*unet_) / 1e6,
               model::num_skips(config_.model));

  params_ = unet_->parameters();
  NamedTensors params;
  for (const auto& item : unet_->named_parameters()) params.emplace_back(item.key(), item.value());
  adam_ = std::make_unique<Adam>(params, AdamOptions{tc_.beta1, tc_.beta2, tc_.eps, tc_.weight_decay, tc_.optimizer == "adamw"});
  if (group_)
    averager_ = std::make_unique<parallel::GradientAverager>(*group_, params_,
                                                         static_cast<int64_t>(tc_.distributed.bucket_mb * 1e6));

  if (sample::uses_learned_schedule(config_.sample) && tc_.learned_schedule.every == 0)
    throw ConfigError("sample.timesteps = learned during training needs train.learned_schedule.every > 0");
  if (sample::uses_dp_schedule(config_.sample))
    throw ConfigError("sample.timesteps = dp: dp grids are searched after training (s2dm schedule --method dp, or the "
                      "experiment driver); train with another grid");
  // A bad sample section fails now, not after training.
  sample::plan_sampling(config_.sample, DiffusionModel::of(config_, {}, device_, {{}, "", /*uniform_until_ready=*/true}));
  if (tc_.learned_schedule.every > 0) {
    const auto& ls = tc_.learned_schedule;
    online_ = std::make_unique<sample::OnlineScheduleEstimator>(schedule_, ls.levels, config_.sample.steps,
                                                                ls.min_estimates, ls.gamma);
    // Overhead: 2·pairs·batch network evaluations every `every` steps, against 3 passes (forward
    // and backward) of batch_size·grad_accum images per step.
    spdlog::info("learned schedule: {} pairs x {} images every {} steps (~{:.1f} % of the training compute)",
                 ls.pairs, ls.batch, ls.every,
                 100.0 * 2 * ls.pairs * ls.batch / (3.0 * ls.every * tc_.batch_size * tc_.grad_accum));
  }
  loss_ = std::make_unique<diffusion::DiffusionLoss>(config_.loss, schedule_, device_);
}

void Trainer::resume(Checkpoint ckpt) {
  load_weights(*unet_, ckpt.model, "checkpoint model");
  load_weights(*ema_, ckpt.ema, "checkpoint ema");
  adam_->load_state(ckpt.optimizer);
  restore_rng(ckpt.rng, device_);
  batcher_->seek(std::stoll(ckpt.extra.at("data_epoch")), std::stoll(ckpt.extra.at("data_cursor")));
  if (online_ && !ckpt.schedule.empty()) online_->load_state(ckpt.schedule);
  step_ = ckpt.step;
  if (const auto it = ckpt.extra.find("owed"); it != ckpt.extra.end())
    owed_ = {it->second.find("grid") != std::string::npos, it->second.find("evaluation") != std::string::npos};
  if (const auto it = ckpt.extra.find("train_seconds"); it != ckpt.extra.end()) seconds_before_ = std::stod(it->second);
  spdlog::info("resumed at step {}", step_);
}

void Trainer::save() {
  sums_->check_finite(step_, run_dir_);  // a diverged loss never reaches a checkpoint
  if (writes_) write_checkpoint();
  wait_for_rank0();
}

void Trainer::write_checkpoint() {
  Checkpoint ckpt;
  ckpt.step = step_;
  ckpt.config_yaml = to_yaml(config_);
  ckpt.model = named_weights(*unet_);
  ckpt.ema = named_weights(*ema_);
  ckpt.optimizer = adam_->state();
  ckpt.rng = rng_states(device_);
  ckpt.extra = {{"data_epoch", std::to_string(batcher_->epoch())},
                {"data_cursor", std::to_string(batcher_->cursor())},
                {"train_seconds", std::to_string(training_seconds())}};
  if (owed_.grid || owed_.evaluation)
    ckpt.extra["owed"] = std::string(owed_.grid ? "grid " : "") + (owed_.evaluation ? "evaluation" : "");
  if (online_) ckpt.schedule = online_->state();
  write_rotated_checkpoint(run_dir_, ckpt, tc_.keep_last);
  // A slow file system, as tests simulate it (the other ranks must wait, whatever their timeout).
  if (const char* delay = std::getenv("S2DM_TEST_CHECKPOINT_DELAY"))
    std::this_thread::sleep_for(std::chrono::duration<double>(std::atof(delay)));
}

// EMA samples [0, num) of `seed` for grids and evaluations; a learned grid that is not ready yet
// is the uniform one. Under data parallelism each rank samples its share (image i depends only on
// the seed and i) and every rank receives them all.
// A signal stops the sampling at its next network evaluation (throws SamplingInterrupted).
sample::Generated Trainer::ema_samples(uint64_t seed, int64_t num) const {
  ModelGrids grids;
  if (online_ && online_->has_schedule()) grids.state = online_->state();
  grids.uniform_until_ready = true;
  const auto model =
      DiffusionModel::of(config_, model::unet_eps_model(ema_, autocast_, config_.sample.skip_tuning), device_, grids);
  const auto plan = sample::plan_sampling(config_.sample, model);
  if (!plan.warning.empty()) spdlog::warn("{}", plan.warning);
  auto generate = [&](int64_t first, int64_t count) {
    return sample::generate(model, plan, {seed, first, count, {}}, false,
                            [this] { return signals_ && signals_->requested(); });
  };
  if (!group_) {
    auto all = generate(0, num);
    if (!all.complete) throw SamplingInterrupted{};
    return all;
  }
  const int64_t share = (num + group_->size() - 1) / group_->size();  // (the last share padded)
  auto mine = generate(group_->rank() * share, share);
  // Every rank learns whether some rank stopped before any rank waits for the others' images.
  if (on_some_rank({!mine.complete})[0]) throw SamplingInterrupted{};
  mine.samples = group_->all_gather(mine.samples.to(device_)).flatten(0, 1).slice(0, 0, num).cpu();
  return mine;
}

// Rank 0's own work (writing a checkpoint, measuring FD) may outlast train.distributed.timeout,
// which bounds waiting for a peer that is alive but silent: the others wait for it here, up to a
// day. (Rank 0 dying is noticed at once: the store's connection closes; its launcher stops the
// group when any other rank dies.)
void Trainer::wait_for_rank0() {
  if (group_ && group_->size() > 1) group_->wait_for_all(std::chrono::hours(24));
}

void Trainer::sample_grid() {
  if (tc_.sample_num <= 0) return;
  sums_->check_finite(step_, run_dir_);
  const TrainingStreamGuard stream(device_);
  const auto samples = ema_samples(config_.seed, tc_.sample_num).samples;
  if (!writes_) return;
  const std::string path = sample_grid_path(run_dir_, step_);
  sample::write_grid(path, samples);
  spdlog::info("samples {}", path);
}

void Trainer::evaluate() {
  sums_->check_finite(step_, run_dir_);
  const TrainingStreamGuard stream(device_);
  const auto generated = ema_samples(config_.seed + 1, tc_.eval_num);
  if (writes_) metrics_line(evaluation_->measure(generated, step_));
  wait_for_rank0();
}

// The grid and evaluation the step owes, in that order (each may throw SamplingInterrupted).
void Trainer::settle_owed() {
  if (owed_.grid) {
    sample_grid();
    owed_.grid = false;
  }
  if (owed_.evaluation) {
    evaluate();
    owed_.evaluation = false;
  }
  unet_->train();
}

// The UNet on a micro-batch. Dropout draws from a stream of its own per (seed, step, micro-batch,
// rank), one process being rank 0 of 1: the ranks' masks are independent, and the training stream
// (flips, timesteps, noises of the whole batch) is the same for one process and any number of
// ranks, so a run may resume on another world size.
torch::Tensor Trainer::forward(const torch::Tensor& x, const torch::Tensor& t, int micro) {
  if (config_.model.dropout == 0) return unet_->forward(x, t);
  auto generator = compat::default_generator(device_);
  const auto training_stream = generator.get_state();
  const auto rank = static_cast<uint64_t>(group_ ? group_->rank() : 0);
  generator.set_current_seed(config_.seed * 0x9E3779B97F4A7C15ull + static_cast<uint64_t>(step_ * 1024 + micro) * 4099 +
                             rank + 1);
  auto out = unet_->forward(x, t);
  generator.set_state(training_stream);
  return out;
}

// grad_accum micro-batches of L_simple [+ L_skip], clipping, Adam (with warm-up) and the EMA.
void Trainer::optimiser_step() {
  adam_->zero_grad();
  for (int micro = 0; micro < tc_.grad_accum; ++micro) {
    auto x0 = batcher_->next();
    last_x0_ = x0;
    auto t = diffusion::sample_timesteps(tc_.batch_size, schedule_.num_timesteps(), tc_.antithetic, device_);
    diffusion::LossTerms terms;
    {
      compat::CudaAutocast guard(autocast_, torch::kBFloat16);
      terms = (*loss_)([&](const torch::Tensor& x, const torch::Tensor& tt) { return forward(x, tt, micro); }, x0, t,
                       rows_);
    }
    (terms.loss / tc_.grad_accum).backward();
    sums_->add_micro_batch(terms, tc_.grad_accum);
  }
  double allreduce_seconds = 0;
  if (averager_) {
    averager_->average();
    allreduce_seconds = averager_->last_seconds();
  }
  lr_ = tc_.warmup > 0 ? tc_.lr * std::min(1.0, static_cast<double>(step_ + 1) / tc_.warmup) : tc_.lr;
  sums_->add_step(clip_grad_norm(params_, tc_.grad_clip), allreduce_seconds);
  adam_->step(lr_);
  ema_update(*ema_, *unet_, tc_.ema_decay);
  ++step_;
}

// Algorithm 2's update on the EMA model and the last micro-batch, with its own generator (the
// training RNG stream is untouched); a few evaluations, too few for CUDA graphs to pay. In fp32
// whatever the training precision, as LoadedModel::eps_fp32 (which says why).
void Trainer::update_online_schedule() {
  sums_->check_finite(step_, run_dir_);
  auto gen = at::detail::createCPUGenerator(config_.seed * 0x9E3779B97F4A7C15ull + static_cast<uint64_t>(step_));
  auto ema_model = model::unet_eps_model(ema_, /*bf16=*/false, {}, /*cuda_graphs=*/false);
  const auto& ls = tc_.learned_schedule;
  if (online_->update(ema_model, last_x0_.slice(0, 0, ls.batch), ls.pairs, gen))
    metrics_line({{"step", step_}, {"schedule_timesteps", online_->timesteps()},
                  {"schedule_cost", online_->cost()}, {"schedule_nfe", online_->nfe()}});
}

void Trainer::write_log_line() {
  const auto line = sums_->take_line(step_, lr_, tc_.batch_size * tc_.grad_accum, run_dir_);
  metrics_line(line);
  char loss_text[48];
  std::snprintf(loss_text, sizeof loss_text, "loss %.4f", line["loss"].get<double>());
  logged_loss_ = loss_text;
}

// Rank 0's weights on every rank (as DistributedDataParallel starts): the ranks agree from the
// first step whatever each one built or read.
void Trainer::synchronise_weights() {
  std::vector<torch::Tensor> tensors;
  for (auto* net : {&unet_, &ema_}) {
    for (auto& p : (*net)->parameters()) tensors.push_back(p.data());
    for (auto& b : (*net)->buffers()) tensors.push_back(b);
  }
  torch::NoGradGuard no_grad;
  group_->broadcast(tensors);
}

// Wall-clock seconds in the training loop, over this run and the runs it resumes.
double Trainer::training_seconds() const {
  return seconds_before_ + std::chrono::duration<double>(std::chrono::steady_clock::now() - clock_start_).count();
}

// A stop request (SIGINT/SIGTERM) or a spent time budget on any rank stops every rank at the same
// step (the ranks' clocks differ a little). Ranks agree every kStopCheckSteps steps only: agreeing
// reads an all-reduce on the host, which at every step would keep the CPU from running ahead of
// the GPU. One process checks every step.
Trainer::Stop Trainer::stop_agreed() const {
  if (group_ && group_->size() > 1 && step_ % kStopCheckSteps != 0) return {};
  const auto agreed = on_some_rank(
      {signals_->requested(), tc_.max_minutes > 0 && training_seconds() >= 60 * tc_.max_minutes});
  return {agreed[0], agreed[1]};
}

// Which of this rank's flags hold on some rank (on every rank alike).
std::vector<bool> Trainer::on_some_rank(std::vector<bool> flags) const {
  if (!group_ || group_->size() == 1) return flags;
  std::vector<float> values(flags.begin(), flags.end());
  std::vector<torch::Tensor> summed{torch::tensor(values, torch::TensorOptions(device_))};
  group_->all_reduce_sum(summed);
  const auto agreed = summed[0].cpu();
  for (size_t i = 0; i < flags.size(); ++i) flags[i] = agreed[static_cast<int64_t>(i)].item<float>() > 0;
  return flags;
}

// The end of a data-parallel run proves the ranks' weights equal: a checksum of every
// parameter, compared over the ranks.
void Trainer::check_weights_agree() {
  std::vector<torch::Tensor> sums;
  for (const auto& p : unet_->parameters()) sums.push_back(p.detach().to(torch::kFloat64).sum());
  const auto all = group_->all_gather(torch::stack(sums)).cpu();
  for (int r = 1; r < group_->size(); ++r)
    if (!torch::equal(all[r], all[0]))
      throw std::runtime_error("the weights of rank " + std::to_string(r) + " differ from rank 0's after step " +
                               std::to_string(step_) + " (an internal error: the ranks drifted apart)");
  spdlog::info("weights identical on all {} ranks (checksum {:.17g})", group_->size(), all[0].sum().item<double>());
}

TrainResult Trainer::run() {
  if (writes_) {
    metrics_.open(run_dir_ + "/metrics.jsonl", std::ios::app);
    if (!metrics_) throw IoError(run_dir_ + "/metrics.jsonl: cannot open (" + std::strerror(errno) + ")");
  }
  if (writes_ && tc_.eval_every > 0) {
    const TrainingStreamGuard stream(device_);  // (the feature network's initialisation draws)
    evaluation_.emplace(tc_, dataset_.images, device_);
  }
  wait_for_rank0();  // (the reference features)
  if (group_) synchronise_weights();
  sums_ = std::make_unique<IntervalSums>(device_, group_);  // (its clock starts now)
  signals_.emplace();
  const int64_t start_step = step_;
  std::optional<Progress> progress;
  if (writes_) progress.emplace("train", tc_.steps - start_step, "step");
  if (progress && tc_.max_minutes > 0) progress->end_within(60 * tc_.max_minutes - seconds_before_);
  unet_->train();
  auto every = [&](int64_t n) { return n > 0 && step_ % n == 0 && step_ != tc_.steps; };

  clock_start_ = std::chrono::steady_clock::now();
  try {
    if (owed_.grid || owed_.evaluation) {  // what an interrupted run owed at the step it resumes
      settle_owed();
      save();  // (the checkpoint owes nothing now)
    }
    while (step_ < tc_.steps) {
      const Stop stop = stop_agreed();
      if (stop.signalled) {
        spdlog::warn("{}: writing a checkpoint at step {} and stopping",
                     signals_->requested() ? "signal " + std::to_string(signals_->signal()) + " received"
                                           : "another rank was signalled",
                     step_);
        save();
        return {run_dir_, step_, true};
      }
      if (stop.out_of_time) {  // a finished run, shorter than train.steps
        spdlog::info("train.max_minutes={:g} spent: training ends at step {} of {}", tc_.max_minutes, step_, tc_.steps);
        break;
      }
      optimiser_step();
      if (online_ && step_ % tc_.learned_schedule.every == 0) update_online_schedule();
      if (progress) progress->update(step_ - start_step, logged_loss_);
      if (step_ % tc_.log_every == 0 || step_ == tc_.steps) write_log_line();
      if (every(tc_.ckpt_every)) save();
      owed_ = {every(tc_.sample_every), tc_.eval_every > 0 && every(tc_.eval_every)};
      settle_owed();
    }
    if (progress) progress->finish();
    if (step_ > start_step || !resuming_) {  // the end of training: its checkpoint, grid and evaluation
      save();
      owed_ = {true, tc_.eval_every > 0 && step_ > start_step};
      settle_owed();
    }
  } catch (const SamplingInterrupted&) {  // (a grid or an evaluation, mid-run or after the last step)
    spdlog::warn("signal received while sampling at step {}: writing a checkpoint (a resumed run does the {} first) "
                 "and stopping",
                 step_, owed_.grid ? "grid" : "evaluation");
    save();
    return {run_dir_, step_, true};
  }
  if (group_) check_weights_agree();
  return {run_dir_, step_, false};
}

// How a run starts in its directory.
struct RunStart {
  Config config;
  std::optional<Checkpoint> checkpoint;  // resumed from
  bool clear = false;                    // s2dm's files there go first: a restart or --overwrite
  bool restart = false;                  // of a run stopped before its first checkpoint
};

// What `s2dm train` does with the directory (run_directory.h says why); throws a user error where
// it refuses. With `load`, reads what the run continues from.
RunStart plan_start(const RunDirectory& dir, const Config& given, const TrainOptions& opts, bool load) {
  RunStart start{given, std::nullopt, false, false};
  const std::string& path = dir.path;
  if (std::error_code ec; fs::exists(path, ec) && !fs::is_directory(path, ec))
    throw ConfigError(path + ": is a file, not a directory (a run directory is a folder)");
  if (!dir.blocked.empty() && dir.is_run())  // (a directory that is not s2dm's is refused as such below)
    throw ConfigError(dir.blocked + ": a file or a symbolic link where s2dm keeps a folder of its own (it writes and "
                                    "removes files there): move it away");
  if (!dir.checkpoints.empty()) {
    if (opts.resume) {
      if (load) {
        start.checkpoint = newest_checkpoint(dir).checkpoint;
        start.config = parse_config(start.checkpoint->config_yaml, path + " (checkpoint config)", opts.overrides);
      }
    } else if (opts.overwrite) {
      start.clear = true;
    } else {
      throw ConfigError(path + ": run directory exists, with checkpoints (use --resume to continue it or --overwrite to "
                               "replace it)");
    }
    return start;
  }
  if (dir.empty()) {
    if (opts.resume) throw CheckpointError(latest_checkpoint(path) + ": no checkpoint to resume from");
    return start;
  }
  if (!dir.is_run())
    throw ConfigError(path + ": not an s2dm run directory (it holds " + dir.foreign_list() +
                      "): s2dm trains into a new or empty directory, or one of its own, and never removes what it did "
                      "not write; choose another --run-dir");
  start.clear = true;
  if (opts.overwrite) return start;
  if (!dir.restartable())
    throw ConfigError(path + ": a run stopped before its first checkpoint, but the directory also holds what s2dm did not "
                             "write (" + dir.foreign_list() + "): remove that, or use --overwrite to replace s2dm's files "
                             "and keep it");
  start.restart = true;
  if (opts.resume) {  // from the config it ran
    const std::string config = path + "/config.yaml";
    if (auto why = why_not_a_file(config); !why.empty())
      throw ConfigError(config + " " + why + ": the run stopped before writing its config; start it with --config");
    start.config = load_config(config, opts.overrides);
  }
  return start;
}

// The process group of a data-parallel run, from the launch environment; null for one process.
std::unique_ptr<parallel::ProcessGroup> join_group(const Config& config, const std::optional<parallel::Launch>& launch) {
  if (!launch) return nullptr;
  spdlog::set_pattern("[%H:%M:%S] [rank " + std::to_string(launch->rank) + "] %^%l%$ %v");
  if (launch->rank > 0) spdlog::set_level(spdlog::level::warn);  // rank 0 tells the story
  const auto& dc = config.train.distributed;
  if (config.train.batch_size % launch->world_size != 0)
    throw ConfigError("train.batch_size=" + std::to_string(config.train.batch_size) + " is not divisible by WORLD_SIZE=" +
                      std::to_string(launch->world_size) + " (each rank takes an equal share of every batch)");
  const bool cuda = resolve_device(config.device).is_cuda();
  std::string backend = dc.backend == "auto" ? (cuda ? "nccl" : "gloo") : dc.backend;
  if (backend == "nccl" && !cuda)
    throw ConfigError("train.distributed.backend=nccl needs CUDA devices, but device '" + config.device +
                      "' is the CPU here (use gloo)");
  auto group = std::make_unique<parallel::ProcessGroup>(
      *launch, backend, std::chrono::milliseconds(static_cast<int64_t>(dc.timeout * 1000)));
  // Every rank must train the same thing (threads may differ between machines).
  Config shared = config;
  shared.threads = 0;
  group->check_same("configs", to_yaml(shared));
  return group;
}

}  // namespace

TrainResult run_training(const Config& given, const TrainOptions& opts) {
  const std::string run_dir = opts.run_dir.empty() ? "runs/" + given.name : opts.run_dir;
  const auto launch = parallel::launch_from_environment();
  const bool writer = !launch || launch->rank == 0;  // rank 0 alone writes the run directory
  // Nothing is written until the run is accepted: its directory's shape, the checkpoint and the
  // config, the data, the model and the resumed state. Until then the log is kept in memory.
  std::optional<LogFile> log_file;
  if (writer) log_file.emplace();
  plan_start(inspect_run_directory(run_dir), given, opts, false);  // a refusal that needs no lock touches nothing
  std::optional<RunDirectoryLock> lock;
  if (writer) {
    lock.emplace(run_dir);
    if (int n = remove_dead_writers_temporaries(run_dir))
      spdlog::info("{}: removed {} temporary file(s) of an earlier run that was killed while writing", run_dir, n);
  }
  // (Every rank reads the checkpoint: on several machines, from a shared file system.)
  const RunDirectory dir = inspect_run_directory(run_dir);
  RunStart start = plan_start(dir, given, opts, true);
  if (start.restart)
    spdlog::warn("{}: stopped before its first checkpoint, so there is nothing to continue: starting it again", run_dir);
  if (opts.steps >= 0) start.config.train.steps = opts.steps;
  const auto group = join_group(start.config, launch);
  const bool resume = start.checkpoint.has_value();
  // (Ranks that see the directory differently would resume at different steps and fall out of step.)
  if (group) group->check_same("resumed steps", resume ? std::to_string(start.checkpoint->step) : "none");
  Trainer trainer(std::move(start.config), run_dir, resume, group.get());
  if (resume) trainer.resume(std::move(*start.checkpoint));

  if (writer) {  // accepted
    lock->accept();
    if (start.clear) clear_run_directory(dir);
    mark_run_directory(run_dir);  // (first: whenever this stops, what is there is recognisably s2dm's)
    fs::create_directories(checkpoint_dir(run_dir));
    fs::create_directories(samples_dir(run_dir));
    write_file_atomic(run_dir + "/config.yaml", trainer.config_yaml());
    log_file->open(run_dir + "/log.txt");
    if (resume) truncate_metrics(run_dir + "/metrics.jsonl", trainer.step());
  }
  auto result = trainer.run();
  result.rank = group ? group->rank() : 0;
  return result;
}

}  // namespace s2dm::train
