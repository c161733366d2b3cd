// The experiment driver end to end on a tiny experiment (two tiny models trained for a few
// steps, two samplers, two step counts, classifier features): every output file, reuse of
// finished work, re-running only what a changed setting affects, resuming after SIGINT, the
// HTML report in headless Chromium, and bad experiment files failing before any work.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "../test_util.h"
#include "s2dm/core/errors.h"
#include "s2dm/experiment/experiment.h"
#include "s2dm/io/checkpoint.h"
#include "s2dm/io/image_io.h"
#include "s2dm/experiment/report.h"

namespace fs = std::filesystem;
using s2dm::testing::read_bytes;
using s2dm::testing::run;
using s2dm::testing::run_shell;
using s2dm::testing::TempDir;
using s2dm::testing::write_bytes;

namespace {

using s2dm::testing::kTiny;

struct Knobs {
  std::string seeds = "[0, 1]";
  std::string steps = "[2, 4]";
  std::string skip_set;  // extra overrides of the second model
  int num_samples = 16;
  bool kid = true;
};

class Experiment : public ::testing::Test {
 protected:
  void SetUp() override {
    fs::create_directories(dir / "data");
    s2dm::testing::write_fake_fmnist(dir / "data", 64, "train");
    s2dm::testing::write_fake_fmnist(dir / "data", 32, "t10k");
  }

  std::string write(const Knobs& k) {
    const std::string path = dir / "exp.yaml";
    write_bytes(path, "name: tiny_exp\nout: " + out() + "\ndevice: cpu\nthreads: 1\nseeds: " + k.seeds +
                          "\nmodels:\n"
                          "  - name: base\n    train: " + kTiny + "\n    set: {loss.type: simple, data.path: " + (dir / "data") +
                          "}\n"
                          "  - name: skip\n    train: " + kTiny + "\n    set: {data.path: " + (dir / "data") + k.skip_set +
                          "}\n"
                          "baseline: base\nsample:\n  batch: 8\nsweep:\n  sampler: [ddim, deis]\n  steps: " + k.steps +
                          "\nmetric:\n  features: classifier\n  num_samples: " + std::to_string(k.num_samples) +
                          "\n  reference: train\n  reference_num: 64\n  kid: " + (k.kid ? "true" : "false") +
                          "\n  classifier_epochs: 1\n");
    return path;
  }
  std::string out() const { return dir / "out"; }

  // An experiment of one tiny model "m" named `name`, with the given sample, sweep and metric
  // mappings (YAML text) and extra top-level lines.
  std::string write_one_model(const std::string& name, const std::string& sample, const std::string& sweep,
                              const std::string& metric, const std::string& extra = "") {
    const std::string path = dir / "exp.yaml";
    write_bytes(path, "name: " + name + "\nout: " + out() + "\ndevice: cpu\nthreads: 1\nmodels:\n  - name: m\n    train: " +
                          kTiny + "\n    set: {data.path: " + (dir / "data") + "}\nsample: " + sample + "\nsweep:\n" + sweep +
                          extra + "metric: " + metric + "\n");
    return path;
  }

  // Result files by unit: path -> modification time.
  std::map<std::string, fs::file_time_type> results() const {
    std::map<std::string, fs::file_time_type> files;
    if (!fs::exists(out() + "/units")) return files;
    for (const auto& entry : fs::recursive_directory_iterator(out() + "/units"))
      if (entry.path().filename().string().rfind("metric-", 0) == 0) files[entry.path().string()] = entry.last_write_time();
    return files;
  }

  static int csv_rows(const std::string& path) {
    std::ifstream in(path);
    int n = -1;  // the header
    for (std::string line; std::getline(in, line);) n += !line.empty();
    return n;
  }

