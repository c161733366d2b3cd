#include "s2dm/data/data.h"

#include <spdlog/spdlog.h>
#include <torch/torch.h>
#include <zlib.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <random>
#include <thread>

#include "s2dm/core/device.h"
#include "s2dm/core/errors.h"
#include "s2dm/core/registry.h"
#include "s2dm/io/file_io.h"
#include "s2dm/io/image_io.h"

namespace s2dm::data {
namespace fs = std::filesystem;

namespace {

// A gzip-compressed file (or a plain one: zlib reads it as it is), read piece by piece.
class GzipReader {
 public:
  explicit GzipReader(const std::string& path) : path_(path) {
    if (!fs::exists(path)) throw DataError(path + ": file not found");
    file_ = gzopen(path.c_str(), "rb");
    if (!file_) throw DataError(path + ": cannot open (" + std::strerror(errno) + ")");
    std::error_code ec;
    file_size_ = fs::file_size(path, ec);
    if (ec) {
      gzclose(file_);
      throw DataError(path + ": cannot read (" + ec.message() + ")");
    }
  }
  ~GzipReader() { gzclose(file_); }
  GzipReader(const GzipReader&) = delete;
  GzipReader& operator=(const GzipReader&) = delete;

  // The file's size on disk when it was opened: the payload is at most kMaxDeflateRatio times it.
  uint64_t file_size() const { return file_size_; }

  // Reads up to `size` bytes into `to`; fewer only at the end of the data.
  size_t read(char* to, size_t size) {
    size_t done = 0;
    while (done < size) {
      const int n = gzread(file_, to + done, static_cast<unsigned>(std::min<size_t>(size - done, 1u << 30)));
      if (n < 0) {
        int err = 0;
        const char* why = gzerror(file_, &err);
        throw DataError(path_ + ": corrupt or truncated gzip data (" + why + ")");
      }
      if (n == 0) {  // the end, or a file cut short (zlib then reports Z_BUF_ERROR)
        int err = Z_OK;
        const char* why = gzerror(file_, &err);
        if (err != Z_OK && err != Z_STREAM_END) throw DataError(path_ + ": corrupt or truncated gzip data (" + why + ")");
        break;
      }
      done += static_cast<size_t>(n);
    }
    return done;
  }

