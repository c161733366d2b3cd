// The experiment's metric: its feature space and reference statistics, loaded when first needed,
// and the error against each model's reference solutions.
#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include <filesystem>

#include "plan.h"
#include "s2dm/data/data.h"
#include "s2dm/eval/classifier.h"
#include "s2dm/io/npy.h"
#include "s2dm/io/npy_tensor.h"
#include "s2dm/sample/generate.h"

namespace s2dm::experiment {
namespace fs = std::filesystem;

Measurer::Measurer(const Experiment& e, torch::Device device) : e_(e), device_(device) {
  const auto spec = eval::parse_feature_spec(e.metric.features);
  if (spec.network->trained_here && spec.path.empty()) {
    Config c;
    c.data = e.models.front().config.data;
    c.data.limit = 0;
    classifier_ = e.out + "/classifier/" +
                  hash_key("classifier\n" + config_identity(c) + std::to_string(e.metric.classifier_epochs)).substr(0, 12) +
                  ".safetensors";
    identity_ = "classifier-trained-here:" + classifier_;
  } else {
    identity_ = spec.network->name + ":" + file_identity(spec.weights());
  }
}

std::string Measurer::reference_identity(const ModelSpec& m) const {
  if (e_.metric.reference != "train" && e_.metric.reference != "test") return "stats:" + file_identity(e_.metric.reference);
  Config c;
  c.data = m.config.data;
  c.data.limit = 0;
  c.data.cache.clear();
  return "data:" + e_.metric.reference + ":" + std::to_string(e_.metric.reference_num) + "\n" + config_identity(c) + identity_ +
         (e_.metric.kid ? "|kid" : "");
}

const eval::FeatureExtractor& Measurer::extractor() {
  if (extractor_.fn) return extractor_;
  auto spec = eval::parse_feature_spec(e_.metric.features);
  if (spec.network->trained_here && spec.path.empty()) {
    if (!fs::exists(classifier_)) {
      spdlog::info("training the feature classifier on {} ({} epochs)", e_.models.front().config.data.dataset,
                   e_.metric.classifier_epochs);
      fs::create_directories(fs::path(classifier_).parent_path());
      eval::ClassifierTraining options;
      options.epochs = e_.metric.classifier_epochs;
      eval::train_data_classifier(e_.models.front().config.data, 0, options, device_, classifier_);
    }
    spec.path = classifier_;
  }
  extractor_ = eval::make_feature_extractor(spec, device_);
  return extractor_;
}

const eval::FeatureSet& Measurer::reference(const ModelSpec& m) {
  const std::string key = hash_key(reference_identity(m));
  auto it = references_.find(key);
  if (it != references_.end()) return it->second;
  eval::FeatureSet ref;
  if (e_.metric.reference != "train" && e_.metric.reference != "test") {
    ref.stats = eval::load_stats(e_.metric.reference);
  } else {
    const std::string base = e_.out + "/reference/" + key;
    if (fs::exists(base + ".npz") && (!e_.metric.kid || fs::exists(base + "_features.npy"))) {
      ref.stats = eval::load_stats(base + ".npz");
      if (e_.metric.kid) ref.features = to_tensor(load_npy(base + "_features.npy"), base + "_features.npy").to(torch::kFloat64);
    } else {
      auto data = m.config.data;
      data.limit = 0;
      auto images = data::load_dataset(data, e_.metric.reference == "train").images;
      if (images.size(0) > e_.metric.reference_num) images = images.slice(0, 0, e_.metric.reference_num);
      spdlog::info("reference statistics: {} {} images of {}", images.size(0), e_.metric.reference, data.dataset);
      ref = eval::feature_set(extractor(), images, e_.metric.batch, device_);
      fs::create_directories(e_.out + "/reference");
      if (e_.metric.kid) save_npy(base + "_features.npy", to_npy_array(ref.features.to(torch::kFloat32)));
      eval::save_stats(base + ".npz", ref.stats);
    }
  }
  return references_.emplace(key, std::move(ref)).first->second;
}

std::string ReferenceErrors::identity(const ModelSpec& m) const {
  const auto& spec = e_.metric.reference_error;
  if (!spec.enabled()) return "";
  Config c;
  c.sample = reference_solution_config(e_, m);
  c.sample.num = 0;
  return "reference error " + std::to_string(spec.samples) + "\n" + config_identity(c);
}

bool ReferenceErrors::measures(const Unit& u) const {
  return e_.metric.reference_error.enabled() && !sample::draws_noise(sample::find_sampler(u.config.sampler), u.config);
}

std::optional<double> ReferenceErrors::rms(const Unit& u, const torch::Tensor& head, const DiffusionModel& model,
                                           const model::LoadedModel& loaded, const std::function<bool()>& stop) const {
  const ModelSpec& m = *u.model;
  const int64_t n = e_.metric.reference_error.samples;
  const std::string path = e_.out + "/reference_solutions/" + m.name + "-" +
                           hash_key(m.key + "\n" + identity(m) + "seed " + std::to_string(u.seed)) + ".npy";
  torch::Tensor reference;
  if (fs::exists(path)) {
    reference = to_tensor(load_npy(path), path);
  } else {
    const SampleConfig c = reference_solution_config(e_, m);
    spdlog::info("{}: the reference solution of seed {} ({} images, {} with {} steps on the {} grid)", m.name, u.seed, n,
                 c.sampler, c.steps, sample::time_grid(c));
    DiffusionModel untuned = model;
    untuned.eps = loaded.eps_fp32();
    const auto generated = sample::generate(untuned, sample::plan_sampling(c, untuned), {u.seed, 0, n, {}}, true, stop);
    if (!generated.complete) return std::nullopt;
    reference = generated.samples;
    fs::create_directories(fs::path(path).parent_path());
    save_npy(path, to_npy_array(reference.to(torch::kFloat32).contiguous()));
  }
  const auto diff = head.slice(0, 0, n).to(torch::kFloat64).clamp(-1, 1) - reference.to(torch::kFloat64).clamp(-1, 1);
  return diff.square().mean().sqrt().item<double>();
}

}  // namespace s2dm::experiment
