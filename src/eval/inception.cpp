#include "s2dm/eval/inception.h"

#include <map>

#include "s2dm/io/checkpoint.h"
#include "s2dm/core/errors.h"

namespace s2dm::eval {
namespace nn = torch::nn;
namespace F = torch::nn::functional;

BasicConv2dImpl::BasicConv2dImpl(int64_t in, int64_t out, std::vector<int64_t> kernel, std::vector<int64_t> stride,
                                 std::vector<int64_t> padding) {
  conv = register_module("conv", nn::Conv2d(nn::Conv2dOptions(in, out, kernel).stride(stride).padding(padding).bias(false)));
  bn = register_module("bn", nn::BatchNorm2d(nn::BatchNorm2dOptions(out).eps(0.001)));
}

torch::Tensor BasicConv2dImpl::forward(const torch::Tensor& x) { return torch::relu(bn(conv(x))); }

namespace {

// 3x3 average pooling, stride 1, padding 1, not counting the padding (the FID blocks' choice).
torch::Tensor avg_pool_3x3(const torch::Tensor& x) {
  return F::avg_pool2d(x, F::AvgPool2dFuncOptions(3).stride(1).padding(1).count_include_pad(false));
}
torch::Tensor max_pool(const torch::Tensor& x, int64_t stride, int64_t padding) {
  return F::max_pool2d(x, F::MaxPool2dFuncOptions(3).stride(stride).padding(padding));
}

// The blocks hold their convolutions by torchvision's names.
class Block : public nn::Module {
 protected:
  BasicConv2d add(const std::string& name, int64_t in, int64_t out, std::vector<int64_t> kernel,
                  std::vector<int64_t> stride = {1, 1}, std::vector<int64_t> padding = {0, 0}) {
    auto m = register_module(name, BasicConv2d(std::make_shared<BasicConv2dImpl>(in, out, std::move(kernel),
                                                                                  std::move(stride), std::move(padding))));
    convs_.emplace(name, m);
    return m;
  }
  torch::Tensor operator()(const std::string& name, const torch::Tensor& x) { return convs_.at(name)(x); }

 public:
  virtual torch::Tensor forward(const torch::Tensor& x) = 0;

