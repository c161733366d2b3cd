// The libFuzzer entry points for fuzz_targets.h. The target comes from S2DM_FUZZ_TARGET; with
// S2DM_FUZZ_SEEDS=DIR the binary writes the target's seed corpus into DIR and exits.
// scripts/fuzz.sh builds this (clang, -fsanitize=fuzzer,address,undefined) and runs each target.
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <string>

#include "fuzz_targets.h"
#include "s2dm/core/errors.h"

namespace {

std::string target, scratch;

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  const char* name = std::getenv("S2DM_FUZZ_TARGET");
  const auto& names = s2dm::fuzz::target_names();
  if (!name || std::find(names.begin(), names.end(), name) == names.end()) {
    std::fprintf(stderr, "s2dm_fuzz: set S2DM_FUZZ_TARGET to one of:");
    for (const auto& t : names) std::fprintf(stderr, " %s", t.c_str());
    std::fprintf(stderr, "\n");
    std::exit(2);
  }
  target = name;
  if (const char* seeds = std::getenv("S2DM_FUZZ_SEEDS")) {
    s2dm::fuzz::write_seeds(target, seeds, S2DM_SOURCE_DIR);
    std::exit(0);
  }
  // One scratch directory per process (libFuzzer's -jobs/-workers run several).
  const char* tmp = std::getenv("TMPDIR");
  scratch = std::string(tmp ? tmp : "/tmp") + "/s2dm-fuzz-" + target + "-" + std::to_string(getpid());
  std::filesystem::create_directories(scratch);
  std::atexit([] {
    std::error_code ignored;
    std::filesystem::remove_all(scratch, ignored);
  });
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    s2dm::fuzz::run_target(target, std::string(reinterpret_cast<const char*>(data), size), scratch, S2DM_SOURCE_DIR);
  } catch (const s2dm::Error&) {
    // A user error, reported with exit code 2 by the command line: what bad input must get.
  } catch (const std::exception& e) {
    std::fprintf(stderr, "s2dm_fuzz: %s: an exception that is not a user error: %s\n", target.c_str(), e.what());
    std::abort();
  }
  return 0;
}
