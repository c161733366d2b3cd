#pragma once
// Registries by name (samplers, losses, data sets): the lookup and its error, in one place.
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

}  // namespace s2dm
