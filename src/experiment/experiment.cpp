#include "s2dm/experiment/experiment.h"

#include <spdlog/spdlog.h>
#include <torch/torch.h>
#include <yaml-cpp/yaml.h>

#include <chrono>
#include <cstring>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <sstream>

#include "s2dm/io/checkpoint.h"
#include "s2dm/eval/classifier.h"
#include "s2dm/data/data.h"
#include "s2dm/core/device.h"
#include "s2dm/core/errors.h"
#include "s2dm/eval/fid.h"
#include "s2dm/io/file_io.h"
#include "s2dm/sample/generate.h"
#include "s2dm/io/npy_tensor.h"
#include "s2dm/core/progress.h"
#include "s2dm/experiment/report.h"
#include "s2dm/sample/samplers.h"
#include "s2dm/sample/learned_schedule.h"
#include "s2dm/core/stop_signals.h"
#include "s2dm/train/train.h"
#include "s2dm/model/unet.h"

namespace s2dm::experiment {
namespace fs = std::filesystem;
using json = nlohmann::ordered_json;

std::string hash_key(const std::string& text) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : text) h = (h ^ c) * 1099511628211ull;
  // A final mix (splitmix64's) so that inputs differing near their end differ in every digit.
  h = (h ^ (h >> 30)) * 0xbf58476d1ce4e5b9ull;
  h = (h ^ (h >> 27)) * 0x94d049bb133111ebull;
  h ^= h >> 31;
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

std::string Setting::label() const {
  std::string out;
  for (const auto& [k, v] : values) out += (out.empty() ? "" : " ") + k + "=" + v;
  return out.empty() ? "(base settings)" : out;
}

namespace {

// ---- Reading the experiment file ----

class Reader {
 public:
  explicit Reader(std::string path) : path_(std::move(path)) {}

  [[noreturn]] void fail(const YAML::Node& at, const std::string& msg) const {
    std::string where = path_;
    if (at.IsDefined() && at.Mark().line >= 0) where += ":" + std::to_string(at.Mark().line + 1);
    throw ConfigError(where + ": " + msg);
  }
  int line(const YAML::Node& at) const { return at.IsDefined() ? at.Mark().line + 1 : 0; }

  void check_keys(const YAML::Node& node, const std::string& prefix, const std::vector<std::string>& allowed) const {
    if (!node.IsMap()) fail(node, (prefix.empty() ? "the experiment" : prefix) + ": expected a mapping of keys");
    for (const auto& kv : node) {
      const auto key = kv.first.as<std::string>();
      if (std::find(allowed.begin(), allowed.end(), key) != allowed.end()) continue;
      const std::string full = prefix.empty() ? key : prefix + "." + key;
      std::string msg = "unknown key '" + full + "'";
      const auto near = closest_match(key, allowed);
      if (!near.empty()) msg += " (did you mean '" + (prefix.empty() ? near : prefix + "." + near) + "'?)";
      msg += "; allowed: ";
      for (size_t i = 0; i < allowed.size(); ++i) msg += (i ? ", " : "") + allowed[i];
      fail(kv.first, msg);
    }
  }

  template <class T>
  T scalar(const YAML::Node& node, const std::string& name, const char* what) const {
    try {
      if (!node.IsScalar()) throw YAML::BadConversion(node.Mark());
      return node.as<T>();
    } catch (const YAML::BadConversion&) {
      fail(node, name + ": expected " + what + ", got '" + flow(node) + "'");
    }
  }

  // A path in the file, relative to the file's folder.
  std::string resolve(const std::string& p) const {
    if (p.empty() || fs::path(p).is_absolute()) return p;
    return (fs::path(path_).parent_path() / p).lexically_normal().string();
  }

  static std::string flow(const YAML::Node& node) {
    if (node.IsScalar()) return node.Scalar();
    YAML::Emitter e;
    e.SetMapFormat(YAML::Flow);
    e.SetSeqFormat(YAML::Flow);
    e << node;
    return e.c_str();
  }

  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// What determines a model's weights, without the settings that do not (name, device, threads,
// the sample section).
std::string training_identity(Config c) {
  c.name.clear();
  c.device = "auto";
  c.threads = 0;
  c.sample = SampleConfig{};
  return to_yaml(c);
}

std::string file_identity(const std::string& path) {
  std::error_code ec;
  const auto canonical = fs::weakly_canonical(path, ec).string();
  const auto size = fs::file_size(path, ec);
  const auto mtime = fs::last_write_time(path, ec).time_since_epoch().count();
  return canonical + "|" + std::to_string(size) + "|" + std::to_string(mtime);
}

bool is_safe_name(const std::string& name) {
  if (name.empty() || name == "." || name == "..") return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' || c == '.';
  });
}

