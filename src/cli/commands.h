#pragma once
// The s2dm subcommands. Each parses its own options (cxxopts) and returns the exit code.
#include <cxxopts.hpp>
#include <optional>

namespace s2dm::cli {

// Parses argv; prints help and returns nullopt for --help. Rejects stray positional arguments.
std::optional<cxxopts::ParseResult> parse_options(cxxopts::Options& options, int argc, char** argv);

int info(int argc, char** argv);
int train(int argc, char** argv);
int sample(int argc, char** argv);
int samplers(int argc, char** argv);
int export_weights(int argc, char** argv);
int fid(int argc, char** argv);
int fid_stats(int argc, char** argv);
int train_classifier(int argc, char** argv);
int schedule(int argc, char** argv);
int run(int argc, char** argv);

}  // namespace s2dm::cli
