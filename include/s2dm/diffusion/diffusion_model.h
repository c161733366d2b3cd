#pragma once
// One diffusion model as sampling and the grid searches take it, whole: the ε-network, its noise
// process (DDPM's or EDM's, or PSLD's), the image shape, the device the network runs on, and where
// the model's own time grids come from. Commands and the driver build it from a loaded model, the
// trainer from its EMA network; nothing downstream assembles these pieces again.
#include <torch/types.h>

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "s2dm/core/config.h"
#include "s2dm/diffusion/noise_schedule.h"
#include "s2dm/diffusion/precond.h"
#include "s2dm/diffusion/psld.h"
#include "s2dm/io/safetensors.h"
#include "s2dm/model/eps_model.h"

namespace s2dm {

// Where a model's own time grids (timesteps "learned" and "dp") come from. The sampling plan is
// the one place that resolves them.
struct ModelGrids {
  NamedTensors state;                // a checkpoint's (or the online estimator's) schedule state ...
  std::string file;                  // ... or a schedule file (s2dm schedule, the experiment driver)
  bool uniform_until_ready = false;  // no state or file yet: the uniform grid stands in
};

// The shape of one image of `data`, [C, H, W].
inline std::vector<int64_t> image_shape(const DataConfig& data) { return {data.channels, data.image_size, data.image_size}; }

struct DiffusionModel {
  ModelEps eps;                        // ε̂(x, t), t in index units; empty while only settings are checked
  NoiseSchedule schedule;              // the noise process: ᾱ(t)
  std::vector<int64_t> image_shape;    // [C, H, W]
  torch::Device device = torch::kCPU;  // where `eps` takes its inputs
  ModelGrids grids;
  // Where sampling starts from a standard-normal z: DDPM models at x_T = z (their prior N(0, I));
  // EDM's networks as EDM's samplers do, at x̃ = σ_T z, that is x_T = √(1 - ᾱ_T) z.
  bool edm_prior = false;
  // Class-conditional models: the number of classes (0: unconditional). Each batch's images have
  // their classes, which the network sees as one-hot labels (EDM's class_labels).
  int64_t label_dim = 0;
  // A PSLD model's process (null for the others): its network takes z = [x, m] (twice the images'
  // channels) at continuous times t ∈ (0, 1], and sampling starts from PSLD's prior.
  std::shared_ptr<const PsldProcess> psld = nullptr;

  // The shape of the state a sampler integrates: an image, or a PSLD model's [x, m].
  std::vector<int64_t> state_shape() const {
    auto shape = image_shape;
    if (psld) shape[0] *= 2;
    return shape;
  }
  // The images of sampled states.
  torch::Tensor images(const torch::Tensor& states) const { return psld ? states.chunk(2, 1)[0] : states; }

  // The ε-model of a batch of images of classes `classes` (int64 [B]; an unconditional model
  // takes no classes, and they may be undefined).
  EpsModel eps_for(const torch::Tensor& classes) const {
    if (label_dim == 0) return eps.eps;
    return eps.for_labels(torch::one_hot(classes.to(torch::kLong), label_dim).to(device, torch::kFloat32));
  }

  // The model `config` describes (its noise schedule, image shape and classes), around `eps` on
  // `device`.
  static DiffusionModel of(const Config& config, ModelEps eps = {}, torch::Device device = torch::kCPU,
                           ModelGrids grids = {}) {
    const bool psld = config.diffusion.process == "psld";
    const bool edm = config.model.type != "ddpm" && !psld;
    return {std::move(eps), noise_schedule_of(config), s2dm::image_shape(config.data), device, std::move(grids), edm,
            edm ? config.model.edm.label_dim : 0, psld ? std::make_shared<const PsldProcess>(config.diffusion.psld) : nullptr};
  }
};

}  // namespace s2dm
