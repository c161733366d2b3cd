// Phase-space Langevin diffusion: the process's closed forms against the released PSLD code
// (tests/fixtures/make_psld_fixture.py) and against the SDE itself, and the HSM loss.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <initializer_list>
#include <stdexcept>
#include <utility>

#include "../fixture_tensor.h"
#include "s2dm/diffusion/psld.h"

using namespace s2dm;
using s2dm::testing::fixture_tensor;

namespace {

PsldConfig settings(double gamma, double nu, double beta_min = 8, double beta_max = 8, double kappa = 0.04,
                    double numerical_eps = 1e-9) {
  PsldConfig s;
  s.gamma = gamma;
  s.nu = nu;
  s.beta_min = beta_min;
  s.beta_max = beta_max;
  s.kappa = kappa;
  s.numerical_eps = numerical_eps;
  return s;
}

PsldConfig settings_of(const torch::Tensor& row) {
  const auto p = row.to(torch::kFloat64).contiguous();
  const double* v = p.data_ptr<double>();
  return settings(v[0], v[1], v[2], v[3], v[4], v[5]);
}

double relative(const torch::Tensor& a, const torch::Tensor& reference) {
  return ((a.to(torch::kFloat64) - reference.to(torch::kFloat64)).norm() / reference.to(torch::kFloat64).norm())
      .item<double>();
}

// |a - b| relative to |b|, with a floor for entries that are 0.
double relative(double a, double b) { return std::abs(a - b) / std::max(std::abs(b), 1e-300); }

const double kTimes[] = {1e-5, 1e-3, 0.05, 0.3, 1.0};

using Pairs = std::initializer_list<std::pair<double, double>>;  // (value, expected)

}  // namespace

TEST(Psld, KernelEqualsTheReleasedCode) {
  // The mean, the covariance from three initial variances, and L_t and L_t⁻ᵀ of the HSM kernel at
  // five times, for the paper's CIFAR10 setting and one with a linear β.
  const auto params = fixture_tensor("psld_params.npy"), t = fixture_tensor("psld_t.npy");
  const auto cov = fixture_tensor("psld_cov.npy"), factor = fixture_tensor("psld_factor.npy");
  const auto x0 = fixture_tensor("psld_x0.npy").to(torch::kFloat64), m0 = fixture_tensor("psld_m0.npy").to(torch::kFloat64);
  const auto mean = fixture_tensor("psld_mean.npy");
  for (int64_t k = 0; k < params.size(0); ++k) {
    const PsldProcess process(settings_of(params[k]));
    const double initial[3][2] = {{0, process.settings().kappa * process.mass()}, {0, 0}, {0.3, 0.02}};
    for (int64_t i = 0; i < t.size(0); ++i) {
      const double ti = t[i].item<double>();
      ASSERT_EQ(ti, kTimes[i]);
      for (int c = 0; c < 3; ++c) {
        const Mat2 sigma = process.covariance(ti, initial[c][0], initial[c][1]);
        // (The released code's e^{cB} - 1 loses ~1e-10 to cancellation at t = 1e-5; s2dm uses expm1.)
        EXPECT_LT(relative(sigma.xx, cov[k][c][0][i].item<double>()), 1e-8) << k << " " << c << " t " << ti;
        EXPECT_LT(relative(sigma.xm, cov[k][c][1][i].item<double>()), 1e-8) << k << " " << c << " t " << ti;
        EXPECT_LT(relative(sigma.mm, cov[k][c][2][i].item<double>()), 1e-8) << k << " " << c << " t " << ti;
        EXPECT_EQ(sigma.mx, sigma.xm);
      }
      const Mat2 l = process.noise_map(ti), inverse_transpose = process.score_map(ti) * -1.0;
      const Mat2 expected_l{factor[k][0][0][i].item<double>(), factor[k][0][1][i].item<double>(),
                            factor[k][0][2][i].item<double>(), factor[k][0][3][i].item<double>()};
      const Mat2 expected_inverse{factor[k][1][0][i].item<double>(), factor[k][1][1][i].item<double>(),
                                  factor[k][1][2][i].item<double>(), factor[k][1][3][i].item<double>()};
      for (auto [a, b] : Pairs{{l.xx, expected_l.xx}, {l.mx, expected_l.mx}, {l.mm, expected_l.mm},
                          {inverse_transpose.xx, expected_inverse.xx}, {inverse_transpose.xm, expected_inverse.xm},
                          {inverse_transpose.mm, expected_inverse.mm}})
        EXPECT_LT(relative(a, b), 1e-8) << k << " t " << ti;
      EXPECT_EQ(l.xm, 0.0);
      EXPECT_EQ(expected_l.xm, 0.0);
      EXPECT_EQ(inverse_transpose.mx, 0.0);
      const auto z0 = torch::cat({x0[i], m0[i]}, 0).unsqueeze(0);
      EXPECT_LT(relative(apply(process.mean_map(ti), z0), mean[k][i].unsqueeze(0)), 1e-12) << k << " t " << ti;
    }
  }
}

