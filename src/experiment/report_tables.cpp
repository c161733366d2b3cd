// The result tables of an experiment report (results.md and report/index.html show them).
#include "report_tables.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <iterator>
#include <optional>
#include <set>

namespace s2dm::experiment {

std::string format_number(double x, int decimals) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", decimals, x);
  return buf;
}

Spread spread(const std::vector<double>& v) {
  Spread s;
  s.n = v.size();
  if (v.empty()) return s;
  for (double x : v) s.mean += x;
  s.mean /= static_cast<double>(v.size());
  if (v.size() > 1) {
    double ss = 0;
    for (double x : v) ss += (x - s.mean) * (x - s.mean);
    s.std = std::sqrt(ss / static_cast<double>(v.size() - 1));
  }
  return s;
}

namespace {

// What a table's rows are (the sampler, or the swept key in experiment.table_rows).
std::string row_label(const ResultRow& row, const std::string& rows_key) {
  if (rows_key == "sampler") return row.sampler;
  auto it = row.setting.find(rows_key);
  return it == row.setting.end() ? "" : it->second;
}

// The swept values other than the rows' key and steps: what tells one table of a model from another.
std::string group_of(const ResultRow& row, const std::string& rows_key) {
  std::string label;
  for (const auto& [k, v] : row.setting) {
    if (k == rows_key || k == "steps") continue;
    label += (label.empty() ? "" : ", ") + k + "=" + v;
  }
  return label;
}

}  // namespace

Arranged arrange(const std::vector<ResultRow>& rows, const std::string& rows_key) {
  Arranged a;
  for (const auto& r : rows) {
    add_unique(a.models, r.model);
    const std::string group = group_of(r, rows_key);
    add_unique(a.groups, group);
    auto& g = a.grids[{r.model, group}];
    const std::string label = row_label(r, rows_key);
    add_unique(g.labels, label);
    add_unique(g.steps, r.steps);
    g.values[{label, r.steps}].push_back(r.value);
    g.by_seed[{label, r.steps}][r.seed] = r.value;
    g.nfe[{label, r.steps}] = r.nfe;
    if (a.metric.empty()) a.metric = r.metric;
  }
  for (auto& [k, g] : a.grids) std::sort(g.steps.begin(), g.steps.end());
  return a;
}

std::string recipe_of(const ResultRow& r) {
  std::string label = r.setting.count("sampler") ? "" : "sampler=" + r.sampler;
  for (const auto& [k, v] : r.setting)
    if (k != "steps") label += (label.empty() ? "" : " ") + k + "=" + v;
  return label;
}

