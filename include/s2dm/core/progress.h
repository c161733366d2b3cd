#pragma once
// A progress line with rate and ETA for long loops (training, sampling, feature extraction).
// On a terminal it redraws one line; otherwise it logs a line every few seconds.
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

namespace spdlog::sinks {
class sink;
}

namespace s2dm {

class Progress {
 public:
  // `unit` names what is counted ("step", "img"); `total` may be 0 when unknown.
  Progress(std::string label, int64_t total, std::string unit = "it");
  // Marks `done` units complete; `extra` is appended to the line (e.g. the loss).
  void update(int64_t done, const std::string& extra = "");
  // Prints the final line (with the overall rate).
  void finish(const std::string& extra = "");
  // Units per second since construction.
  double rate() const;
  // The work ends `seconds` from now at the latest (a time budget): the ETA says so.
  void end_within(double seconds);

 private:
  std::string line(const std::string& extra) const;
  std::string label_, unit_;
  int64_t total_, done_ = 0;
  std::chrono::steady_clock::time_point start_, last_print_;
  std::optional<std::chrono::steady_clock::time_point> deadline_;
  bool tty_;
};

// "1h02m03s" / "4m05s" / "7s"
std::string format_duration(double seconds);

// Copies everything logged (spdlog's default logger) into a file for the scope, appending and
// flushing each line (a killed process leaves its log). Constructed without a path it keeps the
// lines in memory until open() names the file, so that a run refused at start-up writes nothing.
class LogFile {
 public:
  LogFile();
  explicit LogFile(const std::string& path);
  ~LogFile();
  LogFile(const LogFile&) = delete;
  LogFile& operator=(const LogFile&) = delete;
  // Writes the lines kept so far to `path`, and every later line. Throws IoError naming it.
  void open(const std::string& path);

 private:
  class Sink;
  std::shared_ptr<Sink> sink_;
};

}  // namespace s2dm