TEST(Psld, PerturbationScoreAndHsmLossEqualTheReleasedCode) {
  // z_t = mean + L_t ε for a batch with one time per image (float64 and float32), the score
  // -L_t⁻ᵀ ε, and the HSM loss around a stand-in network.
  const auto params = fixture_tensor("psld_params.npy"), t = fixture_tensor("psld_t.npy");
  const auto x0 = fixture_tensor("psld_x0.npy"), eps = fixture_tensor("psld_eps.npy");
  const auto perturbed = fixture_tensor("psld_perturbed.npy"), score = fixture_tensor("psld_score.npy"),
             loss = fixture_tensor("psld_hsm_loss.npy");
  const EpsModel stand_in = [](const torch::Tensor& z, const torch::Tensor& time) {
    return torch::tanh(z) / 2 + time.view({-1, 1, 1, 1}) * z / 10;
  };
  for (int64_t k = 0; k < params.size(0); ++k) {
    const PsldProcess process(settings_of(params[k]));
    EXPECT_LT(relative(process.perturb(x0.to(torch::kFloat64), t, eps.to(torch::kFloat64)), perturbed[k]), 1e-12) << k;
    const auto z32 = process.perturb(x0, t, eps);
    EXPECT_EQ(z32.scalar_type(), torch::kFloat32);
    EXPECT_LT(relative(z32, perturbed[k]), 1e-6) << k;
    for (int64_t i = 0; i < t.size(0); ++i)
      EXPECT_LT(relative(process.score(eps[i].unsqueeze(0), t[i].item<double>()), score[k][i].unsqueeze(0)), 1e-6)
          << k << " t " << t[i].item<double>();
    const HsmLoss hsm(process);
    const double value = hsm.terms(stand_in, x0, t, eps).loss.item<double>();
    EXPECT_LT(relative(value, loss[k].item<double>()), 1e-6) << k;
  }
}

