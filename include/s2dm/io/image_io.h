#pragma once
// 8-bit images in memory (HWC), PNG/JPEG decoding, PNG writing, PIL-style resizing and grids.
#include <cstdint>
#include <string>
#include <vector>

namespace s2dm {

struct Image {
  int width = 0, height = 0, channels = 0;
  std::vector<uint8_t> pixels;  // row-major HWC
  uint8_t* row(int y) { return pixels.data() + static_cast<size_t>(y) * width * channels; }
  const uint8_t* row(int y) const { return pixels.data() + static_cast<size_t>(y) * width * channels; }
};

// Decodes a PNG or JPEG file as `channels` (1 = grey, 3 = RGB). Throws DataError naming the file.
Image read_image(const std::string& path, int channels);
// Writes a PNG atomically. Throws IoError.
void write_png(const std::string& path, const Image& image);
// JPEG bytes of an image (quality 1-100), for tests and caches.
std::string encode_jpeg(const Image& image, int quality = 95);

Image crop(const Image& image, int x, int y, int width, int height);
// The largest centred square.
Image center_crop_square(const Image& image);
// Resizes with PIL's antialiased bilinear (triangle) filter: when shrinking, the filter
// widens with the scale so every source pixel contributes (as torchvision's Resize on PIL).
Image resize(const Image& image, int width, int height);

// Tiles n images of h×w×c (uint8 NHWC, contiguous) into one grid with `padding` pixels
// between them; `cols` = 0 picks ceil(sqrt(n)).
Image tile_images(const uint8_t* nhwc, int n, int height, int width, int channels, int cols = 0,
                int padding = 2);

}  // namespace s2dm
