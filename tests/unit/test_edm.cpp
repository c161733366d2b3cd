// EDM's preconditionings and networks against EDM's own code: tests/fixtures/make_edm_precond_fixture.py
// ran NVlabs/edm's preconditionings around a stand-in network F with a closed form,
// make_edm_network_fixture.py its networks with random weights on fixed inputs; diffusers' UNet2DModel
// through scripts/convert_diffusers_unet.py (make_diffusers_unet_fixture.py).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <filesystem>

#include "../fixture_tensor.h"
#include "../test_util.h"
#include <yaml-cpp/yaml.h>

#include "s2dm/diffusion/losses.h"
#include "s2dm/diffusion/precond.h"
#include "s2dm/io/checkpoint.h"
#include "s2dm/io/npy.h"
#include "s2dm/io/npy_tensor.h"
#include "s2dm/io/safetensors.h"
#include "s2dm/model/edm_networks.h"
#include "s2dm/model/model_source.h"
#include "s2dm/data/data.h"
#include "s2dm/sample/dp_grid.h"
#include "s2dm/sample/generate.h"
#include "s2dm/sample/grid_file.h"

using namespace s2dm;

namespace {

torch::Tensor fixture(const std::string& name) { return s2dm::testing::fixture_tensor(name).to(torch::kFloat64); }

// The source of a converted checkpoint of tests/fixtures (`edm_ckpt_<name>`, made by
// make_edm_checkpoint_fixture.py), as `s2dm sample --weights --config` reads it.
model::ModelSource converted_edm(const std::string& name) {
  const std::string dir = std::string(S2DM_SOURCE_DIR) + "/tests/fixtures/";
  model::ModelRef ref;
  ref.weights = dir + "edm_ckpt_" + name + ".safetensors";
  ref.config = dir + "edm_ckpt_" + name + ".yaml";
  return model::resolve_model(ref);
}

// That checkpoint loaded on the CPU, as sampling takes it.
DiffusionModel converted_edm_model(const std::string& name) {
  const auto source = converted_edm(name);
  return DiffusionModel::of(source.config, model::LoadedModel(source, torch::kCPU).eps(), torch::kCPU);
}

// The fixture's stand-in network: F(y, c) = sin(y)(1 + c/10) + c/20, and -F beside it where the
// preconditioning expects twice the channels.
Preconditioning::Network stand_in(int factor) {
  return [factor](const torch::Tensor& y, const torch::Tensor& c_noise) {
    const auto c = c_noise.reshape({-1, 1, 1, 1});
    const auto f = y.sin() * (1 + c / 10) + c / 20;
    return factor == 2 ? torch::cat({f, -f}, 1) : f;
  };
}

}  // namespace

TEST(Edm, PreconditioningsEqualEdmsOwn) {
  const auto x = fixture("edm_precond_x.npy"), sigma = fixture("edm_precond_sigma.npy"),
             expected = fixture("edm_precond_out.npy"), range = fixture("edm_precond_range.npy");
  const std::vector<Preconditioning> preconds{Preconditioning::vp(), Preconditioning::ve(), Preconditioning::iddpm(),
                                              Preconditioning::edm()};
  for (size_t k = 0; k < preconds.size(); ++k) {
    const auto& p = preconds[k];
    const auto d = p.denoise(stand_in(p.output_factor()), x, sigma);
    // EDM computes in float32: relative to the output's scale, its rounding is ~1e-7.
    const auto scale = expected[k].abs().amax({1, 2, 3}, true).clamp_min(1.0);
    const double error = ((d - expected[k]).abs() / scale).max().item<double>();
    s2dm::testing::print_margin(p.kind() + " preconditioning against EDM's, relative", error, "1e-5");
    EXPECT_LT(error, 1e-5) << p.kind();
    // The σ range (EDM's in float32: VP's σ_min, σ(1e-5), is 2.4% below the exact value, iDDPM's
    // smallest level ~1e-3 off; IddpmLevelsAndRoundingEqualEdmsOwn says why).
    const double lo = range[k][0].item<double>(), hi = range[k][1].item<double>();
    const double tolerance = p.kind() == "vp" ? 0.03 : p.kind() == "iddpm" ? 5e-3 : 1e-6;
    EXPECT_NEAR(p.sigma_min(), lo, tolerance * lo) << p.kind();
    if (std::isinf(hi))
      EXPECT_TRUE(std::isinf(p.sigma_max()));
    else
      EXPECT_NEAR(p.sigma_max(), hi, 1e-5 * hi) << p.kind();
  }
}

