#include "trainer.h"

#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include <cmath>
#include <filesystem>
#include <thread>

#include "s2dm/core/compat.h"
#include "s2dm/core/device.h"
#include "s2dm/core/progress.h"
#include "s2dm/io/file_io.h"
#include "s2dm/model/model_source.h"

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

}  // namespace

Trainer::Trainer(Config config, std::string run_dir, bool resuming, parallel::ProcessGroup& group)
    : config_(std::move(config)),
      run_dir_(std::move(run_dir)),
      group_(group),
      writes_(group.rank() == 0),
      resuming_(resuming),
      schedule_(noise_schedule_of(config_)) {
  // Ranks on one machine share its cores.
  const int cores = static_cast<int>(std::thread::hardware_concurrency());
  set_cpu_threads(config_.threads > 0 ? config_.threads : std::max(1, cores / group_.local_size()));
  device_ = resolve_device(config_.device);
  if (group_.launched() && device_.is_cuda()) {  // one GPU per rank
    device_ = rank_device(device_, group_.local_rank(), static_cast<int>(torch::cuda::device_count()));
    make_current(device_);
  }
  autocast_ = model::bf16_autocast(config_, device_);
  torch::manual_seed(config_.seed);
  spdlog::info("run {}: {} on {} ({} threads{})", run_dir_, resuming ? "resuming" : "training", device_.str(),
               torch::get_num_threads(), autocast_ ? ", bf16 autocast" : "");
  if (group_.launched()) {
    const int64_t share = tc_.batch_size / group_.size();
    rows_ = {group_.rank() * share, (group_.rank() + 1) * share};
    spdlog::info("data parallel: rank {} of {} ({}), rows [{}, {}) of each batch of {}", group_.rank(),
                 group_.size(), group_.backend(), rows_.begin, rows_.end, tc_.batch_size);
  }

  dataset_ = data::load_dataset(config_.data);
  spdlog::info("data: {} images of {}x{}x{} from {}", dataset_.images.size(0), dataset_.images.size(1),
               dataset_.images.size(2), dataset_.images.size(3), dataset_.source);
  batcher_ = std::make_unique<data::Batcher>(dataset_, device_, tc_.batch_size, config_.seed, config_.data.random_flip);

  net_ = model::make_network(config_);
  ema_ = model::make_network(config_);
  for (auto* net : {&net_, &ema_}) {
    net->module->to(device_);
    if (auto unet = net->unet()) unet->set_memory_format(model::preferred_memory_format(device_));
  }
  optim::copy_weights(*ema_.module, *net_.module);
  ema_.module->eval();
  spdlog::info("model: {} network, {:.2f} M parameters, {} long skips", config_.model.type,
               model::count_parameters(*net_.module) / 1e6, net_.num_skips);

  params_ = net_.module->parameters();
  NamedTensors params;
  for (const auto& item : net_.module->named_parameters()) params.emplace_back(item.key(), item.value());
  adam_ = std::make_unique<optim::Adam>(
      params, optim::AdamOptions{tc_.beta1, tc_.beta2, tc_.eps, tc_.weight_decay, tc_.optimizer == "adamw"});
  if (group_.launched())
    averager_ = std::make_unique<parallel::GradientAverager>(group_, params_,
                                                         static_cast<int64_t>(tc_.distributed.bucket_mb * 1e6));

  if (sample::uses_learned_grid(config_.sample) && tc_.learned_schedule.every == 0)
    throw ConfigError("sample.timesteps = learned during training needs train.learned_schedule.every > 0");
  if (sample::uses_dp_grid(config_.sample))
    throw ConfigError("sample.timesteps = dp: dp grids are searched after training (s2dm schedule --method dp, or the "
                      "experiment driver); train with another grid");
  // A bad sample section fails now, not after training.
  sample::plan_sampling(config_.sample, DiffusionModel::of(config_, {}, device_, {{}, "", /*uniform_until_ready=*/true}));
  if (tc_.learned_schedule.every > 0) {
    const auto& ls = tc_.learned_schedule;
    online_ = std::make_unique<sample::OnlineGridEstimator>(schedule_, ls.levels, config_.sample.steps,
                                                                ls.min_estimates, ls.gamma);
    // Overhead: 2·pairs·batch network evaluations every `every` steps, against 3 passes (forward
    // and backward) of batch_size·grad_accum images per step.
    spdlog::info("learned schedule: {} pairs x {} images every {} steps (~{:.1f} % of the training compute)",
                 ls.pairs, ls.batch, ls.every,
                 100.0 * 2 * ls.pairs * ls.batch / (3.0 * ls.every * tc_.batch_size * tc_.grad_accum));
  }
  if (config_.diffusion.process == "psld")
    hsm_loss_ = std::make_unique<HsmLoss>(PsldProcess(config_.diffusion.psld), config_.diffusion.psld.t_min);
  else if (config_.model.type == "ddpm")
    loss_ = std::make_unique<diffusion::DiffusionLoss>(config_.loss, schedule_, device_, tc_.antithetic);
  else
    denoiser_loss_ = std::make_unique<diffusion::DenoiserLoss>(Preconditioning::of(config_.model.edm), config_.loss);
}

