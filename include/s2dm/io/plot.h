#pragma once
// Minimal line plots rendered to an image, with numeric tick labels (axis names and legends are
// left to the page that shows them): enough for curves in reports.
#include <array>
#include <vector>

#include "s2dm/io/image_io.h"

namespace s2dm {

struct Series {
  std::vector<double> x, y;
  std::array<uint8_t, 3> color{0, 0, 0};
  bool markers = false;  // draw each point as a small square instead of joining them
};

// Draws the series in a white frame; axes span the data (y on a log scale when log_y). Plots
// at least 100 pixels high get tick labels.
Image line_plot(const std::vector<Series>& series, int width = 640, int height = 360, bool log_y = false);

}  // namespace s2dm
