// safetensors, checkpoints, npy/npz, images.
#include <gtest/gtest.h>
#include <torch/torch.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <functional>

#include "../test_util.h"
#include "fuzz_targets.h"
#include "s2dm/io/checkpoint.h"
#include "s2dm/core/errors.h"
#include "s2dm/core/progress.h"
#include "s2dm/data/data.h"
#include "s2dm/io/file_io.h"
#include "s2dm/io/image_io.h"
#include "s2dm/io/npy.h"
#include "s2dm/io/safetensors.h"

using namespace s2dm;
using s2dm::testing::TempDir;

TEST(Safetensors, RoundTripKeepsNamesDtypesAndOrder) {
  TempDir dir;
  NamedTensors in{{"b.weight", torch::randn({3, 4})},
                  {"a", torch::arange(6, torch::kLong).reshape({2, 3})},
                  {"z.u8", torch::tensor({1, 2, 255}, torch::kUInt8)},
                  {"d", torch::randn({2}, torch::kFloat64)},
                  {"h", torch::randn({2}).to(torch::kBFloat16)},
                  {"scalar", torch::tensor(3.5f)}};
  save_safetensors(dir / "w.safetensors", in, {{"k", "v"}});
  auto out = load_safetensors(dir / "w.safetensors");
  ASSERT_EQ(out.tensors.size(), in.size());
  for (size_t i = 0; i < in.size(); ++i) {
    EXPECT_EQ(out.tensors[i].first, in[i].first);
    EXPECT_EQ(out.tensors[i].second.scalar_type(), in[i].second.scalar_type());
    EXPECT_TRUE(torch::equal(out.tensors[i].second, in[i].second)) << in[i].first;
  }
  EXPECT_EQ(out.metadata.at("k"), "v");
  // Header length is a multiple of 8 (data aligned).
  auto bytes = s2dm::testing::read_bytes(dir / "w.safetensors");
  uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  EXPECT_EQ(n % 8, 0u);
}

TEST(Safetensors, CorruptFilesRejected) {
  TempDir dir;
  save_safetensors(dir / "w.safetensors", {{"x", torch::randn({100})}});
  auto bytes = s2dm::testing::read_bytes(dir / "w.safetensors");
  s2dm::testing::write_bytes(dir / "trunc", bytes.substr(0, bytes.size() - 10));
  EXPECT_THROW(load_safetensors(dir / "trunc"), IoError);
  s2dm::testing::write_bytes(dir / "tiny", "abc");
  EXPECT_THROW(load_safetensors(dir / "tiny"), IoError);
  std::string bad = bytes;
  bad[9] = '!';  // break the JSON
  s2dm::testing::write_bytes(dir / "bad", bad);
  EXPECT_THROW(load_safetensors(dir / "bad"), IoError);
  EXPECT_THROW(load_safetensors(dir / "missing"), IoError);
  EXPECT_THROW(to_safetensors_bytes({{"x", torch::ones(1)}, {"x", torch::ones(1)}}), IoError);
}

namespace {

Checkpoint sample_checkpoint() {
  Checkpoint c;
  c.step = 42;
  c.config_yaml = "name: \"x\"\n";
  c.model = {{"w", torch::randn({4, 4})}};
  c.ema = {{"w", torch::randn({4, 4})}};
  c.optimizer = {{"exp_avg.w", torch::randn({4, 4})}, {"step", torch::tensor(42L)}};
  c.rng = {{"cpu", at::detail::getDefaultCPUGenerator().get_state()}};
  c.extra = {{"data_epoch", "1"}};
  return c;
}

}  // namespace

