// The s2dm tool end to end on a tiny config: train, checkpoint, resume bit-identically, sample,
// export, and exit code 2 with a clear message for each kind of bad input.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>
#include <torch/torch.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <filesystem>
#include <fstream>

#include "../test_util.h"
#include "s2dm/io/checkpoint.h"
#include "s2dm/io/image_io.h"
#include "s2dm/eval/inception.h"
#include "s2dm/io/npy.h"
#include "s2dm/io/safetensors.h"

using namespace s2dm;
using s2dm::testing::TempDir;

namespace {

using s2dm::testing::Result;
using s2dm::testing::run;
using s2dm::testing::run_shell;

using s2dm::testing::kTiny;

// A scratch directory with fake Fashion-MNIST files and the tiny config pointing at them.
class Cli : public ::testing::Test {
 protected:
  void SetUp() override {
    std::filesystem::create_directories(dir / "fmnist");
    s2dm::testing::write_fake_fmnist(dir / "fmnist", 16);
    data = "--set data.path=" + (dir / "fmnist");
  }
  std::string train(const std::string& run_dir, const std::string& extra = "") {
    auto r = run("train --config " + kTiny + " " + data + " --run-dir " + run_dir + " " + extra);
    EXPECT_EQ(r.code, 0) << r.output;
    return r.output;
  }
  TempDir dir;
  std::string data;
};

using s2dm::testing::expect_user_error;

bool same_tensors(const NamedTensors& a, const NamedTensors& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i)
    if (a[i].first != b[i].first || !torch::equal(a[i].second, b[i].second)) return false;
  return true;
}

}  // namespace

TEST_F(Cli, HelpAndInfo) {
  auto r = run("--help");
  EXPECT_EQ(r.code, 0);
  EXPECT_NE(r.output.find("train"), std::string::npos);
  for (const char* cmd : {"train", "sample", "samplers", "export", "info", "fid", "fid-stats", "train-classifier", "schedule"}) EXPECT_EQ(run(std::string(cmd) + " --help").code, 0) << cmd;
  r = run("info --device cpu");
  EXPECT_EQ(r.code, 0);
  EXPECT_NE(r.output.find("libtorch:"), std::string::npos);
  EXPECT_NE(r.output.find("cpu threads:"), std::string::npos);
}

TEST_F(Cli, DivergedLossNeverReachesACheckpoint) {
  // Adam at a learning rate of 10 without clipping overflows within three steps. The loss is
  // read only at log lines and checkpoints (no per-step host sync): the first checkpoint
  // (step 3) finds it.
  const std::string run_dir = dir / "diverged";
  auto r = run("train --config " + kTiny + " " + data + " --run-dir " + run_dir +
               " --set train.lr=10 --set train.warmup=0 --set train.grad_clip=0 --set train.log_every=100");
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("diverged"), std::string::npos) << r.output;
  EXPECT_FALSE(std::filesystem::exists(run_dir + "/checkpoints/latest.ckpt"));
}

TEST_F(Cli, TrainWritesTheRunDirectory) {
  const std::string run_dir = dir / "run";
  train(run_dir);
  for (const char* f : {"config.yaml", "log.txt", "metrics.jsonl", "checkpoints/latest.ckpt", "checkpoints/step_6.ckpt",
                        "checkpoints/step_3.ckpt", "samples/step_6.png"})
    EXPECT_TRUE(std::filesystem::exists(run_dir + "/" + f)) << f;
  auto metrics = s2dm::testing::read_bytes(run_dir + "/metrics.jsonl");
  EXPECT_EQ(std::count(metrics.begin(), metrics.end(), '\n'), 6);
  for (const char* key : {"\"loss\"", "\"loss_simple\"", "\"loss_skip\"", "\"lr\"", "\"grad_norm\"", "\"images_per_sec\""})
    EXPECT_NE(metrics.find(key), std::string::npos) << key;
  auto ckpt = load_checkpoint(run_dir + "/checkpoints/latest.ckpt");
  EXPECT_EQ(ckpt.step, 6);
  EXPECT_FALSE(ckpt.ema.empty());
  // The run directory is not silently overwritten.
  expect_user_error(run("train --config " + kTiny + " " + data + " --run-dir " + run_dir), "run directory exists");
}

TEST_F(Cli, ResumeIsBitIdentical) {
  const std::string straight = dir / "straight", split = dir / "split";
  train(straight);
  train(split, "--steps 3");
  auto r = run("train --resume --run-dir " + split + " --steps 6");
  ASSERT_EQ(r.code, 0) << r.output;
  auto a = load_checkpoint(straight + "/checkpoints/latest.ckpt");
  auto b = load_checkpoint(split + "/checkpoints/latest.ckpt");
  EXPECT_EQ(a.step, 6);
  EXPECT_EQ(b.step, 6);
  EXPECT_TRUE(same_tensors(a.model, b.model));
  EXPECT_TRUE(same_tensors(a.ema, b.ema));
  EXPECT_TRUE(same_tensors(a.optimizer, b.optimizer));
  auto metrics = s2dm::testing::read_bytes(split + "/metrics.jsonl");
  EXPECT_EQ(std::count(metrics.begin(), metrics.end(), '\n'), 6);
}

