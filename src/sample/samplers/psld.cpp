// PSLD's samplers (docs/algorithms.md §8): the released code's Euler–Maruyama and SSCS, Euler on the
// probability-flow ODE, the conjugate integrators (λ-DDIM for PSLD) and the splitting integrators
// of Pandey et al. 2023 (arXiv 2310.07894), naive, reduced and conjugate.
//
// Each steps forward time t down a PSLD grid, 1 = t_0 > ... > t_{S-1} = t_end, then takes the
// released code's denoising step: an Euler step of the reverse drift from t_end to 0 (the reverse
// SDE's for the stochastic samplers, the probability-flow ODE's for the deterministic ones). Per
// pixel, with z = [x, m], F_t = (β/2) F̄, F̄ = [[-Γ, M⁻¹], [-1, -ν]], D = diag(Γ, Mν) and the score
// s = S_t ε̂ (S_t = -L_t⁻ᵀ, PsldProcess::score_map), the drifts in reverse time τ (dτ = -dt) are
//   reverse SDE  -F_t z + β D S_t ε̂,      probability-flow ODE  -F_t z + (β/2) D S_t ε̂.
// The splitting integrators split the ODE's drift by rows: the momentum flow ℬ (x held) and the
// position flow 𝒜 (m held), each linear in z and ε̂:
//   ℬ: dm/dτ = (β/2)(x + ν m) + (β/2) Mν (S ε̂)_m,    𝒜: dx/dτ = (β/2)(Γ x - M⁻¹ m) + (β/2) Γ (S ε̂)_x.
#include <torch/torch.h>

#include <array>
#include <cmath>
#include <functional>
#include <vector>

#include "s2dm/diffusion/psld.h"
#include "s2dm/sample/samplers.h"

namespace s2dm::sample {
namespace {

Mat2 diag(double xx, double mm) { return {xx, 0, 0, mm}; }
Mat2 x_row(const Mat2& a) { return {a.xx, a.xm, 0, 0}; }
Mat2 m_row(const Mat2& a) { return {0, 0, a.mx, a.mm}; }
const Mat2 kZero{0, 0, 0, 0};

// A reverse-time ODE (or drift) linear in z and ε̂: dz/dτ = state(s) z + eps(s) ε̂ at forward time s.
struct LinearFlow {
  std::function<Mat2(double s)> state, eps;

  torch::Tensor drift(const torch::Tensor& z, const torch::Tensor& e, double s) const {
    return apply(state(s), z) + apply(eps(s), e);
  }
  // One Euler step of length h at time s.
  torch::Tensor euler(const torch::Tensor& z, const torch::Tensor& e, double s, double h) const {
    return z + drift(z, e, s) * h;
  }
};

// PSLD's reverse-time drifts at forward time s, whole and in the parts the samplers split them into.
class Flows {
 public:
  explicit Flows(const PsldProcess& p) : p_(p) {}
  Mat2 minus_f(double s) const {
    const double beta = p_.beta(s), gamma = p_.settings().gamma, nu = p_.settings().nu;
    return Mat2{-gamma, p_.mass_inverse(), -1, -nu} * (-beta / 2);
  }
  // (β/2) D S_s: the probability-flow ODE's weight on ε̂ (twice it: the reverse SDE's).
  Mat2 ode_eps(double s) const {
    return diag(p_.settings().gamma, p_.mass() * p_.settings().nu) * p_.score_map(s) * (p_.beta(s) / 2);
  }
  LinearFlow ode() const {
    return {[*this](double s) { return minus_f(s); }, [*this](double s) { return ode_eps(s); }};
  }
  LinearFlow sde() const {
    return {[*this](double s) { return minus_f(s); }, [*this](double s) { return ode_eps(s) * 2.0; }};
  }
  LinearFlow momentum() const {  // ℬ
    return {[*this](double s) { return m_row(minus_f(s)); }, [*this](double s) { return m_row(ode_eps(s)); }};
  }
  LinearFlow position() const {  // 𝒜
    return {[*this](double s) { return x_row(minus_f(s)); }, [*this](double s) { return x_row(ode_eps(s)); }};
  }
  // The reverse SDE's drift without the friction that the O step (an exact Ornstein–Uhlenbeck
  // flow, diag(-βΓ/2, -βν/2) z plus all the noise) takes: its momentum row (the kick) and its
  // position row (the drift).
  LinearFlow kick() const {
    return {[*this](double s) { return m_row(minus_f(s) + friction(s)); },
            [*this](double s) { return m_row(ode_eps(s) * 2.0); }};
  }
  LinearFlow drift() const {
    return {[*this](double s) { return x_row(minus_f(s) + friction(s)); },
            [*this](double s) { return x_row(ode_eps(s) * 2.0); }};
  }

