// s2dm <command> [options]: exit 0 on success, 2 on user error, 1 on internal failure, with a
// one-line "error:" message naming the culprit.
#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include <cstring>
#include <cxxopts.hpp>
#include <filesystem>
#include <iostream>
#include <map>
#include <string>

#include "commands.h"
#include "s2dm/core/config.h"
#include "s2dm/core/errors.h"

namespace {

struct Command {
  int (*run)(int, char**);
  const char* summary;
};

const std::map<std::string, Command>& commands() {
  static const std::map<std::string, Command> table{
      {"info", {s2dm::cli::info, "versions, device and threads"}},
      {"train", {s2dm::cli::train, "train a model from a config into a run directory"}},
      {"sample", {s2dm::cli::sample, "sample images from a checkpoint or safetensors weights"}},
      {"samplers", {s2dm::cli::samplers, "list the samplers, their options and NFE"}},
      {"fid", {s2dm::cli::fid, "FID (and KID) between two image sets or statistics files"}},
      {"fid-stats", {s2dm::cli::fid_stats, "write FID statistics (mu, sigma) of an image set"}},
      {"schedule", {s2dm::cli::schedule, "learn the score-optimal time schedule of a model"}},
      {"train-classifier", {s2dm::cli::train_classifier, "train the CNN behind --features classifier:PATH"}},
      {"run", {s2dm::cli::run, "run an experiment: train, sample sweeps, metrics, tables, plots, report"}},
      {"export", {s2dm::cli::export_weights, "write a checkpoint's weights as safetensors"}},
  };
  return table;
}

void usage(std::ostream& out) {
  out << "s2dm: diffusion models with skip-step training (S²-DMs) and fast samplers\n\n"
         "usage: s2dm <command> [options]   (s2dm <command> --help for its options)\n\ncommands:\n";
  for (const auto& [name, cmd] : commands()) out << "  " << name << std::string(name.size() < 18 ? 18 - name.size() : 1, ' ') << cmd.summary << "\n";
}

}  // namespace

int main(int argc, char** argv) {
  spdlog::set_pattern("[%H:%M:%S] %^%l%$ %v");
  if (argc < 2 || !std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h")) {
    usage(argc < 2 ? std::cerr : std::cout);
    return argc < 2 ? 2 : 0;
  }
  const std::string name = argv[1];
  auto it = commands().find(name);
  if (it == commands().end()) {
    std::vector<std::string> names;
    for (const auto& [n, c] : commands()) names.push_back(n);
    auto near = s2dm::closest_match(name, names);
    std::cerr << "error: unknown command '" << name << "'" << (near.empty() ? "" : " (did you mean '" + near + "'?)")
              << "; see s2dm --help\n";
    return 2;
  }
  try {
    return it->second.run(argc - 1, argv + 1);
  } catch (const s2dm::Error& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 2;
  } catch (const cxxopts::exceptions::exception& e) {
    std::cerr << "error: " << name << ": " << e.what() << "\n";
    return 2;
  } catch (const std::filesystem::filesystem_error& e) {
    // The file system refused (permissions, read-only, full, gone): the user's to fix, and
    // e.what() names the path.
    std::cerr << "error: " << e.what() << "\n";
    return 2;
  } catch (const c10::Error& e) {
    std::cerr << "error: (libtorch) " << e.what_without_backtrace() << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
}
