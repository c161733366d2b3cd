#pragma once
// `s2dm train --nproc N`: N ranks on this machine, as `torchrun --standalone` starts them.
#include <string>
#include <vector>

namespace s2dm::parallel {

// The most ranks one machine launches (--nproc).
inline constexpr int kMaxLocalRanks = 1024;

// Serves the group's store on a free loopback port, runs `args` (an s2dm command line without
// the program name) as ranks 0..nproc-1 with torchrun's environment variables, forwards
// SIGINT/SIGTERM to them, stops the others when one fails, and returns the exit code of the first
// rank that failed (128 + N for one killed by signal N), else 130 when a signal stopped them, else 0.
int launch_local_group(int nproc, const std::vector<std::string>& args);

}  // namespace s2dm::parallel
