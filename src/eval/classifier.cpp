#include "s2dm/eval/classifier.h"

#include <spdlog/spdlog.h>

#include "s2dm/io/checkpoint.h"
#include "s2dm/core/errors.h"
#include "s2dm/optim/optim.h"
#include "s2dm/core/progress.h"

namespace s2dm::eval {
namespace nn = torch::nn;

ClassifierImpl::ClassifierImpl(const ClassifierSpec& spec) : spec_(spec) {
  const int64_t w = spec.width;
  // conv-BN-ReLU blocks (BatchNorm makes a couple of epochs enough), two 2x poolings, global pooling.
  nn::Sequential seq;
  auto block = [&](int64_t in, int64_t out) {
    seq->push_back(nn::Conv2d(nn::Conv2dOptions(in, out, 3).padding(1).bias(false)));
    seq->push_back(nn::BatchNorm2d(out));
    seq->push_back(nn::ReLU());
  };
  block(spec.channels, w);
  block(w, w);
  seq->push_back(nn::MaxPool2d(2));
  block(w, 2 * w);
  block(2 * w, 2 * w);
  seq->push_back(nn::MaxPool2d(2));
  block(2 * w, 4 * w);
  seq->push_back(nn::AdaptiveAvgPool2d(1));
  seq->push_back(nn::Flatten());
  body = register_module("body", seq);
  hidden = register_module("hidden", nn::Linear(4 * w, 128));
  head = register_module("head", nn::Linear(128, spec.num_classes));
}

torch::Tensor ClassifierImpl::features(const torch::Tensor& x) { return torch::relu(hidden(body->forward(x))); }
torch::Tensor ClassifierImpl::forward(const torch::Tensor& x) { return head(features(x)); }

double classifier_accuracy(Classifier& net, const data::ImageSet& set, const torch::Device& device) {
  torch::NoGradGuard no_grad;
  net->eval();
  int64_t correct = 0;
  for (int64_t i = 0; i < set.images.size(0); i += 500) {
    auto x = data::to_model_range(set.images.slice(0, i, i + 500).to(device));
    auto y = set.labels.slice(0, i, i + 500).to(device);
    correct += (net->forward(x).argmax(1) == y).sum().item<int64_t>();
  }
  return static_cast<double>(correct) / static_cast<double>(set.images.size(0));
}

double train_classifier(Classifier& net, const data::ImageSet& train, const data::ImageSet& test,
                        const ClassifierTraining& o, const torch::Device& device) {
  if (!train.labels.defined() || !test.labels.defined())
    throw DataError(train.source + ": a classifier needs labels (fmnist or cifar10)");
  if (o.batch < 1 || o.epochs < 1) throw ConfigError("classifier training needs a batch and epochs of at least 1");
  torch::manual_seed(o.seed);
  net->to(device);
  NamedTensors params;
  for (const auto& item : net->named_parameters()) params.emplace_back(item.key(), item.value());
  optim::Adam adam(params, {});
  const int64_t n = train.images.size(0);
  const int64_t steps_per_epoch = (n + o.batch - 1) / o.batch;
  const int64_t total_steps = o.epochs * steps_per_epoch;
  auto gen = at::detail::createCPUGenerator(o.seed);
  Progress progress("classifier", total_steps, "step");
  int64_t step = 0;
  for (int epoch = 0; epoch < o.epochs; ++epoch) {
    net->train();
    auto order = torch::randperm(n, gen, torch::kLong);
    for (int64_t i = 0; i < n; i += o.batch) {
      auto idx = order.slice(0, i, std::min(n, i + o.batch));
      auto x = data::to_model_range(train.images.index_select(0, idx).to(device));
      auto y = train.labels.index_select(0, idx).to(device);
      adam.zero_grad();
      auto loss = torch::nn::functional::cross_entropy(net->forward(x), y);
      loss.backward();
      // The learning rate decays linearly to 0: the last steps settle the weights (and the
      // BatchNorm statistics) instead of leaving them wherever the last large step threw them.
      adam.step(o.lr * (1.0 - static_cast<double>(step) / static_cast<double>(total_steps)));
      progress.update(++step, "loss " + std::to_string(loss.item<double>()).substr(0, 6));
    }
  }
  progress.finish();
  return classifier_accuracy(net, test, device);
}

void save_classifier(const std::string& path, Classifier& net, double accuracy) {
  const auto& s = net->spec();
  save_safetensors(path, named_weights(*net),
                   {{"format", "s2dm-classifier-v1"}, {"name", s.name}, {"channels", std::to_string(s.channels)},
                    {"image_size", std::to_string(s.image_size)}, {"num_classes", std::to_string(s.num_classes)},
                    {"width", std::to_string(s.width)}, {"test_accuracy", std::to_string(accuracy)}});
}

Classifier load_classifier(const std::string& path) {
  Safetensors file;
  try {
    file = load_safetensors(path);
  } catch (const IoError& e) {
    throw CheckpointError(std::string(e.what()) + " (train one with s2dm train-classifier)");
  }
  auto meta = [&](const std::string& key) {
    auto it = file.metadata.find(key);
    if (it == file.metadata.end()) throw CheckpointError(path + ": not an s2dm classifier (no '" + key + "')");
    return it->second;
  };
  if (meta("format") != "s2dm-classifier-v1") throw CheckpointError(path + ": not an s2dm classifier");
  ClassifierSpec spec;
  try {
    spec.channels = std::stoi(meta("channels"));
    spec.image_size = std::stoi(meta("image_size"));
    spec.num_classes = std::stoi(meta("num_classes"));
    spec.width = std::stoi(meta("width"));
  } catch (const std::logic_error&) {
    throw CheckpointError(path + ": malformed classifier metadata");
  }
  spec.name = meta("name");
  Classifier net(spec);
  load_weights(*net, file.tensors, path);
  net->eval();
  return net;
}

double train_data_classifier(DataConfig data, int64_t limit, const ClassifierTraining& options,
                             const torch::Device& device, const std::string& out) {
  auto test = data::load_dataset(data, false);
  data.limit = limit;
  auto train = data::load_dataset(data, true);
  ClassifierSpec spec;
  spec.channels = data.channels;
  spec.image_size = data.image_size;
  spec.num_classes = static_cast<int>(train.labels.max().item<int64_t>()) + 1;
  spec.name = data.dataset + "-cnn";
  Classifier net(spec);
  const double accuracy = train_classifier(net, train, test, options, device);
  save_classifier(out, net, accuracy);
  spdlog::info("classifier {}: test accuracy {:.2f} % on {} images; wrote {}", spec.name, 100 * accuracy,
               test.images.size(0), out);
  return accuracy;
}

}  // namespace s2dm::eval