TEST_F(Cli, SampleExportAndReload) {
  const std::string run_dir = dir / "run";
  train(run_dir);
  const std::string ckpt = run_dir + "/checkpoints/latest.ckpt";
  auto r = run("sample --checkpoint " + ckpt + " --num 3 --batch 2 --steps 4 --seed 5 --out " + (dir / "s1") +
               " --save-float " + (dir / "s1.npy"));
  ASSERT_EQ(r.code, 0) << r.output;
  for (const char* f : {"000000.png", "000002.png", "samples.npz", "grid.png", "sample.yaml"})
    EXPECT_TRUE(std::filesystem::exists(dir / ("s1/" + std::string(f)))) << f;
  auto npz = load_npz(dir / "s1/samples.npz");
  EXPECT_EQ(npz.at("arr_0").dtype, "|u1");
  EXPECT_EQ(npz.at("arr_0").shape, (std::vector<int64_t>{3, 32, 32, 1}));
  auto floats = load_npy(dir / "s1.npy");
  EXPECT_EQ(floats.dtype, "<f4");
  EXPECT_EQ(floats.shape, (std::vector<int64_t>{3, 1, 32, 32}));
  // Same seed, other batch size: the same images.
  r = run("sample --checkpoint " + ckpt + " --num 3 --batch 3 --steps 4 --seed 5 --no-png --out " + (dir / "s2"));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(load_npz(dir / "s2/samples.npz").at("arr_0").data, npz.at("arr_0").data);

  // Exported raw weights sampled through --weights equal the checkpoint's raw weights.
  r = run("export --checkpoint " + ckpt + " --out " + (dir / "w.safetensors"));
  ASSERT_EQ(r.code, 0) << r.output;
  auto exported = load_safetensors(dir / "w.safetensors");
  EXPECT_NE(exported.find("conv_in.weight"), nullptr);
  EXPECT_NE(exported.find("temb.dense.0.weight"), nullptr);
  r = run("sample --weights " + (dir / "w.safetensors") + " --config " + kTiny + " --num 2 --steps 3 --no-png --out " +
          (dir / "w"));
  ASSERT_EQ(r.code, 0) << r.output;
  r = run("sample --checkpoint " + ckpt + " --raw --num 2 --steps 3 --no-png --out " + (dir / "raw"));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(load_npz(dir / "w/samples.npz").at("arr_0").data, load_npz(dir / "raw/samples.npz").at("arr_0").data);

  // Skip-Tuning changes the samples; a factor list of the wrong length is refused before work.
  r = run("sample --checkpoint " + ckpt + " --raw --num 2 --steps 3 --no-png --skip-tuning 0.5 --out " + (dir / "st"));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(load_npz(dir / "st/samples.npz").at("arr_0").data, load_npz(dir / "raw/samples.npz").at("arr_0").data);
  r = run("sample --checkpoint " + ckpt + " --raw --num 2 --steps 3 --no-png --skip-tuning 1,1 --out " + (dir / "st1"));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(load_npz(dir / "st1/samples.npz").at("arr_0").data, load_npz(dir / "raw/samples.npz").at("arr_0").data);
  expect_user_error(run("sample --checkpoint " + ckpt + " --set sample.skip_tuning.rho=[1,2] --out " + (dir / "o2")),
                    "4 long skips");
  r = run("info --checkpoint " + ckpt);
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("long skips:     4"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("skip  0:   64 channels"), std::string::npos) << r.output;

  // Exact initial noise from a file.
  auto noise = torch::randn({2, 1, 32, 32});
  save_npy(dir / "xT.npy", NpyArray{"<f4", {2, 1, 32, 32}, std::string(static_cast<char*>(noise.data_ptr()), noise.numel() * 4)});
  r = run("sample --checkpoint " + ckpt + " --noise " + (dir / "xT.npy") + " --steps 3 --no-png --out " + (dir / "n"));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(load_npz(dir / "n/samples.npz").at("arr_0").shape[0], 2);
}

