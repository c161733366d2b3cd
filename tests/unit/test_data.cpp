// Data readers on synthetic files in each real format, and the batcher.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "../test_util.h"
#include "s2dm/data/data.h"
#include "s2dm/core/errors.h"
#include "s2dm/io/image_io.h"

using namespace s2dm;
using s2dm::testing::TempDir;

namespace {

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const DataError& e) {
    return e.what();
  }
  return "(no error)";
}

}  // namespace

TEST(FashionMnist, ReadsAndPads) {
  TempDir dir;
  s2dm::testing::write_fake_fmnist(dir.path(), 5);
  auto set = data::read_fashion_mnist(dir.path(), true, 32);
  EXPECT_EQ(set.images.sizes(), (std::vector<int64_t>{5, 1, 32, 32}));
  EXPECT_EQ(set.images.scalar_type(), torch::kUInt8);
  EXPECT_EQ(set.labels[3].item<int64_t>(), 3);
  // Two pixels of zero padding on each side; the square sits at x 9..19 of the 28 (11..21 padded).
  EXPECT_EQ(set.images[0][0][0].sum().item<int64_t>(), 0);
  EXPECT_EQ(set.images[0][0][10][15].item<int>(), 200);
  EXPECT_EQ(set.images[0][0][10][10].item<int>(), 0);
  EXPECT_EQ(set.images[0][0][10][11].item<int>(), 200);
  EXPECT_NE(error_of([&] { data::read_fashion_mnist(dir.path(), true, 24); }).find("smaller"), std::string::npos);
}

TEST(FashionMnist, CorruptFilesNamed) {
  TempDir dir;
  using s2dm::testing::big_endian;
  s2dm::testing::write_fake_fmnist(dir.path(), 3);
  const std::string images = dir / "train-images-idx3-ubyte.gz";
  s2dm::testing::write_gzip(images, big_endian(0x801) + big_endian(3));
  auto msg = error_of([&] { data::read_fashion_mnist(dir.path(), true, 32); });
  EXPECT_NE(msg.find("train-images-idx3-ubyte.gz: wrong idx magic"), std::string::npos) << msg;
  s2dm::testing::write_gzip(images, big_endian(0x803) + big_endian(3) + big_endian(28) + big_endian(28) + "abc");
  msg = error_of([&] { data::read_fashion_mnist(dir.path(), true, 32); });
  EXPECT_NE(msg.find("wrong size"), std::string::npos) << msg;
  // A gzip stream cut short.
  s2dm::testing::write_fake_fmnist(dir.path(), 3);
  auto bytes = s2dm::testing::read_bytes(images);
  s2dm::testing::write_bytes(images, bytes.substr(0, bytes.size() / 2));
  msg = error_of([&] { data::read_fashion_mnist(dir.path(), true, 32); });
  EXPECT_NE(msg.find("train-images-idx3-ubyte.gz"), std::string::npos) << msg;
  msg = error_of([&] { data::read_fashion_mnist(dir / "nowhere", true, 32); });
  EXPECT_NE(msg.find("file not found"), std::string::npos) << msg;
  // Labels that disagree with the images.
  s2dm::testing::write_fake_fmnist(dir.path(), 3);
  s2dm::testing::write_gzip(dir / "train-labels-idx1-ubyte.gz", big_endian(0x801) + big_endian(2) + "\1\2");
  msg = error_of([&] { data::read_fashion_mnist(dir.path(), true, 32); });
  EXPECT_NE(msg.find("2 labels for 3 images"), std::string::npos) << msg;
}

TEST(Cifar10, ReadsBinaryBatches) {
  TempDir dir;
  for (int b = 1; b <= 5; ++b) {
    std::string bytes;
    for (int i = 0; i < 2; ++i) {
      bytes += char(b % 10);
      for (int c = 0; c < 3; ++c) bytes += std::string(1024, char(c * 100 + i));
    }
    s2dm::testing::write_bytes(dir / ("data_batch_" + std::to_string(b) + ".bin"), bytes);
  }
  auto set = data::read_cifar10(dir.path(), true);
  EXPECT_EQ(set.images.sizes(), (std::vector<int64_t>{10, 3, 32, 32}));
  EXPECT_EQ(set.images[1][2][5][5].item<int>(), 201);  // channel planes R, G, B
  EXPECT_EQ(set.labels[9].item<int64_t>(), 5);
  auto msg = error_of([&] { data::read_cifar10(dir.path(), false); });
  EXPECT_NE(msg.find("test_batch.bin: file not found"), std::string::npos) << msg;
  s2dm::testing::write_bytes(dir / "data_batch_3.bin", std::string(3000, '\0'));
  msg = error_of([&] { data::read_cifar10(dir.path(), true); });
  EXPECT_NE(msg.find("data_batch_3.bin: wrong size 3000"), std::string::npos) << msg;
  s2dm::testing::write_bytes(dir / "data_batch_3.bin", std::string(3073, '\x0c'));
  msg = error_of([&] { data::read_cifar10(dir.path(), true); });
  EXPECT_NE(msg.find("label"), std::string::npos) << msg;
}

