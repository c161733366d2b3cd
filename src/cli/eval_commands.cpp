// s2dm fid-stats / fid: statistics and distances between image sets.
#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include <cstdlib>
#include <cstring>
#include <cxxopts.hpp>
#include <filesystem>
#include <iostream>
#include <limits>
#include <nlohmann/json.hpp>

#include "commands.h"
#include "s2dm/eval/classifier.h"
#include "s2dm/core/config.h"
#include "s2dm/data/data.h"
#include "s2dm/core/device.h"
#include "s2dm/core/errors.h"
#include "s2dm/eval/fid.h"
#include "s2dm/sample/generate.h"
#include "s2dm/io/image_io.h"
#include "s2dm/io/npy.h"

namespace s2dm::cli {
namespace fs = std::filesystem;

namespace {

// The feature space named by --features, loaded on first use (statistics files need none).
class FeatureSpace {
 public:
  FeatureSpace(const std::string& text, torch::Device device) : device_(device) {
    try {
      spec_ = eval::parse_feature_spec(text);
    } catch (const ConfigError& e) {
      throw UsageError(std::string("--") + e.what());
    }
    if (spec_.weights().empty())
      throw UsageError("--features " + spec_.text() + " needs the network's file: " + spec_.text() + ":PATH");
  }
  const eval::FeatureExtractor& extractor() {
    if (!extractor_.fn) extractor_ = eval::make_feature_extractor(spec_, device_);
    return extractor_;
  }
  // The name, without loading the network unless its weights file names it (a classifier).
  std::string name() { return spec_.network->named_by_its_weights ? extractor().name : spec_.network->name; }
  std::string label() { return eval::FeatureExtractor{name(), {}}.distance_label(); }

