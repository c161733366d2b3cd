// The s2dm tool end to end on a tiny config: train, checkpoint, resume bit-identically, sample,
// export, and exit code 2 with a clear message for each kind of bad input.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <vector>

#include "../test_util.h"
#include "s2dm/core/compat.h"
#include "s2dm/io/checkpoint.h"
#include "s2dm/io/image_io.h"
#include "s2dm/eval/inception.h"
#include "s2dm/io/npy.h"
#include "s2dm/io/npy_tensor.h"
#include "s2dm/io/safetensors.h"
#include "s2dm/sample/generate.h"
#include "s2dm/sample/samplers.h"
#include "s2dm/sample/timesteps.h"
#include "s2dm/data/data.h"
#include "s2dm/eval/fid.h"

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
  // LibTorch 2.x's oneDNN computes some convolutions wrongly (compat::kOneDnnConvolutionsAreRight).
  EXPECT_NE(r.output.find(compat::kOneDnnConvolutionsAreRight ? "cpu convolution: oneDNN" : "cpu convolution: LibTorch's own"),
            std::string::npos) << r.output;
  r = run_shell("S2DM_CPU_ONEDNN=1 " + std::string(S2DM_BINARY) + " info --device cpu");
  EXPECT_NE(r.output.find("cpu convolution: oneDNN"), std::string::npos) << r.output;
}

TEST_F(Cli, ConvertedEdmNetworksAreDescribedAndSampled) {
  // A converted EDM network (tests/fixtures/make_edm_checkpoint_fixture.py): info describes it,
  // sample samples it with any sampler and Skip-Tuning, train refuses its (default) DDPM loss
  // before any work.
  const std::string fixture = std::string(S2DM_SOURCE_DIR) + "/tests/fixtures/edm_ckpt_adm";
  const std::string model = "--weights " + fixture + ".safetensors --config " + fixture + ".yaml";
  auto r = run("info --config " + fixture + ".yaml");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("network:        dhariwalunet"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("EDM's edm preconditioning; unconditional"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("long skips:     4"), std::string::npos) << r.output;
  r = run("sample " + model + " --sampler dpmpp-2m --steps 4 --timesteps edm --num 2 --no-png --skip-tuning 0.9 --out " +
          (dir / "edm"));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("4 network evaluations"), std::string::npos) << r.output;
  expect_user_error(run("train --config " + fixture + ".yaml --run-dir " + (dir / "run")),
                    "loss.type = 'simple' with model.type = 'dhariwalunet'");
  EXPECT_FALSE(std::filesystem::exists(dir / "run"));
  expect_user_error(run("sample " + model + " --set model.edm.label_dim=3 --out " + (dir / "cond")),
                    "map_label.weight");
  expect_user_error(run("sample " + model + " --class 0 --out " + (dir / "class")), "the model is unconditional");

  // A class-conditional one: each image's class from its seed, or one class for all (--class).
  const std::string cond = std::string(S2DM_SOURCE_DIR) + "/tests/fixtures/edm_ckpt_cond";
  const std::string conditional = "--weights " + cond + ".safetensors --config " + cond + ".yaml";
  r = run("info --config " + cond + ".yaml");
  EXPECT_NE(r.output.find("EDM's edm preconditioning; 3 classes"), std::string::npos) << r.output;
  for (const std::string classes : {"", " --class 2"}) {
    r = run("sample " + conditional + classes + " --sampler heun --steps 3 --num 2 --no-png --out " + (dir / "cond"));
    ASSERT_EQ(r.code, 0) << r.output;
  }
  EXPECT_NE(s2dm::testing::read_bytes(dir / "cond/sample.yaml").find("class_label: 2"), std::string::npos);
  expect_user_error(run("sample " + conditional + " --class 3 --out " + (dir / "class")), "sample.class_label = 3");
  EXPECT_FALSE(std::filesystem::exists(dir / "class"));
}

TEST_F(Cli, EdmNetworksTrainWithEdmsLossesResumeAndSample) {
  // A SongUNet with EDM's preconditioning and loss trains, resumes bit-identically (its noise
  // levels and dropout come from the training stream) and samples from its checkpoint; VP's and
  // VE's losses train too. What does not suit a network is refused before any work.
  const std::string edm = std::string(S2DM_SOURCE_DIR) + "/tests/configs/tiny_edm.yaml";
  const std::string straight = dir / "straight", split = dir / "split";
  auto train_edm = [&](const std::string& run_dir, const std::string& extra) {
    return run("train --config " + edm + " " + data + " --run-dir " + run_dir + " " + extra);
  };
  auto r = train_edm(straight, "");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("songunet network"), std::string::npos) << r.output;
  ASSERT_EQ(train_edm(split, "--steps 3").code, 0);
  r = run("train --resume --run-dir " + split + " --steps 6");
  ASSERT_EQ(r.code, 0) << r.output;
  const auto a = load_checkpoint(straight + "/checkpoints/latest.ckpt"), b = load_checkpoint(split + "/checkpoints/latest.ckpt");
  EXPECT_EQ(b.step, 6);
  EXPECT_TRUE(same_tensors(a.model, b.model));
  EXPECT_TRUE(same_tensors(a.ema, b.ema));
  EXPECT_EQ(a.model[0].first, "map_layer0.weight");  // (EDM's names)
  r = run("sample --checkpoint " + straight + "/checkpoints/latest.ckpt --sampler heun --steps 4 --num 2 --no-png --out " +
          (dir / "heun"));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("7 network evaluations"), std::string::npos) << r.output;
  for (const char* precond : {"vp", "ve"}) {
    r = train_edm(dir / precond, std::string("--steps 2 --set train.sample_num=0 --set model.edm.precond=") + precond);
    EXPECT_EQ(r.code, 0) << precond << r.output;
  }
  expect_user_error(train_edm(dir / "skip", "--set loss.type=s2dm"), "L_skip is defined on DDPM's discrete timesteps");
  expect_user_error(train_edm(dir / "iddpm", "--set model.edm.precond=iddpm"), "model.edm.precond = 'iddpm'");
  expect_user_error(train_edm(dir / "labels", "--set model.edm.label_dim=10"), "model.edm.label_dim = 10");
  expect_user_error(run("train --config " + kTiny + " " + data + " --run-dir " + (dir / "unet") + " --set loss.type=edm"),
                    "loss.type = 'edm' trains EDM's networks");
  for (const char* refused : {"skip", "iddpm", "labels", "unet"}) EXPECT_FALSE(std::filesystem::exists(dir / refused));
}