TEST(CelebA, CropsResizesAndCaches) {
  TempDir dir;
  std::filesystem::create_directories(dir / "img_align_celeba");
  // A 178x218 image, bright inside the DDIM crop box (rows 57..184, columns 25..152).
  Image img{178, 218, 3, std::vector<uint8_t>(178 * 218 * 3, 0)};
  for (int y = 57; y < 185; ++y)
    for (int x = 25; x < 153; ++x)
      for (int c = 0; c < 3; ++c) img.row(y)[x * 3 + c] = 220;
  for (int i = 0; i < 3; ++i)
    s2dm::testing::write_bytes(dir / ("img_align_celeba/00000" + std::to_string(i) + ".jpg"), encode_jpeg(img, 98));
  const std::string cache = dir / "cache.bin";
  auto set = data::read_celeba(dir / "img_align_celeba", 64, cache);
  EXPECT_EQ(set.images.sizes(), (std::vector<int64_t>{3, 3, 64, 64}));
  double mean = set.images.to(torch::kFloat32).mean().item<double>();
  EXPECT_NEAR(mean, 220, 4);  // only the bright box survives the crop
  ASSERT_TRUE(std::filesystem::exists(cache));
  auto again = data::read_celeba(dir / "img_align_celeba", 64, cache);
  EXPECT_TRUE(torch::equal(again.images, set.images));
  // A wrong-size image is named.
  s2dm::testing::write_bytes(dir / "img_align_celeba/000009.jpg", encode_jpeg(Image{10, 10, 3, std::vector<uint8_t>(300, 5)}));
  auto msg = error_of([&] { data::read_celeba(dir / "img_align_celeba", 64, dir / "cache2.bin"); });
  EXPECT_NE(msg.find("000009.jpg: expected an aligned CelebA image"), std::string::npos) << msg;
}

TEST(ImageFolder, ReadsPngAndJpegAndRejectsJunk) {
  TempDir dir;
  Image a{20, 10, 3, std::vector<uint8_t>(600, 100)};
  write_png(dir / "a.png", a);
  s2dm::testing::write_bytes(dir / "b.jpg", encode_jpeg(a));
  s2dm::testing::write_bytes(dir / "notes.txt", "ignored");
  auto set = data::read_image_folder(dir.path(), 8, 1, "");
  EXPECT_EQ(set.images.sizes(), (std::vector<int64_t>{2, 1, 8, 8}));
  EXPECT_NEAR(set.images.to(torch::kFloat32).mean().item<double>(), 100, 2);
  s2dm::testing::write_bytes(dir / "c.png", "broken");
  auto msg = error_of([&] { data::read_image_folder(dir.path(), 8, 3, dir / "other_cache.bin"); });
  EXPECT_NE(msg.find("c.png: cannot decode"), std::string::npos) << msg;
  TempDir empty;
  msg = error_of([&] { data::read_image_folder(empty.path(), 8, 3, ""); });
  EXPECT_NE(msg.find("no PNG or JPEG"), std::string::npos) << msg;
}

