// DEIS (Zhang & Chen 2022; qsh-zh/deis th_deis/, diffusers' DEIS scheduler): exponential
// integrators whose ε is extrapolated by a Lagrange polynomial through the last r+1 values.
// All three variants write x_{i+1} = (α_{i+1}/α_i) x_i + α_{i+1} Σ_j c_ij ε_{i-j}, with
// c_ij = ∫ ℓ_j dρ over the step (ρ = σ/α) and ℓ_j the Lagrange basis in t, ρ or log ρ; the
// coefficients depend only on the grid and are computed once per call. ρAB is also iPNDM with
// variable-step weights (ipndm-v).
#include <torch/torch.h>

#include <array>
#include <cmath>
#include <deque>

#include "s2dm/core/errors.h"
#include "s2dm/sample/samplers.h"

namespace s2dm::sample {
namespace {

double rho_of(double alpha_bar) { return std::sqrt((1 - alpha_bar) / alpha_bar); }

// Lagrange basis polynomial j through `nodes`, at u.
double lagrange(const std::vector<double>& nodes, size_t j, double u) {
  double v = 1.0;
  for (size_t m = 0; m < nodes.size(); ++m)
    if (m != j) v *= (u - nodes[m]) / (nodes[j] - nodes[m]);
  return v;
}

// 8-point Gauss–Legendre on [lo, hi] (exact for polynomials of degree 15).
template <class F>
double gauss_legendre(F f, double lo, double hi) {
  static constexpr std::array<double, 4> x{0.1834346424956498, 0.5255324099163290, 0.7966664774136267,
                                           0.9602898564975363};
  static constexpr std::array<double, 4> w{0.3626837833783620, 0.3137066458778873, 0.2223810344533745,
                                           0.1012285362903763};
  const double mid = 0.5 * (lo + hi), half = 0.5 * (hi - lo);
  double s = 0;
  for (size_t k = 0; k < 4; ++k) s += w[k] * (f(mid - half * x[k]) + f(mid + half * x[k]));
  return s * half;
}

enum class Variable { kTime, kRho, kLogRho };

// Coefficients c_ij for every step i: entry j weights ε from step i-j.
std::vector<std::vector<double>> deis_coefficients(const Grid& grid, Variable var, int order, bool lower_order_final) {
  const int S = grid.steps();
  std::vector<std::vector<double>> coef(S);
  for (int i = 0; i < S; ++i) {
    int r = std::min(order, i);  // warm up with lower orders
    if (lower_order_final && S < 15) r = std::min(r, S - 1 - i);
    const double rho_i = rho_of(grid.alpha_bar[i]), rho_next = rho_of(grid.alpha_bar[i + 1]);
    if (var == Variable::kLogRho && rho_next == 0.0) r = 0;  // log ρ = -∞ at ᾱ = 1
    std::vector<double> nodes;
    for (int j = 0; j <= r; ++j) {
      double a = grid.alpha_bar[i - j];
      nodes.push_back(var == Variable::kTime ? grid.t[i - j] : var == Variable::kRho ? rho_of(a) : std::log(rho_of(a)));
    }
    for (int j = 0; j <= r; ++j) {
      double c = 0;
      if (r == 0) {
        c = rho_next - rho_i;  // ∫ dρ, exact in every variable (DEIS order 0 = DDIM)
      } else if (var == Variable::kTime) {
        // ∫ ℓ_j(τ) dρ(τ) over [t_i, t_{i+1}]: a Stieltjes midpoint sum on a fine partition.
        constexpr int kParts = 2000;
        const double t0 = grid.t[i], t1 = grid.t[i + 1];
        double prev = rho_i;
        for (int k = 1; k <= kParts; ++k) {
          double tk = t0 + (t1 - t0) * k / kParts;
          double rk = k == kParts ? rho_next : rho_of(grid.schedule->alpha_bar(tk));
          c += lagrange(nodes, j, t0 + (t1 - t0) * (k - 0.5) / kParts) * (rk - prev);
          prev = rk;
        }
      } else if (var == Variable::kRho) {
        c = gauss_legendre([&](double u) { return lagrange(nodes, j, u); }, rho_i, rho_next);
      } else {
        c = gauss_legendre([&](double s) { return std::exp(s) * lagrange(nodes, j, s); }, std::log(rho_i),
                           std::log(rho_next));
      }
      coef[i].push_back(c);
    }
  }
  return coef;
}

torch::Tensor deis_steps(const EpsModel& model, torch::Tensor x, const Grid& grid, const SamplerOptions& options,
                         const Callback& callback, Variable var, int default_order) {
  const int order = options.order < 0 ? default_order : options.order;
  const auto coef = deis_coefficients(grid, var, order, var == Variable::kLogRho && options.lower_order_final);
  std::deque<torch::Tensor> history;  // newest first, at most order+1
  for (int i = 0; i < grid.steps(); ++i) {
    history.push_front(eval_eps(model, x, grid.t[i]));
    if (static_cast<int>(history.size()) > order + 1) history.pop_back();
    const double alpha = std::sqrt(grid.alpha_bar[i]), alpha_next = std::sqrt(grid.alpha_bar[i + 1]);
    auto update = coef[i][0] * history[0];
    for (size_t j = 1; j < coef[i].size(); ++j) update = update + coef[i][j] * history[j];
    x = (alpha_next / alpha) * x + alpha_next * update;
    if (callback) callback({i, grid.steps(), grid.t[i], x});
  }
  return x;
}

}  // namespace

torch::Tensor sample_deis(const EpsModel& model, torch::Tensor x, const Grid& grid, const SamplerOptions& options,
                          const Callback& callback) {
  return deis_steps(model, std::move(x), grid, options, callback, Variable::kTime, 3);
}

torch::Tensor sample_deis_rho(const EpsModel& model, torch::Tensor x, const Grid& grid, const SamplerOptions& options,
                              const Callback& callback) {
  return deis_steps(model, std::move(x), grid, options, callback, Variable::kRho, 3);
}

torch::Tensor sample_deis_logrho(const EpsModel& model, torch::Tensor x, const Grid& grid,
                                 const SamplerOptions& options, const Callback& callback) {
  return deis_steps(model, std::move(x), grid, options, callback, Variable::kLogRho, 3);
}

torch::Tensor sample_ipndm_v(const EpsModel& model, torch::Tensor x, const Grid& grid, const SamplerOptions& options,
                             const Callback& callback) {
  // iPNDM with variable-step weights (diff-sampler's ipndm_v_sampler) is Adams–Bashforth in ρ with
  // the weights of the step sizes at hand, ρAB; its order counts points, DEIS's the degree.
  SamplerOptions rho = options;
  rho.order = (options.order < 0 ? 4 : options.order) - 1;
  return deis_steps(model, std::move(x), grid, rho, callback, Variable::kRho, 3);
}

}  // namespace s2dm::sample
