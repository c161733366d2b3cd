#include "s2dm/experiment/report.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <sstream>

#include "s2dm/io/file_io.h"
#include "s2dm/io/image_io.h"
#include "s2dm/io/plot.h"
#include "report_tables.h"

namespace s2dm::experiment {
namespace fs = std::filesystem;

namespace {

using Color = std::array<uint8_t, 3>;
const std::vector<Color>& palette() {
  static const std::vector<Color> colors{{31, 119, 180}, {214, 39, 40},  {44, 160, 44},  {255, 127, 14},
                                         {148, 103, 189}, {140, 86, 75}, {227, 119, 194}, {127, 127, 127},
                                         {188, 189, 34},  {23, 190, 207}};
  return colors;
}
std::string css_color(const Color& c) {
  char buf[8];
  std::snprintf(buf, sizeof buf, "#%02x%02x%02x", c[0], c[1], c[2]);
  return buf;
}

std::string markdown(const Table& t) {
  std::ostringstream s;
  s << "### " << t.title << "\n\n|";
  for (const auto& h : t.header) s << " " << h << " |";
  s << "\n|";
  for (size_t i = 0; i < t.header.size(); ++i) s << (i == 0 ? " :-- |" : " --: |");
  s << "\n";
  for (const auto& row : t.rows) {
    s << "|";
    for (const auto& c : row) s << " " << c << " |";
    s << "\n";
  }
  if (!t.note.empty()) s << "\n" << t.note << "\n";
  return s.str();
}

std::string escape_html(const std::string& text) {
  std::string out;
  for (char c : text) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      default: out += c;
    }
  }
  return out;
}

std::string html(const Table& t) {
  std::ostringstream s;
  s << "<table>\n<caption>" << escape_html(t.title) << "</caption>\n<tr>";
  for (const auto& h : t.header) s << "<th>" << escape_html(h) << "</th>";
  s << "</tr>\n";
  for (const auto& row : t.rows) {
    s << "<tr>";
    for (size_t i = 0; i < row.size(); ++i) s << (i == 0 ? "<th>" : "<td>") << escape_html(row[i]) << (i == 0 ? "</th>" : "</td>");
    s << "</tr>\n";
  }
  s << "</table>\n";
  if (!t.note.empty()) s << "<p class=\"note\">" << escape_html(t.note) << "</p>\n";
  return s.str();
}

std::string base64(const std::string& bytes) {
  static const char* alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  out.reserve((bytes.size() + 2) / 3 * 4);
  for (size_t i = 0; i < bytes.size(); i += 3) {
    uint32_t v = static_cast<uint8_t>(bytes[i]) << 16;
    if (i + 1 < bytes.size()) v |= static_cast<uint8_t>(bytes[i + 1]) << 8;
    if (i + 2 < bytes.size()) v |= static_cast<uint8_t>(bytes[i + 2]);
    out += alphabet[(v >> 18) & 63];
    out += alphabet[(v >> 12) & 63];
    out += i + 1 < bytes.size() ? alphabet[(v >> 6) & 63] : '=';
    out += i + 2 < bytes.size() ? alphabet[v & 63] : '=';
  }
  return out;
}

// An <img> holding the PNG itself, so the page needs no other file.
std::string inline_png(const std::string& path, const std::string& alt) {
  return "<img alt=\"" + escape_html(alt) + "\" src=\"data:image/png;base64," + base64(read_file_bytes(path)) + "\">";
}

std::string legend(const std::vector<std::pair<std::string, Color>>& items) {
  std::string s = "<div class=\"legend\">";
  for (const auto& [name, color] : items)
    s += "<span><i style=\"background:" + css_color(color) + "\"></i>" + escape_html(name) + "</span>";
  return s + "</div>\n";
}

// A file-name-safe version of a label.
std::string slug(const std::string& text) {
  std::string out;
  for (char c : text) out += std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '-' ? c : '_';
  return out.empty() ? "all" : out;
}

struct Figure {
  std::string title, png, caption;
  std::vector<std::pair<std::string, Color>> legend;
};

