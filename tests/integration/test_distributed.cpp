// Data-parallel training on c10d's Gloo group, end to end on the tiny config (1 thread per rank):
// N ranks train as one process does, checkpoints move between world sizes, a killed rank stops
// the others in bounded time, and bad launches are user errors.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <torch/torch.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <cmath>
#include <cstdlib>
#include <functional>
#include <tuple>
#include <sstream>
#include <nlohmann/json.hpp>

#include "../test_util.h"
#include "s2dm/io/checkpoint.h"

using namespace s2dm;
using s2dm::testing::expect_user_error;
using s2dm::testing::read_bytes;
using s2dm::testing::Result;
using s2dm::testing::run;
using s2dm::testing::run_shell;
using s2dm::testing::TempDir;

namespace {

using s2dm::testing::kTiny;

// A loopback port nobody listens on now (the kernel's pick).
int free_port() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  socklen_t len = sizeof addr;
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  close(fd);
  return ntohs(addr.sin_port);
}

// How far two runs' weights are apart, relative to the weights' scale: the largest |a - b| over
// the largest |a| of the whole model (a tensor that starts at zero, such as a GroupNorm bias, is
// measured on the model's scale, not on its own: its few 1e-4 after 5 steps would turn the
// rounding of its cancelling gradient sums into ~1e-5), and ||a - b|| / ||a|| over every weight.
struct Difference {
  double max_element = 0, norm = 0;
};
Difference relative_difference(const NamedTensors& a, const NamedTensors& b) {
  EXPECT_EQ(a.size(), b.size());
  double scale = 1e-30, max_diff = 0, diff_sq = 0, norm_sq = 0;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) {
    EXPECT_EQ(a[i].first, b[i].first);
    const auto x = a[i].second.to(torch::kFloat64), d = x - b[i].second.to(torch::kFloat64);
    scale = std::max(scale, x.abs().max().item<double>());
    max_diff = std::max(max_diff, d.abs().max().item<double>());
    diff_sq += d.square().sum().item<double>();
    norm_sq += x.square().sum().item<double>();
  }
  return {max_diff / scale, std::sqrt(diff_sq / std::max(norm_sq, 1e-30))};
}

// S2DM_DETERMINISTIC=1 for the s2dm processes that a test starts while it lives.
struct DeterministicCuda {
  DeterministicCuda() { setenv("S2DM_DETERMINISTIC", "1", 1); }
  ~DeterministicCuda() { unsetenv("S2DM_DETERMINISTIC"); }
  DeterministicCuda(const DeterministicCuda&) = delete;
  DeterministicCuda& operator=(const DeterministicCuda&) = delete;
};

class DataParallel : public ::testing::Test {
 protected:
  void SetUp() override {
    std::filesystem::create_directories(dir / "fmnist");
    s2dm::testing::write_fake_fmnist(dir / "fmnist", 16);
    // Dropout off: its masks are drawn per rank, so only without it are N ranks one process.
    // Adam's eps 1e-4 rather than 1e-8: some gradients are zero up to rounding (~1e-10, e.g. of a
    // convolution's bias that a GroupNorm cancels), and eps 1e-8 turns them into steps of ±lr,
    // so the order of summation alone would move those weights by O(lr). With eps 1e-4 an update
    // is linear in such gradients. Measured over seeds 1, 2, 3, 7 and 1 or 2 threads per rank: a
    // largest element difference of 0.6-1.2e-7 of the largest weight, and ||a - b|| / ||a|| of
    // 1.8-2.4e-8 (80x and 400x inside the bounds).
    common = "--config " + kTiny + " --set data.path=" + (dir / "fmnist") +
             " --set model.dropout=0 --set train.eps=1e-4 --set train.distributed.timeout=30 ";
  }

