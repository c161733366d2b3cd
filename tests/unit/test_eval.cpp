// The FID evaluator: Inception-v3 against torchvision (names, shapes, features under fixed
// weights), preprocessing, the Fréchet distance against closed forms and scipy, KID against a
// direct computation, statistics files.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <fstream>
#include <sstream>

#include "../test_util.h"
#include "s2dm/io/checkpoint.h"
#include "s2dm/eval/classifier.h"
#include "s2dm/data/data.h"
#include "s2dm/core/errors.h"
#include "s2dm/eval/fid.h"
#include "s2dm/eval/inception.h"
#include "s2dm/io/npy.h"
#include "s2dm/io/npy_tensor.h"

using namespace s2dm;
using namespace s2dm::eval;

namespace {

const std::string kFixtures = std::string(S2DM_SOURCE_DIR) + "/tests/fixtures/";

// (name, shape) of torchvision's Inception-v3 state_dict, in order.
std::vector<std::pair<std::string, std::vector<int64_t>>> torchvision_params() {
  std::ifstream in(kFixtures + "fid_inception_params.txt");
  std::vector<std::pair<std::string, std::vector<int64_t>>> out;
  std::string line;
  while (std::getline(in, line)) {
    auto space = line.find(' ');
    std::vector<int64_t> shape;
    std::stringstream dims(line.substr(space + 1));
    std::string d;
    while (std::getline(dims, d, ','))
      if (!d.empty()) shape.push_back(std::stoll(d));
    out.emplace_back(line.substr(0, space), shape);
  }
  return out;
}

torch::Tensor npy_tensor(const NpyArray& a) {
  auto t = torch::empty(a.shape, a.dtype == "<f8" ? torch::kFloat64 : torch::kFloat32);
  std::memcpy(t.data_ptr(), a.data.data(), a.data.size());
  return t;
}

// The fixture's deterministic weights (see tests/fixtures/make_inception_fixture.py).
torch::Tensor fixture_weight(const std::string& name, int64_t index, const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (auto s : shape) n *= s;
  auto v = torch::sin(0.37 * torch::arange(n, torch::kFloat64) + 1.3 * static_cast<double>(index)).reshape(shape);
  auto ends = [&](const std::string& suffix) {
    return name.size() >= suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
  };
  if (ends("running_var")) return 1.0 + 0.25 * v;
  if (ends("running_mean")) return 0.1 * v;
  if (ends("bn.weight")) return 1.0 + 0.1 * v;
  if (ends("bn.bias")) return 0.1 * v;
  if (ends("conv.weight")) return v * std::sqrt(2.0 / static_cast<double>(n / shape[0]));
  return 0.01 * v;
}

}  // namespace

TEST(Inception, ParameterNamesAndShapesMatchTorchvision) {
  FidInception net;
  auto ours = named_weights(*net);
  auto theirs = torchvision_params();
  ASSERT_EQ(ours.size(), theirs.size());
  std::map<std::string, std::vector<int64_t>> shapes;
  for (auto& [n, t] : ours) shapes[n] = t.sizes().vec();
  for (const auto& [name, shape] : theirs) {
    ASSERT_TRUE(shapes.count(name)) << name;
    EXPECT_EQ(shapes[name], shape) << name;
  }
}

TEST(Inception, FeaturesMatchTorchvisionWithFidPatches) {
  FidInception net;
  auto params = torchvision_params();
  NamedTensors weights;
  for (size_t i = 0; i < params.size(); ++i) {
    const auto& [name, shape] = params[i];
    if (name.find("num_batches_tracked") != std::string::npos) continue;
    weights.emplace_back(name, fixture_weight(name, static_cast<int64_t>(i), shape).to(torch::kFloat32));
  }
  s2dm::testing::TempDir dir;
  save_safetensors(dir / "w.safetensors", weights);
  load_inception_weights(net, dir / "w.safetensors");
  net->eval();
  torch::NoGradGuard no_grad;
  auto images = ((torch::sin(0.1 * torch::arange(2 * 3 * 32 * 32, torch::kFloat64)) + 1) / 2).reshape({2, 3, 32, 32});
  auto ours = net->forward(images.to(torch::kFloat32)).to(torch::kFloat64);
  auto expected = npy_tensor(load_npy(kFixtures + "fid_inception_features.npy"));
  ASSERT_EQ(ours.sizes(), expected.sizes());
  const double scale = expected.abs().max().item<double>();
  EXPECT_LT((ours - expected).abs().max().item<double>(), 1e-4 * scale) << "scale " << scale;
}

