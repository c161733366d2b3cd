#pragma once
// Schemas: the keys of a settings struct, each with its member and its check, listed once in a
// `visit(V& v, S& s)` beside the struct (found by argument-dependent lookup, so it lives in the
// struct's namespace). The visitors here read a YAML mapping into the struct (Binder), check one
// set in code (Validator) and list its keys (NameCollector). Configs (src/core/config_schema.h)
// and experiment files (src/experiment/experiment_file.cpp) are read through them.
//
// A schema calls, for each key:
//   v("key", s.member, check)   a value; check is Any{}, Range<T>{lo, hi} or OneOf{{...}}, or
//                               Added{check} for a config key added later (see Added)
//   v.section("key", s.member)  a nested struct with a visit() of its own
//   v.custom("key")             a key the caller reads itself (a list of models, a sweep): its
//                               name is known (unknown-key checks), its value is not read here
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cmath>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

#include "s2dm/core/config.h"
#include "s2dm/core/errors.h"
#include "s2dm/core/yaml_reader.h"

namespace s2dm::schema {

template <class T>
struct Range {
  T lo, hi;
};
struct OneOf {
  std::vector<std::string> values;
};
struct Any {};
// A key added to a schema after the experiment driver began keying its work on the config's text
// (config_identity): that text leaves it out while it holds its default, so that adding a key
// keeps every earlier experiment's keys. Checked as `check` is.
template <class C>
struct Added {
  C check;
};
template <class C>
Added(C) -> Added<C>;
template <class C>
constexpr bool is_added = false;
template <class C>
constexpr bool is_added<Added<C>> = true;

inline std::string join(const std::vector<std::string>& items, const char* sep = ", ") {
  std::string out;
  for (size_t i = 0; i < items.size(); ++i) out += (i ? sep : "") + items[i];
  return out;
}

template <class T>
std::string show(const T& value) {
  if constexpr (std::is_same_v<T, std::vector<int>> || std::is_same_v<T, std::vector<double>>) {
    std::vector<std::string> items;
    for (auto x : value) items.push_back(show(x));
    return "[" + join(items) + "]";
  } else {
    std::ostringstream s;
    s << value;
    return s.str();
  }
}

// ---- The checks: what is wrong with a value, or "" ----

template <class T>
std::string violation(const std::string&, const T&, const Any&) {
  return "";
}

template <class T, class R>
std::string violation(const std::string& name, const T& value, const Range<R>& r) {
  auto outside = [&](R x) { return !(x >= r.lo && x <= r.hi); };  // (NaN is outside)
  bool bad = false;
  if constexpr (std::is_same_v<T, std::vector<int>> || std::is_same_v<T, std::vector<double>>) {
    for (auto x : value) bad = bad || outside(x);
  } else {
    bad = outside(value);
  }
  return bad ? name + " = " + show(value) + " is out of range [" + show(r.lo) + ", " + show(r.hi) + "]" : "";
}

template <class T>
std::string violation(const std::string& name, const T& value, const OneOf& allowed) {
  const std::string s = show(value);
  if (std::find(allowed.values.begin(), allowed.values.end(), s) != allowed.values.end()) return "";
  std::string msg = name + " = '" + s + "' is not one of " + join(allowed.values);
  auto near = closest_match(s, allowed.values);
  if (!near.empty()) msg += " (did you mean '" + near + "'?)";
  return msg;
}

template <class T, class C>
std::string violation(const std::string& name, const T& value, const Added<C>& added) {
  return violation(name, value, added.check);
}

// Checks every value of a struct set in code (as Binder checks what it reads).
class Validator {
 public:
  explicit Validator(const std::string& origin, std::string prefix = "") : origin_(origin), prefix_(std::move(prefix)) {}
  template <class T, class C>
  void operator()(const char* name, const T& value, const C& check) {
    const std::string msg = violation(prefix_ + name, value, check);
    if (!msg.empty()) throw ConfigError(origin_ + ": " + msg);
  }
  template <class S>
  void section(const char* name, S& target) {
    Validator inner(origin_, prefix_ + name + ".");
    visit(inner, target);
  }
  void custom(const char*) {}

 private:
  const std::string& origin_;
  std::string prefix_;
};

// Collects the keys of a visited struct (for "did you mean" and unknown-key checks).
struct NameCollector {
  std::vector<std::string> names;
  template <class T, class C>
  void operator()(const char* name, T&, const C&) { names.push_back(name); }
  template <class S>
  void section(const char* name, S&) { names.push_back(name); }
  void custom(const char* name) { names.push_back(name); }
};

template <class S>
std::vector<std::string> keys_of(S target) {
  NameCollector names;
  visit(names, target);
  return names.names;
}

// Reads a YAML mapping into a struct, validating each value; an absent or null key keeps the
// struct's value (its default).
class Binder {
 public:
  // `prefix` is the mapping's dotted name with its dot ("metric."), "" at the top.
  Binder(const YAML::Node& node, std::string prefix, const YamlReader& reader)
      : node_(node), prefix_(std::move(prefix)), reader_(reader) {}

  template <class S>
  void bind(S& target) {
    reader_.check_keys(node_, prefix_.empty() ? "" : prefix_.substr(0, prefix_.size() - 1), keys_of(target));
    visit(*this, target);
  }

  template <class T, class C>
  void operator()(const char* name, T& value, const C& check) {
    const YAML::Node child = node_[name];
    if (!child || child.IsNull()) return;  // keep the default
    const std::string key = prefix_ + name;
    read(child, key, value);
    const std::string msg = violation(key, value, check);
    if (!msg.empty()) reader_.fail(child, msg, key);
  }

  template <class S>
  void section(const char* name, S& target) {
    const YAML::Node child = node_[name];
    if (!child || child.IsNull()) return;
    if (reader_.overrides(prefix_ + name)) target = S{};  // an override that gives a whole section replaces it
    Binder(child, prefix_ + name + ".", reader_).bind(target);
  }

  void custom(const char*) {}

 private:
  void read(const YAML::Node& n, const std::string& key, std::string& v) { v = reader_.scalar<std::string>(n, key, "a string"); }
  void read(const YAML::Node& n, const std::string& key, bool& v) { v = reader_.scalar<bool>(n, key, "true or false"); }
  void read(const YAML::Node& n, const std::string& key, int& v) { v = reader_.scalar<int>(n, key, "an integer"); }
  void read(const YAML::Node& n, const std::string& key, int64_t& v) { v = reader_.scalar<int64_t>(n, key, "an integer"); }
  void read(const YAML::Node& n, const std::string& key, uint64_t& v) {
    v = reader_.scalar<uint64_t>(n, key, "a non-negative integer");
  }
  void read(const YAML::Node& n, const std::string& key, double& v) {
    v = reader_.scalar<double>(n, key, "a number");
    if (!std::isfinite(v)) reader_.fail(n, key + ": expected a finite number", key);
  }
  template <class T>
  void read(const YAML::Node& n, const std::string& key, std::vector<T>& v) {
    const char* what = std::is_same_v<T, int> ? "a list of integers" : "a list of numbers";
    if (!n.IsSequence()) reader_.fail(n, key + ": expected " + what + ", got " + YamlReader::flow(n), key);
    v.clear();
    for (const auto& item : n) v.push_back(reader_.scalar<T>(item, key, what));
  }

  const YAML::Node node_;
  std::string prefix_;
  const YamlReader& reader_;
};

}  // namespace s2dm::schema
