#pragma once
// Helpers shared by the tests: scratch directories and synthetic data files in real formats.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <zlib.h>

#include <cstdio>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "s2dm/core/config.h"
#include "s2dm/core/device.h"

namespace s2dm::testing {

// The tests compute with the CPU convolutions every command uses (s2dm::set_cpu_threads).
class CpuConvolutions : public ::testing::Environment {
 public:
  void SetUp() override { s2dm::choose_cpu_convolutions(); }
};
inline ::testing::Environment* const kCpuConvolutions = ::testing::AddGlobalTestEnvironment(new CpuConvolutions);

// A UNet small enough to train a step or sample in well under a second on one core.
inline s2dm::ModelConfig tiny_unet(std::vector<int> attn_resolutions = {8}) {
  s2dm::ModelConfig m;
  m.ch = 32;
  m.ch_mult = {1, 2};
  m.num_res_blocks = 1;
  m.attn_resolutions = std::move(attn_resolutions);
  m.dropout = 0.0;
  return m;
}

// A fresh directory under the system temp dir, removed at the end of the test.
class TempDir {
 public:
  TempDir() {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    std::string name = std::string("s2dm_") + (info ? std::string(info->test_suite_name()) + "_" + info->name() : "t");
    path_ = std::filesystem::temp_directory_path() / (name + "_" + std::to_string(std::random_device{}()));
    std::filesystem::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  std::string path() const { return path_.string(); }
  std::string operator/(const std::string& name) const { return (path_ / name).string(); }

 private:
  std::filesystem::path path_;
};

inline void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

inline std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

inline void write_gzip(const std::string& path, const std::string& bytes) {
  gzFile f = gzopen(path.c_str(), "wb");
  gzwrite(f, bytes.data(), static_cast<unsigned>(bytes.size()));
  gzclose(f);
}

inline std::string big_endian(uint32_t v) {
  return {char(v >> 24), char((v >> 16) & 0xff), char((v >> 8) & 0xff), char(v & 0xff)};
}

// Fashion-MNIST-format idx files (images 28x28 with a bright square per image) in `dir`.
inline void write_fake_fmnist(const std::string& dir, int n, const std::string& split = "train") {
  std::string images = big_endian(0x803) + big_endian(n) + big_endian(28) + big_endian(28);
  std::string labels = big_endian(0x801) + big_endian(n);
  for (int i = 0; i < n; ++i) {
    for (int y = 0; y < 28; ++y)
      for (int x = 0; x < 28; ++x) images += char((x > 8 && x < 20 && y > 4 + i % 5 && y < 22) ? 200 + i % 50 : 0);
    labels += char(i % 10);
  }
  write_gzip(dir + "/" + split + "-images-idx3-ubyte.gz", images);
  write_gzip(dir + "/" + split + "-labels-idx1-ubyte.gz", labels);
}

// Margin audits of the tests whose bounds sit on a float trajectory (training, Monte-Carlo):
// S2DM_TEST_SEED=K shifts every seed those tests draw by K (default 0, the seeds CI runs), and
// each prints "[margin] <what>: <value> (bound <bound>)". S2DM_TEST_THREADS sets the threads of
// the tests that pin them (default 1).
inline uint64_t test_seed(uint64_t base) {
  const char* shift = std::getenv("S2DM_TEST_SEED");
  return base + (shift ? std::strtoull(shift, nullptr, 10) : 0);
}
inline int test_threads() {
  const char* threads = std::getenv("S2DM_TEST_THREADS");
  return threads ? std::atoi(threads) : 1;
}
inline void print_margin(const std::string& what, double value, const std::string& bound) {
  std::printf("[margin] %s: %.4g (bound %s)\n", what.c_str(), value, bound.c_str());
}

struct Result {
  int code;
  std::string output;
};

// Runs a shell command line, capturing stdout and stderr.
inline Result run_shell(const std::string& cmd) {
  FILE* pipe = popen((cmd + " 2>&1").c_str(), "r");
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, pipe)) > 0) out.append(buf, n);
  int status = pclose(pipe);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status), out};
}

#ifdef S2DM_BINARY
// Runs the s2dm tool with `args`.
inline Result run(const std::string& args) { return run_shell(std::string(S2DM_BINARY) + " " + args); }
#endif

#ifdef S2DM_SOURCE_DIR
// The test-size training config: a tiny UNet that trains a step in well under a second.
inline const std::string kTiny = std::string(S2DM_SOURCE_DIR) + "/tests/configs/tiny.yaml";
#endif

// A user error: exit code 2 and a one-line message containing `needle`.
inline void expect_user_error(const Result& r, const std::string& needle) {
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("error: "), std::string::npos) << r.output;
  EXPECT_NE(r.output.find(needle), std::string::npos) << "expected '" << needle << "' in: " << r.output;
}

}  // namespace s2dm::testing