TEST_F(Cli, PsldTrainsResumesAndSamplesWithItsOwnSamplers) {
  // A PSLD model (z = [x, m], hybrid score matching) trains, resumes bit-identically and samples
  // images (the x half) with its samplers, NFE as documented, also on its dp grids; a VP sampler,
  // a DDPM-only grid, another process or loss, and a score-grid search are refused before any work.
  const std::string psld = std::string(S2DM_SOURCE_DIR) + "/tests/configs/tiny_psld.yaml";
  const std::string straight = dir / "straight", split = dir / "split";
  auto train_psld = [&](const std::string& run_dir, const std::string& extra) {
    return run("train --config " + psld + " " + data + " --run-dir " + run_dir + " " + extra);
  };
  auto r = train_psld(straight, "");
  ASSERT_EQ(r.code, 0) << r.output;
  ASSERT_EQ(train_psld(split, "--steps 3").code, 0);
  r = run("train --resume --run-dir " + split + " --steps 6");
  ASSERT_EQ(r.code, 0) << r.output;
  const auto a = load_checkpoint(straight + "/checkpoints/latest.ckpt"), b = load_checkpoint(split + "/checkpoints/latest.ckpt");
  EXPECT_TRUE(same_tensors(a.model, b.model));
  EXPECT_TRUE(same_tensors(a.ema, b.ema));
  const std::string ckpt = straight + "/checkpoints/latest.ckpt";
  for (const auto& [sampler, nfe] : {std::pair<std::string, std::string>{"csps", "4"}, {"nse", "7"}, {"roba", "4"}}) {
    r = run("sample --checkpoint " + ckpt + " --sampler " + sampler + " --steps 4 --timesteps quad --num 2 --no-png --out " +
            (dir / sampler));
    ASSERT_EQ(r.code, 0) << r.output;
    EXPECT_NE(r.output.find("(" + nfe + " network evaluations"), std::string::npos) << sampler << r.output;
    EXPECT_EQ(s2dm::sample::read_samples_npz((dir / sampler) + "/samples.npz").sizes().vec(), (std::vector<int64_t>{2, 1, 32, 32}));
  }
  const std::string sample = "sample --checkpoint " + ckpt + " --num 2 --no-png --out " + (dir / "refused") + " ";
  expect_user_error(run(sample + "--sampler ddim"), "samples VP models (DDPM's and EDM's), and this is one of the PSLD models");
  expect_user_error(run(sample + "--timesteps learned"), "a PSLD model samples on uniform, quad");
  expect_user_error(run(sample + "--set diffusion.process=vp --set loss.type=simple"), "the checkpoint holds a psld model");
  expect_user_error(run("schedule --checkpoint " + ckpt + " --data " + psld + " --steps 4 --out " + (dir / "refused.yaml")),
                    "a PSLD model");
  expect_user_error(train_psld(dir / "simple", "--set loss.type=simple"), "PSLD models train with loss.type hsm");
  expect_user_error(run("sample --checkpoint " + std::string(dir / "straight") + "/checkpoints/latest.ckpt --set "
                        "diffusion.psld.m_inv=3 --num 1 --out " + (dir / "refused")),
                    "diffusion.psld.m_inv = 3 is not critically damped");
  for (const char* refused : {"refused", "refused.yaml", "simple"}) EXPECT_FALSE(std::filesystem::exists(dir / refused));
  // Its dp grids for a sampler, searched and sampled with.
  r = run("schedule --checkpoint " + ckpt + " --method dp --sampler rse --steps 3 --levels 8 --samples 2 --out " +
          (dir / "dp.yaml"));
  ASSERT_EQ(r.code, 0) << r.output;
  r = run("sample --checkpoint " + ckpt + " --sampler rse --steps 3 --timesteps learned:" + (dir / "dp.yaml") +
          " --num 2 --no-png --out " + (dir / "dp"));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("(3 network evaluations"), std::string::npos) << r.output;
  // EDM's SongUNet as a PSLD network, its Fourier embedding on log t (the released code's NCSN++).
  r = run("train --config " + std::string(S2DM_SOURCE_DIR) + "/tests/configs/tiny_edm.yaml " + data + " --run-dir " +
          (dir / "song") + " --steps 2 --set diffusion.process=psld --set loss.type=hsm --set model.edm.embedding_type=fourier "
          "--set sample.sampler=psld-ddim --set sample.timesteps=logsnr");
  ASSERT_EQ(r.code, 0) << r.output;
}