TEST(Checkpoint, RoundTrip) {
  TempDir dir;
  auto c = sample_checkpoint();
  save_checkpoint(dir / "c.ckpt", c);
  auto back = load_checkpoint(dir / "c.ckpt");
  EXPECT_EQ(back.step, 42);
  EXPECT_EQ(back.config_yaml, c.config_yaml);
  EXPECT_EQ(back.extra.at("data_epoch"), "1");
  ASSERT_EQ(back.model.size(), 1u);
  EXPECT_TRUE(torch::equal(back.model[0].second, c.model[0].second));
  EXPECT_TRUE(torch::equal(back.ema[0].second, c.ema[0].second));
  EXPECT_TRUE(torch::equal(back.rng[0].second, c.rng[0].second));
  ASSERT_EQ(back.optimizer.size(), c.optimizer.size());
  for (size_t i = 0; i < c.optimizer.size(); ++i) {
    EXPECT_EQ(back.optimizer[i].first, c.optimizer[i].first);
    EXPECT_TRUE(torch::equal(back.optimizer[i].second, c.optimizer[i].second)) << c.optimizer[i].first;
  }
  // Written atomically: no temporary file left behind.
  int files = 0;
  for (auto& e : std::filesystem::directory_iterator(dir.path())) files += e.is_regular_file();
  EXPECT_EQ(files, 1);
}

TEST(Checkpoint, ItsFormatIsToldFromTheHeaderAlone) {
  TempDir dir;
  Checkpoint ckpt;
  ckpt.step = 3;
  ckpt.model = {{"w", torch::ones({2})}};
  save_checkpoint(dir / "c.ckpt", ckpt);
  EXPECT_TRUE(is_checkpoint_file(dir / "c.ckpt"));
  save_safetensors(dir / "w.safetensors", {{"w", torch::ones({2})}}, {{"format", "pt"}});
  EXPECT_FALSE(is_checkpoint_file(dir / "w.safetensors"));
  s2dm::testing::write_bytes(dir / "junk.ckpt", "not a checkpoint at all");
  EXPECT_FALSE(is_checkpoint_file(dir / "junk.ckpt"));
  EXPECT_FALSE(is_checkpoint_file(dir / "missing.ckpt"));
  EXPECT_FALSE(is_checkpoint_file(dir.path()));
}

TEST(Checkpoint, CorruptionDetected) {
  TempDir dir;
  save_checkpoint(dir / "c.ckpt", sample_checkpoint());
  auto bytes = s2dm::testing::read_bytes(dir / "c.ckpt");
  std::string flipped = bytes;
  flipped[bytes.size() - 5] ^= 0x40;  // one bit in the tensor data
  s2dm::testing::write_bytes(dir / "flipped.ckpt", flipped);
  try {
    load_checkpoint(dir / "flipped.ckpt");
    FAIL() << "corruption not detected";
  } catch (const CheckpointError& e) {
    EXPECT_NE(std::string(e.what()).find("checksum"), std::string::npos) << e.what();
  }
  s2dm::testing::write_bytes(dir / "trunc.ckpt", bytes.substr(0, bytes.size() / 2));
  EXPECT_THROW(load_checkpoint(dir / "trunc.ckpt"), CheckpointError);
  // A valid safetensors file that is not a checkpoint.
  save_safetensors(dir / "foreign.safetensors", {{"w", torch::ones(2)}});
  try {
    load_checkpoint(dir / "foreign.safetensors");
    FAIL();
  } catch (const CheckpointError& e) {
    EXPECT_NE(std::string(e.what()).find("not an s2dm checkpoint"), std::string::npos) << e.what();
  }
  s2dm::testing::write_bytes(dir / "text.ckpt", "hello world, this is not a checkpoint");
  EXPECT_THROW(load_checkpoint(dir / "text.ckpt"), CheckpointError);
}

TEST(Checkpoint, LoadWeightsChecksNamesAndShapes) {
  auto a = torch::nn::Linear(3, 2), b = torch::nn::Linear(3, 2), c = torch::nn::Linear(4, 2);
  load_weights(*b, named_weights(*a), "a");
  EXPECT_TRUE(torch::equal(a->weight, b->weight));
  EXPECT_THROW(load_weights(*c, named_weights(*a), "a"), CheckpointError);
  auto w = named_weights(*a);
  w.pop_back();
  EXPECT_THROW(load_weights(*b, w, "a"), CheckpointError);
  w = named_weights(*a);
  w.emplace_back("extra", torch::ones(1));
  EXPECT_THROW(load_weights(*b, w, "a"), CheckpointError);
}

