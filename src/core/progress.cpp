#include "s2dm/core/progress.h"

#include <spdlog/sinks/base_sink.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <string_view>

#include "s2dm/core/errors.h"

namespace s2dm {

std::string format_duration(double seconds) {
  if (!(seconds >= 0) || seconds > 1e8) return "?";
  auto s = static_cast<int64_t>(seconds + 0.5);
  char buf[32];
  if (s >= 3600)
    std::snprintf(buf, sizeof buf, "%ldh%02ldm%02lds", long(s / 3600), long(s / 60 % 60), long(s % 60));
  else if (s >= 60)
    std::snprintf(buf, sizeof buf, "%ldm%02lds", long(s / 60), long(s % 60));
  else
    std::snprintf(buf, sizeof buf, "%lds", long(s));
  return buf;
}

Progress::Progress(std::string label, int64_t total, std::string unit)
    : label_(std::move(label)), unit_(std::move(unit)), total_(total),
      start_(std::chrono::steady_clock::now()), last_print_(start_), tty_(isatty(STDERR_FILENO)) {}

double Progress::rate() const {
  double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  return elapsed > 0 ? static_cast<double>(done_) / elapsed : 0.0;
}

void Progress::end_within(double seconds) {
  deadline_ = std::chrono::steady_clock::now() +
              std::chrono::duration_cast<std::chrono::steady_clock::duration>(std::chrono::duration<double>(seconds));
}

std::string Progress::line(const std::string& extra) const {
  double r = rate();
  char buf[160];
  if (total_ > 0) {
    double eta = r > 0 ? static_cast<double>(total_ - done_) / r : -1;
    if (deadline_) {
      const double left = std::chrono::duration<double>(*deadline_ - std::chrono::steady_clock::now()).count();
      eta = eta < 0 ? std::max(left, 0.0) : std::clamp(left, 0.0, eta);
    }
    std::snprintf(buf, sizeof buf, "%s %ld/%ld (%3.0f%%) %.2f %s/s ETA %s", label_.c_str(),
                  long(done_), long(total_), 100.0 * static_cast<double>(done_) / static_cast<double>(total_), r,
                  unit_.c_str(), format_duration(eta).c_str());
  } else {
    std::snprintf(buf, sizeof buf, "%s %ld %.2f %s/s", label_.c_str(), long(done_), r, unit_.c_str());
  }
  return extra.empty() ? std::string(buf) : std::string(buf) + " " + extra;
}

void Progress::update(int64_t done, const std::string& extra) {
  done_ = done;
  auto now = std::chrono::steady_clock::now();
  double since = std::chrono::duration<double>(now - last_print_).count();
  if (tty_ && since >= 0.2) {
    std::fprintf(stderr, "\r\033[K%s", line(extra).c_str());
    std::fflush(stderr);
    last_print_ = now;
  } else if (!tty_ && since >= 10.0) {
    spdlog::info("{}", line(extra));
    last_print_ = now;
  }
}

void Progress::finish(const std::string& extra) {
  if (tty_) std::fprintf(stderr, "\r\033[K");
  spdlog::info("{}", line(extra));
}

// Formats as spdlog's file sinks do; into memory, or appended to a file and flushed per line.
class LogFile::Sink : public spdlog::sinks::base_sink<std::mutex> {
 public:
  ~Sink() override {
    if (file_) std::fclose(file_);
  }
  void open(const std::string& path) {
    std::lock_guard<std::mutex> guard(mutex_);
    file_ = std::fopen(path.c_str(), "a");
    if (!file_) throw IoError(path + ": cannot open (" + std::strerror(errno) + ")");
    write(kept_);
    kept_.clear();
  }

 protected:
  void sink_it_(const spdlog::details::log_msg& msg) override {
    spdlog::memory_buf_t line;
    formatter_->format(msg, line);
    if (file_) write({line.data(), line.size()});
    else kept_.append(line.data(), line.size());
  }
  void flush_() override {
    if (file_) std::fflush(file_);
  }

 private:
  void write(std::string_view text) {
    if (text.empty()) return;
    std::fwrite(text.data(), 1, text.size(), file_);
    std::fflush(file_);  // (a failed write shows in the run's other files; the log is not worth stopping for)
  }
  std::FILE* file_ = nullptr;
  std::string kept_;
};

LogFile::LogFile() : sink_(std::make_shared<Sink>()) { spdlog::default_logger()->sinks().push_back(sink_); }

LogFile::LogFile(const std::string& path) : LogFile() { open(path); }

void LogFile::open(const std::string& path) { sink_->open(path); }

LogFile::~LogFile() {
  auto& sinks = spdlog::default_logger()->sinks();
  sinks.erase(std::remove(sinks.begin(), sinks.end(), sink_), sinks.end());
}

}  // namespace s2dm
