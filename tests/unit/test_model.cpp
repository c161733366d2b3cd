// UNet, noise schedule, losses, optimiser and EMA.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

#include "../test_util.h"
#include "s2dm/io/checkpoint.h"
#include "s2dm/core/compat.h"
#include "s2dm/core/config.h"
#include "s2dm/core/errors.h"
#include "s2dm/diffusion/losses.h"
#include "s2dm/diffusion/noise_schedule.h"
#include "s2dm/optim/optim.h"
#include "s2dm/io/safetensors.h"
#include "s2dm/model/unet.h"

using namespace s2dm;

using s2dm::testing::tiny_unet;

TEST(NoiseSchedule, LinearMatchesReferenceValues) {
  auto s = NoiseSchedule::linear(1000);
  const auto& ab = s.alphas_cumprod();
  EXPECT_DOUBLE_EQ(ab[0], 0.9999);
  EXPECT_NEAR(ab[499], 0.0785872429, 1e-10);
  EXPECT_NEAR(ab[999] / 4.0358297654e-05, 1.0, 1e-9);
  EXPECT_DOUBLE_EQ(s.betas()[999], 0.02);
}

TEST(NoiseSchedule, FractionalTimeInterpolatesLogAlpha) {
  auto s = NoiseSchedule::linear(1000);
  EXPECT_DOUBLE_EQ(s.alpha_bar(499.0), s.alphas_cumprod()[499]);
  EXPECT_DOUBLE_EQ(s.alpha_bar(-1.0), 1.0);
  double mid = s.alpha_bar(499.5);
  EXPECT_NEAR(mid, std::sqrt(s.alphas_cumprod()[499] * s.alphas_cumprod()[500]), 1e-15);
  EXPECT_THROW(s.alpha_bar(1000.0), ConfigError);
}

TEST(NoiseSchedule, CosineIsMonotoneAndClipped) {
  auto s = NoiseSchedule::cosine(1000);
  for (int t = 1; t < 1000; ++t) EXPECT_LT(s.alphas_cumprod()[t], s.alphas_cumprod()[t - 1]);
  for (double b : s.betas()) EXPECT_LE(b, 0.999);
  EXPECT_GT(s.alphas_cumprod()[0], 0.9999);
}

TEST(UNet, Cifar10ParameterCountNamesAndShapes) {
  ModelConfig m;  // defaults: the CIFAR10 config
  model::UNet net(m, 3, 32);
  EXPECT_EQ(model::count_parameters(*net), 35746307);
  auto named = named_weights(*net);
  EXPECT_EQ(named.size(), 328u);
  std::map<std::string, std::vector<int64_t>> shapes;
  for (auto& [n, t] : named) shapes[n] = t.sizes().vec();
  // A sample of the reference Model's state_dict keys with their shapes.
  const std::map<std::string, std::vector<int64_t>> expected{
      {"temb.dense.0.weight", {512, 128}},
      {"temb.dense.1.bias", {512}},
      {"conv_in.weight", {128, 3, 3, 3}},
      {"down.0.block.0.norm1.weight", {128}},
      {"down.0.block.0.temb_proj.weight", {128, 512}},
      {"down.0.downsample.conv.weight", {128, 128, 3, 3}},
      {"down.1.block.0.nin_shortcut.weight", {256, 128, 1, 1}},
      {"down.1.attn.0.q.weight", {256, 256, 1, 1}},
      {"down.1.attn.1.proj_out.bias", {256}},
      {"mid.block_1.conv1.weight", {256, 256, 3, 3}},
      {"mid.attn_1.k.weight", {256, 256, 1, 1}},
      {"mid.block_2.norm2.bias", {256}},
      {"up.3.block.2.nin_shortcut.weight", {256, 512, 1, 1}},
      {"up.1.upsample.conv.weight", {256, 256, 3, 3}},
      {"up.1.attn.2.v.weight", {256, 256, 1, 1}},
      {"up.0.block.2.conv1.weight", {128, 256, 3, 3}},
      {"norm_out.weight", {128}},
      {"conv_out.weight", {3, 128, 3, 3}},
  };
  for (const auto& [name, shape] : expected) {
    ASSERT_TRUE(shapes.count(name)) << name;
    EXPECT_EQ(shapes[name], shape) << name;
  }
  EXPECT_FALSE(shapes.count("down.3.downsample.conv.weight"));
  EXPECT_FALSE(shapes.count("up.0.upsample.conv.weight"));
  EXPECT_EQ(net->num_skips(), 12);
}

