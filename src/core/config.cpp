#include "s2dm/core/config.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <set>
#include <sstream>

#include "config_schema.h"
#include "s2dm/core/errors.h"
#include "s2dm/core/yaml_reader.h"
#include "s2dm/io/file_io.h"

namespace s2dm {
namespace {

using namespace schema;

// Resets the named members of a struct to those of a default-constructed one: both structs are
// visited in the same order, the defaults' members recorded first.
class Resetter {
 public:
  explicit Resetter(const std::vector<std::string>& keys) : keys_(keys) {}
  template <class S>
  void reset(S& target) {
    S defaults;
    recording_ = true;
    visit(*this, defaults);
    recording_ = false;
    next_ = 0;
    visit(*this, target);
  }
  template <class T, class C>
  void operator()(const char* name, T& value, const C&) {
    if (recording_) {
      defaults_.push_back(&value);
    } else if (std::find(keys_.begin(), keys_.end(), name) != keys_.end()) {
      value = *static_cast<const T*>(defaults_[next_++]);
    } else {
      ++next_;
    }
  }
  template <class S>
  void section(const char* name, S& value) { (*this)(name, value, Any{}); }

 private:
  const std::vector<std::string>& keys_;
  std::vector<const void*> defaults_;
  size_t next_ = 0;
  bool recording_ = false;
};

// Writes the resolved config as YAML text (strings quoted, lists in flow style). Given the text
// of a default config's keys (`defaults`, by dotted name), it writes the identity text instead:
// keys marked Added are left out while they hold their default, and sections left empty go too.
class Writer {
 public:
  explicit Writer(const std::map<std::string, std::string>* defaults = nullptr) : defaults_(defaults) {}
  std::string text() const { return out_.str(); }
  const std::map<std::string, std::string>& written() const { return written_; }

  template <class T, class C>
  void operator()(const char* name, const T& value, const C&) {
    const std::string text = format(value);
    written_[prefix_ + name] = text;
    if constexpr (is_added<C>)
      if (defaults_ && defaults_->at(prefix_ + name) == text) return;
    out_ << indent_ << name << ": " << text << "\n";
  }
  template <class S>
  void section(const char* name, S& s) {
    std::ostringstream outer_out;
    std::swap(out_, outer_out);
    const std::string outer_indent = indent_, outer_prefix = prefix_;
    indent_ += "  ";
    prefix_ += std::string(name) + ".";
    visit(*this, s);
    indent_ = outer_indent;
    prefix_ = outer_prefix;
    std::swap(out_, outer_out);
    const std::string body = outer_out.str();
    if (!body.empty() || !defaults_) out_ << indent_ << name << ":\n" << body;
  }

 private:
  static std::string format(const std::string& s) {
    std::string q = "\"";
    for (char c : s) {
      if (c == '"' || c == '\\') q += '\\';
      q += c;
    }
    return q + "\"";
  }
  static std::string format(bool b) { return b ? "true" : "false"; }
  static std::string format(double d) {
    // The shortest text that reads back to the same double.
    for (int precision = 6; precision <= 17; ++precision) {
      std::ostringstream s;
      s.precision(precision);
      s << d;
      if (std::stod(s.str()) == d) {
        std::string t = s.str();
        if (t.find_first_of(".eE") == std::string::npos) t += ".0";
        return t;
      }
    }
    return std::to_string(d);
  }
  static std::string format(const std::vector<int>& v) { return show(v); }
  static std::string format(const std::vector<double>& v) {
    std::vector<std::string> items;
    for (double x : v) items.push_back(format(x));
    return "[" + join(items) + "]";
  }
  template <class T>
  static std::string format(const T& v) { return show(v); }