TEST(Inception, PreprocessingAsPytorchFid) {
  auto grey = torch::rand({2, 1, 8, 8});
  auto x = fid_preprocess(grey);
  ASSERT_EQ(x.sizes(), (std::vector<int64_t>{2, 3, 299, 299}));
  EXPECT_TRUE(torch::equal(x.select(1, 0), x.select(1, 2)));  // grey repeated
  // Bilinear, align_corners false: output pixel i samples input at (i + 0.5)·8/299 - 0.5.
  auto direct = torch::nn::functional::interpolate(
                    grey.expand({-1, 3, -1, -1}),
                    torch::nn::functional::InterpolateFuncOptions().size(std::vector<int64_t>{299, 299}).mode(torch::kBilinear).align_corners(false)) *
                    2 - 1;
  EXPECT_TRUE(torch::allclose(x, direct));
  const double pos = (150 + 0.5) * 8.0 / 299 - 0.5;  // row and column
  const int lo = static_cast<int>(std::floor(pos));
  const double f = pos - lo;
  auto g = grey[0][0].to(torch::kFloat64);
  auto row = (1 - f) * g[lo] + f * g[lo + 1];
  double value = ((1 - f) * row[lo] + f * row[lo + 1]).item<double>();
  EXPECT_NEAR(x[0][0][150][150].item<double>(), 2 * value - 1, 1e-5);
  EXPECT_GE(x.min().item<double>(), -1.0);
  FidInception net;
  EXPECT_EQ(net->forward(torch::rand({1, 3, 16, 16})).sizes(), (std::vector<int64_t>{1, 2048}));
}

TEST(Frechet, ClosedForms) {
  // Diagonal covariances: FD = ‖μ₁-μ₂‖² + Σ(√a_i - √b_i)².
  auto a = torch::tensor({1.0, 4.0, 9.0}, torch::kFloat64), b = torch::tensor({4.0, 1.0, 9.0}, torch::kFloat64);
  FeatureStats x{torch::tensor({0.0, 1.0, 2.0}, torch::kFloat64), torch::diag(a)};
  FeatureStats y{torch::tensor({1.0, 1.0, 0.0}, torch::kFloat64), torch::diag(b)};
  const double expected = 1 + 4 + 1 + 1 + 0;  // ‖Δμ‖² = 5; (1-2)² + (2-1)² + 0 = 2 -> 7
  EXPECT_NEAR(frechet_distance(x, y), 7.0, 1e-10) << expected;
  // The same under a common rotation.
  auto q = std::get<0>(torch::linalg_qr(torch::randn({3, 3}, torch::kFloat64)));
  FeatureStats xr{q.matmul(x.mu), q.matmul(x.sigma).matmul(q.t())}, yr{q.matmul(y.mu), q.matmul(y.sigma).matmul(q.t())};
  EXPECT_NEAR(frechet_distance(xr, yr), 7.0, 1e-9);
  // Equal sets give 0 (to rounding relative to tr Σ, as √ of near-zero eigenvalues amplifies it),
  // also when Σ is singular (10 samples of 20-d features).
  auto f = torch::randn({10, 20}, torch::kFloat64);
  auto s = feature_stats(f);
  EXPECT_NEAR(frechet_distance(s, s), 0.0, 1e-6 * s.sigma.trace().item<double>());
  auto full = feature_stats(torch::randn({200, 20}, torch::kFloat64));
  EXPECT_NEAR(frechet_distance(full, full), 0.0, 1e-10);
  EXPECT_EQ(s.count, 10);
}