void read_models(const Reader& r, const YAML::Node& node, Experiment& e) {
  if (!node || !node.IsSequence() || node.size() == 0) r.fail(node, "models: expected a list of models (name + train or checkpoint)");
  std::set<std::string> names;
  for (size_t i = 0; i < node.size(); ++i) {
    const YAML::Node m = node[i];
    const std::string where = "models[" + std::to_string(i) + "]";
    r.check_keys(m, where, {"name", "train", "checkpoint", "set", "ema"});
    ModelSpec spec;
    spec.line = r.line(m);
    if (!m["name"]) r.fail(m, where + ": needs a name");
    spec.name = r.scalar<std::string>(m["name"], where + ".name", "a string");
    if (!is_safe_name(spec.name)) r.fail(m["name"], where + ".name = '" + spec.name + "': use letters, digits, '_', '-', '.'");
    if (!names.insert(spec.name).second) r.fail(m["name"], where + ".name = '" + spec.name + "' is used twice");
    if (bool(m["train"]) == bool(m["checkpoint"]))
      r.fail(m, where + " ('" + spec.name + "'): give exactly one of train (a train config) or checkpoint");
    if (m["ema"]) spec.ema = r.scalar<bool>(m["ema"], where + ".ema", "true or false");
    if (const auto set = m["set"]) {
      if (m["checkpoint"]) r.fail(set, where + ".set: overrides apply to train configs, not checkpoints");
      if (set.IsMap()) {
        for (const auto& kv : set) spec.set.push_back(kv.first.as<std::string>() + "=" + Reader::flow(kv.second));
      } else if (set.IsSequence()) {
        for (const auto& item : set) spec.set.push_back(r.scalar<std::string>(item, where + ".set", "'section.key=value'"));
      } else {
        r.fail(set, where + ".set: expected a mapping of section.key: value");
      }
    }
    if (m["train"]) {
      spec.train_config = r.resolve(r.scalar<std::string>(m["train"], where + ".train", "a path"));
      if (!fs::is_regular_file(spec.train_config)) r.fail(m["train"], where + ".train: " + spec.train_config + " not found");
      try {
        spec.config = load_config(spec.train_config, spec.set);
      } catch (const ConfigError& err) {
        r.fail(m, where + " ('" + spec.name + "'): " + err.what());
      }
      spec.key = hash_key("train\n" + training_identity(spec.config));
      const auto& data = spec.config.data;
      const std::string data_path = data.path.empty() ? data::default_path(data.dataset) : data.path;
      if (!fs::exists(data_path))
        r.fail(m, where + " ('" + spec.name + "'): its data (" + data.dataset + ") is not at " + data_path +
                      " (data/README.md says how to get it)");
    } else {
      spec.checkpoint = r.resolve(r.scalar<std::string>(m["checkpoint"], where + ".checkpoint", "a path"));
      if (!fs::is_regular_file(spec.checkpoint))
        r.fail(m["checkpoint"], where + ".checkpoint: " + spec.checkpoint + " not found");
      const auto ckpt = load_checkpoint(spec.checkpoint);  // verifies it
      spec.config = parse_config(ckpt.config_yaml, spec.checkpoint + " (config)");
      spec.key = hash_key("checkpoint\n" + file_identity(spec.checkpoint) + (spec.ema ? "|ema" : "|raw"));
    }
    spec.config.name = spec.name;
    spec.config.device = e.device;
    spec.config.threads = e.threads;
    e.models.push_back(std::move(spec));
  }
}

// Sweep values as the text of a --set value; Skip-Tuning "none" is the empty section.
std::string override_text(const std::string& key, const std::string& value) {
  return key == "skip_tuning" && value == "none" ? "{}" : value;
}

void read_sweep(const Reader& r, const YAML::Node& node, Experiment& e, int& sweep_line) {
  std::vector<std::string> allowed = sample_config_keys();
  allowed.erase(std::remove_if(allowed.begin(), allowed.end(), [](const std::string& k) { return k == "num" || k == "batch"; }),
                allowed.end());
  std::vector<YAML::Node> blocks;
  if (!node) {
    e.settings.push_back({});
    return;
  }
  sweep_line = r.line(node);
  if (node.IsMap()) blocks.push_back(node);
  else if (node.IsSequence()) for (const auto& b : node) blocks.push_back(b);
  else r.fail(node, "sweep: expected a mapping of sample keys to lists of values (or a list of such mappings)");
  std::set<std::map<std::string, std::string>> seen;
  for (const auto& block : blocks) {
    r.check_keys(block, "sweep", allowed);
    std::vector<std::pair<std::string, std::vector<std::string>>> axes;
    for (const auto& kv : block) {
      const auto key = kv.first.as<std::string>();
      std::vector<std::string> values;
      // A list holds the axis' values; anything else is its one value (a ρ list is a mapping's member).
      if (kv.second.IsSequence()) {
        for (const auto& v : kv.second) values.push_back(Reader::flow(v));
      } else {
        values.push_back(Reader::flow(kv.second));
      }
      if (values.empty()) r.fail(kv.second, "sweep." + key + ": no values");
      axes.push_back({key, values});
      if (std::find(e.sweep_keys.begin(), e.sweep_keys.end(), key) == e.sweep_keys.end()) e.sweep_keys.push_back(key);
    }
    // The product of the axes, the first key varying slowest.
    std::vector<size_t> index(axes.size(), 0);
    for (bool more = true; more;) {
      Setting s;
      for (size_t a = 0; a < axes.size(); ++a) s.values[axes[a].first] = axes[a].second[index[a]];
      if (seen.insert(s.values).second) e.settings.push_back(s);
      more = false;
      for (size_t a = axes.size(); a-- > 0;) {
        if (++index[a] < axes[a].second.size()) {
          more = true;
          break;
        }
        index[a] = 0;
      }
    }
  }
}

