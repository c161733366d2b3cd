// UniPC (Zhao et al. 2023; wl-zhao/UniPC, diffusers' UniPCMultistepScheduler): a predictor-corrector
// multistep method in λ = log(α/σ) on the data prediction D = x̂₀. The predictor UniP of order p
// takes the exponential-integrator step from D at the step's start corrected by the divided
// differences of the p - 1 values before; the corrector UniC takes the same step again once D at
// its end is known, which the next step evaluates anyway: one evaluation a step either way. The
// weights solve a small Vandermonde system in the ratios of the λ-steps, scaled by B(h) = -h (bh1)
// or e^{-h} - 1 (bh2), h the step in λ. docs/algorithms.md §3 has the formulas.
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <deque>
#include <vector>

#include "s2dm/sample/samplers.h"

namespace s2dm::sample {
namespace {

// Solves the n×n system A w = b (n ≤ 3, well conditioned here) by Gaussian elimination with pivoting.
std::vector<double> solve(std::vector<std::vector<double>> a, std::vector<double> b) {
  const size_t n = b.size();
  for (size_t c = 0; c < n; ++c) {
    size_t p = c;
    for (size_t r = c + 1; r < n; ++r)
      if (std::abs(a[r][c]) > std::abs(a[p][c])) p = r;
    std::swap(a[c], a[p]);
    std::swap(b[c], b[p]);
    for (size_t r = c + 1; r < n; ++r) {
      const double f = a[r][c] / a[c][c];
      for (size_t k = c; k < n; ++k) a[r][k] -= f * a[c][k];
      b[r] -= f * b[c];
    }
  }
  std::vector<double> w(n);
  for (size_t r = n; r-- > 0;) {
    double s = b[r];
    for (size_t k = r + 1; k < n; ++k) s -= a[r][k] * w[k];
    w[r] = s / a[r][r];
  }
  return w;
}

// The history a step reads: D and λ at the step's start (index 0) and before it, newest first.
struct History {
  std::deque<torch::Tensor> denoised;
  std::deque<double> lambda;
};

double lambda_of(double alpha_bar) { return 0.5 * std::log(alpha_bar / (1 - alpha_bar)); }

// One UniPC step of `order` from x (at λ = past.lambda[0]) to ᾱ_next: the predictor, or, given
// D at the step's end (`denoised_end`), the corrector.
torch::Tensor unipc_step(const torch::Tensor& x, const History& past, double a, double a_next, int order, bool bh1,
                         const torch::Tensor& denoised_end = {}) {
  const double alpha_next = std::sqrt(a_next), sigma = std::sqrt(1 - a), sigma_next = std::sqrt(1 - a_next);
  const double h = lambda_of(a_next) - past.lambda[0];
  const auto& d0 = past.denoised[0];
  // r_k = (λ_k - λ_0)/h and the first divided differences (D_k - D_0)/r_k of the points before.
  std::vector<double> r;
  std::vector<torch::Tensor> differences;
  for (int k = 1; k < order; ++k) {
    r.push_back((past.lambda[k] - past.lambda[0]) / h);
    differences.push_back((past.denoised[k] - d0) / r.back());
  }
  r.push_back(1.0);
  // R_ij = r_j^i and b_i = (i+1)! ψ_i / B(h), ψ_0 = (e^{-h} - 1)/(-h) - 1, ψ_{i+1} = ψ_i/(-h) - 1/(i+2)!
  // (the Taylor remainders of the exponential integrator's weights).
  const double hh = -h, h_phi_1 = std::expm1(hh);
  const double b_h = bh1 ? hh : std::expm1(hh);
  std::vector<std::vector<double>> R(order, std::vector<double>(order));
  std::vector<double> b(order);
  double h_phi_k = h_phi_1 / hh - 1, factorial = 1;
  for (int i = 0; i < order; ++i) {
    for (int j = 0; j < order; ++j) R[i][j] = std::pow(r[j], i);
    b[i] = h_phi_k * factorial / b_h;
    factorial *= i + 2;
    h_phi_k = h_phi_k / hh - 1 / factorial;
  }
  auto x_next = (sigma_next / sigma) * x - alpha_next * h_phi_1 * d0;
  torch::Tensor correction;
  if (!denoised_end.defined()) {
    if (order == 1) return x_next;
    // (Order 2 takes ρ = 1/2, as the reference implementations do, rather than the system's.)
    std::vector<std::vector<double>> leading(order - 1);  // R without its last row and column
    for (int i = 0; i + 1 < order; ++i) leading[i].assign(R[i].begin(), R[i].end() - 1);
    const auto rho = order == 2 ? std::vector<double>{0.5} : solve(leading, {b.begin(), b.end() - 1});
    correction = rho[0] * differences[0];
    for (size_t k = 1; k < differences.size(); ++k) correction = correction + rho[k] * differences[k];
  } else {
    const auto rho = order == 1 ? std::vector<double>{0.5} : solve(R, b);
    correction = rho.back() * (denoised_end - d0);
    for (size_t k = 0; k < differences.size(); ++k) correction = correction + rho[k] * differences[k];
  }
  return x_next - alpha_next * b_h * correction;
}

}  // namespace

torch::Tensor sample_unipc(const EpsModel& model, torch::Tensor x, const Grid& grid, const SamplerOptions& options,
                           const Callback& callback) {
  const int max_order = options.order < 0 ? 3 : options.order;
  const bool bh1 = options.solver_type == "bh1";
  const int S = grid.steps();
  History past;
  torch::Tensor x_start;  // where the last step started, for its correction
  int last_order = 0;
  for (int i = 0; i < S; ++i) {
    const double a = grid.alpha_bar[i], a_next = grid.alpha_bar[i + 1];
    auto d = predict_x0(x, eval_eps(model, x, grid.t[i]), a);
    if (options.clip_denoised) d = d.clamp(-1.0, 1.0);
    if (options.corrector && i > 0) x = unipc_step(x_start, past, grid.alpha_bar[i - 1], a, last_order, bh1, d);
    past.denoised.push_front(d);
    past.lambda.push_front(lambda_of(a));
    if (static_cast<int>(past.denoised.size()) > max_order) past.denoised.pop_back(), past.lambda.pop_back();
    // Warm-up from first order; lower_order_final (every S, as the references) ends with order 1
    // and, before it, at most 2.
    last_order = static_cast<int>(past.denoised.size());
    if (options.lower_order_final) last_order = std::min(last_order, S - i);
    x_start = x;
    // The step to ᾱ = 1 (h = ∞) ends on the data prediction.
    x = a_next == 1.0 ? d : unipc_step(x, past, a, a_next, last_order, bh1);
    if (callback) callback({i, S, grid.t[i], x});
  }
  return x;
}

}  // namespace s2dm::sample
