#include "s2dm/train/run_directory.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <filesystem>
#include <fstream>

#include "s2dm/core/errors.h"
#include "s2dm/io/checkpoint.h"
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
  // removes those of dead writers, and a live writer holds the lock. s2dm writes no symbolic
  // link: one is foreign, and never followed (a samples/ linked elsewhere would expose files
  // outside the directory to its clearing).
  std::vector<std::pair<int64_t, std::string>> steps;
  auto sort_out = [&](const fs::path& folder, const std::string& relative, auto written) {
    for (const auto& entry : fs::directory_iterator(folder)) {
      const std::string name = entry.path().filename().string();
      std::error_code type_error;
      const bool link = entry.is_symlink(type_error), is_directory = !link && entry.is_directory(type_error);
      if (!link && !is_directory && is_temporary_name(name)) continue;
      if (!link && written(name, is_directory)) dir.own.push_back(entry.path().string());
      else dir.foreign.push_back(relative.empty() ? name : relative + "/" + name);
    }
  };
  const auto real_directory = [&](const fs::path& p) { return fs::is_directory(fs::symlink_status(p, ec)); };
  const fs::path checkpoints = checkpoint_dir(path), samples = fs::path(path) / kSamples;
  for (const auto& folder : {checkpoints, samples})
    if (fs::exists(fs::symlink_status(folder, ec)) && !real_directory(folder)) dir.blocked = folder.string();
  sort_out(path, "", [&](const std::string& name, bool is_directory) {
    if (name == kMarker) return dir.marked = true;
    if (name == DirectoryLock::kFileName) return is_s2dm_lock(fs::path(path) / name);
    if (is_directory) return name == kCheckpoints || name == kSamples;
    return name == "config.yaml" || name == "log.txt" || name == "metrics.jsonl";
  });
  if (real_directory(checkpoints))
    sort_out(checkpoints, kCheckpoints, [&](const std::string& name, bool is_directory) {
      if (is_directory) return false;
      if (const int64_t step = step_of(name); step >= 0) steps.emplace_back(step, (checkpoints / name).string());
      return name == "latest.ckpt" || step_of(name) >= 0;
    });
  if (real_directory(samples))
    sort_out(samples, kSamples, [](const std::string& name, bool is_directory) {
      return !is_directory && step_of(name, ".png") >= 0;
    });
  // The checkpoints, newest first, out of the other files; the marker and the lock are no content.
  std::sort(steps.rbegin(), steps.rend());
  if (real_directory(checkpoints) && fs::is_regular_file(fs::symlink_status(latest_checkpoint(path), ec)))
    dir.checkpoints.push_back(latest_checkpoint(path));
  for (const auto& step : steps) dir.checkpoints.push_back(step.second);
  // Unmarked (a run of an s2dm before the marker, or not s2dm's at all), a checkpoint's name is
  // not enough: its header must say s2dm's format.
  if (!dir.marked)
    for (auto it = dir.checkpoints.begin(); it != dir.checkpoints.end();) {
      if (is_checkpoint_file(*it)) {
        ++it;
        continue;
      }
      dir.foreign.push_back(fs::relative(*it, path).string());
      dir.own.erase(std::remove(dir.own.begin(), dir.own.end(), *it), dir.own.end());
      it = dir.checkpoints.erase(it);
    }
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

NewestCheckpoint newest_checkpoint(const RunDirectory& dir) {
  std::string skipped;
  for (const auto& path : dir.checkpoints) {
    try {
      NewestCheckpoint newest{path, load_checkpoint(path)};
      if (path != latest_checkpoint(dir.path) || !skipped.empty())
        spdlog::warn("{}: resuming from {} (step {}); {}", dir.path, path, newest.checkpoint.step,
                     skipped.empty() ? latest_checkpoint(dir.path) + ": not found" : skipped);
      return newest;
    } catch (const CheckpointError& e) {
      skipped += (skipped.empty() ? "" : "; ") + std::string(e.what());
    }
  }
  throw CheckpointError(dir.path + ": no checkpoint of it loads: " + (skipped.empty() ? "it has none" : skipped));
}

void mark_run_directory(const std::string& path) {
  write_file_atomic(path + "/" + kMarker,
                    "s2dm run directory: s2dm train may write, restart and clear what s2dm itself wrote here\n");
}

RunDirectoryLock::RunDirectoryLock(const std::string& path) : path_(path) {
  std::error_code ec;
  for (fs::path p = path; !p.empty() && !fs::exists(p, ec); p = p.parent_path()) {
    created_.push_back(p.string());
    if (p == p.parent_path()) break;
  }
  lock_.emplace(path);  // (throws while another process holds it: then nothing is ours to remove)
}

RunDirectoryLock::~RunDirectoryLock() {
  if (accepted_ || created_.empty()) return;
  std::error_code ignored;
  fs::remove(path_ + "/" + DirectoryLock::kFileName, ignored);  // (while still holding it)
  lock_.reset();
  for (const auto& folder : created_) fs::remove(folder, ignored);  // (each only when empty)
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