TEST(Edm, LossesEqualEdmsOwn) {
  // tests/fixtures/make_edm_loss_fixture.py: EDM's VPLoss, VELoss and EDMLoss around the stand-in
  // network, each after manual_seed(1 + k), with the levels and noises they drew.
  const auto y = fixture("edm_loss_y.npy"), sigma = fixture("edm_loss_sigma.npy"), noise = fixture("edm_loss_noise.npy"),
             mean = fixture("edm_loss_mean.npy");
  const std::vector<Preconditioning> preconds{Preconditioning::vp(), Preconditioning::ve(), Preconditioning::edm()};
  for (size_t k = 0; k < preconds.size(); ++k) {
    const auto& p = preconds[k];
    const diffusion::DenoiserLoss loss(p, LossConfig{});
    // The value on EDM's draws (EDM computes in float32).
    const double value = loss.terms(stand_in(1), y, sigma[k], noise[k]).loss.item<double>();
    s2dm::testing::print_margin(p.kind() + " loss against EDM's, relative", std::abs(value / mean[k].item<double>() - 1),
                                "1e-5");
    EXPECT_NEAR(value, mean[k].item<double>(), 1e-5 * mean[k].item<double>()) << p.kind();
    // The draws themselves: the level, then the noise, from the default generator, as EDM draws.
    torch::manual_seed(1 + k);
    const auto drawn = loss.draw_sigmas(6, torch::kCPU).to(torch::kFloat64);
    EXPECT_TRUE(torch::allclose(drawn, sigma[k], 1e-6, 0)) << p.kind() << drawn << sigma[k];
    EXPECT_TRUE(torch::allclose(torch::randn_like(y.to(torch::kFloat32)).to(torch::kFloat64), noise[k], 1e-6, 0)) << p.kind();
    // λ c_out² = 1: a unit-weight regression of the network's output.
    const auto s = torch::logspace(-3, 2, 11, 10, torch::kFloat64);
    EXPECT_TRUE(torch::allclose(loss.weights(s) * p.coefficients(s).out.flatten().square(), torch::ones_like(s), 1e-12, 0))
        << p.kind();
    // A rank's rows: the whole batch drawn as one process draws it, the loss of its rows.
    torch::manual_seed(11);
    const auto y32 = y.to(torch::kFloat32);
    const double rows = loss(stand_in(1), y32, {2, 5}).loss.item<double>();
    torch::manual_seed(11);
    const auto levels = loss.draw_sigmas(6, torch::kCPU);
    const auto n = torch::randn_like(y32);
    const double expected = loss.terms(stand_in(1), y32.slice(0, 2, 5), levels.slice(0, 2, 5), n.slice(0, 2, 5)).loss.item<double>();
    EXPECT_DOUBLE_EQ(rows, expected) << p.kind();
  }
  EXPECT_THROW(diffusion::DenoiserLoss(Preconditioning::iddpm(), LossConfig{}), std::invalid_argument);
}

TEST(Edm, IddpmLevelsAndRoundingEqualEdmsOwn) {
  const auto u = fixture("edm_precond_iddpm_u.npy");
  const auto p = Preconditioning::iddpm();
  const auto ours = torch::tensor(p.iddpm_levels(), torch::kFloat64);
  ASSERT_EQ(ours.size(0), u.size(0));
  // EDM computes the table in float32, where u_{j-1}² = (u_j² + 1)/r - 1 takes the small levels
  // from differences of numbers near 1: its rounding (and so its last digits, which differ
  // between PyTorch builds' float32 sin) reaches ~1e-3 relative there. s2dm's, in float64, agrees
  // to that; the large levels agree to float32 precision.
  const auto relative = (ours - u).abs() / u.clamp_min(1e-3);
  EXPECT_LT(relative.max().item<double>(), 5e-3);
  EXPECT_LT(relative.slice(0, 0, 500).max().item<double>(), 1e-5);
  // round_sigma snaps to the nearest level; c_noise counts levels from the top, M - 1 - j.
  const auto sigma = torch::tensor({p.iddpm_levels()[10] * 1.0001, p.iddpm_levels()[500], 1e-9}, torch::kFloat64);
  const auto rounded = p.round_sigma(sigma);
  EXPECT_DOUBLE_EQ(rounded[0].item<double>(), p.iddpm_levels()[10]);
  EXPECT_DOUBLE_EQ(rounded[1].item<double>(), p.iddpm_levels()[500]);
  EXPECT_DOUBLE_EQ(rounded[2].item<double>(), 0.0);
  const auto c = p.coefficients(sigma);
  EXPECT_EQ(c.noise[0].item<double>(), 989);
  EXPECT_EQ(c.noise[1].item<double>(), 499);
  // Its noise process has its levels as times: σ at t = j is u_{M-1-j}, t = 999 at u_0.
  const auto schedule = p.schedule();
  ASSERT_EQ(schedule.num_timesteps(), 1000);
  for (int j : {0, 1, 500, 999}) {
    const double a = schedule.alpha_bar(j), level = p.iddpm_levels()[999 - j];
    EXPECT_NEAR(std::sqrt((1 - a) / a), level, 1e-9 * level) << j;
  }
}