void read_metric(const Reader& r, const YAML::Node& node, Experiment& e) {
  if (!node) return;
  r.check_keys(node, "metric", {"features", "num_samples", "reference", "reference_num", "kid", "batch", "classifier_epochs"});
  auto& m = e.metric;
  if (node["features"]) m.features = r.scalar<std::string>(node["features"], "metric.features", "a string");
  if (node["num_samples"]) m.num_samples = r.scalar<int64_t>(node["num_samples"], "metric.num_samples", "an integer");
  if (node["reference"]) m.reference = r.scalar<std::string>(node["reference"], "metric.reference", "a string");
  if (node["reference_num"]) m.reference_num = r.scalar<int64_t>(node["reference_num"], "metric.reference_num", "an integer");
  if (node["kid"]) m.kid = r.scalar<bool>(node["kid"], "metric.kid", "true or false");
  if (node["batch"]) m.batch = r.scalar<int64_t>(node["batch"], "metric.batch", "an integer");
  if (node["classifier_epochs"]) m.classifier_epochs = r.scalar<int>(node["classifier_epochs"], "metric.classifier_epochs", "an integer");
  if (m.num_samples < 2) r.fail(node["num_samples"], "metric.num_samples must be at least 2");
  if (m.reference_num < 2) r.fail(node["reference_num"], "metric.reference_num must be at least 2");
  if (m.batch < 1) r.fail(node["batch"], "metric.batch must be positive");
  if (m.classifier_epochs < 1) r.fail(node["classifier_epochs"], "metric.classifier_epochs must be positive");
  const auto& f = m.features;
  if (f == "inception") {
    if (!fs::exists(eval::default_inception_weights()))
      r.fail(node["features"], "metric.features = inception: no weights at " + eval::default_inception_weights() +
                                   " (scripts/convert_fid_inception.py makes them; or set $S2DM_INCEPTION_WEIGHTS)");
  } else if (f.rfind("inception:", 0) == 0 || f.rfind("classifier:", 0) == 0) {
    const auto colon = f.find(':');
    const std::string file = r.resolve(f.substr(colon + 1));
    if (!fs::is_regular_file(file)) r.fail(node["features"], "metric.features: " + file + " not found");
    m.features = f.substr(0, colon + 1) + file;
  } else if (f != "classifier") {
    r.fail(node["features"], "metric.features = '" + f + "': expected inception, inception:WEIGHTS, classifier (trained on the "
                             "data here) or classifier:PATH");
  }
  if (m.reference != "train" && m.reference != "test") {
    m.reference = r.resolve(m.reference);
    if (!fs::is_regular_file(m.reference))
      r.fail(node["reference"], "metric.reference: " + m.reference + " not found (expected train, test or a statistics .npz)");
    if (m.kid) r.fail(node["kid"], "metric.kid needs reference features: use reference train or test, not a statistics file");
  }
}

void read_schedule(const Reader& r, const YAML::Node& node, Experiment& e) {
  if (!node) return;
  r.check_keys(node, "schedule", {"levels", "samples", "batch", "seed"});
  auto& s = e.schedule;
  if (node["levels"]) s.levels = r.scalar<int>(node["levels"], "schedule.levels", "an integer");
  if (node["samples"]) s.samples = r.scalar<int64_t>(node["samples"], "schedule.samples", "an integer");
  if (node["batch"]) s.batch = r.scalar<int64_t>(node["batch"], "schedule.batch", "an integer");
  if (node["seed"]) s.seed = r.scalar<uint64_t>(node["seed"], "schedule.seed", "a non-negative integer");
  if (s.levels < 3) r.fail(node["levels"], "schedule.levels must be at least 3");
  if (s.samples < 1 || s.batch < 1) r.fail(node, "schedule.samples and schedule.batch must be positive");
}

// Resolves every model × setting now, so that a bad combination fails before any work.
void check_settings(const Reader& r, const Experiment& e, int sweep_line) {
  // (Grid warnings, such as repeated timesteps, come again when a unit runs.)
  const auto level = spdlog::get_level();
  spdlog::set_level(spdlog::level::err);
  struct Restore {
    spdlog::level::level_enum level;
    ~Restore() { spdlog::set_level(level); }
  } restore{level};
  for (const auto& m : e.models) {
    const NoiseSchedule schedule(m.config.diffusion);
    std::optional<int> skips;
    for (const auto& s : e.settings) {
      const std::string where = r.path() + (sweep_line ? ":" + std::to_string(sweep_line) : "") + ": model '" + m.name + "', " +
                                s.label() + ": ";
      const SampleConfig c = sample_config(e, m, s);
      SampleConfig check = c;
      if (c.timesteps == "learned") {
        if (c.steps >= e.schedule.levels)
          throw ConfigError(where + "timesteps learned with " + std::to_string(c.steps) + " steps needs schedule.levels > " +
                            std::to_string(c.steps));
        check.timesteps = "uniform";
      }
      try {
        sample::plan_sampling(check, schedule);
        if (c.skip_tuning.active() && !c.skip_tuning.rho.empty()) {
          if (!skips) skips = model::UNet(m.config.model, m.config.data.channels, m.config.data.image_size)->num_skips();
          model::skip_tuning_scales(c.skip_tuning, *skips);
        }
      } catch (const ConfigError& err) {
        throw ConfigError(where + err.what());
      }
    }
  }
}

}  // namespace

