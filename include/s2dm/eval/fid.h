#pragma once
// Fréchet distance and KID between feature sets (docs/algorithms.md §6), their statistics files,
// the feature spaces (the FID Inception, data classifiers) and the one measurement that s2dm fid,
// training-time evaluation and the experiment driver share.
#include <torch/types.h>

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "s2dm/eval/inception.h"

namespace s2dm::eval {

// μ [D] and Σ [D,D] in float64 (Σ with N-1), as pytorch-fid and EDM store them.
struct FeatureStats {
  torch::Tensor mu, sigma;
  int64_t count = 0;  // samples behind the statistics (0 when read from a file)
};

// Statistics of features [N, D]; warns when N is below D (Σ is then singular).
FeatureStats feature_stats(const torch::Tensor& features);

// ‖μ₁-μ₂‖² + tr Σ₁ + tr Σ₂ - 2 tr √(Σ₁Σ₂), in float64 through a symmetric eigendecomposition
// (never a general sqrtm).
// Throws DataError for mismatched shapes or non-finite statistics.
double frechet_distance(const FeatureStats& a, const FeatureStats& b);

// KID: the unbiased MMD² with the cubic kernel (x·y/d + 1)³, over `subsets` random subsets of
// `subset_size` (capped at the smaller set), mean and standard deviation.
struct Kid {
  double mean = 0, std = 0;
};
Kid kernel_inception_distance(const torch::Tensor& a, const torch::Tensor& b, int subsets = 100,
                              int64_t subset_size = 1000, uint64_t seed = 0);

// .npz with mu and sigma (float64). load_stats reads plain and compressed files (np.savez,
// np.savez_compressed); float32 statistics are widened. Throws IoError / DataError.
void save_stats(const std::string& path, const FeatureStats& stats, bool compress = false);
FeatureStats load_stats(const std::string& path);

// A feature space: maps a batch of uint8 images [N, C, H, W] (on the network's device) to
// features [N, D].
struct FeatureExtractor {
  std::string name;  // "inception", or the classifier's name ("fmnist-cnn")
  std::function<torch::Tensor(const torch::Tensor& images)> fn;
  bool is_inception() const { return name == "inception"; }
  // "FID[inception]" or "FD[fmnist-cnn]": what a distance in this space is called.
  std::string distance_label() const { return (is_inception() ? "FID[" : "FD[") + name + "]"; }
};

// A feature network by name, the part of a feature spec before ':'. Adding one = its loader and a
// line in fid.cpp's registry; parsing, errors, the CLI and the experiment driver read it.
struct FeatureNetworkInfo {
  std::string name;   // "inception", "classifier"
  std::string forms;  // the specs that name it, for errors and help
  // Where its weights are looked for when a spec names none; nullptr: a spec must name them.
  std::string (*default_weights)();
  std::string default_weights_hint;  // how to get them where they are missing
  bool named_by_its_weights;  // the space's name (FD[name]) is read from the weights file
  bool trained_here;          // the experiment driver trains it on the data when a spec names no weights
  FeatureExtractor (*load)(const std::string& weights, const torch::Device& device);
};
const std::vector<FeatureNetworkInfo>& feature_networks();

// A feature space as named in configs and on the command line, NETWORK[:WEIGHTS]:
//   inception            the FID Inception with its default weights
//   inception:WEIGHTS    ... with these weights (.safetensors)
//   classifier:PATH      a classifier trained by s2dm train-classifier
//   classifier           (the experiment driver only) a classifier it trains on the data itself
struct FeatureSpec {
  const FeatureNetworkInfo* network = &feature_networks().front();
  std::string path;  // empty: the network's default weights / a classifier still to train
  // The weights file: `path`, else the network's default; empty when it has none.
  std::string weights() const;
  std::string text() const;
};
// Throws ConfigError naming the accepted forms.
FeatureSpec parse_feature_spec(const std::string& text);
// Every network's forms, for messages and help: "inception, inception:WEIGHTS.safetensors or classifier:PATH".
std::string feature_spec_forms();

// Where the Inception weights are looked for by default: $S2DM_INCEPTION_WEIGHTS, else
// data/inception/pt_inception-2015-12-05-6726825d.safetensors.
std::string default_inception_weights();
// The feature space of a spec whose weights exist (not a classifier still to train), loaded onto
// `device`. Throws ConfigError for an unknown spec or one without weights, CheckpointError for
// unreadable weights.
FeatureExtractor make_feature_extractor(const FeatureSpec& spec, const torch::Device& device);
FeatureExtractor make_feature_extractor(const std::string& spec, const torch::Device& device);

// Features of uint8 images [N, C, H, W] (CPU), in batches on `device`, with progress; float64.
torch::Tensor extract_features(const FeatureExtractor& extractor, const torch::Tensor& images, int64_t batch,
                               const torch::Device& device, bool show_progress = true);

// ---- Measuring: what the experiment driver, training-time evaluation and s2dm fid share ----

// An image set in a feature space: its statistics, and its features when computed from images
// (undefined when the statistics were read from a file).
struct FeatureSet {
  FeatureStats stats;
  torch::Tensor features;
};
FeatureSet feature_set(const FeatureExtractor& extractor, const torch::Tensor& images, int64_t batch,
                       const torch::Device& device, bool show_progress = true);

// The Fréchet distance between two sets, and KID when `kid` is asked for and both have features.
struct Distance {
  double fd = 0;
  std::optional<Kid> kid;
};
Distance distance(const FeatureSet& a, const FeatureSet& b, bool kid = true);

}  // namespace s2dm::eval