namespace {

// A fixture's network setting (its metadata's `options`, EDM's keyword arguments).
void read_common_options(const YAML::Node& n, model::EdmUNetOptions& o) {
  o.img_resolution = n["img_resolution"].as<int64_t>();
  o.in_channels = n["in_channels"].as<int64_t>();
  o.out_channels = n["out_channels"].as<int64_t>();
  if (n["label_dim"]) o.label_dim = n["label_dim"].as<int64_t>();
  if (n["augment_dim"]) o.augment_dim = n["augment_dim"].as<int64_t>();
  o.model_channels = n["model_channels"].as<int64_t>();
  o.channel_mult = n["channel_mult"].as<std::vector<int64_t>>();
  o.num_blocks = n["num_blocks"].as<int64_t>();
  o.attn_resolutions = n["attn_resolutions"].as<std::vector<int64_t>>();
  o.dropout = n["dropout"].as<double>();
}

model::SongUNet song_unet(const std::string& json) {
  const auto n = YAML::Load(json);
  model::SongUNetOptions o;
  read_common_options(n, o);
  o.embedding_type = n["embedding_type"].as<std::string>();
  o.channel_mult_noise = n["channel_mult_noise"].as<int64_t>();
  o.encoder_type = n["encoder_type"].as<std::string>();
  o.decoder_type = n["decoder_type"].as<std::string>();
  o.resample_filter = n["resample_filter"].as<std::vector<double>>();
  return model::SongUNet(o);
}

model::DhariwalUNet dhariwal_unet(const std::string& json) {
  const auto n = YAML::Load(json);
  model::DhariwalUNetOptions o;
  read_common_options(n, o);
  o.channels_per_head = n["channels_per_head"].as<int64_t>();
  return model::DhariwalUNet(o);
}

// The fixture's state_dict loads by EDM's names into `net`, every tensor used, and its output
// on the fixture's inputs is EDM's.
template <class Net>
void expect_equals_edms_network(Net net, const Safetensors& file, const std::string& what) {
  NamedTensors weights;
  std::map<std::string, torch::Tensor> io;
  for (const auto& [name, t] : file.tensors) {
    if (name.rfind("input.", 0) == 0 || name == "output")
      io[name] = t;
    else
      weights.emplace_back(name, t);
  }
  net->eval();
  load_weights(*net, weights, what);  // (throws on a missing, unexpected or misshapen tensor)
  torch::NoGradGuard no_grad;
  auto input = [&](const std::string& name) { return io.count(name) ? io.at(name) : torch::Tensor(); };
  auto run = [&](const std::vector<double>& skip_scales) -> torch::Tensor {
    return net->forward(input("input.x"), input("input.noise_labels"), input("input.class_labels"),
                        input("input.augment_labels"), skip_scales);
  };
  const torch::Tensor out = run({});
  const auto& expected = io.at("output");
  ASSERT_EQ(out.sizes(), expected.sizes());
  const double error = ((out - expected).abs().max() / expected.abs().max()).item<double>();
  s2dm::testing::print_margin(what + " against EDM's, relative", error, "1e-5");
  EXPECT_LT(error, 1e-5);
  EXPECT_GT(expected.abs().max().item<double>(), 0.1);  // (a network that does something)
  // Skip-Tuning: factors of 1 change nothing, others change the output.
  const int skips = net->num_skips();
  const torch::Tensor unscaled = run(std::vector<double>(skips, 1.0)), scaled = run(std::vector<double>(skips, 0.8));
  EXPECT_TRUE(torch::equal(unscaled, out));
  EXPECT_GT((scaled - out).abs().max().item<double>(), 1e-3);
}

Safetensors network_fixture(const std::string& name) {
  return load_safetensors(std::string(S2DM_SOURCE_DIR) + "/tests/fixtures/edm_" + name + ".safetensors");
}

}  // namespace

