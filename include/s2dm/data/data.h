#pragma once
// Image data sets held in memory as uint8 NCHW, and the batcher that serves shuffled,
// augmented batches in [-1, 1] on the training device.
#include <torch/types.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "s2dm/core/config.h"

namespace s2dm::data {

struct ImageSet {
  torch::Tensor images;  // uint8 [N, C, H, W], CPU
  torch::Tensor labels;  // int64 [N], or undefined when the data set has none
  std::string source;    // where it came from, for logs
};

// A data set by name (data.dataset). Adding one = its reader and a line in data.cpp's registry;
// the config schema reads the names from it (core/registry.h).
struct DatasetInfo {
  std::string name;
  std::string default_path;  // where it is looked for when data.path is empty
  bool labelled;             // has labels and a test split (classifier features, reference test)
  std::function<ImageSet(const std::string& path, const DataConfig& config, bool train)> read;
};
const std::vector<DatasetInfo>& datasets();
// Throws ConfigError for an unknown name.
const DatasetInfo& find_dataset(const std::string& name);
// The labelled data sets' names, for messages and help: "fmnist, cifar10".
std::string labelled_datasets();

// The data set `config` names, cropped/resized/padded to its image size and channel count,
// limited to `config.limit` images. `train` = false reads the test split (fmnist and cifar10
// only). Throws DataError naming the file.
ImageSet load_dataset(const DataConfig& config, bool train = true);
// Where a data set is looked for when `data.path` is empty.
std::string default_path(const std::string& dataset);

// Fashion-MNIST gzipped idx files (`train-images-idx3-ubyte.gz`, ...), zero-padded to `size`.
ImageSet read_fashion_mnist(const std::string& dir, bool train, int size);
// CIFAR10 binary batches (`data_batch_{1..5}.bin` or `test_batch.bin`).
ImageSet read_cifar10(const std::string& dir, bool train);
// CelebA `img_align_celeba/` JPEGs: crop rows 57:185, columns 25:153, resize to `size`.
// Decoded once into `cache` (empty = next to the images).
ImageSet read_celeba(const std::string& dir, int size, const std::string& cache);
// Every PNG/JPEG in `dir` (sorted by name), centre-cropped to a square and resized. `cache`
// "none" decodes without a cache file.
ImageSet read_image_folder(const std::string& dir, int size, int channels, const std::string& cache);

// The PNG/JPEG files of a folder (not recursive), sorted by name. Throws DataError when the
// folder is missing or holds none.
std::vector<std::string> image_files(const std::string& dir);

// uint8 [N,C,H,W] -> float in [-1, 1], and back (rounded, clamped).
torch::Tensor to_model_range(const torch::Tensor& images);
torch::Tensor to_uint8(const torch::Tensor& x);

// Serves batches: a new permutation each epoch from (seed, epoch), drawn without torch's RNG so
// the data order is independent of everything else.
class Batcher {
 public:
  // Where the images live: on the device, gathered there (automatic: when they take at most a
  // quarter of its memory, and always on the CPU), or in host memory, each batch gathered into
  // pinned memory one batch ahead and queued for the device without the host waiting.
  enum class Placement { automatic, device, host };

  Batcher(const ImageSet& set, const torch::Device& device, int64_t batch_size, uint64_t seed,
          bool random_flip, Placement placement = Placement::automatic);
  // The next batch in [-1, 1] (flips drawn from the device's default generator).
  torch::Tensor next();
  int64_t size() const { return num_; }
  bool on_device() const { return on_device_; }

  // Position in the data stream after the last batch served, for exact resumption.
  int64_t epoch() const { return epoch_served_; }
  int64_t cursor() const { return cursor_served_; }
  void seek(int64_t epoch, int64_t cursor);

 private:
  struct Pending {
    torch::Tensor images;       // uint8, on (or on its way to) the device
    int64_t epoch = 0, cursor = 0;  // the position after it
  };
  Pending gather();
  void shuffle();

  torch::Tensor images_;
  torch::Device device_;
  int64_t num_, batch_size_;
  uint64_t seed_;
  bool random_flip_, on_device_ = true;
  int64_t epoch_ = 0, cursor_ = 0;  // where gathering continues
  int64_t epoch_served_ = 0, cursor_served_ = 0;
  std::vector<int64_t> order_;
  Pending ahead_;
};

}  // namespace s2dm::data