namespace {

// Decimals that show about four significant digits of `smallest` (0: none), two at least.
int decimals_for(double smallest) {
  const double magnitude = smallest > 0 ? std::floor(std::log10(smallest)) : 0.0;
  return static_cast<int>(std::clamp(3.0 - magnitude, 2.0, 8.0));
}

// Decimals for a table: those of its smallest value.
int table_decimals(const ResultGrid& g) {
  double smallest = 0;
  for (const auto& [cell, values] : g.values) {
    const double m = std::abs(spread(values).mean);
    if (m > 0 && (smallest == 0 || m < smallest)) smallest = m;
  }
  return decimals_for(smallest);
}

// Mean ± sample standard deviation over seeds (the mean alone for one seed).
std::string cell_text(const std::vector<double>& values, int decimals) {
  if (values.empty()) return "–";
  const auto s = spread(values);
  return s.n > 1 ? format_number(s.mean, decimals) + " ± " + format_number(s.std, decimals) : format_number(s.mean, decimals);
}

std::vector<std::string> steps_header(const std::string& first, const ResultGrid& g) {
  std::vector<std::string> header{first};
  for (int s : g.steps) header.push_back(std::to_string(s) + " steps");
  return header;
}

// A model's values: rows × steps, with the NFE of each cell in the note.
Table values_table(const Arranged& a, const std::string& title, const ResultGrid& g, const std::string& seeds) {
  Table t;
  t.title = title;
  t.header = steps_header(a.metric + " ↓", g);
  const int decimals = table_decimals(g);
  std::string nfe;
  for (const auto& label : g.labels) {
    std::vector<std::string> row{label};
    std::string list;
    for (int s : g.steps) {
      auto v = g.values.find({label, s});
      row.push_back(v == g.values.end() ? "–" : cell_text(v->second, decimals));
      auto n = g.nfe.find({label, s});
      if (n != g.nfe.end()) list += (list.empty() ? "" : "/") + std::to_string(n->second);
    }
    t.rows.push_back(row);
    nfe += (nfe.empty() ? "" : "; ") + label + " " + list;
  }
  t.note = "NFE: " + nfe + "." + seeds;
  return t;
}

// The relative improvement of `model` over the baseline, marked † where it is within the spread.
Table improvement_table(const ReportSpec& e, const Arranged& a, const std::string& title, const std::string& model,
                        const ResultGrid& g, const ResultGrid& base) {
  Table t;
  t.title = title + ": relative improvement";
  t.header = steps_header(e.table_rows, g);
  bool any_within = false;
  for (const auto& label : g.labels) {
    std::vector<std::string> row{label};
    for (int s : g.steps) {
      auto m = g.values.find({label, s});
      auto b = base.values.find({label, s});
      if (m == g.values.end() || b == base.values.end()) {
        row.push_back("–");
        continue;
      }
      const auto sm = spread(m->second), sb = spread(b->second);
      std::string text = (sb.mean > sm.mean ? "+" : "") + format_number(100.0 * (sb.mean - sm.mean) / sb.mean, 1) + " %";
      if (sm.n > 1 && sb.n > 1 && std::abs(sb.mean - sm.mean) <= std::max(sm.std, sb.std)) {
        text += " †";
        any_within = true;
      }
      row.push_back(text);
    }
    t.rows.push_back(row);
  }
  t.note = "(" + e.baseline + " − " + model + ") / " + e.baseline + " of " + a.metric + ": positive means " + model +
           " is better." +
           (any_within ? " † the difference is within the spread across seeds (|Δ| ≤ the larger standard deviation)." : "");
  return t;
}

// Seeds fix the initial noise of every image, so both models start from the same x_T: the
// per-seed differences are paired, and their spread is the sharper test.
Table paired_table(const ReportSpec& e, const std::string& title, const std::string& model, const ResultGrid& g,
                   const ResultGrid& base) {
  Table p;
  p.title = title + ": paired difference";
  p.header = steps_header(e.table_rows, g);
  const int decimals = table_decimals(g);
  for (const auto& label : g.labels) {
    std::vector<std::string> row{label};
    for (int s : g.steps) {
      auto m = g.by_seed.find({label, s});
      auto b = base.by_seed.find({label, s});
      std::vector<double> diffs;
      if (m != g.by_seed.end() && b != base.by_seed.end())
        for (const auto& [seed, value] : m->second)
          if (b->second.count(seed)) diffs.push_back(b->second.at(seed) - value);
      if (diffs.size() < 2) {
        row.push_back("–");
        continue;
      }
      const int better = static_cast<int>(std::count_if(diffs.begin(), diffs.end(), [](double x) { return x > 0; }));
      row.push_back(cell_text(diffs, decimals) + " (" + std::to_string(better) + "/" + std::to_string(diffs.size()) + ")");
    }
    p.rows.push_back(row);
  }
  p.note = "Δ = " + e.baseline + " − " + model + " per seed (the same initial noise for both), mean ± standard "
           "deviation over seeds; in brackets the seeds where " + model + " is better.";
  return p;
}

// A model's leaderboard: per NFE the recipe ranked first, by the mean metric or by the mean error
// against the reference solution (the other beside it), and the best recipe of another sampler,
// marked † where the two are within the spread across seeds. Nothing unless some NFE has two
// ranked recipes.
enum class RankBy { metric, error };
std::optional<Table> leaderboard_table(const std::string& model, const std::vector<ResultRow>& rows, RankBy rank_by) {
  struct Cell {
    std::string sampler;
    std::vector<double> values, errors;
    const std::vector<double>& ranked(RankBy by) const { return by == RankBy::metric ? values : errors; }
  };
  std::map<int64_t, std::map<std::string, Cell>> by_nfe;
  std::string metric;
  for (const auto& r : rows) {
    if (r.model != model) continue;
    auto& cell = by_nfe[r.nfe][recipe_of(r)];
    cell.sampler = r.sampler;
    cell.values.push_back(r.value);
    if (r.reference_rms >= 0) cell.errors.push_back(r.reference_rms);
    metric = r.metric;
  }
  // Stochastic samplers have no error: they take no part in the ranking by it.
  for (auto& entry : by_nfe)
    for (auto it = entry.second.begin(); it != entry.second.end();)
      it = it->second.ranked(rank_by).empty() ? entry.second.erase(it) : std::next(it);
  if (std::none_of(by_nfe.begin(), by_nfe.end(), [](const auto& n) { return n.second.size() > 1; })) return std::nullopt;
  Table t;
  t.title = model + ": the best recipe per NFE" + (rank_by == RankBy::error ? " by the error against the reference solution" : "");
  t.header = {"NFE", "best recipe", metric + " ↓", "RMS vs reference ↓", "best of another sampler", metric + " ↓",
              "RMS vs reference ↓"};
  const size_t ranked_column = rank_by == RankBy::metric ? 2 : 3;  // + 3 for another sampler's
  bool any_within = false;
  for (const auto& [nfe, recipes] : by_nfe) {
    if (recipes.empty()) continue;
    std::vector<std::pair<Spread, const std::pair<const std::string, Cell>*>> ranked;
    for (const auto& entry : recipes) ranked.push_back({spread(entry.second.ranked(rank_by)), &entry});
    std::sort(ranked.begin(), ranked.end(), [](const auto& a, const auto& b) { return a.first.mean < b.first.mean; });
    const Spread best_spread = ranked.front().first;
    const auto* best = ranked.front().second;
    const int decimals = decimals_for(std::abs(spread(best->second.values).mean));
    auto error_text = [](const std::vector<double>& errors) {
      return cell_text(errors, errors.empty() ? 2 : decimals_for(spread(errors).mean));
    };
    std::vector<std::string> row{std::to_string(nfe), best->first, cell_text(best->second.values, decimals),
                                 error_text(best->second.errors), "–", "–", "–"};
    const auto other = std::find_if(ranked.begin(), ranked.end(),
                                    [&](const auto& r) { return r.second->second.sampler != best->second.sampler; });
    if (other != ranked.end()) {
      row[4] = other->second->first;
      row[5] = cell_text(other->second->second.values, decimals);
      row[6] = error_text(other->second->second.errors);
      if (other->first.mean - best_spread.mean <= std::max(best_spread.std, other->first.std) && best_spread.n > 1) {
        row[ranked_column + 3] += " †";
        any_within = true;
      }
    }
    t.rows.push_back(row);
  }
  t.note = "Mean ± standard deviation over seeds." +
           std::string(any_within ? " † the two are within the spread across seeds (|Δ| ≤ the larger standard deviation)." : "");
  return t;
}

}  // namespace