TEST(UNet, Celeba64ParameterCount) {
  ModelConfig m;
  m.ch_mult = {1, 2, 2, 2, 4};
  model::UNet net(m, 3, 64);
  EXPECT_EQ(model::count_parameters(*net), 78700803);
  EXPECT_EQ(named_weights(*net).size(), 390u);
  EXPECT_EQ(net->num_skips(), 15);
}

TEST(UNet, ForwardFlopsCountEveryProduct) {
  // One level, one block, no attention below the middle, 1x8x8 images: by hand, in multiply-adds.
  ModelConfig m;
  m.ch = 32;
  m.ch_mult = {1};
  m.num_res_blocks = 1;
  m.attn_resolutions = {};
  const int64_t px = 8 * 8, temb = 32 * 128 + 128 * 128, conv_in = 1 * 32 * 9 * px, conv_out = 32 * 1 * 9 * px;
  const int64_t block32 = 2 * 32 * 32 * 9 * px + 128 * 32;                             // conv1, conv2, temb_proj
  const int64_t block64 = 64 * 32 * 9 * px + 32 * 32 * 9 * px + 128 * 32 + 64 * 32 * px;  // + 1x1 shortcut
  const int64_t attn = 4 * 32 * 32 * px + 2 * px * px * 32;                             // q, k, v, proj; qkᵀ, wv
  // encoder block; middle: 2 blocks + attention; decoder: 2 blocks on [h, skip] (64 channels).
  const int64_t macs = temb + conv_in + block32 + 2 * block32 + attn + 2 * block64 + conv_out;
  EXPECT_EQ(model::UNet(m, 1, 8)->forward_flops(), 2 * macs);
  // The CIFAR10 model: 6.05 G multiply-adds per image in its layers, as layer-hooking profilers
  // of the reference count it, plus the attention products (q kᵀ and w v) they miss: five
  // attention blocks at 16x16 with 256 channels and one at 4x4 in the middle.
  const double attention_products = 5 * 2.0 * 256 * 256 * 256 + 2.0 * 16 * 16 * 256;
  EXPECT_NEAR((model::UNet(ModelConfig{}, 3, 32)->forward_flops() / 2 - attention_products) / 1e9, 6.05, 0.005);
}

TEST(UNet, ChannelsLastComputesTheSameFunction) {
  torch::manual_seed(2);
  model::UNet net(tiny_unet(), 3, 16);
  net->eval();
  torch::NoGradGuard g;
  auto x = torch::randn({2, 3, 16, 16});
  auto t = torch::tensor({10.0f, 900.0f});
  auto nchw = net->forward(x, t);
  NamedTensors before;
  for (const auto& [name, w] : named_weights(*net)) before.emplace_back(name, w.clone());
  net->set_memory_format(torch::MemoryFormat::ChannelsLast);
  EXPECT_TRUE(net->named_parameters()["conv_in.weight"].is_contiguous(torch::MemoryFormat::ChannelsLast));
  auto nhwc = net->forward(x, t);
  EXPECT_TRUE(nhwc.is_contiguous());
  EXPECT_TRUE(torch::allclose(nhwc, nchw, 1e-4, 1e-5));
  // The same weights in another layout, written to a file as NCHW and read back into an NCHW model.
  s2dm::testing::TempDir tmp;
  save_safetensors(tmp / "w.safetensors", named_weights(*net));
  model::UNet plain(tiny_unet(), 3, 16);
  load_weights(*plain, load_safetensors(tmp / "w.safetensors").tensors, "w.safetensors");
  const auto after = named_weights(*plain);
  for (size_t i = 0; i < before.size(); ++i) EXPECT_TRUE(torch::equal(after[i].second, before[i].second)) << before[i].first;
}

