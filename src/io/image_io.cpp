#include "s2dm/io/image_io.h"

#include <algorithm>
#include <cmath>

#include "s2dm/core/errors.h"
#include "s2dm/io/file_io.h"

#define STB_IMAGE_IMPLEMENTATION
#define STBI_ONLY_PNG
#define STBI_ONLY_JPEG
#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#pragma GCC diagnostic ignored "-Wsign-compare"
#pragma GCC diagnostic ignored "-Wunused-parameter"
#endif
#include <stb_image.h>
#include <stb_image_write.h>
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif

namespace s2dm {
namespace {

void append_to_string(void* context, void* data, int size) {
  static_cast<std::string*>(context)->append(static_cast<const char*>(data), static_cast<size_t>(size));
}

uint32_t big_endian32(const std::string& s, size_t at) {
  uint32_t v = 0;
  for (size_t i = 0; i < 4; ++i) v = v << 8 | static_cast<unsigned char>(s[at + i]);
  return v;
}

// Debian 12's stb_image (2022-09) writes past a Huffman table's arrays when a JPEG's DHT segment
// declares more than 256 codes (later stb refuses it; found by fuzz/): refuse it first. Walks
// the marker segments, skipping the entropy-coded data after each start of scan.
void check_jpeg_huffman_tables(const std::string& bytes, const std::string& path) {
  auto byte = [&](size_t at) { return static_cast<unsigned char>(bytes[at]); };
  for (size_t at = 2; at + 4 <= bytes.size();) {
    if (byte(at) != 0xff) return;  // not a marker where one belongs: stb says why
    const unsigned marker = byte(at + 1);
    if (marker == 0xff) {  // fill byte
      ++at;
      continue;
    }
    if (marker == 0xd9) return;  // end of image
    if (marker == 0x01 || (marker >= 0xd0 && marker <= 0xd7)) {  // no length
      at += 2;
      continue;
    }
    const size_t end = at + 2 + (byte(at + 2) << 8 | byte(at + 3));
    if (end > bytes.size()) return;
    if (marker == 0xc4)  // DHT: tables of (class and id, 16 code counts, the codes' symbols)
      for (size_t table = at + 4; table + 17 <= end;) {
        size_t codes = 0;
        for (size_t i = 1; i <= 16; ++i) codes += byte(table + i);
        if (codes > 256)
          throw DataError(path + ": corrupt JPEG (a Huffman table declares " + std::to_string(codes) +
                          " codes, at most 256 exist)");
        table += 17 + codes;
      }
    at = end;
    if (marker == 0xda)  // start of scan: its data runs to the next marker (0xff not followed by 0 or a restart)
      while (at + 1 < bytes.size() && !(byte(at) == 0xff && byte(at + 1) != 0 && !(byte(at + 1) >= 0xd0 && byte(at + 1) <= 0xd7)))
        ++at;
  }
}

// stb allocates what a file claims before reading it (a PNG chunk's length, the pixels of the
// width and height in the header): check those claims against the file first.
void check_size_claims(const std::string& bytes, int channels, const std::string& path) {
  static const std::string kPngSignature("\x89PNG\r\n\x1a\n", 8);
  if (bytes.compare(0, 8, kPngSignature) == 0) {
    // Chunks: length (4 bytes, big-endian), type (4), data, CRC (4).
    for (size_t at = 8; at + 8 <= bytes.size();) {
      const uint64_t length = big_endian32(bytes, at);
      if (length + 12 > bytes.size() - at)
        throw DataError(path + ": PNG chunk claims " + std::to_string(length) + " bytes, more than the file holds (truncated?)");
      if (bytes.compare(at + 4, 4, "IEND") == 0) break;
      at += 12 + length;
    }
  }
  if (bytes.compare(0, 2, "\xff\xd8") == 0) check_jpeg_huffman_tables(bytes, path);
  int width = 0, height = 0, stored = 0;
  if (!stbi_info_from_memory(reinterpret_cast<const stbi_uc*>(bytes.data()), static_cast<int>(bytes.size()), &width,
                             &height, &stored))
    return;  // stbi_load says why
  // Deflate (PNG) expands at most ~1032-fold, JPEG less; a few MB of slack for small files.
  const int64_t limit = kMaxDeflateRatio * bytes.size() + (16 << 20);
  if (claimed_bytes({width, height}, std::max(stored, channels), limit) < 0)
    throw DataError(path + ": claims " + std::to_string(width) + "x" + std::to_string(height) +
                    " pixels, more than its " + std::to_string(bytes.size()) + " bytes can hold (corrupt?)");
}

}  // namespace

Image read_image(const std::string& path, int channels) {
  std::string bytes;
  try {
    bytes = read_file_bytes(path);
  } catch (const IoError& e) {
    throw DataError(e.what());
  }
  check_size_claims(bytes, channels, path);
  int w = 0, h = 0, c = 0;
  unsigned char* data = stbi_load_from_memory(reinterpret_cast<const stbi_uc*>(bytes.data()),
                                              static_cast<int>(bytes.size()), &w, &h, &c, channels);
  if (!data) throw DataError(path + ": cannot decode image (" + stbi_failure_reason() + ")");
  Image img{w, h, channels, std::vector<uint8_t>(data, data + static_cast<size_t>(w) * h * channels)};
  stbi_image_free(data);
  return img;
}

void write_png(const std::string& path, const Image& image) {
  std::string bytes;
  if (!stbi_write_png_to_func(append_to_string, &bytes, image.width, image.height, image.channels,
                              image.pixels.data(), image.width * image.channels))
    throw IoError(path + ": PNG encoding failed");
  write_file_atomic(path, bytes);
}

std::string encode_jpeg(const Image& image, int quality) {
  std::string bytes;
  if (!stbi_write_jpg_to_func(append_to_string, &bytes, image.width, image.height, image.channels,
                              image.pixels.data(), quality))
    throw IoError("JPEG encoding failed");
  return bytes;
}

Image crop(const Image& image, int x, int y, int width, int height) {
  if (x < 0 || y < 0 || width <= 0 || height <= 0 || x + width > image.width || y + height > image.height)
    throw DataError("crop box outside the image (" + std::to_string(image.width) + "x" +
                    std::to_string(image.height) + ")");
  Image out{width, height, image.channels, std::vector<uint8_t>(static_cast<size_t>(width) * height * image.channels)};
  for (int r = 0; r < height; ++r)
    std::copy_n(image.row(y + r) + static_cast<size_t>(x) * image.channels,
                static_cast<size_t>(width) * image.channels, out.row(r));
  return out;
}

Image center_crop_square(const Image& image) {
  int side = std::min(image.width, image.height);
  return crop(image, (image.width - side) / 2, (image.height - side) / 2, side, side);
}

namespace {

// One axis of PIL's separable resampling with the triangle filter: for each output index the
// first contributing input index and normalised weights.
struct Taps {
  std::vector<int> first;
  std::vector<std::vector<double>> weights;
};

Taps triangle_taps(int in_size, int out_size) {
  const double scale = static_cast<double>(in_size) / out_size;
  const double support = std::max(scale, 1.0);  // triangle support 1, widened when shrinking
  Taps taps;
  for (int i = 0; i < out_size; ++i) {
    double center = (i + 0.5) * scale;
    int lo = std::max(0, static_cast<int>(std::floor(center - support + 0.5)));
    int hi = std::min(in_size, static_cast<int>(std::floor(center + support + 0.5)));
    std::vector<double> w;
    double total = 0;
    for (int j = lo; j < hi; ++j) {
      double x = (j + 0.5 - center) / std::max(scale, 1.0);
      double v = std::max(0.0, 1.0 - std::abs(x));
      w.push_back(v);
      total += v;
    }
    for (auto& v : w) v /= total;
    taps.first.push_back(lo);
    taps.weights.push_back(std::move(w));
  }
  return taps;
}

uint8_t clamp_byte(double v) { return static_cast<uint8_t>(std::clamp(std::lround(v), 0L, 255L)); }

}  // namespace

Image resize(const Image& image, int width, int height) {
  if (width == image.width && height == image.height) return image;
  const int c = image.channels;
  auto tx = triangle_taps(image.width, width);
  auto ty = triangle_taps(image.height, height);
  // Horizontal pass into doubles, then vertical.
  std::vector<double> mid(static_cast<size_t>(image.height) * width * c);
  for (int y = 0; y < image.height; ++y)
    for (int x = 0; x < width; ++x)
      for (int k = 0; k < c; ++k) {
        double s = 0;
        for (size_t j = 0; j < tx.weights[x].size(); ++j)
          s += tx.weights[x][j] * image.row(y)[static_cast<size_t>(tx.first[x] + j) * c + k];
        mid[(static_cast<size_t>(y) * width + x) * c + k] = s;
      }
  Image out{width, height, c, std::vector<uint8_t>(static_cast<size_t>(width) * height * c)};
  for (int y = 0; y < height; ++y)
    for (int x = 0; x < width; ++x)
      for (int k = 0; k < c; ++k) {
        double s = 0;
        for (size_t j = 0; j < ty.weights[y].size(); ++j)
          s += ty.weights[y][j] * mid[(static_cast<size_t>(ty.first[y] + j) * width + x) * c + k];
        out.row(y)[static_cast<size_t>(x) * c + k] = clamp_byte(s);
      }
  return out;
}

Image tile_images(const uint8_t* nhwc, int n, int height, int width, int channels, int cols, int padding) {
  if (n <= 0) return Image{};
  if (cols <= 0) cols = static_cast<int>(std::ceil(std::sqrt(static_cast<double>(n))));
  int rows = (n + cols - 1) / cols;
  Image grid{cols * (width + padding) + padding, rows * (height + padding) + padding, channels, {}};
  grid.pixels.assign(static_cast<size_t>(grid.width) * grid.height * channels, 255);
  const size_t image_bytes = static_cast<size_t>(height) * width * channels;
  for (int i = 0; i < n; ++i) {
    int gx = padding + (i % cols) * (width + padding), gy = padding + (i / cols) * (height + padding);
    for (int r = 0; r < height; ++r)
      std::copy_n(nhwc + i * image_bytes + static_cast<size_t>(r) * width * channels,
                  static_cast<size_t>(width) * channels, grid.row(gy + r) + static_cast<size_t>(gx) * channels);
  }
  return grid;
}

}  // namespace s2dm
