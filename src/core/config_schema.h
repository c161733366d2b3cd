#pragma once
// The config schema (private to src/core/): every key of every section, its type (from the
// member) and its check. schema.h's and config.cpp's visitors walk it to read, validate, reset
// and write configs.
#include <limits>
#include <string>
#include <vector>

#include "s2dm/core/config.h"
#include "s2dm/core/registry.h"
#include "s2dm/core/schema.h"

namespace s2dm {

// One list serves loading, validation and writing, so they cannot drift apart. (The visits live
// in the structs' namespace: the visitors of schema.h find them by argument-dependent lookup.)
using schema::Added;
using schema::Any;
using schema::OneOf;
using schema::Range;

template <class V>
void visit(V& v, DataConfig& c) {
  v("dataset", c.dataset, OneOf{dataset_names()});
  v("path", c.path, Any{});
  v("image_size", c.image_size, Range<int>{4, 1024});
  v("channels", c.channels, OneOf{{"1", "3"}});
  v("random_flip", c.random_flip, Any{});
  v("limit", c.limit, Range<int64_t>{0, std::numeric_limits<int64_t>::max()});
  v("cache", c.cache, Any{});
}

template <class V>
void visit(V& v, EdmModelConfig& c) {
  v("precond", c.precond, Added{OneOf{{"vp", "ve", "iddpm", "edm"}}});
  v("sigma_data", c.sigma_data, Added{Range<double>{1e-6, 1e6}});
  v("label_dim", c.label_dim, Added{Range<int>{0, 100000}});
  v("augment_dim", c.augment_dim, Added{Range<int>{0, 1024}});
  v("channel_mult_emb", c.channel_mult_emb, Added{Range<int>{1, 64}});
  v("embedding_type", c.embedding_type, Added{OneOf{{"positional", "fourier"}}});
  v("channel_mult_noise", c.channel_mult_noise, Added{Range<int>{1, 64}});
  v("encoder_type", c.encoder_type, Added{OneOf{{"standard", "skip", "residual"}}});
  v("decoder_type", c.decoder_type, Added{OneOf{{"standard", "skip"}}});
  v("resample_filter", c.resample_filter, Added{Range<double>{-1e6, 1e6}});
  v("channels_per_head", c.channels_per_head, Added{Range<int>{1, 4096}});
}

template <class V>
void visit(V& v, ModelConfig& c) {
  v("type", c.type, Added{OneOf{{"ddpm", "songunet", "dhariwalunet"}}});
  v("ch", c.ch, Range<int>{1, 4096});
  v("ch_mult", c.ch_mult, Range<int>{1, 64});
  v("num_res_blocks", c.num_res_blocks, Range<int>{1, 16});
  v("attn_resolutions", c.attn_resolutions, Range<int>{1, 1024});
  v("dropout", c.dropout, Range<double>{0.0, 0.99});
  v("resamp_with_conv", c.resamp_with_conv, Any{});
  v.section("edm", c.edm);
}

template <class V>
void visit(V& v, PsldConfig& c) {
  v("gamma", c.gamma, Added{Range<double>{0.0, 1e3}});
  v("nu", c.nu, Added{Range<double>{0.0, 1e3}});
  v("m_inv", c.m_inv, Added{Range<double>{0.0, 1e6}});
  v("beta_min", c.beta_min, Added{Range<double>{1e-6, 1e4}});
  v("beta_max", c.beta_max, Added{Range<double>{1e-6, 1e4}});
  v("kappa", c.kappa, Added{Range<double>{1e-9, 1e3}});
  v("numerical_eps", c.numerical_eps, Added{Range<double>{0.0, 1e-4}});
  v("t_min", c.t_min, Added{Range<double>{1e-9, 0.1}});
  v("t_end", c.t_end, Added{Range<double>{1e-9, 0.5}});
}

template <class V>
void visit(V& v, DiffusionConfig& c) {
  v("process", c.process, Added{OneOf{{"vp", "psld"}}});
  v("beta_schedule", c.beta_schedule, OneOf{{"linear", "cosine"}});
  v("beta_start", c.beta_start, Range<double>{1e-12, 0.999});
  v("beta_end", c.beta_end, Range<double>{1e-12, 0.999});
  v("num_timesteps", c.num_timesteps, Range<int>{2, kMaxTimesteps});
  v.section("psld", c.psld);
}

template <class V>
void visit(V& v, LossConfig& c) {
  v("type", c.type, OneOf{loss_names()});
  v("skip_k", c.skip_k, Range<int>{1, 100000});
  v("tau", c.tau, Range<double>{0.0, 1.0});
  v("noise", c.noise, OneOf{{"independent", "shared"}});
  v("p_mean", c.p_mean, Added{Range<double>{-20.0, 20.0}});
  v("p_std", c.p_std, Added{Range<double>{1e-6, 20.0}});
}

template <class V>
void visit(V& v, LearnedScheduleConfig& c) {
  constexpr auto kMax = std::numeric_limits<int64_t>::max();
  v("every", c.every, Range<int64_t>{0, kMax});
  v("levels", c.levels, Range<int>{3, kMaxTimesteps});
  v("min_estimates", c.min_estimates, Range<int>{1, 1000000});
  v("gamma", c.gamma, Range<double>{0.0, 1.0});
  v("batch", c.batch, Range<int>{1, kMaxBatch});
  v("pairs", c.pairs, Range<int>{1, 100000});
}

template <class V>
void visit(V& v, DistributedConfig& c) {
  v("backend", c.backend, OneOf{{"auto", "gloo", "nccl"}});
  v("timeout", c.timeout, Range<double>{1.0, 7 * 24 * 3600.0});
  v("bucket_mb", c.bucket_mb, Range<double>{0.01, 4096.0});
}

template <class V>
void visit(V& v, TrainConfig& c) {
  constexpr auto kMax = std::numeric_limits<int64_t>::max();
  v("steps", c.steps, Range<int64_t>{0, kMax});
  v("max_minutes", c.max_minutes, Range<double>{0.0, 1e9});
  v("batch_size", c.batch_size, Range<int>{1, kMaxBatch});
  v("optimizer", c.optimizer, OneOf{{"adam", "adamw"}});
  v("lr", c.lr, Range<double>{0.0, 10.0});
  v("beta1", c.beta1, Range<double>{0.0, 0.999999});
  v("beta2", c.beta2, Range<double>{0.0, 0.999999999});
  v("eps", c.eps, Range<double>{0.0, 1.0});
  v("weight_decay", c.weight_decay, Range<double>{0.0, 10.0});
  v("warmup", c.warmup, Range<int64_t>{0, kMax});
  v("grad_clip", c.grad_clip, Range<double>{0.0, 1e9});
  v("grad_accum", c.grad_accum, Range<int>{1, 1024});
  v("ema_decay", c.ema_decay, Range<double>{0.0, 1.0});
  v("ckpt_every", c.ckpt_every, Range<int64_t>{1, kMax});
  v("keep_last", c.keep_last, Range<int>{1, 1000000});
  v("log_every", c.log_every, Range<int64_t>{1, kMax});
  v("sample_every", c.sample_every, Range<int64_t>{0, kMax});
  v("sample_num", c.sample_num, Range<int>{0, 4096});
  v("precision", c.precision, OneOf{{"bf16", "fp32"}});
  v("antithetic", c.antithetic, Any{});
  v("eval_every", c.eval_every, Range<int64_t>{0, kMax});
  v("eval_num", c.eval_num, Range<int>{2, 1000000});
  v("eval_features", c.eval_features, Any{});
  v.section("learned_schedule", c.learned_schedule);
  v.section("distributed", c.distributed);
}

template <class V>
void visit(V& v, SkipTuningConfig& c) {
  v("rho_top", c.rho_top, Range<double>{-10.0, 10.0});
  v("rho_bottom", c.rho_bottom, Range<double>{-10.0, 10.0});
  v("rho", c.rho, Range<double>{-10.0, 10.0});
  v("t_min", c.t_min, Range<double>{-1.0, 1e9});
  v("t_max", c.t_max, Range<double>{-1.0, 1e9});
}

template <class V>
void visit(V& v, SampleConfig& c) {
  v("sampler", c.sampler, Any{});  // checked against the sampler registry where it is used
  v("steps", c.steps, Range<int>{1, kMaxTimesteps});
  v("eta", c.eta, Range<double>{0.0, 10.0});
  v("order", c.order, Range<int>{-1, 8});
  v("lambda", c.lambda, Range<double>{-1e6, 1e6});
  v("lambda_s", c.lambda_s, Added{Range<double>{0.0, 10.0}});
  v("lower_order_final", c.lower_order_final, Any{});
  v("solver_type", c.solver_type, Added{OneOf{{"auto", "midpoint", "heun", "taylor", "bh1", "bh2"}}});
  v("corrector", c.corrector, Added{Any{}});
  v("afs", c.afs, Added{Any{}});
  v("afs_restart", c.afs_restart, Added{Any{}});
  v("variance", c.variance, OneOf{{"small", "large"}});
  v("s_churn", c.s_churn, Added{Range<double>{0.0, 1e6}});
  v("s_min", c.s_min, Added{Range<double>{0.0, 1e9}});
  v("s_max", c.s_max, Added{Range<double>{0.0, 1e9}});
  v("s_noise", c.s_noise, Added{Range<double>{0.0, 10.0}});
  v("timesteps", c.timesteps, Any{});  // checked by make_timesteps
  v("karras_rho", c.karras_rho, Range<double>{1e-3, 1e3});
  v("num", c.num, Range<int64_t>{1, std::numeric_limits<int64_t>::max()});
  v("batch", c.batch, Range<int>{1, kMaxBatch});
  v("clip_denoised", c.clip_denoised, Any{});
  v("final_alpha", c.final_alpha, OneOf{{"one", "first"}});
  v("class_label", c.class_label, Added{Range<int>{-1, 100000}});
  v.section("skip_tuning", c.skip_tuning);
}

template <class V>
void visit(V& v, Config& c) {
  v("name", c.name, Any{});
  v("seed", c.seed, Range<uint64_t>{0, std::numeric_limits<uint64_t>::max()});
  v("device", c.device, Any{});
  v("threads", c.threads, Range<int>{0, kMaxThreads});
  v.section("data", c.data);
  v.section("model", c.model);
  v.section("diffusion", c.diffusion);
  v.section("loss", c.loss);
  v.section("train", c.train);
  v.section("sample", c.sample);
}

}  // namespace s2dm