  // Starts `world` ranks with the environment variables torchrun (or with `slurm`, srun) gives
  // them, rank r with `args(r)`, and waits for all; rank r's result is element r.
  std::vector<Result> launch(int world, const std::function<std::string(int)>& args, bool slurm = false) {
    const int port = free_port();
    std::string script = "cd " + dir.path() + "; ";
    for (int r = 0; r < world; ++r) {
      const std::string rank = std::to_string(r), size = std::to_string(world);
      const std::string place = slurm ? "SLURM_PROCID=" + rank + " SLURM_NTASKS=" + size + " SLURM_LOCALID=" + rank +
                                            " SLURM_NTASKS_PER_NODE=" + size
                                      : "RANK=" + rank + " WORLD_SIZE=" + size + " LOCAL_RANK=" + rank +
                                            " LOCAL_WORLD_SIZE=" + size;
      script += "(" + place + " MASTER_ADDR=127.0.0.1 MASTER_PORT=" + std::to_string(port) + " " + S2DM_BINARY + " " +
                args(r) + " > rank" + rank + ".log 2>&1; echo $? > rank" + rank + ".code) & ";
    }
    run_shell(script + "wait");
    std::vector<Result> out;
    for (int r = 0; r < world; ++r)
      out.push_back({std::stoi(read_bytes(dir / ("rank" + std::to_string(r) + ".code"))),
                     read_bytes(dir / ("rank" + std::to_string(r) + ".log"))});
    return out;
  }

  Checkpoint latest(const std::string& run_dir) { return load_checkpoint(run_dir + "/checkpoints/latest.ckpt"); }

  // Both runs ended at `step` with the same weights up to the order of float summation.
  void expect_same_training(const std::string& a_dir, const std::string& b_dir, int64_t step) {
    auto a = latest(a_dir), b = latest(b_dir);
    EXPECT_EQ(a.step, step);
    EXPECT_EQ(b.step, step);
    for (const auto& [name, x, y] : {std::tuple{"model", &a.model, &b.model}, std::tuple{"ema", &a.ema, &b.ema}}) {
      const auto d = relative_difference(*x, *y);
      EXPECT_LT(d.max_element, 1e-5) << name;
      EXPECT_LT(d.norm, 1e-5) << name;
    }
  }

  TempDir dir;
  std::string common;
};

}  // namespace

TEST_F(DataParallel, TwoRanksTrainAsOneProcess) {
  ASSERT_EQ(run("train " + common + "--steps 5 --run-dir " + (dir / "one")).code, 0);
  // Rank 1 is given a run directory of its own: it must write nothing there.
  auto ranks = launch(2, [&](int r) { return "train " + common + "--steps 5 --run-dir " + (dir / (r ? "other" : "two")); });
  ASSERT_EQ(ranks[0].code, 0) << ranks[0].output;
  ASSERT_EQ(ranks[1].code, 0) << ranks[1].output;
  EXPECT_NE(ranks[0].output.find("weights identical on all 2 ranks"), std::string::npos) << ranks[0].output;
  EXPECT_FALSE(std::filesystem::exists(dir / "other"));
  expect_same_training(dir / "one", dir / "two", 5);

  // The logged loss is the whole batch's: the same as one process's.
  auto last_line = [&](const std::string& run_dir) {
    auto text = read_bytes(run_dir + "/metrics.jsonl");
    text.pop_back();
    return nlohmann::json::parse(text.substr(text.rfind('\n') + 1));
  };
  EXPECT_NEAR(last_line(dir / "one")["loss"].get<double>(), last_line(dir / "two")["loss"].get<double>(), 1e-5);
}

TEST_F(DataParallel, CheckpointsResumeAcrossWorldSizes) {
  ASSERT_EQ(run("train " + common + "--steps 6 --run-dir " + (dir / "straight")).code, 0);
  // 2 ranks (started by --nproc) to step 3, then one process to step 6.
  auto r = run("train " + common + "--steps 3 --nproc 2 --run-dir " + (dir / "two_then_one"));
  ASSERT_EQ(r.code, 0) << r.output;
  r = run("train --resume --steps 6 --run-dir " + (dir / "two_then_one"));
  ASSERT_EQ(r.code, 0) << r.output;
  expect_same_training(dir / "straight", dir / "two_then_one", 6);
  // One process to step 3, then 2 ranks to step 6.
  ASSERT_EQ(run("train " + common + "--steps 3 --run-dir " + (dir / "one_then_two")).code, 0);
  r = run("train --resume --steps 6 --nproc 2 --run-dir " + (dir / "one_then_two"));
  ASSERT_EQ(r.code, 0) << r.output;
  expect_same_training(dir / "straight", dir / "one_then_two", 6);
  auto metrics = read_bytes(dir / "one_then_two/metrics.jsonl");
  EXPECT_EQ(std::count(metrics.begin(), metrics.end(), '\n'), 6);
}