TEST(Frechet, RankDeficientCovariancesToFloat64Precision) {
  // Fewer samples than dimensions (FD of a few hundred samples in Inception's 2048): Σ₁ and Σ₂
  // are singular. A reference that needs no square root of them: with centred samples
  // A₁, A₂ [n, d], Σᵢ = AᵢᵀAᵢ/(n-1), the nonzero eigenvalues of Σ₁Σ₂ are the squared singular
  // values of A₁A₂ᵀ/(n-1), so tr √(Σ₁Σ₂) is that [n, n] matrix's nuclear norm.
  torch::manual_seed(11);
  for (const auto& [n, d] : {std::pair<int64_t, int64_t>{40, 128}, {150, 512}}) {
    // Features with a spread of scales over a random basis, as a network's are; the second set
    // shifted and partly correlated with the first's directions.
    const auto basis = std::get<0>(torch::linalg_qr(torch::randn({d, d}, torch::kFloat64)));
    const auto scales = torch::exp(torch::linspace(0, -6, d, torch::kFloat64));
    const auto f1 = (torch::randn({n, d}, torch::kFloat64) * scales).matmul(basis);
    const auto f2 = (torch::randn({n, d}, torch::kFloat64) * scales).matmul(basis) + 0.5 * f1 + 0.1;
    const auto a = feature_stats(f1), b = feature_stats(f2);
    const auto c1 = f1 - f1.mean(0), c2 = f2 - f2.mean(0);
    const double tr_root = torch::linalg_svdvals(c1.matmul(c2.t())).sum().item<double>() / static_cast<double>(n - 1);
    const double expected = (a.mu - b.mu).square().sum().item<double>() + a.sigma.trace().item<double>() +
                            b.sigma.trace().item<double>() - 2 * tr_root;
    EXPECT_LT(std::abs(frechet_distance(a, b) - expected) / expected, 1e-10) << n << " samples, " << d << "-d";
  }
}

TEST(Frechet, MatchesScipyReference) {
  auto ref = load_npz(kFixtures + "fid_reference.npz");  // written compressed
  FeatureStats a{npy_tensor(ref.at("mu1")), npy_tensor(ref.at("sigma1"))};
  FeatureStats b{npy_tensor(ref.at("mu2")), npy_tensor(ref.at("sigma2"))};
  const double expected = npy_tensor(ref.at("fid"))[0].item<double>();
  EXPECT_LT(std::abs(frechet_distance(a, b) - expected) / expected, 1e-6);
}

TEST(Frechet, BadStatisticsRejected) {
  FeatureStats a{torch::zeros({3}, torch::kFloat64), torch::eye(3, torch::kFloat64)};
  FeatureStats b{torch::zeros({4}, torch::kFloat64), torch::eye(4, torch::kFloat64)};
  EXPECT_THROW(frechet_distance(a, b), DataError);
  FeatureStats nan{torch::full({3}, NAN, torch::kFloat64), torch::eye(3, torch::kFloat64)};
  EXPECT_THROW(frechet_distance(a, nan), DataError);
  EXPECT_THROW(feature_stats(torch::zeros({1, 3})), DataError);
}

TEST(Kid, MatchesDirectComputation) {
  auto x = torch::randn({12, 5}, torch::kFloat64), y = torch::randn({12, 5}, torch::kFloat64) + 0.5;
  auto k = [](const torch::Tensor& a, const torch::Tensor& b) { return std::pow(a.dot(b).item<double>() / 5 + 1, 3); };
  double xx = 0, yy = 0, xy = 0;
  for (int i = 0; i < 12; ++i)
    for (int j = 0; j < 12; ++j) {
      if (i != j) xx += k(x[i], x[j]), yy += k(y[i], y[j]);
      xy += k(x[i], y[j]);
    }
  const double expected = xx / 132 + yy / 132 - 2 * xy / 144;
  auto kid = kernel_inception_distance(x, y, 3, 12);  // subsets of everything: no randomness
  EXPECT_NEAR(kid.mean, expected, 1e-9);
  EXPECT_NEAR(kid.std, 0.0, 1e-9);
  EXPECT_THROW(kernel_inception_distance(x, torch::randn({4, 3}, torch::kFloat64)), DataError);
}