TEST(Npy, RoundTripAndHeaderFormat) {
  TempDir dir;
  std::vector<float> values{1.5f, -2.0f, 3.25f, 0.0f, 7.0f, 8.0f};
  NpyArray a{"<f4", {2, 3}, std::string(reinterpret_cast<char*>(values.data()), 24)};
  save_npy(dir / "a.npy", a);
  auto bytes = s2dm::testing::read_bytes(dir / "a.npy");
  EXPECT_NE(bytes.find("'shape': (2, 3)"), std::string::npos);
  EXPECT_EQ((bytes.size() - a.data.size()) % 64, 0u);
  auto b = load_npy(dir / "a.npy");
  EXPECT_EQ(b.dtype, "<f4");
  EXPECT_EQ(b.shape, a.shape);
  EXPECT_EQ(b.data, a.data);
  NpyArray v{"<i8", {3}, std::string(24, '\1')};
  EXPECT_NE(to_npy_bytes(v).find("(3,)"), std::string::npos);
  s2dm::testing::write_bytes(dir / "t.npy", bytes.substr(0, bytes.size() - 4));
  EXPECT_THROW(load_npy(dir / "t.npy"), IoError);
  s2dm::testing::write_bytes(dir / "x.npy", "not numpy at all");
  EXPECT_THROW(load_npy(dir / "x.npy"), IoError);
}

TEST(Npy, NpzStoredRoundTripAndCrcCheck) {
  TempDir dir;
  NpyArray u8{"|u1", {2, 2, 2, 1}, std::string("\x01\x02\x03\x04\x05\x06\x07\x08", 8)};
  NpyArray f8{"<f8", {1}, std::string(8, '\0')};
  save_npz(dir / "s.npz", {{"arr_0", u8}, {"mu", f8}});
  auto back = load_npz(dir / "s.npz");
  ASSERT_EQ(back.size(), 2u);
  EXPECT_EQ(back.at("arr_0").data, u8.data);
  EXPECT_EQ(back.at("arr_0").shape, u8.shape);
  EXPECT_EQ(back.at("mu").dtype, "<f8");
  auto bytes = s2dm::testing::read_bytes(dir / "s.npz");
  auto pos = bytes.find(std::string("\x01\x02\x03\x04", 4));
  ASSERT_NE(pos, std::string::npos);
  bytes[pos] = 9;
  s2dm::testing::write_bytes(dir / "bad.npz", bytes);
  EXPECT_THROW(load_npz(dir / "bad.npz"), IoError);
}

TEST(Npy, NpzCompressedRoundTrip) {
  TempDir dir;
  NpyArray big{"<f8", {1000}, std::string(8000, '\0')};  // compresses well
  save_npz(dir / "c.npz", {{"mu", big}}, true);
  EXPECT_LT(std::filesystem::file_size(dir / "c.npz"), 2000u);
  EXPECT_EQ(load_npz(dir / "c.npz").at("mu").data, big.data);
}

TEST(Images, PngRoundTrip) {
  TempDir dir;
  Image img{3, 2, 3, {}};
  for (int i = 0; i < 18; ++i) img.pixels.push_back(static_cast<uint8_t>(i * 14));
  write_png(dir / "a.png", img);
  auto back = read_image(dir / "a.png", 3);
  EXPECT_EQ(back.width, 3);
  EXPECT_EQ(back.height, 2);
  EXPECT_EQ(back.pixels, img.pixels);
  EXPECT_THROW(read_image(dir / "missing.png", 3), DataError);
  s2dm::testing::write_bytes(dir / "junk.png", "junk");
  EXPECT_THROW(read_image(dir / "junk.png", 3), DataError);
}

