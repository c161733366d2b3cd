#pragma once
// Registries by name (samplers, losses, data sets): the lookup and its error, in one place, and
// the names the config schema checks keys against.
#include <string>
#include <vector>

#include "s2dm/core/config.h"
#include "s2dm/core/errors.h"

namespace s2dm {

// The entry called `name` among `entries` (structs with a `name`). Throws ConfigError
// "unknown <kind> 'x' (did you mean 'y'?); <kinds>: a, b, c".
template <class Entry>
const Entry& find_by_name(const std::vector<Entry>& entries, const std::string& name, const std::string& kind,
                          const std::string& kinds) {
  std::vector<std::string> names;
  for (const auto& e : entries) {
    if (e.name == name) return e;
    names.push_back(e.name);
  }
  std::string msg = "unknown " + kind + " '" + name + "'";
  const auto near = closest_match(name, names);
  if (!near.empty()) msg += " (did you mean '" + near + "'?)";
  msg += "; " + kinds + ": ";
  for (size_t i = 0; i < names.size(); ++i) msg += (i ? ", " : "") + names[i];
  throw ConfigError(msg);
}

// The names of `entries`, in registry order.
template <class Entry>
std::vector<std::string> names_of(const std::vector<Entry>& entries) {
  std::vector<std::string> names;
  for (const auto& e : entries) names.push_back(e.name);
  return names;
}

// The names of the registries above core/ whose entries are config values: the schema
// (src/core/config_schema.h) checks data.dataset and loss.type against them, with the file and line.
// Declared here and defined beside each registry (data/data.cpp, diffusion/losses.cpp), so that a
// registry line is all a new entry needs and core/ includes nothing above it.
std::vector<std::string> dataset_names();
std::vector<std::string> loss_names();

}  // namespace s2dm
