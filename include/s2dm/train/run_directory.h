#pragma once
// A training run's directory: its layout, what s2dm itself writes there, and what `s2dm train`
// may do with a directory it is given. s2dm never deletes a file it did not write: a run starts
// in a new or empty directory, and s2dm marks it as its own (.s2dm-run); a run stopped before its
// first checkpoint is started again only when its directory holds nothing but what s2dm writes
// before one; --overwrite removes s2dm's own files and nothing else.
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "s2dm/io/checkpoint.h"
#include "s2dm/io/file_io.h"

namespace s2dm::train {

// The paths inside a run directory.
std::string checkpoint_dir(const std::string& run_dir);
std::string latest_checkpoint(const std::string& run_dir);
std::string step_checkpoint(const std::string& run_dir, int64_t step);
std::string samples_dir(const std::string& run_dir);
std::string sample_grid_path(const std::string& run_dir, int64_t step);
// N of a file named step_<N>.ckpt (or step_<N>.png with `extension` ".png"), else -1.
int64_t step_of(const std::string& file_name, const std::string& extension = ".ckpt");

// What a directory holds, seen as a run directory.
struct RunDirectory {
  std::string path;
  bool marked = false;                   // s2dm's marker is there: s2dm made it a run directory
  std::vector<std::string> checkpoints;  // latest.ckpt, then step_<N>.ckpt from the newest
  std::vector<std::string> own;          // the other files and folders s2dm writes (paths)
  std::vector<std::string> foreign;      // everything else (paths relative to the directory)
  std::string blocked;                   // a folder s2dm writes into that is a file or a link, if any

  // Nothing in it (or no directory), but for an s2dm lock file.
  bool empty() const { return checkpoints.empty() && own.empty() && foreign.empty(); }
  // s2dm's: marked, or holding its checkpoints (a run directory of an s2dm before the marker).
  bool is_run() const { return marked || !checkpoints.empty(); }
  // A run stopped before its first checkpoint, with nothing of anyone else's: it may start again.
  bool restartable() const { return marked && checkpoints.empty() && foreign.empty(); }
  // "a, b, c and 2 more": the foreign entries for a message.
  std::string foreign_list() const;
};

// Reads what `path` holds (nothing when it does not exist). The files s2dm writes: the marker,
// its lock, config.yaml, log.txt, metrics.jsonl, checkpoints/{latest,step_<N>}.ckpt,
// samples/step_<N>.png, and temporary files of its atomic writes. Without the marker, a
// checkpoint counts only when its header says s2dm's format; in a directory that is not s2dm's
// (is_run() false) every name counts as foreign, all but an s2dm lock.
RunDirectory inspect_run_directory(const std::string& path);

// The newest of the directory's checkpoints that loads, with a warning naming it (and why the newer
// ones did not load) when it is not latest.ckpt. Throws CheckpointError when none loads.
struct NewestCheckpoint {
  std::string path;
  Checkpoint checkpoint;
};
NewestCheckpoint newest_checkpoint(const RunDirectory& dir);

// Marks `path` as s2dm's run directory.
void mark_run_directory(const std::string& path);

// Rank 0's hold on a run directory while its run starts (a DirectoryLock, which creates the
// directory): unless accept() is called, the lock file and the folders it had to create go again
// with it, so that a run refused at start leaves nothing behind.
class RunDirectoryLock {
 public:
  explicit RunDirectoryLock(const std::string& path);
  ~RunDirectoryLock();
  RunDirectoryLock(const RunDirectoryLock&) = delete;
  RunDirectoryLock& operator=(const RunDirectoryLock&) = delete;
  void accept() { accepted_ = true; }

 private:
  std::string path_;
  std::vector<std::string> created_;  // the folders the lock had to create, innermost first
  std::optional<DirectoryLock> lock_;
  bool accepted_ = false;
};

// Removes what s2dm wrote in the directory (its checkpoints and own files, and the folders it made
// once they are empty), keeping the marker and the lock; foreign entries stay, with a warning.
void clear_run_directory(const RunDirectory& dir);

}  // namespace s2dm::train