// Metric against NFE, one plot per model and group, one line per table row (means over seeds).
std::vector<Figure> metric_plots(const ReportSpec& e, const std::vector<ResultRow>& rows, const std::string& dir) {
  const Arranged a = arrange(rows, e.table_rows);
  std::vector<Figure> figures;
  for (const auto& group : a.groups)
    for (const auto& model : a.models) {
      auto it = a.grids.find({model, group});
      if (it == a.grids.end()) continue;
      const ResultGrid& g = it->second;
      std::vector<Series> series;
      Figure f;
      for (size_t i = 0; i < g.labels.size(); ++i) {
        const Color color = palette()[i % palette().size()];
        Series line{{}, {}, color, false}, dots{{}, {}, color, true};
        for (int s : g.steps) {
          auto v = g.values.find({g.labels[i], s});
          if (v == g.values.end()) continue;
          line.x.push_back(static_cast<double>(g.nfe.at({g.labels[i], s})));
          line.y.push_back(spread(v->second).mean);
        }
        dots.x = line.x, dots.y = line.y;
        series.push_back(line), series.push_back(dots);
        f.legend.push_back({g.labels[i], color});
      }
      f.title = model + (group.empty() ? "" : " — " + group);
      f.png = dir + "/" + slug(e.name + "_" + model + (group.empty() ? "" : "_" + group)) + "_metric_vs_nfe.png";
      f.caption = a.metric + " (log scale, vertical) against NFE (horizontal), mean over seeds.";
      write_png(f.png, line_plot(series, 560, 320, true));
      figures.push_back(f);
    }
  return figures;
}

// Per model, the metric and the error against the reference solution against NFE, one line per
// sampler through its best recipe at each NFE (the grid and options a user would pick); only where
// some sampler has several recipes at one NFE (else metric_plots draws the same).
std::vector<Figure> best_recipe_plots(const ReportSpec& e, const std::vector<ResultRow>& rows, const std::string& dir) {
  std::vector<std::string> models;
  for (const auto& r : rows) add_unique(models, r.model);
  std::vector<Figure> figures;
  for (const auto& model : models)
    for (const bool errors : {false, true}) {
      std::vector<std::string> samplers;
      std::map<std::string, std::map<int64_t, std::map<std::string, std::vector<double>>>> values;  // sampler, NFE, recipe
      std::string metric;
      for (const auto& r : rows) {
        if (r.model != model || (errors && r.reference_rms < 0)) continue;
        add_unique(samplers, r.sampler);
        values[r.sampler][r.nfe][recipe_of(r)].push_back(errors ? r.reference_rms : r.value);
        metric = errors ? "RMS against the reference solution" : r.metric;
      }
      bool choices = false;
      for (const auto& [sampler, by_nfe] : values)
        for (const auto& [nfe, recipes] : by_nfe) choices = choices || recipes.size() > 1;
      if (!choices) continue;
      Figure f;
      std::vector<Series> series;
      for (size_t i = 0; i < samplers.size(); ++i) {
        const Color color = palette()[i % palette().size()];
        Series line{{}, {}, color, false};
        for (const auto& [nfe, recipes] : values[samplers[i]]) {
          double best = std::numeric_limits<double>::infinity();
          for (const auto& [recipe, v] : recipes) best = std::min(best, spread(v).mean);
          line.x.push_back(static_cast<double>(nfe));
          line.y.push_back(best);
        }
        Series dots = line;
        dots.markers = true;
        series.push_back(line), series.push_back(dots);
        f.legend.push_back({samplers[i], color});
      }
      f.title = model + ": each sampler's best recipe" + (errors ? ", error against the reference solution" : "");
      f.png = dir + "/" + slug(e.name + "_" + model) + (errors ? "_best_error_vs_nfe.png" : "_best_metric_vs_nfe.png");
      f.caption = metric + " (log scale, vertical) against NFE (horizontal): at each NFE the lowest mean over seeds of "
                  "the sampler's recipes (grids, options).";
      write_png(f.png, line_plot(series, 560, 320, true));
      figures.push_back(f);
    }
  return figures;
}

