#pragma once
// Whole-file reads and atomic writes: a file is written under a temporary name, flushed to
// disk and renamed (and the rename flushed), so a reader never sees it half-written and a
// power loss leaves either the old file or the new one.
#include <cstdint>
#include <string>

namespace s2dm {

// Throws IoError naming the path.
std::string read_file_bytes(const std::string& path);
void write_file_atomic(const std::string& path, const std::string& bytes);
// Flushes a directory's entries (a rename or a new file in it) to disk.
void sync_directory(const std::string& dir);

// One writer per directory: an advisory lock (flock) on DIR/.lock, which records the holder's
// pid and host. The kernel releases it when the holder dies, however it dies, so a lock file
// left behind is taken over with a warning. Throws ConfigError naming the holder while another
// live process holds it. `dir` is created if missing.
class DirectoryLock {
 public:
  explicit DirectoryLock(const std::string& dir);
  ~DirectoryLock();
  DirectoryLock(const DirectoryLock&) = delete;
  DirectoryLock& operator=(const DirectoryLock&) = delete;

  static constexpr const char* kFileName = ".lock";

 private:
  int fd_;
};

// CRC-32 (zlib's) of a byte range.
uint32_t crc32_of(const void* data, size_t size, uint32_t crc = 0);

}  // namespace s2dm
