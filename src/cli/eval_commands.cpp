// s2dm fid-stats / fid: statistics and distances between image sets.
#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include <cstdlib>
#include <cstring>
#include <cxxopts.hpp>
#include <filesystem>
#include <iostream>
#include <nlohmann/json.hpp>

#include "commands.h"
#include "s2dm/config.h"
#include "s2dm/data.h"
#include "s2dm/device.h"
#include "s2dm/errors.h"
#include "s2dm/fid.h"
#include "s2dm/image_io.h"
#include "s2dm/npy.h"

namespace s2dm::cli {
namespace fs = std::filesystem;

namespace {

// Where the Inception weights are looked for when --features names none.
std::string default_inception_weights() {
  const char* env = std::getenv("S2DM_INCEPTION_WEIGHTS");
  return env ? env : "data/inception/pt_inception-2015-12-05-6726825d.safetensors";
}

// The feature space named by --features: "inception" or "inception:PATH".
struct FeatureSpace {
  std::string name, weights;
  eval::FidInception net{nullptr};
  eval::FidInception& network() {
    if (!net) {
      net = eval::FidInception();
      eval::load_inception_weights(net, weights);
    }
    return net;
  }
};

FeatureSpace feature_space(const std::string& spec) {
  if (spec == "inception") return {"inception", default_inception_weights()};
  if (spec.rfind("inception:", 0) == 0) return {"inception", spec.substr(10)};
  if (spec.rfind("classifier:", 0) == 0)
    throw UsageError("--features " + spec + ": classifier features are not available yet (use inception)");
  throw UsageError("--features " + spec + ": expected inception[:WEIGHTS.safetensors]");
}

// uint8 NCHW images of a folder of equally sized PNG/JPEG files.
torch::Tensor folder_images(const std::string& dir) {
  std::vector<std::string> files;
  for (const auto& e : fs::directory_iterator(dir)) {
    auto ext = e.path().extension().string();
    std::transform(ext.begin(), ext.end(), ext.begin(), ::tolower);
    if (e.is_regular_file() && (ext == ".png" || ext == ".jpg" || ext == ".jpeg")) files.push_back(e.path().string());
  }
  std::sort(files.begin(), files.end());
  if (files.empty()) throw DataError(dir + ": no PNG or JPEG images");
  std::vector<torch::Tensor> images;
  for (const auto& f : files) {
    Image img = read_image(f, 3);
    if (!images.empty() && (img.width != images[0].size(2) || img.height != images[0].size(1)))
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
  eval::FeatureStats stats;
  torch::Tensor features;  // defined when computed from images
};

Source resolve_source(const std::string& arg, FeatureSpace& space, int64_t num, int64_t batch,
                      const torch::Device& device) {
  Source src;
  torch::Tensor images;
  const std::string ext = fs::path(arg).extension().string();
  if (fs::is_directory(arg)) {
    images = folder_images(arg);
  } else if (ext == ".npz") {
    auto arrays = load_npz(arg);
    if (arrays.count("mu") && arrays.count("sigma")) {
      src.stats = eval::load_stats(arg);
      src.description = arg + " (statistics)";
      return src;
    }
    if (!arrays.count("arr_0")) throw DataError(arg + ": neither statistics (mu, sigma) nor samples (arr_0)");
    const auto& a = arrays.at("arr_0");
    if (a.dtype != "|u1" || a.shape.size() != 4 || (a.shape[3] != 1 && a.shape[3] != 3))
      throw DataError(arg + ": arr_0 must be uint8 NHWC with 1 or 3 channels");
    images = torch::empty(a.shape, torch::kUInt8);
    std::memcpy(images.data_ptr(), a.data.data(), a.data.size());
    images = images.permute({0, 3, 1, 2}).contiguous();
  } else if (ext == ".yaml" || ext == ".yml") {
    images = data::load_dataset(load_config(arg).data).images;
  } else {
    throw UsageError(arg + ": expected a statistics or samples .npz, a folder of images, or a data config .yaml");
  }
  if (num > 0 && num < images.size(0)) images = images.slice(0, 0, num);
  src.description = arg + " (" + std::to_string(images.size(0)) + " images)";
  src.features = eval::extract_features(space.network(), images, batch, device);
  src.stats = eval::feature_stats(src.features);
  return src;
}

void common_options(cxxopts::Options& options) {
  options.add_options()("features", "inception[:WEIGHTS.safetensors] (default weights: $S2DM_INCEPTION_WEIGHTS or "
                                    "data/inception/pt_inception-2015-12-05-6726825d.safetensors)",
                        cxxopts::value<std::string>()->default_value("inception"))(
      "num", "use the first N images of each source (0 = all)", cxxopts::value<int64_t>()->default_value("0"))(
      "batch", "feature-extraction batch size", cxxopts::value<int64_t>()->default_value("100"))(
      "device", "auto | cpu | cuda", cxxopts::value<std::string>()->default_value("auto"))(
      "threads", "CPU threads (0 = all cores)", cxxopts::value<int>()->default_value("0"));
}

}  // namespace

int fid_stats(int argc, char** argv) {
  cxxopts::Options options("s2dm fid-stats", "Write FID statistics (mu, sigma) of SOURCE.");
  common_options(options);
  options.add_options()("out", "statistics .npz to write", cxxopts::value<std::string>())(
      "source", "a samples .npz, a folder of images, or a data config", cxxopts::value<std::string>());
  options.parse_positional({"source"});
  auto r = parse_options(options, argc, argv);
  if (!r) return 0;
  if (!r->count("source") || !r->count("out")) throw UsageError("fid-stats: SOURCE and --out are required");
  set_cpu_threads((*r)["threads"].as<int>());
  auto space = feature_space((*r)["features"].as<std::string>());
  auto src = resolve_source((*r)["source"].as<std::string>(), space, (*r)["num"].as<int64_t>(),
                            (*r)["batch"].as<int64_t>(), resolve_device((*r)["device"].as<std::string>()));
  eval::save_stats((*r)["out"].as<std::string>(), src.stats);
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
  set_cpu_threads((*r)["threads"].as<int>());
  auto space = feature_space((*r)["features"].as<std::string>());
  const auto device = resolve_device((*r)["device"].as<std::string>());
  const auto num = (*r)["num"].as<int64_t>();
  const auto batch = (*r)["batch"].as<int64_t>();
  auto a = resolve_source((*r)["a"].as<std::string>(), space, num, batch, device);
  auto b = resolve_source((*r)["b"].as<std::string>(), space, num, batch, device);
  const double value = eval::frechet_distance(a.stats, b.stats);
  nlohmann::ordered_json out{{"fid", value}};
  if (a.features.defined() && b.features.defined()) {
    auto kid = eval::kernel_inception_distance(a.features, b.features);
    out["kid_mean"] = kid.mean;
    out["kid_std"] = kid.std;
  }
  out["num_a"] = a.stats.count;
  out["num_b"] = b.stats.count;
  out["features"] = space.name;
  if (r->count("json")) {
    std::cout << out.dump() << "\n";
  } else {
    std::printf("FID[%s] %.4f\n", space.name.c_str(), value);
    if (out.contains("kid_mean"))
      std::printf("KID[%s] %.6f ± %.6f\n", space.name.c_str(), out["kid_mean"].get<double>(), out["kid_std"].get<double>());
    std::printf("A: %s\nB: %s\n", a.description.c_str(), b.description.c_str());
  }
  return 0;
}

}  // namespace s2dm::cli