TEST(Images, JpegsTheFuzzerBuiltAreRefusedByLibjpeg) {
  // Found by fuzz/ when JPEGs went through Debian 12's stb_image, which wrote past its Huffman
  // arrays on each of them (a table of more than 256 codes, reached in ways a pre-check kept
  // missing): JPEG decoding moved to libjpeg-turbo, which refuses them.
  int seen = 0;
  for (const auto& entry : std::filesystem::directory_iterator(std::string(S2DM_SOURCE_DIR) + "/tests/fixtures/fuzz/image")) {
    if (entry.path().extension() != ".jpg") continue;
    ++seen;
    try {
      read_image(entry.path(), 3);
      ADD_FAILURE() << entry.path() << ": accepted";
    } catch (const DataError& e) {
      EXPECT_EQ(std::string(e.what()).rfind(entry.path().string() + ": ", 0), 0u) << e.what();
    }
  }
  EXPECT_GE(seen, 4);
}

TEST(Images, JpegDecodesAndATruncatedOneIsAnError) {
  TempDir dir;
  Image image{16, 8, 3, {}};
  for (int i = 0; i < 16 * 8 * 3; ++i) image.pixels.push_back(static_cast<uint8_t>(i % 3 == 0 ? 200 : 40));
  const std::string jpeg = encode_jpeg(image, 95);
  s2dm::testing::write_bytes(dir / "a.jpg", jpeg);
  const Image back = read_image(dir / "a.jpg", 3), grey = read_image(dir / "a.jpg", 1);
  ASSERT_EQ(back.width, 16);
  ASSERT_EQ(back.height, 8);
  EXPECT_EQ(grey.channels, 1);
  ASSERT_EQ(grey.pixels.size(), 16u * 8u);
  for (size_t i = 0; i < grey.pixels.size(); ++i) {  // the luma of the colour decode (ITU-R BT.601)
    const double luma = 0.299 * back.pixels[3 * i] + 0.587 * back.pixels[3 * i + 1] + 0.114 * back.pixels[3 * i + 2];
    EXPECT_NEAR(grey.pixels[i], luma, 3.0) << i;
  }
  for (size_t i = 0; i < back.pixels.size(); ++i) EXPECT_NEAR(back.pixels[i], image.pixels[i], 8) << i;
  s2dm::testing::write_bytes(dir / "cut.jpg", jpeg.substr(0, jpeg.size() / 2));
  EXPECT_THROW(read_image(dir / "cut.jpg", 3), DataError);
  s2dm::testing::write_bytes(dir / "text.jpg", "hello");
  EXPECT_THROW(read_image(dir / "text.jpg", 3), DataError);
}

TEST(Images, ResizeByTwoUsesPilTriangleWeights) {
  // Shrinking 4 -> 2 with PIL's bilinear: output 0 = (3/8 a0 + 3/8 a1 + 1/8 a2)/(7/8) at the edge,
  // interior taps 1/8, 3/8, 3/8, 1/8.
  Image row{8, 1, 1, {0, 80, 160, 240, 0, 80, 160, 240}};
  auto out = resize(row, 4, 1);
  ASSERT_EQ(out.pixels.size(), 4u);
  // output 1: centre 3.0, taps j=1..4 weights 1/8,3/8,3/8,1/8: (80+3*160+3*240+0)/8 = 160
  EXPECT_EQ(out.pixels[1], 160);
  // output 0: taps j=0..2 weights 3/8,3/8,1/8 normalised by 7/8: (0+240+160)/7 = 57.1
  EXPECT_EQ(out.pixels[0], 57);
  Image flat{5, 5, 3, std::vector<uint8_t>(75, 77)};
  auto r = resize(flat, 3, 2);
  for (auto p : r.pixels) EXPECT_EQ(p, 77);
}