 private:
  eval::FeatureSpec spec_;
  torch::Device device_;
  eval::FeatureExtractor extractor_;
};

// uint8 NCHW images of a folder of equally sized PNG/JPEG files.
torch::Tensor folder_images(const std::string& dir) {
  const auto files = data::image_files(dir);
  std::vector<torch::Tensor> images;
  for (const auto& f : files) {
    Image img = read_image(f, 3);
    if (!images.empty() && (img.height != images[0].size(0) || img.width != images[0].size(1)))  // HWC
      throw DataError(f + ": " + std::to_string(img.width) + "x" + std::to_string(img.height) +
                      " differs from the folder's first image");
    images.push_back(torch::from_blob(img.pixels.data(), {img.height, img.width, 3}, torch::kUInt8).clone());
  }
  return torch::stack(images).permute({0, 3, 1, 2}).contiguous();
}

// A SOURCE: statistics straight from a stats .npz, otherwise images (samples.npz, a folder, a
// data config's training set) whose features are extracted.
struct Source {
  std::string description;
  eval::FeatureSet set;  // features defined when computed from images
};

Source resolve_source(const std::string& arg, FeatureSpace& space, int64_t num, int64_t batch,
                      const torch::Device& device) {
  if (!fs::exists(arg)) throw DataError(arg + ": not found");
  Source src;
  torch::Tensor images;
  const std::string ext = fs::path(arg).extension().string();
  if (fs::is_directory(arg)) {
    images = folder_images(arg);
  } else if (ext == ".npz") {
    auto arrays = load_npz(arg);
    if (arrays.count("mu") && arrays.count("sigma")) {
      src.set.stats = eval::load_stats(arg);
      src.description = arg + " (statistics)";
      return src;
    }
    if (!arrays.count("arr_0")) throw DataError(arg + ": neither statistics (mu, sigma) nor samples (arr_0)");
    images = sample::read_samples_npz(arg);
  } else if (ext == ".yaml" || ext == ".yml") {
    images = data::load_dataset(load_config(arg).data).images;
  } else {
    throw UsageError(arg + ": expected a statistics or samples .npz, a folder of images, or a data config .yaml");
  }
  if (num > 0 && num < images.size(0)) images = images.slice(0, 0, num);
  src.description = arg + " (" + std::to_string(images.size(0)) + " images)";
  if (images.size(0) < 2)
    throw DataError(arg + ": " + std::to_string(images.size(0)) + " image(s); statistics need at least 2");
  try {
    src.set = eval::feature_set(space.extractor(), images, batch, device);
  } catch (const DataError& e) {  // (the images do not suit the feature network)
    throw DataError(arg + ": " + e.what());
  }
  return src;
}

void common_options(cxxopts::Options& options) {
  options.add_options()("features", eval::feature_spec_forms() + " (default Inception weights: $S2DM_INCEPTION_WEIGHTS or "
                                    "data/inception/pt_inception-2015-12-05-6726825d.safetensors)",
                        cxxopts::value<std::string>()->default_value("inception"))(
      "num", "use the first N images of each source (0 = all; at least 2)", cxxopts::value<int64_t>()->default_value("0"))(
      "batch", "feature-extraction batch size", cxxopts::value<int64_t>()->default_value("100"))(
      "device", "auto | cpu | cuda", cxxopts::value<std::string>()->default_value("auto"))(
      "threads", "CPU threads (0 = all cores)", cxxopts::value<int>()->default_value("0"));
}

// The options common_options adds, checked.
struct CommonOptions {
  int64_t num, batch;
  torch::Device device{torch::kCPU};
};
CommonOptions common_values(const cxxopts::ParseResult& r) {
  const int64_t num = r["num"].as<int64_t>();
  if (num < 0 || num == 1) throw UsageError("--num " + std::to_string(num) + ": expected 0 (every image) or at least 2");
  CommonOptions o{num, bounded(r, "batch", int64_t{1}, int64_t{kMaxBatch})};
  set_cpu_threads(bounded(r, "threads", 0, kMaxThreads));
  o.device = resolve_device(r["device"].as<std::string>());
  return o;
}

}  // namespace

int fid_stats(int argc, char** argv) {
  cxxopts::Options options("s2dm fid-stats", "Write FID statistics (mu, sigma) of SOURCE.");
  common_options(options);
  options.add_options()("out", "statistics .npz to write", cxxopts::value<std::string>())(
      "compress", "write a compressed .npz (as np.savez_compressed)")(
      "source", "a samples .npz, a folder of images, or a data config", cxxopts::value<std::string>());
  options.parse_positional({"source"});
  auto r = parse_options(options, argc, argv);
  if (!r) return 0;
  if (!r->count("source") || !r->count("out")) throw UsageError("fid-stats: SOURCE and --out are required");
  const auto o = common_values(*r);
  check_output_file(*r, "out", {"source"}, {".npz"});  // (s2dm fid reads statistics from .npz files)
  FeatureSpace space((*r)["features"].as<std::string>(), o.device);
  auto src = resolve_source((*r)["source"].as<std::string>(), space, o.num, o.batch, o.device);
  eval::save_stats((*r)["out"].as<std::string>(), src.set.stats, r->count("compress") > 0);
  std::cout << "wrote " << (*r)["out"].as<std::string>() << " from " << src.description << "\n";
  return 0;
}

int fid(int argc, char** argv) {
  cxxopts::Options options("s2dm fid", "FID (and KID where features are at hand) between A and B.");
  common_options(options);
  options.add_options()("json", "print one JSON object")("a", "first source", cxxopts::value<std::string>())(
      "b", "second source", cxxopts::value<std::string>());
  options.parse_positional({"a", "b"});
  auto r = parse_options(options, argc, argv);
  if (!r) return 0;
  if (!r->count("a") || !r->count("b")) throw UsageError("fid: two sources A and B are required");
  const auto o = common_values(*r);
  FeatureSpace space((*r)["features"].as<std::string>(), o.device);
  auto a = resolve_source((*r)["a"].as<std::string>(), space, o.num, o.batch, o.device);
  auto b = resolve_source((*r)["b"].as<std::string>(), space, o.num, o.batch, o.device);
  eval::Distance d;
  try {
    d = eval::distance(a.set, b.set);
  } catch (const DataError& e) {  // (statistics of different feature spaces)
    throw DataError(a.description + " and " + b.description + ": " + e.what());
  }
  const double value = d.fd;
  nlohmann::ordered_json out{{"fid", value}};
  if (d.kid) {
    out["kid_mean"] = d.kid->mean;
    out["kid_std"] = d.kid->std;
  }
  out["num_a"] = a.set.stats.count;
  out["num_b"] = b.set.stats.count;
  out["features"] = space.name();
  if (r->count("json")) {
    std::cout << out.dump() << "\n";
  } else {
    std::printf("%s %.4f\n", space.label().c_str(), value);
    if (out.contains("kid_mean"))
      std::printf("KID[%s] %.6f ± %.6f\n", space.name().c_str(), out["kid_mean"].get<double>(), out["kid_std"].get<double>());
    std::printf("A: %s\nB: %s\n", a.description.c_str(), b.description.c_str());
  }
  return 0;
}

int train_classifier(int argc, char** argv) {
  cxxopts::Options options("s2dm train-classifier",
                           "Train the small CNN whose features measure FD[<data>-cnn] on labelled data.");
  options.add_options()("data", "data config (" + data::labelled_datasets() + ": train split to train, test split to test)",
                        cxxopts::value<std::string>())("out", "classifier file to write", cxxopts::value<std::string>())(
      "epochs", "epochs", cxxopts::value<int>()->default_value("2"))(
      "batch", "batch size", cxxopts::value<int64_t>()->default_value("128"))(
      "limit", "use the first N training images (0 = all)", cxxopts::value<int64_t>()->default_value("0"))(
      "seed", "random seed", cxxopts::value<uint64_t>()->default_value("0"))(
      "device", "auto | cpu | cuda", cxxopts::value<std::string>()->default_value("auto"))(
      "threads", "CPU threads (0 = all cores)", cxxopts::value<int>()->default_value("0"));
  auto r = parse_options(options, argc, argv);
  if (!r) return 0;
  if (!r->count("data") || !r->count("out")) throw UsageError("train-classifier: --data and --out are required");
  check_output_file(*r, "out", {"data"});
  eval::ClassifierTraining training;
  training.epochs = bounded(*r, "epochs", 1, 100000);
  training.batch = bounded(*r, "batch", int64_t{1}, int64_t{kMaxBatch});
  training.seed = (*r)["seed"].as<uint64_t>();
  const int64_t limit = bounded(*r, "limit", int64_t{0}, std::numeric_limits<int64_t>::max());
  set_cpu_threads(bounded(*r, "threads", 0, kMaxThreads));
  const auto device = resolve_device((*r)["device"].as<std::string>());
  eval::train_data_classifier(load_config((*r)["data"].as<std::string>()).data, limit, training, device,
                              (*r)["out"].as<std::string>());
  return 0;
}

}  // namespace s2dm::cli
