#include "s2dm/diffusion/psld.h"

#include <torch/torch.h>

#include <array>
#include <cmath>
#include <stdexcept>
#include <string>

namespace s2dm {

Mat2 Mat2::inverse() const {
  const double d = det();
  if (d == 0 || !std::isfinite(d)) throw std::domain_error("a singular 2x2 matrix has no inverse");
  return {mm / d, -xm / d, -mx / d, xx / d};
}

Mat2 expm(const Mat2& a) {
  // With τ = tr a and q² = τ²/4 - det a, (a - τ/2)² = q² I, so
  // e^a = e^{τ/2} (cosh q I + sinh(q)/q (a - τ/2 I)), q imaginary: cos and sin.
  const double half_trace = (a.xx + a.mm) / 2, q2 = half_trace * half_trace - a.det();
  const double q = std::sqrt(std::abs(q2));
  const double c = q2 >= 0 ? std::cosh(q) : std::cos(q);
  const double s_over_q = q < 1e-8 ? 1 + q2 / 6 : (q2 >= 0 ? std::sinh(q) : std::sin(q)) / q;
  const Mat2 shifted = a - Mat2{} * half_trace;
  return (Mat2{} * c + shifted * s_over_q) * std::exp(half_trace);
}

torch::Tensor apply(const Mat2& a, const torch::Tensor& z) {
  const auto halves = z.chunk(2, 1);
  const auto &x = halves[0], &m = halves[1];
  return torch::cat({x * a.xx + m * a.xm, x * a.mx + m * a.mm}, 1);
}

namespace {

// The closed forms, for one B = B(t) (a double) or a float64 tensor of them, so that training's
// batches of times need no host sync. With c = (Γ+ν)/2, d = ν - Γ and F's nilpotent part
// N = F + cI, exp(B F / 2) = e^{-cB/2} (I + B N / 2); the covariance solves the Lyapunov equation
// dΣ/dB = (F Σ + Σ Fᵀ)/2 + diag(Γ, Mν) from diag(var_x0, var_m0) (docs/algorithms.md §8).
template <class S>
S beta_integral_of(const PsldConfig& s, const S& t) {
  return t * s.beta_min + t * t * (0.5 * (s.beta_max - s.beta_min));
}

template <class S>
struct Sym2 {
  S xx, xm, mm;
};

template <class S>
std::array<S, 4> mean_map_of(const PsldConfig& s, double m_inv, const S& b) {
  using std::exp;
  const double d = s.nu - s.gamma;
  const S scale = exp(b * (-(s.gamma + s.nu) / 4));
  return {scale * (b * (d / 4) + 1), scale * b * (m_inv / 2), scale * b * -0.5, scale * (b * (-d / 4) + 1)};
}

template <class S>
Sym2<S> covariance_of(const PsldConfig& s, double m_inv, const S& b, double var_x0, double var_m0) {
  using std::exp;
  using std::expm1;
  const double c = (s.gamma + s.nu) / 2, d = s.nu - s.gamma, mass = 1 / m_inv;
  const S b2 = b * b, decay = exp(b * -c), grown = expm1(b * c);  // e^{-cB}, e^{cB} - 1
  const S xx = (b * (d / 2) + b2 * (m_inv / 4) + 1) * var_x0 + b2 * (m_inv * m_inv / 4 * var_m0) - b2 * (m_inv / 2) -
               b * (d / 2) + grown;
  const S xm = (b * -0.5 - b2 * (d / 8)) * var_x0 + (b * (m_inv / 2) - b2 * (m_inv * d / 8)) * var_m0 + b2 * (d / 4);
  const S mm = b2 * (var_x0 / 4) + (b * (-d / 2) + b2 * (m_inv / 4) + 1) * var_m0 - b2 * 0.5 + b * (mass * d / 2) +
               grown * mass;
  return {decay * xx + s.numerical_eps, decay * xm, decay * mm + s.numerical_eps};
}

// The lower Cholesky factor's entries l11, l21, l22.
template <class S>
std::array<S, 3> cholesky_of(const Sym2<S>& v) {
  using std::sqrt;
  const S l11 = sqrt(v.xx), l21 = v.xm / l11;
  return {l11, l21, sqrt(v.mm - l21 * l21)};
}

void require(bool ok, const std::string& what) {
  if (!ok) throw std::invalid_argument(what);
}

}  // namespace

PsldProcess::PsldProcess(const PsldConfig& settings) : s_(settings), m_inv_((s_.gamma - s_.nu) * (s_.gamma - s_.nu) / 4) {
  if (const std::string why = psld_violation(s_); !why.empty()) throw std::invalid_argument(why);
  require(s_.beta_min > 0, "beta_min must be > 0");
  require(s_.kappa > 0, "kappa must be > 0");
  require(s_.numerical_eps >= 0 && s_.numerical_eps < 1e-3, "numerical_eps must be in [0, 1e-3)");
}

double PsldProcess::beta(double t) const { return s_.beta_min + t * (s_.beta_max - s_.beta_min); }

double PsldProcess::beta_integral(double t) const { return beta_integral_of(s_, t); }

Mat2 PsldProcess::mean_map(double t) const { return mean_map_over(beta_integral(t)); }

Mat2 PsldProcess::mean_map_over(double b) const {
  const auto p = mean_map_of(s_, m_inv_, b);
  return {p[0], p[1], p[2], p[3]};
}

Mat2 PsldProcess::covariance(double t, double var_x0, double var_m0) const {
  return covariance_over(beta_integral(t), var_x0, var_m0);
}

Mat2 PsldProcess::covariance_over(double b, double var_x0, double var_m0) const {
  const auto v = covariance_of(s_, m_inv_, b, var_x0, var_m0);
  return {v.xx, v.xm, v.xm, v.mm};
}

Mat2 PsldProcess::hsm_covariance(double t) const { return covariance(t, 0, s_.kappa * mass()); }

Mat2 PsldProcess::noise_map(double t) const {
  const auto v = hsm_covariance(t);
  const auto l = cholesky_of(Sym2<double>{v.xx, v.xm, v.mm});
  return {l[0], 0, l[1], l[2]};
}

Mat2 PsldProcess::score_map(double t) const {
  const Mat2 l = noise_map(t);
  return {-1 / l.xx, l.mx / (l.xx * l.mm), 0, -1 / l.mm};
}

torch::Tensor PsldProcess::perturb(const torch::Tensor& x0, const torch::Tensor& t, const torch::Tensor& eps) const {
  TORCH_CHECK(eps.size(1) == 2 * x0.size(1), "PSLD's noise has twice the images' channels");
  const auto b = beta_integral_of(s_, t);
  std::vector<int64_t> shape(x0.dim(), 1);
  shape[0] = -1;
  auto per_image = [&](const torch::Tensor& c) { return c.to(x0.scalar_type()).view(shape); };
  const auto p = mean_map_of(s_, m_inv_, b);
  const auto l = cholesky_of(covariance_of(s_, m_inv_, b, 0, s_.kappa * mass()));
  const auto halves = eps.chunk(2, 1);
  const auto &eps_x = halves[0], &eps_m = halves[1];
  return torch::cat({per_image(p[0]) * x0 + per_image(l[0]) * eps_x,
                     per_image(p[2]) * x0 + per_image(l[1]) * eps_x + per_image(l[2]) * eps_m},
                    1);
}

torch::Tensor PsldProcess::prior(const torch::Tensor& standard_normal) const {
  return apply(Mat2{1, 0, 0, std::sqrt(mass())}, standard_normal);
}

torch::Tensor PsldProcess::score(const torch::Tensor& eps, double t) const { return apply(score_map(t), eps); }

HsmLoss::HsmLoss(PsldProcess process, double t_min) : process_(std::move(process)), t_min_(t_min) {}

torch::Tensor HsmLoss::draw_times(int64_t batch, const torch::Device& device) const {
  return torch::rand({batch}, torch::TensorOptions().dtype(torch::kFloat64).device(device)) * (1 - t_min_) + t_min_;
}

diffusion::LossTerms HsmLoss::terms(const EpsModel& network, const torch::Tensor& x0, const torch::Tensor& t,
                                    const torch::Tensor& eps) const {
  const auto z = process_.perturb(x0, t, eps);
  const auto eps_hat = network(z, t.to(torch::kFloat32)).to(eps.scalar_type());  // (from autocast)
  diffusion::LossTerms out;
  out.loss = (eps_hat - eps).square().mean();
  return out;
}

diffusion::LossTerms HsmLoss::operator()(const EpsModel& network, const torch::Tensor& x0, diffusion::Rows rows) const {
  auto t = draw_times(x0.size(0), x0.device());
  auto sizes = x0.sizes().vec();
  sizes[1] *= 2;
  auto eps = torch::randn(sizes, x0.options());
  auto images = x0;
  if (rows.end >= 0)
    for (auto* part : {&images, &t, &eps}) *part = part->slice(0, rows.begin, rows.end);
  return terms(network, images, t, eps);
}

}  // namespace s2dm