TEST(Convolutions, CpuFloat32EqualsFloat64ForEveryChannelCount) {
  // s2dm's CPU convolutions (choose_cpu_convolutions, what every command sets): float32 forward
  // and gradients equal float64's for the channel counts oneDNN 3.6 gets wrong (24, 40: NaN or
  // O(1) errors there) and the usual ones, in both memory formats.
  s2dm::choose_cpu_convolutions();
  torch::manual_seed(0);
  auto relative = [](const torch::Tensor& a, const torch::Tensor& reference) {
    return ((a.to(torch::kFloat64) - reference).norm() / reference.norm()).item<double>();
  };
  for (const auto format : {torch::MemoryFormat::Contiguous, torch::MemoryFormat::ChannelsLast})
    for (const int64_t in : {1, 16, 24, 32, 40})
      for (const int64_t batch : {1, 4}) {
        const auto x = torch::randn({batch, in, 16, 16}, torch::kFloat64), w = torch::randn({16, in, 3, 3}, torch::kFloat64),
                   b = torch::randn({16}, torch::kFloat64), dy = torch::randn({batch, 16, 16, 16}, torch::kFloat64);
        std::vector<torch::Tensor> results[2];
        for (const auto dtype : {torch::kFloat64, torch::kFloat32}) {
          const std::vector<torch::Tensor> inputs{x.to(dtype).contiguous(format).requires_grad_(),
                                                  w.to(dtype).contiguous(format).requires_grad_(), b.to(dtype).requires_grad_()};
          const auto y = torch::conv2d(inputs[0], inputs[1], inputs[2], 1, 1);
          auto& r = results[dtype == torch::kFloat32];
          r = torch::autograd::grad({y}, inputs, {dy.to(dtype)});
          r.insert(r.begin(), y);
        }
        const char* names[] = {"y", "dx", "dw", "db"};
        for (int i = 0; i < 4; ++i)
          EXPECT_LT(relative(results[1][i], results[0][i]), 1e-5)
              << names[i] << ": " << in << " channels, batch " << batch << ", channels-last " << (format != torch::MemoryFormat::Contiguous);
      }
}

TEST(UNet, OutputShapeAndSkipChannels) {
  torch::manual_seed(0);
  model::UNet net(tiny_unet(), 3, 16);
  auto y = net->forward(torch::randn({2, 3, 16, 16}), torch::tensor({3.0f, 500.5f}));
  EXPECT_EQ(y.sizes(), (std::vector<int64_t>{2, 3, 16, 16}));
  // pushed: conv_in 32, level0 block 32, downsample 32, level1 block 64 -> deepest first.
  EXPECT_EQ(net->skip_channels(), (std::vector<int64_t>{64, 32, 32, 32}));
  // The same from the config alone, for this and the paper-size architecture.
  EXPECT_EQ(model::skip_channels(tiny_unet()), net->skip_channels());
  EXPECT_EQ(model::num_skips(ModelConfig{}), model::UNet(ModelConfig{}, 3, 32)->num_skips());
}

TEST(UNet, UnitSkipScalesChangeNothingOthersDo) {
  torch::manual_seed(1);
  model::UNet net(tiny_unet(), 1, 16);
  net->eval();
  torch::NoGradGuard g;
  auto x = torch::randn({2, 1, 16, 16});
  auto t = torch::tensor({10.0f, 900.0f});
  // Give the decoder non-trivial weights (zero-initialised nothing, but make sure).
  auto base = net->forward(x, t);
  EXPECT_TRUE(torch::equal(net->forward(x, t, std::vector<double>(net->num_skips(), 1.0)), base));
  auto scales = std::vector<double>(net->num_skips(), 1.0);
  scales[0] = 0.5;
  EXPECT_FALSE(torch::allclose(net->forward(x, t, scales), base));
  EXPECT_THROW(net->forward(x, t, {1.0, 1.0}), ConfigError);
  EXPECT_TRUE(torch::equal(net->forward(x, t), base));  // the network keeps no scales
}