TEST(Psld, KernelSolvesTheSde) {
  // Independently of the released code: the mean map solves dP/dt = (β/2) F P, the covariance the
  // Lyapunov equation dΣ/dt = (β/2)(F Σ + Σ Fᵀ) + β diag(Γ, Mν) (central differences, numerical ε
  // off), the prior diag(1, M) is stationary, and P⁻¹ P = I, L Lᵀ = Σ, (-L⁻ᵀ) Lᵀ = -I.
  const PsldProcess process(settings(0.02, 4.02, 0.1, 20, 0.1, 0));
  const PsldConfig& s = process.settings();
  const double m_inv = process.mass_inverse(), mass = process.mass();
  EXPECT_DOUBLE_EQ(m_inv, 4.0);
  const Mat2 f{-s.gamma, m_inv, -1, -s.nu};
  for (double t : {0.01, 0.2, 0.7}) {
    const double h = 1e-5, beta = process.beta(t);
    const Mat2 dp = (process.mean_map(t + h) - process.mean_map(t - h)) * (1 / (2 * h));
    const Mat2 expected_dp = f * process.mean_map(t) * (beta / 2);
    for (auto [a, b] : Pairs{{dp.xx, expected_dp.xx}, {dp.xm, expected_dp.xm}, {dp.mx, expected_dp.mx}, {dp.mm, expected_dp.mm}})
      EXPECT_NEAR(a, b, 1e-6 * (1 + std::abs(b))) << "t " << t;
    for (auto [vx, vm] : Pairs{{0.0, 0.01}, {0.3, 0.02}}) {
      const Mat2 ds = (process.covariance(t + h, vx, vm) - process.covariance(t - h, vx, vm)) * (1 / (2 * h));
      const Mat2 sigma = process.covariance(t, vx, vm);
      const Mat2 expected = (f * sigma + sigma * f.transposed()) * (beta / 2) + Mat2{beta * s.gamma, 0, 0, beta * mass * s.nu};
      for (auto [a, b] : Pairs{{ds.xx, expected.xx}, {ds.xm, expected.xm}, {ds.mm, expected.mm}})
        EXPECT_NEAR(a, b, 1e-5 * (1 + std::abs(b))) << "t " << t;
    }
    const Mat2 l = process.noise_map(t), sigma = process.hsm_covariance(t), llt = l * l.transposed();
    for (auto [a, b] : Pairs{{llt.xx, sigma.xx}, {llt.xm, sigma.xm}, {llt.mm, sigma.mm}}) EXPECT_NEAR(a, b, 1e-12);
    const Mat2 identity = process.mean_map(t).inverse() * process.mean_map(t);
    for (auto [a, b] : Pairs{{identity.xx, 1.0}, {identity.xm, 0.0}, {identity.mx, 0.0}, {identity.mm, 1.0}}) EXPECT_NEAR(a, b, 1e-12);
    const Mat2 minus_identity = process.score_map(t) * l.transposed();
    for (auto [a, b] : Pairs{{minus_identity.xx, -1.0}, {minus_identity.xm, 0.0}, {minus_identity.mx, 0.0}, {minus_identity.mm, -1.0}})
      EXPECT_NEAR(a, b, 1e-12);
  }
  // From the prior the law stays the prior; from any start it goes there (B(1) = 10.05 here).
  const Mat2 prior = process.covariance(0.4, 1, mass);
  EXPECT_NEAR(prior.xx, 1, 1e-12);
  EXPECT_NEAR(prior.xm, 0, 1e-12);
  EXPECT_NEAR(prior.mm, mass, 1e-12);
  const Mat2 end = process.hsm_covariance(1);
  EXPECT_NEAR(end.xx, 1, 1e-3);
  EXPECT_NEAR(end.mm, mass, 1e-3);
}

TEST(Psld, BadSettingsAreRefused) {
  auto refused = [](PsldConfig s, const std::string& name) {
    try {
      PsldProcess process(s);
      ADD_FAILURE() << name << " was accepted";
    } catch (const std::invalid_argument& e) {
      EXPECT_NE(std::string(e.what()).find(name), std::string::npos) << e.what();
    }
  };
  refused(settings(0, 4), "gamma = 0");
  refused(settings(0.01, 0), "nu = 0");
  refused(settings(2, 2), "nu = 2 equals gamma");
  refused(settings(0.01, 4.01, 8, 4), "beta_max = 4");
  refused(settings(0.01, 4.01, 8, 8, 0), "kappa");
  auto off_critical = settings(0.01, 4.01);
  off_critical.m_inv = 3;
  refused(off_critical, "m_inv = 3 is not critically damped");
  off_critical.m_inv = 4;  // (Γ - ν)²/4
  EXPECT_NO_THROW(PsldProcess{off_critical});
}