TEST_F(Cli, HelpNamesWhatTheRegistriesHold) {
  // The help texts are built from the registries: a new sampler, time grid, feature network or
  // labelled data set shows up without an edit there.
  const auto sample_help = run("sample --help").output;
  const auto samplers = run("samplers").output;
  for (const auto& grid : s2dm::sample::timestep_grids()) {
    EXPECT_NE(sample_help.find(grid), std::string::npos) << grid;
    EXPECT_NE(samplers.find(grid), std::string::npos) << grid;
  }
  for (const auto& s : s2dm::sample::samplers()) {
    EXPECT_NE(samplers.find(s.name), std::string::npos) << s.name;
    if (s.max_order >= 0 || std::count(s.options.begin(), s.options.end(), "lambda")) {
      EXPECT_NE(sample_help.find(s.name), std::string::npos) << s.name;
    }
  }
  const auto fid_help = run("fid --help").output;
  for (const auto& network : s2dm::eval::feature_networks()) EXPECT_NE(fid_help.find(network.name), std::string::npos);
  const auto classifier_help = run("train-classifier --help").output;
  for (const auto& d : s2dm::data::datasets())
    EXPECT_EQ(classifier_help.find(d.name) != std::string::npos, d.labelled) << d.name;
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
  // Same seed, other batch size: the same images, each drawn from its own noise stream. Only the
  // network's rounding may differ with the batch (oneDNN picks its kernels by shape; on AVX-512
  // CPUs it does here), so the floats agree to 1e-4 and a pixel on a rounding boundary may move one
  // level of 255, where a noise that depended on the batch would move most pixels by many.
  r = run("sample --checkpoint " + ckpt + " --num 3 --batch 3 --steps 4 --seed 5 --no-png --out " + (dir / "s2") +
          " --save-float " + (dir / "s2.npy"));
  ASSERT_EQ(r.code, 0) << r.output;
  const std::string a = npz.at("arr_0").data, b = load_npz(dir / "s2/samples.npz").at("arr_0").data;
  ASSERT_EQ(a.size(), b.size());
  int max_level_change = 0;
  for (size_t i = 0; i < a.size(); ++i)
    max_level_change = std::max(max_level_change, std::abs(int{static_cast<uint8_t>(a[i])} - int{static_cast<uint8_t>(b[i])}));
  EXPECT_LE(max_level_change, 1);
  const std::string s1_path = dir / "s1.npy", s2_path = dir / "s2.npy";
  EXPECT_LT((s2dm::to_tensor(floats, s1_path) - s2dm::to_tensor(load_npy(s2_path), s2_path)).abs().max().item<double>(), 1e-4);

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

  // Exact initial noise from a file: the x_T that seed 5 draws gives seed 5's samples.
  auto noise = s2dm::sample::initial_noise(0, 2, {1, 32, 32}, 5).contiguous();
  save_npy(dir / "xT.npy", NpyArray{"<f4", {2, 1, 32, 32}, std::string(static_cast<char*>(noise.data_ptr()), noise.numel() * 4)});
  r = run("sample --checkpoint " + ckpt + " --noise " + (dir / "xT.npy") + " --steps 3 --no-png --out " + (dir / "n"));
  ASSERT_EQ(r.code, 0) << r.output;
  r = run("sample --checkpoint " + ckpt + " --seed 5 --num 2 --steps 3 --no-png --out " + (dir / "seeded"));
  ASSERT_EQ(r.code, 0) << r.output;
  const auto from_file = load_npz(dir / "n/samples.npz").at("arr_0"), seeded = load_npz(dir / "seeded/samples.npz").at("arr_0");
  EXPECT_EQ(from_file.shape[0], 2);
  EXPECT_EQ(from_file.data, seeded.data);
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
  for (const auto& sampler : s2dm::sample::samplers())
    EXPECT_NE(r.output.find("\n" + sampler.name + " "), std::string::npos) << sampler.name;
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
  expect_user_error(run(script + "--sampler rk45 --out " + (dir / "o")), "unknown sampler 'rk45'");
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
  expect_user_error(r, "run/samples: 1 image(s); statistics need at least 2");  // (a folder of one grid PNG)
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
  for (const char* key : {"method: dp", "sampler: deis", "order: 2", "  3: [999", "end_error:", "format: 2", "settings:",
                          "  final_alpha: one"})
    EXPECT_NE(text.find(key), std::string::npos) << key << " in " << text;
  const std::string sample = "sample --model-script " + fixtures + "gaussian_eps.pt --config " + kTiny +
                             " --num 2 --no-png --steps 5 --timesteps learned:" + (dir / "dp/d.yaml");
  r = run(sample + " --sampler deis --order 2 --out " + (dir / "dps"));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(r.output.find("searched for"), std::string::npos) << r.output;
  r = run(sample + " --sampler ddim --out " + (dir / "dps2"));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("searched for other sample settings: sampler deis there, ddim here"), std::string::npos)
      << r.output;
  r = run(sample + " --sampler deis --order 3 --out " + (dir / "dps3"));  // (the order is recorded and compared)
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("order 2 there, 3 here"), std::string::npos) << r.output;
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
      n += e.path().filename().string().find(".s2dm-tmp.") != std::string::npos;
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
      if (e.path().filename().string().find(".s2dm-tmp.") != std::string::npos) found += e.path().string() + " ";
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

// ---- Found by trying bad inputs and situations as a user would ----