 private:
  std::map<std::string, BasicConv2d> convs_;
};

class InceptionA : public Block {  // FIDInceptionA
 public:
  InceptionA(int64_t in, int64_t pool_features) {
    add("branch1x1", in, 64, {1, 1});
    add("branch5x5_1", in, 48, {1, 1});
    add("branch5x5_2", 48, 64, {5, 5}, {1, 1}, {2, 2});
    add("branch3x3dbl_1", in, 64, {1, 1});
    add("branch3x3dbl_2", 64, 96, {3, 3}, {1, 1}, {1, 1});
    add("branch3x3dbl_3", 96, 96, {3, 3}, {1, 1}, {1, 1});
    add("branch_pool", in, pool_features, {1, 1});
  }
  torch::Tensor forward(const torch::Tensor& x) override {
    auto& b = *this;
    return torch::cat({b("branch1x1", x), b("branch5x5_2", b("branch5x5_1", x)),
                       b("branch3x3dbl_3", b("branch3x3dbl_2", b("branch3x3dbl_1", x))),
                       b("branch_pool", avg_pool_3x3(x))},
                      1);
  }
};

class InceptionB : public Block {
 public:
  explicit InceptionB(int64_t in) {
    add("branch3x3", in, 384, {3, 3}, {2, 2});
    add("branch3x3dbl_1", in, 64, {1, 1});
    add("branch3x3dbl_2", 64, 96, {3, 3}, {1, 1}, {1, 1});
    add("branch3x3dbl_3", 96, 96, {3, 3}, {2, 2});
  }
  torch::Tensor forward(const torch::Tensor& x) override {
    auto& b = *this;
    return torch::cat({b("branch3x3", x), b("branch3x3dbl_3", b("branch3x3dbl_2", b("branch3x3dbl_1", x))),
                       max_pool(x, 2, 0)},
                      1);
  }
};

class InceptionC : public Block {  // FIDInceptionC
 public:
  InceptionC(int64_t in, int64_t c7) {
    add("branch1x1", in, 192, {1, 1});
    add("branch7x7_1", in, c7, {1, 1});
    add("branch7x7_2", c7, c7, {1, 7}, {1, 1}, {0, 3});
    add("branch7x7_3", c7, 192, {7, 1}, {1, 1}, {3, 0});
    add("branch7x7dbl_1", in, c7, {1, 1});
    add("branch7x7dbl_2", c7, c7, {7, 1}, {1, 1}, {3, 0});
    add("branch7x7dbl_3", c7, c7, {1, 7}, {1, 1}, {0, 3});
    add("branch7x7dbl_4", c7, c7, {7, 1}, {1, 1}, {3, 0});
    add("branch7x7dbl_5", c7, 192, {1, 7}, {1, 1}, {0, 3});
    add("branch_pool", in, 192, {1, 1});
  }
  torch::Tensor forward(const torch::Tensor& x) override {
    auto& b = *this;
    auto dbl = b("branch7x7dbl_1", x);
    for (const char* n : {"branch7x7dbl_2", "branch7x7dbl_3", "branch7x7dbl_4", "branch7x7dbl_5"}) dbl = b(n, dbl);
    return torch::cat({b("branch1x1", x), b("branch7x7_3", b("branch7x7_2", b("branch7x7_1", x))), dbl,
                       b("branch_pool", avg_pool_3x3(x))},
                      1);
  }
};

class InceptionD : public Block {
 public:
  explicit InceptionD(int64_t in) {
    add("branch3x3_1", in, 192, {1, 1});
    add("branch3x3_2", 192, 320, {3, 3}, {2, 2});
    add("branch7x7x3_1", in, 192, {1, 1});
    add("branch7x7x3_2", 192, 192, {1, 7}, {1, 1}, {0, 3});
    add("branch7x7x3_3", 192, 192, {7, 1}, {1, 1}, {3, 0});
    add("branch7x7x3_4", 192, 192, {3, 3}, {2, 2});
  }
  torch::Tensor forward(const torch::Tensor& x) override {
    auto& b = *this;
    auto b7 = b("branch7x7x3_4", b("branch7x7x3_3", b("branch7x7x3_2", b("branch7x7x3_1", x))));
    return torch::cat({b("branch3x3_2", b("branch3x3_1", x)), b7, max_pool(x, 2, 0)}, 1);
  }
};

class InceptionE : public Block {  // FIDInceptionE_1 (average pool) / FIDInceptionE_2 (max pool)
 public:
  InceptionE(int64_t in, bool max_pool_branch) : max_pool_branch_(max_pool_branch) {
    add("branch1x1", in, 320, {1, 1});
    add("branch3x3_1", in, 384, {1, 1});
    add("branch3x3_2a", 384, 384, {1, 3}, {1, 1}, {0, 1});
    add("branch3x3_2b", 384, 384, {3, 1}, {1, 1}, {1, 0});
    add("branch3x3dbl_1", in, 448, {1, 1});
    add("branch3x3dbl_2", 448, 384, {3, 3}, {1, 1}, {1, 1});
    add("branch3x3dbl_3a", 384, 384, {1, 3}, {1, 1}, {0, 1});
    add("branch3x3dbl_3b", 384, 384, {3, 1}, {1, 1}, {1, 0});
    add("branch_pool", in, 192, {1, 1});
  }
  torch::Tensor forward(const torch::Tensor& x) override {
    auto& b = *this;
    auto b3 = b("branch3x3_1", x);
    auto dbl = b("branch3x3dbl_2", b("branch3x3dbl_1", x));
    auto pooled = max_pool_branch_ ? max_pool(x, 1, 1) : avg_pool_3x3(x);
    return torch::cat({b("branch1x1", x), b("branch3x3_2a", b3), b("branch3x3_2b", b3), b("branch3x3dbl_3a", dbl),
                       b("branch3x3dbl_3b", dbl), b("branch_pool", pooled)},
                      1);
  }

