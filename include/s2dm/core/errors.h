#pragma once
// The error hierarchy. Everything a user can get wrong (a config value, a data file, a
// checkpoint, a path) is one of these; `main` turns them into exit code 2 and a one-line
// message. Anything else escaping to `main` is an internal failure (exit code 1).
#include <stdexcept>
#include <string>

namespace s2dm {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};
struct ConfigError : Error {
  using Error::Error;
};
struct DataError : Error {
  using Error::Error;
};
struct CheckpointError : Error {
  using Error::Error;
};
struct IoError : Error {
  using Error::Error;
};
// A bad command line (unknown option, missing argument).
struct UsageError : Error {
  using Error::Error;
};

}  // namespace s2dm