  TempDir dir;
};

int units_run(const std::string& output) {
  std::smatch m;
  if (!std::regex_search(output, m, std::regex(R"((\d+) units run now)"))) return -1;
  return std::stoi(m[1]);
}

TEST_F(Experiment, RunsEndToEndReusesWorkAndRerunsOnlyWhatChanged) {
  Knobs knobs;
  auto r = run("run " + write(knobs));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("2 models × 4 settings × 2 seeds = 16 units"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("estimated time"), std::string::npos) << r.output;
  EXPECT_EQ(units_run(r.output), 16) << r.output;

  // Every output.
  EXPECT_EQ(csv_rows(out() + "/results.csv"), 16);
  const std::string csv = read_bytes(out() + "/results.csv");
  EXPECT_EQ(csv.rfind("model,sampler,steps,seed,nfe,metric,value,kid_mean,kid_std,num_samples,sample_seconds", 0), 0u) << csv;
  EXPECT_NE(csv.find("skip,deis,4,1,4,FD[fmnist-cnn],"), std::string::npos) << csv;
  const std::string md = read_bytes(out() + "/results.md");
  EXPECT_NE(md.find("### base"), std::string::npos) << md;
  EXPECT_NE(md.find("| FD[fmnist-cnn] ↓ | 2 steps | 4 steps |"), std::string::npos) << md;
  EXPECT_NE(md.find("### skip vs base: relative improvement"), std::string::npos) << md;
  EXPECT_NE(md.find("± "), std::string::npos) << md;
  for (const char* png : {"plots/tiny_exp_base_metric_vs_nfe.png", "plots/tiny_exp_skip_metric_vs_nfe.png",
                          "plots/tiny_exp_training_loss.png"}) {
    auto image = s2dm::read_image(out() + "/" + png, 3);
    EXPECT_GT(image.width, 100) << png;
  }
  const std::string html = read_bytes(out() + "/report/index.html");
  EXPECT_NE(html.find("<table>"), std::string::npos);
  EXPECT_NE(html.find("data:image/png;base64,"), std::string::npos);
  EXPECT_EQ(html.find("src=\"/"), std::string::npos) << "the report must not link files";
  EXPECT_TRUE(fs::exists(out() + "/models/base/checkpoints/latest.ckpt"));
  const auto first = results();
  ASSERT_EQ(first.size(), 16u);

  // Again: nothing to do, nothing rewritten, also with a model's latest.ckpt lost (its newest step
  // file stands in; it used to be trained again, every step file wiped).
  fs::remove(out() + "/models/base/checkpoints/latest.ckpt");
  r = run("run " + write(knobs));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(units_run(r.output), 0) << r.output;
  EXPECT_NE(r.output.find("trained (6 steps)"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("train 6/6"), std::string::npos) << "retrained: " << r.output;
  EXPECT_EQ(results(), first);
  EXPECT_TRUE(fs::exists(out() + "/models/base/checkpoints/step_6.ckpt"));

  // One step count changed: only its 2 models × 2 samplers × 2 seeds run; the table drops 4 steps.
  knobs.steps = "[2, 3]";
  r = run("run " + write(knobs));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(units_run(r.output), 8) << r.output;
  EXPECT_EQ(csv_rows(out() + "/results.csv"), 16);
  EXPECT_FALSE(std::regex_search(read_bytes(out() + "/results.csv"), std::regex("\n[a-z]+,[a-z]+,4,")));
  EXPECT_NE(read_bytes(out() + "/results.md").find("| 2 steps | 3 steps |"), std::string::npos);

  // A training setting of one model: that model trains again and its 8 units run, the other's stay.
  knobs.skip_set = ", loss.tau: 0.9";
  const auto before = results();
  r = run("run " + write(knobs));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(units_run(r.output), 8) << r.output;
  EXPECT_NE(r.output.find("train 6 steps"), std::string::npos) << r.output;
  int base_kept = 0, base_total = 0;
  for (const auto& [path, time] : results())
    if (path.find("/units/base/") != std::string::npos) {
      ++base_total;
      base_kept += before.count(path) && before.at(path) == time;
    }
  EXPECT_EQ(base_total, 12) << "base: steps 2, 3 and the earlier 4, two samplers, two seeds";
  EXPECT_EQ(base_kept, 12);

  // A metric setting: every unit is measured again from its stored samples, none sampled again.
  knobs.kid = false;
  r = run("run " + write(knobs));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(units_run(r.output), 16) << r.output;
  EXPECT_EQ(r.output.find("sampling ddim"), std::string::npos) << r.output;
  const std::string csv2 = read_bytes(out() + "/results.csv");
  const std::regex no_kid(R"(,FD\[fmnist-cnn\],[^,]+,,,)");
  EXPECT_EQ(std::distance(std::sregex_iterator(csv2.begin(), csv2.end(), no_kid), std::sregex_iterator()), 16) << csv2;
}

TEST_F(Experiment, InterruptedRunResumes) {
  Knobs knobs;
  knobs.seeds = "[0, 1, 2, 3, 4, 5]";
  knobs.num_samples = 32;  // 4 batches per unit: SIGINT lands between batches
  const std::string exp = write(knobs);
  const std::string log = dir / "log.txt";
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    FILE* f = std::freopen(log.c_str(), "w", stdout);
    (void)f;
    dup2(fileno(stdout), 2);
    execl(S2DM_BINARY, S2DM_BINARY, "run", exp.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  // Wait for the first few results, then interrupt.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::minutes(5);
  while (results().size() < 3 && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  kill(pid, SIGINT);
  int status = 0;
  waitpid(pid, &status, 0);
  const std::string output = read_bytes(log);
  ASSERT_TRUE(WIFEXITED(status)) << output;
  EXPECT_EQ(WEXITSTATUS(status), 130) << output;
  EXPECT_NE(output.find("interrupted"), std::string::npos) << output;
  const size_t done = results().size();
  EXPECT_GE(done, 3u);
  EXPECT_LT(done, 48u) << "the run should have stopped early";
  EXPECT_EQ(csv_rows(out() + "/results.csv"), static_cast<int>(done)) << "partial results are written";

  // The rerun finishes exactly the rest.
  auto r = run("run " + exp);
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(units_run(r.output), static_cast<int>(48 - done)) << r.output;
  EXPECT_EQ(results().size(), 48u);
  EXPECT_EQ(csv_rows(out() + "/results.csv"), 48);
}

TEST_F(Experiment, ABudgetFinishedRunIsTrainedAndSettingsBesideTheWeightsKeepIt) {
  // train.max_minutes ends the run long before train.steps: a finished run, which later runs
  // neither resume nor train again; nor when a setting that cannot change the weights changes
  // (the timeout). A larger budget resumes it, and its unit is sampled again.
  auto experiment = [&](const std::string& set) {
    const std::string path = dir / "exp.yaml";
    write_bytes(path, "name: budget\nout: " + out() + "\ndevice: cpu\nthreads: 1\nmodels:\n  - name: m\n    train: " +
                          kTiny + "\n    set: {data.path: " + (dir / "data") + ", train.steps: 100000, " + set +
                          "}\nsample:\n  batch: 8\nsweep:\n  sampler: [ddim]\n  steps: [2]\nmetric:\n  features: "
                          "classifier\n  num_samples: 8\n  reference: train\n  reference_num: 64\n  classifier_epochs: 1\n");
    return path;
  };
  auto r = run("run " + experiment("train.max_minutes: 0.02"));
  ASSERT_EQ(r.code, 0) << r.output;
  ASSERT_NE(r.output.find("train.max_minutes=0.02 spent"), std::string::npos) << r.output;
  const auto step = s2dm::load_checkpoint(out() + "/models/m/checkpoints/latest.ckpt").step;
  ASSERT_LT(step, 100000);
  const auto first = results();
  for (const std::string set : {"train.max_minutes: 0.02", "train.max_minutes: 0.02, train.distributed.timeout: 60"}) {
    r = run("run " + experiment(set));
    ASSERT_EQ(r.code, 0) << r.output;
    EXPECT_NE(r.output.find("trained (" + std::to_string(step) + " steps, train.max_minutes spent)"), std::string::npos)
        << set << "\n" << r.output;
    EXPECT_EQ(units_run(r.output), 0) << set << "\n" << r.output;
    EXPECT_EQ(results(), first) << set;
  }
  EXPECT_EQ(s2dm::load_checkpoint(out() + "/models/m/checkpoints/latest.ckpt").step, step);
  r = run("run " + experiment("train.max_minutes: 0.04"));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("resume at step " + std::to_string(step)), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("train.max_minutes=0.04 spent"), std::string::npos) << r.output;
  EXPECT_EQ(units_run(r.output), 1) << r.output;
  EXPECT_GT(s2dm::load_checkpoint(out() + "/models/m/checkpoints/latest.ckpt").step, step);
}

TEST_F(Experiment, DryRunDoesNothing) {
  auto r = run("run --dry-run " + write(Knobs{}));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("base           train 6 steps"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(out()));
}

TEST_F(Experiment, OnlyRunsTheNamedModel) {
  auto r = run("run --only skip " + write(Knobs{}));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(units_run(r.output), 8) << r.output;
  EXPECT_FALSE(fs::exists(out() + "/models/base"));
  EXPECT_EQ(csv_rows(out() + "/results.csv"), 8);
  s2dm::testing::expect_user_error(run("run --only nobody " + write(Knobs{})), "--only nobody");
}

// Each bad file names the file, the line where it can, and the culprit, before any work.
TEST_F(Experiment, BadFilesFailBeforeAnyWork) {
  const std::string good = read_bytes(write(Knobs{}));
  auto expect_bad = [&](const std::string& from, const std::string& to, const std::string& needle) {
    std::string text = good;
    const auto at = text.find(from);
    ASSERT_NE(at, std::string::npos) << from;
    text.replace(at, from.size(), to);
    const std::string path = dir / "bad.yaml";
    write_bytes(path, text);
    auto r = run("run " + path);
    s2dm::testing::expect_user_error(r, needle);
    EXPECT_NE(r.output.find("bad.yaml"), std::string::npos) << r.output;
    EXPECT_FALSE(fs::exists(out())) << "work started for: " << to;
  };
  expect_bad("seeds:", "sedes:", "unknown key 'sedes' (did you mean 'seeds'?)");
  expect_bad("  features: classifier", "  featurs: classifier", "bad.yaml:20: unknown key 'metric.featurs'");
  expect_bad("sampler: [ddim, deis]", "sampler: [ddim, dies]", "unknown sampler 'dies'");
  expect_bad("steps: [2, 4]", "steps: [2, 4000]", "sample.steps = 4000 exceeds diffusion.num_timesteps = 1000");
  expect_bad("baseline: base", "baseline: nobody", "baseline = 'nobody' is not one of the models");
  auto reference = [](const std::string& spec) { return "  classifier_epochs: 1\n  reference_error: " + spec + "\n"; };
  expect_bad("  classifier_epochs: 1\n", reference("{samples: 4, sampler: ddpm}"),
             "metric.reference_error (model 'base', sampler ddpm): a reference solution needs a deterministic sampler");
  expect_bad("  classifier_epochs: 1\n", reference("{samples: 4, sampler: rse}"), "sampler 'rse' samples PSLD models");
  expect_bad("  classifier_epochs: 1\n", reference("{samples: 4, timesteps: dp}"),
             "timesteps = dp: the reference takes a named grid");
  expect_bad("  classifier_epochs: 1\n", reference("{samples: 17}"),
             "metric.reference_error.samples = 17 exceeds metric.num_samples = 16");
  expect_bad("train: " + kTiny + "\n    set: {loss", "checkpoint: missing.ckpt\n    set: {loss",
             "overrides apply to configs (train or with weights), not checkpoints");
  const std::string edm = std::string(S2DM_SOURCE_DIR) + "/tests/fixtures/edm_ckpt_fmnist";
  expect_bad("train: " + kTiny + "\n    set: {loss", "weights: " + edm + ".safetensors\n    set: {loss",
             "weights and config go together");
  expect_bad("train: " + kTiny + "\n    set: {loss", "train: " + edm + ".yaml\n    set: {loss",
             "model.type = 'songunet'");
  expect_bad("train: " + kTiny + "\n    set: {loss.type: simple, data.path: " + (dir / "data") + "}",
             "checkpoint: missing.ckpt", "missing.ckpt not found");
  expect_bad("train: " + kTiny + "\n    set: {loss", "train: nowhere.yaml\n    set: {loss", "nowhere.yaml not found");
  // (a name longer than any file system allows: std::filesystem would throw instead of answering)
  expect_bad("train: " + kTiny + "\n    set: {loss", "train: " + std::string(300, 'n') + ".yaml\n    set: {loss",
             ".yaml cannot be read (File name too long)");
  expect_bad("train: " + kTiny + "\n    set: {loss", "train: " + (dir / "data") + "\n    set: {loss", "data is not a file");
  expect_bad("loss.type: simple", "loss.type: simpel", "loss.type = 'simpel' is not one of simple, s2dm");
  expect_bad("  - name: skip", "  - name: base", "'base' is used twice");
  expect_bad("sample:\n  batch: 8", "sample:\n  steps: 8", "sample.steps is also swept");
  expect_bad("  reference: train", "  reference: stats.npz", "stats.npz not found");
  expect_bad("sampler: [ddim, deis]", "sampler: [ddim, deis]\n  skip_tuning: [{rho: [0.5, 1.0]}]", "long skips");
  expect_bad("sampler: [ddim, deis]", "sampler: [ddim, deis]\n  timesteps: [learned]\n  steps_: 1",
             "unknown key 'sweep.steps_'");
  expect_bad("baseline: base", "baseline: base\ntable: {rows: eta}", "table.rows = 'eta': expected sampler or a swept key");
  expect_bad("sampler: [ddim, deis]", "sampler: [ddim, ddpm]\n  timesteps: [dp]", "deterministic sampler");
  expect_bad("baseline: base\nsample:\n  batch: 8\nsweep:\n  sampler: [ddim, deis]",
             "baseline: base\nschedule: {dp: {levels: 3}}\nsample:\n  batch: 8\nsweep:\n  sampler: [ddim, deis]\n"
             "  timesteps: [dp]",
             "timesteps dp with 4 steps needs as many candidate times; schedule.dp.levels = 3 keeps 2");
  // 5 levels keep 3 candidate times (the two halves share both ends): 4 steps used to pass this
  // check and fail after the reference pass (in `s2dm run`: after training).
  expect_bad("baseline: base\nsample:\n  batch: 8\nsweep:\n  sampler: [ddim, deis]",
             "baseline: base\nschedule: {dp: {levels: 5}}\nsample:\n  batch: 8\nsweep:\n  sampler: [ddim, deis]\n"
             "  timesteps: [dp]",
             "schedule.dp.levels = 5 keeps 3");
  expect_bad("baseline: base", "baseline: base\nschedule: {dp: {level: 2}}", "schedule.dp.level");
  expect_bad("baseline: base", "baseline: base\ntune_skip: {range: [-0.5, 1]}", "expected [lo, hi] with 0 <= lo < hi");
  expect_bad("baseline: base", "baseline: base\ntune_skip: {range: [0, 0.5, 1]}", "expected [lo, hi] with 0 <= lo < hi");
  // Every section is read by the config's schema machinery: the same types, ranges and messages.
  expect_bad("baseline: base", "baseline: base\nschedule: {dp: {sweeps: 2000}}", "schedule.dp.sweeps = 2000 is out of range [-1, 1000]");
  expect_bad("baseline: base", "baseline: base\ntable: {rows: [sampler]}", "table.rows: expected a string");
  expect_bad("baseline: base", "baseline: base\nschedule: 3", "schedule");
  // Counts have the bounds they have everywhere (threads: 100000 used to start 100000 threads).
  expect_bad("threads: 1", "threads: 100000", "threads = 100000 is out of range [0, 4096]");
  expect_bad("  classifier_epochs: 1", "  classifier_epochs: 0", "metric.classifier_epochs = 0 is out of range");
  expect_bad("baseline: base", "baseline: base\nschedule: {batch: 0}", "schedule.batch = 0 is out of range");
  expect_bad("baseline: base", "baseline: base\ntune_skip: {points: 100000000}", "tune_skip.points = 100000000");
  // A key given twice is refused, not resolved by taking one of them.
  expect_bad("baseline: base", "baseline: base\nbaseline: skip", "key 'baseline' appears twice");
  // An empty sweep ran nothing and succeeded; a bad reference file failed after training and sampling.
  expect_bad("sweep:\n  sampler: [ddim, deis]\n  steps: [2, 4]", "sweep: []", "sweep: an empty list");
  write_bytes(dir / "junk.npz", "not a zip");
  expect_bad("  reference: train\n  reference_num: 64\n  kid: true", "  reference: junk.npz\n  reference_num: 64\n  kid: false",
             "metric.reference: " + (dir / "junk.npz"));
  // A time grid's file is found beside the experiment file, as every path there is.
  expect_bad("sample:\n  batch: 8", "sample:\n  batch: 8\n  timesteps: file:nogrid.txt", (dir / "nogrid.txt") + ": cannot open");
}

TEST_F(Experiment, AnOutputFolderOfSomeoneElsesIsRefused) {
  // Its results.csv was replaced by the run's.
  const std::string path = write(Knobs{});
  fs::create_directories(out());
  write_bytes(out() + "/results.csv", "mine\n");
  s2dm::testing::expect_user_error(run("run " + path), "holds results.csv and is no experiment's output folder");
  EXPECT_EQ(read_bytes(out() + "/results.csv"), "mine\n");
}

// Skip-Tuning and the learned grids as sweep axes: the score-optimal schedule is estimated once
// per model, the dp grid once per sampler setting (Skip-Tuning changes the model it follows); each
// is drawn and used; scaled skips change the samples.
TEST_F(Experiment, SweepsSkipTuningAndLearnedGrids) {
  const std::string path =
      write_one_model("axes", "{sampler: ddim, steps: 3, batch: 8}",
                      "  timesteps: [uniform, learned, dp]\n  skip_tuning: [none, {rho_bottom: 0.5, rho_top: 1.0}]\n",
                      "{features: classifier, num_samples: 16, reference_num: 64, classifier_epochs: 1}",
                      "schedule: {levels: 20, samples: 16, batch: 8, dp: {levels: 12, samples: 4}}\n"
                      "table: {rows: timesteps}\n");
  auto r = run("run " + path);
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(units_run(r.output), 6) << r.output;
  EXPECT_EQ(csv_rows(out() + "/results.csv"), 6);
  int files = 0, plots = 0;
  for (const auto& entry : fs::directory_iterator(out() + "/schedules")) files += entry.path().extension() == ".yaml";
  for (const auto& entry : fs::directory_iterator(out() + "/plots"))
    plots += entry.path().string().find("_grid.png") != std::string::npos;
  EXPECT_EQ(files, 3);  // score; dp without and with Skip-Tuning
  EXPECT_EQ(plots, 3);
  const std::string html = read_bytes(out() + "/report/index.html");
  EXPECT_NE(html.find("Learned grids"), std::string::npos);
  EXPECT_NE(html.find("m: dp for ddim"), std::string::npos);
  // One table per Skip-Tuning setting, the grids as rows; the six sets of samples all differ.
  const std::string md = read_bytes(out() + "/results.md");
  EXPECT_NE(md.find("### m — skip_tuning={rho_bottom: 0.5, rho_top: 1.0}\n"), std::string::npos) << md;
  EXPECT_NE(md.find("\n| learned | "), std::string::npos) << md;
  EXPECT_NE(md.find("\n| dp | "), std::string::npos) << md;
  // (Every grid spends S = 3 evaluations; range(0, T, T // S) would take 4.)
  EXPECT_NE(md.find("NFE: uniform 3; learned 3; dp 3."), std::string::npos) << md;
  std::set<std::string> samples;
  for (const auto& entry : fs::recursive_directory_iterator(out() + "/units"))
    if (entry.path().filename() == "samples.npz") samples.insert(read_bytes(entry.path().string()));
  EXPECT_EQ(samples.size(), 6u);
  // A second run finds everything done, the grid files included.
  r = run("run " + path);
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(units_run(r.output), 0) << r.output;
  EXPECT_EQ(r.output.find("searching the dp grids"), std::string::npos) << r.output;
}

// skip_tuning: tuned: ρ_bottom is searched once per setting (shared by the seeds) on the proxy,
// the winner sampled and measured like any unit; the curve is drawn and the result noted.
TEST_F(Experiment, ConvertedEdmNetworksAreSampledTunedAndReused) {
  // A converted EDM network (tests/fixtures/make_edm_checkpoint_fixture.py, 32 x 32 x 1) as a
  // model of weights and config: its samplers, the ρ search of Skip-Tuning on its skips, FD;
  // run again, nothing is redone.
  const std::string edm = std::string(S2DM_SOURCE_DIR) + "/tests/fixtures/edm_ckpt_fmnist";
  const std::string path = dir / "exp.yaml";
  write_bytes(path, "name: edm\nout: " + out() + "\ndevice: cpu\nthreads: 1\nmodels:\n  - name: edm\n    weights: " + edm +
                        ".safetensors\n    config: " + edm + ".yaml\n    set: {data.path: " + (dir / "data") +
                        "}\nsample: {steps: 2, batch: 8, timesteps: edm}\nsweep:\n  sampler: [heun, dpmpp-2m]\n"
                        "  skip_tuning: [none, tuned]\ntune_skip: {range: [0.5, 1.0], points: 3, refine: 0, proxy_samples: 8}\n"
                        "metric: {features: classifier, num_samples: 16, reference_num: 64, classifier_epochs: 1}\n");
  auto r = run("run " + path);
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(units_run(r.output), 4) << r.output;
  EXPECT_EQ(csv_rows(out() + "/results.csv"), 4);
  EXPECT_NE(r.output.find("weights " + edm + ".safetensors"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("searching ρ_bottom"), std::string::npos) << r.output;
  r = run("run " + path);
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(units_run(r.output), 0) << r.output;
}

TEST_F(Experiment, TunesSkipsOnTheProxyAndMeasuresTheWinner) {
  const std::string path =
      write_one_model("tune", "{sampler: ddim, steps: 3, batch: 8}", "  skip_tuning: [none, tuned]\n",
                      "{features: classifier, num_samples: 16, reference_num: 64, classifier_epochs: 1}",
                      "seeds: [0, 1]\ntune_skip: {range: [0.5, 1.0], points: 3, refine: 1, proxy_samples: 8}\n"
                      "table: {rows: skip_tuning}\n");
  auto r = run("run " + path);
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(units_run(r.output), 4) << r.output;
  std::vector<fs::path> records;
  for (const auto& entry : fs::directory_iterator(out() + "/tuning"))
    if (entry.path().extension() == ".json") records.push_back(entry.path());
  ASSERT_EQ(records.size(), 1u);  // one search for both seeds
  // The recorded ρ_bottom is the argmin of the recorded curve, and both tuned units sampled with it.
  const auto record = nlohmann::json::parse(read_bytes(records[0].string()));
  const double best = record.at("rho_bottom").get<double>();
  const auto& curve = record.at("curve");
  ASSERT_GE(curve.size(), 3u) << record;
  double best_fd = 1e300, argmin = -1;
  for (const auto& point : curve)
    if (point[1].get<double>() < best_fd) best_fd = point[1].get<double>(), argmin = point[0].get<double>();
  EXPECT_EQ(best, argmin) << record;
  EXPECT_EQ(record.at("proxy_fd").get<double>(), best_fd) << record;
  int tuned_units = 0;
  for (const auto& entry : fs::recursive_directory_iterator(out() + "/units"))
    if (entry.path().filename() == "sample.json") {
      const auto info = nlohmann::json::parse(read_bytes(entry.path().string()));
      if (info.at("setting").get<std::string>().find("tuned") == std::string::npos) {
        EXPECT_FALSE(info.contains("skip_tuning")) << info;
        continue;
      }
      ++tuned_units;
      EXPECT_EQ(info.at("skip_tuning").at("rho_bottom").get<double>(), best) << info;
    }
  EXPECT_EQ(tuned_units, 2);
  EXPECT_TRUE(fs::exists(fs::path(records[0]).replace_extension(".png")));
  EXPECT_NE(r.output.find("ρ_bottom 0.7500: proxy"), std::string::npos) << r.output;  // the even grid's middle
  const std::string html = read_bytes(out() + "/report/index.html");
  EXPECT_NE(html.find("Skip-Tuning search"), std::string::npos);
  EXPECT_NE(html.find("Skip-Tuning ρ_bottom = "), std::string::npos);
  EXPECT_NE(read_bytes(out() + "/results.md").find("\n| tuned | "), std::string::npos);
  r = run("run " + path);
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(units_run(r.output), 0) << r.output;
  EXPECT_EQ(r.output.find("searching ρ_bottom"), std::string::npos) << r.output;
}

// With a dp grid, skip_tuning: tuned takes the grid of the model without Skip-Tuning (the one
// the untuned setting samples with: one dp search for both), then searches ρ on it.
TEST_F(Experiment, TunedSkipsAreSearchedOnTheUntunedModelsDpGrid) {
  const std::string path =
      write_one_model("tune_dp", "{sampler: ddim, steps: 3, batch: 8, timesteps: dp}", "  skip_tuning: [none, tuned]\n",
                      "{features: classifier, num_samples: 8, reference_num: 64, classifier_epochs: 1}",
                      "schedule: {batch: 8, dp: {levels: 8, samples: 4}}\n"
                      "tune_skip: {range: [0.5, 1.0], points: 3, refine: 0, proxy_samples: 4}\n");
  auto r = run("run " + path);
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(units_run(r.output), 2) << r.output;
  std::vector<std::string> grids, records;
  for (const auto& entry : fs::directory_iterator(out() + "/schedules"))
    if (entry.path().extension() == ".yaml") grids.push_back(entry.path().string());
  for (const auto& entry : fs::directory_iterator(out() + "/tuning"))
    if (entry.path().extension() == ".json") records.push_back(entry.path().string());
  ASSERT_EQ(grids.size(), 1u);
  ASSERT_EQ(records.size(), 1u);
  EXPECT_EQ(nlohmann::json::parse(read_bytes(records[0])).at("grid_file").get<std::string>(), grids[0]);
  EXPECT_LT(r.output.find("searching the dp grids"), r.output.find("searching ρ_bottom")) << r.output;
}

TEST(ExperimentSearch, FindsTheMinimumToTheRefinedSpacing) {
  int calls = 0;
  auto parabola = [&](double x) { ++calls; return (x - 0.37) * (x - 0.37); };
  auto tried = s2dm::experiment::search_minimum(parabola, 0.2, 1.0, 9, 3);
  EXPECT_EQ(calls, 15);  // 9 even points, then two per refinement
  EXPECT_EQ(tried.size(), 15u);
  auto best = *std::min_element(tried.begin(), tried.end(), [](auto& a, auto& b) { return a.second < b.second; });
  EXPECT_NEAR(best.first, 0.37, 0.1 / 8);
  for (size_t i = 1; i < tried.size(); ++i) EXPECT_LT(tried[i - 1].first, tried[i].first);
  // A minimum at the range's end: the refinement stays inside the range.
  tried = s2dm::experiment::search_minimum([](double x) { return x; }, 0.2, 1.0, 5, 2);
  EXPECT_EQ(tried.front().first, 0.2);
  EXPECT_EQ(tried.size(), 7u);
  for (const auto& [x, y] : tried) EXPECT_GE(x, 0.2);
}

// The tables' numbers: mean ± sample standard deviation over seeds, and the relative
// improvement over the baseline, marked † where it is within the seeds' spread.
TEST(ExperimentReport, TablesAverageSeedsAndCompareWithTheBaseline) {
  s2dm::experiment::ReportSpec e;
  e.name = "t";
  e.baseline = "base";
  e.num_seeds = 2;
  std::vector<s2dm::experiment::ResultRow> rows;
  auto add = [&](const std::string& model, const std::string& sampler, int steps, uint64_t seed, double value) {
    s2dm::experiment::ResultRow r;
    r.model = model, r.sampler = sampler, r.steps = steps, r.seed = seed, r.value = value, r.nfe = steps + 1;
    r.metric = "FD[x]";
    r.setting = {{"sampler", sampler}, {"steps", std::to_string(steps)}};
    rows.push_back(r);
  };
  add("base", "ddim", 10, 0, 10.0), add("base", "ddim", 10, 1, 12.0);  // 11 ± 1.414
  add("new", "ddim", 10, 0, 8.0), add("new", "ddim", 10, 1, 8.4);      // 8.2 ± 0.283: +25.5 %
  add("base", "ddim", 20, 0, 5.0), add("base", "ddim", 20, 1, 7.0);    // 6 ± 1.414
  add("new", "ddim", 20, 0, 5.5), add("new", "ddim", 20, 1, 6.1);      // 5.8: +3.3 %, within the spread
  const std::string md = s2dm::experiment::results_markdown(e, rows);
  EXPECT_NE(md.find("| ddim | 11.000 ± 1.414 | 6.000 ± 1.414 |"), std::string::npos) << md;
  EXPECT_NE(md.find("| ddim | 8.200 ± 0.283 | 5.800 ± 0.424 |"), std::string::npos) << md;
  EXPECT_NE(md.find("| ddim | +25.5 % | +3.3 % † |"), std::string::npos) << md;
  EXPECT_NE(md.find("NFE: ddim 11/21."), std::string::npos) << md;
  // Paired by seed: Δ = 2, 3.6 (both seeds better) and -0.5, 0.9.
  EXPECT_NE(md.find("| ddim | 2.800 ± 1.131 (2/2) | 0.200 ± 0.990 (1/2) |"), std::string::npos) << md;
  const std::string csv = s2dm::experiment::results_csv(rows);
  EXPECT_NE(csv.find("\nnew,ddim,20,1,21,FD[x],6.1,,,"), std::string::npos) << csv;
}

// metric.reference_error: each deterministic unit's RMS against its model's reference solution from
// the same initial noise. The unit that samples with the reference's own recipe is that solution
// (error exactly 0, also when its samples come from an earlier run and its first images are drawn
// again); more steps of a convergent sampler come closer; a stochastic sampler has no error.
TEST_F(Experiment, ReferenceErrorsCompareEachRecipeWithTheSameNoisesSolution) {
  const std::string sweep = "  - {sampler: [dpmpp-2m], timesteps: [logsnr], steps: [2, 16, 64]}\n"
                            "  - {sampler: [dpmpp-2m], timesteps: [karras], steps: [2]}\n"
                            "  - {sampler: [ddpm], steps: [2]}\n";
  const std::string metric = "{features: classifier, num_samples: 8, reference_num: 64, classifier_epochs: 1";
  const std::string with_errors = metric + ", reference_error: {samples: 6, steps: 64, timesteps: logsnr}}";
  auto r = run("run " + write_one_model("errors", "{batch: 8}", sweep, metric + "}"));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(units_run(r.output), 5) << r.output;
  r = run("run " + write_one_model("errors", "{batch: 8}", sweep, with_errors));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(units_run(r.output), 4) << r.output;  // (ddpm's metric stands: it has no error to add)
  EXPECT_EQ(fs::exists(out() + "/reference_solutions") ? std::distance(fs::directory_iterator(out() + "/reference_solutions"),
                                                                       fs::directory_iterator{})
                                                       : 0,
            1);
  std::map<std::string, std::string> error_of;  // "sampler steps timesteps" -> the reference_rms column
  std::istringstream csv(read_bytes(out() + "/results.csv"));
  std::string line;
  std::getline(csv, line);
  ASSERT_NE(line.find(",metric_seconds,reference_rms,key"), std::string::npos) << line;
  while (std::getline(csv, line)) {
    std::vector<std::string> cells;
    std::stringstream fields(line);
    for (std::string cell; std::getline(fields, cell, ',');) cells.push_back(cell);
    ASSERT_GE(cells.size(), 4u) << line;  // (model, sampler, steps, timesteps, ...)
    error_of[cells[1] + " " + cells[2] + " " + cells[3]] = cells[cells.size() - 2];
  }
  ASSERT_EQ(error_of.size(), 5u);
  EXPECT_EQ(error_of.at("ddpm 2 "), "");
  EXPECT_EQ(error_of.at("dpmpp-2m 64 logsnr"), "0");
  EXPECT_NE(error_of.at("dpmpp-2m 2 karras"), "");
  // (The barely trained model's ODE is stiff: the error falls slowly up to ~8 steps, measured 0.42
  // at 2 and 0.08 at 16 against 256 steps; the bound leaves 2.5× of that.)
  const double at2 = std::stod(error_of.at("dpmpp-2m 2 logsnr")), at16 = std::stod(error_of.at("dpmpp-2m 16 logsnr"));
  EXPECT_GT(at2, 0);
  EXPECT_LT(at16, at2 / 2) << "dpmpp-2m at 16 steps is not closer to the 64-step solution than at 2";
  const std::string md = read_bytes(out() + "/results.md");
  EXPECT_NE(md.find("### m — timesteps=logsnr: error against the reference solution"), std::string::npos) << md;
  EXPECT_NE(md.find("### m: the best recipe per NFE"), std::string::npos) << md;
  for (const char* png : {"plots/errors_m_best_metric_vs_nfe.png", "plots/errors_m_best_error_vs_nfe.png"})
    EXPECT_GT(s2dm::read_image(out() + "/" + png, 3).width, 100) << png;
  r = run("run " + write_one_model("errors", "{batch: 8}", sweep, with_errors));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(units_run(r.output), 0) << r.output;
}

// The leaderboard: per NFE the recipe of lowest mean metric with its error against the reference
// solution, and the best recipe of another sampler, † where the two are within the spread.
TEST(ExperimentReport, TheBestRecipePerNfeFacesAnotherSamplersBest) {
  s2dm::experiment::ReportSpec e;
  e.name = "t";
  e.num_seeds = 2;
  std::vector<s2dm::experiment::ResultRow> rows;
  auto add = [&](const std::string& sampler, const std::string& grid, int nfe, const std::vector<double>& values,
                 const std::vector<double>& errors) {
    for (size_t seed = 0; seed < values.size(); ++seed) {
      s2dm::experiment::ResultRow r;
      r.model = "m", r.sampler = sampler, r.steps = nfe, r.seed = seed, r.nfe = nfe, r.metric = "FD[x]";
      r.value = values[seed], r.reference_rms = errors.empty() ? -1 : errors[seed];
      r.setting = {{"sampler", sampler}, {"steps", std::to_string(nfe)}, {"timesteps", grid}};
      rows.push_back(r);
    }
  };
  add("deis", "logsnr", 5, {4.0, 4.2}, {0.05, 0.07});
  add("deis", "karras", 5, {4.5, 4.7}, {0.04, 0.04});
  add("ddim", "logsnr", 5, {5.0, 6.0}, {0.10, 0.12});
  add("ddpm", "logsnr", 5, {4.0, 4.6}, {});  // another sampler within the spread, stochastic
  add("dpmpp-2m", "karras", 5, {5.5, 5.5}, {0.03, 0.06});  // by the error within deis karras' spread
  add("ddim", "logsnr", 10, {3.0, 3.0}, {0.01, 0.01});
  const std::string md = s2dm::experiment::results_markdown(e, rows);
  EXPECT_NE(md.find("### m: the best recipe per NFE"), std::string::npos) << md;
  EXPECT_NE(md.find("| 5 | sampler=deis timesteps=logsnr | 4.100 ± 0.141 | 0.06000 ± 0.01414 | sampler=ddpm "
                    "timesteps=logsnr | 4.300 ± 0.424 † | – |"),
            std::string::npos)
      << md;
  EXPECT_NE(md.find("| 10 | sampler=ddim timesteps=logsnr | 3.000 ± 0.000 | 0.01000 ± 0.00000 | – | – | – |"),
            std::string::npos)
      << md;
  EXPECT_NE(md.find("### m — timesteps=logsnr: error against the reference solution"), std::string::npos) << md;
  // Ranked by the error, the stochastic ddpm takes no part.
  const size_t by_error = md.find("### m: the best recipe per NFE by the error against the reference solution");
  ASSERT_NE(by_error, std::string::npos) << md;
  EXPECT_NE(md.find("| 5 | sampler=deis timesteps=karras | 4.600 ± 0.141 | 0.04000 ± 0.00000 | sampler=dpmpp-2m "
                    "timesteps=karras | 5.500 ± 0.000 | 0.04500 ± 0.02121 † |",
                    by_error),
            std::string::npos)
      << md;
  EXPECT_EQ(md.find("sampler=ddpm", by_error), std::string::npos) << md;
}

// Settings that differ only in options a sampler ignores are one unit: DEIS reads no clip_denoised.
TEST_F(Experiment, OptionsASamplerIgnoresShareItsUnit) {
  const std::string path = write_one_model("opts", "{steps: 2, batch: 8}", "  sampler: [ddim, deis]\n  clip_denoised: [true, false]\n",
                                           "{features: classifier, num_samples: 8, reference_num: 64, classifier_epochs: 1}");
  auto r = run("run " + path);
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(units_run(r.output), 3) << r.output;
  EXPECT_EQ(csv_rows(out() + "/results.csv"), 4);
  EXPECT_EQ(results().size(), 3u);
}

TEST_F(Experiment, TheAutoGridIsTheSamplersOwnAndSharesItsUnit) {
  // timesteps auto is each sampler's own grid (uniform for DDIM, edm for Heun): a setting that
  // names that grid is the same unit.
  const std::string path = write_one_model("auto", "{steps: 2, batch: 8}", "  sampler: [ddim, heun]\n  timesteps: [auto, uniform, edm]\n",
                                           "{features: classifier, num_samples: 8, reference_num: 64, classifier_epochs: 1}");
  auto r = run("run " + path);
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(units_run(r.output), 4) << r.output;
  EXPECT_EQ(csv_rows(out() + "/results.csv"), 6);
}

TEST_F(Experiment, SweepBlocksNameTheirModels) {
  // A PSLD model beside a VP one: each sweep block samples the models it names (its samplers are
  // that process's); a block without `models` samples all, which here is refused for the VP model.
  const std::string psld = std::string(S2DM_SOURCE_DIR) + "/tests/configs/tiny_psld.yaml";
  auto experiment = [&](const std::string& sweep) {
    const std::string path = dir / "exp.yaml";
    write_bytes(path, "name: two\nout: " + out() + "\ndevice: cpu\nthreads: 1\nmodels:\n  - name: v\n    train: " + kTiny +
                          "\n    set: {data.path: " + (dir / "data") + "}\n  - name: p\n    train: " + psld +
                          "\n    set: {data.path: " + (dir / "data") + "}\nbaseline: v\nsample: {batch: 8}\nsweep:\n" + sweep +
                          "metric: {features: classifier, num_samples: 8, reference_num: 64, classifier_epochs: 1}\n");
    return path;
  };
  auto r = run("run " + experiment("  - {models: [p], sampler: [rse, em], steps: [3]}\n"
                                   "  - {models: [v], sampler: [ddim], steps: [4, 2]}\n"));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(units_run(r.output), 4) << r.output;
  EXPECT_EQ(csv_rows(out() + "/results.csv"), 4);
  // Both models trained, then the units by NFE whatever the model (a run stopped early has whole columns).
  std::vector<size_t> at;
  for (const char* unit : {"v | sampler=ddim steps=2 | seed", "p | sampler=rse steps=3 | seed",
                           "p | sampler=em steps=3 | seed", "v | sampler=ddim steps=4 | seed"})
    at.push_back(r.output.find(unit));
  EXPECT_NE(at[0], std::string::npos) << r.output;
  EXPECT_TRUE(std::is_sorted(at.begin(), at.end())) << r.output;
  EXPECT_LT(r.output.rfind("checkpoint " + out() + "/models/"), at[0]) << r.output;
  s2dm::testing::expect_user_error(run("run " + experiment("  sampler: [rse]\n  steps: [3]\n")),
                                   "model 'v', sampler=rse steps=3: sampler 'rse' samples PSLD models");
  s2dm::testing::expect_user_error(run("run " + experiment("  - {models: [q], sampler: [rse], steps: [3]}\n")),
                                   "sweep.models: no model is named 'q'");
  s2dm::testing::expect_user_error(run("run " + experiment("  - {models: [[p]], sampler: [rse], steps: [3]}\n")),
                                   "sweep.models: expected a model's name");
}

// The shipped experiments load (those on Fashion-MNIST fully; CIFAR10/CelebA need data and the
// Inception weights, and must say which is missing).
TEST(ShippedExperiments, LoadOrNameWhatIsMissing) {
  const std::string dir = std::string(S2DM_SOURCE_DIR) + "/configs/experiments/";
  if (!fs::exists("/usr/share/datasets/fashion-mnist")) GTEST_SKIP() << "dataset-fashion-mnist is not installed";
  for (const char* name : {"fmnist_s2dm.yaml", "skip_tuning_sweep.yaml", "learned_schedule.yaml", "psld_integrators.yaml",
                           "few_step.yaml"}) {
    const auto e = s2dm::experiment::load_experiment(dir + name);
    EXPECT_FALSE(e.settings.empty()) << name;
  }
  const auto psld = s2dm::experiment::load_experiment(dir + "psld_integrators.yaml");
  int psld_settings = 0;
  for (const auto& s : psld.settings) psld_settings += s.applies_to("psld") && !s.applies_to("vp");
  EXPECT_EQ(psld_settings, 44);  // 11 samplers at 4 budgets (and 8 settings of the VP model's)
  for (const char* name : {"cifar10_s2dm.yaml", "celeba64_s2dm.yaml"}) {
    try {
      s2dm::experiment::load_experiment(dir + name);
    } catch (const s2dm::ConfigError& err) {
      const std::string what = err.what();
      EXPECT_TRUE(what.find("is not at") != std::string::npos || what.find("no weights at") != std::string::npos) << what;
    }
  }
}

// The same checks through the library: a ConfigError, nothing else.
TEST_F(Experiment, LoadExperimentResolvesEverySetting) {
  auto e = s2dm::experiment::load_experiment(write(Knobs{}));
  ASSERT_EQ(e.models.size(), 2u);
  EXPECT_EQ(e.settings.size(), 4u);
  EXPECT_EQ(e.models[0].config.loss.type, "simple");
  EXPECT_EQ(e.models[1].config.loss.type, "s2dm");
  EXPECT_NE(e.models[0].key, e.models[1].key);
  const auto c = s2dm::experiment::sample_config(e, e.models[1], e.settings[3]);
  EXPECT_EQ(c.sampler, "deis");
  EXPECT_EQ(c.steps, 4);
  EXPECT_EQ(c.batch, 8);
  EXPECT_EQ(c.num, 16);
  EXPECT_NE(s2dm::experiment::hash_key("a"), s2dm::experiment::hash_key("b"));
  write_bytes(dir / "empty.yaml", "name: x\n");
  EXPECT_THROW(s2dm::experiment::load_experiment(dir / "empty.yaml"), s2dm::ConfigError);
}

// The report opens in headless Chromium without errors and shows its tables and plots: the
// screenshot holds the plot colours and the table borders. Skipped where Chromium is absent.
TEST_F(Experiment, ReportRendersInHeadlessChromium) {
  std::string chromium;
  for (const char* name : {"chromium", "chromium-browser", "google-chrome"})
    if (run_shell(std::string("command -v ") + name).code == 0) chromium = name;
  if (chromium.empty()) GTEST_SKIP() << "no Chromium here (apt-get install chromium)";
  Knobs knobs;
  knobs.seeds = "[0]";
  auto r = run("run " + write(knobs));
  ASSERT_EQ(r.code, 0) << r.output;
  const std::string page = "file://" + out() + "/report/index.html";
  const std::string flags = " --headless --no-sandbox --disable-gpu --disable-dev-shm-usage --no-first-run "
                            "--disable-background-networking --disable-extensions --disable-sync --hide-scrollbars "
                            "--force-color-profile=srgb --force-device-scale-factor=1 --user-data-dir=" + (dir / "profile");
  const std::string shot = dir / "shot.png";
  auto c = run_shell(chromium + flags + " --window-size=1280,4000 --screenshot=" + shot + " " + page);
  ASSERT_TRUE(fs::exists(shot)) << c.output;
  EXPECT_EQ(c.output.find("Uncaught"), std::string::npos) << c.output;
  auto dom = run_shell(chromium + flags + " --dump-dom " + page);
  EXPECT_NE(dom.output.find("relative improvement"), std::string::npos) << dom.output.substr(0, 2000);
  EXPECT_GE(std::count(dom.output.begin(), dom.output.end(), '\n'), 10);

  const auto image = s2dm::read_image(shot, 3);
  ASSERT_EQ(image.width, 1280);
  auto count = [&](std::array<int, 3> rgb) {
    int n = 0;
    for (size_t i = 0; i + 2 < image.pixels.size(); i += 3)
      n += std::abs(image.pixels[i] - rgb[0]) <= 3 && std::abs(image.pixels[i + 1] - rgb[1]) <= 3 &&
           std::abs(image.pixels[i + 2] - rgb[2]) <= 3;
    return n;
  };
  EXPECT_GT(count({31, 119, 180}), 50) << "the first plot colour (ddim, base) is not on screen";
  EXPECT_GT(count({214, 39, 40}), 50) << "the second plot colour is not on screen";
  EXPECT_GT(count({0xbb, 0xbb, 0xbb}), 500) << "no table borders on screen";
}

}  // namespace
