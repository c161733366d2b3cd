#pragma once
// A small CNN classifier whose penultimate features measure a Fréchet distance on data sets the
// Inception network does not fit (Fashion-MNIST, small images). Its distances are reported as
// FD[<name>], never as FID.
#include <torch/torch.h>

#include <string>

#include "s2dm/core/config.h"
#include "s2dm/data/data.h"

namespace s2dm::eval {

struct ClassifierSpec {
  int channels = 1, image_size = 32, num_classes = 10, width = 16;
  std::string name = "cnn";  // the feature space's name, e.g. "fmnist-cnn"
};

class ClassifierImpl : public torch::nn::Module {
 public:
  explicit ClassifierImpl(const ClassifierSpec& spec);
  // x in [-1, 1] -> the penultimate features [N, 128] (after ReLU).
  torch::Tensor features(const torch::Tensor& x);
  // x in [-1, 1] -> logits [N, classes].
  torch::Tensor forward(const torch::Tensor& x);
  const ClassifierSpec& spec() const { return spec_; }

 private:
  ClassifierSpec spec_;
  torch::nn::Sequential body{nullptr};
  torch::nn::Linear hidden{nullptr}, head{nullptr};
};
TORCH_MODULE(Classifier);

struct ClassifierTraining {
  int epochs = 2;
  int64_t batch = 128;
  double lr = 5e-3;  // at the first step, decaying linearly to 0 at the last
  uint64_t seed = 0;
};

// Trains on `train` (labels required) and returns the accuracy on `test`.
double train_classifier(Classifier& net, const data::ImageSet& train, const data::ImageSet& test,
                        const ClassifierTraining& options, const torch::Device& device);
double classifier_accuracy(Classifier& net, const data::ImageSet& set, const torch::Device& device);

// The classifier of a labelled data set (fmnist, cifar10): trained on the first `limit` training
// images (0 = all), tested on the test split, written to `out` (named "<dataset>-cnn").
// Returns the test accuracy.
double train_data_classifier(DataConfig data, int64_t limit, const ClassifierTraining& options,
                             const torch::Device& device, const std::string& out);
// A classifier file: safetensors weights with the spec (and test accuracy) in its metadata.
void save_classifier(const std::string& path, Classifier& net, double accuracy);
Classifier load_classifier(const std::string& path);

}  // namespace s2dm::eval
