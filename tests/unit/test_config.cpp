#include <gtest/gtest.h>

#include "s2dm/core/config.h"
#include "s2dm/core/device.h"
#include "s2dm/core/errors.h"
#include "s2dm/experiment/experiment.h"
#include "../test_util.h"

using s2dm::ConfigError;
using s2dm::parse_config;

namespace {

// The message of the ConfigError that parsing `yaml` throws.
std::string error_of(const std::string& yaml, const std::vector<std::string>& overrides = {}) {
  try {
    parse_config(yaml, "cfg.yaml", overrides);
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "(no error)";
}

}  // namespace

TEST(Config, DefaultsAreTheCifar10Recipe) {
  auto c = parse_config("{}", "empty.yaml");
  EXPECT_EQ(c.model.ch, 128);
  EXPECT_EQ(c.model.ch_mult, (std::vector<int>{1, 2, 2, 2}));
  EXPECT_DOUBLE_EQ(c.train.lr, 2e-4);
  EXPECT_DOUBLE_EQ(c.train.ema_decay, 0.9999);
  EXPECT_EQ(c.loss.type, "simple");
  EXPECT_EQ(c.loss.noise, "independent");
}

TEST(Config, ReadsValues) {
  auto c = parse_config("seed: 3\ntrain:\n  lr: 1.0e-3\n  batch_size: 32\nmodel:\n  ch_mult: [1, 2]\n"
                        "loss:\n  type: s2dm\n  skip_k: 49\n",
                        "x.yaml");
  EXPECT_EQ(c.seed, 3u);
  EXPECT_DOUBLE_EQ(c.train.lr, 1e-3);
  EXPECT_EQ(c.train.batch_size, 32);
  EXPECT_EQ(c.model.ch_mult, (std::vector<int>{1, 2}));
  EXPECT_EQ(c.loss.skip_k, 49);
}

TEST(Config, UnknownKeyNamesFileLineAndSuggestion) {
  auto msg = error_of("train:\n  lr: 0.1\n  warmpu: 10\n");
  EXPECT_NE(msg.find("cfg.yaml:3"), std::string::npos) << msg;
  EXPECT_NE(msg.find("unknown key 'train.warmpu'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("did you mean 'train.warmup'"), std::string::npos) << msg;
}

TEST(Config, UnknownSectionRejected) {
  auto msg = error_of("trian:\n  lr: 0.1\n");
  EXPECT_NE(msg.find("unknown key 'trian'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("did you mean 'train'"), std::string::npos) << msg;
}

TEST(Config, WrongTypesRejected) {
  EXPECT_NE(error_of("train:\n  lr: fast\n").find("train.lr: expected a number, got 'fast'"), std::string::npos);
  EXPECT_NE(error_of("train:\n  batch_size: 1.5\n").find("expected an integer"), std::string::npos);
  EXPECT_NE(error_of("data:\n  random_flip: maybe\n").find("true or false"), std::string::npos);
  EXPECT_NE(error_of("model:\n  ch_mult: 2\n").find("expected a list of integers"), std::string::npos);
  EXPECT_NE(error_of("train: 5\n").find("expected a mapping"), std::string::npos);
}

TEST(Config, RangesAndEnumsChecked) {
  auto msg = error_of("train:\n  ema_decay: 1.5\n");
  EXPECT_NE(msg.find("cfg.yaml:2"), std::string::npos) << msg;
  EXPECT_NE(msg.find("train.ema_decay = 1.5 is out of range"), std::string::npos) << msg;
  msg = error_of("data:\n  dataset: cifar\n");
  EXPECT_NE(msg.find("data.dataset = 'cifar' is not one of"), std::string::npos) << msg;
  EXPECT_NE(msg.find("did you mean 'cifar10'"), std::string::npos) << msg;
  EXPECT_NE(error_of("loss:\n  noise: same\n").find("loss.noise"), std::string::npos);
  EXPECT_NE(error_of("data:\n  channels: 2\n").find("data.channels"), std::string::npos);
}

TEST(Config, CrossFieldChecks) {
  EXPECT_NE(error_of("data:\n  image_size: 36\n").find("not divisible"), std::string::npos);
  EXPECT_NE(error_of("model:\n  ch: 48\n").find("multiple of 32"), std::string::npos);
  EXPECT_NE(error_of("model:\n  attn_resolutions: [7]\n").find("attn_resolutions"), std::string::npos);
  EXPECT_NE(error_of("loss:\n  type: s2dm\n  skip_k: 1000\n").find("skip_k"), std::string::npos);
  EXPECT_NE(error_of("device: tpu\n").find("device = 'tpu'"), std::string::npos);
  EXPECT_NE(error_of("sample:\n  steps: 2000\n").find("exceeds"), std::string::npos);
}

TEST(Config, InvalidYamlNamesLine) {
  auto msg = error_of("train:\n  lr: [1, 2\n");
  EXPECT_NE(msg.find("invalid YAML"), std::string::npos) << msg;
}

TEST(Config, SetOverridesAndTheirErrors) {
  auto c = parse_config("train:\n  lr: 0.1\n", "x.yaml", {"train.lr=0.5", "seed=9", "model.ch_mult=[1,2]"});
  EXPECT_DOUBLE_EQ(c.train.lr, 0.5);
  EXPECT_EQ(c.seed, 9u);
  EXPECT_EQ(c.model.ch_mult, (std::vector<int>{1, 2}));
  auto msg = error_of("{}", {"train.lr=abc"});
  EXPECT_NE(msg.find("--set train.lr=abc"), std::string::npos) << msg;
  msg = error_of("{}", {"train.lrr=1"});
  EXPECT_NE(msg.find("--set train.lrr=1"), std::string::npos) << msg;
  EXPECT_NE(msg.find("did you mean 'train.lr'"), std::string::npos) << msg;
  EXPECT_NE(error_of("{}", {"nonsense"}).find("expected section.key=value"), std::string::npos);
}

TEST(Config, OverridesApplyToTheStruct) {
  auto c = parse_config("sample:\n  steps: 7\n  skip_tuning:\n    rho_bottom: 0.8\n    t_max: 400\n", "x.yaml");
  // A key overrides that key; a whole section given as a value replaces the section.
  s2dm::apply_overrides(c, {"sample.eta=0.5", "sample.skip_tuning.t_max=300"}, "here");
  EXPECT_EQ(c.sample.steps, 7);
  EXPECT_DOUBLE_EQ(c.sample.eta, 0.5);
  EXPECT_DOUBLE_EQ(c.sample.skip_tuning.rho_bottom, 0.8);
  EXPECT_DOUBLE_EQ(c.sample.skip_tuning.t_max, 300);
  s2dm::apply_overrides(c, {"sample.skip_tuning={rho_top: 0.9}"}, "here");
  EXPECT_DOUBLE_EQ(c.sample.skip_tuning.rho_bottom, 1.0);
  EXPECT_DOUBLE_EQ(c.sample.skip_tuning.rho_top, 0.9);
  EXPECT_DOUBLE_EQ(c.sample.skip_tuning.t_max, 1e9);
  s2dm::apply_overrides(c, {"sample.skip_tuning={}"}, "here");
  EXPECT_FALSE(c.sample.skip_tuning.active());
  s2dm::apply_overrides(c, {"sample.steps=~"}, "here");  // null: the default
  EXPECT_EQ(c.sample.steps, s2dm::SampleConfig{}.steps);
  // A file's value that an override replaces is never read.
  EXPECT_DOUBLE_EQ(parse_config("train:\n  lr: fast\n", "x.yaml", {"train.lr=0.1"}).train.lr, 0.1);
  try {
    s2dm::apply_overrides(c, {"sample.steps=0"}, "here");
    ADD_FAILURE() << "no error";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("--set sample.steps=0: sample.steps = 0 is out of range"), std::string::npos)
        << e.what();
  }
}

TEST(Config, CheckConfigChecksValuesSetInCode) {
  auto c = parse_config("{}", "x.yaml");
  EXPECT_NO_THROW(s2dm::check_config(c, "the command line"));
  c.sample.batch = 0;
  try {
    s2dm::check_config(c, "the command line");
    ADD_FAILURE() << "no error";
  } catch (const ConfigError& e) {
    EXPECT_STREQ(e.what(), "the command line: sample.batch = 0 is out of range [1, 1048576]");
  }
  c.sample.batch = 8;
  c.sample.skip_tuning.rho = {1.0, 20.0};
  EXPECT_THROW(s2dm::check_config(c, "x"), ConfigError);  // inside a section too
  c.sample.skip_tuning.rho.clear();
  c.sample.steps = 2000;  // a relation between keys: more steps than timesteps
  EXPECT_THROW(s2dm::check_config(c, "x"), ConfigError);
}

TEST(Config, ResetSampleKeysRestoresTheirDefaults) {
  auto c = parse_config("sample:\n  eta: 0.3\n  order: 2\n  steps: 9\n  skip_tuning:\n    rho_top: 0.5\n", "x.yaml");
  s2dm::reset_sample_keys(c.sample, {"eta", "skip_tuning"});
  const s2dm::SampleConfig defaults;
  EXPECT_EQ(c.sample.eta, defaults.eta);
  EXPECT_EQ(c.sample.skip_tuning.rho_top, defaults.skip_tuning.rho_top);
  EXPECT_EQ(c.sample.order, 2);
  EXPECT_EQ(c.sample.steps, 9);
}

TEST(Config, NestedSkipTuningSection) {
  auto c = parse_config("sample:\n  skip_tuning:\n    rho_bottom: 0.8\n    rho: [1.0, 0.9]\n", "x.yaml",
                        {"sample.skip_tuning.t_max=500"});
  EXPECT_DOUBLE_EQ(c.sample.skip_tuning.rho_bottom, 0.8);
  EXPECT_EQ(c.sample.skip_tuning.rho, (std::vector<double>{1.0, 0.9}));
  EXPECT_DOUBLE_EQ(c.sample.skip_tuning.t_max, 500);
  EXPECT_TRUE(c.sample.skip_tuning.active());
  EXPECT_FALSE(parse_config("{}", "x").sample.skip_tuning.active());
  auto back = parse_config(s2dm::to_yaml(c), "resolved.yaml");
  EXPECT_EQ(back.sample.skip_tuning.rho, c.sample.skip_tuning.rho);
  auto msg = error_of("sample:\n  skip_tuning:\n    rho_botom: 0.8\n");
  EXPECT_NE(msg.find("unknown key 'sample.skip_tuning.rho_botom'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("did you mean 'sample.skip_tuning.rho_bottom'"), std::string::npos) << msg;
  EXPECT_NE(error_of("sample:\n  skip_tuning:\n    rho: [a]\n").find("a list of numbers"), std::string::npos);
}

TEST(Config, YamlRoundTrip) {
  auto c = parse_config("name: \"a \\\"q\\\" b\"\ntrain:\n  lr: 0.0002\n  eps: 1.0e-8\nmodel:\n  dropout: 0.1\n", "x.yaml");
  auto back = parse_config(s2dm::to_yaml(c), "resolved.yaml");
  EXPECT_EQ(s2dm::to_yaml(back), s2dm::to_yaml(c));
  EXPECT_EQ(back.name, c.name);
  EXPECT_EQ(back.train.eps, c.train.eps);
  EXPECT_EQ(back.train.lr, c.train.lr);
}

TEST(Config, IdentityLeavesOutAddedKeysAtTheirDefaults) {
  // The experiment driver names its work (units, grid files, classifiers) by hashes of
  // config_identity. Keys added to the schema later (schema::Added) are left out while at their
  // defaults, so the default config's identity is still the text every key had before the first
  // of them (EDM's churn keys): experiments run before keep their keys.
  s2dm::Config c;
  const std::string full = s2dm::to_yaml(c), identity = s2dm::config_identity(c);
  EXPECT_NE(full.find("  s_churn: 0.0\n"), std::string::npos);
  EXPECT_EQ(identity.find("s_churn"), std::string::npos);
  EXPECT_EQ(s2dm::experiment::hash_key(identity), "35ff9e87e893f9c0");
  // An added key away from its default is part of the identity, and the text reads back.
  c.sample.s_churn = 40;
  c.sample.s_max = 50;
  const std::string churned = s2dm::config_identity(c);
  EXPECT_NE(churned.find("  s_churn: 40.0\n  s_max: 50.0\n"), std::string::npos) << churned;  // (s_min: default)
  // A changed default: sample.timesteps `auto` (the sampler's own grid, DDIM's uniform here) is
  // written as `uniform`, the default before it.
  EXPECT_EQ(c.sample.timesteps, "auto");
  const auto back = parse_config(churned, "identity.yaml");
  c.sample.timesteps = "uniform";
  EXPECT_EQ(s2dm::to_yaml(back), s2dm::to_yaml(c));
  EXPECT_EQ(s2dm::config_identity(s2dm::Config{}), identity);
  EXPECT_EQ(s2dm::config_identity(c), churned);
}

TEST(Config, ShippedConfigsLoad) {
  for (const char* name : {"cifar10_ddpm", "cifar10_s2dm", "celeba64_ddpm", "celeba64_s2dm", "fmnist", "fmnist_psld",
                           "cifar10_psld", "celeba64_psld"}) {
    std::string path = std::string(S2DM_SOURCE_DIR) + "/configs/train/" + name + ".yaml";
    EXPECT_NO_THROW(s2dm::load_config(path)) << path;
  }
  const auto psld = s2dm::load_config(std::string(S2DM_SOURCE_DIR) + "/configs/train/cifar10_psld.yaml");
  EXPECT_EQ(psld.diffusion.process, "psld");
  EXPECT_DOUBLE_EQ(psld.diffusion.psld.nu, 4.01);
  auto s2dm_cfg = s2dm::load_config(std::string(S2DM_SOURCE_DIR) + "/configs/train/cifar10_s2dm.yaml");
  EXPECT_EQ(s2dm_cfg.loss.type, "s2dm");
  EXPECT_EQ(s2dm_cfg.loss.skip_k, 9);
  EXPECT_DOUBLE_EQ(s2dm_cfg.loss.tau, 0.99);
}

TEST(Config, MissingFileIsAConfigError) {
  EXPECT_THROW(s2dm::load_config("/nonexistent/x.yaml"), ConfigError);
}

TEST(Config, TextThatIsNoMappingIsRefused) {
  // An empty file (or only comments) used to read as every default: a CIFAR-size model trained
  // into runs/run. `{}` asks for the defaults on purpose.
  for (const char* text : {"", "# just a comment\n", "   \n"})
    EXPECT_NE(error_of(text).find("cfg.yaml: empty config"), std::string::npos) << "'" << text << "'";
  EXPECT_NE(error_of("- a\n- b\n").find("expected a mapping of sections"), std::string::npos);
  EXPECT_NO_THROW(parse_config("{}", "x.yaml"));
  s2dm::testing::TempDir dir;
  try {
    s2dm::load_config(dir.path());
    FAIL() << "a directory read as a config";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find(dir.path() + ": is a directory"), std::string::npos) << e.what();
  }
}

TEST(Config, DuplicateKeysAreRefusedWhereverTheyAre) {
  // yaml-cpp keeps both and a lookup sees the first: a second train: block was silently ignored.
  auto msg = error_of("train:\n  lr: 0.1\nmodel:\n  ch: 64\ntrain:\n  lr: 0.2\n");
  EXPECT_NE(msg.find("cfg.yaml:5: key 'train' appears twice in one mapping (first on line 1)"), std::string::npos) << msg;
  msg = error_of("sample:\n  skip_tuning:\n    t_min: 1\n    t_min: 2\n");
  EXPECT_NE(msg.find("cfg.yaml:4: key 't_min' appears twice"), std::string::npos) << msg;
  msg = error_of("{}", {"sample={steps: 3, steps: 4}"});
  EXPECT_NE(msg.find("--set sample={steps: 3, steps: 4}"), std::string::npos) << msg;
  EXPECT_NE(msg.find("appears twice"), std::string::npos) << msg;
  // The same key in two mappings is no repeat.
  EXPECT_NO_THROW(parse_config("train:\n  steps: 3\nsample:\n  steps: 3\n", "x.yaml"));
}

TEST(Config, ErrorsFromASetNameTheSetNotTheFile) {
  // An unknown section on the override's path, a key under it, and a relation it breaks.
  auto msg = error_of("train:\n  lr: 0.1\n", {"a.b.c.d=1"});
  EXPECT_EQ(msg.rfind("--set a.b.c.d=1: unknown key 'a'", 0), 0u) << msg;
  msg = error_of("train:\n  lr: 0.1\n", {"train.foo.bar=1"});
  EXPECT_EQ(msg.rfind("--set train.foo.bar=1: unknown key 'train.foo'", 0), 0u) << msg;
  msg = error_of("{}", {"sample.skip_tuning.t_min=500", "sample.skip_tuning.t_max=100"});
  EXPECT_NE(msg.find("with --set sample.skip_tuning.t_min=500 --set sample.skip_tuning.t_max=100"), std::string::npos)
      << msg;
  EXPECT_NE(msg.find("t_min = 500 exceeds sample.skip_tuning.t_max = 100"), std::string::npos) << msg;
  // A --set without a value would drop the file's value for the default (train.steps=null trained
  // 800000 steps where the file said 6).
  for (const char* set : {"train.steps=null", "train.steps=", "train.steps=~"})
    EXPECT_EQ(error_of("train:\n  steps: 6\n", {set}), "--set " + std::string(set) + ": no value");
  // A file's own unknown key is still the file's.
  msg = error_of("train:\n  lr: 0.1\nbogus: 1\n", {"train.lr=0.2"});
  EXPECT_EQ(msg.rfind("cfg.yaml:3: unknown key 'bogus'", 0), 0u) << msg;
}

TEST(Device, EachRankTakesAGpuItSees) {
  // Each rank of a machine takes its own GPU where all are visible; where each task sees one GPU
  // (SLURM's per-task CUDA_VISIBLE_DEVICES), every rank's is GPU 0 (cuda:LOCAL_RANK named GPUs
  // that do not exist there); the CPU stays the CPU.
  const torch::Device cuda(torch::kCUDA), cpu(torch::kCPU);
  EXPECT_EQ(s2dm::rank_device(cuda, 3, 8), torch::Device(torch::kCUDA, 3));
  EXPECT_EQ(s2dm::rank_device(cuda, 3, 1), torch::Device(torch::kCUDA, 0));
  EXPECT_EQ(s2dm::rank_device(torch::Device(torch::kCUDA, 5), 1, 4), torch::Device(torch::kCUDA, 1));
  EXPECT_EQ(s2dm::rank_device(cuda, 5, 4), torch::Device(torch::kCUDA, 1));
  EXPECT_EQ(s2dm::rank_device(cpu, 3, 0), cpu);
  EXPECT_NO_THROW(s2dm::make_current(cpu));
}

TEST(Config, PsldSettingsAreChecked) {
  // PSLD's settings name the key and value; its loss belongs to it alone.
  const std::string psld = "diffusion:\n  process: psld\n  psld:\n";
  EXPECT_NE(error_of(psld + "    gamma: 2\n    nu: 2\n").find("diffusion.psld.nu = 2 equals gamma"), std::string::npos)
      << error_of(psld + "    gamma: 2\n    nu: 2\n");
  EXPECT_NE(error_of(psld + "    m_inv: 3\n").find("diffusion.psld.m_inv = 3 is not critically damped"), std::string::npos)
      << error_of(psld + "    m_inv: 3\n");
  EXPECT_NE(error_of(psld + "    gamma: 0\n").find("diffusion.psld.gamma = 0"), std::string::npos);
  EXPECT_NE(error_of(psld + "    beta_min: 9\n").find("beta_max = 8 is below beta_min = 9"), std::string::npos);
  EXPECT_NE(error_of(psld + "    t_end: 0.7\n").find("t_end"), std::string::npos);
  EXPECT_NE(error_of("diffusion:\n  process: sde\n").find("process"), std::string::npos);
  EXPECT_NE(error_of("loss:\n  type: hsm\n").find("needs diffusion.process psld"), std::string::npos);
  EXPECT_NO_THROW(parse_config(psld + "    m_inv: 4\nloss:\n  type: hsm\n", "x.yaml"));
  // (Added keys: a VP config's identity does not change.)
  EXPECT_EQ(s2dm::config_identity(parse_config("{}", "x.yaml")).find("psld"), std::string::npos);
}