 private:
  bool max_pool_branch_;
};

}  // namespace

struct FidInceptionImpl::Layers {
  std::vector<BasicConv2d> stem;              // Conv2d_1a ... Conv2d_4a
  std::vector<std::shared_ptr<Block>> mixed;  // Mixed_5b ... Mixed_7c
};

FidInceptionImpl::FidInceptionImpl() : layers_(std::make_shared<Layers>()) {
  auto stem = [&](const char* name, int64_t in, int64_t out, std::vector<int64_t> kernel,
                  std::vector<int64_t> stride = {1, 1}, std::vector<int64_t> padding = {0, 0}) {
    layers_->stem.push_back(register_module(name, BasicConv2d(std::make_shared<BasicConv2dImpl>(
                                                      in, out, std::move(kernel), std::move(stride), std::move(padding)))));
  };
  stem("Conv2d_1a_3x3", 3, 32, {3, 3}, {2, 2});
  stem("Conv2d_2a_3x3", 32, 32, {3, 3});
  stem("Conv2d_2b_3x3", 32, 64, {3, 3}, {1, 1}, {1, 1});
  stem("Conv2d_3b_1x1", 64, 80, {1, 1});
  stem("Conv2d_4a_3x3", 80, 192, {3, 3});
  const std::vector<std::pair<std::string, std::shared_ptr<Block>>> mixed{
      {"Mixed_5b", std::make_shared<InceptionA>(192, 32)},  {"Mixed_5c", std::make_shared<InceptionA>(256, 64)},
      {"Mixed_5d", std::make_shared<InceptionA>(288, 64)},  {"Mixed_6a", std::make_shared<InceptionB>(288)},
      {"Mixed_6b", std::make_shared<InceptionC>(768, 128)}, {"Mixed_6c", std::make_shared<InceptionC>(768, 160)},
      {"Mixed_6d", std::make_shared<InceptionC>(768, 160)}, {"Mixed_6e", std::make_shared<InceptionC>(768, 192)},
      {"Mixed_7a", std::make_shared<InceptionD>(768)},      {"Mixed_7b", std::make_shared<InceptionE>(1280, false)},
      {"Mixed_7c", std::make_shared<InceptionE>(2048, true)}};
  for (const auto& [name, block] : mixed) layers_->mixed.push_back(register_module(name, block));
  register_module("fc", nn::Linear(2048, 1008));  // unused for FID; present so the weight file loads whole
}

torch::Tensor FidInceptionImpl::features(const torch::Tensor& input) {
  auto& stem = layers_->stem;
  auto x = stem[2]->forward(stem[1]->forward(stem[0]->forward(input)));
  x = max_pool(x, 2, 0);
  x = max_pool(stem[4]->forward(stem[3]->forward(x)), 2, 0);
  for (const auto& block : layers_->mixed) x = block->forward(x);
  return x.mean({2, 3});
}

torch::Tensor fid_preprocess(const torch::Tensor& images) {
  auto x = images.to(torch::kFloat32);
  if (x.size(1) == 1) x = x.expand({-1, 3, -1, -1});
  x = F::interpolate(x, F::InterpolateFuncOptions()
                            .size(std::vector<int64_t>{299, 299})
                            .mode(torch::kBilinear)
                            .align_corners(false));
  return 2 * x - 1;
}

torch::Tensor FidInceptionImpl::forward(const torch::Tensor& images) { return features(fid_preprocess(images)); }

void load_inception_weights(FidInception& net, const std::string& path) {
  Safetensors file;
  try {
    file = load_safetensors(path);
  } catch (const IoError& e) {
    throw CheckpointError(std::string(e.what()) + " (Inception weights: convert pytorch-fid's file with "
                                                  "scripts/convert_fid_inception.py)");
  }
  NamedTensors weights;
  for (auto& [name, t] : file.tensors)
    if (name.find("num_batches_tracked") == std::string::npos && name.rfind("AuxLogits", 0) != 0)
      weights.emplace_back(name, t);
  // BatchNorm's step counters are not part of the FID weights: take them from the network.
  for (const auto& item : net->named_buffers())
    if (item.key().find("num_batches_tracked") != std::string::npos) weights.emplace_back(item.key(), item.value());
  load_weights(*net, weights, path);
}

}  // namespace s2dm::eval