TEST(Stats, FilesRoundTripAndForeignFilesRejected) {
  s2dm::testing::TempDir dir;
  auto s = feature_stats(torch::randn({30, 6}, torch::kFloat64));
  save_stats(dir / "s.npz", s);
  auto back = load_stats(dir / "s.npz");
  EXPECT_TRUE(torch::equal(back.mu, s.mu));
  EXPECT_TRUE(torch::equal(back.sigma, s.sigma));
  auto plain = load_stats(kFixtures + "stats_plain.npz");  // np.savez of fid_reference.npz's first set
  const auto reference = load_npz(kFixtures + "fid_reference.npz");
  EXPECT_TRUE(torch::equal(plain.mu, npy_tensor(reference.at("mu1"))));
  EXPECT_TRUE(torch::equal(plain.sigma, npy_tensor(reference.at("sigma1"))));
  EXPECT_EQ(plain.sigma.size(1), 64);
  EXPECT_THROW(load_stats(kFixtures + "fid_reference.npz"), DataError);  // no mu/sigma arrays
  s2dm::testing::write_bytes(dir / "junk.npz", "PK\x03\x04 not really a zip");
  EXPECT_THROW(load_stats(dir / "junk.npz"), IoError);
  EXPECT_THROW(load_stats(dir / "missing.npz"), IoError);
}

