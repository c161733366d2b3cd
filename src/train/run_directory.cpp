#include "s2dm/train/run_directory.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <filesystem>
#include <fstream>

#include "s2dm/io/file_io.h"

namespace s2dm::train {
namespace fs = std::filesystem;

namespace {

constexpr const char* kMarker = ".s2dm-run";
constexpr const char* kCheckpoints = "checkpoints";
constexpr const char* kSamples = "samples";

// DirectoryLock's file as s2dm leaves it: empty, or naming its holder ("pid N on HOST").
bool is_s2dm_lock(const fs::path& path) {
  std::ifstream in(path);
  std::string head(4, '\0');
  in.read(head.data(), 4);
  return in.gcount() == 0 || head == "pid ";
}

}  // namespace

std::string checkpoint_dir(const std::string& run_dir) { return run_dir + "/" + kCheckpoints; }
std::string latest_checkpoint(const std::string& run_dir) { return checkpoint_dir(run_dir) + "/latest.ckpt"; }
std::string step_checkpoint(const std::string& run_dir, int64_t step) {
  return checkpoint_dir(run_dir) + "/step_" + std::to_string(step) + ".ckpt";
}
std::string samples_dir(const std::string& run_dir) { return run_dir + "/" + kSamples; }
std::string sample_grid_path(const std::string& run_dir, int64_t step) {
  return samples_dir(run_dir) + "/step_" + std::to_string(step) + ".png";
}

int64_t step_of(const std::string& name, const std::string& extension) {
  const std::string prefix = "step_";
  if (name.size() <= prefix.size() + extension.size() || name.rfind(prefix, 0) != 0 ||
      name.compare(name.size() - extension.size(), extension.size(), extension) != 0)
    return -1;
  const std::string digits = name.substr(prefix.size(), name.size() - prefix.size() - extension.size());
  if (digits.size() > 18 || digits.find_first_not_of("0123456789") != std::string::npos) return -1;
  return std::stoll(digits);
}

std::string RunDirectory::foreign_list() const {
  std::string out;
  const size_t shown = std::min<size_t>(foreign.size(), 3);
  for (size_t i = 0; i < shown; ++i) out += (i ? ", " : "") + foreign[i];
  if (foreign.size() > shown) out += " and " + std::to_string(foreign.size() - shown) + " more";
  return out;
}

RunDirectory inspect_run_directory(const std::string& path) {
  RunDirectory dir;
  dir.path = path;
  std::error_code ec;
  if (!fs::is_directory(path, ec)) {
    if (fs::exists(path, ec)) dir.foreign.push_back(path);  // (a file where the directory should be)
    return dir;
  }
  // Sorts the entries of one of s2dm's folders: `written(name, is_directory)` tells the names
  // s2dm writes there. Temporary files of atomic writes are neither: the holder of the lock
  // removes those of dead writers, and a live writer holds the lock.
  std::vector<std::pair<int64_t, std::string>> steps;
  auto sort_out = [&](const fs::path& folder, const std::string& relative, auto written) {
    for (const auto& entry : fs::directory_iterator(folder)) {
      const std::string name = entry.path().filename().string();
      std::error_code type_error;
      const bool is_directory = entry.is_directory(type_error);
      if (!is_directory && is_temporary_name(name)) continue;
      if (written(name, is_directory)) dir.own.push_back(entry.path().string());
      else dir.foreign.push_back(relative.empty() ? name : relative + "/" + name);
    }
  };
  const fs::path checkpoints = checkpoint_dir(path), samples = fs::path(path) / kSamples;
  sort_out(path, "", [&](const std::string& name, bool is_directory) {
    if (name == kMarker) return dir.marked = true;
    if (name == DirectoryLock::kFileName) return is_s2dm_lock(fs::path(path) / name);
    if (is_directory) return name == kCheckpoints || name == kSamples;
    return name == "config.yaml" || name == "log.txt" || name == "metrics.jsonl";
  });
  if (fs::is_directory(checkpoints, ec))
    sort_out(checkpoints, kCheckpoints, [&](const std::string& name, bool is_directory) {
      if (is_directory) return false;
      if (const int64_t step = step_of(name); step >= 0) steps.emplace_back(step, (checkpoints / name).string());
      return name == "latest.ckpt" || step_of(name) >= 0;
    });
  if (fs::is_directory(samples, ec))
    sort_out(samples, kSamples, [](const std::string& name, bool is_directory) {
      return !is_directory && step_of(name, ".png") >= 0;
    });
  // The checkpoints, newest first, out of the other files; the marker and the lock are no content.
  std::sort(steps.rbegin(), steps.rend());
  if (fs::is_regular_file(latest_checkpoint(path), ec)) dir.checkpoints.push_back(latest_checkpoint(path));
  for (const auto& step : steps) dir.checkpoints.push_back(step.second);
  dir.own.erase(std::remove_if(dir.own.begin(), dir.own.end(),
                               [&](const std::string& own) {
                                 const auto name = fs::path(own).filename();
                                 return name == kMarker || name == DirectoryLock::kFileName ||
                                        std::count(dir.checkpoints.begin(), dir.checkpoints.end(), own) > 0;
                               }),
                dir.own.end());
  if (!dir.is_run()) {  // s2dm's names in a directory that is not s2dm's are someone else's files
    for (const auto& own : dir.own) dir.foreign.push_back(fs::relative(own, path).string());
    dir.own.clear();
  }
  std::sort(dir.foreign.begin(), dir.foreign.end());
  return dir;
}

void mark_run_directory(const std::string& path) {
  write_file_atomic(path + "/" + kMarker,
                    "s2dm run directory: s2dm train may write, restart and clear what s2dm itself wrote here\n");
}

void clear_run_directory(const RunDirectory& dir) {
  for (const auto& c : dir.checkpoints) fs::remove(c);
  std::vector<std::string> folders;
  for (const auto& own : dir.own) {
    std::error_code ec;
    if (fs::is_directory(own, ec)) folders.push_back(own);
    else fs::remove(own);
  }
  for (const auto& folder : folders)
    if (fs::is_empty(folder)) fs::remove(folder);
  if (!dir.foreign.empty())
    spdlog::warn("{}: kept what s2dm did not write there: {}", dir.path, dir.foreign_list());
}

}  // namespace s2dm::train
