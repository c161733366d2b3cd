// How `s2dm train` starts a run: its directory (new, resumed, restarted or replaced), the
// process group of a data-parallel run, then the Trainer.
#include <spdlog/spdlog.h>

#include <filesystem>
#include <optional>

#include "metrics.h"
#include "s2dm/core/device.h"
#include "s2dm/core/errors.h"
#include "s2dm/core/progress.h"
#include "s2dm/io/file_io.h"
#include "trainer.h"

namespace s2dm::train {
namespace fs = std::filesystem;

void check_trainable(const Config& config, const std::string& origin) {
  const auto& m = config.model;
  const std::string loss = "loss.type = '" + config.loss.type + "'";
  if (config.diffusion.process == "psld") {
    if (config.loss.type != "hsm")
      throw ConfigError(origin + ": " + loss + " with diffusion.process psld: PSLD models train with loss.type hsm "
                        "(hybrid score matching)");
    if (config.train.learned_schedule.every > 0)
      throw ConfigError(origin + ": train.learned_schedule.every = " + std::to_string(config.train.learned_schedule.every) +
                        ": the online schedule estimate is DDPM's; PSLD models sample on their own time grids");
    return;
  }
  if (m.type == "ddpm") {
    if (config.loss.type == "edm")
      throw ConfigError(origin + ": " + loss + " trains EDM's networks (model.type songunet or dhariwalunet); the DDPM "
                        "UNet trains with loss.type simple or s2dm");
    return;
  }
  const std::string network = "model.type = '" + m.type + "'";
  if (config.loss.type == "s2dm")
    throw ConfigError(origin + ": " + loss + " with " + network + ": L_skip is defined on DDPM's discrete timesteps "
                      "and s2dm does not derive it for EDM's preconditionings; train EDM's networks with loss.type edm");
  if (config.loss.type != "edm")
    throw ConfigError(origin + ": " + loss + " with " + network + ": EDM's networks train with loss.type edm, the "
                      "preconditioning's own loss (EDM's VPLoss, VELoss or EDMLoss)");
  if (m.edm.label_dim > 0)
    throw ConfigError(origin + ": model.edm.label_dim = " + std::to_string(m.edm.label_dim) +
                      ": s2dm trains unconditional EDM networks only (label_dim 0)");
  if (m.edm.augment_dim > 0)
    throw ConfigError(origin + ": model.edm.augment_dim = " + std::to_string(m.edm.augment_dim) +
                      ": EDM's augmentation pipeline is not in s2dm; train with augment_dim 0");
  if (m.edm.precond == "iddpm")
    throw ConfigError(origin + ": model.edm.precond = 'iddpm': EDM defines no loss for iDDPM's preconditioning (it "
                      "trains vp, ve and edm models); converted iDDPM models are sampled, not trained");
}

namespace {

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
  check_trainable(given, "train");
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

// The process group of a data-parallel run, from the launch environment; for one process, a group
// of one whose collectives do nothing.
std::unique_ptr<parallel::ProcessGroup> join_group(const Config& config, const std::optional<parallel::Launch>& launch) {
  if (!launch) return std::make_unique<parallel::ProcessGroup>();
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
  group->check_same("resumed steps", resume ? std::to_string(start.checkpoint->step) : "none");
  Trainer trainer(std::move(start.config), run_dir, resume, *group);
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
  result.rank = group->rank();
  return result;
}

}  // namespace s2dm::train