TEST(UNet, TimestepEmbeddingMatchesFormula) {
  auto e = model::timestep_embedding(torch::tensor({0.0f, 10.0f}), 8);
  ASSERT_EQ(e.sizes(), (std::vector<int64_t>{2, 8}));
  const double scale = std::log(10000.0) / 3;
  for (int i = 0; i < 4; ++i) {
    double f = std::exp(-scale * i);
    EXPECT_NEAR(e[1][i].item<double>(), std::sin(10 * f), 1e-5);
    EXPECT_NEAR(e[1][i + 4].item<double>(), std::cos(10 * f), 1e-5);
  }
}

TEST(Losses, RegistryByName) {
  // The schema reads loss.type's choices from the registry: each entry is accepted.
  for (const auto& entry : diffusion::losses()) {
    EXPECT_NO_THROW(s2dm::parse_config("loss:\n  type: " + entry.name + "\n", "x.yaml")) << entry.name;
    EXPECT_EQ(&diffusion::find_loss(entry.name), &entry);
  }
  EXPECT_FALSE(diffusion::find_loss("simple").second_noise);
  EXPECT_TRUE(diffusion::find_loss("s2dm").second_noise);
  try {
    diffusion::find_loss("s2md");
    ADD_FAILURE() << "no error";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("did you mean 's2dm'"), std::string::npos) << e.what();
  }
}

TEST(Losses, AntitheticTimesteps) {
  torch::manual_seed(0);
  auto t = diffusion::sample_timesteps(8, 1000, true, torch::kCPU);
  ASSERT_EQ(t.size(0), 8);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(t[i].item<int64_t>() + t[i + 4].item<int64_t>(), 999);
  EXPECT_EQ(diffusion::sample_timesteps(7, 1000, true, torch::kCPU).size(0), 7);
  // Uniform on {0, ..., 999}: both ends reached in 10 000 draws (each missed with probability
  // e^-10), the mean within 4 standard errors (289 / √10 000 ≈ 2.9) of 499.5.
  auto u = diffusion::sample_timesteps(10000, 1000, false, torch::kCPU);
  EXPECT_EQ(u.min().item<int64_t>(), 0);
  EXPECT_EQ(u.max().item<int64_t>(), 999);
  EXPECT_NEAR(u.to(torch::kFloat64).mean().item<double>(), 499.5, 12);
}

TEST(Losses, SimpleLossIsMeanSquaredError) {
  LossConfig lc;
  auto sched = NoiseSchedule::linear(1000);
  diffusion::DiffusionLoss loss(lc, sched, torch::kCPU);
  auto e1 = torch::randn({3, 2, 4, 4}), pred = torch::randn({3, 2, 4, 4});
  auto t = torch::tensor({0L, 500L, 999L});
  auto out = loss.combine(e1, {}, pred, t);
  EXPECT_NEAR(out.loss.item<double>(), (e1 - pred).pow(2).mean().item<double>(), 1e-6);
}

