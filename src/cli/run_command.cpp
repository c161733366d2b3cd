// s2dm run: the experiment driver (experiment.h).
#include <cxxopts.hpp>
#include <string>
#include <vector>

#include "commands.h"
#include "s2dm/core/errors.h"
#include "s2dm/experiment/experiment.h"

namespace s2dm::cli {

int run(int argc, char** argv) {
  cxxopts::Options options("s2dm run",
                           "Run an experiment (configs/experiments/*.yaml): train the models it names, sample every "
                           "setting of its sweep with every seed, measure them, and write results.csv, results.md, "
                           "plots and report/index.html. Finished work is reused; an interrupted run continues.");
  options.add_options()("experiment", "experiment YAML", cxxopts::value<std::string>())(
      "dry-run", "print the plan and the time estimate, do nothing")(
      "only", "run only these models (comma-separated names); the report still shows every finished result",
      cxxopts::value<std::vector<std::string>>());
  options.parse_positional({"experiment"});
  options.positional_help("EXPERIMENT.yaml");
  auto r = parse_options(options, argc, argv);
  if (!r) return 0;
  if (!r->count("experiment")) throw UsageError("run: an experiment file is required (s2dm run EXPERIMENT.yaml)");
  const auto experiment = experiment::load_experiment((*r)["experiment"].as<std::string>());
  experiment::RunOptions opts;
  opts.dry_run = r->count("dry-run") > 0;
  if (r->count("only")) opts.only = (*r)["only"].as<std::vector<std::string>>();
  const auto summary = experiment::run_experiment(experiment, opts);
  return summary.interrupted ? 130 : 0;
}

}  // namespace s2dm::cli