TEST_F(Cli, BadInputGivesExitCode2AndNamesTheCulprit) {
  expect_user_error(run("frobnicate"), "unknown command 'frobnicate'");
  expect_user_error(run("train --config /nonexistent.yaml"), "/nonexistent.yaml");
  s2dm::testing::write_bytes(dir / "bad.yaml", "train:\n  lr: 0.1\n  bacth_size: 3\n");
  expect_user_error(run("train --config " + (dir / "bad.yaml")), "bad.yaml:3: unknown key 'train.bacth_size' (did you mean 'train.batch_size'?)");
  expect_user_error(run("train --config " + kTiny + " --set train.lr=fast"), "--set train.lr=fast");
  expect_user_error(run("train --config " + kTiny + " --set data.path=" + (dir / "none") + " --run-dir " + (dir / "r0")),
                    "file not found");
  expect_user_error(run("train --config " + kTiny + " --bogus-flag"), "bogus");
  expect_user_error(run("train --resume --run-dir " + (dir / "never")), "no checkpoint to resume from");
  expect_user_error(run("train --config " + kTiny + " --device cuda:7 " + data + " --run-dir " + (dir / "r1")), "cuda");
  expect_user_error(run("sample --checkpoint " + (dir / "missing.ckpt") + " --out " + (dir / "o")), "missing.ckpt");
  s2dm::testing::write_bytes(dir / "junk.ckpt", std::string(100, 'x'));
  expect_user_error(run("sample --checkpoint " + (dir / "junk.ckpt") + " --out " + (dir / "o")), "junk.ckpt");

  const std::string run_dir = dir / "run";
  train(run_dir);
  const std::string ckpt = run_dir + "/checkpoints/latest.ckpt";
  auto bytes = s2dm::testing::read_bytes(ckpt);
  s2dm::testing::write_bytes(dir / "trunc.ckpt", bytes.substr(0, bytes.size() - 100));
  expect_user_error(run("sample --checkpoint " + (dir / "trunc.ckpt") + " --out " + (dir / "o")), "trunc.ckpt");
  expect_user_error(run("sample --checkpoint " + ckpt + " --sampler ddmi --out " + (dir / "o")), "did you mean 'ddim'");
  expect_user_error(run("sample --checkpoint " + ckpt + " --steps 5000 --out " + (dir / "o")), "sample.steps");
  expect_user_error(run("sample --checkpoint " + ckpt + " --batch 0 --out " + (dir / "o")),
                    "the command line: sample.batch = 0 is out of range");
  expect_user_error(run("sample --checkpoint " + ckpt + " --skip-tuning 0.5,x --out " + (dir / "o")), "RHO_BOTTOM[,RHO_TOP], one or two numbers");
  expect_user_error(run("sample --checkpoint " + ckpt + " --timesteps quadratic --out " + (dir / "o")), "did you mean 'quad'");
  expect_user_error(run("sample --checkpoint " + ckpt), "--out");
  save_npy(dir / "bad.npy", NpyArray{"<f8", {1, 1, 32, 32}, std::string(8 * 1024, '\0')});
  expect_user_error(run("sample --checkpoint " + ckpt + " --noise " + (dir / "bad.npy") + " --out " + (dir / "o")), "float32");
  save_npy(dir / "shape.npy", NpyArray{"<f4", {1, 3, 8, 8}, std::string(4 * 192, '\0')});
  expect_user_error(run("sample --checkpoint " + ckpt + " --noise " + (dir / "shape.npy") + " --out " + (dir / "o")), "shape");
  // Weights of another architecture.
  expect_user_error(run("sample --weights " + ckpt + " --config " + std::string(S2DM_SOURCE_DIR) +
                        "/configs/train/fmnist.yaml --out " + (dir / "o")),
                    "different model config");
  EXPECT_FALSE(std::filesystem::exists(dir / "o/samples.npz"));
}

TEST_F(Cli, SamplersListAndTorchScriptModels) {
  auto r = run("samplers --steps 10");
  ASSERT_EQ(r.code, 0) << r.output;
  for (const char* name : {"ddim", "ddpm", "pndm", "spndm", "plms", "deis", "deis-rho", "deis-logrho", "dpmpp-2m", "lambda-ddim"})
    EXPECT_NE(r.output.find(std::string("\n") + name + " "), std::string::npos) << name;
  const std::string fixtures = std::string(S2DM_SOURCE_DIR) + "/tests/fixtures/";
  const std::string script = "sample --model-script " + fixtures + "gaussian_eps.pt --config " + kTiny + " --num 3 --no-png ";
  r = run(script + "--sampler pndm --steps 5 --timesteps logsnr --out " + (dir / "ts"));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("14 network evaluations"), std::string::npos) << r.output;
  auto record = s2dm::testing::read_bytes(dir / "ts/sample.yaml");
  EXPECT_NE(record.find("sampler: \"pndm\""), std::string::npos) << record;
  EXPECT_NE(record.find("nfe: 14"), std::string::npos) << record;
  r = run(script + "--sampler deis --order 2 --timesteps 999,600,200 --out " + (dir / "ts2"));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("3 network evaluations"), std::string::npos) << r.output;

  expect_user_error(run("sample --model-script " + fixtures + "bad_signature.pt --config " + kTiny + " --out " + (dir / "o")),
                    "forward must take (x, t)");
  expect_user_error(run("sample --model-script " + fixtures + "bad_shape.pt --config " + kTiny + " --out " + (dir / "o")),
                    "returned shape");
  expect_user_error(run("sample --model-script " + fixtures + "gaussian_eps.pt --out " + (dir / "o")), "--config");
  expect_user_error(run(script + "--skip-tuning 0.8 --out " + (dir / "o")), "Skip-Tuning");
  expect_user_error(run(script + "--sampler deis --order 7 --out " + (dir / "o")), "order = 7");
  expect_user_error(run(script + "--sampler dpmpp-2m --order 2 --out " + (dir / "o")), "no order option");
  expect_user_error(run(script + "--sampler heun --out " + (dir / "o")), "unknown sampler 'heun'");
  s2dm::testing::write_bytes(dir / "up.txt", "10 500 900\n");
  expect_user_error(run(script + "--timesteps file:" + (dir / "up.txt") + " --out " + (dir / "o")), "strictly decreasing");
  expect_user_error(run(script + "--timesteps 2000,10 --out " + (dir / "o")), "outside");
  EXPECT_FALSE(std::filesystem::exists(dir / "o"));
}

