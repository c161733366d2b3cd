#include "fuzz_targets.h"

#include <torch/torch.h>
#include <zlib.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <sstream>

#include "s2dm/core/config.h"
#include "s2dm/core/errors.h"
#include "s2dm/data/data.h"
#include "s2dm/eval/fid.h"
#include "s2dm/experiment/experiment.h"
#include "s2dm/io/checkpoint.h"
#include "s2dm/io/file_io.h"
#include "s2dm/io/image_io.h"
#include "s2dm/io/npy.h"
#include "s2dm/io/npy_tensor.h"
#include "s2dm/io/safetensors.h"
#include "s2dm/sample/grid_file.h"

namespace s2dm::fuzz {
namespace fs = std::filesystem;

namespace {

constexpr int kNumTimesteps = 1000;

// The file a target hands to a path-taking reader, written from the input bytes (plainly: an
// atomic write's fsyncs would slow every execution down for nothing).
std::string write_input(const std::string& path, const std::string& bytes) {
  fs::create_directories(fs::path(path).parent_path());
  std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
  return path;
}

std::string gzip(const std::string& bytes) {
  uLongf size = compressBound(static_cast<uLong>(bytes.size())) + 32;
  std::string out(size, '\0');
  z_stream z{};
  deflateInit2(&z, Z_BEST_COMPRESSION, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY);  // +16: a gzip wrapper
  z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(bytes.data()));
  z.avail_in = static_cast<uInt>(bytes.size());
  z.next_out = reinterpret_cast<Bytef*>(out.data());
  z.avail_out = static_cast<uInt>(out.size());
  deflate(&z, Z_FINISH);
  out.resize(z.total_out);
  deflateEnd(&z);
  return out;
}

std::string big_endian(uint32_t v) { return {char(v >> 24), char((v >> 16) & 0xff), char((v >> 8) & 0xff), char(v & 0xff)}; }

// Two Fashion-MNIST images and their labels, as idx files.
std::string idx_images() { return big_endian(0x803) + big_endian(2) + big_endian(28) + big_endian(28) + std::string(2 * 28 * 28, '\x40'); }
std::string idx_labels() { return big_endian(0x801) + big_endian(2) + std::string("\x03\x07", 2); }

// idx: the first byte picks the file the rest becomes (even: the images, odd: the labels); the
// other one is a valid file of two items.
void read_idx_pair(const std::string& bytes, const std::string& scratch) {
  const std::string dir = scratch + "/fmnist";
  const bool labels = !bytes.empty() && (bytes[0] & 1);
  const std::string rest = bytes.empty() ? "" : bytes.substr(1);
  write_input(dir + "/t10k-images-idx3-ubyte.gz", labels ? gzip(idx_images()) : rest);
  write_input(dir + "/t10k-labels-idx1-ubyte.gz", labels ? rest : gzip(idx_labels()));
  data::read_fashion_mnist(dir, false, 32);
}

void read_checkpoint(const std::string& bytes, const std::string& scratch) {
  const auto path = write_input(scratch + "/input.ckpt", bytes);
  const Checkpoint checkpoint = load_checkpoint(path);
  for (bool ema : {true, false}) {
    try {
      checkpoint_weights(checkpoint, ema);
    } catch (const CheckpointError&) {
    }
  }
  parse_config(checkpoint.config_yaml, path + " (config)");  // as s2dm info / sample / resume read it
}

void read_images(const std::string& bytes, const std::string& scratch) {
  const auto path = write_input(scratch + "/input.img", bytes);
  for (int channels : {1, 3}) {
    const Image image = read_image(path, channels);
    center_crop_square(image);
  }
}

void read_stats(const std::string& bytes, const std::string& scratch) {
  const auto path = write_input(scratch + "/input.npz", bytes);
  const auto arrays = load_npz(path);
  for (const auto& [name, array] : arrays) to_tensor(array, path + ":" + name);
  if (arrays.count("mu") || arrays.count("sigma")) eval::load_stats(path);  // as s2dm fid reads it
}

void apply_set_values(const std::string& bytes, const std::string& source_dir) {
  static const Config base = load_config(source_dir + "/configs/train/fmnist.yaml");
  std::vector<std::string> values;  // one --set value per line
  std::istringstream lines(bytes);
  for (std::string line; std::getline(lines, line);) values.push_back(line);
  Config config = base;
  apply_overrides(config, values, "--set");
}

// An experiment file sits in experiments/, the repository's training configs in train/ beside it
// (where the bundled experiment files look for them).
void read_experiment(const std::string& bytes, const std::string& scratch, const std::string& source_dir) {
  const std::string train = scratch + "/train";
  if (!fs::exists(train)) {
    fs::create_directories(train);
    for (const auto& entry : fs::directory_iterator(source_dir + "/configs/train"))
      fs::copy_file(entry.path(), train + "/" + entry.path().filename().string());
  }
  experiment::load_experiment(write_input(scratch + "/experiments/input.yaml", bytes));
}

void read_schedule(const std::string& bytes, const std::string& scratch) {
  const auto file = sample::read_grid_file(write_input(scratch + "/schedule.yaml", bytes), kNumTimesteps);
  for (const auto& [steps, grid] : file.timesteps) file.grid(steps);
  file.description();
}

using Target = std::function<void(const std::string& bytes, const std::string& scratch, const std::string& source_dir)>;

const std::map<std::string, Target>& targets() {
  static const std::map<std::string, Target> all{
      {"safetensors", [](const auto& b, const auto&, const auto&) { from_safetensors_bytes(b, "input"); }},
      {"checkpoint", [](const auto& b, const auto& s, const auto&) { read_checkpoint(b, s); }},
      {"npy", [](const auto& b, const auto&, const auto&) { to_tensor(from_npy_bytes(b, "input"), "input"); }},
      {"npz", [](const auto& b, const auto& s, const auto&) { read_stats(b, s); }},
      {"idx", [](const auto& b, const auto& s, const auto&) { read_idx_pair(b, s); }},
      {"cifar", [](const auto& b, const auto& s, const auto&) {
         data::read_cifar10(fs::path(write_input(s + "/cifar/test_batch.bin", b)).parent_path().string(), false);
       }},
      {"image", [](const auto& b, const auto& s, const auto&) { read_images(b, s); }},
      {"config", [](const auto& b, const auto&, const auto&) { parse_config(b, "input.yaml"); }},
      {"set", [](const auto& b, const auto&, const auto& src) { apply_set_values(b, src); }},
      {"experiment", [](const auto& b, const auto& s, const auto& src) { read_experiment(b, s, src); }},
      {"schedule", [](const auto& b, const auto& s, const auto&) { read_schedule(b, s); }},
  };
  return all;
}

// ---- seeds ----

void copy_matching(const std::string& from_dir, const std::string& extension, const std::string& to_dir) {
  for (const auto& entry : fs::directory_iterator(from_dir))
    if (entry.path().extension() == extension)
      fs::copy_file(entry.path(), to_dir + "/" + entry.path().filename().string(), fs::copy_options::overwrite_existing);
}

Image test_image(int width, int height, int channels) {
  Image image{width, height, channels, {}};
  for (int i = 0; i < width * height * channels; ++i) image.pixels.push_back(static_cast<uint8_t>(i * 37));
  return image;
}

Checkpoint test_checkpoint(const std::string& source_dir) {
  Checkpoint c;
  c.step = 12;
  c.config_yaml = read_file_bytes(source_dir + "/tests/configs/tiny.yaml");
  c.model = {{"conv_in.weight", torch::randn({4, 1, 3, 3})}, {"conv_in.bias", torch::zeros({4})}};
  c.ema = c.model;
  c.optimizer = {{"step", torch::ones({1}, torch::kFloat64)}};
  c.rng = {{"cpu", torch::zeros({16}, torch::kUInt8)}};
  c.extra = {{"data_epoch", "1"}};
  return c;
}

sample::GridFile test_schedule() {
  sample::GridFile f;
  f.nfe = 100;
  f.timesteps = {{3, {999, 500, 0}}, {5, {999, 700, 400, 150, 0}}};
  f.levels = {0, 333, 666, 999};
  f.cost = {0.5, 0.25, 0.125};
  return f;
}

}  // namespace