TEST_F(DataParallel, NprocForwardsSignalsAndEveryRankStopsAtOneStep) {
  // timeout sends SIGTERM to the launcher after 8 s; it forwards it, the ranks agree on a step,
  // rank 0 writes its checkpoint, and every rank exits with 130. The ranks agree on stops every
  // 10 steps (not every step, which would sync host and device each step): the stop is at one.
  auto r = run_shell("timeout --preserve-status -s TERM 8 " + std::string(S2DM_BINARY) + " train " + common +
                     "--set train.steps=1000000 --set train.ckpt_every=1000000 --nproc 2 --run-dir " + (dir / "run"));
  EXPECT_EQ(r.code, 130) << r.output;
  const int64_t stopped_at = latest(dir / "run").step;
  EXPECT_GT(stopped_at, 0) << r.output;
  EXPECT_EQ(stopped_at % 10, 0) << r.output;
}

TEST_F(DataParallel, KilledRankStopsTheOthersAndTheCheckpointResumes) {
  const int port = free_port();
  const std::string rank_env = "WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=" + std::to_string(port) + " ";
  const std::string train = std::string(S2DM_BINARY) + " train " + common + "--set train.steps=1000000 --run-dir run";
  // Rank 1 is killed once rank 0 has written the checkpoint of step 6; rank 0 must then stop
  // with an error naming rank 1, well within the timeout.
  auto r = run_shell("cd " + dir.path() + "; RANK=0 " + rank_env + train + " > rank0.log 2>&1 & p0=$!; " +
                     "RANK=1 " + rank_env + train + " > rank1.log 2>&1 & p1=$!; " +
                     "for i in $(seq 1200); do [ -f run/checkpoints/step_6.ckpt ] && break; sleep 0.1; done; " +
                     "kill -9 $p1; start=$(date +%s); wait $p0; echo code=$? seconds=$(( $(date +%s) - start ))");
  const auto log = read_bytes(dir / "rank0.log");
  EXPECT_NE(r.output.find("code=1 "), std::string::npos) << r.output << log;
  EXPECT_NE(log.find("error: rank 0: lost contact with rank 1"), std::string::npos) << log;
  const int seconds = std::stoi(r.output.substr(r.output.find("seconds=") + 8));
  EXPECT_LT(seconds, 30) << "rank 0 took " << seconds << " s to notice";
  // The last checkpoint is whole and resumes (on one process).
  const auto step = latest(dir / "run").step;
  EXPECT_GE(step, 6);
  auto resumed = run("train --resume --steps " + std::to_string(step + 2) + " --run-dir " + (dir / "run"));
  ASSERT_EQ(resumed.code, 0) << resumed.output;
  EXPECT_EQ(latest(dir / "run").step, step + 2);
}

TEST_F(DataParallel, MismatchedConfigsAreRefused) {
  // (Launched as srun does: the ranks find each other, then refuse to train.)
  auto ranks = launch(2, [&](int r) { return "train " + common + "--steps 2 --run-dir run" + (r ? " --set seed=8" : ""); },
                      /*slurm=*/true);
  for (const auto& rank : ranks) expect_user_error(rank, "have different configs: line 2 is 'seed:");
  EXPECT_FALSE(std::filesystem::exists(dir / "run"));
}

TEST_F(DataParallel, BadLaunchesAreUserErrors) {
  auto info = run("info");
  EXPECT_NE(info.output.find("distributed:    gloo"), std::string::npos) << info.output;

  const std::string train = std::string(S2DM_BINARY) + " train " + common + "--steps 5 --run-dir " + (dir / "run");
  const std::string port = std::to_string(free_port());
  auto env = [&](const std::string& vars, const std::string& extra = "") {
    return run_shell(vars + " " + train + " " + extra);
  };
  expect_user_error(env("RANK=0 WORLD_SIZE=3 MASTER_ADDR=127.0.0.1 MASTER_PORT=" + port), "WORLD_SIZE=3");
  expect_user_error(env("RANK=0 WORLD_SIZE=2"), "MASTER_ADDR is not set");
  expect_user_error(env("RANK=two WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=" + port), "RANK='two'");
  expect_user_error(env("RANK=0 WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=99999"), "MASTER_PORT='99999'");
  // Nobody serves the store: rank 1 gives up after the timeout.
  expect_user_error(env("RANK=1 WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=" + port, "--set train.distributed.timeout=2"),
                    "MASTER_ADDR=127.0.0.1 MASTER_PORT=" + port + ": no store answered");
  // The port is taken: rank 0 cannot serve the store there.
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_ANY);
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  listen(fd, 1);
  socklen_t len = sizeof addr;
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  const std::string taken = std::to_string(ntohs(addr.sin_port));
  expect_user_error(env("RANK=0 WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=" + taken), "MASTER_PORT=" + taken);
  close(fd);
  expect_user_error(env("RANK=0 WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=" + port, "--set train.distributed.backend=nccl"),
                    "train.distributed.backend=nccl needs CUDA");
  expect_user_error(env("RANK=0 WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=" + port, "--nproc 2"),
                    "--nproc inside a launched group");
  EXPECT_FALSE(std::filesystem::exists(dir / "run"));
}