TEST_F(Cli, FidStatsAndFid) {
  // Random-weight Inception (real weights cannot be downloaded here) and two small image sets.
  eval::FidInception net;
  NamedTensors weights;
  for (auto& [name, t] : named_weights(*net))
    if (name.find("num_batches_tracked") == std::string::npos) weights.emplace_back(name, t);
  save_safetensors(dir / "inception.safetensors", weights);
  const std::string features = " --features inception:" + (dir / "inception.safetensors");
  auto images = [](int seed) {
    torch::manual_seed(seed);
    auto x = torch::randint(0, 256, {6, 16, 16, 3}, torch::kUInt8);
    return NpyArray{"|u1", {6, 16, 16, 3}, std::string(static_cast<char*>(x.data_ptr()), x.numel())};
  };
  save_npz(dir / "a.npz", {{"arr_0", images(1)}});
  save_npz(dir / "b.npz", {{"arr_0", images(2)}});

  auto r = run("fid-stats " + (dir / "a.npz") + " --compress --out " + (dir / "a_stats.npz") + features);
  ASSERT_EQ(r.code, 0) << r.output;
  auto stats = load_npz(dir / "a_stats.npz");
  EXPECT_EQ(stats.at("mu").shape, (std::vector<int64_t>{2048}));
  EXPECT_EQ(stats.at("sigma").shape, (std::vector<int64_t>{2048, 2048}));
  EXPECT_EQ(stats.at("sigma").dtype, "<f8");

  r = run("fid " + (dir / "a.npz") + " " + (dir / "b.npz") + features + " --json");
  ASSERT_EQ(r.code, 0) << r.output;
  auto line = r.output.substr(r.output.find('{'));
  for (const char* key : {"\"fid\"", "\"kid_mean\"", "\"kid_std\"", "\"num_a\":6", "\"num_b\":6", "\"features\":\"inception\""})
    EXPECT_NE(line.find(key), std::string::npos) << key << " in " << line;
  // Statistics against the images they came from: distance 0, and no KID without features.
  r = run("fid " + (dir / "a_stats.npz") + " " + (dir / "a.npz") + features + " --json");
  ASSERT_EQ(r.code, 0) << r.output;
  line = r.output.substr(r.output.find('{'));
  EXPECT_EQ(line.find("kid_mean"), std::string::npos) << line;
  const double fid = std::stod(line.substr(line.find(':') + 1));
  EXPECT_NEAR(fid, 0.0, 1e-3) << line;

  // A folder of images is a source too; differently sized images in it are refused.
  std::filesystem::create_directories(dir / "imgs");
  for (int i = 0; i < 3; ++i) write_png(dir / ("imgs/" + std::to_string(i) + ".png"), Image{12, 10, 3, std::vector<uint8_t>(360, 40 * i)});
  r = run("fid-stats " + (dir / "imgs") + " --out " + (dir / "f_stats.npz") + features);
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("(3 images)"), std::string::npos) << r.output;
  write_png(dir / "imgs/odd.png", Image{8, 8, 3, std::vector<uint8_t>(192, 7)});
  expect_user_error(run("fid-stats " + (dir / "imgs") + " --out " + (dir / "g.npz") + features), "differs");

  expect_user_error(run("fid " + (dir / "a.npz") + features), "two sources");
  expect_user_error(run("fid " + (dir / "a.npz") + " " + (dir / "b.npz") + " --features classifier:x"), "classifier");
  expect_user_error(run("fid " + (dir / "a.npz") + " " + (dir / "b.npz") + " --features inception:" + (dir / "none.st")),
                    "none.st");
  save_npz(dir / "other.npz", {{"x", images(3)}});
  expect_user_error(run("fid " + (dir / "other.npz") + " " + (dir / "b.npz") + features), "neither statistics");
}

TEST_F(Cli, TrainingEvaluatesFdAndClassifierCommand) {
  // A classifier trained briefly on the fake data (with a fake test split), then FD of EMA
  // samples during training.
  s2dm::testing::write_fake_fmnist(dir / "fmnist", 16, "t10k");
  s2dm::testing::write_bytes(dir / "data.yaml", "data:\n  dataset: fmnist\n  path: " + (dir / "fmnist") + "\n");
  auto r = run("train-classifier --data " + (dir / "data.yaml") + " --out " + (dir / "c.safetensors") + " --epochs 1");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("test accuracy"), std::string::npos) << r.output;
  train(dir / "run", "--set train.eval_every=3 --set train.eval_num=4 --set train.eval_features=classifier:" +
                         (dir / "c.safetensors"));
  auto metrics = s2dm::testing::read_bytes(dir / "run/metrics.jsonl");
  EXPECT_EQ(std::count(metrics.begin(), metrics.end(), '\n'), 8);  // 6 loss lines, 2 evaluations
  EXPECT_NE(metrics.find("\"fd\""), std::string::npos) << metrics;
  EXPECT_NE(metrics.find("\"kid_mean\""), std::string::npos) << metrics;
  EXPECT_NE(metrics.find("\"features\":\"fmnist-cnn\""), std::string::npos) << metrics;
  r = run("fid " + (dir / "run/samples") + " " + (dir / "data.yaml") + " --features classifier:" + (dir / "c.safetensors"));
  EXPECT_NE(r.code, 0);  // a folder of grids has the wrong image size for the classifier
  expect_user_error(run("train --config " + kTiny + " " + data + " --run-dir " + (dir / "r2") + " --set train.eval_every=2"),
                    "eval_features");
}