TEST(Edm, NetworksEqualEdmsOwn) {
  // SongUNet as DDPM++ (with class and augmentation labels), NCSN++ (Fourier embedding, residual
  // encoder, [1,3,3,1] filters) and with the skip encoder and decoder; DhariwalUNet (ADM) with
  // class and augmentation labels and attention at two resolutions.
  for (const std::string setting : {"ddpmpp", "ncsnpp", "skip"}) {
    const auto file = network_fixture("songunet_" + setting);
    expect_equals_edms_network(song_unet(file.metadata.at("options")), file, "SongUNet " + setting);
  }
  const auto file = network_fixture("dhariwalunet_adm");
  expect_equals_edms_network(dhariwal_unet(file.metadata.at("options")), file, "DhariwalUNet");
}

TEST(Edm, ConvertedCheckpointsSampleAsEdmsSampler) {
  // tests/fixtures/make_edm_checkpoint_fixture.py pickled small EDM networks as EDM's snapshots
  // are, converted them with scripts/convert_edm_checkpoint.py, and ran EDM's edm_sampler (18
  // steps from σ = 80, ρ = 7) from fixed latents. s2dm loads the converted files as `s2dm sample
  // --weights --config` does and samples with heun on the edm grid, the latents as its noise.
  const auto latents = fixture("edm_ckpt_latents.npy").to(torch::kFloat32);
  for (const std::string name : {"edm", "vp", "ve", "adm"}) {
    SCOPED_TRACE(name);
    const auto diffusion = converted_edm_model(name);
    SampleConfig settings;
    settings.sampler = "heun";
    settings.steps = 18;
    settings.timesteps = "edm";
    settings.batch = 4;
    const auto plan = sample::plan_sampling(settings, diffusion);
    const auto generated = sample::generate(diffusion, plan, {0, 0, 4, latents}, false);
    EXPECT_EQ(generated.nfe, 35);
    const auto expected = fixture("edm_ckpt_" + name + "_out.npy");
    const double error =
        ((generated.samples.to(torch::kFloat64) - expected).abs().max() / expected.abs().max()).item<double>();
    s2dm::testing::print_margin("heun on converted " + name + " against edm_sampler, relative", error, "1e-4");
    EXPECT_LT(error, 1e-4);
  }
}

TEST(Edm, ClassConditionalCheckpointsSampleAsEdmsGenerate) {
  // make_edm_checkpoint_fixture.py converted class-conditional networks (3 classes; SongUNet and
  // DhariwalUNet) and sampled them as EDM's generate.py does for seeds 0-3 on the CPU: latents,
  // then class labels, from each seed's generator, edm_sampler on them; and again with --class 2.
  // s2dm with seed 0 draws the same latents and classes (image i's generator is seeded by i),
  // whatever the batch.
  const auto state = sample::initial_state(0, 4, {1, 8, 8}, 0, 3);
  EXPECT_TRUE(torch::equal(state.classes, fixture("edm_ckpt_cond_classes.npy").to(torch::kLong)));
  for (const std::string name : {"cond", "adm_cond"}) {
    SCOPED_TRACE(name);
    const auto diffusion = converted_edm_model(name);
    ASSERT_EQ(diffusion.label_dim, 3);
    SampleConfig settings;
    settings.sampler = "heun";  // (on its own grid, timesteps auto: edm_sampler's)
    settings.steps = 18;
    settings.batch = 3;  // (a batch of 3, then 1: each image keeps its class)
    for (const int class_label : {-1, 2}) {
      settings.class_label = class_label;
      const auto generated = sample::generate(diffusion, sample::plan_sampling(settings, diffusion), {0, 0, 4, {}}, false);
      const auto expected = fixture("edm_ckpt_" + name + (class_label < 0 ? "" : "_class2") + "_out.npy");
      const double error =
          ((generated.samples.to(torch::kFloat64) - expected).abs().max() / expected.abs().max()).item<double>();
      s2dm::testing::print_margin("heun on conditional " + name + (class_label < 0 ? "" : ", class 2") +
                                      " against generate.py, relative", error, "1e-4");
      EXPECT_LT(error, 1e-4);
    }
    settings.class_label = 3;
    EXPECT_THROW(sample::plan_sampling(settings, diffusion), ConfigError);
  }
  // An unconditional model has no class to fix.
  SampleConfig settings;
  settings.class_label = 0;
  EXPECT_THROW(sample::plan_sampling(settings, DiffusionModel::of(converted_edm("edm").config)), ConfigError);
}