SampleConfig sample_config(const Experiment& e, const ModelSpec& m, const Setting& s) {
  std::vector<std::string> overrides;
  for (const auto& [k, v] : e.sample) overrides.push_back("sample." + k + "=" + override_text(k, v));
  for (const auto& [k, v] : s.values) overrides.push_back("sample." + k + "=" + override_text(k, v));
  overrides.push_back("sample.num=" + std::to_string(e.metric.num_samples));
  try {
    return parse_config(to_yaml(m.config), "model '" + m.name + "'", overrides).sample;
  } catch (const ConfigError& err) {
    std::string msg = err.what();
    if (msg.rfind("--set ", 0) == 0) msg = msg.substr(6);
    throw ConfigError(e.path + ": model '" + m.name + "', " + s.label() + ": " + msg);
  }
}

Experiment load_experiment(const std::string& path) {
  if (!fs::is_regular_file(path)) throw ConfigError(path + ": experiment file not found");
  YAML::Node root;
  try {
    root = YAML::LoadFile(path);
  } catch (const YAML::Exception& err) {
    throw ConfigError(path + ":" + std::to_string(err.mark.line + 1) + ": invalid YAML: " + err.msg);
  }
  Reader r(path);
  r.check_keys(root, "", {"name", "out", "device", "threads", "seeds", "models", "baseline", "sample", "sweep", "metric", "schedule",
                      "table"});
  Experiment e;
  e.path = path;
  e.name = root["name"] ? r.scalar<std::string>(root["name"], "name", "a string") : fs::path(path).stem().string();
  if (!is_safe_name(e.name)) r.fail(root["name"], "name = '" + e.name + "': use letters, digits, '_', '-', '.'");
  e.out = root["out"] ? r.scalar<std::string>(root["out"], "out", "a path") : "runs/" + e.name;
  if (root["device"]) e.device = r.scalar<std::string>(root["device"], "device", "a string");
  if (root["threads"]) e.threads = r.scalar<int>(root["threads"], "threads", "an integer");
  if (e.threads < 0) r.fail(root["threads"], "threads must not be negative");
  if (const auto seeds = root["seeds"]) {
    e.seeds.clear();
    if (seeds.IsSequence()) {
      for (const auto& s : seeds) e.seeds.push_back(r.scalar<uint64_t>(s, "seeds", "non-negative integers"));
    } else {
      e.seeds.push_back(r.scalar<uint64_t>(seeds, "seeds", "non-negative integers"));
    }
    if (e.seeds.empty()) r.fail(seeds, "seeds: give at least one seed");
    if (std::set<uint64_t>(e.seeds.begin(), e.seeds.end()).size() != e.seeds.size()) r.fail(seeds, "seeds: a seed is repeated");
  }
  read_models(r, root["models"], e);
  if (root["baseline"]) {
    e.baseline = r.scalar<std::string>(root["baseline"], "baseline", "a model name");
    if (std::none_of(e.models.begin(), e.models.end(), [&](const ModelSpec& m) { return m.name == e.baseline; }))
      r.fail(root["baseline"], "baseline = '" + e.baseline + "' is not one of the models");
  }
  if (const auto sample = root["sample"]) {
    auto allowed = sample_config_keys();
    allowed.erase(std::remove(allowed.begin(), allowed.end(), "num"), allowed.end());
    r.check_keys(sample, "sample", allowed);
    for (const auto& kv : sample) e.sample[kv.first.as<std::string>()] = Reader::flow(kv.second);
  }
  int sweep_line = 0;
  read_sweep(r, root["sweep"], e, sweep_line);
  for (const auto& k : e.sweep_keys)
    if (e.sample.count(k)) r.fail(root["sample"], "sample." + k + " is also swept (sweep." + k + "): keep one");
  if (const auto table = root["table"]) {
    r.check_keys(table, "table", {"rows"});
    if (table["rows"]) e.table_rows = r.scalar<std::string>(table["rows"], "table.rows", "a swept key");
    if (e.table_rows != "sampler" &&
        (e.table_rows == "steps" || std::find(e.sweep_keys.begin(), e.sweep_keys.end(), e.table_rows) == e.sweep_keys.end()))
      r.fail(table["rows"], "table.rows = '" + e.table_rows + "': expected sampler or a swept key other than steps");
  }
  read_metric(r, root["metric"], e);
  read_schedule(r, root["schedule"], e);
  if (e.metric.features == "classifier") {
    const auto& data = e.models.front().config.data;
    if (data.dataset != "fmnist" && data.dataset != "cifar10")
      r.fail(root["metric"], "metric.features = classifier trains on labelled data (fmnist, cifar10), not " + data.dataset);
  }
  check_settings(r, e, sweep_line);
  try {
    resolve_device(e.device);
  } catch (const ConfigError& err) {
    r.fail(root["device"], err.what());
  }
  return e;
}

// ---- Running ----

