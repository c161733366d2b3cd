#include "s2dm/io/npy.h"

#include <zlib.h>

#include <cstring>
#include <regex>
#include <sstream>

#include "s2dm/core/errors.h"
#include "s2dm/io/file_io.h"

namespace s2dm {

int64_t NpyArray::numel() const {
  int64_t n = 1;
  for (auto d : shape) n *= d;
  return n;
}

size_t NpyArray::item_size() const {
  // "<f4", "|u1", ...: byte order, kind, then the size in bytes.
  const std::string digits = dtype.size() < 3 ? "" : dtype.substr(2);
  if (digits.empty() || digits.size() > 2 || digits.find_first_not_of("0123456789") != std::string::npos) return 0;
  return static_cast<size_t>(std::stoi(digits));
}

std::string to_npy_bytes(const NpyArray& a) {
  std::ostringstream dict;
  dict << "{'descr': '" << a.dtype << "', 'fortran_order': False, 'shape': (";
  for (size_t i = 0; i < a.shape.size(); ++i) dict << (i ? ", " : "") << a.shape[i];
  dict << (a.shape.size() == 1 ? ",), }" : "), }");
  std::string header = dict.str();
  // magic(6) + version(2) + len(2) + header + '\n', padded to a multiple of 64.
  size_t total = 10 + header.size() + 1;
  header.append((64 - total % 64) % 64, ' ');
  header += '\n';
  std::string out("\x93NUMPY\x01\x00", 8);
  out += static_cast<char>(header.size() & 0xff);
  out += static_cast<char>((header.size() >> 8) & 0xff);
  return out + header + a.data;
}

NpyArray from_npy_bytes(const std::string& bytes, const std::string& origin) {
  auto fail = [&](const std::string& why) { return IoError(origin + ": " + why); };
  if (bytes.size() < 10 || bytes.compare(0, 6, "\x93NUMPY") != 0) throw fail("not a .npy file (bad magic)");
  const int major = static_cast<unsigned char>(bytes[6]);
  size_t header_len = 0, start = 0;
  if (major == 1) {
    header_len = static_cast<unsigned char>(bytes[8]) | static_cast<unsigned char>(bytes[9]) << 8;
    start = 10;
  } else if (major == 2 || major == 3) {
    if (bytes.size() < 12) throw fail("truncated .npy header");
    for (int i = 0; i < 4; ++i) header_len |= static_cast<size_t>(static_cast<unsigned char>(bytes[8 + i])) << (8 * i);
    start = 12;
  } else {
    throw fail("unsupported .npy version " + std::to_string(major));
  }
  if (start + header_len > bytes.size()) throw fail("truncated .npy header");
  std::string header = bytes.substr(start, header_len);
  std::smatch m;
  NpyArray a;
  if (!std::regex_search(header, m, std::regex("'descr':\\s*'([^']+)'"))) throw fail("malformed .npy header");
  a.dtype = m[1];
  if (std::regex_search(header, m, std::regex("'fortran_order':\\s*True")))
    throw fail("Fortran-ordered arrays are not supported");
  if (!std::regex_search(header, m, std::regex("'shape':\\s*\\(([^)]*)\\)"))) throw fail("malformed .npy header");
  std::string dims = m[1];
  std::regex number("\\d+");
  for (auto it = std::sregex_iterator(dims.begin(), dims.end(), number); it != std::sregex_iterator(); ++it) {
    if (it->length() > 18) throw fail("malformed .npy header (dimension " + it->str() + ")");
    a.shape.push_back(std::stoll(it->str()));
  }
  if (a.item_size() == 0) throw fail("unsupported dtype '" + a.dtype + "'");
  const size_t data_start = start + header_len, available = bytes.size() - data_start;
  const int64_t nbytes = claimed_bytes(a.shape, a.item_size(), available);
  if (nbytes < 0) throw fail("truncated: its shape claims more data than the " + std::to_string(available) + " bytes it has");
  a.data = bytes.substr(data_start, nbytes);
  return a;
}

NpyArray load_npy(const std::string& path) { return from_npy_bytes(read_file_bytes(path), path); }
void save_npy(const std::string& path, const NpyArray& a) { write_file_atomic(path, to_npy_bytes(a)); }

// ---- zip (the subset numpy writes: stored or deflated members, no zip64 on write) ----
namespace {

void put16(std::string& s, uint32_t v) { s += char(v & 0xff), s += char((v >> 8) & 0xff); }
void put32(std::string& s, uint32_t v) { put16(s, v & 0xffff), put16(s, v >> 16); }
uint32_t get16(const std::string& s, size_t at) {
  return static_cast<unsigned char>(s[at]) | static_cast<unsigned char>(s[at + 1]) << 8;
}
uint32_t get32(const std::string& s, size_t at) { return get16(s, at) | get16(s, at + 2) << 16; }

std::string deflate_raw(const std::string& in) {
  z_stream z{};
  if (deflateInit2(&z, Z_DEFAULT_COMPRESSION, Z_DEFLATED, -MAX_WBITS, 8, Z_DEFAULT_STRATEGY) != Z_OK)
    throw IoError("zlib init failed");
  std::string out(deflateBound(&z, static_cast<uLong>(in.size())), '\0');
  z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(in.data()));
  z.avail_in = static_cast<uInt>(in.size());
  z.next_out = reinterpret_cast<Bytef*>(out.data());
  z.avail_out = static_cast<uInt>(out.size());
  int rc = deflate(&z, Z_FINISH);
  out.resize(z.total_out);
  deflateEnd(&z);
  if (rc != Z_STREAM_END) throw IoError("deflate failed");
  return out;
}

std::string inflate_raw(const std::string& in, size_t out_size, const std::string& origin) {
  std::string out(out_size, '\0');
  z_stream z{};
  if (inflateInit2(&z, -MAX_WBITS) != Z_OK) throw IoError(origin + ": zlib init failed");
  z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(in.data()));
  z.avail_in = static_cast<uInt>(in.size());
  z.next_out = reinterpret_cast<Bytef*>(out.data());
  z.avail_out = static_cast<uInt>(out.size());
  int rc = inflate(&z, Z_FINISH);
  inflateEnd(&z);
  if (rc != Z_STREAM_END) throw IoError(origin + ": corrupt deflated member");
  return out;
}

}  // namespace

