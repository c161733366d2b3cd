#pragma once
// Typed configuration. One YAML file holds the sections below; every key has a default, every
// value is validated, unknown keys are rejected with file, line and a "did you mean".
// `--set section.key=value` overrides go through the same validation.
#include <cstdint>
#include <string>
#include <vector>

namespace s2dm {

struct DataConfig {
  std::string dataset = "fmnist";  // fmnist | cifar10 | celeba | folder
  std::string path;                // where the files are; empty = the dataset's default place
  int image_size = 32;
  int channels = 1;
  bool random_flip = true;
  int64_t limit = 0;  // use only the first N images (0 = all)
  // Decoded-image cache ("none": no cache); empty = celeba: <path>/../s2dm_celeba_<size>.bin,
  // folder: <path>/s2dm_cache_<size>_<channels>.bin
  std::string cache;
};

// EDM's networks and preconditionings (model.type songunet | dhariwalunet): what EDM's classes
// take besides the shared keys (ch = model_channels, ch_mult = channel_mult, num_res_blocks =
// num_blocks, attn_resolutions, dropout), under EDM's names.
struct EdmModelConfig {
  std::string precond = "edm";  // vp | ve | iddpm | edm, with EDM's default settings
  double sigma_data = 0.5;      // (edm)
  int label_dim = 0;            // class labels (conditional models)
  int augment_dim = 0;          // EDM's augmentation labels (none at sampling)
  int channel_mult_emb = 4;
  std::string embedding_type = "positional";  // songunet: positional (DDPM++) | fourier (NCSN++)
  int channel_mult_noise = 1;                 // songunet: 1 (DDPM++) | 2 (NCSN++)
  std::string encoder_type = "standard";      // songunet: standard | skip | residual
  std::string decoder_type = "standard";      // songunet: standard | skip
  std::vector<double> resample_filter{1, 1};  // songunet: [1, 1] | [1, 3, 3, 1]
  int channels_per_head = 64;                 // dhariwalunet
};

struct ModelConfig {
  std::string type = "ddpm";  // ddpm (the DDPM UNet, an ε-model of `diffusion`) | songunet | dhariwalunet
  int ch = 128;
  std::vector<int> ch_mult{1, 2, 2, 2};
  int num_res_blocks = 2;
  std::vector<int> attn_resolutions{16};
  double dropout = 0.1;
  bool resamp_with_conv = true;  // (ddpm)
  EdmModelConfig edm;
};

// Phase-space Langevin diffusion (diffusion.process psld; diffusion/psld.h, docs/algorithms.md §8),
// under the released PSLD code's names.
struct PsldConfig {
  double gamma = 0.01;  // Γ, the data's friction (> 0)
  double nu = 4.01;     // ν, the momentum's friction
  // M⁻¹: critical damping fixes it at (Γ - ν)²/4; 0 derives it, a value must equal it.
  double m_inv = 0;
  double beta_min = 8, beta_max = 8;  // β(t), linear on t ∈ [0, 1]
  double kappa = 0.04;                // the initial momentum m_0 ~ N(0, κM) of hybrid score matching
  double numerical_eps = 1e-9;        // added to the kernel's variances (as the released code does)
  double t_min = 1e-5;                // training draws t ~ U[t_min, 1]
  double t_end = 1e-3;                // sampling integrates from t = 1 to t_end, then denoises to 0
};

struct DiffusionConfig {
  // vp: DDPM's discrete-time process (or EDM's, model.type songunet | dhariwalunet) | psld
  std::string process = "vp";
  std::string beta_schedule = "linear";  // linear | cosine
  double beta_start = 1e-4;
  double beta_end = 0.02;
  int num_timesteps = 1000;
  PsldConfig psld;
};

struct LossConfig {
  // simple | s2dm (L_simple + L_skip) | edm (EDM's networks) | hsm (PSLD's hybrid score matching)
  std::string type = "simple";
  int skip_k = 9;                      // the skip size k of L_skip
  double tau = 0.99;                   // weight of L_simple for t >= k
  std::string noise = "independent";   // independent | shared (ε₂ = ε₁)
  double p_mean = -1.2, p_std = 1.2;   // EDM's ln σ ~ N(P_mean, P_std²) (loss edm, precond edm)
};

// The online schedule estimate of Williams et al. (their Algorithm 2) during training.
struct LearnedScheduleConfig {
  int64_t every = 0;        // estimate every N steps (0 = off)
  int levels = 100;         // fine grid of noise levels
  int min_estimates = 24;   // per level pair before the schedule moves
  double gamma = 0.05;      // t ← γ t* + (1-γ) t
  int batch = 16;           // images per estimate (from the current training batch)
  int pairs = 4;            // level pairs per estimate (2 network evaluations each per image)
};

// Data-parallel training over several processes (docs/design.md, "Data parallelism").
struct DistributedConfig {
  std::string backend = "auto";  // auto (nccl on CUDA, gloo on the CPU) | gloo | nccl
  double timeout = 300;          // seconds a rank waits for its peers before the run stops
  double bucket_mb = 25;         // gradient all-reduce bucket size
};

struct TrainConfig {
  int64_t steps = 800000;
  double max_minutes = 0;   // training ends after this much wall-clock time, or at `steps` (0 = no limit)
  int batch_size = 128;
  std::string optimizer = "adam";  // adam | adamw
  double lr = 2e-4;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.0;
  int64_t warmup = 0;       // linear learning-rate warm-up steps
  double grad_clip = 1.0;   // max global grad norm (0 = off)
  int grad_accum = 1;       // micro-batches per optimiser step
  double ema_decay = 0.9999;
  int64_t ckpt_every = 5000;
  int keep_last = 3;        // step_<N>.ckpt files kept (latest.ckpt always)
  int64_t log_every = 100;
  int64_t sample_every = 0; // sample grid PNG with EMA weights (0 = only at the end)
  int sample_num = 64;
  std::string precision = "bf16";  // bf16 | fp32 (autocast on CUDA; CPU is always fp32)
  bool antithetic = true;
  int64_t eval_every = 0;          // FID/FD of EMA samples every N steps (0 = never)
  int eval_num = 1000;             // samples per evaluation (and at most 10x that many data images)
  std::string eval_features;       // inception[:WEIGHTS] | classifier:PATH (required with eval_every)
  LearnedScheduleConfig learned_schedule;
  DistributedConfig distributed;
};

// Skip-Tuning (Ma et al. 2024): the UNet's long skips, numbered i = 0 (deepest) ... k (top),
// are scaled by ρ_i = rho_bottom + (rho_top - rho_bottom)·i/k, or by an explicit list `rho`
// (one factor per skip, deepest first), while the timestep lies in [t_min, t_max].
struct SkipTuningConfig {
  double rho_top = 1.0;
  double rho_bottom = 1.0;
  std::vector<double> rho;  // overrides rho_top/rho_bottom when given
  double t_min = 0.0;
  double t_max = 1e9;       // (clamped to T-1)
  bool active() const;
};

// What samplers read (sample.* keys), spelled once: the config holds it (SampleConfig derives
// from it) and samplers take it (sample::SamplerOptions adds the per-batch noise stream).
struct SamplerSettings {
  double eta = 0.0;                // DDIM stochasticity (0 deterministic, 1 = DDPM ancestral)
  bool clip_denoised = false;      // clip x̂₀ to [-1, 1] (DDIM/DDPM, DPM-Solver++)
  int order = -1;                  // multistep order (-1 = the sampler's default)
  double lambda = 0.0;             // λ of λ-DDIM (and of PSLD's conjugate integrators)
  double lambda_s = 1.0;           // PSLD's OBA samplers: the scale of the position's noise (1: the SDE's)
  bool lower_order_final = true;   // DEIS log-ρ / DPM-Solver++: first order on the last step(s)
  // The variant of a solver's step (auto: the sampler's default): DPM-Solver++'s second-order step
  // midpoint (default) | heun; UniPC's B(h) bh1 | bh2 (default).
  std::string solver_type = "auto";
  bool corrector = true;  // UniPC: the UniC corrector
  // The analytical first step (AMED, Zhou et al. 2024): ε̂(x_T) taken as x_T, the ε-prediction of
  // pure noise, instead of a network evaluation; one evaluation saved.
  bool afs = false;
  // With afs: the analytical value serves the first step only (a DDIM step), and the sampler starts
  // afresh from there, its multistep history holding network evaluations alone. Off, as AMED's
  // code: the value stays in the history, where a multistep solver extrapolates from it.
  bool afs_restart = false;
  std::string variance = "small";  // DDPM: small (β̃, = DDIM η = 1) | large (σ̂ = √(1 - a/a'))
  // EDM's stochastic churn (euler, heun): a step from σ in [s_min, s_max] first raises σ by
  // γσ, γ = min(s_churn / S, √2 - 1), with fresh noise of s_noise times the missing variance.
  double s_churn = 0.0;  // 0: deterministic
  double s_min = 0.0, s_max = 1e9;  // (1e9: no upper bound)
  double s_noise = 1.0;
};

struct SampleConfig : SamplerSettings {
  // (Not an aggregate: GCC 12 at -O3 takes the base of `SampleConfig{}` for uninitialised.)
  SampleConfig() {}
  std::string sampler = "ddim";       // s2dm samplers lists them
  int steps = 50;
  // auto (the sampler's own: edm for euler and heun, as EDM's samplers, else uniform) | uniform |
  // quad | linspace | trailing | leading | logsnr | karras | edm | a list "999,500,0" | file:PATH | ...
  std::string timesteps = "auto";
  double karras_rho = 7.0;
  int64_t num = 64;
  int batch = 64;
  std::string final_alpha = "one";  // one | first
  // A class-conditional model's class for every image (EDM's --class); -1: each image's own, drawn
  // from its seed.
  int class_label = -1;
  SkipTuningConfig skip_tuning;
};

// Bounds that every setting of their kind shares (configs, experiment files, command-line flags).
inline constexpr int kMaxThreads = 4096;      // CPU threads
inline constexpr int kMaxBatch = 1 << 20;     // images per batch
inline constexpr int kMaxTimesteps = 100000;  // T, sampling steps, noise levels

struct Config {
  std::string name = "run";
  uint64_t seed = 0;
  std::string device = "auto";  // auto | cpu | cuda | cuda:N
  int threads = 0;              // CPU intra-op threads (0 = all cores)
  DataConfig data;
  ModelConfig model;
  DiffusionConfig diffusion;
  LossConfig loss;
  TrainConfig train;
  SampleConfig sample;
};

// Loads `path`, applies `overrides` ("section.key=value" or "key=value"), validates.
// Throws ConfigError naming the file (or the --set), the line, the key and the value; also for
// text that is no mapping (an empty file, a directory, a list): `{}` asks for every default.
Config load_config(const std::string& path, const std::vector<std::string>& overrides = {});
// The same from YAML text; `origin` names it in errors.
Config parse_config(const std::string& yaml_text, const std::string& origin,
                    const std::vector<std::string>& overrides = {});
// Applies "section.key=value" overrides to a config (each value read as YAML, checked as a file's;
// a whole section given as a value replaces that section), then checks the whole. Throws
// ConfigError naming the --set, or `origin` for a relation between keys.
void apply_overrides(Config& config, const std::vector<std::string>& overrides, const std::string& origin);
// Checks every value and the relations between keys, as loading does, for a config set in code
// (command-line flags). Throws ConfigError naming `origin`.
void check_config(const Config& config, const std::string& origin);
// The resolved config as YAML (every key, defaults included); parse_config reads it back.
std::string to_yaml(const Config& config);
// The config's identity: to_yaml's text without the keys added to the schema later (schema::Added)
// while they hold their defaults. The experiment driver keys its work on it, so that a new key
// leaves every earlier experiment's keys as they were.
std::string config_identity(const Config& config);

// The keys of the sample section (for the experiment driver's sweeps).
std::vector<std::string> sample_config_keys();
// Sets the named keys of a sample section back to their defaults.
void reset_sample_keys(SampleConfig& config, const std::vector<std::string>& keys);

// Why PSLD's settings do not describe a critically damped process ("key = value: why"), or "".
std::string psld_violation(const PsldConfig& psld);

// "did you mean" helper, shared by the CLI: the closest candidate within a small edit distance.
std::string closest_match(const std::string& word, const std::vector<std::string>& candidates);

}  // namespace s2dm
