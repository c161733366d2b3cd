#pragma once
// Reading YAML with errors a user can act on: every failure names the file (or the --set that
// gave the value), the line, the key and the value. Configs (config.cpp) and experiment files
// (experiment/) read through it.
#include <yaml-cpp/yaml.h>

#include <map>
#include <string>
#include <vector>

namespace s2dm {

class YamlReader {
 public:
  // `origin` names the text in errors; `overridden` maps keys ("section.key") given by --set to
  // the --set text, which errors about those keys name instead.
  explicit YamlReader(std::string origin, std::map<std::string, std::string> overridden = {});

  // Throws ConfigError "origin:line: msg" (or "--set ...: msg" when `key` came from a --set).
  [[noreturn]] void fail(const YAML::Node& at, const std::string& msg, const std::string& key = "") const;
  // Whether `key` ("section.key") was given by a --set.
  bool overrides(const std::string& key) const { return overridden_.count(key) > 0; }
  // 1-based line of a node (0 when it has none).
  int line(const YAML::Node& at) const;

  // Rejects a mapping, anywhere under `node`, that gives a key twice (yaml-cpp keeps both and a
  // lookup sees only the first).
  void check_unique_keys(const YAML::Node& node) const;
  // Rejects a node that is not a mapping, and keys not in `allowed` ("did you mean", else the
  // allowed keys). `prefix` is the section's dotted name ("" at the top).
  void check_keys(const YAML::Node& node, const std::string& prefix, const std::vector<std::string>& allowed) const;
  // A mapping's key as a name; fails for a key that is itself a mapping or a list ("? [a]: 1").
  std::string key(const YAML::Node& key, const std::string& prefix) const;

  // A scalar of type T; `what` describes it for the error ("an integer").
  template <class T>
  T scalar(const YAML::Node& node, const std::string& name, const char* what) const {
    try {
      if (!node.IsScalar()) throw YAML::BadConversion(node.Mark());
      return node.as<T>();
    } catch (const YAML::BadConversion&) {
      fail(node, name + ": expected " + what + ", got " + quoted(node), name);
    }
  }

  // A node as one line of YAML (flow style): how values are shown and passed on as text.
  static std::string flow(const YAML::Node& node);
  const std::string& origin() const { return origin_; }

 private:
  static std::string quoted(const YAML::Node& node);
  std::string origin_;
  std::map<std::string, std::string> overridden_;
};

}  // namespace s2dm