namespace {

struct Unit {
  const ModelSpec* model = nullptr;
  const Setting* setting = nullptr;
  uint64_t seed = 0;
  SampleConfig config;
  std::string key, metric_key, dir;
  int64_t nfe = 0;
  bool has_samples = false, has_metric = false;
  std::string metric_file() const { return dir + "/metric-" + metric_key + ".json"; }
};

// The state of a train model's run directory.
struct TrainState {
  std::string run_dir;
  int64_t step = -1;      // -1: nothing usable
  bool matches = false;   // the checkpoint was trained with this config
  int64_t target = 0;      // the steps wanted
  bool trained() const { return matches && step == target; }
  bool resumable() const { return matches && step >= 0 && step < target; }
};

std::string model_dir(const Experiment& e, const ModelSpec& m) { return e.out + "/models/" + m.name; }

TrainState train_state(const Experiment& e, const ModelSpec& m) {
  TrainState s;
  s.run_dir = model_dir(e, m);
  s.target = m.config.train.steps;
  const auto latest = train::latest_checkpoint(s.run_dir);
  if (!fs::exists(latest)) return s;
  try {
    const auto ckpt = load_checkpoint(latest);
    auto config = parse_config(ckpt.config_yaml, latest + " (config)");
    // The same settings, trained as far or less far (it then resumes); a run that went further
    // trains again, since its weights are not those of the shorter run.
    const auto& wanted = m.config;
    config.train.steps = wanted.train.steps;
    s.matches = training_identity(config) == training_identity(wanted) && ckpt.step <= wanted.train.steps;
    s.step = ckpt.step;
  } catch (const Error& err) {
    spdlog::warn("{}: {} (it will be trained again)", latest, err.what());
  }
  return s;
}

// The feature space and the reference statistics, loaded when first needed.
class Measurer {
 public:
  Measurer(const Experiment& e, torch::Device device) : e_(e), device_(device) {
    const auto& f = e.metric.features;
    if (f == "classifier") {
      const auto& data = e.models.front().config.data;
      Config c;
      c.data = data;
      c.data.limit = 0;
      classifier_ = e.out + "/classifier/" +
                    hash_key("classifier\n" + to_yaml(c) + std::to_string(e.metric.classifier_epochs)).substr(0, 12) +
                    ".safetensors";
      identity_ = "classifier-trained-here:" + classifier_;
    } else if (f == "inception") {
      identity_ = "inception:" + file_identity(eval::default_inception_weights());
    } else {
      identity_ = f.substr(0, f.find(':') + 1) + file_identity(f.substr(f.find(':') + 1));
    }
  }
  const std::string& identity() const { return identity_; }

  std::string reference_identity(const ModelSpec& m) const {
    if (e_.metric.reference != "train" && e_.metric.reference != "test")
      return "stats:" + file_identity(e_.metric.reference);
    Config c;
    c.data = m.config.data;
    c.data.limit = 0;
    c.data.cache.clear();
    return "data:" + e_.metric.reference + ":" + std::to_string(e_.metric.reference_num) + "\n" + to_yaml(c) + identity_ +
           (e_.metric.kid ? "|kid" : "");
  }

  const eval::FeatureExtractor& extractor() {
    if (extractor_.fn) return extractor_;
    std::string spec = e_.metric.features;
    if (spec == "classifier") {
      if (!fs::exists(classifier_)) {
        spdlog::info("training the feature classifier on {} ({} epochs)", e_.models.front().config.data.dataset,
                     e_.metric.classifier_epochs);
        fs::create_directories(fs::path(classifier_).parent_path());
        eval::ClassifierTraining options;
        options.epochs = e_.metric.classifier_epochs;
        eval::train_data_classifier(e_.models.front().config.data, 0, options, device_, classifier_);
      }
      spec = "classifier:" + classifier_;
    }
    extractor_ = eval::make_feature_extractor(spec, device_);
    return extractor_;
  }

  struct Reference {
    eval::FeatureStats stats;
    torch::Tensor features;  // for KID
  };
  const Reference& reference(const ModelSpec& m) {
    const std::string key = hash_key(reference_identity(m));
    auto it = references_.find(key);
    if (it != references_.end()) return it->second;
    Reference ref;
    if (e_.metric.reference != "train" && e_.metric.reference != "test") {
      ref.stats = eval::load_stats(e_.metric.reference);
    } else {
      const std::string base = e_.out + "/reference/" + key;
      if (fs::exists(base + ".npz") && (!e_.metric.kid || fs::exists(base + "_features.npy"))) {
        ref.stats = eval::load_stats(base + ".npz");
        if (e_.metric.kid) ref.features = to_tensor(load_npy(base + "_features.npy"), base + "_features.npy").to(torch::kFloat64);
      } else {
        auto data = m.config.data;
        data.limit = 0;
        auto images = data::load_dataset(data, e_.metric.reference == "train").images;
        if (images.size(0) > e_.metric.reference_num) images = images.slice(0, 0, e_.metric.reference_num);
        spdlog::info("reference statistics: {} {} images of {}", images.size(0), e_.metric.reference, data.dataset);
        ref.features = eval::extract_features(extractor(), images, e_.metric.batch, device_);
        ref.stats = eval::feature_stats(ref.features);
        fs::create_directories(e_.out + "/reference");
        if (e_.metric.kid) save_npy(base + "_features.npy", to_npy_array(ref.features.to(torch::kFloat32)));
        eval::save_stats(base + ".npz", ref.stats);
      }
    }
    return references_.emplace(key, std::move(ref)).first->second;
  }

