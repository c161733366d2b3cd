#include "s2dm/eval/fid.h"

#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>

#include "s2dm/eval/classifier.h"
#include "s2dm/core/compat.h"
#include "s2dm/core/errors.h"
#include "s2dm/io/npy_tensor.h"
#include "s2dm/core/progress.h"

namespace s2dm::eval {

FeatureStats feature_stats(const torch::Tensor& features) {
  if (features.dim() != 2 || features.size(0) < 2)
    throw DataError("feature statistics need at least 2 feature vectors, got shape " + c10::str(features.sizes()));
  auto f = features.to(torch::kFloat64);
  const int64_t n = f.size(0), d = f.size(1);
  if (n < d)
    spdlog::warn("{} samples for {}-d features: the covariance is singular and the distance biased "
                 "(50 000 samples is the standard)",
                 n, d);
  FeatureStats s;
  s.mu = f.mean(0);
  auto centred = f - s.mu;
  s.sigma = centred.t().matmul(centred) / static_cast<double>(n - 1);
  s.count = n;
  return s;
}

namespace {

// tr √(Σ₁Σ₂) for symmetric positive semi-definite Σ₁, Σ₂ [D, D] (float64): the sum of √ of the
// eigenvalues of Σ₁Σ₂. With Σ₁ = V Λ Vᵀ kept to its numerically nonzero eigenvalues (rank r, by
// NumPy's matrix_rank tolerance), these are the eigenvalues of the [r, r] matrix
// K = Λ^½ Vᵀ Σ₂ V Λ^½, and zeros. Covariances of fewer samples than dimensions, the usual case for
// FD of a few thousand samples in 2048-d, have r < D: the D - r eigenvalues that are 0 exactly
// come out of a [D, D] product (√Σ₁ Σ₂ √Σ₁, or LᵀΣ₂L with Σ₁'s Cholesky factor) as ±1e-16 of its
// norm, and their square roots, ~1e-8 each, took 7 digits of the distance; K has none of them.
// The covariance of lower rank plays Σ₁ (the trace is symmetric in the two), so that K has full
// rank in general.
double trace_sqrt_product(const torch::Tensor& s1, const torch::Tensor& s2) {
  auto sym = [](const torch::Tensor& m) { return (m + m.t()) / 2; };
  auto [lambda1, v1] = torch::linalg_eigh(sym(s1), "L");
  auto [lambda2, v2] = torch::linalg_eigh(sym(s2), "L");
  auto nonzero = [](const torch::Tensor& lambda) {
    const double tol = std::max(lambda.max().item<double>(), 0.0) * static_cast<double>(lambda.size(0)) *
                       std::numeric_limits<double>::epsilon();
    return lambda > tol;
  };
  auto kept1 = nonzero(lambda1), kept2 = nonzero(lambda2);
  const bool first = kept1.sum().item<int64_t>() <= kept2.sum().item<int64_t>();
  const auto& lambda = first ? lambda1 : lambda2;
  const auto& kept = first ? kept1 : kept2;
  if (kept.sum().item<int64_t>() == 0) return 0.0;
  const auto root = (first ? v1 : v2).index({torch::indexing::Slice(), kept}) * lambda.index({kept}).sqrt();  // V Λ^½
  const auto k = root.t().matmul(first ? s2 : s1).matmul(root);
  return torch::linalg_eigvalsh(sym(k), "L").clamp_min(0).sqrt().sum().item<double>();
}

}  // namespace

double frechet_distance(const FeatureStats& a, const FeatureStats& b) {
  if (a.mu.dim() != 1 || a.sigma.dim() != 2 || a.sigma.size(0) != a.mu.size(0) || a.sigma.size(1) != a.mu.size(0))
    throw DataError("malformed statistics: mu " + c10::str(a.mu.sizes()) + ", sigma " + c10::str(a.sigma.sizes()));
  if (!a.mu.sizes().equals(b.mu.sizes()) || !a.sigma.sizes().equals(b.sigma.sizes()))
    throw DataError("statistics of different dimensions: " + c10::str(a.mu.sizes()) + " vs " + c10::str(b.mu.sizes()));
  auto mu1 = a.mu.to(torch::kFloat64), mu2 = b.mu.to(torch::kFloat64);
  auto s1 = a.sigma.to(torch::kFloat64), s2 = b.sigma.to(torch::kFloat64);
  for (const auto* t : {&mu1, &mu2, &s1, &s2})
    if (!torch::isfinite(*t).all().item<bool>()) throw DataError("statistics contain NaN or Inf");
  const double tr_covmean = trace_sqrt_product(s1, s2);
  const double diff = (mu1 - mu2).square().sum().item<double>();
  return diff + s1.trace().item<double>() + s2.trace().item<double>() - 2 * tr_covmean;
}

Kid kernel_inception_distance(const torch::Tensor& fa, const torch::Tensor& fb, int subsets, int64_t subset_size,
                              uint64_t seed) {
  if (fa.dim() != 2 || fb.dim() != 2 || fa.size(1) != fb.size(1))
    throw DataError("KID needs two feature sets of the same dimension");
  auto a = fa.to(torch::kFloat64), b = fb.to(torch::kFloat64);
  const int64_t m = std::min({subset_size, a.size(0), b.size(0)});
  if (m < 2) throw DataError("KID needs at least 2 samples in each set");
  const double d = static_cast<double>(a.size(1));
  auto gen = at::detail::createCPUGenerator(seed);
  auto kernel = [&](const torch::Tensor& x, const torch::Tensor& y) { return (x.matmul(y.t()) / d + 1).pow(3); };
  std::vector<double> values;
  for (int s = 0; s < subsets; ++s) {
    auto x = a.index_select(0, torch::randperm(a.size(0), gen, torch::kLong).slice(0, 0, m));
    auto y = b.index_select(0, torch::randperm(b.size(0), gen, torch::kLong).slice(0, 0, m));
    auto kxx = kernel(x, x), kyy = kernel(y, y), kxy = kernel(x, y);
    const double md = static_cast<double>(m);
    double mmd = (kxx.sum() - kxx.diagonal().sum()).item<double>() / (md * (md - 1)) +
                 (kyy.sum() - kyy.diagonal().sum()).item<double>() / (md * (md - 1)) -
                 2 * kxy.sum().item<double>() / (md * md);
    values.push_back(mmd);
  }
  Kid k;
  for (double v : values) k.mean += v / values.size();
  for (double v : values) k.std += (v - k.mean) * (v - k.mean) / values.size();
  k.std = std::sqrt(k.std);
  return k;
}

namespace {

// Statistics are float64; float32 files are widened.
torch::Tensor from_npy(const NpyArray& a, const std::string& origin) {
  if (a.dtype != "<f8" && a.dtype != "<f4") throw DataError(origin + ": expected float64 or float32, got dtype " + a.dtype);
  return to_tensor(a, origin).to(torch::kFloat64);
}

}  // namespace

void save_stats(const std::string& path, const FeatureStats& s, bool compress) {
  save_npz(path, {{"mu", to_npy_array(s.mu.to(torch::kFloat64))}, {"sigma", to_npy_array(s.sigma.to(torch::kFloat64))}},
           compress);
}

FeatureStats load_stats(const std::string& path) {
  auto arrays = load_npz(path);
  if (!arrays.count("mu") || !arrays.count("sigma"))
    throw DataError(path + ": not a statistics file (needs arrays 'mu' and 'sigma')");
  FeatureStats s;
  s.mu = from_npy(arrays.at("mu"), path + ":mu");
  s.sigma = from_npy(arrays.at("sigma"), path + ":sigma");
  if (s.mu.dim() != 1 || s.sigma.dim() != 2 || s.sigma.size(0) != s.mu.size(0) || s.sigma.size(1) != s.mu.size(0))
    throw DataError(path + ": mu " + c10::str(s.mu.sizes()) + " and sigma " + c10::str(s.sigma.sizes()) +
                    " do not fit together");
  if (s.mu.size(0) == 0) throw DataError(path + ": statistics of 0-dimensional features");
  if (!torch::isfinite(s.mu).all().item<bool>() || !torch::isfinite(s.sigma).all().item<bool>())
    throw DataError(path + ": statistics contain NaN or Inf");
  // A covariance is symmetric and positive semi-definite; a file whose sigma is not would give a
  // meaningless (even negative) distance. The tolerances allow for rounding: a float32 file's
  // rank-deficient covariance (fewer samples than dimensions) has eigenvalues a few 1e-6 of its
  // largest entry below zero.
  const double scale = s.sigma.abs().max().item<double>();
  const double asymmetry = (s.sigma - s.sigma.t()).abs().max().item<double>();
  if (asymmetry > 1e-5 * scale)
    throw DataError(path + ": sigma is not symmetric (|sigma - sigma^T| up to " + std::to_string(asymmetry) + ")");
  // Positive semi-definite: sigma + eps I has a Cholesky factor.
  const auto shifted = (s.sigma + s.sigma.t()) / 2 +
                       torch::eye(s.sigma.size(0), s.sigma.options()) * std::max(1e-4 * scale, 1e-300);
  if (torch::diagonal(s.sigma).min().item<double>() < 0 || std::get<1>(torch::linalg_cholesky_ex(shifted)).item<int>() != 0)
    throw DataError(path + ": sigma is not positive semi-definite (not a covariance)");
  return s;
}

std::string default_inception_weights() {
  const char* env = std::getenv("S2DM_INCEPTION_WEIGHTS");
  return env ? env : "data/inception/pt_inception-2015-12-05-6726825d.safetensors";
}

namespace {

FeatureExtractor load_inception(const std::string& weights, const torch::Device& device) {
  FidInception net;
  load_inception_weights(net, weights);
  net->to(device);
  net->eval();
  return {"inception", [net](const torch::Tensor& images) mutable {
            return net->forward(images.to(torch::kFloat32) / 255.0);  // pytorch-fid takes [0, 1]
          }};
}

FeatureExtractor load_classifier_features(const std::string& weights, const torch::Device& device) {
  auto net = load_classifier(weights);
  net->to(device);
  const int channels = net->spec().channels, size = net->spec().image_size;
  return {net->spec().name, [net, channels, size](torch::Tensor images) mutable {
            // Grey images stored as RGB (a folder of PNGs is read as RGB) are grey to a one-channel
            // classifier; grey images are RGB to a three-channel one, as to Inception.
            if (images.size(1) == 3 && channels == 1 && torch::equal(images.select(1, 0), images.select(1, 1)) &&
                torch::equal(images.select(1, 1), images.select(1, 2)))
              images = images.narrow(1, 0, 1);
            else if (images.size(1) == 1 && channels == 3)
              images = images.expand({-1, 3, -1, -1});
            if (images.size(1) != channels || images.size(2) != size || images.size(3) != size)
              throw DataError("the classifier '" + net->spec().name + "' takes " + std::to_string(channels) + "x" +
                              std::to_string(size) + "x" + std::to_string(size) + " images, got " +
                              c10::str(images.sizes().slice(1)));
            return net->features(data::to_model_range(images));
          }};
}

}  // namespace

const std::vector<FeatureNetworkInfo>& feature_networks() {
  static const std::vector<FeatureNetworkInfo> registry{
      {"inception", "inception, inception:WEIGHTS.safetensors", default_inception_weights,
       "scripts/convert_fid_inception.py makes them; or set $S2DM_INCEPTION_WEIGHTS", false, false, load_inception},
      {"classifier", "classifier:PATH", nullptr, "", true, true, load_classifier_features},
  };
  return registry;
}

std::string feature_spec_forms() {
  std::string forms;
  const auto& networks = feature_networks();
  for (size_t i = 0; i < networks.size(); ++i)
    forms += (i == 0 ? "" : i + 1 == networks.size() ? " or " : ", ") + networks[i].forms;
  return forms;
}

std::string FeatureSpec::weights() const {
  return !path.empty() || !network->default_weights ? path : network->default_weights();
}

std::string FeatureSpec::text() const { return path.empty() ? network->name : network->name + ":" + path; }

FeatureSpec parse_feature_spec(const std::string& text) {
  FeatureSpec spec;
  const auto colon = text.find(':');
  const std::string name = text.substr(0, colon);
  const auto& networks = feature_networks();
  const auto found = std::find_if(networks.begin(), networks.end(), [&](const auto& n) { return n.name == name; });
  if (found == networks.end()) throw ConfigError("features '" + text + "': expected " + feature_spec_forms());
  spec.network = &*found;
  if (colon != std::string::npos) {
    spec.path = text.substr(colon + 1);
    if (spec.path.empty()) throw ConfigError("features '" + text + "': the path after ':' is empty");
  }
  return spec;
}

FeatureExtractor make_feature_extractor(const std::string& spec, const torch::Device& device) {
  return make_feature_extractor(parse_feature_spec(spec), device);
}

FeatureExtractor make_feature_extractor(const FeatureSpec& spec, const torch::Device& device) {
  const auto weights = spec.weights();
  if (weights.empty())
    throw ConfigError("features '" + spec.text() + "' needs the network's file: " + spec.network->name + ":PATH");
  return spec.network->load(weights, device);
}

torch::Tensor extract_features(const FeatureExtractor& extractor, const torch::Tensor& images, int64_t batch,
                               const torch::Device& device, bool show_progress) {
  if (images.dim() != 4 || (images.size(1) != 1 && images.size(1) != 3))
    throw DataError("images must be [N, 1|3, H, W], got " + c10::str(images.sizes()));
  if (batch < 1) throw ConfigError("feature extraction: batch = " + std::to_string(batch) + " must be at least 1");
  torch::NoGradGuard no_grad;
  compat::NoTf32 fp32;  // (no autocast either: nothing here enables it)
  const int64_t n = images.size(0);
  Progress progress(extractor.name + " features", n, "img");
  std::vector<torch::Tensor> out;
  for (int64_t i = 0; i < n; i += batch) {
    out.push_back(extractor.fn(images.slice(0, i, std::min(n, i + batch)).to(device)).to(torch::kCPU, torch::kFloat64));
    if (show_progress) progress.update(std::min(n, i + batch));
  }
  if (show_progress) progress.finish();
  return torch::cat(out);
}

FeatureSet feature_set(const FeatureExtractor& extractor, const torch::Tensor& images, int64_t batch,
                       const torch::Device& device, bool show_progress) {
  FeatureSet set;
  set.features = extract_features(extractor, images, batch, device, show_progress);
  set.stats = feature_stats(set.features);
  return set;
}

Distance distance(const FeatureSet& a, const FeatureSet& b, bool kid) {
  Distance d;
  d.fd = frechet_distance(a.stats, b.stats);
  if (kid && a.features.defined() && b.features.defined()) d.kid = kernel_inception_distance(a.features, b.features);
  return d;
}

}  // namespace s2dm::eval
