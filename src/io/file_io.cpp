#include "s2dm/io/file_io.h"

#include <fcntl.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/file.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "s2dm/core/errors.h"

namespace s2dm {

std::string read_file_bytes(const std::string& path) {
  // (An ifstream opens a directory and reads it as empty.)
  if (std::error_code ec; std::filesystem::is_directory(path, ec)) throw IoError(path + ": is a directory, not a file");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw IoError(path + ": cannot open (" + std::strerror(errno) + ")");
  std::ostringstream s;
  s << in.rdbuf();
  if (in.bad()) throw IoError(path + ": read failed");
  return s.str();
}

std::string why_not_a_file(const std::string& path) {
  std::error_code ec;
  const auto status = std::filesystem::status(path, ec);
  if (status.type() == std::filesystem::file_type::not_found) return "not found";
  if (ec) return "cannot be read (" + ec.message() + ")";
  return status.type() == std::filesystem::file_type::regular ? "" : "is not a file";
}

namespace {

// write_file_atomic's temporary name: the final name, this infix, the writer's pid. The infix is
// s2dm's own, so that removing dead writers' temporaries never touches another program's files.
constexpr const char* kTemporaryInfix = ".s2dm-tmp.";

}  // namespace

void write_file_atomic(const std::string& path, const std::string& bytes) {
  namespace fs = std::filesystem;
  auto parent = fs::path(path).parent_path();
  if (std::error_code ec; !parent.empty() && !fs::create_directories(parent, ec) && ec)
    throw IoError(parent.string() + ": cannot create the directory (" + ec.message() + ")");
  std::string tmp = path + kTemporaryInfix + std::to_string(::getpid());
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) throw IoError(path + ": cannot write (" + std::strerror(errno) + ")");
  size_t done = 0;
  while (done < bytes.size()) {
    ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      std::string why = std::strerror(errno);
      ::close(fd);
      ::unlink(tmp.c_str());
      throw IoError(path + ": write failed (" + why + ")");
    }
    done += static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0) {
    ::unlink(tmp.c_str());
    throw IoError(path + ": flush failed (" + std::strerror(errno) + ")");
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::string why = std::strerror(errno);
    ::unlink(tmp.c_str());
    throw IoError(path + ": rename failed (" + why + ")");
  }
  sync_directory(parent.empty() ? "." : parent.string());
}

void sync_directory(const std::string& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) throw IoError(dir + ": cannot open directory (" + std::strerror(errno) + ")");
  // (EINVAL: a file system that cannot sync directories, which is no failure)
  const int error = ::fsync(fd) != 0 && errno != EINVAL ? errno : 0;
  ::close(fd);
  if (error != 0) throw IoError(dir + ": flush failed (" + std::strerror(error) + ")");
}

namespace {

std::string host_name() {
  char name[256] = {};
  return ::gethostname(name, sizeof name - 1) == 0 ? name : "unknown host";
}

// The whole (small) lock file: its holder's description.
std::string lock_holder(int fd) {
  char buffer[512];
  const ssize_t n = ::pread(fd, buffer, sizeof buffer, 0);
  std::string text(buffer, n > 0 ? static_cast<size_t>(n) : 0);
  while (!text.empty() && (text.back() == '\n' || text.back() == '\0')) text.pop_back();
  return text;
}

}  // namespace

DirectoryLock::DirectoryLock(const std::string& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) throw IoError(dir + ": cannot create the directory (" + ec.message() + ")");
  const std::string path = dir + "/" + kFileName;
  fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd_ < 0) throw IoError(path + ": cannot open (" + std::strerror(errno) + ")");
  const std::string previous = lock_holder(fd_);
  if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
    const int err = errno;
    ::close(fd_);
    if (err == EWOULDBLOCK)
      throw ConfigError(dir + ": in use by another s2dm process (" + (previous.empty() ? "starting" : previous) +
                        "; lock file " + path + ")");
    throw IoError(path + ": cannot lock (" + std::strerror(err) + ")");
  }
  // A holder that ended normally emptied the file: text here was left by a process that died.
  if (!previous.empty()) spdlog::warn("{}: taking over the lock of {}, which is no longer running", dir, previous);
  const std::string me = "pid " + std::to_string(::getpid()) + " on " + host_name() + "\n";
  if (::ftruncate(fd_, 0) != 0 || ::pwrite(fd_, me.data(), me.size(), 0) != static_cast<ssize_t>(me.size()))
    spdlog::warn("{}: cannot record the holder ({})", path, std::strerror(errno));
}

DirectoryLock::~DirectoryLock() {
  // Empty means released cleanly; should this fail, the next holder merely warns of a stale lock.
  [[maybe_unused]] const int truncated = ::ftruncate(fd_, 0);
  ::close(fd_);  // releases the lock
}

int64_t claimed_bytes(const std::vector<int64_t>& shape, uint64_t item_size, uint64_t limit) {
  if (std::any_of(shape.begin(), shape.end(), [](int64_t d) { return d < 0; })) return -1;
  // An empty array holds no bytes, but LibTorch still multiplies its other dimensions (its
  // strides): those must stay within int64.
  const bool empty = std::find(shape.begin(), shape.end(), 0) != shape.end();
  const uint64_t bound = empty ? static_cast<uint64_t>(INT64_MAX) : limit;
  uint64_t bytes = item_size;
  for (int64_t d : shape) {
    if (d == 0) continue;
    if (bytes != 0 && static_cast<uint64_t>(d) > bound / bytes) return -1;  // bytes * d > bound, without overflow
    bytes *= static_cast<uint64_t>(d);
  }
  if (empty) return 0;
  return bytes > limit ? -1 : static_cast<int64_t>(bytes);
}

bool is_temporary_name(const std::string& name) { return name.find(kTemporaryInfix) != std::string::npos; }

int remove_dead_writers_temporaries(const std::string& dir) {
  namespace fs = std::filesystem;
  int removed = 0;
  std::error_code ec;
  for (auto it = fs::recursive_directory_iterator(dir, ec); !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
    const std::string name = it->path().filename().string();
    const auto at = name.rfind(kTemporaryInfix);
    std::error_code type_error;
    if (at == std::string::npos || !it->is_regular_file(type_error)) continue;
    const std::string pid = name.substr(at + std::strlen(kTemporaryInfix));
    if (pid.empty() || pid.size() > 9 || pid.find_first_not_of("0123456789") != std::string::npos) continue;
    if (::kill(std::stoi(pid), 0) == 0 || errno != ESRCH) continue;  // its writer may still be at work
    std::error_code ignored;
    if (fs::remove(it->path(), ignored)) ++removed;
  }
  return removed;
}

uint32_t crc32_of(const void* data, size_t size, uint32_t crc) {
  const auto* p = static_cast<const Bytef*>(data);
  uLong c = crc;
  while (size > 0) {
    uInt chunk = static_cast<uInt>(std::min<size_t>(size, 1u << 30));
    c = ::crc32(c, p, chunk);
    p += chunk;
    size -= chunk;
  }
  return static_cast<uint32_t>(c);
}

}  // namespace s2dm