TEST_F(Cli, LearnedScheduleEndToEnd) {
  const std::string fixtures = std::string(S2DM_SOURCE_DIR) + "/tests/fixtures/";
  s2dm::testing::write_bytes(dir / "data.yaml", "data:\n  dataset: fmnist\n  path: " + (dir / "fmnist") + "\n");
  const std::string base = "schedule --model-script " + fixtures + "gaussian_eps.pt --config " + kTiny +
                           " --levels 40 --samples 8 --device cpu ";
  auto r = run(base + "--data " + (dir / "data.yaml") + " --steps 5,10 --out " + (dir / "sched/s.yaml"));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("624 network evaluations"), std::string::npos) << r.output;  // 2 x 39 pairs x 8
  EXPECT_TRUE(std::filesystem::exists(dir / "sched/s.png"));
  auto text = s2dm::testing::read_bytes(dir / "sched/s.yaml");
  for (const char* key : {"timesteps:", "  5: [999", "  10: [999", "levels: [0", "cost: [", "num_timesteps: 1000"})
    EXPECT_NE(text.find(key), std::string::npos) << key << " in " << text;
  r = run("sample --model-script " + fixtures + "gaussian_eps.pt --config " + kTiny + " --num 2 --no-png --steps 5 "
          "--timesteps learned:" + (dir / "sched/s.yaml") + " --out " + (dir / "ls"));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("5 network evaluations"), std::string::npos) << r.output;
  expect_user_error(run("sample --model-script " + fixtures + "gaussian_eps.pt --config " + kTiny +
                        " --steps 7 --timesteps learned:" + (dir / "sched/s.yaml") + " --out " + (dir / "o")),
                    "no schedule for 7 steps");
  expect_user_error(run(base + "--data " + (dir / "data.yaml") + " --steps 50 --out " + (dir / "x.yaml")), "levels");
  // Data of another shape than the model.
  std::filesystem::create_directories(dir / "rgb");
  write_png(dir / "rgb/a.png", Image{8, 8, 3, std::vector<uint8_t>(192, 90)});
  s2dm::testing::write_bytes(dir / "rgb.yaml", "data:\n  dataset: folder\n  path: " + (dir / "rgb") +
                                                   "\n  image_size: 16\n  channels: 3\nmodel:\n  attn_resolutions: []\n");
  expect_user_error(run(base + "--data " + (dir / "rgb.yaml") + " --steps 5 --out " + (dir / "x.yaml")), "model");
  EXPECT_FALSE(std::filesystem::exists(dir / "x.yaml"));

  // The solver-aware dp grid: no data, a sampler and its order; the file says what it was made for.
  const std::string dp = "schedule --method dp --model-script " + fixtures + "gaussian_eps.pt --config " + kTiny +
                         " --levels 30 --samples 4 --device cpu --steps 3,5 ";
  r = run(dp + "--sampler deis --order 2 --sweeps 1 --out " + (dir / "dp/d.yaml"));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("dp for deis (order 2)"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("5 steps: end-point RMS error"), std::string::npos) << r.output;
  EXPECT_TRUE(std::filesystem::exists(dir / "dp/d.png"));
  text = s2dm::testing::read_bytes(dir / "dp/d.yaml");
  for (const char* key : {"method: dp", "sampler: deis", "order: 2", "  3: [999", "end_error:", "format: 2"})
    EXPECT_NE(text.find(key), std::string::npos) << key << " in " << text;
  const std::string sample = "sample --model-script " + fixtures + "gaussian_eps.pt --config " + kTiny +
                             " --num 2 --no-png --steps 5 --timesteps learned:" + (dir / "dp/d.yaml");
  r = run(sample + " --sampler deis --order 2 --out " + (dir / "dps"));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(r.output.find("searched for"), std::string::npos) << r.output;
  r = run(sample + " --sampler ddim --out " + (dir / "dps2"));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("searched for dp for deis (order 2), used here with ddim"), std::string::npos) << r.output;
  expect_user_error(run(dp + "--sampler ddpm --out " + (dir / "y.yaml")), "stochastic");
  expect_user_error(run(dp + "--data " + (dir / "data.yaml") + " --out " + (dir / "y.yaml")), "no --data");
  expect_user_error(run(base + "--data " + (dir / "data.yaml") + " --sampler deis --out " + (dir / "y.yaml")), "--method dp");
  expect_user_error(run(base + "--method other --data " + (dir / "data.yaml") + " --out " + (dir / "y.yaml")), "score, dp");
  EXPECT_FALSE(std::filesystem::exists(dir / "y.yaml"));
}

TEST_F(Cli, OnlineScheduleDuringTrainingResumesAndSamples) {
  const std::string online = "--set train.learned_schedule.every=1 --set train.learned_schedule.levels=8 "
                             "--set train.learned_schedule.min_estimates=1 --set train.learned_schedule.pairs=7 "
                             "--set train.learned_schedule.batch=2";
  train(dir / "straight", online);
  train(dir / "split", online + " --steps 3");
  auto r = run("train --resume --run-dir " + (dir / "split") + " --steps 6");
  ASSERT_EQ(r.code, 0) << r.output;
  auto a = load_checkpoint(dir / "straight/checkpoints/latest.ckpt");
  auto b = load_checkpoint(dir / "split/checkpoints/latest.ckpt");
  ASSERT_FALSE(a.schedule.empty());
  EXPECT_TRUE(same_tensors(a.schedule, b.schedule));
  EXPECT_TRUE(same_tensors(a.model, b.model));
  auto metrics = s2dm::testing::read_bytes(dir / "straight/metrics.jsonl");
  EXPECT_NE(metrics.find("\"schedule_timesteps\""), std::string::npos) << metrics;
  EXPECT_NE(metrics.find("\"schedule_cost\""), std::string::npos) << metrics;
  r = run("sample --checkpoint " + (dir / "straight/checkpoints/latest.ckpt") +
          " --timesteps learned --steps 3 --num 2 --no-png --out " + (dir / "ls"));
  ASSERT_EQ(r.code, 0) << r.output;
  auto record = s2dm::testing::read_bytes(dir / "ls/sample.yaml");
  EXPECT_NE(record.find("timesteps: [999"), std::string::npos) << record;
  // A checkpoint without a learned schedule says so.
  train(dir / "plain");
  expect_user_error(run("sample --checkpoint " + (dir / "plain/checkpoints/latest.ckpt") +
                        " --timesteps learned --out " + (dir / "o")),
                    "carries no learned schedule");
}