 private:
  const Experiment& e_;
  torch::Device device_;
  std::string identity_, classifier_;
  eval::FeatureExtractor extractor_;
  std::map<std::string, Reference> references_;
};

// Seconds per image per network evaluation of a model's UNet (random weights), for the estimate.
double eval_seconds_per_image(const Config& config, int64_t batch, const torch::Device& device) {
  torch::NoGradGuard no_grad;
  model::UNet unet(config.model, config.data.channels, config.data.image_size);
  unet->eval();
  unet->to(device);
  const int64_t b = std::clamp<int64_t>(batch, 1, 32);
  auto x = torch::randn({b, config.data.channels, config.data.image_size, config.data.image_size}).to(device);
  auto t = torch::full({b}, 500.0).to(device);
  unet->forward(x, t);
  const auto start = std::chrono::steady_clock::now();
  unet->forward(x, t);
  if (device.is_cuda()) torch::cuda::synchronize();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() / b;
}

// The offline score-optimal schedule of a model for every step count its "learned" settings
// use, estimated once and kept beside the model.
std::string learned_schedule_file(const Experiment& e, const ModelSpec& m, const std::vector<int>& steps) {
  std::string text = m.key + "\n" + std::to_string(e.schedule.levels) + "|" + std::to_string(e.schedule.samples) + "|" +
                     std::to_string(e.schedule.seed);
  for (int s : steps) text += "|" + std::to_string(s);
  return e.out + "/schedules/" + m.name + "-" + hash_key(text) + ".yaml";
}

std::vector<int> learned_steps(const std::vector<Unit>& units, const ModelSpec& m) {
  std::set<int> steps;
  for (const auto& u : units)
    if (u.model == &m && u.config.timesteps == "learned") steps.insert(u.config.steps);
  return {steps.begin(), steps.end()};
}

// The sample settings that can change a unit's samples. Options the sampler does not read are
// reset (changing clip_denoised, which only DDIM and DDPM read, re-runs no DEIS unit), and so is
// the batch, except for samplers whose noise is drawn per batch (DDPM, DDIM with η > 0).
SampleConfig effective_settings(SampleConfig c) {
  const auto& info = sample::find_sampler(c.sampler);
  std::set<std::string> reads;
  for (size_t start = 0; start < info.options.size();) {
    const size_t comma = info.options.find(',', start);
    const std::string name = info.options.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    reads.insert(name.substr(name.find_first_not_of(' ')));
    start = comma == std::string::npos ? info.options.size() : comma + 1;
  }
  const SampleConfig defaults;
  if (!reads.count("eta")) c.eta = defaults.eta;
  if (!reads.count("clip_denoised")) c.clip_denoised = defaults.clip_denoised;
  if (!reads.count("order")) c.order = defaults.order;
  if (!reads.count("lambda")) c.lambda = defaults.lambda;
  if (!reads.count("lower_order_final")) c.lower_order_final = defaults.lower_order_final;
  if (!reads.count("variance")) c.variance = defaults.variance;
  if (c.timesteps != "karras") c.karras_rho = defaults.karras_rho;
  if (!c.skip_tuning.active()) c.skip_tuning = defaults.skip_tuning;
  if (!info.stochastic && c.eta == 0) c.batch = 0;
  return c;
}

ResultRow result_row(const Unit& u, const json& metric) {
  ResultRow row;
  row.model = u.model->name;
  row.setting = u.setting->values;
  row.sampler = u.config.sampler;
  row.steps = u.config.steps;
  row.seed = u.seed;
  row.nfe = metric.value("nfe", u.nfe);
  row.metric = metric.at("metric").get<std::string>();
  row.value = metric.at("value").get<double>();
  if (metric.contains("kid_mean")) row.kid_mean = metric["kid_mean"], row.kid_std = metric["kid_std"];
  row.num_samples = metric.value("num_samples", int64_t{0});
  row.sample_seconds = metric.value("sample_seconds", 0.0);
  row.metric_seconds = metric.value("metric_seconds", 0.0);
  row.key = u.key;
  row.grid_png = u.dir + "/grid.png";
  return row;
}

json read_json(const std::string& path) {
  auto j = json::parse(read_file_bytes(path), nullptr, false);
  if (j.is_discarded()) throw DataError(path + ": not valid JSON");
  return j;
}

}  // namespace