TEST(Images, TileAndCrop) {
  std::vector<uint8_t> two{10, 20, 30, 40, 50, 60, 70, 80};  // two 2x2 grey images
  auto grid = tile_images(two.data(), 2, 2, 2, 1, 2, 1);
  EXPECT_EQ(grid.width, 7);
  EXPECT_EQ(grid.height, 4);
  EXPECT_EQ(grid.row(1)[1], 10);
  EXPECT_EQ(grid.row(2)[5], 80);
  EXPECT_EQ(grid.row(0)[0], 255);
  Image img{4, 3, 1, {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}};
  auto c = crop(img, 1, 1, 2, 2);
  EXPECT_EQ(c.pixels, (std::vector<uint8_t>{5, 6, 9, 10}));
  EXPECT_THROW(crop(img, 3, 0, 2, 2), DataError);
  EXPECT_EQ(center_crop_square(img).width, 3);
}

TEST(DirectoryLock, OneHolderAtATimeAndAStaleLockIsTakenOver) {
  s2dm::testing::TempDir dir;
  const std::string run = dir / "run", lock_file = run + "/.lock";
  {
    DirectoryLock first(run);  // creates the directory
    EXPECT_NE(read_file_bytes(lock_file).find("pid " + std::to_string(::getpid()) + " on "), std::string::npos);
    try {  // (flock locks belong to open files: a second one in this process conflicts too)
      DirectoryLock second(run);
      ADD_FAILURE() << "a second holder was let in";
    } catch (const ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find("in use by another s2dm process (pid "), std::string::npos) << e.what();
    }
  }
  EXPECT_EQ(read_file_bytes(lock_file), "");  // released cleanly
  s2dm::testing::write_bytes(lock_file, "pid 1 on elsewhere\n");  // left by a killed process
  DirectoryLock again(run);
  EXPECT_NE(read_file_bytes(lock_file).find("pid " + std::to_string(::getpid())), std::string::npos);
}

TEST(Temporaries, OnlyS2dmsOwnOfDeadWritersAreRemoved) {
  // The run directory may hold a user's files: a name like theirs is never taken for s2dm's.
  s2dm::testing::TempDir dir;
  const int dead = 999999999;  // (no such pid)
  const std::string mine = dir / ("checkpoints/latest.ckpt.s2dm-tmp." + std::to_string(dead));
  const std::string theirs = dir / ("notes.tmp." + std::to_string(dead));
  const std::string live = dir / ("config.yaml.s2dm-tmp." + std::to_string(::getpid()));
  std::filesystem::create_directories(dir / "checkpoints");
  for (const auto& f : {mine, theirs, live}) s2dm::testing::write_bytes(f, "x");
  EXPECT_EQ(remove_dead_writers_temporaries(dir.path()), 1);
  EXPECT_FALSE(std::filesystem::exists(mine));
  EXPECT_TRUE(std::filesystem::exists(theirs));
  EXPECT_TRUE(std::filesystem::exists(live));  // its writer is at work
  write_file_atomic(dir / "a.txt", "done");  // leaves no temporary of its own
  EXPECT_EQ(remove_dead_writers_temporaries(dir.path()), 0);
  EXPECT_EQ(read_file_bytes(dir / "a.txt"), "done");
  try {
    read_file_bytes(dir / "checkpoints");
    ADD_FAILURE() << "a directory read as an empty file";
  } catch (const IoError& e) {
    EXPECT_NE(std::string(e.what()).find("is a directory"), std::string::npos) << e.what();
  }
}

