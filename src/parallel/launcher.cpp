#include "s2dm/parallel/launcher.h"

#include <spdlog/spdlog.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstring>
#include <thread>
#include <utility>
#include <vector>

#include "s2dm/core/compat.h"
#include "s2dm/core/errors.h"

extern char** environ;

namespace s2dm::parallel {
namespace {

volatile std::sig_atomic_t g_forward = 0;
extern "C" void on_launcher_signal(int sig) { g_forward = sig; }

// The environment of rank `rank`: ours, without any group variables, plus the group's.
std::vector<std::string> rank_environment(int rank, int nproc, int port) {
  static const char* kGroupVariables[] = {"RANK=", "WORLD_SIZE=", "LOCAL_RANK=", "LOCAL_WORLD_SIZE=", "MASTER_ADDR=",
                                          "MASTER_PORT=", "S2DM_LAUNCHER_STORE=", "SLURM_PROCID=", "SLURM_NTASKS="};
  std::vector<std::string> out;
  for (char** e = environ; *e; ++e) {
    bool group_variable = false;
    for (const char* prefix : kGroupVariables) group_variable |= std::strncmp(*e, prefix, std::strlen(prefix)) == 0;
    if (!group_variable) out.emplace_back(*e);
  }
  for (auto [name, value] : {std::pair<const char*, int>{"RANK", rank}, {"LOCAL_RANK", rank}, {"WORLD_SIZE", nproc},
                             {"LOCAL_WORLD_SIZE", nproc}, {"MASTER_PORT", port}})
    out.push_back(std::string(name) + "=" + std::to_string(value));
  out.emplace_back("MASTER_ADDR=127.0.0.1");
  out.emplace_back("S2DM_LAUNCHER_STORE=1");
  return out;
}

std::vector<char*> pointers(std::vector<std::string>& strings) {
  std::vector<char*> out;
  for (auto& s : strings) out.push_back(s.data());
  out.push_back(nullptr);
  return out;
}

constexpr int kInterrupted = 130;  // a rank stopped by a signal after writing its checkpoint

int exit_code(int status) { return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status); }

// Starts `nproc` ranks, each `s2dm ARGS` with its group's environment (rank_environment);
// returns their pids.
std::vector<pid_t> start_ranks(int nproc, const std::vector<std::string>& args, int port) {
  std::vector<std::string> argv_strings{"s2dm"};
  argv_strings.insert(argv_strings.end(), args.begin(), args.end());
  auto argv = pointers(argv_strings);
  // Everything a child needs is built before fork: between fork and exec only exec runs.
  std::vector<std::vector<std::string>> envs;
  std::vector<std::vector<char*>> envps;
  for (int r = 0; r < nproc; ++r) envs.push_back(rank_environment(r, nproc, port));
  for (auto& e : envs) envps.push_back(pointers(e));

  std::vector<pid_t> pids(nproc, -1);
  const pid_t launcher = getpid();
  for (int r = 0; r < nproc; ++r) {
    pids[r] = fork();
    if (pids[r] == 0) {
      // Each rank in a process group of its own: a terminal's Ctrl-C (or `timeout`) reaches the
      // launcher alone, which forwards it once. And a rank goes when the launcher goes, even by
      // SIGKILL.
      setpgid(0, 0);
      prctl(PR_SET_PDEATHSIG, SIGTERM);
      if (getppid() != launcher) _exit(1);
      execve("/proc/self/exe", argv.data(), envps[r].data());
      _exit(127);
    }
    if (pids[r] < 0) throw std::runtime_error(std::string("fork: ") + std::strerror(errno));
  }
  return pids;
}

// Waits for every rank of `pids`. When one fails, the others are asked to stop (SIGTERM; they
// also see the lost peer in their next collective) and killed if still there after a grace
// period. The first failure's code is the group's: the others' codes then tell of the launcher's
// own signals or of the lost peer, not of what went wrong. Of the ranks that ended since the last
// look, one killed by a signal came first (its peers exit 1 on losing it). A rank that a
// forwarded signal ended was interrupted, not failed. Without a failure: 130 when a signal
// stopped the ranks, else 0.
int supervise_ranks(std::vector<pid_t> pids) {
  const int nproc = static_cast<int>(pids.size());
  int first_failure = 0, interrupted = 0, forwarded = 0, running = nproc;
  auto kill_at = std::chrono::steady_clock::time_point::max();  // (max: nobody to kill)
  while (running > 0) {
    if (g_forward) {
      forwarded = g_forward;
      g_forward = 0;
      spdlog::warn("signal {}: forwarding it to the ranks", forwarded);
      for (pid_t pid : pids)
        if (pid > 0) kill(pid, forwarded);
    }
    if (std::chrono::steady_clock::now() > kill_at) {
      for (pid_t pid : pids)
        if (pid > 0) kill(pid, SIGKILL);
      kill_at = std::chrono::steady_clock::time_point::max();
    }
    std::vector<std::pair<int, int>> ended;  // (rank, wait status), killed by a signal first
    for (int status = 0;;) {
      const pid_t done = waitpid(-1, &status, WNOHANG);
      if (done <= 0) break;
      for (int r = 0; r < nproc; ++r)
        if (pids[r] == done) {
          pids[r] = -1;
          --running;
          ended.emplace_back(r, status);
        }
    }
    if (ended.empty()) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      continue;
    }
    std::stable_partition(ended.begin(), ended.end(), [](const auto& e) { return WIFSIGNALED(e.second); });
    for (const auto& [r, status] : ended) {
      const int code = exit_code(status);
      if (code == kInterrupted || (forwarded != 0 && WIFSIGNALED(status) && WTERMSIG(status) == forwarded)) {
        interrupted = kInterrupted;
        continue;
      }
      if (code == 0 || first_failure != 0) continue;  // (after a failure: stopped by us, or in its wake)
      first_failure = code;
      spdlog::error("rank {} {} {}", r, WIFEXITED(status) ? "exited with code" : "was killed by signal",
                    WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
      if (running > 0) {
        for (pid_t pid : pids)
          if (pid > 0) kill(pid, SIGTERM);
        kill_at = std::chrono::steady_clock::now() + std::chrono::seconds(30);
      }
    }
  }
  return first_failure != 0 ? first_failure : interrupted;
}

}  // namespace

