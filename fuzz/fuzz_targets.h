#pragma once
// Every reader of outside bytes, as a fuzz target: a function from the bytes of one file to
// whatever s2dm does when a user hands it that file. Shared by the libFuzzer binary (fuzz/
// fuzz_main.cpp, scripts/fuzz.sh) and by the test suite, which replays every input the fuzzer
// ever found (tests/fixtures/fuzz/TARGET/) through the same functions.
//
// The property: a target returns, or throws an s2dm::Error (which the command line reports as
// a user error, exit 2). Anything else is a defect: a crash, a sanitizer report, another
// exception type, or an allocation out of proportion to the input (-malloc_limit_mb).
#include <string>
#include <vector>

namespace s2dm::fuzz {

// The target names: safetensors, checkpoint, npy, npz, idx, cifar, image, config, set,
// experiment, schedule.
const std::vector<std::string>& target_names();

// Feeds `bytes` to `target`. `scratch` is a directory the target writes its input files into;
// experiment files find the repository's training configs (under `source_dir`) beside them.
// Throws ConfigError for an unknown target.
void run_target(const std::string& target, const std::string& bytes, const std::string& scratch,
                const std::string& source_dir);

// Writes valid inputs for `target` into `dir` (made by s2dm's own writers and taken from the
// repository's configs and fixtures under `source_dir`): the fuzzer's seed corpus.
void write_seeds(const std::string& target, const std::string& dir, const std::string& source_dir);

}  // namespace s2dm::fuzz