TEST(Edm, GridSearchesSeeTheClassesOfAConditionalModel) {
  // The dp search's trajectories and the score grid's images have classes too: a class fixed by
  // the sample settings changes the dp search's costs; the score grid takes the images' labels
  // and refuses images without them.
  const auto diffusion = converted_edm_model("cond");
  sample::DpSearchOptions o;
  o.levels = 8;
  o.samples = 4;
  o.search_samples = 2;
  o.holdout = 2;
  o.show_progress = false;
  SampleConfig settings;
  std::vector<std::vector<double>> costs;
  for (const int class_label : {-1, 0, 2}) {
    settings.class_label = class_label;
    costs.push_back(sample::search_dp_grids(diffusion, settings, {3}, o).step_error);
  }
  EXPECT_NE(costs[0], costs[1]);
  EXPECT_NE(costs[1], costs[2]);
  EXPECT_EQ(sample::dp_search_settings(settings).at("class_label"), "2");
  settings.class_label = 3;
  EXPECT_THROW(sample::search_dp_grids(diffusion, settings, {3}, o), ConfigError);

  const auto x0 = torch::rand({4, 1, 8, 8}, torch::kFloat64) * 2 - 1;
  auto cost = [&](const torch::Tensor& classes) {
    return sample::estimate_score_cost(diffusion, x0, classes, 4, 1, 4, false).cost;
  };
  EXPECT_NE(cost(torch::zeros({4}, torch::kLong)), cost(torch::full({4}, 2, torch::kLong)));
  const auto same = cost(torch::tensor({0, 2, 2, 0}, torch::kLong));
  EXPECT_EQ(same, cost(torch::tensor({0, 2, 2, 0}, torch::kLong)));
  data::ImageSet images{data::to_uint8(x0.to(torch::kFloat32)), {}, "random images"};
  const std::string out = (std::filesystem::temp_directory_path() / "s2dm_cond_schedule.yaml").string();
  EXPECT_THROW(sample::make_score_grid_file(diffusion, images, 4, 4, 1, 4, {2}, out), ConfigError);
  images.labels = torch::full({4}, 3, torch::kLong);
  EXPECT_THROW(sample::make_score_grid_file(diffusion, images, 4, 4, 1, 4, {2}, out), ConfigError);
  EXPECT_FALSE(std::filesystem::exists(out));
}

TEST(Diffusers, ConvertedUNet2DModelEqualsDiffusersOwn) {
  // tests/fixtures/make_diffusers_unet_fixture.py built a small DDPM-style UNet2DModel with
  // diffusers' own code, random weights, wrote it in diffusers' two layouts and converted both
  // with scripts/convert_diffusers_unet.py. s2dm's UNet on the converted weights computes
  // diffusers' ε, and the converted configs hold the schedulers' ᾱ.
  const std::string dir = std::string(S2DM_SOURCE_DIR) + "/tests/fixtures/";
  model::ModelRef ref;
  ref.weights = dir + "diffusers_unet.safetensors";
  ref.config = dir + "diffusers_unet.yaml";
  const auto source = model::resolve_model(ref);
  const model::LoadedModel loaded(source, torch::kCPU);
  const auto x = fixture("diffusers_unet_x.npy").to(torch::kFloat32), t = fixture("diffusers_unet_t.npy");
  const auto expected = fixture("diffusers_unet_out.npy");
  const auto eps = loaded.eps().eps(x, t.to(torch::kFloat32)).to(torch::kFloat64);
  const double error = ((eps - expected).abs().max() / expected.abs().max()).item<double>();
  s2dm::testing::print_margin("converted UNet2DModel against diffusers', relative", error, "1e-5");
  EXPECT_LT(error, 1e-5);

  // The schedules: diffusers computes ᾱ in float32 (a cumulative product of 1000 factors).
  const auto cosine = load_config(dir + "diffusers_unet_cosine.yaml");
  const auto alphas = fixture("diffusers_alphas_cumprod.npy");
  for (const auto& [k, diffusion] : {std::pair{0, source.config.diffusion}, std::pair{1, cosine.diffusion}}) {
    const auto ours = torch::tensor(NoiseSchedule(diffusion).alphas_cumprod(), torch::kFloat64);
    const double relative = ((ours - alphas[k]).abs() / alphas[k]).max().item<double>();
    s2dm::testing::print_margin(diffusion.beta_schedule + " ᾱ against DDPMScheduler's, relative", relative, "1e-4");
    EXPECT_LT(relative, 1e-4) << diffusion.beta_schedule;
  }
  EXPECT_EQ(cosine.diffusion.beta_schedule, "cosine");
  EXPECT_TRUE(source.config.sample.clip_denoised);  // (the scheduler's clip_sample)
  EXPECT_FALSE(cosine.sample.clip_denoised);
}