 private:
  std::string path_;
  gzFile file_;
  uint64_t file_size_ = 0;
};

// An idx file (magic 0x0000080D: unsigned bytes, D dimensions) as its dims and payload. The
// header is read first and its claim checked against what the file can hold before the payload
// is allocated.
std::pair<std::vector<int64_t>, std::string> read_idx(const std::string& path, int expected_dims) {
  GzipReader in(path);
  std::string header(4 + 4 * static_cast<size_t>(expected_dims), '\0');
  const size_t got = in.read(header.data(), header.size());
  if (got < 4) throw DataError(path + ": truncated idx file (no header)");
  uint32_t magic = big_endian32(header.data());
  if (magic != 0x0800u + static_cast<uint32_t>(expected_dims))
    throw DataError(path + ": wrong idx magic " + std::to_string(magic) + " (expected " +
                    std::to_string(0x0800 + expected_dims) + ")");
  if (got < header.size()) throw DataError(path + ": truncated idx header");
  std::vector<int64_t> dims;
  for (int d = 0; d < expected_dims; ++d) dims.push_back(big_endian32(header.data() + 4 + 4 * d));
  const int64_t count = claimed_bytes(dims, 1, kMaxDeflateRatio * in.file_size());
  if (count < 0)
    throw DataError(path + ": header claims more data than the file's " + std::to_string(in.file_size()) +
                    " bytes can hold (corrupt?)");
  std::string payload(static_cast<size_t>(count), '\0');
  const size_t have = in.read(payload.data(), payload.size());
  char extra;
  if (have != payload.size() || in.read(&extra, 1) != 0)
    throw DataError(path + ": wrong size: header promises " + std::to_string(count) + " bytes of data, file has " +
                    (have < payload.size() ? std::to_string(have) : "more"));
  return {dims, std::move(payload)};
}

torch::Tensor bytes_to_tensor(const std::string& bytes, std::vector<int64_t> shape) {
  auto t = torch::empty(shape, torch::kUInt8);
  if (!bytes.empty()) std::memcpy(t.data_ptr(), bytes.data(), bytes.size());  // (an empty tensor has no data pointer)
  return t;
}

// ---- decoded-image cache: "S2DMIMG2", n, c, h, w (int64 LE), crc32 (uint32), pixels ----
// (2: JPEGs decoded by libjpeg, whose pixels differ slightly from stb's, which made the caches of 1)
constexpr char kCacheMagic[] = "S2DMIMG2";

torch::Tensor read_cache(const std::string& path, int64_t n, int64_t c, int64_t h, int64_t w) {
  if (!fs::exists(path)) return {};
  std::string bytes = read_file_bytes(path);
  const size_t header = 8 + 4 * 8 + 4;
  if (bytes.size() < header || bytes.compare(0, 8, kCacheMagic) != 0) return {};
  int64_t dims[4];
  std::memcpy(dims, bytes.data() + 8, sizeof dims);
  if (dims[0] != n || dims[1] != c || dims[2] != h || dims[3] != w) return {};
  if (bytes.size() != header + static_cast<size_t>(n * c * h * w)) return {};
  uint32_t crc;
  std::memcpy(&crc, bytes.data() + 40, 4);
  if (crc != crc32_of(bytes.data() + header, bytes.size() - header)) {
    spdlog::warn("{}: cache checksum mismatch, decoding again", path);
    return {};
  }
  return bytes_to_tensor(bytes.substr(header), {n, c, h, w});
}

void write_cache(const std::string& path, const torch::Tensor& images) {
  std::string bytes(kCacheMagic, 8);
  int64_t dims[4] = {images.size(0), images.size(1), images.size(2), images.size(3)};
  bytes.append(reinterpret_cast<const char*>(dims), sizeof dims);
  auto c = images.contiguous();
  uint32_t crc = crc32_of(c.data_ptr(), static_cast<size_t>(c.numel()));
  bytes.append(reinterpret_cast<const char*>(&crc), 4);
  bytes.append(static_cast<const char*>(c.data_ptr()), static_cast<size_t>(c.numel()));
  write_file_atomic(path, bytes);
}

// Decodes `files` in parallel with `decode` (file -> HWC image of size×size×channels) into NCHW.
template <class Decode>
torch::Tensor decode_all(const std::vector<std::string>& files, int size, int channels, Decode decode) {
  const int64_t n = static_cast<int64_t>(files.size());
  auto images = torch::empty({n, channels, size, size}, torch::kUInt8);
  auto* out = images.data_ptr<uint8_t>();
  const size_t plane = static_cast<size_t>(size) * size;
  std::atomic<int64_t> next{0};
  std::exception_ptr error;
  std::mutex error_mutex;
  auto work = [&] {
    for (int64_t i; (i = next++) < n;) {
      try {
        Image img = decode(files[i]);
        for (size_t p = 0; p < plane; ++p)
          for (int k = 0; k < channels; ++k) out[(i * channels + k) * plane + p] = img.pixels[p * channels + k];
      } catch (...) {
        std::lock_guard<std::mutex> lock(error_mutex);
        if (!error) error = std::current_exception();
        next = n;
      }
    }
  };
  std::vector<std::thread> pool;
  unsigned threads = std::max(1u, std::thread::hardware_concurrency());
  for (unsigned i = 0; i < threads; ++i) pool.emplace_back(work);
  for (auto& t : pool) t.join();
  if (error) std::rethrow_exception(error);
  return images;
}


template <class Decode>
torch::Tensor cached_decode(const std::vector<std::string>& files, int size, int channels,
                            const std::string& cache, Decode decode) {
  auto n = static_cast<int64_t>(files.size());
  if (cache == "none") return decode_all(files, size, channels, decode);
  auto images = read_cache(cache, n, channels, size, size);
  if (images.defined()) {
    spdlog::info("read {} decoded images from {}", n, cache);
    return images;
  }
  spdlog::info("decoding {} images (cached afterwards in {})", n, cache);
  images = decode_all(files, size, channels, decode);
  try {
    write_cache(cache, images);
  } catch (const IoError& e) {
    spdlog::warn("could not write the image cache: {}", e.what());
  }
  return images;
}

}  // namespace

std::vector<std::string> image_files(const std::string& dir) {
  if (!fs::is_directory(dir)) throw DataError(dir + ": not a directory");
  std::vector<std::string> files;
  for (const auto& entry : fs::directory_iterator(dir)) {
    if (!entry.is_regular_file()) continue;
    auto ext = entry.path().extension().string();
    std::transform(ext.begin(), ext.end(), ext.begin(), ::tolower);
    if (ext == ".png" || ext == ".jpg" || ext == ".jpeg") files.push_back(entry.path().string());
  }
  std::sort(files.begin(), files.end());
  if (files.empty()) throw DataError(dir + ": no PNG or JPEG images found");
  return files;
}


ImageSet read_fashion_mnist(const std::string& dir, bool train, int size) {
  std::string prefix = dir + "/" + (train ? "train" : "t10k");
  auto [idims, pixels] = read_idx(prefix + "-images-idx3-ubyte.gz", 3);
  auto [ldims, labels] = read_idx(prefix + "-labels-idx1-ubyte.gz", 1);
  if (idims[0] == 0) throw DataError(prefix + "-images-idx3-ubyte.gz: holds no images");
  if (idims[0] != ldims[0])
    throw DataError(prefix + "-labels-idx1-ubyte.gz: " + std::to_string(ldims[0]) + " labels for " +
                    std::to_string(idims[0]) + " images");
  if (size < idims[1] || size < idims[2])
    throw DataError("data.image_size = " + std::to_string(size) + " is smaller than Fashion-MNIST's " +
                    std::to_string(idims[1]) + "x" + std::to_string(idims[2]));
  auto images = bytes_to_tensor(pixels, {idims[0], 1, idims[1], idims[2]});
  int64_t top = (size - idims[1]) / 2, left = (size - idims[2]) / 2;
  images = torch::constant_pad_nd(images, {left, size - idims[2] - left, top, size - idims[1] - top}, 0);
  return {images, bytes_to_tensor(labels, {ldims[0]}).to(torch::kLong), prefix + "-images-idx3-ubyte.gz"};
}

ImageSet read_cifar10(const std::string& dir, bool train) {
  std::vector<std::string> files;
  if (train)
    for (int i = 1; i <= 5; ++i) files.push_back(dir + "/data_batch_" + std::to_string(i) + ".bin");
  else
    files.push_back(dir + "/test_batch.bin");
  constexpr size_t kRecord = 1 + 3 * 32 * 32;
  std::vector<torch::Tensor> images, labels;
  for (const auto& f : files) {
    if (!fs::exists(f)) throw DataError(f + ": file not found (scripts/download_cifar10.sh fetches CIFAR10)");
    std::string bytes = read_file_bytes(f);
    if (bytes.empty() || bytes.size() % kRecord != 0)
      throw DataError(f + ": wrong size " + std::to_string(bytes.size()) + " (not a multiple of the " +
                      std::to_string(kRecord) + "-byte CIFAR10 record; truncated?)");
    auto records = bytes_to_tensor(bytes, {static_cast<int64_t>(bytes.size() / kRecord), static_cast<int64_t>(kRecord)});
    auto label = records.select(1, 0).to(torch::kLong);
    if (label.max().item<int64_t>() > 9) throw DataError(f + ": label byte above 9, not a CIFAR10 batch");
    labels.push_back(label);
    images.push_back(records.slice(1, 1).reshape({-1, 3, 32, 32}));
  }
  return {torch::cat(images), torch::cat(labels), dir};
}

ImageSet read_celeba(const std::string& dir, int size, const std::string& cache) {
  auto files = image_files(dir);
  std::string cache_path = cache.empty() ? dir + "/../s2dm_celeba_" + std::to_string(size) + ".bin" : cache;
  auto decode = [size](const std::string& file) {
    Image img = read_image(file, 3);
    if (img.width != 178 || img.height != 218)
      throw DataError(file + ": expected an aligned CelebA image of 178x218, got " + std::to_string(img.width) +
                      "x" + std::to_string(img.height));
    return resize(crop(img, 25, 57, 128, 128), size, size);
  };
  return {cached_decode(files, size, 3, cache_path, decode), {}, dir};
}

ImageSet read_image_folder(const std::string& dir, int size, int channels, const std::string& cache) {
  auto files = image_files(dir);
  std::string cache_path = cache.empty() ? dir + "/s2dm_cache_" + std::to_string(size) + "_" +
                                               std::to_string(channels) + ".bin"
                                         : cache;
  auto decode = [size, channels](const std::string& file) {
    return resize(center_crop_square(read_image(file, channels)), size, size);
  };
  return {cached_decode(files, size, channels, cache_path, decode), {}, dir};
}

namespace {

std::string labelled_names() {
  std::string names;
  for (const auto& d : datasets())
    if (d.labelled) names += (names.empty() ? "" : ", ") + d.name;
  return names;
}

}  // namespace

const std::vector<DatasetInfo>& datasets() {
  static const std::vector<DatasetInfo> registry{
      {"fmnist", "/usr/share/datasets/fashion-mnist", true,
       [](const std::string& path, const DataConfig& c, bool train) { return read_fashion_mnist(path, train, c.image_size); }},
      {"cifar10", "data/cifar10/cifar-10-batches-bin", true,
       [](const std::string& path, const DataConfig& c, bool train) {
         if (c.image_size != 32) throw DataError("data.image_size = " + std::to_string(c.image_size) + ": CIFAR10 is 32x32");
         return read_cifar10(path, train);
       }},
      {"celeba", "data/celeba/img_align_celeba", false,
       [](const std::string& path, const DataConfig& c, bool) { return read_celeba(path, c.image_size, c.cache); }},
      {"folder", "data/images", false,
       [](const std::string& path, const DataConfig& c, bool) {
         return read_image_folder(path, c.image_size, c.channels, c.cache);
       }},
  };
  return registry;
}

std::string labelled_datasets() {
  std::string names;
  for (const auto& d : datasets())
    if (d.labelled) names += (names.empty() ? "" : ", ") + d.name;
  return names;
}

}  // namespace s2dm::data