TEST_F(DataParallel, NprocReportsTheFirstFailingRanksCode) {
  // Rank 0 alone locks the run directory. Held by another process, rank 0 refuses (exit 2) while
  // rank 1 waits for it in the group's start-up; the launcher then stops rank 1 with SIGTERM, and
  // that 143 used to be the group's exit code about half the time.
  std::filesystem::create_directories(dir / "held");
  for (int attempt = 0; attempt < 3; ++attempt) {
    auto r = run_shell("cd " + dir.path() + " && flock -o held/.lock " + S2DM_BINARY + " train " + common +
                       "--steps 2 --run-dir held --nproc 2");
    expect_user_error(r, "held: in use by another s2dm process");
  }
}

// On a GPU (scripts/gpu_check.sh runs these there; elsewhere they skip). cuDNN's autotuner picks
// kernels anew in each process, and under TF32 another kernel rounds otherwise: on an H200
// (LibTorch 2.11) two such runs ended 0.7-1.4e-4 of the largest weight apart (3 runs). Hence
// S2DM_DETERMINISTIC=1 (no autotuner, deterministic kernels): then only lost state separates the runs.
// A resume that lost a step's state (moments, EMA, the random streams) moves weights by
// O(lr) = O(1e-3) of their scale; the bound 1e-5 is the CPU tests', which measured 1e-7.
TEST_F(DataParallel, CudaTrainingResumesAsOneRun) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device (scripts/gpu_check.sh runs this on one)";
  const DeterministicCuda deterministic;
  const std::string cuda = common + "--device cuda ";
  ASSERT_EQ(run("train " + cuda + "--steps 6 --run-dir " + (dir / "straight")).code, 0);
  auto r = run("train " + cuda + "--steps 3 --run-dir " + (dir / "split"));
  ASSERT_EQ(r.code, 0) << r.output;
  r = run("train --resume --device cuda --steps 6 --run-dir " + (dir / "split"));
  ASSERT_EQ(r.code, 0) << r.output;
  expect_same_training(dir / "straight", dir / "split", 6);
}

// One rank of an NCCL group trains as a process without a group: the group's all-reduce of one
// rank and its start-up and shutdown change nothing (and do not hang: train.distributed.timeout).
TEST_F(DataParallel, OneNcclRankTrainsAsNoGroup) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device (scripts/gpu_check.sh runs this on one)";
  const DeterministicCuda deterministic;
  const std::string cuda = common + "--device cuda ";
  ASSERT_EQ(run("train " + cuda + "--steps 5 --run-dir " + (dir / "alone")).code, 0);
  auto ranks = launch(1, [&](int) {
    return "train " + cuda + "--set train.distributed.backend=nccl --steps 5 --run-dir " + (dir / "nccl");
  });
  ASSERT_EQ(ranks[0].code, 0) << ranks[0].output;
  expect_same_training(dir / "alone", dir / "nccl", 5);
}