TEST(LogFile, KeepsLinesUntilOpenedThenFlushesEachLine) {
  // A run refused at start-up writes nothing; an accepted one gets the lines logged before, and
  // every later line reaches the file at once (a SIGKILL used to leave log.txt empty).
  s2dm::testing::TempDir dir;
  const std::string path = dir / "log.txt";
  LogFile log;
  spdlog::info("before the run was accepted");
  EXPECT_FALSE(std::filesystem::exists(path));
  log.open(path);
  EXPECT_NE(read_file_bytes(path).find("before the run was accepted"), std::string::npos);
  spdlog::info("a later line");
  EXPECT_NE(read_file_bytes(path).find("a later line"), std::string::npos);  // (no flush, no close yet)
  EXPECT_THROW(LogFile().open(dir / "missing/log.txt"), IoError);
}

// A header's size claim is checked against what the file can hold before anything is allocated:
// each file below claims terabytes (or overflows a 64-bit product) in a few bytes, and is refused
// at once with a user error, where a reader trusting it would fail to allocate or crash.
TEST(HeaderClaims, AreCheckedAgainstTheFileBeforeAnythingIsAllocated) {
  TempDir dir;
  auto message = [](const std::function<void()>& read) -> std::string {
    try {
      read();
    } catch (const s2dm::Error& e) {
      return e.what();
    }
    return "(accepted)";
  };
  auto safetensors = [](const std::string& shape, const std::string& offsets = "[0,8]") {
    std::string json = R"({"x":{"dtype":"F32","shape":)" + shape + R"(,"data_offsets":)" + offsets + "}}";
    std::string out(8, '\0');
    out[0] = static_cast<char>(json.size());
    return out + json + std::string(8, '\0');
  };
  for (const char* shape : {"[1000000,1000000]", "[-1,-2]", "[4294967296,4294967296,4294967296]"})
    EXPECT_NE(message([&] { from_safetensors_bytes(safetensors(shape), "w"); }).find("shape and byte range disagree"),
              std::string::npos) << shape;

  for (const char* shape : {"(1000000, 1000000)", "(99999999999999999999,)", "(4294967296, 4294967296, 4294967296)"}) {
    std::string npy = to_npy_bytes({"<f4", {2}, std::string(8, '\0')});
    npy.replace(npy.find("(2,)"), 4, shape);
    npy[8] = static_cast<char>(npy.size() - 10 - 8);  // the header length (8 data bytes follow)
    const auto why = message([&] { from_npy_bytes(npy, "a.npy"); });
    const bool too_many_digits = std::string(shape).find("99999999999999999999") != std::string::npos;  // (malformed)
    EXPECT_NE(why.find(too_many_digits ? "malformed" : "claims more data"), std::string::npos) << shape << ": " << why;
  }
  // An empty array claims nothing, whatever its other dimensions.
  EXPECT_EQ(claimed_bytes({3, 0}, 4, 0), 0);
  EXPECT_EQ(claimed_bytes({0, -1}, 4, 0), -1);
  // ... unless those overflow int64 (LibTorch's strides), as a reviewer's inputs showed.
  EXPECT_EQ(claimed_bytes({999999999999999999, 999999999999999999, 0}, 4, 0), -1);
  EXPECT_EQ(claimed_bytes({0, 1LL << 40, 1LL << 40}, 1, 0), -1);
  EXPECT_NE(message([&] { from_safetensors_bytes(safetensors("[1000000000000000000,1000000000000000000,0]", "[0,0]"), "w"); })
                .find("shape and byte range disagree"),
            std::string::npos);

  save_npz(dir / "a.npz", {{"x", {"<f4", {2}, std::string(8, '\0')}}});
  std::string npz = s2dm::testing::read_bytes(dir / "a.npz");
  const size_t central = static_cast<unsigned char>(npz[npz.size() - 6]) | static_cast<unsigned char>(npz[npz.size() - 5]) << 8;
  npz.replace(central + 24, 4, std::string("\xf0\xff\xff\x7f", 4));  // uncompressed size: 2 GB
  s2dm::testing::write_bytes(dir / "claims.npz", npz);
  EXPECT_NE(message([&] { load_npz(dir / "claims.npz"); }).find("claims 2147483632 bytes"), std::string::npos);

  using s2dm::testing::big_endian;
  const std::string images = dir / "train-images-idx3-ubyte.gz";
  s2dm::testing::write_gzip(dir / "train-labels-idx1-ubyte.gz", big_endian(0x801) + big_endian(1) + "\1");
  s2dm::testing::write_gzip(images, big_endian(0x803) + big_endian(60000) + big_endian(28000) + big_endian(28000));
  EXPECT_NE(message([&] { data::read_fashion_mnist(dir.path(), true, 32); }).find("header claims more data than"),
            std::string::npos);
  // PNG: a chunk longer than the file (found by the fuzzer: stb allocated it, 500 MB), and a
  // header claiming 20000x20000 pixels (stb itself refuses more than 2^30 bytes).
  const std::string fixtures = std::string(S2DM_SOURCE_DIR) + "/tests/fixtures/fuzz/image";
  EXPECT_NE(message([&] { read_image(fixtures + "/png-chunk-claims-500-MB.png", 1); }).find("PNG chunk claims"),
            std::string::npos);
  write_png(dir / "small.png", Image{4, 4, 1, std::vector<uint8_t>(16, 7)});
  std::string png = s2dm::testing::read_bytes(dir / "small.png");
  png.replace(16, 8, big_endian(20000) + big_endian(20000));  // IHDR's width and height
  s2dm::testing::write_bytes(dir / "huge.png", png);
  EXPECT_NE(message([&] { read_image(dir / "huge.png", 3); }).find("claims 20000x20000 pixels"), std::string::npos);

  // A gzip bomb: one image claimed, 64 MB of zeros behind it (64 KB compressed): read no further.
  s2dm::testing::write_gzip(images, big_endian(0x803) + big_endian(1) + big_endian(28) + big_endian(28) +
                                        std::string(64 << 20, '\0'));
  EXPECT_NE(message([&] { data::read_fashion_mnist(dir.path(), true, 32); }).find("promises 784 bytes of data, file has more"),
            std::string::npos);
}

