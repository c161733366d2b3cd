#include "s2dm/io/image_io.h"

#include <algorithm>
#include <climits>
#include <cmath>
#include <csetjmp>
#include <cstdio>

#include <jpeglib.h>  // (after <cstdio>: it uses FILE and size_t without including them)
#include <jerror.h>
#include <stb_image.h>  // (the implementations: stb.cpp)
#include <stb_image_write.h>

#include "s2dm/core/errors.h"
#include "s2dm/io/file_io.h"

namespace s2dm {
namespace {

void append_to_string(void* context, void* data, int size) {
  static_cast<std::string*>(context)->append(static_cast<const char*>(data), static_cast<size_t>(size));
}

// The pixels an image of width x height x channels needs, checked against what its file can
// hold before anything is allocated: deflate (PNG) expands at most ~1032-fold, JPEG less; a few
// MB of slack for small files.
void check_dimensions(int width, int height, int channels, size_t file_size, const std::string& path) {
  if (claimed_bytes({width, height}, channels, kMaxDeflateRatio * file_size + (16 << 20)) < 0)
    throw DataError(path + ": claims " + std::to_string(width) + "x" + std::to_string(height) + " pixels, more than its " +
                    std::to_string(file_size) + " bytes can hold (corrupt?)");
}

// PNG through stb_image, which allocates what a file claims before reading it (a chunk's
// length, the pixels of the header's size): those claims are checked first.
Image decode_png(const std::string& bytes, int channels, const std::string& path) {
  // Chunks: length (4 bytes, big-endian), type (4), data, CRC (4).
  for (size_t at = 8; at + 8 <= bytes.size();) {
    const uint64_t length = big_endian32(bytes.data() + at);
    if (length + 12 > bytes.size() - at)
      throw DataError(path + ": PNG chunk claims " + std::to_string(length) + " bytes, more than the file holds (truncated?)");
    if (bytes.compare(at + 4, 4, "IEND") == 0) break;
    at += 12 + length;
  }
  const auto* data = reinterpret_cast<const stbi_uc*>(bytes.data());
  const int size = static_cast<int>(std::min<size_t>(bytes.size(), INT_MAX));
  int w = 0, h = 0, stored = 0;
  if (stbi_info_from_memory(data, size, &w, &h, &stored)) check_dimensions(w, h, std::max(stored, channels), bytes.size(), path);
  unsigned char* pixels = stbi_load_from_memory(data, size, &w, &h, &stored, channels);
  if (!pixels) throw DataError(path + ": cannot decode PNG (" + stbi_failure_reason() + ")");
  Image image{w, h, channels, std::vector<uint8_t>(pixels, pixels + static_cast<size_t>(w) * h * channels)};
  stbi_image_free(pixels);
  return image;
}

// libjpeg reports an error through a callback that must not return: it jumps back to the
// setjmp of the step that called libjpeg, which then returns false.
struct JpegDecoder {
  jpeg_decompress_struct info;
  jpeg_error_mgr errors;
  std::jmp_buf jump;
  char message[JMSG_LENGTH_MAX] = "";

  bool created = false;  // false when libjpeg could not start (its message says why)

  JpegDecoder() {
    info.err = jpeg_std_error(&errors);
    errors.error_exit = jump_back;
    errors.emit_message = on_message;
    info.client_data = this;  // (kept by jpeg_create_decompress, which clears the rest)
    if (setjmp(jump) == 0) {
      jpeg_create_decompress(&info);
      created = true;
    }
  }
  ~JpegDecoder() {
    if (created) jpeg_destroy_decompress(&info);
  }
  JpegDecoder(const JpegDecoder&) = delete;
  JpegDecoder& operator=(const JpegDecoder&) = delete;

  [[noreturn]] static void jump_back(j_common_ptr info) {
    auto* self = static_cast<JpegDecoder*>(info->client_data);
    info->err->format_message(info, self->message);
    std::longjmp(self->jump, 1);
  }
  // Warnings (level -1) about damaged data are ignored, as PIL ignores them, except a file
  // that ends early: a truncated image is an error, not grey rows.
  static void on_message(j_common_ptr info, int level) {
    if (level < 0 && info->err->msg_code == JWRN_JPEG_EOF) jump_back(info);
  }
};

// The steps that call libjpeg, each with its own setjmp; what they change after it they reach
// through references, so a jump back clobbers nothing.
bool read_jpeg_header(JpegDecoder& d, const std::string& bytes) {
  if (setjmp(d.jump)) return false;
  jpeg_mem_src(&d.info, reinterpret_cast<const unsigned char*>(bytes.data()), static_cast<unsigned long>(bytes.size()));
  jpeg_read_header(&d.info, TRUE);
  return true;
}

bool read_jpeg_pixels(JpegDecoder& d, Image& image) {
  if (setjmp(d.jump)) return false;
  d.info.out_color_space = image.channels == 1 ? JCS_GRAYSCALE : JCS_RGB;
  jpeg_start_decompress(&d.info);
  if (d.info.output_components != image.channels) {  // (libjpeg converts to grey or RGB, or refuses)
    std::snprintf(d.message, sizeof d.message, "%d components where %d were asked for", d.info.output_components, image.channels);
    return false;
  }
  image.width = static_cast<int>(d.info.output_width);
  image.height = static_cast<int>(d.info.output_height);
  image.pixels.resize(static_cast<size_t>(image.width) * image.height * image.channels);
  while (d.info.output_scanline < d.info.output_height) {
    JSAMPROW row = image.row(static_cast<int>(d.info.output_scanline));
    jpeg_read_scanlines(&d.info, &row, 1);
  }
  jpeg_finish_decompress(&d.info);
  return true;
}

// JPEG through libjpeg(-turbo) with its defaults (accurate integer IDCT, fancy upsampling), as
// PIL decodes it for the reference FID pipelines.
Image decode_jpeg(const std::string& bytes, int channels, const std::string& path) {
  JpegDecoder decoder;
  if (!decoder.created) throw DataError(path + ": cannot start libjpeg (" + decoder.message + ")");
  if (!read_jpeg_header(decoder, bytes)) throw DataError(path + ": cannot decode JPEG (" + decoder.message + ")");
  // (libjpeg holds the file's components while decoding, more than asked for when read as grey)
  check_dimensions(static_cast<int>(std::min<JDIMENSION>(decoder.info.image_width, INT_MAX)),
                   static_cast<int>(std::min<JDIMENSION>(decoder.info.image_height, INT_MAX)),
                   std::max(channels, decoder.info.num_components), bytes.size(), path);
  Image image{0, 0, channels, {}};
  if (!read_jpeg_pixels(decoder, image)) throw DataError(path + ": cannot decode JPEG (" + decoder.message + ")");
  return image;
}

}  // namespace

Image read_image(const std::string& path, int channels) {
  std::string bytes;
  try {
    bytes = read_file_bytes(path);
  } catch (const IoError& e) {
    throw DataError(e.what());
  }
  static const std::string kPngSignature("\x89PNG\r\n\x1a\n", 8), kJpegStart("\xff\xd8", 2);
  if (bytes.compare(0, kPngSignature.size(), kPngSignature) == 0) return decode_png(bytes, channels, path);
  if (bytes.compare(0, kJpegStart.size(), kJpegStart) == 0) return decode_jpeg(bytes, channels, path);
  throw DataError(path + ": cannot decode image (neither a PNG nor a JPEG file)");
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