TEST_F(Cli, NeverDeletesWhatItDidNotWriteWhateverTheDirectoryHolds) {
  namespace fs = std::filesystem;
  const std::string base = dir / "base";
  train(base);  // checkpoints at steps 3 and 6
  auto command = [&](const std::string& run_dir, const std::string& extra = "") {
    return run("train --config " + kTiny + " " + data + " --run-dir " + run_dir + " --steps 1 " + extra);
  };
  // A project folder with a config.yaml of its own: refused whatever the flags, left as it was
  // (no lock file either). It used to be taken for a run stopped before its first checkpoint and
  // emptied.
  const std::string project = dir / "project";
  fs::create_directories(project + "/src");
  s2dm::testing::write_bytes(project + "/config.yaml", "x\n");
  s2dm::testing::write_bytes(project + "/src/main.c", "int main() {}\n");
  for (const char* flags : {"", "--overwrite", "--resume"}) expect_user_error(command(project, flags), "not an s2dm run directory");
  EXPECT_EQ(s2dm::testing::read_bytes(project + "/src/main.c"), "int main() {}\n");
  EXPECT_EQ(s2dm::testing::read_bytes(project + "/config.yaml"), "x\n");
  EXPECT_FALSE(fs::exists(project + "/.lock"));
  // A lone config.yaml is someone's file too; so is a lock file that is not s2dm's.
  fs::create_directories(dir / "lone");
  s2dm::testing::write_bytes(dir / "lone/config.yaml", "train: {}\n");
  expect_user_error(command(dir / "lone"), "not an s2dm run directory (it holds config.yaml)");
  fs::create_directories(dir / "locked");
  s2dm::testing::write_bytes(dir / "locked/.lock", "held by my own tool\n");
  expect_user_error(command(dir / "locked"), "(it holds .lock)");
  EXPECT_EQ(s2dm::testing::read_bytes(dir / "locked/.lock"), "held by my own tool\n");
  // A file where the directory should be.
  s2dm::testing::write_bytes(dir / "afile", "mine");
  expect_user_error(command(dir / "afile"), "is a file, not a directory");
  EXPECT_EQ(s2dm::testing::read_bytes(dir / "afile"), "mine");
  // Another program's checkpoints/latest.ckpt (not s2dm's format) makes no run directory of a
  // folder: --overwrite would have removed it with the config beside it.
  fs::create_directories(dir / "other/checkpoints");
  s2dm::testing::write_bytes(dir / "other/checkpoints/latest.ckpt", "another trainer's weights");
  s2dm::testing::write_bytes(dir / "other/config.yaml", "lr: 3\n");
  for (const char* flags : {"", "--overwrite", "--resume"})
    expect_user_error(command(dir / "other", flags), "not an s2dm run directory (it holds checkpoints, checkpoints/latest.ckpt, config.yaml)");
  EXPECT_EQ(s2dm::testing::read_bytes(dir / "other/checkpoints/latest.ckpt"), "another trainer's weights");

  // latest.ckpt deleted: the step files stay. Without --resume the run is refused; with it, the
  // newest step file continues (and says so). Both used to wipe every step_N.ckpt.
  const std::string lost = dir / "lost";
  fs::copy(base, lost, fs::copy_options::recursive);
  fs::remove(lost + "/checkpoints/latest.ckpt");
  expect_user_error(command(lost), "run directory exists, with checkpoints");
  EXPECT_TRUE(fs::exists(lost + "/checkpoints/step_3.ckpt"));
  EXPECT_TRUE(fs::exists(lost + "/checkpoints/step_6.ckpt"));
  auto r = run("train --resume --run-dir " + lost + " --steps 8");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("resuming from " + lost + "/checkpoints/step_6.ckpt (step 6)"), std::string::npos) << r.output;
  EXPECT_EQ(load_checkpoint(lost + "/checkpoints/latest.ckpt").step, 8);
  // A latest.ckpt that no longer loads (nor step_6.ckpt, its hard link in a run directory): step 3
  // continues.
  const std::string torn = dir / "torn";
  fs::copy(base, torn, fs::copy_options::recursive);  // (copies the link as a second file)
  for (const char* name : {"latest.ckpt", "step_6.ckpt"}) {
    std::fstream f(torn + "/checkpoints/" + name, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(-64, std::ios::end);
    f << std::string(64, '\0');
  }
  r = run("train --resume --run-dir " + torn + " --steps 4");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("resuming from " + torn + "/checkpoints/step_3.ckpt (step 3)"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("checksum mismatch"), std::string::npos) << r.output;

  // A run stopped before its first checkpoint (marked, config and log written, no checkpoint)
  // starts again only while it holds nothing of anyone else's; --overwrite replaces s2dm's files
  // and keeps the rest.
  const std::string early = dir / "early";
  fs::copy(base, early, fs::copy_options::recursive);
  fs::remove_all(early + "/checkpoints");
  s2dm::testing::write_bytes(early + "/notes.txt", "my notes");
  expect_user_error(command(early), "also holds what s2dm did not write (notes.txt)");
  r = command(early, "--overwrite");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(s2dm::testing::read_bytes(early + "/notes.txt"), "my notes");
  EXPECT_EQ(load_checkpoint(early + "/checkpoints/latest.ckpt").step, 1);
  // --overwrite of a finished run: its checkpoints and grids go, a file of the user's stays.
  const std::string done = dir / "done";
  fs::copy(base, done, fs::copy_options::recursive);
  s2dm::testing::write_bytes(done + "/samples/favourite.png", "a picture");
  r = command(done, "--overwrite");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("kept what s2dm did not write there: samples/favourite.png"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(done + "/checkpoints/step_6.ckpt"));
  EXPECT_FALSE(fs::exists(done + "/samples/step_6.png"));
  EXPECT_EQ(s2dm::testing::read_bytes(done + "/samples/favourite.png"), "a picture");
  // A samples/ that links elsewhere is never followed (its files there would have been removed).
  const std::string linked = dir / "linked";
  fs::copy(base, linked, fs::copy_options::recursive);
  fs::create_directories(dir / "elsewhere");
  s2dm::testing::write_bytes(dir / "elsewhere/step_100.png", "someone's");
  fs::remove_all(linked + "/samples");
  fs::create_directory_symlink(dir / "elsewhere", linked + "/samples");
  expect_user_error(command(linked, "--overwrite"), "samples: a file or a symbolic link where s2dm keeps a folder");
  EXPECT_EQ(s2dm::testing::read_bytes(dir / "elsewhere/step_100.png"), "someone's");
  // An empty directory is a new run's.
  fs::create_directories(dir / "empty");
  EXPECT_EQ(command(dir / "empty").code, 0);
  // A run refused once its data is read leaves none of the folders it made behind it.
  expect_user_error(run("train --config " + kTiny + " --set data.path=" + (dir / "nowhere") + " --run-dir " +
                        (dir / "new/deeper")),
                    "nowhere");
  EXPECT_FALSE(fs::exists(dir / "new"));
  // An unmarked run directory of an s2dm before the marker (its checkpoints say s2dm's format):
  // it resumes, and is marked then.
  const std::string legacy = dir / "legacy";
  fs::copy(base, legacy, fs::copy_options::recursive);
  fs::remove(legacy + "/.s2dm-run");
  r = run("train --resume --run-dir " + legacy + " --steps 7");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_TRUE(fs::exists(legacy + "/.s2dm-run"));
}

TEST_F(Cli, ARefusedResumeWritesNothing) {
  // --resume with a model the checkpoint does not hold is refused (exit 2); its config.yaml used to
  // say the refused model all the same.
  const std::string run_dir = dir / "run";
  train(run_dir);
  std::map<std::string, std::string> before;
  for (const char* f : {"config.yaml", "log.txt", "metrics.jsonl", "checkpoints/latest.ckpt"})
    before[f] = s2dm::testing::read_bytes(run_dir + "/" + f);
  expect_user_error(run("train --resume --run-dir " + run_dir + " --set model.ch=64"), "different model config");
  expect_user_error(run("train --resume --run-dir " + run_dir + " --set train.bogus=1"), "--set train.bogus=1");
  for (const auto& [f, bytes] : before) EXPECT_EQ(s2dm::testing::read_bytes(run_dir + "/" + f), bytes) << f;
}

