#include "metrics.h"

#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>

#include "s2dm/data/data.h"
#include "s2dm/io/file_io.h"
#include "s2dm/train/run_directory.h"

namespace s2dm::train {
namespace fs = std::filesystem;

void truncate_metrics(const std::string& path, int64_t step) {
  if (!fs::exists(path)) return;
  std::ifstream in(path);
  std::string line, kept;
  while (std::getline(in, line)) {
    try {
      if (nlohmann::json::parse(line).value("step", int64_t{0}) <= step) kept += line + "\n";
    } catch (const nlohmann::json::exception&) {
      // a torn last line from a crash: drop it
    }
  }
  write_file_atomic(path, kept);
}

IntervalSums::IntervalSums(const torch::Device& device, parallel::ProcessGroup& group) : device_(device), group_(group) {
  reset();
}

void IntervalSums::add_micro_batch(const diffusion::LossTerms& terms, int grad_accum) {
  loss_.add_(terms.loss.detach(), 1.0 / grad_accum);
  if (terms_.empty()) {
    for (const auto& term : terms.logged) terms_.push_back({term.name, !term.count.defined(), {}, {}});
    reset_terms();
  }
  if (terms.logged.size() != terms_.size()) throw std::logic_error("the loss changed the terms it logs");
  for (size_t i = 0; i < terms_.size(); ++i) {
    auto& sum = terms_[i];
    const auto& term = terms.logged[i];
    if (term.name != sum.name) throw std::logic_error("the loss changed the terms it logs");
    if (sum.batch_mean) {
      sum.value.add_(term.value, 1.0 / grad_accum);
    } else {
      sum.value.add_(term.value);
      sum.count.add_(term.count);
    }
  }
}

void IntervalSums::add_step(const torch::Tensor& grad_norm, double allreduce_seconds) {
  grad_norm_.add_(grad_norm);
  allreduce_seconds_ += allreduce_seconds;
  ++steps_;
}

void IntervalSums::check_finite(int64_t step, const std::string& run_dir) const {
  const double loss = totals()[0];
  if (!std::isfinite(loss))
    throw std::runtime_error("loss is " + std::to_string(loss) + " at a step in (" + std::to_string(step - steps_) +
                             ", " + std::to_string(step) + "] (diverged; lower train.lr?); " +
                             (std::filesystem::exists(latest_checkpoint(run_dir))
                                  ? "the last good checkpoint is kept in " + checkpoint_dir(run_dir)
                                  : "no checkpoint was written before it"));
}

nlohmann::ordered_json IntervalSums::take_line(int64_t step, double lr, int64_t images_per_step,
                                               const std::string& run_dir) {
  check_finite(step, run_dir);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  const auto n = static_cast<double>(std::max<int64_t>(steps_, 1));
  const auto sums = totals();
  nlohmann::ordered_json line{{"step", step}, {"loss", sums[0] / n}};
  size_t mean = 1, pair = 1 + mean_terms();
  for (const auto& term : terms_) {
    if (term.batch_mean) {
      line[term.name] = sums[mean++] / n;
    } else {
      const auto count = static_cast<int64_t>(sums[pair + 1]);
      line[term.name] = count ? sums[pair] / static_cast<double>(count) : 0.0;
      pair += 2;
    }
  }
  line["lr"] = lr;
  line["grad_norm"] = grad_norm_.item<double>() / n;
  line["images_per_sec"] = static_cast<double>(steps_ * images_per_step) / secs;
  if (group_.launched()) line["allreduce_seconds"] = allreduce_seconds_ / n;
  reset();
  return line;
}

size_t IntervalSums::mean_terms() const {
  return static_cast<size_t>(std::count_if(terms_.begin(), terms_.end(), [](const Sum& t) { return t.batch_mean; }));
}

std::vector<double> IntervalSums::totals() const {
  std::vector<torch::Tensor> parts{loss_.to(torch::kFloat64)};
  for (const auto& term : terms_)
    if (term.batch_mean) parts.push_back(term.value.to(torch::kFloat64));
  for (const auto& term : terms_)
    if (!term.batch_mean) {
      parts.push_back(term.value.to(torch::kFloat64));
      parts.push_back(term.count.to(torch::kFloat64));
    }
  auto packed = torch::stack(parts);
  std::vector<torch::Tensor> one{packed};
  group_.all_reduce_sum(one);
  packed.narrow(0, 0, static_cast<int64_t>(1 + mean_terms())).div_(group_.size());
  packed = packed.cpu();
  const double* v = packed.data_ptr<double>();
  return {v, v + packed.numel()};
}

void IntervalSums::reset() {
  auto f32 = torch::TensorOptions().dtype(torch::kFloat32).device(device_);
  loss_ = torch::zeros({}, f32);
  grad_norm_ = torch::zeros({}, f32);
  reset_terms();
  allreduce_seconds_ = 0;
  steps_ = 0;
  start_ = std::chrono::steady_clock::now();
}

void IntervalSums::reset_terms() {
  auto f32 = torch::TensorOptions().dtype(torch::kFloat32).device(device_);
  for (auto& term : terms_) {
    term.value = torch::zeros({}, f32);
    if (!term.batch_mean) term.count = torch::zeros({}, f32.dtype(torch::kLong));
  }
}

TrainingEvaluation::TrainingEvaluation(const TrainConfig& tc, const torch::Tensor& data_images,
                                       const torch::Device& device)
    : num_(tc.eval_num), device_(device), extractor_(eval::make_feature_extractor(tc.eval_features, device)) {
  auto images = data_images.slice(0, 0, std::min<int64_t>(data_images.size(0), 10 * num_));
  reference_ = eval::feature_set(extractor_, images, kBatch, device, false);
  spdlog::info("{} every {} steps: {} samples against {} training images", extractor_.distance_label(), tc.eval_every,
               num_, images.size(0));
}

nlohmann::ordered_json TrainingEvaluation::measure(const sample::Generated& generated, int64_t step) const {
  const auto d = eval::distance(eval::feature_set(extractor_, data::to_uint8(generated.samples), kBatch, device_, false),
                                reference_);
  spdlog::info("step {}: {} {:.4f}", step, extractor_.distance_label(), d.fd);
  return {{"step", step},           {"fd", d.fd},       {"kid_mean", d.kid->mean}, {"kid_std", d.kid->std},
          {"features", extractor_.name}, {"eval_num", num_}, {"nfe", generated.nfe}};
}

}  // namespace s2dm::train