const std::vector<std::string>& target_names() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> out;
    for (const auto& [name, target] : targets()) out.push_back(name);
    return out;
  }();
  return names;
}

void run_target(const std::string& target, const std::string& bytes, const std::string& scratch,
                const std::string& source_dir) {
  auto it = targets().find(target);
  if (it == targets().end()) throw ConfigError("unknown fuzz target '" + target + "'");
  it->second(bytes, scratch, source_dir);
}

void write_seeds(const std::string& target, const std::string& dir, const std::string& source_dir) {
  if (!targets().count(target)) throw ConfigError("unknown fuzz target '" + target + "'");
  fs::create_directories(dir);
  const std::string fixtures = source_dir + "/tests/fixtures";
  auto put = [&](const std::string& name, const std::string& bytes) { write_file_atomic(dir + "/" + name, bytes); };
  const NpyArray small{"<f4", {2, 3}, std::string(24, '\0')};
  if (target == "safetensors") {
    put("two.safetensors", to_safetensors_bytes({{"a", torch::randn({2, 3})}, {"b", torch::arange(4)}}, {{"k", "v"}}));
  } else if (target == "checkpoint") {
    save_checkpoint(dir + "/tiny.ckpt", test_checkpoint(source_dir));
  } else if (target == "npy") {
    put("small.npy", to_npy_bytes(small));
    put("bytes.npy", to_npy_bytes({"|u1", {4}, "abcd"}));
    copy_matching(fixtures, ".npy", dir);
  } else if (target == "npz") {
    save_npz(dir + "/stored.npz", {{"mu", {"<f8", {2}, std::string(16, '\0')}}, {"sigma", {"<f8", {2, 2}, std::string(32, '\0')}}});
    save_npz(dir + "/deflated.npz", {{"x", small}}, true);
    copy_matching(fixtures, ".npz", dir);
  } else if (target == "idx") {
    put("images.gz", '\0' + gzip(idx_images()));
    put("labels.gz", '\1' + gzip(idx_labels()));
    put("images.raw", '\0' + idx_images());  // gzread reads an uncompressed file as it is
  } else if (target == "cifar") {
    std::string records;
    for (int label : {3, 9}) records += static_cast<char>(label) + std::string(3 * 32 * 32, static_cast<char>(label * 20));
    put("two.bin", records);
  } else if (target == "image") {
    write_png(dir + "/grey.png", test_image(7, 5, 1));
    write_png(dir + "/rgb.png", test_image(6, 9, 3));
    put("rgb.jpg", encode_jpeg(test_image(16, 12, 3), 90));
    put("grey.jpg", encode_jpeg(test_image(9, 9, 1), 50));
  } else if (target == "config") {
    copy_matching(source_dir + "/configs/train", ".yaml", dir);
    copy_matching(source_dir + "/tests/configs", ".yaml", dir);
  } else if (target == "set") {
    put("values", "train.lr=0.0002\nsample.steps=10\nsample.sampler=dpm_solver\nmodel.ch_mult=[1, 2]\n");
    put("section", "sample={sampler: ddim, steps: 20, eta: 0.5}\ndata.dataset=cifar10\n");
  } else if (target == "experiment") {
    for (const char* name : {"fmnist_s2dm.yaml", "learned_schedule.yaml", "skip_tuning_sweep.yaml"})  // (their data is here)
      fs::copy_file(source_dir + "/configs/experiments/" + name, dir + "/" + name, fs::copy_options::overwrite_existing);
  } else if (target == "schedule") {
    sample::write_grid_file(dir + "/score.yaml", test_schedule(), kNumTimesteps);
    auto dp = test_schedule();
    dp.method = "dp", dp.sampler = "deis", dp.order = 3, dp.end_error = {{3, 0.5}, {5, 0.25}};
    sample::write_grid_file(dir + "/dp.yaml", dp, kNumTimesteps);
  }
}

}  // namespace s2dm::fuzz