TEST_F(Cli, ASignalDuringTheLastGridStopsItPromptly) {
  // The grid after the last checkpoint: 8 images of a 1000-step sampler (minutes on one thread).
  // SIGINT once the final checkpoint is written stops it at the next network evaluation with exit
  // 130; it used to run to the end and exit 0 (and a TERM from `timeout` waited minutes).
  const std::string run_dir = dir / "grid";
  for (const char* sig : {"INT", "TERM"}) {
    std::filesystem::remove_all(run_dir);
    const auto r = run_shell("timeout -s KILL 120 " + std::string(S2DM_BINARY) + " train --config " + kTiny + " " + data +
                             " --run-dir " + run_dir + " --steps 2 --set sample.steps=1000 --set train.sample_num=8 & "
                             "pid=$!; for i in $(seq 1200); do [ -f " + run_dir + "/checkpoints/step_2.ckpt ] && break; "
                             "sleep 0.1; done; sleep 0.5; kill -" + sig + " $pid; wait $pid");
    EXPECT_EQ(r.code, 130) << sig << ": " << r.output;
    EXPECT_NE(r.output.find("signal received while sampling at step 2"), std::string::npos) << r.output;
    EXPECT_FALSE(std::filesystem::exists(run_dir + "/samples/step_2.png"));
    EXPECT_EQ(load_checkpoint(run_dir + "/checkpoints/latest.ckpt").step, 2);
  }
  // The checkpoint owes the grid: --resume draws it (quickly here) and trains no further.
  auto resumed = run("train --resume --run-dir " + run_dir + " --set sample.steps=3");
  ASSERT_EQ(resumed.code, 0) << resumed.output;
  EXPECT_TRUE(std::filesystem::exists(run_dir + "/samples/step_2.png"));
  EXPECT_EQ(load_checkpoint(run_dir + "/checkpoints/latest.ckpt").extra.count("owed"), 0u);
  // A signal during a mid-run grid (no checkpoint at that step): a checkpoint is written first.
  std::filesystem::remove_all(run_dir);
  const auto r = run_shell("timeout -s KILL 120 " + std::string(S2DM_BINARY) + " train --config " + kTiny + " " + data +
                           " --run-dir " + run_dir + " --steps 4 --set train.ckpt_every=100 --set train.sample_every=1 "
                           "--set sample.steps=1000 --set train.sample_num=8 & pid=$!; for i in $(seq 1200); do "
                           "grep -q '\"step\":1,' " + run_dir + "/metrics.jsonl 2>/dev/null && break; sleep 0.1; done; "
                           "sleep 0.5; kill -INT $pid; wait $pid");
  EXPECT_EQ(r.code, 130) << r.output;
  EXPECT_EQ(load_checkpoint(run_dir + "/checkpoints/latest.ckpt").step, 1);
}

TEST_F(Cli, EvaluationLeavesTheTrainingStreamAlone) {
  // With train.eval_every on, a run stopped at step 4 and resumed ended unlike an uninterrupted
  // one (building the feature network drew from the training RNG): now they are bit-identical,
  // FDs included.
  s2dm::testing::write_fake_fmnist(dir / "fmnist", 16, "t10k");
  s2dm::testing::write_bytes(dir / "data.yaml", "data:\n  dataset: fmnist\n  path: " + (dir / "fmnist") + "\n");
  auto r = run("train-classifier --data " + (dir / "data.yaml") + " --out " + (dir / "c.safetensors") + " --epochs 1");
  ASSERT_EQ(r.code, 0) << r.output;
  const std::string eval = "--set train.eval_every=2 --set train.eval_num=4 --set train.eval_features=classifier:" +
                           (dir / "c.safetensors") + " --set train.steps=12";
  train(dir / "straight", eval);
  train(dir / "split", eval + " --steps 4");
  r = run("train --resume --run-dir " + (dir / "split") + " --steps 12");
  ASSERT_EQ(r.code, 0) << r.output;
  auto a = load_checkpoint(dir / "straight/checkpoints/latest.ckpt"), b = load_checkpoint(dir / "split/checkpoints/latest.ckpt");
  EXPECT_EQ(b.step, 12);
  EXPECT_TRUE(same_tensors(a.model, b.model));
  EXPECT_TRUE(same_tensors(a.ema, b.ema));
  EXPECT_TRUE(same_tensors(a.rng, b.rng));
  auto fds = [](const std::string& metrics) {
    std::string out;
    std::istringstream in(metrics);
    for (std::string line; std::getline(in, line);)
      if (line.find("\"fd\"") != std::string::npos) out += line + "\n";
    return out;
  };
  const auto straight_fds = fds(s2dm::testing::read_bytes(dir / "straight/metrics.jsonl"));
  EXPECT_EQ(std::count(straight_fds.begin(), straight_fds.end(), '\n'), 6);
  EXPECT_EQ(straight_fds, fds(s2dm::testing::read_bytes(dir / "split/metrics.jsonl")));
}