TEST_F(Cli, TimeBudgetEndsTrainingAsAFinishedRun) {
  // Far more steps than 1.2 s allows: the budget ends the run (exit 0, a final checkpoint and
  // grid), and a resume of the finished run trains no further (the time is counted over resumes).
  const std::string run_dir = dir / "budget";
  const auto out = train(run_dir, "--set train.steps=1000000 --set train.max_minutes=0.02");
  EXPECT_NE(out.find("train.max_minutes=0.02 spent"), std::string::npos) << out;
  auto ckpt = load_checkpoint(run_dir + "/checkpoints/latest.ckpt");
  EXPECT_GE(ckpt.step, 1);
  EXPECT_LT(ckpt.step, 1000000);
  EXPECT_GE(std::stod(ckpt.extra.at("train_seconds")), 1.2);
  auto r = run("train --resume --run-dir " + run_dir);
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(load_checkpoint(run_dir + "/checkpoints/latest.ckpt").step, ckpt.step);
}

TEST_F(Cli, OneWriterPerRunDirectoryAndARunKilledBeforeItsFirstCheckpointStartsAgain) {
  // A first run, far from its first checkpoint, holds the run directory: a second on it is
  // refused (exit 2, naming the holder). Killed with SIGKILL, it leaves its lock file and no
  // checkpoint: the same command then takes the lock over and starts the run again.
  const std::string run_dir = dir / "held";
  const std::string command = std::string(S2DM_BINARY) + " train --config " + kTiny + " " + data + " --run-dir " + run_dir;
  auto r = run_shell("(" + command + " --set train.steps=1000000 --set train.ckpt_every=1000000 > /dev/null 2>&1 & " +
                     "first=$!; for i in $(seq 300); do [ -f " + run_dir + "/config.yaml ] && break; sleep 0.1; done; " +
                     command + "; echo \"second: $?\"; kill -9 $first; wait $first; true)");
  EXPECT_NE(r.output.find("in use by another s2dm process (pid "), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("second: 2"), std::string::npos) << r.output;
  EXPECT_FALSE(std::filesystem::exists(run_dir + "/checkpoints/latest.ckpt"));
  const auto out = train(run_dir);
  EXPECT_NE(out.find("taking over the lock of pid "), std::string::npos) << out;
  EXPECT_NE(out.find("stopped before its first checkpoint"), std::string::npos) << out;
  EXPECT_TRUE(std::filesystem::exists(run_dir + "/checkpoints/latest.ckpt"));
  // --resume of a run stopped before its first checkpoint starts it too, from its config.yaml.
  std::filesystem::remove_all(run_dir + "/checkpoints");
  r = run("train --resume --run-dir " + run_dir);
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_TRUE(std::filesystem::exists(run_dir + "/checkpoints/latest.ckpt"));
}