int launch_local_group(int nproc, const std::vector<std::string>& args) {
  if (nproc < 1 || nproc > kMaxLocalRanks)
    throw UsageError("--nproc " + std::to_string(nproc) + ": out of range [1, " + std::to_string(kMaxLocalRanks) + "]");
  if (std::getenv("RANK") || std::getenv("WORLD_SIZE"))
    throw UsageError("--nproc inside a launched group (RANK/WORLD_SIZE are set): launch with one or the other");
  // The launcher serves the store (on a port the kernel picks, so no race for a free one); the
  // ranks connect to it as clients.
  c10d::TCPStoreOptions options;
  options.port = 0;
  options.isServer = true;
  options.numWorkers = nproc;
  options.waitWorkers = false;
  compat::classic_tcp_store(options);
  c10d::TCPStore store("127.0.0.1", options);
  const int port = store.getPort();
  spdlog::info("launching {} ranks on this machine (store on 127.0.0.1:{})", nproc, port);

  struct sigaction action {};
  action.sa_handler = on_launcher_signal;
  sigemptyset(&action.sa_mask);
  struct sigaction old_int {}, old_term {};
  sigaction(SIGINT, &action, &old_int);
  sigaction(SIGTERM, &action, &old_term);

  const int code = supervise_ranks(start_ranks(nproc, args, port));
  sigaction(SIGINT, &old_int, nullptr);
  sigaction(SIGTERM, &old_term, nullptr);
  return code;
}

}  // namespace s2dm::parallel