void save_npz(const std::string& path, const std::map<std::string, NpyArray>& arrays, bool compress) {
  std::string out, central;
  uint16_t count = 0;
  for (const auto& [name, array] : arrays) {
    std::string member = name + ".npy", data = to_npy_bytes(array);
    if (data.size() >= 0xffffffffu || out.size() >= 0xffffffffu)
      throw IoError(path + ": member '" + name + "' too large for a zip without zip64");
    uint32_t crc = crc32_of(data.data(), data.size()), offset = static_cast<uint32_t>(out.size());
    const std::string stored = compress ? deflate_raw(data) : data;
    auto common = [&](std::string& s) {
      put16(s, 20), put16(s, 0), put16(s, compress ? 8 : 0), put16(s, 0), put16(s, 0x21);  // version, flags, method, time, date
      put32(s, crc), put32(s, static_cast<uint32_t>(stored.size())), put32(s, static_cast<uint32_t>(data.size()));
      put16(s, static_cast<uint32_t>(member.size())), put16(s, 0);
    };
    put32(out, 0x04034b50);
    common(out);
    out += member + stored;
    put32(central, 0x02014b50);
    put16(central, 20);
    common(central);
    put16(central, 0), put16(central, 0), put16(central, 0), put32(central, 0), put32(central, offset);
    central += member;
    ++count;
  }
  uint32_t central_offset = static_cast<uint32_t>(out.size());
  out += central;
  put32(out, 0x06054b50), put16(out, 0), put16(out, 0), put16(out, count), put16(out, count);
  put32(out, static_cast<uint32_t>(central.size())), put32(out, central_offset), put16(out, 0);
  write_file_atomic(path, out);
}

std::map<std::string, NpyArray> load_npz(const std::string& path) {
  std::string bytes = read_file_bytes(path);
  auto fail = [&](const std::string& why) { return IoError(path + ": " + why); };
  if (bytes.size() < 22 || get32(bytes, 0) != 0x04034b50) throw fail("not an .npz (zip) file");
  // Walk the central directory (found from the end-of-central-directory record).
  size_t eocd = bytes.size() - 22;
  while (eocd > 0 && get32(bytes, eocd) != 0x06054b50) --eocd;
  if (get32(bytes, eocd) != 0x06054b50) throw fail("truncated .npz (no zip directory)");
  size_t entries = get16(bytes, eocd + 10), at = get32(bytes, eocd + 16);
  std::map<std::string, NpyArray> out;
  for (size_t e = 0; e < entries; ++e) {
    if (at + 46 > bytes.size() || get32(bytes, at) != 0x02014b50) throw fail("corrupt zip directory");
    uint32_t method = get16(bytes, at + 10), crc = get32(bytes, at + 16);
    size_t csize = get32(bytes, at + 20), usize = get32(bytes, at + 24);
    size_t name_len = get16(bytes, at + 28), extra_len = get16(bytes, at + 30), comment_len = get16(bytes, at + 32);
    size_t local = get32(bytes, at + 42);
    std::string name = bytes.substr(at + 46, name_len);
    at += 46 + name_len + extra_len + comment_len;
    if (csize == 0xffffffffu || usize == 0xffffffffu || local == 0xffffffffu)
      throw fail("zip64 members are not supported ('" + name + "')");
    if (local + 30 > bytes.size() || get32(bytes, local) != 0x04034b50) throw fail("corrupt zip member '" + name + "'");
    size_t data_at = local + 30 + get16(bytes, local + 26) + get16(bytes, local + 28);
    if (data_at + csize > bytes.size()) throw fail("truncated member '" + name + "'");
    if (usize > (method == 8 ? kMaxDeflateRatio * csize + 64 : csize))
      throw fail("member '" + name + "' claims " + std::to_string(usize) + " bytes, more than its " +
                 std::to_string(csize) + " stored bytes can hold");
    std::string raw = bytes.substr(data_at, csize);
    if (method == 8) raw = inflate_raw(raw, usize, path);
    else if (method != 0) throw fail("member '" + name + "' uses unsupported compression " + std::to_string(method));
    if (crc32_of(raw.data(), raw.size()) != crc) throw fail("CRC mismatch in member '" + name + "'");
    if (name.size() > 4 && name.compare(name.size() - 4, 4, ".npy") == 0) name.resize(name.size() - 4);
    out[name] = from_npy_bytes(raw, path + ":" + name);
  }
  return out;
}

}  // namespace s2dm
