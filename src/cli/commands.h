#pragma once
// The s2dm subcommands. Each parses its own options (cxxopts) and returns the exit code.
#include <cxxopts.hpp>
#include <limits>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "s2dm/core/errors.h"

namespace s2dm::cli {

// Parses argv; prints help and returns nullopt for --help. Rejects stray positional arguments.
std::optional<cxxopts::ParseResult> parse_options(cxxopts::Options& options, int argc, char** argv);

// A numeric option's value (its default when not given), refused before any work unless in
// [lo, hi]: a UsageError naming the flag, its value and the range. Every count, batch and size
// option goes through it.
template <class T>
T in_range(const std::string& flag, T value, T lo, T hi) {
  if (value >= lo && value <= hi) return value;
  std::ostringstream msg;
  msg << "--" << flag << " " << value << ": out of range [" << lo << ", ";
  if (hi == std::numeric_limits<T>::max()) msg << "no limit";
  else msg << hi;
  msg << "]";
  throw UsageError(msg.str());
}
template <class T>
T bounded(const cxxopts::ParseResult& r, const std::string& flag, T lo, T hi) {
  return in_range(flag, r[flag].as<T>(), lo, hi);
}
template <class T>
std::vector<T> bounded_list(const cxxopts::ParseResult& r, const std::string& flag, T lo, T hi) {
  const auto values = r[flag].as<std::vector<T>>();
  if (values.empty()) throw UsageError("--" + flag + ": no values");
  for (const T value : values) in_range(flag, value, lo, hi);
  return values;
}

// An output file's flag, checked before any work: not a directory, not the file of one of the
// `inputs` flags (it would be overwritten), and ending in one of `extensions` when they are given.
void check_output_file(const cxxopts::ParseResult& r, const std::string& flag, const std::vector<std::string>& inputs,
                       const std::vector<std::string>& extensions = {});

int info(int argc, char** argv);
int train(int argc, char** argv);
int sample(int argc, char** argv);
int samplers(int argc, char** argv);
int export_weights(int argc, char** argv);
int fid(int argc, char** argv);
int fid_stats(int argc, char** argv);
int train_classifier(int argc, char** argv);
int schedule(int argc, char** argv);
int run(int argc, char** argv);

}  // namespace s2dm::cli
