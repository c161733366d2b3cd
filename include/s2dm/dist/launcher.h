#pragma once
// `s2dm train --nproc N`: N ranks on this machine, as `torchrun --standalone` starts them.
#include <string>
#include <vector>

namespace s2dm::dist {

// Serves the group's store on a free loopback port, runs `args` (an s2dm command line without
// the program name) as ranks 0..nproc-1 with torchrun's environment variables, forwards
// SIGINT/SIGTERM to them, stops the others when one fails, and returns the worst exit code
// (128 + N for a rank killed by signal N).
int launch_local_group(int nproc, const std::vector<std::string>& args);

}  // namespace s2dm::dist
