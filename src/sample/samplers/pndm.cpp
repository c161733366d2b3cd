// Pseudo numerical methods (Liu et al. 2022, luping-liu/PNDM; diffusers' PNDM scheduler): the
// DDIM transfer φ driven by a combined ε from Runge–Kutta or linear-multistep rules. The transfer
// with ε held is Euler's step in σ = √((1-ᾱ)/ᾱ) on x/√ᾱ, so the family without its warm-up is
// iPNDM (Zhang & Chen 2022; zju-pi/diff-sampler's ipndm_sampler).
#include <torch/torch.h>

#include <cmath>
#include <deque>

#include "s2dm/sample/samplers.h"

namespace s2dm::sample {
namespace {

// The most recent ε values, newest first, never more than four.
class History {
 public:
  void push(torch::Tensor e) {
    items_.push_front(std::move(e));
    if (items_.size() > 4) items_.pop_back();
  }
  const torch::Tensor& operator[](size_t i) const { return items_[i]; }
  size_t size() const { return items_.size(); }

 private:
  std::deque<torch::Tensor> items_;
};

// Adams–Bashforth combinations of e (newest first) for orders 1-4.
torch::Tensor adams_bashforth(const History& e, int order) {
  switch (order) {
    case 1: return e[0];
    case 2: return (3 * e[0] - e[1]) / 2;
    case 3: return (23 * e[0] - 16 * e[1] + 5 * e[2]) / 12;
    default: return (55 * e[0] - 59 * e[1] + 37 * e[2] - 9 * e[3]) / 24;
  }
}

double alpha_at(const Grid& grid, double t) { return grid.schedule->alpha_bar(t); }

// The pseudo linear multistep loop shared by the family: `warmup_steps` starting steps of the
// given kind (each storing the ε at its start), then Adams–Bashforth of the highest order the
// history allows, up to `max_order` (with no warm-up, the first step is Euler's).
enum class Warmup { kImprovedEuler, kRungeKutta };

torch::Tensor pseudo_multistep(const EpsModel& model, torch::Tensor x, const Grid& grid, const Callback& callback,
                               Warmup warmup, int warmup_steps, int max_order) {
  History history;
  for (int i = 0; i < grid.steps(); ++i) {
    const double t = grid.t[i], t_next = grid.t[i + 1], a = grid.alpha_bar[i], a_next = grid.alpha_bar[i + 1];
    torch::Tensor e;
    if (i < warmup_steps && warmup == Warmup::kRungeKutta) {
      // Pseudo Runge–Kutta (4 evaluations), midpoint t_m = (t + t')/2.
      const double t_mid = 0.5 * (t + t_next), a_mid = alpha_at(grid, t_mid);
      auto e1 = eval_eps(model, x, t);
      auto e2 = eval_eps(model, transfer(x, e1, a, a_mid), t_mid);
      auto e3 = eval_eps(model, transfer(x, e2, a, a_mid), t_mid);
      auto e4 = eval_eps(model, transfer(x, e3, a, a_next), t_next);
      e = (e1 + 2 * e2 + 2 * e3 + e4) / 6;
      history.push(e1);
    } else if (i < warmup_steps) {
      // Pseudo improved Euler (= diffusers' PLMS restart with the averaged ε): 2 evaluations.
      auto e1 = eval_eps(model, x, t);
      auto e2 = eval_eps(model, transfer(x, e1, a, a_next), t_next);
      e = (e1 + e2) / 2;
      history.push(e1);
    } else {
      history.push(eval_eps(model, x, t));
      e = adams_bashforth(history, std::min(static_cast<int>(history.size()), max_order));
    }
    x = transfer(x, e, a, a_next);
    if (callback) callback({i, grid.steps(), t, x});
  }
  return x;
}

}  // namespace

torch::Tensor sample_pndm(const EpsModel& model, torch::Tensor x, const Grid& grid, const SamplerOptions&,
                          const Callback& callback) {
  return pseudo_multistep(model, std::move(x), grid, callback, Warmup::kRungeKutta, 3, 4);
}

torch::Tensor sample_spndm(const EpsModel& model, torch::Tensor x, const Grid& grid, const SamplerOptions&,
                           const Callback& callback) {
  return pseudo_multistep(model, std::move(x), grid, callback, Warmup::kImprovedEuler, 1, 2);
}

torch::Tensor sample_plms(const EpsModel& model, torch::Tensor x, const Grid& grid, const SamplerOptions&,
                          const Callback& callback) {
  // diffusers' PNDM with skip_prk_steps: the Euler step restarted with the averaged ε, then
  // Adams–Bashforth of order 2, 3, 4.
  return pseudo_multistep(model, std::move(x), grid, callback, Warmup::kImprovedEuler, 1, 4);
}

torch::Tensor sample_ipndm(const EpsModel& model, torch::Tensor x, const Grid& grid, const SamplerOptions& options,
                           const Callback& callback) {
  // Adams–Bashforth with the fixed (uniform-step) weights from the first step on.
  return pseudo_multistep(model, std::move(x), grid, callback, Warmup::kImprovedEuler, 0,
                          options.order < 0 ? 4 : options.order);
}

}  // namespace s2dm::sample
