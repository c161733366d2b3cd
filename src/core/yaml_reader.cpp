#include "s2dm/core/yaml_reader.h"

#include <algorithm>

#include "s2dm/core/config.h"
#include "s2dm/core/errors.h"

namespace s2dm {

YamlReader::YamlReader(std::string origin, std::map<std::string, std::string> overridden)
    : origin_(std::move(origin)), overridden_(std::move(overridden)) {}

void YamlReader::fail(const YAML::Node& at, const std::string& msg, const std::string& key) const {
  // A --set names the key, or a section on its path (--set a.b.c=1 for an unknown section 'a').
  for (const auto& [overridden, text] : overridden_)
    if (!key.empty() && (overridden == key || overridden.rfind(key + ".", 0) == 0))
      throw ConfigError("--set " + text + ": " + msg);
  std::string where = origin_;
  if (const int l = line(at); l > 0) where += ":" + std::to_string(l);
  throw ConfigError(where + ": " + msg);
}

int YamlReader::line(const YAML::Node& at) const {
  return at.IsDefined() && at.Mark().line >= 0 ? at.Mark().line + 1 : 0;
}

void YamlReader::check_unique_keys(const YAML::Node& node) const {
  if (node.IsSequence()) {
    for (const auto& item : node) check_unique_keys(item);
  } else if (node.IsMap()) {
    std::map<std::string, int> seen;  // key -> its first line
    for (const auto& kv : node) {
      if (kv.first.IsScalar()) {
        const auto [at, first] = seen.emplace(kv.first.Scalar(), line(kv.first));
        if (!first)
          fail(kv.first, "key '" + kv.first.Scalar() + "' appears twice in one mapping (first on line " +
                             std::to_string(at->second) + "): YAML keeps one of them, so say it once");
      }
      check_unique_keys(kv.first);
      check_unique_keys(kv.second);
    }
  }
}

void YamlReader::check_keys(const YAML::Node& node, const std::string& prefix,
                            const std::vector<std::string>& allowed) const {
  const std::string dotted = prefix.empty() ? "" : prefix + ".";
  if (!node.IsMap()) fail(node, (prefix.empty() ? "the top level" : prefix) + ": expected a mapping of keys", prefix);
  for (const auto& kv : node) {
    const auto key = this->key(kv.first, prefix);
    if (std::find(allowed.begin(), allowed.end(), key) != allowed.end()) continue;
    std::string msg = "unknown key '" + dotted + key + "'";
    const auto near = closest_match(key, allowed);
    if (!near.empty()) {
      msg += " (did you mean '" + dotted + near + "'?)";
    } else {
      msg += "; allowed: ";
      for (size_t i = 0; i < allowed.size(); ++i) msg += (i ? ", " : "") + allowed[i];
    }
    fail(kv.first, msg, dotted + key);
  }
}

std::string YamlReader::key(const YAML::Node& key, const std::string& prefix) const {
  if (!key.IsScalar())
    fail(key, (prefix.empty() ? "the top level" : prefix) + ": a key must be a name, not " + flow(key), prefix);
  return key.Scalar();
}

std::string YamlReader::flow(const YAML::Node& node) {
  if (node.IsScalar()) return node.Scalar();
  YAML::Emitter e;
  e.SetMapFormat(YAML::Flow);
  e.SetSeqFormat(YAML::Flow);
  e << node;
  return e.c_str();
}

std::string YamlReader::quoted(const YAML::Node& node) { return node.IsScalar() ? "'" + node.Scalar() + "'" : flow(node); }

}  // namespace s2dm
