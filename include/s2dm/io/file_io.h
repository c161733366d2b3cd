#pragma once
// Whole-file reads and atomic writes: a file is written under a temporary name, flushed to
// disk and renamed, so a reader never sees it half-written.
#include <cstdint>
#include <string>

namespace s2dm {

// Throws IoError naming the path.
std::string read_file_bytes(const std::string& path);
void write_file_atomic(const std::string& path, const std::string& bytes);

// CRC-32 (zlib's) of a byte range.
uint32_t crc32_of(const void* data, size_t size, uint32_t crc = 0);

}  // namespace s2dm
