#pragma once
// SIGINT/SIGTERM as a request to stop cleanly: long loops (training, the experiment driver)
// poll it between units of work, save what they have and return.

namespace s2dm {

// Installs the handlers for its scope and restores the previous ones after. Scopes nest: an inner
// scope (training inside an experiment) shares the request with the outer one.
class StopSignals {
 public:
  StopSignals();
  ~StopSignals();
  StopSignals(const StopSignals&) = delete;
  StopSignals& operator=(const StopSignals&) = delete;
  bool requested() const;
  int signal() const;  // the signal received (0 = none)

 private:
  void (*old_int_)(int);
  void (*old_term_)(int);
};

}  // namespace s2dm