  const std::map<std::string, std::string>* defaults_;
  std::map<std::string, std::string> written_;
  std::ostringstream out_;
  std::string indent_, prefix_;
};

// Checks that relate several keys.
void validate_whole(const Config& c, const std::string& origin) {
  auto fail = [&](const std::string& msg) { throw ConfigError(origin + ": " + msg); };
  const int levels = static_cast<int>(c.model.ch_mult.size());
  if (levels == 0) fail("model.ch_mult must not be empty");
  if (c.data.image_size % (1 << (levels - 1)) != 0)
    fail("data.image_size = " + std::to_string(c.data.image_size) + " is not divisible by 2^" +
         std::to_string(levels - 1) + " (model.ch_mult has " + std::to_string(levels) + " levels)");
  if (c.model.type == "ddpm" && c.model.ch % 32 != 0)
    fail("model.ch = " + std::to_string(c.model.ch) +
         " must be a multiple of 32 (GroupNorm uses 32 groups)");
  for (int m : c.model.ch_mult) {  // (EDM's GroupNorm: min(32, C/4) groups, which must divide C)
    const int channels = c.model.ch * m, groups = std::min(32, channels / 4);
    if (c.model.type != "ddpm" && (groups == 0 || channels % groups != 0))
      fail("model.ch = " + std::to_string(c.model.ch) + " with ch_mult " + show(c.model.ch_mult) + " gives " +
           std::to_string(channels) + " channels, which EDM's GroupNorm (min(32, C/4) groups) cannot divide");
  }
  if (c.model.edm.resample_filter.empty()) fail("model.edm.resample_filter must not be empty");
  for (int r : c.model.attn_resolutions) {
    bool reachable = false;
    for (int l = 0; l < levels; ++l) reachable |= (c.data.image_size >> l) == r;
    if (!reachable)
      fail("model.attn_resolutions contains " + std::to_string(r) +
           ", which is not a feature-map size of this model");
  }
  if (c.diffusion.beta_schedule == "linear" && c.diffusion.beta_end < c.diffusion.beta_start)
    fail("diffusion.beta_end must not be smaller than diffusion.beta_start");
  if (c.loss.type == "s2dm" && c.loss.skip_k >= c.diffusion.num_timesteps)
    fail("loss.skip_k = " + std::to_string(c.loss.skip_k) + " must be below diffusion.num_timesteps");
  if (c.train.eval_every > 0 && c.train.eval_features.empty())
    fail("train.eval_every needs train.eval_features (inception[:WEIGHTS] or classifier:PATH)");
  if (c.train.learned_schedule.every > 0 && c.sample.steps >= c.train.learned_schedule.levels)
    fail("train.learned_schedule.levels = " + std::to_string(c.train.learned_schedule.levels) +
         " must exceed sample.steps = " + std::to_string(c.sample.steps));
  if (c.sample.skip_tuning.t_min > c.sample.skip_tuning.t_max)
    fail("sample.skip_tuning.t_min = " + show(c.sample.skip_tuning.t_min) + " exceeds sample.skip_tuning.t_max = " +
         show(c.sample.skip_tuning.t_max) + " (Skip-Tuning would act at no timestep)");
  if (c.sample.steps > c.diffusion.num_timesteps)
    fail("sample.steps = " + std::to_string(c.sample.steps) + " exceeds diffusion.num_timesteps = " +
         std::to_string(c.diffusion.num_timesteps));
  if (c.diffusion.process == "psld") {
    if (const std::string why = psld_violation(c.diffusion.psld); !why.empty()) fail("diffusion.psld." + why);
    if (c.model.edm.label_dim > 0)
      fail("model.edm.label_dim = " + std::to_string(c.model.edm.label_dim) + ": s2dm's PSLD models are unconditional");
  } else if (c.loss.type == "hsm") {
    fail("loss.type = 'hsm' is PSLD's loss (hybrid score matching): it needs diffusion.process psld");
  }
  if (c.device != "auto" && c.device != "cpu" && c.device.rfind("cuda", 0) != 0)
    fail("device = '" + c.device + "' is not one of auto, cpu, cuda, cuda:N");
}

}  // namespace

std::string psld_violation(const PsldConfig& p) {
  const double m_inv = (p.gamma - p.nu) * (p.gamma - p.nu) / 4;
  if (p.gamma <= 0)
    return "gamma = " + show(p.gamma) + ": must be > 0 (gamma 0 is CLD, whose network predicts the momentum's noise alone)";
  if (p.nu <= 0) return "nu = " + show(p.nu) + ": must be > 0";
  if (p.gamma == p.nu)
    return "nu = " + show(p.nu) + " equals gamma: critical damping sets the mass M^-1 = (gamma - nu)^2/4, which must be > 0";
  if (p.m_inv != 0 && std::abs(p.m_inv - m_inv) > 1e-9 * m_inv)
    return "m_inv = " + show(p.m_inv) + " is not critically damped: with gamma " + show(p.gamma) + " and nu " +
           show(p.nu) + " it is (gamma - nu)^2/4 = " + show(m_inv) + " (or leave it 0)";
  if (p.beta_max < p.beta_min)
    return "beta_max = " + show(p.beta_max) + " is below beta_min = " + show(p.beta_min);
  return "";
}

bool SkipTuningConfig::active() const {
  if (!rho.empty()) return std::any_of(rho.begin(), rho.end(), [](double r) { return r != 1.0; });
  return rho_top != 1.0 || rho_bottom != 1.0;
}

namespace {

// Puts "section.key=value" overrides (each value read as YAML) into the tree `root`, creating the
// sections they name; returns the --set text by key, for errors. With `null_is_default`, a null
// value stands for the key's default (binding onto a config that is not fresh needs it said).
std::map<std::string, std::string> merge_overrides(YAML::Node& root, const std::vector<std::string>& overrides,
                                                   bool null_is_default) {
  std::map<std::string, std::string> overridden;
  YAML::Node defaults;
  for (const auto& item : overrides) {
    auto eq = item.find('=');
    if (eq == std::string::npos || eq == 0)
      throw ConfigError("--set " + item + ": expected section.key=value");
    std::string key = item.substr(0, eq), value = item.substr(eq + 1);
    YAML::Node parsed;
    try {
      parsed = YAML::Load(value);
    } catch (const YAML::Exception& e) {
      throw ConfigError("--set " + item + ": invalid value: " + e.msg);
    }
    YamlReader("--set " + item).check_unique_keys(parsed);
    // Walk (and create) the nested mappings named by the dotted key.
    std::vector<std::string> parts;
    for (size_t start = 0, dot;; start = dot + 1) {
      dot = key.find('.', start);
      parts.push_back(key.substr(start, dot - start));
      if (dot == std::string::npos) break;
    }
    if (!null_is_default && (!parsed || parsed.IsNull()))  // (it would drop the file's value for the default)
      throw ConfigError("--set " + item + ": no value");
    if (null_is_default && (!parsed || parsed.IsNull())) {
      if (!defaults.IsMap()) defaults = YAML::Load(to_yaml(Config{}));
      YAML::Node at = defaults;  // (reset, not =: yaml-cpp's = would write into `defaults`)
      for (const auto& part : parts) at.reset(at.IsMap() ? at[part] : YAML::Node());
      if (at && !at.IsNull()) parsed = YAML::Clone(at);
    }
    std::vector<YAML::Node> path{root};
    for (size_t i = 0; i + 1 < parts.size(); ++i) {
      YAML::Node next = path.back()[parts[i]];
      if (next && !next.IsMap() && !next.IsNull())
        throw ConfigError("--set " + item + ": '" + parts[i] + "' is not a section");
      if (!next || next.IsNull()) path.back()[parts[i]] = YAML::Node(YAML::NodeType::Map);
      path.push_back(path.back()[parts[i]]);
    }
    path.back()[parts.back()] = parsed;
    overridden[key] = item;
  }
  return overridden;
}

}  // namespace

Config parse_config(const std::string& yaml_text, const std::string& origin,
                    const std::vector<std::string>& overrides) {
  YAML::Node root;
  try {
    root = YAML::Load(yaml_text);
  } catch (const YAML::Exception& e) {
    throw ConfigError(origin + ":" + std::to_string(e.mark.line + 1) + ": invalid YAML: " + e.msg);
  }
  if (!root || root.IsNull())
    throw ConfigError(origin + ": empty config (expected a mapping of sections: data, model, train, ...; {} for every "
                               "default)");
  if (!root.IsMap()) throw ConfigError(origin + ": expected a mapping of sections at the top level");
  YamlReader(origin).check_unique_keys(root);
  // The overrides replace what the file says before anything is read, so a value they replace
  // is never checked.
  const YamlReader reader(origin, merge_overrides(root, overrides, false));
  Config config;
  Binder(root, "", reader).bind(config);
  // (A relation between keys may break through a --set: the message names them too.)
  std::string whole = origin;
  for (size_t i = 0; i < overrides.size(); ++i) whole += (i ? " --set " : " with --set ") + overrides[i];
  validate_whole(config, whole);
  return config;
}

Config load_config(const std::string& path, const std::vector<std::string>& overrides) {
  std::string text;
  try {
    text = read_file_bytes(path);
  } catch (const IoError& e) {
    throw ConfigError(e.what());  // "PATH: cannot open (why)"
  }
  return parse_config(text, path, overrides);
}

void apply_overrides(Config& config, const std::vector<std::string>& overrides, const std::string& origin) {
  YAML::Node root(YAML::NodeType::Map);
  const YamlReader reader(origin, merge_overrides(root, overrides, true));
  Binder(root, "", reader).bind(config);
  validate_whole(config, origin);
}

void check_config(const Config& config, const std::string& origin) {
  Validator validator(origin);
  Config copy = config;
  visit(validator, copy);
  validate_whole(config, origin);
}

void reset_sample_keys(SampleConfig& config, const std::vector<std::string>& keys) { Resetter(keys).reset(config); }

std::vector<std::string> sample_config_keys() { return keys_of(SampleConfig{}); }

std::string to_yaml(const Config& config) {
  Writer writer;
  Config copy = config;
  visit(writer, copy);
  return writer.text();
}

std::string config_identity(const Config& config) {
  static const auto defaults = [] {
    Writer writer;
    Config d;
    visit(writer, d);
    return writer.written();
  }();
  Writer writer(&defaults);
  Config copy = config;
  // sample.timesteps' default was `uniform` before samplers had a grid of their own (`auto`): the
  // text keeps `uniform`, so earlier work keeps its keys. (The driver names a unit by the grid
  // `auto` resolves to, so a sampler whose own grid is another one gets keys of its own.)
  if (copy.sample.timesteps == "auto") copy.sample.timesteps = "uniform";
  visit(writer, copy);
  return writer.text();
}

}  // namespace s2dm
