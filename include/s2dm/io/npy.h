#pragma once
// NumPy .npy and .npz files (https://numpy.org/neps/nep-0001-npy-format.html): read and write,
// npz as a zip archive of .npy members, stored or deflated on read, stored on write.
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace s2dm {

struct NpyArray {
  std::string dtype;           // numpy descr: "<f4", "<f8", "|u1", "<i8", ...
  std::vector<int64_t> shape;
  std::string data;            // raw bytes, C order
  int64_t numel() const;
  size_t item_size() const;
};

std::string to_npy_bytes(const NpyArray& array);
// Throws IoError (origin named) for a foreign or truncated file, or Fortran order.
NpyArray from_npy_bytes(const std::string& bytes, const std::string& origin);
NpyArray load_npy(const std::string& path);
void save_npy(const std::string& path, const NpyArray& array);

// npz: member names without the ".npy" suffix; `compress` deflates the members
// (np.savez_compressed) instead of storing them (np.savez).
void save_npz(const std::string& path, const std::map<std::string, NpyArray>& arrays, bool compress = false);
std::map<std::string, NpyArray> load_npz(const std::string& path);

}  // namespace s2dm
