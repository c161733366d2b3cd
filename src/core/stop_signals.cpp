#include "s2dm/core/stop_signals.h"

#include <csignal>

namespace s2dm {
namespace {

volatile std::sig_atomic_t g_stop_signal = 0;
int g_depth = 0;  // nested scopes
extern "C" void on_stop_signal(int sig) { g_stop_signal = sig; }

}  // namespace

StopSignals::StopSignals() {
  if (g_depth++ == 0) g_stop_signal = 0;
  old_int_ = std::signal(SIGINT, on_stop_signal);
  old_term_ = std::signal(SIGTERM, on_stop_signal);
}

StopSignals::~StopSignals() {
  std::signal(SIGINT, old_int_);
  std::signal(SIGTERM, old_term_);
  --g_depth;
}

bool StopSignals::requested() const { return g_stop_signal != 0; }
int StopSignals::signal() const { return g_stop_signal; }

}  // namespace s2dm
