#include "s2dm/io/plot.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <string>
#include <cstdio>

namespace s2dm {
namespace {

// A 5x7 pixel font for tick labels: digits and what numbers are written with.
const std::map<char, std::array<const char*, 7>>& glyphs() {
  static const std::map<char, std::array<const char*, 7>> font{
      {'0', {"01110", "10001", "10011", "10101", "11001", "10001", "01110"}},
      {'1', {"00100", "01100", "00100", "00100", "00100", "00100", "01110"}},
      {'2', {"01110", "10001", "00001", "00010", "00100", "01000", "11111"}},
      {'3', {"11111", "00010", "00100", "00010", "00001", "10001", "01110"}},
      {'4', {"00010", "00110", "01010", "10010", "11111", "00010", "00010"}},
      {'5', {"11111", "10000", "11110", "00001", "00001", "10001", "01110"}},
      {'6', {"00110", "01000", "10000", "11110", "10001", "10001", "01110"}},
      {'7', {"11111", "00001", "00010", "00100", "01000", "01000", "01000"}},
      {'8', {"01110", "10001", "10001", "01110", "10001", "10001", "01110"}},
      {'9', {"01110", "10001", "10001", "01111", "00001", "00010", "01100"}},
      {'.', {"00000", "00000", "00000", "00000", "00000", "01100", "01100"}},
      {'-', {"00000", "00000", "00000", "11111", "00000", "00000", "00000"}},
      {'+', {"00000", "00100", "00100", "11111", "00100", "00100", "00000"}},
      {'e', {"00000", "00000", "01110", "10001", "11111", "10000", "01110"}},
  };
  return font;
}
constexpr int kGlyphWidth = 6, kGlyphHeight = 7;

void draw_text(Image& img, int x, int y, const std::string& text, const std::array<uint8_t, 3>& color) {
  for (char c : text) {
    auto it = glyphs().find(c);
    if (it != glyphs().end())
      for (int r = 0; r < kGlyphHeight; ++r)
        for (int k = 0; k < 5; ++k)
          if (it->second[r][k] == '1' && x + k >= 0 && x + k < img.width && y + r >= 0 && y + r < img.height)
            std::copy(color.begin(), color.end(), img.row(y + r) + 3 * (x + k));
    x += kGlyphWidth;
  }
}

std::string tick_text(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.4g", std::abs(v) < 1e-12 ? 0.0 : v);
  return buf;
}

// Round tick values (1, 2 or 5 × 10^k apart) inside [lo, hi].
std::vector<double> nice_ticks(double lo, double hi, int wanted) {
  const double raw = (hi - lo) / std::max(wanted, 1);
  const double magnitude = std::pow(10.0, std::floor(std::log10(raw)));
  double step = magnitude;
  for (double m : {1.0, 2.0, 5.0, 10.0})
    if (m * magnitude >= raw) {
      step = m * magnitude;
      break;
    }
  std::vector<double> ticks;
  for (double t = std::ceil(lo / step - 1e-9) * step; t <= hi + 1e-9 * step; t += step) ticks.push_back(t);
  return ticks;
}

}  // namespace

Image line_plot(const std::vector<Series>& series, int width, int height, bool log_y) {
  Image img{width, height, 3, std::vector<uint8_t>(static_cast<size_t>(width) * height * 3, 255)};
  // Tick labels where there is room for them.
  const bool labels = height >= 100;
  const int margin = 12, left = labels ? 46 : margin, bottom = labels ? 22 : margin;
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
  auto px = [&](double x) { return left + static_cast<int>(std::lround((x - x0) / (x1 - x0) * (width - left - margin - 1))); };
  auto py = [&](double y) {
    return height - 1 - bottom - static_cast<int>(std::lround((fy(y) - y0) / (y1 - y0) * (height - bottom - margin - 1)));
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
  const std::array<uint8_t, 3> frame{160, 160, 160}, ink{60, 60, 60};
  line(left, margin, left, height - 1 - bottom, frame);
  line(left, height - 1 - bottom, width - 1 - margin, height - 1 - bottom, frame);
  if (labels) {
    for (double t : nice_ticks(x0, x1, std::max(2, (width - left) / 90))) {
      const int x = px(t);
      line(x, height - 1 - bottom, x, height + 2 - bottom, frame);
      const std::string text = tick_text(t);
      draw_text(img, x - static_cast<int>(text.size()) * kGlyphWidth / 2, height - bottom + 5, text, ink);
    }
    // Log axes: ticks at round values of y itself (decades when the range spans several).
    std::vector<double> ys;
    if (!log_y) {
      ys = nice_ticks(y0, y1, 4);
    } else if (y1 - y0 > 1.5) {
      for (double d = std::ceil(y0); d <= y1; ++d) ys.push_back(std::pow(10.0, d));
    } else {
      ys = nice_ticks(std::pow(10.0, y0), std::pow(10.0, y1), 4);
    }
    int last = -100;
    for (double t : ys) {
      if (log_y && t <= 0) continue;
      const int y = py(t);
      if (std::abs(y - last) < kGlyphHeight + 4) continue;  // no overlapping labels
      last = y;
      line(left - 3, y, left, y, frame);
      const std::string text = tick_text(t);
      draw_text(img, left - 5 - static_cast<int>(text.size()) * kGlyphWidth, y - kGlyphHeight / 2, text, ink);
    }
  }
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
