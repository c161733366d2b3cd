#pragma once
// Schedule files: what `s2dm schedule` writes (the S-step grids of a model's score-optimal
// schedule, with the cost they came from) and a plot beside each. Read back by timesteps
// "learned:FILE" and by the experiment driver.
#include <torch/types.h>

#include <map>
#include <string>
#include <vector>

#include "s2dm/diffusion/noise_schedule.h"
#include "s2dm/model/eps_model.h"
#include "s2dm/sample/learned_schedule.h"

namespace s2dm::sample {

// schedule.yaml: timesteps per S, levels, cost and NFE; read back by --timesteps learned:FILE.
void write_schedule_file(const std::string& path, const ScheduleCost& cost,
                         const std::map<int, std::vector<double>>& timesteps, int num_timesteps);
// The S steps of a schedule file (dropping the final 0, which the end point replaces). Throws
// ConfigError when the file lacks S or was made for another T.
std::vector<double> read_schedule_file(const std::string& path, int steps, int num_timesteps);

// What `s2dm schedule` does: the cost on `num_levels` levels, averaged over `num` images drawn
// (by `seed`) from `images` (uint8 NCHW), the grids for each S in `steps`, written as `out`
// (schedule.yaml) with a plot beside it (<stem>.png: the cost curve, then the learned grid of the
// first S against the uniform and quadratic grids). Returns the cost.
ScheduleCost learn_schedule(const EpsModel& model, const NoiseSchedule& schedule, const torch::Tensor& images,
                            int num_levels, int64_t num, uint64_t seed, int64_t batch, const std::vector<int>& steps,
                            const torch::Device& device, const std::string& out);
// The plot path beside a schedule file.
std::string schedule_plot_path(const std::string& schedule_file);

}  // namespace s2dm::sample