TEST_F(Cli, AnInterruptedEvaluationIsDoneFirstOnResume) {
  // The evaluation at step 2 (1000 sampler steps: long) is interrupted; the resumed run (with the
  // 3 steps of the uninterrupted one) measures step 2 first, and then goes on as that run did:
  // the same FD lines, the same weights.
  s2dm::testing::write_fake_fmnist(dir / "fmnist", 16, "t10k");
  s2dm::testing::write_bytes(dir / "data.yaml", "data:\n  dataset: fmnist\n  path: " + (dir / "fmnist") + "\n");
  auto r = run("train-classifier --data " + (dir / "data.yaml") + " --out " + (dir / "c.safetensors") + " --epochs 1");
  ASSERT_EQ(r.code, 0) << r.output;
  const std::string eval = "--set train.eval_every=2 --set train.eval_num=8 --set train.eval_features=classifier:" +
                           (dir / "c.safetensors") + " --set train.steps=4 --set train.sample_num=0";
  train(dir / "straight", eval);
  const std::string run_dir = dir / "split";
  r = run_shell("timeout -s KILL 120 " + std::string(S2DM_BINARY) + " train --config " + kTiny + " " + data + " " + eval +
                " --set sample.steps=1000 --run-dir " + run_dir + " & pid=$!; for i in $(seq 1200); do "
                "grep -q '\"step\":2,\"loss\"' " + run_dir + "/metrics.jsonl 2>/dev/null && break; sleep 0.1; done; "
                "sleep 0.5; kill -INT $pid; wait $pid");
  ASSERT_EQ(r.code, 130) << r.output;
  EXPECT_EQ(load_checkpoint(run_dir + "/checkpoints/latest.ckpt").extra.at("owed"), "evaluation");
  r = run("train --resume --run-dir " + run_dir + " --set sample.steps=3");
  ASSERT_EQ(r.code, 0) << r.output;
  auto fds = [](const std::string& metrics) {
    std::string out;
    std::istringstream in(metrics);
    for (std::string line; std::getline(in, line);)
      if (line.find("\"fd\"") != std::string::npos) out += line + "\n";
    return out;
  };
  const auto expected = fds(s2dm::testing::read_bytes(dir / "straight/metrics.jsonl"));
  EXPECT_EQ(std::count(expected.begin(), expected.end(), '\n'), 2);  // steps 2 and 4
  EXPECT_EQ(fds(s2dm::testing::read_bytes(run_dir + "/metrics.jsonl")), expected);
  auto a = load_checkpoint(dir / "straight/checkpoints/latest.ckpt"), b = load_checkpoint(run_dir + "/checkpoints/latest.ckpt");
  EXPECT_TRUE(same_tensors(a.model, b.model));
  EXPECT_TRUE(same_tensors(a.ema, b.ema));
}

TEST_F(Cli, TheLogSurvivesSigkill) {
  // log.txt was buffered: 0 bytes after a SIGKILL though lines had been printed.
  const std::string run_dir = dir / "killed";
  run_shell(std::string(S2DM_BINARY) + " train --config " + kTiny + " " + data + " --run-dir " + run_dir +
            " --set train.steps=1000000 --set train.ckpt_every=1000000 > /dev/null 2>&1 & pid=$!; for i in $(seq 600); do "
            "[ $(cat " + run_dir + "/metrics.jsonl 2>/dev/null | wc -l) -ge 2 ] && break; sleep 0.1; done; "
            "kill -9 $pid; wait $pid; true");
  const auto log = s2dm::testing::read_bytes(run_dir + "/log.txt");
  EXPECT_NE(log.find("run " + run_dir + ": training on cpu"), std::string::npos) << log;
  EXPECT_NE(log.find("model: "), std::string::npos) << log;
}

TEST_F(Cli, EveryCountOptionIsRangeCheckedBeforeWork) {
  // Each used to crash (SIGFPE), loop for ever, or go on silently; now exit 2 naming the flag,
  // before any work. (timeout: a regression must fail, not hang.)
  const std::string run_dir = dir / "run";
  train(run_dir);
  const std::string ckpt = run_dir + "/checkpoints/latest.ckpt";
  s2dm::testing::write_fake_fmnist(dir / "fmnist", 16, "t10k");
  s2dm::testing::write_bytes(dir / "data.yaml", "data:\n  dataset: fmnist\n  path: " + (dir / "fmnist") + "\n");
  save_npz(dir / "x.npz", {{"arr_0", NpyArray{"|u1", {4, 32, 32, 1}, std::string(4 * 32 * 32, '\x40')}}});
  const std::string classifier = "train-classifier --data " + (dir / "data.yaml") + " --out " + (dir / "c.st");
  const std::string schedule = "schedule --checkpoint " + ckpt + " --out " + (dir / "s.yaml");
  const std::string train_cmd = "train --config " + kTiny + " " + data + " --run-dir " + (dir / "t");
  const std::vector<std::pair<std::string, std::string>> cases{
      {classifier + " --batch 0", "--batch 0: out of range [1, 1048576]"},
      {classifier + " --batch -1", "--batch -1: out of range"},
      {classifier + " --epochs 0", "--epochs 0: out of range"},
      {classifier + " --limit -3", "--limit -3: out of range"},
      {classifier + " --threads -5", "--threads -5: out of range [0, 4096]"},
      {schedule + " --data " + (dir / "data.yaml") + " --batch 0", "--batch 0: out of range"},
      {schedule + " --data " + (dir / "data.yaml") + " --levels 1", "--levels 1: out of range [3, 100000]"},
      {schedule + " --data " + (dir / "data.yaml") + " --samples 0", "--samples 0: out of range"},
      {schedule + " --data " + (dir / "data.yaml") + " --steps 0", "--steps 0: out of range"},
      {schedule + " --method dp --sweeps -1", "--sweeps -1: out of range [0, 1000]"},
      {schedule + " --data " + (dir / "data.yaml") + " --sweeps 2", "--sweeps are for --method dp"},
      {"fid-stats " + (dir / "x.npz") + " --out " + (dir / "o.npz") + " --batch 0", "--batch 0: out of range"},
      {"fid-stats " + (dir / "x.npz") + " --out " + (dir / "o.npz") + " --batch -1", "--batch -1: out of range"},
      {"fid-stats " + (dir / "x.npz") + " --out " + (dir / "o.npz") + " --num -5", "--num -5: expected 0"},
      {"fid-stats " + (dir / "x.npz") + " --out " + (dir / "o.npz") + " --threads 5000", "--threads 5000"},
      {"fid-stats " + (dir / "x.npz") + " --out " + dir.path(), "--out " + dir.path() + ": is a directory"},
      {"fid " + (dir / "x.npz") + " " + (dir / "x.npz") + " --batch 0 --features classifier:" + (dir / "c.st"),
       "--batch 0: out of range"},
      {"fid " + (dir / "x.npz") + " " + (dir / "x.npz") + " --num 1", "--num 1: expected 0"},
      {train_cmd + " --steps -1", "--steps -1: out of range"},
      {train_cmd + " --nproc 0", "--nproc 0: out of range [1, 1024]"},
      {"info --threads -5", "--threads -5: out of range"},
      {"export --checkpoint " + ckpt + " --out " + ckpt, "is the checkpoint it reads"},
      {"schedule --checkpoint " + ckpt + " --method dp --out " + ckpt, "is the checkpoint it reads"},
      {"schedule --checkpoint " + ckpt + " --method dp --out " + (dir / "s.png"), "expected a .yaml file"},
      {"samplers --steps -5", "--steps -5: out of range [1, 100000]"},
      {"sample --checkpoint " + ckpt + " --out " + (dir / "o") + " --set sample.skip_tuning.t_min=500 "
       "--set sample.skip_tuning.t_max=100", "t_min = 500 exceeds sample.skip_tuning.t_max = 100"},
      {"sample --checkpoint " + ckpt + " --out " + (dir / "o") + " --num 0", "sample.num = 0 is out of range"},
  };
  for (const auto& [args, needle] : cases) {
    const auto r = run_shell("timeout -s KILL 60 " + std::string(S2DM_BINARY) + " " + args);
    expect_user_error(r, needle);
  }
  EXPECT_FALSE(std::filesystem::exists(dir / "c.st"));
  EXPECT_FALSE(std::filesystem::exists(dir / "s.yaml"));
  EXPECT_FALSE(std::filesystem::exists(dir / "o.npz"));
  EXPECT_FALSE(std::filesystem::exists(dir / "t"));
  EXPECT_FALSE(std::filesystem::exists(dir / "o"));
}

