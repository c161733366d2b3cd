#pragma once
// The result tables of an experiment report: results arranged per model and group as the papers
// lay them out (rows × steps, mean ± spread over seeds, comparisons with the baseline). The
// writers (report.cpp) turn them into Markdown and HTML.
#include <algorithm>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "s2dm/experiment/report.h"

namespace s2dm::experiment {

std::string format_number(double x, int decimals = 2);

template <class T>
void add_unique(std::vector<T>& list, const T& item) {
  if (std::find(list.begin(), list.end(), item) == list.end()) list.push_back(item);
}

// Mean and sample standard deviation (0 for a single value).
struct Spread {
  double mean = 0, std = 0;
  size_t n = 0;
};
Spread spread(const std::vector<double>& v);

// The results arranged as the papers' tables: per model and group, row (sampler) × steps → values.
struct ResultGrid {
  std::vector<std::string> labels;    // the rows, in order of first appearance
  std::vector<int> steps;             // increasing
  std::map<std::pair<std::string, int>, std::vector<double>> values;
  std::map<std::pair<std::string, int>, std::map<uint64_t, double>> by_seed;
  std::map<std::pair<std::string, int>, int64_t> nfe;
};
struct Arranged {
  std::vector<std::string> models, groups;  // in order of first appearance
  std::map<std::pair<std::string, std::string>, ResultGrid> grids;  // (model, group)
  std::string metric;
};
// The rows arranged by model and group; rows_key: the sampler or a swept key.
Arranged arrange(const std::vector<ResultRow>& rows, const std::string& rows_key);

// A unit's recipe: its sampler and swept values but the step count ("sampler=ipndm timesteps=dp").
std::string recipe_of(const ResultRow& r);

struct Table {
  std::string title;
  std::vector<std::string> header;
  std::vector<std::vector<std::string>> rows;
  std::string note;
};
// Per group: a table per model, the comparisons with the baseline and, with several seeds, the
// paired differences.
std::vector<Table> build_tables(const ReportSpec& e, const std::vector<ResultRow>& rows);

}  // namespace s2dm::experiment