TEST_F(Cli, KilledAtRandomMomentsAndResumedEndsBitIdentical) {
  // SIGKILL at uniformly random moments of a run that checkpoints every step (so a good share of
  // the kills land inside a checkpoint write), then the restart a user would type (the same
  // command before the first checkpoint, --resume after), until the run finishes: the final
  // weights, EMA and optimizer state are bit-identical to an uninterrupted run, metrics.jsonl has
  // each step once, and no temporary file is left. S2DM_CRASH_TRIALS sets the number of trials
  // (scripts/crash_test.sh runs more).
  const char* trials_env = std::getenv("S2DM_CRASH_TRIALS");
  const int trials = trials_env ? std::atoi(trials_env) : 5;
  constexpr int kSteps = 8, kKillsPerTrial = 2;
  const std::string settings = " --set train.ckpt_every=1 --set train.keep_last=2 --steps " + std::to_string(kSteps);
  auto command = [&](const std::string& run_dir) {
    return std::string(S2DM_BINARY) + " train --config " + kTiny + " " + data + settings + " --run-dir " + run_dir;
  };
  auto restart = [&](const std::string& run_dir) {
    return std::filesystem::exists(run_dir + "/checkpoints/latest.ckpt")
               ? std::string(S2DM_BINARY) + " train --resume --run-dir " + run_dir + " --steps " + std::to_string(kSteps)
               : command(run_dir);
  };
  auto temporaries = [](const std::string& where) {
    int n = 0;
    for (const auto& e : std::filesystem::recursive_directory_iterator(where))
      n += e.path().filename().string().find(".tmp.") != std::string::npos;
    return n;
  };

  const std::string reference_dir = dir / "reference";
  const auto start = std::chrono::steady_clock::now();
  auto r = run_shell(command(reference_dir));
  ASSERT_EQ(r.code, 0) << r.output;
  const double run_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const auto reference = load_checkpoint(reference_dir + "/checkpoints/latest.ckpt");

  const unsigned seed = std::random_device{}();
  std::mt19937 rng(seed);
  std::uniform_real_distribution<double> moment(0.0, run_seconds);  // anywhere in a whole run
  int kills = 0, mid_write = 0, before_first_checkpoint = 0;
  for (int trial = 0; trial < trials; ++trial) {
    const std::string run_dir = dir / ("trial" + std::to_string(trial));
    for (int k = 0; k < kKillsPerTrial; ++k) {
      char delay[32];
      std::snprintf(delay, sizeof delay, "%.3f", moment(rng));
      r = run_shell(restart(run_dir) + " > /dev/null 2>&1 & pid=$!; sleep " + delay +
                    "; kill -9 $pid 2>/dev/null && echo killed; wait $pid 2>/dev/null; true");
      if (r.output.find("killed") == std::string::npos) continue;  // it had finished already
      ++kills;
      if (std::filesystem::exists(run_dir) && temporaries(run_dir) > 0) ++mid_write;
      if (!std::filesystem::exists(run_dir + "/checkpoints/latest.ckpt")) ++before_first_checkpoint;
    }
    r = run_shell(restart(run_dir));
    ASSERT_EQ(r.code, 0) << "trial " << trial << " (seed " << seed << "): " << r.output;
    const auto final_checkpoint = load_checkpoint(run_dir + "/checkpoints/latest.ckpt");
    EXPECT_EQ(final_checkpoint.step, kSteps);
    EXPECT_TRUE(same_tensors(final_checkpoint.model, reference.model)) << "trial " << trial << ", seed " << seed;
    EXPECT_TRUE(same_tensors(final_checkpoint.ema, reference.ema)) << "trial " << trial << ", seed " << seed;
    EXPECT_TRUE(same_tensors(final_checkpoint.optimizer, reference.optimizer)) << "trial " << trial << ", seed " << seed;
    const auto metrics = s2dm::testing::read_bytes(run_dir + "/metrics.jsonl");
    for (int step = 1; step <= kSteps; ++step) {
      const std::string key = "{\"step\":" + std::to_string(step) + ",";
      size_t count = 0;
      for (size_t at = metrics.find(key); at != std::string::npos; at = metrics.find(key, at + 1)) ++count;
      EXPECT_EQ(count, 1u) << "step " << step << " in trial " << trial << ":\n" << metrics;
    }
    EXPECT_EQ(temporaries(run_dir), 0) << "trial " << trial;
  }
  if (trials > 0) {
    EXPECT_GT(kills, 0) << "every kill came after its run had finished: nothing was tested";
  }
  std::printf("[crash test] %d trials, %d kills (%d left a half-written temporary file, %d came before the first checkpoint), "
              "a run takes %.1f s, seed %u\n", trials, kills, mid_write, before_first_checkpoint, run_seconds, seed);
}

TEST_F(Cli, AFullDiskKeepsThePreviousCheckpointAndLeavesNoHalfWrittenFile) {
  // RLIMIT_FSIZE stands in for a full disk (any user can set it, no mount needed): with SIGXFSZ
  // ignored, a write past it fails with EFBIG where a full disk fails with ENOSPC.
  const std::string run_dir = dir / "full", latest = run_dir + "/checkpoints/latest.ckpt";
  train(run_dir);
  const std::string before = s2dm::testing::read_bytes(latest);
  ASSERT_GT(before.size(), 2000u * 512);  // larger than the limit below (dash counts 512-byte blocks)
  const std::string limited = "ulimit -f 2000; trap '' XFSZ; " + std::string(S2DM_BINARY);
  auto r = run_shell(limited + " train --resume --run-dir " + run_dir + " --steps 9");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find(latest + ": write failed (File too large)"), std::string::npos) << r.output;
  EXPECT_EQ(s2dm::testing::read_bytes(latest), before);  // still step 6, whole
  auto leftovers = [](const std::string& where) {
    std::string found;
    for (const auto& e : std::filesystem::recursive_directory_iterator(where))
      if (e.path().filename().string().find(".tmp") != std::string::npos) found += e.path().string() + " ";
    return found;
  };
  EXPECT_EQ(leftovers(run_dir), "");
  r = run("train --resume --run-dir " + run_dir + " --steps 9");  // room again: it goes on
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(load_checkpoint(latest).step, 9);

  // metrics.jsonl filled to a few bytes under the limit: the next line (step 10, before any
  // checkpoint) cannot be appended, and that stops the run naming the file.
  const std::string metrics = run_dir + "/metrics.jsonl";
  const auto room = 2000u * 512 - std::filesystem::file_size(metrics);
  std::ofstream(metrics, std::ios::app) << "{\"step\":0,\"pad\":\"" << std::string(room - 30, 'x') << "\"}\n";
  r = run_shell(limited + " train --resume --run-dir " + run_dir + " --steps 12");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find(metrics + ": cannot append (File too large)"), std::string::npos) << r.output;
  EXPECT_EQ(load_checkpoint(latest).step, 9);

  // samples.npz (3 KB here) past a 2 KB limit: refused, nothing under its name.
  const std::string out = dir / "full_samples";
  r = run_shell("ulimit -f 4; trap '' XFSZ; " + std::string(S2DM_BINARY) + " sample --checkpoint " + latest +
                " --num 3 --steps 2 --no-png --out " + out);
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("write failed (File too large)"), std::string::npos) << r.output;
  EXPECT_FALSE(std::filesystem::exists(out + "/samples.npz"));
  EXPECT_EQ(leftovers(out), "");
}

