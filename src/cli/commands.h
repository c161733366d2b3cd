#pragma once
// The s2dm subcommands. Each parses its own options (cxxopts) and returns the exit code.
namespace s2dm::cli {

int info(int argc, char** argv);
int train(int argc, char** argv);
int sample(int argc, char** argv);
int samplers(int argc, char** argv);
int export_weights(int argc, char** argv);

}  // namespace s2dm::cli