RunSummary run_experiment(const Experiment& e, const RunOptions& options) {
  StopSignals stop;
  set_cpu_threads(e.threads);
  const auto device = resolve_device(e.device);
  for (const auto& name : options.only)
    if (std::none_of(e.models.begin(), e.models.end(), [&](const ModelSpec& m) { return m.name == name; }))
      throw ConfigError("--only " + name + ": " + e.path + " has no model of that name");
  auto selected = [&](const ModelSpec& m) {
    return options.only.empty() || std::find(options.only.begin(), options.only.end(), m.name) != options.only.end();
  };

  Measurer measurer(e, device);
  std::vector<Unit> units;
  for (const auto& m : e.models)
    for (const auto& s : e.settings) {
      const SampleConfig config = sample_config(e, m, s);
      Config c;
      c.sample = effective_settings(config);
      const std::string settings_text = m.key + "\n" + to_yaml(c);
      for (uint64_t seed : e.seeds) {
        Unit u;
        u.model = &m;
        u.setting = &s;
        u.seed = seed;
        u.config = config;
        std::string text = settings_text + "seed " + std::to_string(seed);
        u.key = hash_key(text);
        u.dir = e.out + "/units/" + m.name + "/" + u.key;
        u.metric_key = hash_key(u.key + "\n" + measurer.identity() + "\n" + measurer.reference_identity(m));
        u.nfe = sample::find_sampler(u.config.sampler).nfe(u.config.steps);
        u.has_samples = fs::exists(u.dir + "/samples.npz") && fs::exists(u.dir + "/sample.json");
        u.has_metric = fs::exists(u.metric_file());
        units.push_back(std::move(u));
      }
    }
  for (auto& u : units)
    if (u.config.timesteps == "learned") {
      // The schedule file (and so the key) depends on every learned step count of the model.
      const auto file = learned_schedule_file(e, *u.model, learned_steps(units, *u.model));
      u.key = hash_key(u.key + "\nlearned " + file);
      u.dir = e.out + "/units/" + u.model->name + "/" + u.key;
      u.metric_key = hash_key(u.key + "\n" + measurer.identity() + "\n" + measurer.reference_identity(*u.model));
      u.has_samples = fs::exists(u.dir + "/samples.npz") && fs::exists(u.dir + "/sample.json");
      u.has_metric = fs::exists(u.metric_file());
    }

  // The plan and a rough estimate, from one timed network evaluation per model.
  RunSummary summary;
  double total_seconds = 0;
  std::map<std::string, TrainState> states;
  std::printf("experiment %s: %zu models × %zu settings × %zu seeds = %zu units, %s samples each, %s; output %s\n",
              e.name.c_str(), e.models.size(), e.settings.size(), e.seeds.size(), units.size(),
              std::to_string(e.metric.num_samples).c_str(), e.metric.features.c_str(), e.out.c_str());
  for (const auto& m : e.models) {
    int todo = 0, done = 0, to_sample = 0;
    int64_t nfe_images = 0;
    for (const auto& u : units)
      if (u.model == &m) {
        if (u.has_metric) {
          ++done;
        } else {
          ++todo;
          if (!u.has_samples) ++to_sample, nfe_images += u.nfe * e.metric.num_samples;
        }
      }
    summary.units_total += todo + done;
    summary.units_done_before += done;
    std::string training = "checkpoint " + m.checkpoint;
    int64_t train_steps = 0;
    if (!m.train_config.empty()) {
      const auto& state = states[m.name] = train_state(e, m);
      if (state.trained()) {
        training = "trained (" + std::to_string(state.step) + " steps)";
      } else if (todo == 0) {
        training = "not needed (every unit done)";
      } else if (state.resumable()) {
        train_steps = m.config.train.steps - state.step;
        training = "resume at step " + std::to_string(state.step) + " of " + std::to_string(m.config.train.steps);
      } else {
        train_steps = m.config.train.steps;
        training = "train " + std::to_string(train_steps) + " steps";
      }
    }
    double seconds = 0;
    if (selected(m) && todo > 0) {
      const double per_image = eval_seconds_per_image(m.config, sample_config(e, m, e.settings.front()).batch, device);
      // A training step costs about three evaluations (forward + backward) per image, plus L_skip's.
      const double per_step = per_image * m.config.train.batch_size * (m.config.loss.type == "s2dm" ? 4.0 : 3.0);
      seconds = per_image * static_cast<double>(nfe_images) + per_step * static_cast<double>(train_steps);
      total_seconds += seconds;
    }
    std::printf("  %-14s %-44s units: %d done, %d to run (%d to sample)%s%s\n", m.name.c_str(), training.c_str(), done, todo,
                to_sample, selected(m) ? "" : " [skipped: --only]",
                seconds > 0 ? (", ~" + format_duration(seconds)).c_str() : "");
  }
  std::printf("estimated time: ~%s (network time only, from one timed evaluation per model)\n",
              format_duration(total_seconds).c_str());
  std::fflush(stdout);
  if (options.dry_run) return summary;

  fs::create_directories(e.out);
  write_file_atomic(e.out + "/experiment.yaml", read_file_bytes(e.path));
  LogFile log_file(e.out + "/log.txt");
  ReportInputs inputs;
  auto collect = [&]() {
    inputs.rows.clear();
    for (const auto& u : units)
      if (fs::exists(u.metric_file())) inputs.rows.push_back(result_row(u, read_json(u.metric_file())));
  };

  for (const auto& m : e.models) {
    if (!selected(m)) continue;
    std::vector<Unit*> pending;
    for (auto& u : units)
      if (u.model == &m && !u.has_metric) pending.push_back(&u);
    if (pending.empty()) continue;
    if (stop.requested()) break;

    // The weights.
    NamedTensors weights;
    if (!m.train_config.empty()) {
      const auto& state = states[m.name];
      train::TrainOptions topts;
      topts.run_dir = state.run_dir;
      if (!state.trained()) {
        if (state.resumable()) {
          topts.resume = true;
          topts.steps = m.config.train.steps;
        } else {
          topts.overwrite = true;
          if (fs::exists(state.run_dir)) spdlog::info("{}: settings changed, training again", state.run_dir);
        }
        const auto result = train::run_training(m.config, topts);
        ++summary.models_trained;
        if (result.interrupted) {
          summary.interrupted = true;
          break;
        }
      }
      weights = checkpoint_weights(load_checkpoint(train::latest_checkpoint(state.run_dir)), m.ema);
    } else {
      weights = checkpoint_weights(load_checkpoint(m.checkpoint), m.ema);
    }
    model::UNet unet(m.config.model, m.config.data.channels, m.config.data.image_size);
    load_weights(*unet, weights, m.name);
    unet->to(device);
    const bool bf16 = device.is_cuda() && m.config.train.precision == "bf16";
    const NoiseSchedule schedule(m.config.diffusion);
    const std::vector<int64_t> shape{m.config.data.channels, m.config.data.image_size, m.config.data.image_size};

    // The learned schedule, when a setting asks for it.
    std::string schedule_file;
    if (const auto steps = learned_steps(units, m); !steps.empty()) {
      schedule_file = learned_schedule_file(e, m, steps);
      if (!fs::exists(schedule_file)) {
        fs::create_directories(fs::path(schedule_file).parent_path());
        spdlog::info("{}: estimating the score-optimal schedule ({} levels, {} images)", m.name, e.schedule.levels,
                     e.schedule.samples);
        auto images = data::load_dataset(m.config.data).images;
        sample::learn_schedule(sample::unet_eps_model(unet, bf16), schedule, images, e.schedule.levels, e.schedule.samples,
                               e.schedule.seed, e.schedule.batch, steps, device, schedule_file);
      }
      inputs.schedule_plots[m.name] = sample::schedule_plot_path(schedule_file);
    }

    for (Unit* u : pending) {
      if (stop.requested()) break;
      if (fs::exists(u->metric_file())) {  // a setting that differs only in what this sampler ignores
        u->has_metric = true;
        continue;
      }
      spdlog::info("{} | {} | seed {}", m.name, u->setting->label(), u->seed);
      SampleConfig config = u->config;
      if (config.timesteps == "learned") config.timesteps = "learned:" + schedule_file;
      fs::create_directories(u->dir);
      torch::Tensor images;
      json sample_info;
      if (!u->has_samples) {
        const auto model = sample::unet_eps_model(unet, bf16, config.skip_tuning);
        auto generated = sample::generate(model, schedule, config, shape, device, u->seed, e.metric.num_samples, {}, true, {},
                                          [&] { return stop.requested(); });
        if (!generated.complete) break;
        sample::write_samples(u->dir, generated.samples, false);
        sample_info = {{"model", m.name},     {"setting", u->setting->label()}, {"seed", u->seed},
                       {"nfe", generated.nfe}, {"num_samples", e.metric.num_samples},
                       {"seconds", generated.seconds}};
        write_file_atomic(u->dir + "/sample.json", sample_info.dump(2) + "\n");
        u->has_samples = true;
      } else {
        sample_info = read_json(u->dir + "/sample.json");
      }
      images = sample::read_samples_npz(u->dir + "/samples.npz");

      const auto start = std::chrono::steady_clock::now();
      const auto& extractor = measurer.extractor();
      const auto& ref = measurer.reference(m);
      const auto features = eval::extract_features(extractor, images, e.metric.batch, device);
      const double value = eval::frechet_distance(eval::feature_stats(features), ref.stats);
      json metric{{"metric", extractor.distance_label()}, {"value", value}};
      if (e.metric.kid && ref.features.defined()) {
        const auto kid = eval::kernel_inception_distance(features, ref.features);
        metric["kid_mean"] = kid.mean;
        metric["kid_std"] = kid.std;
      }
      metric["nfe"] = sample_info.value("nfe", u->nfe);
      metric["num_samples"] = images.size(0);
      metric["sample_seconds"] = sample_info.value("seconds", 0.0);
      metric["metric_seconds"] = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      write_file_atomic(u->metric_file(), metric.dump(2) + "\n");
      u->has_metric = true;
      ++summary.units_run;
      spdlog::info("{} | {} | seed {}: {} = {:.4f}", m.name, u->setting->label(), u->seed, extractor.distance_label(), value);
      collect();
      write_file_atomic(e.out + "/results.csv", results_csv(inputs.rows));
    }
    if (stop.requested()) break;
  }
  summary.interrupted = summary.interrupted || stop.requested();

  // The outputs, from every finished unit (also those of models --only left out).
  collect();
  for (const auto& m : e.models) {
    if (!m.train_config.empty() && fs::exists(model_dir(e, m) + "/metrics.jsonl"))
      inputs.training_metrics[m.name] = model_dir(e, m) + "/metrics.jsonl";
    if (const auto steps = learned_steps(units, m); !steps.empty()) {
      const auto plot = sample::schedule_plot_path(learned_schedule_file(e, m, steps));
      if (fs::exists(plot)) inputs.schedule_plots[m.name] = plot;
    }
  }
  int done = 0;
  for (const auto& u : units) done += u.has_metric;
  inputs.notes.push_back(std::to_string(done) + " of " + std::to_string(units.size()) + " units finished (" +
                         std::to_string(e.models.size()) + " models, " + std::to_string(e.settings.size()) + " settings, " +
                         std::to_string(e.seeds.size()) + " seeds); " + std::to_string(e.metric.num_samples) +
                         " samples per unit; features " + e.metric.features + ", reference " + e.metric.reference + ".");
  for (const auto& m : e.models) {
    if (!m.train_config.empty()) {
      std::string with;
      for (const auto& o : m.set) with += (with.empty() ? " with " : ", ") + o;
      inputs.notes.push_back(m.name + ": " + m.train_config + with + " (loss " + m.config.loss.type + ", " +
                             std::to_string(m.config.train.steps) + " steps)");
    } else {
      inputs.notes.push_back(m.name + ": checkpoint " + m.checkpoint + (m.ema ? " (EMA weights)" : " (raw weights)"));
    }
  }
  write_report(e, inputs);
  if (summary.interrupted) spdlog::warn("interrupted: {} units finished this time; run again to continue", summary.units_run);
  std::printf("%d units run now, %d reused, %d of %zu done; wrote %s/results.csv, results.md, report/index.html\n",
              summary.units_run, summary.units_done_before, done, units.size(), e.out.c_str());
  return summary;
}

}  // namespace s2dm::experiment