void Trainer::resume(Checkpoint ckpt) {
  load_weights(*net_.module, ckpt.model, "checkpoint model");
  load_weights(*ema_.module, ckpt.ema, "checkpoint ema");
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
  ckpt.model = named_weights(*net_.module);
  ckpt.ema = named_weights(*ema_.module);
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
  if (online_ && online_->has_grid()) grids.state = online_->state();
  grids.uniform_until_ready = true;
  const auto eps = model::network_eps_model(ema_, config_, device_, autocast_, config_.sample.skip_tuning);
  const auto model = DiffusionModel::of(config_, eps, device_, grids);
  const auto plan = sample::plan_sampling(config_.sample, model);
  if (!plan.warning.empty()) spdlog::warn("{}", plan.warning);
  auto generate = [&](int64_t first, int64_t count) {
    return sample::generate(model, plan, {seed, first, count, {}}, false,
                            [this] { return signals_ && signals_->requested(); });
  };
  const int64_t share = (num + group_.size() - 1) / group_.size();  // (the last share padded)
  auto mine = generate(group_.rank() * share, share);
  // Every rank learns whether some rank stopped before any rank waits for the others' images.
  if (on_some_rank({!mine.complete})[0]) throw SamplingInterrupted{};
  if (group_.size() > 1)
    mine.samples = group_.all_gather(mine.samples.to(device_)).flatten(0, 1).slice(0, 0, num).cpu();
  return mine;
}

// Rank 0's own work (writing a checkpoint, measuring FD) may outlast train.distributed.timeout,
// which bounds waiting for a peer that is alive but silent: the others wait for it here, up to a
// day. (Rank 0 dying is noticed at once: the store's connection closes; its launcher stops the
// group when any other rank dies.)
void Trainer::wait_for_rank0() {
  group_.wait_for_all(std::chrono::hours(24));
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
  net_.module->train();
}

// The network on a micro-batch, at its noise levels (t for the UNet, c_noise for EDM's networks).
// Dropout draws from a stream of its own per (seed, step, micro-batch, rank), one process being
// rank 0 of 1: the ranks' masks are independent, and the training stream (flips, noise levels,
// noises of the whole batch) is the same for one process and any number of ranks, so a run may
// resume on another world size.
torch::Tensor Trainer::forward(const torch::Tensor& x, const torch::Tensor& noise, int micro) {
  if (config_.model.dropout == 0) return net_.forward(x, noise, {}, {});
  auto generator = compat::default_generator(device_);
  const auto training_stream = generator.get_state();
  const auto rank = static_cast<uint64_t>(group_.rank());
  generator.set_current_seed(config_.seed * 0x9E3779B97F4A7C15ull + static_cast<uint64_t>(step_ * 1024 + micro) * 4099 +
                             rank + 1);
  auto out = net_.forward(x, noise, {}, {});
  generator.set_state(training_stream);
  return out;
}

// The loss of a micro-batch: DDPM's of its timesteps, EDM's of its noise levels, or PSLD's of its
// continuous times (each draws them).
diffusion::LossTerms Trainer::loss_terms(const torch::Tensor& x0, int micro) {
  const auto network = [&](const torch::Tensor& x, const torch::Tensor& noise) { return forward(x, noise, micro); };
  if (hsm_loss_) {
    compat::CudaAutocast guard(autocast_, torch::kBFloat16);
    return (*hsm_loss_)(
        [&](const torch::Tensor& z, const torch::Tensor& t) { return network(z, model::psld_noise_input(config_, t)); },
        x0, rows_);
  }
  if (denoiser_loss_) {
    compat::CudaAutocast guard(autocast_, torch::kBFloat16);
    return (*denoiser_loss_)(network, x0, rows_);
  }
  auto t = loss_->draw_timesteps(tc_.batch_size);
  compat::CudaAutocast guard(autocast_, torch::kBFloat16);
  return (*loss_)(network, x0, t, rows_);
}