TEST(Losses, SkipLossMatchesDirectComputationIncludingSmallT) {
  LossConfig lc;
  lc.type = "s2dm";
  lc.skip_k = 9;
  lc.tau = 0.99;
  auto sched = NoiseSchedule::linear(1000);
  diffusion::DiffusionLoss loss(lc, sched, torch::kCPU);
  torch::manual_seed(3);
  auto e1 = torch::randn({4, 1, 3, 3}), e2 = torch::randn({4, 1, 3, 3}), pred = torch::randn({4, 1, 3, 3});
  auto t = torch::tensor({0L, 8L, 9L, 700L});
  const auto& ab = sched.alphas_cumprod();
  double expected = 0;
  for (int i = 0; i < 4; ++i) {
    int64_t ti = t[i].item<int64_t>();
    double simple = (e1[i] - pred[i]).pow(2).mean().item<double>();
    if (ti < 9) {
      expected += simple;
      continue;
    }
    double a_skip = ab[ti] / ab[ti - 9];
    double c = std::sqrt((1 - a_skip) / a_skip);
    double skip = (e2[i] - c * pred[i]).pow(2).mean().item<double>();
    expected += 0.99 * simple + 0.01 * skip;
  }
  auto out = loss.combine(e1, e2, pred, t);
  EXPECT_NEAR(out.loss.item<double>(), expected / 4, 1e-6);
  EXPECT_EQ(out.term("loss_skip").count.item<int64_t>(), 2);
  EXPECT_DOUBLE_EQ(loss.skip_coefficients()[8].item<double>(), 0.0);
}

TEST(Losses, SkipTermSendsGradientThroughPrediction) {
  LossConfig lc;
  lc.type = "s2dm";
  lc.tau = 0.0;  // only ℓ_skip for t >= k
  auto sched = NoiseSchedule::linear(1000);
  diffusion::DiffusionLoss loss(lc, sched, torch::kCPU);
  auto pred = torch::randn({1, 1, 2, 2}, torch::requires_grad());
  auto e1 = torch::randn({1, 1, 2, 2}), e2 = torch::randn({1, 1, 2, 2});
  auto t = torch::tensor({500L});
  loss.combine(e1, e2, pred, t).loss.backward();
  double c = loss.skip_coefficients()[500].item<double>();
  // d/dpred mean (e2 - c pred)^2 = -2 c (e2 - c pred) / n
  auto expected = -2.0 * c * (e2 - c * pred.detach()) / 4.0;
  EXPECT_TRUE(torch::allclose(pred.grad(), expected, 1e-5, 1e-6));
}

TEST(Losses, SharedNoiseUsesEpsilonTwice) {
  LossConfig lc;
  lc.type = "s2dm";
  lc.noise = "shared";
  auto sched = NoiseSchedule::linear(1000);
  diffusion::DiffusionLoss loss(lc, sched, torch::kCPU);
  auto x0 = torch::zeros({2, 1, 4, 4});
  auto t = torch::tensor({100L, 900L});
  torch::Tensor seen;
  auto model = [&](const torch::Tensor& x, const torch::Tensor&) {
    seen = x;
    return torch::zeros_like(x);
  };
  auto out = loss(model, x0, t);
  // With ε̂ = 0 both terms equal mean ε² for the same ε.
  auto eps = seen / torch::tensor({std::sqrt(1 - sched.alphas_cumprod()[100]), std::sqrt(1 - sched.alphas_cumprod()[900])}).view({2, 1, 1, 1}).to(torch::kFloat32);
  EXPECT_NEAR(out.loss.item<double>(), eps.pow(2).mean().item<double>(), 1e-5);
  EXPECT_EQ(out.term("loss_skip").count.item<int64_t>(), 2);
  EXPECT_NEAR(out.term("loss_skip").value.item<double>() / 2, eps.pow(2).flatten(1).mean(1).mean().item<double>(), 1e-5);
}