TEST_F(Cli, UnreadableReadOnlyAndShrinkingFilesAreUserErrors) {
  using s2dm::testing::expect_user_error;
  const std::string run_dir = dir / "ok";
  train(run_dir);
  const std::string ckpt = run_dir + "/checkpoints/latest.ckpt", binary = S2DM_BINARY;

  // Permissions: root reads everything, so as root the commands run as nobody (setpriv).
  const bool root = ::geteuid() == 0;
  if (root && run_shell("command -v setpriv").code != 0) {
    std::printf("[note] permission cases not run: root without setpriv\n");
  } else {
    const std::string as_user = root ? "setpriv --reuid=65534 --regid=65534 --clear-groups " + binary : binary;
    std::filesystem::permissions(dir.path(), std::filesystem::perms::all);
    const std::string config = dir / "private.yaml", locked = dir / "locked";
    std::filesystem::copy_file(kTiny, config);
    std::filesystem::permissions(config, std::filesystem::perms::none);
    expect_user_error(run_shell(as_user + " train --config " + config + " --run-dir " + (dir / "r1")),
                      config + ": cannot open (Permission denied)");
    std::filesystem::permissions(config, std::filesystem::perms::owner_read | std::filesystem::perms::others_read);
    std::filesystem::create_directories(locked);
    // Readable and searchable, writable by nobody (as a non-root owner too).
    using std::filesystem::perms;
    std::filesystem::permissions(locked, perms::owner_read | perms::owner_exec | perms::others_read | perms::others_exec);
    expect_user_error(run_shell(as_user + " train --config " + config + " " + data + " --run-dir " + locked + "/run"),
                      locked + "/run: cannot create the directory (Permission denied)");
    std::filesystem::permissions(ckpt, std::filesystem::perms::none);
    expect_user_error(run_shell(as_user + " sample --checkpoint " + ckpt + " --num 2 --steps 2 --out " + (dir / "s")),
                      ckpt + ": cannot open (Permission denied)");
    std::filesystem::permissions(ckpt, std::filesystem::perms::owner_read | std::filesystem::perms::others_read);
    const std::string images = (dir / "fmnist") + "/train-images-idx3-ubyte.gz";
    std::filesystem::permissions(images, std::filesystem::perms::none);
    expect_user_error(run_shell(as_user + " train --config " + config + " " + data + " --run-dir " + (dir / "r2")),
                      images + ": cannot open");
    std::filesystem::permissions(images, std::filesystem::perms::owner_read | std::filesystem::perms::others_read);
  }

  // A read-only file system (a tmpfs mounted read-only; mounting needs root).
  const std::string readonly = dir / "readonly";
  std::filesystem::create_directories(readonly);
  if (run_shell("mount -t tmpfs -o ro,size=1m tmpfs " + readonly).code != 0) {
    std::printf("[note] read-only file system case not run: cannot mount here\n");
  } else {
    expect_user_error(run("train --config " + kTiny + " " + data + " --run-dir " + readonly + "/run"),
                      readonly + "/run: cannot create the directory (Read-only file system)");
    expect_user_error(run("sample --checkpoint " + ckpt + " --num 2 --steps 2 --out " + readonly + "/samples"),
                      "Read-only file system");
    run_shell("umount " + readonly);
  }

  // A data file that shrinks while s2dm reads it: whatever the moment, a user error naming it
  // (s2dm reads files whole, never maps them, so a shrinking file reads as a truncated one).
  const std::string shrinking = dir / "shrinking";
  std::filesystem::create_directories(shrinking);
  constexpr int kImages = 20000;
  s2dm::testing::write_fake_fmnist(shrinking, kImages);
  // The images uncompressed (zlib reads a plain file through gzread as it is): 16 MB that take
  // a while to read and to shrink away, 2 KB at a time.
  const std::string file = shrinking + "/train-images-idx3-ubyte.gz";
  {
    using s2dm::testing::big_endian;
    std::ofstream out(file, std::ios::binary | std::ios::trunc);
    out << big_endian(0x803) + big_endian(kImages) + big_endian(28) + big_endian(28)
        << std::string(static_cast<size_t>(kImages) * 28 * 28, '\x55');
  }
  const auto r = run_shell("((while truncate -s -2048 " + file + " 2>/dev/null; do :; done) & shrink=$!; " + binary +
                           " train --config " + kTiny + " --set data.path=" + shrinking + " --run-dir " +
                           (dir / "r3") + "; code=$?; kill $shrink 2>/dev/null; wait $shrink; exit $code)");
  expect_user_error(r, file + ": ");
}

TEST_F(Cli, SigtermWritesACheckpoint) {
  const std::string run_dir = dir / "sig";
  // timeout sends SIGTERM after 6 s and, with --preserve-status, passes on s2dm's exit code.
  auto r = run_shell("timeout --preserve-status -s TERM 6 " + std::string(S2DM_BINARY) + " train --config " + kTiny +
                     " " + data + " --set train.steps=1000000 --set train.ckpt_every=1000000 --run-dir " + run_dir);
  EXPECT_EQ(r.code, 130) << r.output;
  auto ckpt = load_checkpoint(run_dir + "/checkpoints/latest.ckpt");
  EXPECT_GT(ckpt.step, 0);
}