// The fuzz targets (fuzz/fuzz_targets.h) in the suite: every seed is a valid input (so the
// fuzzer starts from files s2dm accepts), and every input the fuzzer ever found a defect with
// (tests/fixtures/fuzz/TARGET/) is now refused as a user error.
TEST(FuzzTargets, SeedsAreAcceptedAndEveryFoundInputIsAUserError) {
  TempDir scratch;
  const std::string source = S2DM_SOURCE_DIR, findings = source + "/tests/fixtures/fuzz";
  for (const auto& target : fuzz::target_names()) {
    const std::string seeds = scratch.path() + "/seeds/" + target;
    fuzz::write_seeds(target, seeds, source);
    int seen = 0;
    for (const auto& seed : std::filesystem::directory_iterator(seeds)) {
      EXPECT_NO_THROW(fuzz::run_target(target, s2dm::testing::read_bytes(seed.path()), scratch.path() + "/run", source))
          << target << " seed " << seed.path();
      ++seen;
    }
    EXPECT_GT(seen, 0) << target;
  }
  int replayed = 0;
  if (std::filesystem::exists(findings))
    for (const auto& entry : std::filesystem::recursive_directory_iterator(findings)) {
      if (!entry.is_regular_file()) continue;
      const std::string target = entry.path().parent_path().filename().string();
      const auto& names = fuzz::target_names();
      ASSERT_NE(std::find(names.begin(), names.end(), target), names.end()) << entry.path() << ": no target of that name";
      bool refused = false;
      try {
        fuzz::run_target(target, s2dm::testing::read_bytes(entry.path()), scratch.path() + "/run", source);
      } catch (const s2dm::Error&) {
        refused = true;
      }  // (anything else fails the test)
      EXPECT_TRUE(refused) << entry.path() << " was accepted";
      ++replayed;
    }
  EXPECT_GT(replayed, 0) << "no findings under " << findings;
  std::printf("[fuzz findings] %d inputs replayed\n", replayed);
}