TEST_F(Cli, ConfigsThatAreNoMappingAreRefused) {
  // --config naming a directory read as an empty config and trained the default CIFAR-size model.
  std::filesystem::create_directories(dir / "configs");
  s2dm::testing::write_bytes(dir / "empty.yaml", "");
  s2dm::testing::write_bytes(dir / "list.yaml", "- data\n- model\n");
  s2dm::testing::write_bytes(dir / "twice.yaml", "train:\n  steps: 2\ntrain:\n  steps: 3\n");
  const std::vector<std::pair<std::string, std::string>> cases{
      {dir / "configs", dir / "configs: is a directory"},
      {dir / "empty.yaml", "empty.yaml: empty config"},
      {dir / "list.yaml", "list.yaml: expected a mapping of sections"},
      {dir / "twice.yaml", "twice.yaml:3: key 'train' appears twice"}};
  for (const auto& [config, needle] : cases) {
    expect_user_error(run_shell("timeout -s KILL 60 " + std::string(S2DM_BINARY) + " train --config " + config +
                                " --run-dir " + (dir / "r")),
                      needle);
    expect_user_error(run("sample --model-script " + std::string(S2DM_SOURCE_DIR) + "/tests/fixtures/gaussian_eps.pt"
                          " --config " + config + " --out " + (dir / "o")),
                      needle);
  }
  expect_user_error(run("train --config " + kTiny + " --set a.b.c.d=1 --run-dir " + (dir / "r")),
                    "--set a.b.c.d=1: unknown key 'a'");
  EXPECT_FALSE(std::filesystem::exists(dir / "r"));
}

TEST_F(Cli, SamplingInputsAndOutputsAreChecked) {
  const std::string run_dir = dir / "run";
  train(run_dir);
  const std::string sample = "sample --checkpoint " + run_dir + "/checkpoints/latest.ckpt --steps 2 ";
  auto noise = [&](const std::string& name, std::vector<int64_t> shape, float first) {
    int64_t n = 1;
    for (auto d : shape) n *= d;
    std::vector<float> values(n, 0.5f);
    if (n > 0) values[0] = first;
    save_npy(dir / name, NpyArray{"<f4", shape, std::string(reinterpret_cast<const char*>(values.data()), n * 4)});
    return dir / name;
  };
  // Initial noise: no images, a NaN, and a wrong shape; each names the file.
  expect_user_error(run(sample + "--noise " + noise("none.npy", {0, 1, 32, 32}, 0) + " --out " + (dir / "o")),
                    "none.npy: holds no images");
  expect_user_error(run(sample + "--noise " + noise("nan.npy", {2, 1, 32, 32}, NAN) + " --out " + (dir / "o")),
                    "nan.npy: initial noise holds NaN or Inf");
  expect_user_error(run(sample + "--noise " + noise("rgb.npy", {2, 3, 32, 32}, 0) + " --out " + (dir / "o")),
                    "rgb.npy: initial noise of shape [2, 3, 32, 32], the model takes [N, 1, 32, 32]");
  // --out: a file is refused before sampling; an earlier output with more images loses them.
  s2dm::testing::write_bytes(dir / "file", "x");
  expect_user_error(run(sample + "--out " + (dir / "file")), "--out " + (dir / "file") + ": exists and is not a directory");
  expect_user_error(run(sample + "--out " + (dir / "o") + " --save-float " + dir.path()), "is a directory");
  EXPECT_FALSE(std::filesystem::exists(dir / "o"));
  auto r = run(sample + "--num 3 --out " + (dir / "o"));
  ASSERT_EQ(r.code, 0) << r.output;
  s2dm::testing::write_bytes(dir / "o/notes.txt", "mine");
  r = run(sample + "--num 2 --out " + (dir / "o"));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_TRUE(std::filesystem::exists(dir / "o/000001.png"));
  EXPECT_FALSE(std::filesystem::exists(dir / "o/000002.png"));
  EXPECT_EQ(s2dm::testing::read_bytes(dir / "o/notes.txt"), "mine");
  r = run(sample + "--num 2 --no-png --out " + (dir / "o"));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_FALSE(std::filesystem::exists(dir / "o/000000.png"));
  // An image added to an earlier output beyond the ones it counts is not the earlier run's: it stays.
  s2dm::testing::write_bytes(dir / "o/000010.png", "added");
  r = run(sample + "--num 2 --out " + (dir / "o"));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(s2dm::testing::read_bytes(dir / "o/000010.png"), "added");
  expect_user_error(run(sample + "--num 12 --out " + (dir / "o")), "000010.png, which its earlier output did not write");
  // A temporary file of a run stopped while writing goes with the earlier output.
  s2dm::testing::write_bytes(dir / "o/000001.png.s2dm-tmp.999999999", "torn");
  r = run(sample + "--num 2 --out " + (dir / "o"));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_FALSE(std::filesystem::exists(dir / "o/000001.png.s2dm-tmp.999999999"));
  // A folder of someone's numbered images (no record of s2dm sample) is not an earlier output:
  // refused, with a sample.yaml of its own too.
  std::filesystem::create_directories(dir / "pictures");
  s2dm::testing::write_bytes(dir / "pictures/000000.png", "a picture");
  expect_user_error(run(sample + "--out " + (dir / "pictures")), "no record of s2dm sample");
  s2dm::testing::write_bytes(dir / "pictures/sample.yaml", "camera: mine\n");
  expect_user_error(run(sample + "--out " + (dir / "pictures")), "no record of s2dm sample");
  EXPECT_EQ(s2dm::testing::read_bytes(dir / "pictures/000000.png"), "a picture");
  // Flags that contradict or change nothing are refused.
  const std::string three = noise("three.npy", {3, 1, 32, 32}, 0);
  expect_user_error(run(sample + "--noise " + three + " --num 5 --out " + (dir / "n")), "--num 5 but --noise");
  expect_user_error(run(sample + "--sampler ddpm --eta 0.5 --out " + (dir / "n")), "--eta: sampler 'ddpm' does not read eta");
  expect_user_error(run(sample + "--sampler plms --lambda 0.7 --out " + (dir / "n")), "--lambda: sampler 'plms'");
  expect_user_error(run(sample + "--out " + (dir / "n") + " --save-float " + (dir / "n/000000.png")), "a file that --out");
  expect_user_error(run(sample + "--noise " + three + " --save-float " + three + " --out " + (dir / "n")),
                    "is the --noise file itself");
  expect_user_error(run(sample + "--out ''"), "--out: empty value");
  expect_user_error(run("train --config " + kTiny + " --run-dir '' --steps 1"), "--run-dir: empty value");
  EXPECT_FALSE(std::filesystem::exists(dir / "n"));
}