// L_simple during training (a moving average over 5 logged points), one line per trained model.
std::optional<Figure> loss_plot(const std::map<std::string, std::string>& metrics, const std::string& dir,
                                const std::string& name) {
  std::vector<Series> series;
  Figure f;
  size_t i = 0;
  for (const auto& [model, path] : metrics) {
    std::ifstream in(path);
    if (!in) continue;
    std::vector<double> steps, losses;
    for (std::string line; std::getline(in, line);) {
      auto j = nlohmann::json::parse(line, nullptr, false);
      if (j.is_discarded() || !j.contains("step")) continue;
      // (DDPM's L_simple, or the whole loss of EDM's networks, which log no terms of it)
      const char* key = j.contains("loss_simple") ? "loss_simple" : "loss";
      if (!j.contains(key)) continue;
      steps.push_back(j["step"].get<double>());
      losses.push_back(j[key].get<double>());
    }
    if (steps.empty()) continue;
    Series s{steps, {}, palette()[i++ % palette().size()], false};
    for (size_t k = 0; k < losses.size(); ++k) {
      const size_t from = k >= 4 ? k - 4 : 0;
      double sum = 0;
      for (size_t m = from; m <= k; ++m) sum += losses[m];
      s.y.push_back(sum / static_cast<double>(k - from + 1));
    }
    f.legend.push_back({model, s.color});
    series.push_back(s);
  }
  if (series.empty()) return std::nullopt;
  f.title = "training loss";
  f.png = dir + "/" + slug(name) + "_training_loss.png";
  f.caption = "L_simple (log scale) against the training step, moving average over 5 logged points.";
  write_png(f.png, line_plot(series, 560, 320, true));
  return f;
}

std::string figure_html(const Figure& f) {
  return "<figure>" + inline_png(f.png, f.title) + "<figcaption><b>" + escape_html(f.title) + "</b> " +
         escape_html(f.caption) + legend(f.legend) + "</figcaption></figure>\n";
}

const char* kStyle = R"(body{font-family:sans-serif;margin:2em auto;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:1em 0 .3em}caption{font-weight:bold;text-align:left;padding:.3em 0}
th,td{border:1px solid #bbb;padding:.25em .6em}td{text-align:right;font-variant-numeric:tabular-nums}
.note{font-size:.85em;color:#555;margin:0 0 1.5em}figure{display:inline-block;margin:.5em;vertical-align:top}
figcaption{font-size:.85em;max-width:560px}.legend span{margin-right:1em;white-space:nowrap}
.legend i{display:inline-block;width:.8em;height:.8em;margin-right:.3em}.grids img{image-rendering:pixelated;width:256px}
)";

}  // namespace

std::string results_csv(const std::vector<ResultRow>& rows) {
  std::set<std::string> keys;
  for (const auto& r : rows)
    for (const auto& [k, v] : r.setting) keys.insert(k);
  keys.erase("sampler"), keys.erase("steps");
  auto quote = [](const std::string& s) {
    if (s.find_first_of(",\"\n") == std::string::npos) return s;
    std::string q = "\"";
    for (char c : s) q += c == '"' ? std::string("\"\"") : std::string(1, c);
    return q + "\"";
  };
  std::ostringstream out;
  out << "model,sampler,steps";
  for (const auto& k : keys) out << "," << quote(k);
  out << ",seed,nfe,metric,value,kid_mean,kid_std,num_samples,sample_seconds,metric_seconds,reference_rms,key\n";
  out.precision(8);
  for (const auto& r : rows) {
    out << quote(r.model) << "," << quote(r.sampler) << "," << r.steps;
    for (const auto& k : keys) {
      auto it = r.setting.find(k);
      out << "," << (it == r.setting.end() ? "" : quote(it->second));
    }
    out << "," << r.seed << "," << r.nfe << "," << quote(r.metric) << "," << r.value << ",";
    if (r.kid_mean >= 0) out << r.kid_mean << "," << r.kid_std;
    else out << ",";
    out << "," << r.num_samples << "," << format_number(r.sample_seconds, 3) << "," << format_number(r.metric_seconds, 3)
        << ",";
    if (r.reference_rms >= 0) out << r.reference_rms;
    out << "," << r.key << "\n";
  }
  return out.str();
}

namespace {

std::string markdown_document(const ReportSpec& e, const std::vector<ResultRow>& rows, const std::vector<Table>& tables) {
  std::ostringstream s;
  s << "# " << e.name << "\n\n";
  if (rows.empty()) return s.str() + "No results yet.\n";
  s << rows.size() << " results, " << rows.front().num_samples << " samples each, " << rows.front().metric
    << " against the reference '" << e.reference << "'.\n\n";
  for (const auto& t : tables) s << markdown(t) << "\n";
  return s.str();
}

}  // namespace

std::string results_markdown(const ReportSpec& e, const std::vector<ResultRow>& rows) {
  return markdown_document(e, rows, build_tables(e, rows));
}

