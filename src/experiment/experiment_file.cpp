// Reading an experiment file: its keys, the models, the sweep, the metric; every model × setting
// is resolved here, so that a bad combination fails before any work.

#include <fmt/format.h>

#include <cmath>
#include <filesystem>
#include <limits>
#include <set>

#include "plan.h"
#include "s2dm/core/errors.h"
#include "s2dm/core/schema.h"
#include "s2dm/core/yaml_reader.h"
#include "s2dm/data/data.h"
#include "s2dm/eval/fid.h"
#include "s2dm/experiment/experiment.h"
#include "s2dm/io/checkpoint.h"
#include "s2dm/io/file_io.h"
#include "s2dm/core/device.h"
#include "s2dm/model/model_source.h"
#include "s2dm/sample/dp_grid.h"
#include "s2dm/sample/generate.h"
#include "s2dm/train/train.h"

namespace s2dm::experiment {
namespace fs = std::filesystem;
using schema::Any;
using schema::Range;

std::string ModelSpec::origin() const {
  if (!checkpoint.empty()) return "checkpoint " + checkpoint;
  if (!weights.empty()) return "weights " + weights + " (config " + weights_config + ")";
  return "train config " + train_config;
}

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

// ---- The experiment file's schema ----

constexpr int64_t kMaxSamples = std::numeric_limits<int64_t>::max();  // (image counts cost time, not memory)

// Every key of an experiment file (schema.h), the scalar ones with their checks; checks that
// relate keys, files or sections follow in load_experiment. (Outside the unnamed namespace: the
// visitors find these by argument-dependent lookup.)
template <class V>
void visit(V& v, ReferenceErrorSpec& r) {
  v("samples", r.samples, Range<int64_t>{0, kMaxSamples});  // (at most metric.num_samples, checked in load_experiment)
  v("sampler", r.sampler, Any{});                           // (checked per model by check_reference_error)
  v("steps", r.steps, Range<int>{1, kMaxTimesteps});
  v("timesteps", r.timesteps, Any{});
}

template <class V>
void visit(V& v, MetricSpec& m) {
  v("features", m.features, Any{});  // (checked with its weights by check_metric)
  v("num_samples", m.num_samples, Range<int64_t>{2, kMaxSamples});
  v("reference", m.reference, Any{});
  v("reference_num", m.reference_num, Range<int64_t>{2, kMaxSamples});
  v("kid", m.kid, Any{});
  v("batch", m.batch, Range<int64_t>{1, kMaxBatch});
  v("classifier_epochs", m.classifier_epochs, Range<int>{1, 100000});
  v.section("reference_error", m.reference_error);
}

template <class V>
void visit(V& v, GridSearchSpec::DpSpec& dp) {
  v("levels", dp.levels, Range<int>{3, kMaxTimesteps});
  v("samples", dp.samples, Range<int64_t>{1, kMaxSamples});
  v("sweeps", dp.sweeps, Range<int>{-1, 1000});  // (-1: the sampler's default)
}

template <class V>
void visit(V& v, GridSearchSpec& s) {
  v("levels", s.levels, Range<int>{3, kMaxTimesteps});
  v("samples", s.samples, Range<int64_t>{1, kMaxSamples});
  v("batch", s.batch, Range<int64_t>{1, kMaxBatch});
  v("seed", s.seed, Any{});
  v.section("dp", s.dp);
}

template <class V>
void visit(V& v, TuneSkipSpec& t) {
  v("range", t.range, Any{});  // (two numbers, checked in load_experiment)
  v("points", t.points, Range<int>{2, 1000});
  v("refine", t.refine, Range<int>{0, 30});
  v("rho_top", t.rho_top, Range<double>{-10.0, 10.0});
  v("proxy_samples", t.proxy_samples, Range<int64_t>{2, kMaxSamples});
  v("seed", t.seed, Any{});
}

template <class V>
void visit(V& v, TableSpec& t) {
  v("rows", t.rows, Any{});  // (a swept key, checked against the sweep)
}

template <class V>
void visit(V& v, Experiment& e) {
  v("name", e.name, Any{});
  v("out", e.out, Any{});
  v("device", e.device, Any{});  // (resolved last)
  v("threads", e.threads, Range<int>{0, kMaxThreads});
  v.custom("seeds");   // a seed or a list of them
  v.custom("models");  // a list of models (read_models)
  v("baseline", e.baseline, Any{});
  v.custom("sample");  // sample-config keys, checked per model (check_settings)
  v.custom("sweep");   // (read_sweep)
  v.section("metric", e.metric);
  v.section("schedule", e.grid_search);
  v.section("tune_skip", e.tune_skip);
  v.section("table", e.table);
}

namespace {

// ---- Reading the experiment file ----

// A YAML reader that also resolves paths relative to the experiment file's folder.
class Reader : public YamlReader {
 public:
  explicit Reader(const std::string& path) : YamlReader(path) {}
  std::string resolve(const std::string& p) const {
    if (p.empty() || fs::path(p).is_absolute()) return p;
    return (fs::path(origin()).parent_path() / p).lexically_normal().string();
  }
  const std::string& path() const { return origin(); }
};

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
    r.check_keys(m, where, {"name", "train", "checkpoint", "weights", "config", "set", "ema"});
    ModelSpec spec;
    spec.line = r.line(m);
    if (!m["name"]) r.fail(m, where + ": needs a name");
    spec.name = r.scalar<std::string>(m["name"], where + ".name", "a string");
    if (!is_safe_name(spec.name)) r.fail(m["name"], where + ".name = '" + spec.name + "': use letters, digits, '_', '-', '.'");
    if (!names.insert(spec.name).second) r.fail(m["name"], where + ".name = '" + spec.name + "' is used twice");
    if (bool(m["train"]) + bool(m["checkpoint"]) + bool(m["weights"]) != 1)
      r.fail(m, where + " ('" + spec.name + "'): give exactly one of train (a train config), checkpoint, or weights (with "
                        "config)");
    if (bool(m["weights"]) != bool(m["config"]))
      r.fail(m, where + " ('" + spec.name + "'): weights and config go together (safetensors weights and their config)");
    if (m["ema"]) spec.ema = r.scalar<bool>(m["ema"], where + ".ema", "true or false");
    if (const auto set = m["set"]) {
      if (m["checkpoint"]) r.fail(set, where + ".set: overrides apply to configs (train or with weights), not checkpoints");
      if (set.IsMap()) {
        for (const auto& kv : set) spec.set.push_back(r.key(kv.first, where + ".set") + "=" + Reader::flow(kv.second));
      } else if (set.IsSequence()) {
        for (const auto& item : set) spec.set.push_back(r.scalar<std::string>(item, where + ".set", "'section.key=value'"));
      } else {
        r.fail(set, where + ".set: expected a mapping of section.key: value");
      }
    }
    if (m["train"]) {
      spec.train_config = r.resolve(r.scalar<std::string>(m["train"], where + ".train", "a path"));
      if (auto why = why_not_a_file(spec.train_config); !why.empty())
        r.fail(m["train"], where + ".train: " + spec.train_config + " " + why);
      try {
        spec.config = load_config(spec.train_config, spec.set);
        train::check_trainable(spec.config, spec.train_config);
      } catch (const ConfigError& err) {
        r.fail(m, where + " ('" + spec.name + "'): " + err.what());
      }
      // (A time budget decides how far the weights get: its units are its own, though a raised
      // budget resumes the same run.)
      const double budget = spec.config.train.max_minutes;
      spec.key = hash_key("train\n" + training_identity(spec.config) + (budget > 0 ? fmt::format("budget {}", budget) : ""));
      const auto& data = spec.config.data;
      const std::string data_path = data.path.empty() ? data::default_path(data.dataset) : data.path;
      if (std::error_code ec; !fs::exists(data_path, ec))  // (a path it cannot look at: not there either)
        r.fail(m, where + " ('" + spec.name + "'): its data (" + data.dataset + ") is not at " + data_path +
                      " (data/README.md says how to get it)");
    } else if (m["weights"]) {
      auto file = [&](const char* key) {
        const std::string path = r.resolve(r.scalar<std::string>(m[key], where + "." + key, "a path"));
        if (auto why = why_not_a_file(path); !why.empty()) r.fail(m[key], where + "." + key + ": " + path + " " + why);
        return path;
      };
      spec.weights = file("weights");
      spec.weights_config = file("config");
      try {
        spec.config = load_config(spec.weights_config, spec.set);
      } catch (const ConfigError& err) {
        r.fail(m, where + " ('" + spec.name + "'): " + err.what());
      }
      spec.key = hash_key("weights\n" + file_identity(spec.weights) + "\n" + file_identity(spec.weights_config) + "\n" +
                          config_identity(spec.config));
    } else {
      spec.checkpoint = r.resolve(r.scalar<std::string>(m["checkpoint"], where + ".checkpoint", "a path"));
      if (auto why = why_not_a_file(spec.checkpoint); !why.empty())
        r.fail(m["checkpoint"], where + ".checkpoint: " + spec.checkpoint + " " + why);
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

// A sample value as the experiment file means it: a time grid read from a file (file:PATH,
// learned:PATH) names the file relative to the experiment file, as every path there does.
std::string sample_value(const Reader& r, const std::string& key, const YAML::Node& value) {
  const std::string text = Reader::flow(value);
  if (key == "timesteps")
    for (const std::string prefix : {"file:", "learned:"})
      if (text.rfind(prefix, 0) == 0) return prefix + r.resolve(text.substr(prefix.size()));
  return text;
}

// Sweep values as the text of a --set value; Skip-Tuning "none" is the empty section, and so is
// "tuned" until the search has found its ρ.
std::string override_text(const std::string& key, const std::string& value) {
  return key == "skip_tuning" && (value == "none" || value == "tuned") ? "{}" : value;
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
  if (blocks.empty()) r.fail(node, "sweep: an empty list (no settings to run)");
  std::map<std::map<std::string, std::string>, size_t> seen;  // values -> their setting
  std::vector<std::string> block_keys = allowed;
  block_keys.push_back("models");
  for (const auto& block : blocks) {
    r.check_keys(block, "sweep", block_keys);
    std::vector<std::pair<std::string, std::vector<std::string>>> axes;
    std::vector<std::string> models;  // (the block's `models`: the models its settings sample)
    for (const auto& kv : block) {
      const auto key = r.key(kv.first, "sweep");
      if (key == "models") {
        if (!kv.second.IsSequence() || kv.second.size() == 0) r.fail(kv.second, "sweep.models: expected a list of model names");
        for (const auto& name : kv.second) {
          const auto model = r.scalar<std::string>(name, "sweep.models", "a model's name");
          if (std::none_of(e.models.begin(), e.models.end(), [&](const auto& m) { return m.name == model; }))
            r.fail(name, "sweep.models: no model is named '" + model + "'");
          models.push_back(model);
        }
        continue;
      }
      std::vector<std::string> values;
      // A list holds the axis' values; anything else is its one value (a ρ list is a mapping's member).
      if (kv.second.IsSequence()) {
        for (const auto& v : kv.second) values.push_back(sample_value(r, key, v));
      } else {
        values.push_back(sample_value(r, key, kv.second));
      }
      if (values.empty()) r.fail(kv.second, "sweep." + key + ": no values");
      axes.push_back({key, values});
      if (std::find(e.sweep_keys.begin(), e.sweep_keys.end(), key) == e.sweep_keys.end()) e.sweep_keys.push_back(key);
    }
    // The product of the axes, the first key varying slowest; counted first, so that a file
    // cannot ask for more settings than memory holds.
    constexpr size_t kMaxSettings = 10000;  // each one samples and measures thousands of images
    size_t product = 1;
    for (const auto& axis : axes) {
      product *= axis.second.size();
      if (product + e.settings.size() > kMaxSettings)
        r.fail(block, "sweep: more than " + std::to_string(kMaxSettings) + " settings (the product of the swept values)");
    }
    std::vector<size_t> index(axes.size(), 0);
    for (bool more = true; more;) {
      Setting s;
      for (size_t a = 0; a < axes.size(); ++a) s.values[axes[a].first] = axes[a].second[index[a]];
      s.models = models;
      if (const auto [at, added] = seen.emplace(s.values, e.settings.size()); added) {
        e.settings.push_back(s);
      } else {  // (the same values again: one setting, for the models of both blocks)
        Setting& earlier = e.settings[at->second];
        if (earlier.models.empty() || models.empty()) {
          earlier.models.clear();
        } else {
          for (const auto& m : models)
            if (!earlier.applies_to(m)) earlier.models.push_back(m);
        }
      }
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

void check_metric(const Reader& r, const YAML::Node& node, Experiment& e) {
  auto& m = e.metric;
  eval::FeatureSpec spec;
  try {
    spec = eval::parse_feature_spec(m.features);
  } catch (const ConfigError&) {
    r.fail(node["features"], "metric.features = '" + m.features + "': expected " + eval::feature_spec_forms() +
                                 " (a network trained here: its name alone)");
  }
  if (spec.path.empty() && spec.network->default_weights) {
    if (!fs::exists(spec.weights()))
      r.fail(node["features"], "metric.features = " + spec.text() + ": no weights at " + spec.weights() + " (" +
                                   spec.network->default_weights_hint + ")");
  } else if (!spec.path.empty()) {
    spec.path = r.resolve(spec.path);
    if (auto why = why_not_a_file(spec.path); !why.empty()) r.fail(node["features"], "metric.features: " + spec.path + " " + why);
    m.features = spec.text();
  }
  if (m.reference != "train" && m.reference != "test") {
    m.reference = r.resolve(m.reference);
    if (auto why = why_not_a_file(m.reference); !why.empty())
      r.fail(node["reference"], "metric.reference: " + m.reference + " " + why + " (expected train, test or a statistics .npz)");
    if (m.kid) r.fail(node["kid"], "metric.kid needs reference features: use reference train or test, not a statistics file");
    try {
      eval::load_stats(m.reference);  // (a bad file fails now, not after training and sampling)
    } catch (const Error& err) {
      r.fail(node["reference"], std::string("metric.reference: ") + err.what());
    }
  }
  if (m.features == "classifier") {
    const auto& data = e.models.front().config.data;
    if (!data::find_dataset(data.dataset).labelled)
      r.fail(node, "metric.features = classifier trains on labelled data (" + data::labelled_datasets() + "), not " + data.dataset);
  }
}

// Resolves every model × setting now, so that a bad combination fails before any work.
void check_settings(const Reader& r, const Experiment& e, int sweep_line) {
  for (const auto& m : e.models) {
    // (Learned and dp grids are found when the model runs: the uniform grid stands in.)
    const auto model = DiffusionModel::of(m.config, {}, torch::kCPU, {{}, "", /*uniform_until_ready=*/true});
    for (const auto& s : e.settings) {
      if (!s.applies_to(m.name)) continue;
      const std::string where = r.path() + (sweep_line ? ":" + std::to_string(sweep_line) : "") + ": model '" + m.name + "', " +
                                s.label() + ": ";
      const SampleConfig c = sample_config(e, m, s);
      if (sample::uses_learned_grid(c) && c.steps >= e.grid_search.levels)
        throw ConfigError(where + "timesteps learned with " + std::to_string(c.steps) + " steps needs schedule.levels > " +
                          std::to_string(c.steps));
      if (sample::uses_dp_grid(c)) {
        if (const int max_steps = sample::dp_max_steps(model, e.grid_search.dp.levels); c.steps > max_steps)
          throw ConfigError(where + "timesteps dp with " + std::to_string(c.steps) +
                            " steps needs as many candidate times; schedule.dp.levels = " +
                            std::to_string(e.grid_search.dp.levels) + " keeps " + std::to_string(max_steps) + " (raise it)");
        if (sample::draws_noise(sample::find_sampler(c.sampler), c))
          throw ConfigError(where + "timesteps dp needs a deterministic sampler (dp grids follow the ODE's trajectories)");
      }
      try {
        sample::plan_sampling(c, model);
        model::check_skip_tuning(m.config.model, c.skip_tuning);
      } catch (const ConfigError& err) {
        throw ConfigError(where + err.what());
      }
    }
  }
}

// The reference solution must be a deterministic sampler of each model's process on a named grid,
// and its images must be among every unit's.
void check_reference_error(const Reader& r, const YAML::Node& metric, const Experiment& e) {
  const auto& spec = e.metric.reference_error;
  if (!spec.enabled()) return;
  const YAML::Node node = metric["reference_error"];
  if (spec.samples > e.metric.num_samples)
    r.fail(node["samples"], "metric.reference_error.samples = " + std::to_string(spec.samples) +
                                " exceeds metric.num_samples = " + std::to_string(e.metric.num_samples) +
                                " (the error is measured on a unit's first images)");
  for (const auto& m : e.models) {
    const auto model = DiffusionModel::of(m.config, {}, torch::kCPU);
    const SampleConfig c = reference_solution_config(e, m);
    const std::string where = "metric.reference_error (model '" + m.name + "', sampler " + c.sampler + "): ";
    if (sample::uses_learned_grid(c) || sample::uses_dp_grid(c) || c.timesteps.rfind("learned:", 0) == 0)
      r.fail(node["timesteps"], where + "timesteps = " + c.timesteps + ": the reference takes a named grid");
    const sample::SamplerInfo* info = nullptr;
    try {
      info = &sample::find_sampler(c.sampler, m.config.diffusion.process);
      sample::plan_sampling(c, model);
    } catch (const ConfigError& err) {
      r.fail(node["sampler"], where + err.what());
    }
    if (sample::draws_noise(*info, c)) r.fail(node["sampler"], where + "a reference solution needs a deterministic sampler");
  }
}

}  // namespace

SampleConfig reference_solution_config(const Experiment& e, const ModelSpec& m) {
  const auto& spec = e.metric.reference_error;
  SampleConfig c = sample_config(e, m, Setting{});
  reset_sample_keys(c, sample::sampler_option_keys());
  c.skip_tuning = SkipTuningConfig{};
  c.sampler = spec.sampler != "auto" ? spec.sampler : m.config.diffusion.process == "psld" ? "rse" : "dpmpp-2m";
  c.steps = spec.steps;
  c.timesteps = spec.timesteps;
  return c;
}

bool tunes_skips(const Experiment& e, const Setting& s) {
  auto is_tuned = [](const std::map<std::string, std::string>& values) {
    auto it = values.find("skip_tuning");
    return it != values.end() && it->second == "tuned";
  };
  return is_tuned(s.values) || (!s.values.count("skip_tuning") && is_tuned(e.sample));
}

std::vector<std::pair<double, double>> search_minimum(const std::function<double(double)>& f, double lo, double hi,
                                                     int points, int refine) {
  std::map<double, double> tried;
  auto at = [&](double x) {
    auto it = tried.find(x);
    return it != tried.end() ? it->second : tried[x] = f(x);
  };
  double spacing = (hi - lo) / (points - 1);
  for (int i = 0; i < points; ++i) at(i + 1 == points ? hi : lo + i * spacing);
  for (int round = 0; round < refine; ++round) {
    spacing /= 2;
    const double best = std::min_element(tried.begin(), tried.end(), [](auto& a, auto& b) { return a.second < b.second; })->first;
    for (double x : {best - spacing, best + spacing})
      if (x >= lo && x <= hi) at(x);
  }
  return {tried.begin(), tried.end()};
}

SampleConfig sample_config(const Experiment& e, const ModelSpec& m, const Setting& s) {
  std::vector<std::string> overrides;
  for (const auto& [k, v] : e.sample) overrides.push_back("sample." + k + "=" + override_text(k, v));
  for (const auto& [k, v] : s.values) overrides.push_back("sample." + k + "=" + override_text(k, v));
  Config config = m.config;
  config.sample.num = e.metric.num_samples;
  try {
    apply_overrides(config, overrides, "model '" + m.name + "'");
    return config.sample;
  } catch (const ConfigError& err) {
    std::string msg = err.what();
    if (msg.rfind("--set ", 0) == 0) msg = msg.substr(6);
    throw ConfigError(e.path + ": model '" + m.name + "', " + s.label() + ": " + msg);
  }
}

Experiment load_experiment(const std::string& path) {
  if (auto why = why_not_a_file(path); !why.empty()) throw ConfigError(path + ": experiment file " + why);
  YAML::Node root;
  try {
    root = YAML::LoadFile(path);
  } catch (const YAML::Exception& err) {
    throw ConfigError(path + ":" + std::to_string(err.mark.line + 1) + ": invalid YAML: " + err.msg);
  }
  Reader r(path);
  r.check_unique_keys(root);
  Experiment e;
  e.path = path;
  e.name = fs::path(path).stem().string();
  schema::Binder(root, "", r).bind(e);  // every key known, every scalar key and section read and checked
  if (!is_safe_name(e.name)) r.fail(root["name"], "name = '" + e.name + "': use letters, digits, '_', '-', '.'");
  if (e.out.empty()) e.out = "runs/" + e.name;
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
  if (!e.baseline.empty()) {
    if (std::none_of(e.models.begin(), e.models.end(), [&](const ModelSpec& m) { return m.name == e.baseline; }))
      r.fail(root["baseline"], "baseline = '" + e.baseline + "' is not one of the models");
  }
  if (const auto sample = root["sample"]) {
    auto allowed = sample_config_keys();
    allowed.erase(std::remove(allowed.begin(), allowed.end(), "num"), allowed.end());
    r.check_keys(sample, "sample", allowed);
    for (const auto& kv : sample) {
      const std::string key = r.key(kv.first, "sample");
      e.sample[key] = sample_value(r, key, kv.second);
    }
  }
  int sweep_line = 0;
  read_sweep(r, root["sweep"], e, sweep_line);
  for (const auto& k : e.sweep_keys)
    if (e.sample.count(k)) r.fail(root["sample"], "sample." + k + " is also swept (sweep." + k + "): keep one");
  if (const auto& rows = e.table.rows; rows != "sampler" &&
      (rows == "steps" || std::find(e.sweep_keys.begin(), e.sweep_keys.end(), rows) == e.sweep_keys.end()))
    r.fail(root["table"]["rows"], "table.rows = '" + rows + "': expected sampler or a swept key other than steps");
  check_metric(r, root["metric"], e);
  if (const auto& t = e.tune_skip; !(t.range.size() == 2 && 0 <= t.lo() && t.lo() < t.hi() && std::isfinite(t.hi())))
    r.fail(root["tune_skip"]["range"], "tune_skip.range: expected [lo, hi] with 0 <= lo < hi");
  check_settings(r, e, sweep_line);
  check_reference_error(r, root["metric"], e);
  try {
    resolve_device(e.device);
  } catch (const ConfigError& err) {
    r.fail(root["device"], err.what());
  }
  return e;
}

}  // namespace s2dm::experiment