TEST(Datasets, TheConfigAcceptsExactlyTheRegistrysNames) {
  // The schema reads data.dataset's choices from the registry: each entry is accepted, and a
  // refused name's message lists them all.
  std::string listed;
  for (const auto& entry : s2dm::data::datasets()) {
    EXPECT_NO_THROW(s2dm::parse_config("data:\n  dataset: " + entry.name + "\n", "x.yaml")) << entry.name;
    EXPECT_EQ(&s2dm::data::find_dataset(entry.name), &entry);
    listed += (listed.empty() ? "" : ", ") + entry.name;
  }
  try {
    s2dm::parse_config("data:\n  dataset: mnist\n", "x.yaml");
    ADD_FAILURE() << "mnist accepted";
  } catch (const s2dm::ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("x.yaml:2: data.dataset = 'mnist' is not one of " + listed), std::string::npos) << e.what();
  }
  EXPECT_THROW(s2dm::data::find_dataset("mnist"), s2dm::ConfigError);
  // Only the two labelled sets have a test split and classes.
  EXPECT_TRUE(s2dm::data::find_dataset("fmnist").labelled);
  EXPECT_TRUE(s2dm::data::find_dataset("cifar10").labelled);
  EXPECT_FALSE(s2dm::data::find_dataset("celeba").labelled);
  EXPECT_FALSE(s2dm::data::find_dataset("folder").labelled);
  EXPECT_EQ(s2dm::data::default_path("fmnist"), "/usr/share/datasets/fashion-mnist");
}

TEST(Datasets, LoadDatasetAppliesLimitAndChecksChannels) {
  TempDir dir;
  s2dm::testing::write_fake_fmnist(dir.path(), 10);
  DataConfig c;
  c.path = dir.path();
  c.limit = 4;
  auto set = data::load_dataset(c);
  EXPECT_EQ(set.images.size(0), 4);
  c.channels = 3;
  EXPECT_THROW(data::load_dataset(c), DataError);
}

TEST(Batcher, DeterministicRangeFlipAndResume) {
  auto images = torch::arange(10, torch::kUInt8).view({10, 1, 1, 1}).expand({10, 1, 2, 2}).contiguous() * 20;
  data::ImageSet set{images, {}, "synthetic"};
  data::Batcher a(set, torch::kCPU, 4, 1, false), b(set, torch::kCPU, 4, 1, false);
  std::vector<double> seen;
  for (int i = 0; i < 5; ++i) {
    auto x = a.next();
    EXPECT_TRUE(torch::equal(x, b.next()));
    EXPECT_GE(x.min().item<double>(), -1.0);
    EXPECT_LE(x.max().item<double>(), 1.0);
    if (i < 2)
      for (int j = 0; j < 4; ++j) seen.push_back(x[j][0][0][0].item<double>());
  }
  // The first epoch visits distinct images.
  std::sort(seen.begin(), seen.end());
  EXPECT_EQ(std::unique(seen.begin(), seen.end()) - seen.begin(), 8);
  // Seeking reproduces the stream.
  data::Batcher c(set, torch::kCPU, 4, 1, false);
  c.seek(a.epoch(), a.cursor());
  EXPECT_TRUE(torch::equal(a.next(), c.next()));
  // Flips mirror images left-right.
  auto asym = torch::zeros({1, 1, 1, 2}, torch::kUInt8);
  asym[0][0][0][0] = 255;
  data::Batcher f(data::ImageSet{asym, {}, "asym"}, torch::kCPU, 64, 0, true);
  auto x = f.next();
  auto flipped = (x.select(3, 1) > 0).sum().item<int64_t>();
  EXPECT_GT(flipped, 10);
  EXPECT_LT(flipped, 54);
  EXPECT_TRUE(torch::equal(data::to_uint8(data::to_model_range(images)), images));
}

TEST(Batcher, HostPlacementServesTheSameStreamOneBatchAhead) {
  // 10 images in batches of 4: epochs end mid-batch, where the one-ahead batch crosses them.
  auto images = torch::arange(10, torch::kUInt8).view({10, 1, 1, 1}).expand({10, 1, 2, 2}).contiguous();
  data::ImageSet set{images, {}, "synthetic"};
  using Placement = data::Batcher::Placement;
  data::Batcher device(set, torch::kCPU, 4, 7, false, Placement::device), host(set, torch::kCPU, 4, 7, false, Placement::host);
  EXPECT_TRUE(device.on_device());
  EXPECT_FALSE(host.on_device());
  for (int i = 0; i < 7; ++i) {
    EXPECT_TRUE(torch::equal(device.next(), host.next())) << "batch " << i;
    // The position is that of the batches served, not of the one gathered ahead.
    EXPECT_EQ(host.epoch(), device.epoch());
    EXPECT_EQ(host.cursor(), device.cursor());
  }
  data::Batcher resumed(set, torch::kCPU, 4, 7, false, Placement::host);
  resumed.seek(host.epoch(), host.cursor());
  EXPECT_EQ(resumed.epoch(), host.epoch());
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(torch::equal(resumed.next(), device.next()));
}