 private:
  Mat2 friction(double s) const { return diag(p_.settings().gamma, p_.settings().nu) * (p_.beta(s) / 2); }
  const PsldProcess& p_;
};

// ∫_a^b f(s) ds (0 ≤ a < b) by 4-point Gauss–Legendre on 16 panels in u = √s (ds = 2u du): S_s
// carries 1/l11 ~ s^{-1/2}, smooth in u. `f` is called at increasing s.
Mat2 integrate(double a, double b, const std::function<Mat2(double)>& f) {
  constexpr int kPanels = 16;
  constexpr std::array<double, 4> node{-0.8611363115940526, -0.3399810435848563, 0.3399810435848563, 0.8611363115940526};
  constexpr std::array<double, 4> weight{0.3478548451374538, 0.6521451548625461, 0.6521451548625461, 0.3478548451374538};
  const double ua = std::sqrt(a), ub = std::sqrt(b), width = (ub - ua) / kPanels;
  Mat2 sum = kZero;
  for (int k = 0; k < kPanels; ++k)
    for (int j = 0; j < 4; ++j) {
      const double u = ua + width * (k + 0.5 + 0.5 * node[j]);
      sum = sum + f(u * u) * (weight[j] * width * u);  // (½ width · 2u)
    }
  return sum;
}

// The exact step of a linear flow with ε̂ held, from t down to t_next:
//   z(t_next) = W(t) z(t) + (∫_{t_next}^{t} W(s) eps(s) ds) ε̂,
// W(s) the flow's propagator from s to t_next: dW/ds = W state(s), W(t_next) = I, carried from
// quadrature node to node by exponentials of the state at midpoints (second-order Magnus): exact
// where β is constant or the state is β(s) times one matrix (β linear), as for B = 0 and λI.
struct ExactStep {
  Mat2 state, eps;
};
ExactStep exact_step(const LinearFlow& flow, double t, double t_next) {
  Mat2 w;
  double at = t_next;
  auto advance = [&](double to) {
    constexpr int kSubsteps = 2;
    const double h = (to - at) / kSubsteps;
    for (int k = 0; k < kSubsteps; ++k, at += h) w = w * expm(flow.state(at + h / 2) * h);
    at = to;
  };
  const Mat2 eps = integrate(t_next, t, [&](double s) {
    advance(s);
    return w * flow.eps(s);
  });
  advance(t);
  return {w, eps};
}

// The final denoising step from t_end to 0 (the grid's last step) with `flow`'s drift.
torch::Tensor denoise(const LinearFlow& flow, const EpsModel& model, const torch::Tensor& z, double t_end) {
  return flow.euler(z, eval_eps(model, z, t_end), t_end, t_end);
}

// Runs `step(i, z)` over the integration steps, then the denoising step with `last`'s drift.
template <class Step>
torch::Tensor run_grid(torch::Tensor z, const Grid& grid, const Callback& callback, const EpsModel& model,
                       const LinearFlow& last, Step&& step) {
  const int S = grid.steps();
  for (int i = 0; i + 1 < S; ++i) {
    z = step(i, z, grid.t[i], grid.t[i + 1]);
    if (callback) callback({i, S, grid.t[i], z});
  }
  z = denoise(last, model, z, grid.t[S - 1]);
  if (callback) callback({S - 1, S, grid.t[S - 1], z});
  return z;
}

// The conjugate integrators for PSLD (λ-DDIM; docs/algorithms.md §8): with A_t solving
// dA/dt = A (B - F_t), A_0 = I, ẑ = A z follows dẑ/dt = A B A⁻¹ ẑ + dΦ/dt ε̂, dΦ/dt = -(β/2) A D S;
// an Euler step of ẑ with ε̂ held, mapped back, is
//   z' = A_{t'}⁻¹ A_t (I - hB) z + A_{t'}⁻¹ (Φ_{t'} - Φ_t) ε̂,
// where A_{t'}⁻¹ A_t and A_{t'}⁻¹ (Φ_{t'} - Φ_t) are the propagator and the ε̂ weight of the exact step
// of dz/dτ = (B - F) z + (β/2) D S ε̂ (exact_step). B = λI (psld-ddim) or λ𝟙 (psld-ddim-ones, the
// all-ones matrix); B = 0 is the exponential integrator, exact in the linear part.
torch::Tensor sample_psld_conjugate(const EpsModel& model, torch::Tensor z, const Grid& grid, const Mat2& b,
                                    const Callback& callback) {
  const Flows flows(*grid.psld);
  const LinearFlow conjugate{[&](double s) { return b + flows.minus_f(s); }, [&](double s) { return flows.ode_eps(s); }};
  return run_grid(std::move(z), grid, callback, model, flows.ode(), [&](int, const torch::Tensor& z, double t, double t_next) {
    const auto step = exact_step(conjugate, t, t_next);
    return apply(step.state * (Mat2{} - b * (t - t_next)), z) + apply(step.eps, eval_eps(model, z, t));
  });
}

// Symplectic Euler: the momentum flow ℬ, then the position flow 𝒜 with the new momentum, each an
// Euler step at the step's start time. Naive (nse): ε̂ afresh for each (2 evaluations a step);
// reduced (rse): the first ε̂ serves both.
torch::Tensor symplectic_euler(const EpsModel& model, torch::Tensor z, const Grid& grid, bool reduced,
                               const Callback& callback) {
  const Flows flows(*grid.psld);
  const auto kick = flows.momentum(), drift = flows.position();
  return run_grid(std::move(z), grid, callback, model, flows.ode(), [&](int, torch::Tensor z, double t, double t_next) {
    const double h = t - t_next;
    const auto eps = eval_eps(model, z, t);
    z = kick.euler(z, eps, t, h);
    return drift.euler(z, reduced ? eps : eval_eps(model, z, t), t, h);
  });
}

// Velocity Verlet: ℬ over half the step at its start, 𝒜 over the whole step at its middle, ℬ over
// the other half at its end. Naive (nvv): ε̂ afresh at each (3 evaluations a step); reduced (rvv):
// the first ε̂ serves all three, the coefficients (β, S) taken at each part's own time.
torch::Tensor velocity_verlet(const EpsModel& model, torch::Tensor z, const Grid& grid, bool reduced,
                              const Callback& callback) {
  const Flows flows(*grid.psld);
  const auto kick = flows.momentum(), drift = flows.position();
  return run_grid(std::move(z), grid, callback, model, flows.ode(), [&](int, torch::Tensor z, double t, double t_next) {
    const double h = t - t_next, mid = 0.5 * (t + t_next);
    const auto eps = eval_eps(model, z, t);
    z = kick.euler(z, eps, t, h / 2);
    z = drift.euler(z, reduced ? eps : eval_eps(model, z, mid), mid, h);
    return kick.euler(z, reduced ? eps : eval_eps(model, z, t_next), t_next, h / 2);
  });
}

// The OBA splitting of the reverse SDE: O, the friction and all the noise, an exact
// Ornstein–Uhlenbeck flow over ΔB = ∫β,
//   x ← e^{-ΓΔB/2} x + λ_s √(1 - e^{-ΓΔB}) ξ_x,   m ← e^{-νΔB/2} m + √(M (1 - e^{-νΔB})) ξ_m,
// (λ_s = sample.lambda_s scales the position's noise; 1 is the SDE's); then B, the momentum kick
// dm/dτ = (β/2) x + βν (m + M s_m), and A, the position drift dx/dτ = -(β/2) M⁻¹ m + βΓ (x + s_x),
// Euler steps at the step's start time. Naive (noba): ε̂ afresh for B and A; reduced (roba): one.

torch::Tensor oba(const EpsModel& model, torch::Tensor z, const Grid& grid, const SamplerOptions& options, bool reduced,
                  const Callback& callback) {
  const PsldProcess& p = *grid.psld;
  const Flows flows(p);
  const auto kick = flows.kick(), drift = flows.drift();
  ImageNoise noise(options, z);
  return run_grid(std::move(z), grid, callback, model, flows.sde(), [&](int, torch::Tensor z, double t, double t_next) {
    const double h = t - t_next, b = p.beta_integral(t) - p.beta_integral(t_next);
    const double gamma = p.settings().gamma, nu = p.settings().nu;
    z = apply(diag(std::exp(-gamma * b / 2), std::exp(-nu * b / 2)), z) +
        apply(diag(options.lambda_s * std::sqrt(-std::expm1(-gamma * b)), std::sqrt(-p.mass() * std::expm1(-nu * b))),
              noise());
    const auto eps = eval_eps(model, z, t);
    z = kick.euler(z, eps, t, h);
    return drift.euler(z, reduced ? eps : eval_eps(model, z, t), t, h);
  });
}

}  // namespace

// Euler–Maruyama on the reverse SDE (the released code's EulerMaruyamaSampler).
torch::Tensor sample_psld_em(const EpsModel& model, torch::Tensor z, const Grid& grid, const SamplerOptions& options,
                             const Callback& callback) {
  const PsldProcess& p = *grid.psld;
  const auto sde = Flows(p).sde();
  ImageNoise noise(options, z);
  return run_grid(std::move(z), grid, callback, model, sde, [&](int, const torch::Tensor& z, double t, double t_next) {
    const double h = t - t_next, beta = p.beta(t);
    const Mat2 g = diag(std::sqrt(beta * p.settings().gamma * h), std::sqrt(beta * p.mass() * p.settings().nu * h));
    return sde.euler(z, eval_eps(model, z, t), t, h) + apply(g, noise());
  });
}

// Euler on the probability-flow ODE.
torch::Tensor sample_psld_pf_euler(const EpsModel& model, torch::Tensor z, const Grid& grid, const SamplerOptions&,
                                   const Callback& callback) {
  const auto ode = Flows(*grid.psld).ode();
  return run_grid(std::move(z), grid, callback, model, ode, [&](int, const torch::Tensor& z, double t, double t_next) {
    return ode.euler(z, eval_eps(model, z, t), t, t - t_next);
  });
}

// SSCS, the released code's symmetric splitting (its SSCSSampler, after CLD's): the reverse SDE's
// linear part with the friction kept and the Hamiltonian part's sign flipped, dz = -J F_t J z dτ +
// √β G dw (J = diag(1, -1): the momentum reversed), solved exactly over half a step (mean J P J z,
// covariance J Σ J of the forward kernel with zero initial variance, over ΔB = ∫β); an Euler step
// of the rest, x += h βΓ (x + s_x), m += h βMν (M⁻¹ m + s_m), with the score at the step's start;
// the exact half step again. (The released code takes ΔB of both halves over the first half
// interval, s2dm over each half's own: the same for a constant β.)
torch::Tensor sample_psld_sscs(const EpsModel& model, torch::Tensor z, const Grid& grid, const SamplerOptions& options,
                               const Callback& callback) {
  const PsldProcess& p = *grid.psld;
  const Mat2 flip = diag(1, -1);
  ImageNoise noise(options, z);
  auto half_step = [&](const torch::Tensor& z, double from, double to) {
    const double b = p.beta_integral(from) - p.beta_integral(to);
    const Mat2 mean = flip * p.mean_map_over(b) * flip, cov = flip * p.covariance_over(b, 0, 0) * flip;
    const double l11 = std::sqrt(cov.xx), l21 = cov.mx / l11;
    return apply(mean, z) + apply(Mat2{l11, 0, l21, std::sqrt(cov.mm - l21 * l21)}, noise());
  };
  return run_grid(std::move(z), grid, callback, model, Flows(p).sde(), [&](int, torch::Tensor z, double t, double t_next) {
    const double mid = 0.5 * (t + t_next), h = t - t_next, beta = p.beta(t), nu = p.settings().nu;
    z = half_step(z, t, mid);
    const auto score = p.score(eval_eps(model, z, t), t);
    z = z + apply(diag(h * beta * p.settings().gamma, h * beta * p.mass() * nu), apply(diag(1, p.mass_inverse()), z) + score);
    return half_step(z, mid, t_next);
  });
}

torch::Tensor sample_psld_ddim(const EpsModel& model, torch::Tensor z, const Grid& grid, const SamplerOptions& options,
                               const Callback& callback) {
  return sample_psld_conjugate(model, std::move(z), grid, Mat2{} * options.lambda, callback);
}

torch::Tensor sample_psld_ddim_ones(const EpsModel& model, torch::Tensor z, const Grid& grid,
                                    const SamplerOptions& options, const Callback& callback) {
  return sample_psld_conjugate(model, std::move(z), grid, Mat2{1, 1, 1, 1} * options.lambda, callback);
}

torch::Tensor sample_psld_nse(const EpsModel& model, torch::Tensor z, const Grid& grid, const SamplerOptions&,
                              const Callback& callback) {
  return symplectic_euler(model, std::move(z), grid, false, callback);
}

torch::Tensor sample_psld_rse(const EpsModel& model, torch::Tensor z, const Grid& grid, const SamplerOptions&,
                              const Callback& callback) {
  return symplectic_euler(model, std::move(z), grid, true, callback);
}

torch::Tensor sample_psld_nvv(const EpsModel& model, torch::Tensor z, const Grid& grid, const SamplerOptions&,
                              const Callback& callback) {
  return velocity_verlet(model, std::move(z), grid, false, callback);
}

torch::Tensor sample_psld_rvv(const EpsModel& model, torch::Tensor z, const Grid& grid, const SamplerOptions&,
                              const Callback& callback) {
  return velocity_verlet(model, std::move(z), grid, true, callback);
}

// Conjugate symplectic Euler (csps): the splitting of rse with each flow solved exactly for ε̂ held
// (exact_step: its linear part integrated, S_s's growth near t = 0 by quadrature), 1 evaluation a step.
torch::Tensor sample_psld_csps(const EpsModel& model, torch::Tensor z, const Grid& grid, const SamplerOptions&,
                               const Callback& callback) {
  const Flows flows(*grid.psld);
  const auto kick = flows.momentum(), drift = flows.position();
  return run_grid(std::move(z), grid, callback, model, flows.ode(), [&](int, torch::Tensor z, double t, double t_next) {
    const auto eps = eval_eps(model, z, t);
    const auto m_step = exact_step(kick, t, t_next), x_step = exact_step(drift, t, t_next);
    z = apply(m_step.state, z) + apply(m_step.eps, eps);
    return apply(x_step.state, z) + apply(x_step.eps, eps);
  });
}

torch::Tensor sample_psld_noba(const EpsModel& model, torch::Tensor z, const Grid& grid, const SamplerOptions& options,
                               const Callback& callback) {
  return oba(model, std::move(z), grid, options, false, callback);
}

torch::Tensor sample_psld_roba(const EpsModel& model, torch::Tensor z, const Grid& grid, const SamplerOptions& options,
                               const Callback& callback) {
  return oba(model, std::move(z), grid, options, true, callback);
}

}  // namespace s2dm::sample