// grad_accum micro-batches of the loss, clipping, Adam (with warm-up) and the EMA.
void Trainer::optimiser_step() {
  adam_->zero_grad();
  for (int micro = 0; micro < tc_.grad_accum; ++micro) {
    auto x0 = batcher_->next();
    last_x0_ = x0;
    const auto terms = loss_terms(x0, micro);
    (terms.loss / tc_.grad_accum).backward();
    sums_->add_micro_batch(terms, tc_.grad_accum);
  }
  double allreduce_seconds = 0;
  if (averager_) {
    averager_->average();
    allreduce_seconds = averager_->last_seconds();
  }
  lr_ = tc_.warmup > 0 ? tc_.lr * std::min(1.0, static_cast<double>(step_ + 1) / tc_.warmup) : tc_.lr;
  sums_->add_step(optim::clip_grad_norm(params_, tc_.grad_clip), allreduce_seconds);
  adam_->step(lr_);
  optim::ema_update(*ema_.module, *net_.module, tc_.ema_decay);
  ++step_;
}

// Algorithm 2's update on the EMA model and the last micro-batch, with its own generator (the
// training RNG stream is untouched); a few evaluations, too few for CUDA graphs to pay. In fp32
// whatever the training precision, as LoadedModel::eps_fp32 (which says why).
void Trainer::update_online_grid() {
  sums_->check_finite(step_, run_dir_);
  auto gen = at::detail::createCPUGenerator(config_.seed * 0x9E3779B97F4A7C15ull + static_cast<uint64_t>(step_));
  auto ema_model = model::network_eps_model(ema_, config_, device_, /*bf16=*/false, {}, /*cuda_graphs=*/false).eps;
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
  for (auto* net : {&net_, &ema_}) {
    for (auto& p : net->module->parameters()) tensors.push_back(p.data());
    for (auto& b : net->module->buffers()) tensors.push_back(b);
  }
  torch::NoGradGuard no_grad;
  group_.broadcast(tensors);
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
  if (group_.size() > 1 && step_ % kStopCheckSteps != 0) return {};
  const auto agreed = on_some_rank(
      {signals_->requested(), tc_.max_minutes > 0 && training_seconds() >= 60 * tc_.max_minutes});
  return {agreed[0], agreed[1]};
}

// Which of this rank's flags hold on some rank (on every rank alike).
std::vector<bool> Trainer::on_some_rank(std::vector<bool> flags) const {
  if (group_.size() == 1) return flags;
  std::vector<float> values(flags.begin(), flags.end());
  std::vector<torch::Tensor> summed{torch::tensor(values, torch::TensorOptions(device_))};
  group_.all_reduce_sum(summed);
  const auto agreed = summed[0].cpu();
  for (size_t i = 0; i < flags.size(); ++i) flags[i] = agreed[static_cast<int64_t>(i)].item<float>() > 0;
  return flags;
}

// The end of a data-parallel run proves the ranks' weights equal: a checksum of every
// parameter, compared over the ranks.
void Trainer::check_weights_agree() {
  std::vector<torch::Tensor> sums;
  for (const auto& p : net_.module->parameters()) sums.push_back(p.detach().to(torch::kFloat64).sum());
  const auto all = group_.all_gather(torch::stack(sums)).cpu();
  for (int r = 1; r < group_.size(); ++r)
    if (!torch::equal(all[r], all[0]))
      throw std::runtime_error("the weights of rank " + std::to_string(r) + " differ from rank 0's after step " +
                               std::to_string(step_) + " (an internal error: the ranks drifted apart)");
  spdlog::info("weights identical on all {} ranks (checksum {:.17g})", group_.size(), all[0].sum().item<double>());
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
  synchronise_weights();  // (nothing to do alone)
  sums_ = std::make_unique<IntervalSums>(device_, group_);  // (its clock starts now)
  signals_.emplace();
  const int64_t start_step = step_;
  std::optional<Progress> progress;
  if (writes_) progress.emplace("train", tc_.steps - start_step, "step");
  if (progress && tc_.max_minutes > 0) progress->end_within(60 * tc_.max_minutes - seconds_before_);
  net_.module->train();
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
      if (online_ && step_ % tc_.learned_schedule.every == 0) update_online_grid();
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
  if (group_.launched()) check_weights_agree();
  return {run_dir_, step_, false};
}

}  // namespace s2dm::train