std::vector<Table> build_tables(const ReportSpec& e, const std::vector<ResultRow>& rows) {
  const Arranged a = arrange(rows, e.table_rows);
  std::vector<Table> tables;
  const std::string seeds =
      e.num_seeds > 1 ? " (mean ± standard deviation over " + std::to_string(e.num_seeds) + " seeds)" : "";
  // The errors against the reference solutions, arranged as the metric is.
  std::vector<ResultRow> error_rows;
  for (auto r : rows)
    if (r.reference_rms >= 0) {
      r.value = r.reference_rms;
      r.metric = "RMS vs reference";
      error_rows.push_back(std::move(r));
    }
  const Arranged errors = arrange(error_rows, e.table_rows);
  for (const auto& group : a.groups) {
    const std::string in_group = group.empty() ? "" : " — " + group;
    for (const auto& model : a.models) {
      if (auto it = a.grids.find({model, group}); it != a.grids.end())
        tables.push_back(values_table(a, model + in_group, it->second, seeds));
      if (auto it = errors.grids.find({model, group}); it != errors.grids.end())
        tables.push_back(values_table(errors, model + in_group + ": error against the reference solution", it->second,
                                      seeds));
    }
    auto base = a.grids.find({e.baseline, group});
    if (e.baseline.empty() || base == a.grids.end()) continue;
    for (const auto& model : a.models) {
      auto it = a.grids.find({model, group});
      if (model == e.baseline || it == a.grids.end()) continue;
      const std::string title = model + " vs " + e.baseline + in_group;
      tables.push_back(improvement_table(e, a, title, model, it->second, base->second));
      if (e.num_seeds > 1) tables.push_back(paired_table(e, title, model, it->second, base->second));
    }
  }
  for (const auto& model : a.models)
    for (const RankBy by : {RankBy::metric, RankBy::error})
      if (auto board = leaderboard_table(model, rows, by)) tables.push_back(std::move(*board));
  return tables;
}

}  // namespace s2dm::experiment