TEST_F(Cli, FidRefusesWhatIsNoStatisticsNamingTheFile) {
  const auto sigma = [](const std::string& path, const torch::Tensor& s) {
    save_npz(path, {{"mu", NpyArray{"<f8", {s.size(0)}, std::string(s.size(0) * 8, '\0')}},
                    {"sigma", NpyArray{"<f8", {s.size(0), s.size(0)}, std::string(static_cast<const char*>(s.data_ptr()),
                                                                                   s.numel() * 8)}}});
  };
  sigma(dir / "ok.npz", torch::eye(4, torch::kFloat64));
  sigma(dir / "negative.npz", -torch::eye(4, torch::kFloat64));  // gave FID -8
  auto skew = torch::eye(4, torch::kFloat64);
  skew[0][3] = 0.7;
  sigma(dir / "skew.npz", skew);
  expect_user_error(run("fid " + (dir / "negative.npz") + " " + (dir / "ok.npz")), "negative.npz: sigma is not positive semi-definite");
  expect_user_error(run("fid " + (dir / "ok.npz") + " " + (dir / "skew.npz")), "skew.npz: sigma is not symmetric");
  // Accepted statistics give their closed form: Σ = I against 4I, equal means: 4 + 16 - 2·tr(2I) = 4.
  sigma(dir / "four.npz", 4 * torch::eye(4, torch::kFloat64));
  auto r = run("fid " + (dir / "ok.npz") + " " + (dir / "four.npz") + " --json");
  ASSERT_EQ(r.code, 0) << r.output;
  const auto line = r.output.substr(r.output.find('{'));
  ASSERT_EQ(line.rfind("{\"fid\":", 0), 0u) << line;
  EXPECT_NEAR(std::stod(line.substr(line.find(':') + 1)), 4.0, 1e-9) << line;

  // Image sets that cannot give statistics or do not suit the features: each names its file.
  s2dm::testing::write_fake_fmnist(dir / "fmnist", 16, "t10k");
  s2dm::testing::write_bytes(dir / "data.yaml", "data:\n  dataset: fmnist\n  path: " + (dir / "fmnist") + "\n");
  r = run("train-classifier --data " + (dir / "data.yaml") + " --out " + (dir / "c.st") + " --epochs 1");
  ASSERT_EQ(r.code, 0) << r.output;
  const std::string features = " --features classifier:" + (dir / "c.st");
  auto images = [&](const std::string& name, int64_t n, int64_t c) {  // (RGB ones in colour)
    std::string bytes(n * 32 * 32 * c, '\x30');
    for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<char>(0x30 + 0x20 * (i % c));
    save_npz(dir / name, {{"arr_0", NpyArray{"|u1", {n, 32, 32, c}, bytes}}});
    return dir / name;
  };
  const std::string gray = images("gray.npz", 4, 1);
  expect_user_error(run("fid " + images("empty.npz", 0, 1) + " " + gray + features), "empty.npz: arr_0 holds no images");
  expect_user_error(run("fid " + images("one.npz", 1, 1) + " " + gray + features), "one.npz: 1 image(s)");
  expect_user_error(run("fid " + images("rgb.npz", 4, 3) + " " + gray + features), "rgb.npz: the classifier");
  // A folder of grey PNGs (s2dm sample's own) is read as RGB: it is grey to the classifier.
  std::filesystem::create_directories(dir / "grey");
  for (int i = 0; i < 3; ++i)
    write_png(dir / ("grey/00000" + std::to_string(i) + ".png"), Image{32, 32, 1, std::vector<uint8_t>(1024, 60 * i)});
  r = run("fid " + (dir / "grey") + " " + gray + features);
  EXPECT_EQ(r.code, 0) << r.output;
  // Statistics of another feature space: the message names both sides.
  sigma(dir / "wide.npz", torch::eye(128, torch::kFloat64));
  expect_user_error(run("fid " + (dir / "ok.npz") + " " + (dir / "wide.npz")), "ok.npz (statistics) and " + (dir / "wide.npz"));
  // fid-stats never writes over its source.
  expect_user_error(run("fid-stats " + gray + " --out " + gray + features), "is the source it reads");
  expect_user_error(run("fid-stats " + (dir / "grey") + " --out " + (dir / "grey/000000.png") + features), "expected a .npz file");
}
