#include "s2dm/plot.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace s2dm {

Image line_plot(const std::vector<Series>& series, int width, int height, bool log_y) {
  Image img{width, height, 3, std::vector<uint8_t>(static_cast<size_t>(width) * height * 3, 255)};
  const int margin = 12;
  auto fy = [&](double y) { return log_y ? std::log10(std::max(y, 1e-300)) : y; };
  double x0 = std::numeric_limits<double>::max(), x1 = -x0, y0 = x0, y1 = -x0;
  for (const auto& s : series)
    for (size_t i = 0; i < s.x.size(); ++i) {
      if (!std::isfinite(s.x[i]) || !std::isfinite(fy(s.y[i]))) continue;
      x0 = std::min(x0, s.x[i]), x1 = std::max(x1, s.x[i]);
      y0 = std::min(y0, fy(s.y[i])), y1 = std::max(y1, fy(s.y[i]));
    }
  if (!(x1 > x0)) x1 = x0 + 1;
  if (!(y1 > y0)) y1 = y0 + 1;
  auto px = [&](double x) { return margin + static_cast<int>(std::lround((x - x0) / (x1 - x0) * (width - 2 * margin - 1))); };
  auto py = [&](double y) {
    return height - 1 - margin - static_cast<int>(std::lround((fy(y) - y0) / (y1 - y0) * (height - 2 * margin - 1)));
  };
  auto put = [&](int x, int y, const std::array<uint8_t, 3>& c) {
    if (x < 0 || y < 0 || x >= width || y >= height) return;
    std::copy(c.begin(), c.end(), img.row(y) + 3 * x);
  };
  auto line = [&](int xa, int ya, int xb, int yb, const std::array<uint8_t, 3>& c) {
    const int dx = std::abs(xb - xa), dy = -std::abs(yb - ya), sx = xa < xb ? 1 : -1, sy = ya < yb ? 1 : -1;
    for (int err = dx + dy;;) {  // Bresenham
      put(xa, ya, c);
      if (xa == xb && ya == yb) break;
      const int e2 = 2 * err;
      if (e2 >= dy) err += dy, xa += sx;
      if (e2 <= dx) err += dx, ya += sy;
    }
  };
  const std::array<uint8_t, 3> frame{160, 160, 160};
  line(margin, margin, margin, height - 1 - margin, frame);
  line(margin, height - 1 - margin, width - 1 - margin, height - 1 - margin, frame);
  for (const auto& s : series) {
    for (size_t i = 0; i < s.x.size(); ++i) {
      if (!std::isfinite(s.x[i]) || !std::isfinite(fy(s.y[i]))) continue;
      const int x = px(s.x[i]), y = py(s.y[i]);
      if (s.markers) {
        for (int a = -2; a <= 2; ++a)
          for (int b = -2; b <= 2; ++b) put(x + a, y + b, s.color);
      } else if (i > 0 && std::isfinite(fy(s.y[i - 1]))) {
        line(px(s.x[i - 1]), py(s.y[i - 1]), x, y, s.color);
      }
    }
  }
  return img;
}

}  // namespace s2dm