namespace s2dm {
std::vector<std::string> dataset_names() { return names_of(data::datasets()); }

}  // namespace s2dm

namespace s2dm::data {

const DatasetInfo& find_dataset(const std::string& name) {
  return find_by_name(datasets(), name, "data set", "data sets");
}

std::string default_path(const std::string& dataset) { return find_dataset(dataset).default_path; }

ImageSet load_dataset(const DataConfig& c, bool train) {
  const auto& info = find_dataset(c.dataset);
  const std::string path = c.path.empty() ? info.default_path : c.path;
  if (!train && !info.labelled) throw DataError("data.dataset = " + c.dataset + " has no test split (" + labelled_names() + " have)");
  ImageSet set = info.read(path, c, train);
  if (set.images.size(1) != c.channels)
    throw DataError(path + ": " + c.dataset + " has " + std::to_string(set.images.size(1)) +
                    " channel(s), data.channels = " + std::to_string(c.channels));
  if (c.limit > 0 && c.limit < set.images.size(0)) {
    set.images = set.images.slice(0, 0, c.limit).contiguous();
    if (set.labels.defined()) set.labels = set.labels.slice(0, 0, c.limit);
  }
  return set;
}

torch::Tensor to_model_range(const torch::Tensor& images) {
  return images.to(torch::kFloat32).div(127.5).sub(1.0);
}

torch::Tensor to_uint8(const torch::Tensor& x) {
  return ((x.to(torch::kFloat32) + 1.0) * 127.5).round().clamp(0, 255).to(torch::kUInt8);
}

Batcher::Batcher(const ImageSet& set, const torch::Device& device, int64_t batch_size, uint64_t seed,
                 bool random_flip, Placement placement)
    : device_(device), num_(set.images.size(0)), batch_size_(batch_size), seed_(seed), random_flip_(random_flip) {
  if (num_ == 0) throw DataError(set.source + ": the data set is empty");
  const int64_t bytes = set.images.numel();
  on_device_ = placement == Placement::device ||
               (placement == Placement::automatic && (!device.is_cuda() || bytes <= device_memory(device) / 4));
  images_ = on_device_ ? set.images.to(device) : set.images;
  if (!on_device_) spdlog::info("data: {:.1f} GB stay in host memory, sent batch by batch", bytes / 1e9);
  shuffle();
}

void Batcher::shuffle() {
  order_.resize(num_);
  for (int64_t i = 0; i < num_; ++i) order_[i] = i;
  std::mt19937_64 rng(seed_ * 0x9E3779B97F4A7C15ull + static_cast<uint64_t>(epoch_) + 1);
  for (int64_t i = num_ - 1; i > 0; --i) std::swap(order_[i], order_[rng() % static_cast<uint64_t>(i + 1)]);
}

void Batcher::seek(int64_t epoch, int64_t cursor) {
  if (cursor < 0 || cursor > num_) throw DataError("data position " + std::to_string(cursor) + " out of range");
  epoch_ = epoch_served_ = epoch;
  cursor_ = cursor_served_ = cursor;
  ahead_ = {};
  shuffle();
}

Batcher::Pending Batcher::gather() {
  std::vector<int64_t> picked;
  picked.reserve(batch_size_);
  while (static_cast<int64_t>(picked.size()) < batch_size_) {
    if (cursor_ == num_) {
      ++epoch_;
      cursor_ = 0;
      shuffle();
    }
    picked.push_back(order_[cursor_++]);
  }
  // Copies from pinned memory run without the host waiting for the device (from pageable
  // memory they synchronise); the caching host allocator keeps the buffer until the copy is done.
  auto send = [&](torch::Tensor host) {
    return device_.is_cuda() ? host.pin_memory().to(device_, /*non_blocking=*/true) : host;
  };
  auto index = torch::tensor(picked, torch::kLong);
  if (on_device_) return {images_.index_select(0, send(index)), epoch_, cursor_};
  return {send(images_.index_select(0, index)), epoch_, cursor_};
}

torch::Tensor Batcher::next() {
  Pending batch;
  if (on_device_) {
    batch = gather();
  } else {  // one batch ahead: the host gathers the next one while the device works on this one
    batch = ahead_.images.defined() ? ahead_ : gather();
    ahead_ = gather();
  }
  epoch_served_ = batch.epoch;
  cursor_served_ = batch.cursor;
  auto x = to_model_range(batch.images);
  if (random_flip_) {
    auto flip = torch::rand({batch_size_, 1, 1, 1}, x.options()) < 0.5;
    x = torch::where(flip, x.flip({3}), x);
  }
  return x;
}

}  // namespace s2dm::data
