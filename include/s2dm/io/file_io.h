#pragma once
// Whole-file reads and atomic writes: a file is written under a temporary name, flushed to
// disk and renamed (and the rename flushed), so a reader never sees it half-written and a
// power loss leaves either the old file or the new one.
#include <cstdint>
#include <string>
#include <vector>

namespace s2dm {

// Throws IoError naming the path (also for a directory).
std::string read_file_bytes(const std::string& path);
void write_file_atomic(const std::string& path, const std::string& bytes);
// Why `path` is not a regular file ("" when it is one), for a message after the path: "not
// found", "is not a file", or the system's reason ("cannot be read (File name too long)").
// Never throws, unlike std::filesystem's queries on a path they cannot look at.
std::string why_not_a_file(const std::string& path);
// What a file's header claims, checked before anything is allocated: the bytes of an array of
// `shape` with `item_size`-byte items, or -1 when a dimension is negative or the array would
// be larger than `limit` (what the file can hold). An empty array claims 0 bytes unless its
// other dimensions multiply past int64.
int64_t claimed_bytes(const std::vector<int64_t>& shape, uint64_t item_size, uint64_t limit);
// The big-endian 32-bit number at `p` (idx headers, PNG chunks).
inline uint32_t big_endian32(const char* p) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v = v << 8 | static_cast<unsigned char>(p[i]);
  return v;
}
// Deflate expands its input at most about 1032-fold: a compressed member or file claiming more
// than this many bytes per compressed byte is corrupt or malicious.
inline constexpr uint64_t kMaxDeflateRatio = 1032;
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

// Removes what atomic writes under `dir` (recursively) left behind when their process died
// before the rename (SIGKILL, power loss): temporary files whose writer is no longer running.
// Returns how many. Meant for the holder of the directory's lock.
int remove_dead_writers_temporaries(const std::string& dir);
// Whether a file name is that of write_file_atomic's temporary (NAME.s2dm-tmp.PID).
bool is_temporary_name(const std::string& name);
// CRC-32 (zlib's) of a byte range.
uint32_t crc32_of(const void* data, size_t size, uint32_t crc = 0);

}  // namespace s2dm