TEST(Losses, EachLossComputesItsTermsFromTheBatchAndTheNetwork) {
  // The interface: a loss gets the batch (x0, t, the noises) and the network, and reports named
  // terms; the trainer logs them as they say (a batch mean, or a sum with its count).
  auto sched = NoiseSchedule::linear(1000);
  for (const auto& info : diffusion::losses()) {
    LossConfig lc;
    lc.type = info.name;
    lc.skip_k = 100;
    diffusion::DiffusionLoss loss(lc, sched, torch::kCPU, false);
    torch::manual_seed(5);
    const auto t = loss.draw_timesteps(6);
    torch::manual_seed(5);
    EXPECT_TRUE(torch::equal(t, diffusion::sample_timesteps(6, 1000, false, torch::kCPU))) << info.name;
    const auto x0 = torch::randn({6, 1, 4, 4});
    int calls = 0;
    const auto out = loss([&](const torch::Tensor& x, const torch::Tensor&) { ++calls; return 0.5 * x; }, x0, t);
    EXPECT_EQ(calls, 1) << info.name;
    EXPECT_EQ(out.loss.dim(), 0) << info.name;
    EXPECT_FALSE(out.term("loss_simple").count.defined()) << info.name;  // a batch mean
    EXPECT_TRUE(out.term("loss_skip").count.defined()) << info.name;     // a sum over the samples t >= k
    EXPECT_EQ(out.term("loss_skip").count.item<int64_t>(),
              info.second_noise ? (t >= 100).sum().item<int64_t>() : 0) << info.name;
    EXPECT_THROW(out.term("loss_edm"), std::out_of_range);
  }
}

TEST(Optim, AdamMatchesTorchAdam) {
  torch::manual_seed(0);
  auto p1 = torch::randn({5}, torch::requires_grad());
  auto p2 = p1.detach().clone().requires_grad_(true);
  optim::Adam ours({{"p", p1}}, {0.9, 0.999, 1e-8, 0.01, false});
  torch::optim::Adam theirs({p2}, torch::optim::AdamOptions(0.01).weight_decay(0.01));
  for (int step = 0; step < 5; ++step) {
    auto target = torch::randn({5});
    ours.zero_grad();
    theirs.zero_grad();
    (p1 - target).pow(2).sum().backward();
    (p2 - target).pow(2).sum().backward();
    ours.step(0.01);
    theirs.step();
  }
  EXPECT_TRUE(torch::allclose(p1, p2, 1e-6, 1e-7));
  EXPECT_EQ(ours.steps(), 5);
}

TEST(Optim, FusedAdamFollowsTheSameRule) {
  if (!compat::kHasFusedAdam) GTEST_SKIP() << "s2dm uses fused Adam from LibTorch 2.6 on, this is " << compat::torch_version();
  for (const bool decoupled : {false, true}) {
    torch::manual_seed(0);
    NamedTensors a{{"w", torch::randn({4, 3, 3, 3})}, {"b", torch::randn({4})}, {"unused", torch::randn({2})}};
    NamedTensors b;
    for (auto& [name, p] : a) {
      p.requires_grad_(true);
      b.emplace_back(name, p.detach().clone().requires_grad_(true));
    }
    optim::Adam fused(a, {0.9, 0.99, 1e-8, 0.05, decoupled, true});
    optim::Adam plain(b, {0.9, 0.99, 1e-8, 0.05, decoupled, false});
    for (int step = 0; step < 20; ++step) {
      auto target = torch::randn({4, 3, 3, 3});
      for (auto* params : {&a, &b}) {
        ((*params)[0].second - target).square().sum().add((*params)[1].second.sum() * 0.3).backward();
      }
      const double lr = 1e-2 * (1 + step % 3);  // a changing rate, as warm-up makes it
      fused.step(lr);
      plain.step(lr);
      fused.zero_grad();
      plain.zero_grad();
    }
    for (size_t i = 0; i < a.size(); ++i)
      EXPECT_TRUE(torch::allclose(a[i].second, b[i].second, 1e-6, 1e-6)) << a[i].first << " decoupled " << decoupled;
    EXPECT_TRUE(torch::equal(a[2].second, b[2].second));  // no gradient, no update
    auto fs = fused.state(), ps = plain.state();
    for (size_t i = 0; i < fs.size(); ++i) EXPECT_TRUE(torch::allclose(fs[i].second, ps[i].second, 1e-6, 1e-6)) << fs[i].first;
  }
}