void write_report(const ReportSpec& e, const ReportInputs& in) {
  const std::string plots = e.out + "/plots", report = e.out + "/report";
  fs::create_directories(plots);
  fs::create_directories(report);
  write_file_atomic(e.out + "/results.csv", results_csv(in.rows));
  const auto tables = build_tables(e, in.rows);
  write_file_atomic(e.out + "/results.md", markdown_document(e, in.rows, tables));

  std::ostringstream h;
  h << "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>" << escape_html(e.name)
    << " — s2dm report</title>\n<style>" << kStyle << "</style></head><body>\n<h1>" << escape_html(e.name) << "</h1>\n";
  for (const auto& line : in.notes) h << "<p>" << escape_html(line) << "</p>\n";
  h << "<h2>Results</h2>\n";
  if (in.rows.empty()) h << "<p>No results yet.</p>\n";
  for (const auto& t : tables) h << html(t);

  if (!in.rows.empty()) {
    h << "<h2>Metric against network evaluations</h2>\n";
    for (const auto& f : metric_plots(e, in.rows, plots)) h << figure_html(f);
    for (const auto& f : best_recipe_plots(e, in.rows, plots)) h << figure_html(f);
  }
  if (auto f = loss_plot(in.training_metrics, plots, e.name)) h << "<h2>Training</h2>\n" << figure_html(*f);
  if (!in.grid_plots.empty()) {
    h << "<h2>Learned grids</h2>\n";
    for (const auto& [label, png] : in.grid_plots) {
      const std::string copy = plots + "/" + slug(e.name + "_" + label) + "_grid.png";
      if (fs::absolute(png) != fs::absolute(copy)) fs::copy_file(png, copy, fs::copy_options::overwrite_existing);
      Figure f{label, copy,
               "Top, against t (log scale): for the score-optimal grid the estimated corrector cost between "
               "neighbouring noise levels; for a dp grid the error of one first-order step between neighbouring "
               "candidate levels. Below: the grid for the smallest step count, the uniform grid and the quadratic grid.",
               {{"this grid", {0, 0, 0}}, {"uniform", {140, 140, 140}}, {"quad", {40, 80, 200}}}};
      h << figure_html(f);
    }
  }
  if (!in.tuning_plots.empty()) {
    h << "<h2>Skip-Tuning search</h2>\n";
    for (const auto& [label, png] : in.tuning_plots) {
      const std::string copy = plots + "/" + slug(e.name + "_" + label) + "_tuning.png";
      if (fs::absolute(png) != fs::absolute(copy)) fs::copy_file(png, copy, fs::copy_options::overwrite_existing);
      Figure f{label, copy,
               "The proxy distance (few samples, the same initial noise for every candidate) against ρ_bottom; the "
               "square marks the winner, measured on the full metric in the tables.",
               {{"proxy", {200, 30, 30}}, {"winner", {0, 0, 0}}}};
      h << figure_html(f);
    }
  }
  // Sample grids of the first seed: one row per setting, one column per model.
  std::vector<std::string> models, settings;
  std::map<std::pair<std::string, std::string>, std::string> grid_of;
  for (const auto& r : in.rows) {
    if (r.seed != in.rows.front().seed || r.grid_png.empty() || !fs::exists(r.grid_png)) continue;
    std::string label = "sampler=" + r.sampler + ", steps=" + std::to_string(r.steps);
    for (const auto& [k, v] : r.setting)
      if (k != "sampler" && k != "steps") label += ", " + k + "=" + v;
    add_unique(models, r.model);
    add_unique(settings, label);
    grid_of[{label, r.model}] = r.grid_png;
  }
  if (!settings.empty()) {
    h << "<h2>Samples (seed " << in.rows.front().seed << ")</h2>\n<table class=\"grids\"><tr><th></th>";
    for (const auto& m : models) h << "<th>" << escape_html(m) << "</th>";
    h << "</tr>\n";
    for (const auto& s : settings) {
      h << "<tr><th>" << escape_html(s) << "</th>";
      for (const auto& m : models) {
        auto it = grid_of.find({s, m});
        h << "<td>" << (it == grid_of.end() ? "–" : inline_png(it->second, m + " " + s)) << "</td>";
      }
      h << "</tr>\n";
    }
    h << "</table>\n";
  }
  h << "<p class=\"note\">Written by s2dm run from " << escape_html(e.path) << "; results.csv and results.md hold the "
    << "same numbers.</p>\n</body></html>\n";
  write_file_atomic(report + "/index.html", h.str());
}

}  // namespace s2dm::experiment