TEST(Stats, ASigmaThatIsNoCovarianceIsRefusedNamingTheFile) {
  // sigma = -I gave FID -256 for 256-d statistics; a non-symmetric sigma, a meaningless value.
  s2dm::testing::TempDir dir;
  auto expect_refused = [&](const torch::Tensor& sigma, const std::string& why) {
    save_stats(dir / "bad.npz", {torch::zeros({sigma.size(0)}, torch::kFloat64), sigma});
    try {
      load_stats(dir / "bad.npz");
      FAIL() << why;
    } catch (const DataError& e) {
      EXPECT_NE(std::string(e.what()).find(dir / "bad.npz"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find(why), std::string::npos) << e.what();
    }
  };
  auto eye = torch::eye(4, torch::kFloat64);
  expect_refused(-eye, "not positive semi-definite");
  auto skew = eye.clone();
  skew[0][1] = 0.5;
  expect_refused(skew, "not symmetric");
  auto indefinite = torch::tensor({{1.0, 2.0}, {2.0, 1.0}}, torch::kFloat64);  // eigenvalues 3 and -1
  expect_refused(indefinite, "not positive semi-definite");
  // Genuine statistics pass: singular (fewer samples than dimensions) and rounded to float32.
  auto singular = feature_stats(torch::randn({10, 64}, torch::kFloat64));
  save_npz(dir / "f32.npz", {{"mu", to_npy_array(singular.mu.to(torch::kFloat32))},
                             {"sigma", to_npy_array(singular.sigma.to(torch::kFloat32))}});
  EXPECT_NO_THROW(load_stats(dir / "f32.npz"));
  save_stats(dir / "singular.npz", singular);
  EXPECT_NO_THROW(load_stats(dir / "singular.npz"));
}

TEST(Classifier, TrainsOnRealFashionMnistAndSeparatesDistributions) {
  const std::string dir = "/usr/share/datasets/fashion-mnist";
  if (!std::filesystem::exists(dir + "/t10k-images-idx3-ubyte.gz"))
    GTEST_SKIP() << "dataset-fashion-mnist is not installed (scripts/setup.sh installs it)";
  torch::set_num_threads(s2dm::testing::test_threads());
  auto train = data::read_fashion_mnist(dir, true, 32);
  train.images = train.images.slice(0, 0, 12000);
  train.labels = train.labels.slice(0, 0, 12000);
  auto test = data::read_fashion_mnist(dir, false, 32);
  test.images = test.images.slice(0, 0, 2000);
  test.labels = test.labels.slice(0, 0, 2000);
  ClassifierSpec spec;
  spec.name = "fmnist-cnn";
  torch::manual_seed(s2dm::testing::test_seed(0));
  Classifier net(spec);
  ClassifierTraining training;
  training.epochs = 2;
  training.seed = s2dm::testing::test_seed(training.seed);
  const double accuracy = train_classifier(net, train, test, training, torch::kCPU);
  // What the features need is to tell the classes apart, far above chance (0.10). With the
  // learning rate decaying to 0, 12 000 images and 2 epochs reach 0.80-0.83 on every seed and
  // thread count measured (a constant rate ended anywhere in 0.49-0.83); 0.6 leaves a margin
  // no CPU's rounding comes near.
  EXPECT_GT(accuracy, 0.6) << "12 000 images, 2 epochs";
  s2dm::testing::print_margin("classifier test accuracy", accuracy, "> 0.6");

  s2dm::testing::TempDir tmp;
  save_classifier(tmp / "c.safetensors", net, accuracy);
  auto features = make_feature_extractor("classifier:" + (tmp / "c.safetensors"), torch::kCPU);
  EXPECT_EQ(features.name, "fmnist-cnn");
  EXPECT_EQ(features.distance_label(), "FD[fmnist-cnn]");
  auto half = [&](int64_t from) {
    return feature_stats(extract_features(features, test.images.slice(0, from, from + 1000), 500, torch::kCPU, false));
  };
  auto noise = torch::randint(0, 256, {1000, 1, 32, 32}, torch::kUInt8);
  auto noise_stats = feature_stats(extract_features(features, noise, 500, torch::kCPU, false));
  const double same = frechet_distance(half(0), half(1000)), different = frechet_distance(half(0), noise_stats);
  EXPECT_LT(same * 20, different) << same << " vs " << different;
  s2dm::testing::print_margin("FD(noise) / FD(test half, other half)", different / same, "> 20");
  // Images of another shape are refused; grey ones stored as RGB are grey.
  EXPECT_THROW(features.fn(torch::randint(0, 256, {1, 3, 32, 32}, torch::kUInt8)), DataError);
  EXPECT_THROW(features.fn(torch::zeros({1, 1, 28, 28}, torch::kUInt8)), DataError);
  const auto grey = torch::randint(0, 256, {2, 1, 32, 32}, torch::kUInt8);
  EXPECT_TRUE(torch::equal(features.fn(grey.expand({-1, 3, -1, -1})), features.fn(grey)));
  EXPECT_THROW(make_feature_extractor("classifier:" + (tmp / "none"), torch::kCPU), CheckpointError);
  EXPECT_THROW(make_feature_extractor("vgg", torch::kCPU), ConfigError);
}

TEST(FeatureNetworks, SpecsNameEveryRegisteredNetworkAndNoOther) {
  std::string forms;
  for (const auto& network : feature_networks()) {
    auto spec = parse_feature_spec(network.name + ":w.safetensors");
    EXPECT_EQ(spec.network, &network);
    EXPECT_EQ(spec.weights(), "w.safetensors");
    EXPECT_EQ(parse_feature_spec(spec.text()).text(), spec.text());
    spec = parse_feature_spec(network.name);
    EXPECT_EQ(spec.network, &network);
    if (network.default_weights) {
      EXPECT_EQ(spec.weights(), network.default_weights()) << network.name;
    } else {  // a spec must name the weights
      EXPECT_EQ(spec.weights(), "") << network.name;
      EXPECT_THROW(make_feature_extractor(spec, torch::kCPU), ConfigError) << network.name;
    }
    EXPECT_NE(feature_spec_forms().find(network.forms), std::string::npos) << network.name;
  }
  try {
    parse_feature_spec("dino:w.safetensors");
    ADD_FAILURE() << "an unregistered network parsed";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("expected " + feature_spec_forms()), std::string::npos) << e.what();
  }
  EXPECT_THROW(parse_feature_spec("inception:"), ConfigError);
  EXPECT_EQ(feature_spec_forms(), "inception, inception:WEIGHTS.safetensors or classifier:PATH");
}