TEST(Optim, AdamStateRoundTrip) {
  auto p = torch::randn({3}, torch::requires_grad());
  optim::Adam a({{"w", p}}, {});
  p.sum().backward();
  a.step(0.1);
  auto state = a.state();
  auto q = p.detach().clone().requires_grad_(true);
  optim::Adam b({{"w", q}}, {});
  b.load_state(state);
  EXPECT_EQ(b.steps(), 1);
  const auto back = b.state();  // the moments too, not only the step count
  ASSERT_EQ(back.size(), state.size());
  for (size_t i = 0; i < state.size(); ++i) {
    EXPECT_EQ(back[i].first, state[i].first);
    EXPECT_TRUE(torch::equal(back[i].second, state[i].second)) << state[i].first;
  }
  EXPECT_THROW(b.load_state({}), CheckpointError);
}

TEST(Optim, ClipGradNorm) {
  auto p = torch::zeros({2}, torch::requires_grad());
  (p * torch::tensor({3.0f, 4.0f})).sum().backward();
  EXPECT_NEAR(optim::clip_grad_norm({p}, 1.0).item<double>(), 5.0, 1e-6);
  EXPECT_NEAR(p.grad().norm().item<double>(), 1.0, 1e-5);
}

TEST(Optim, EmaUpdate) {
  auto a = torch::nn::Linear(2, 2), b = torch::nn::Linear(2, 2);
  torch::NoGradGuard g;
  a->weight.fill_(1.0);
  b->weight.fill_(3.0);
  optim::ema_update(*a, *b, 0.75);
  EXPECT_TRUE(torch::allclose(a->weight, torch::full({2, 2}, 1.5)));
  optim::copy_weights(*a, *b);
  EXPECT_TRUE(torch::equal(a->weight, b->weight));
}

TEST(SkipTuning, FactorsInterpolateFromTheDeepestSkip) {
  SkipTuningConfig c;
  c.rho_bottom = 0.5;
  c.rho_top = 1.0;
  auto s = model::skip_tuning_scales(c, 12);
  ASSERT_EQ(s.size(), 12u);
  EXPECT_DOUBLE_EQ(s[0], 0.5);
  EXPECT_DOUBLE_EQ(s[11], 1.0);
  EXPECT_NEAR(s[5], 0.5 + 0.5 * 5 / 11.0, 1e-15);
  c.rho = {1.0, 0.9};
  EXPECT_THROW(model::skip_tuning_scales(c, 12), ConfigError);
  EXPECT_EQ(model::skip_tuning_scales(c, 2), (std::vector<double>{1.0, 0.9}));
}

TEST(SkipTuning, EachFactorScalesExactlyTheFeatureItNames) {
  torch::manual_seed(2);
  model::UNet net(tiny_unet(), 1, 16);
  net->eval();
  torch::NoGradGuard g;
  auto x = torch::randn({2, 1, 16, 16});
  auto t = torch::tensor({100.0f, 100.0f});
  std::map<int, std::pair<torch::Tensor, torch::Tensor>> plain, tuned;
  auto record = [](std::map<int, std::pair<torch::Tensor, torch::Tensor>>& into) {
    return [&into](int i, const torch::Tensor& stored, const torch::Tensor& used) { into[i] = {stored, used}; };
  };
  net->set_skip_observer(record(plain));
  net->forward(x, t);
  const std::vector<double> scales{0.25, 0.5, 2.0, 0.75};
  net->set_skip_observer(record(tuned));
  net->forward(x, t, scales);
  ASSERT_EQ(tuned.size(), 4u);
  for (int i = 0; i < 4; ++i) {
    // The encoder is untouched, so skip i is the same feature; the decoder receives it times ρ_i.
    EXPECT_TRUE(torch::equal(tuned[i].first, plain[i].first)) << i;
    EXPECT_TRUE(torch::equal(tuned[i].second, plain[i].first * scales[i])) << i;
    EXPECT_EQ(tuned[i].first.size(1), net->skip_channels()[i]) << i;
  }
}