TEST_F(DataParallel, EvaluationAndOnlineScheduleUnderTwoRanks) {
  // Each rank samples its share of the evaluation images (5: the shares are padded) with a
  // stochastic sampler (DDIM, eta 1: every step draws noise per image) and rank 0 measures them
  // all; the online schedule runs on every rank and rank 0 writes it. lr = 0 keeps the weights
  // equal on both sides, so the FDs differ only by the batches' float rounding (measured: 2e-6
  // relative). (Trained weights differ by ~1e-7, which FD of 5 images — a difference of
  // near-singular covariances' traces — would amplify to ~1 %; rank 1's images sampled with rank
  // 0's step noises moved it by 0.1-1.5 % in three runs.)
  s2dm::testing::write_fake_fmnist(dir / "fmnist", 16, "t10k");
  s2dm::testing::write_bytes(dir / "data.yaml", "data:\n  dataset: fmnist\n  path: " + (dir / "fmnist") + "\n");
  auto r = run("train-classifier --data " + (dir / "data.yaml") + " --out " + (dir / "c.safetensors") + " --epochs 1");
  ASSERT_EQ(r.code, 0) << r.output;
  const std::string extra = "--set train.lr=0 --set train.eval_every=3 --set train.eval_num=5 --set train.eval_features=classifier:" +
                            (dir / "c.safetensors") +
                            " --set train.learned_schedule.every=1 --set train.learned_schedule.levels=8"
                            " --set train.learned_schedule.min_estimates=1 --set train.learned_schedule.pairs=7"
                            " --set train.learned_schedule.batch=2 --set sample.timesteps=learned --set sample.eta=1";
  r = run("train " + common + extra + " --run-dir " + (dir / "one"));
  ASSERT_EQ(r.code, 0) << r.output;
  r = run("train " + common + extra + " --nproc 2 --run-dir " + (dir / "two"));
  ASSERT_EQ(r.code, 0) << r.output;
  auto evaluations = [&](const std::string& run_dir) {
    std::vector<double> fd;
    std::istringstream lines(read_bytes(run_dir + "/metrics.jsonl"));
    for (std::string line; std::getline(lines, line);)
      if (auto j = nlohmann::json::parse(line); j.contains("fd")) fd.push_back(j["fd"].get<double>());
    return fd;
  };
  const auto one = evaluations(dir / "one"), two = evaluations(dir / "two");
  ASSERT_EQ(one.size(), 2u);
  ASSERT_EQ(two.size(), 2u);
  for (size_t i = 0; i < one.size(); ++i) EXPECT_NEAR(one[i], two[i], 1e-4 * std::abs(one[i])) << i;
  // The schedule's estimates: every rank updates it from the same EMA weights, batch and generator.
  auto a = latest(dir / "one"), b = latest(dir / "two");
  ASSERT_EQ(a.schedule.size(), b.schedule.size());
  for (size_t i = 0; i < a.schedule.size(); ++i) {
    const auto& [name, x] = a.schedule[i];
    EXPECT_EQ(name, b.schedule[i].first);
    ASSERT_EQ(x.sizes(), b.schedule[i].second.sizes()) << name;
    EXPECT_GT(x.numel(), 0) << name;
    EXPECT_TRUE(torch::allclose(x.to(torch::kFloat64), b.schedule[i].second.to(torch::kFloat64), 1e-6, 0)) << name;
  }
  EXPECT_GT(a.schedule.size(), 0u);
}

TEST_F(DataParallel, DropoutLeavesTheTrainingStreamAlone) {
  // With dropout (CIFAR10's 0.1) one process and 2 ranks draw the same timesteps and noises: the
  // training stream's state after 4 steps is the same (dropout's masks come from a stream of
  // their own per rank, one process being rank 0 of 1).
  const std::string args = "train " + common + "--set model.dropout=0.1 --steps 4 --run-dir ";
  ASSERT_EQ(run(args + (dir / "one")).code, 0);
  auto r = run(args + (dir / "two") + " --nproc 2");
  ASSERT_EQ(r.code, 0) << r.output;
  const auto a = latest(dir / "one"), b = latest(dir / "two");
  ASSERT_EQ(a.rng.size(), b.rng.size());
  ASSERT_EQ(a.rng[0].first, "cpu");
  EXPECT_TRUE(torch::equal(a.rng[0].second, b.rng[0].second)) << "the training streams parted";
  // (The weights differ: each rank's masks are its own.)
  EXPECT_GT(relative_difference(a.model, b.model).max_element, 1e-6);
}

TEST_F(DataParallel, RanksWaitForRank0BeyondTheTimeout) {
  // Rank 0's checkpoints take 5 s (a slow file system, simulated) with a timeout of 2 s: the
  // other rank waits for them rather than giving up.
  auto r = run_shell("S2DM_TEST_CHECKPOINT_DELAY=5 " + std::string(S2DM_BINARY) + " train " + common +
                     "--set train.distributed.timeout=2 --steps 3 --nproc 2 --run-dir " + (dir / "run"));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(latest(dir / "run").step, 3);
}
