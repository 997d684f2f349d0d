// The copy primitive of Loom: clone a directory tree with the fastest strategy the filesystem
// allows (btrfs subvolume snapshot, per-file reflink, copy_file_range / read-write), preserving
// all metadata. Plain C++17 with no N-API dependency; copy_addon.cc wraps it in async workers.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <string>

namespace loom {

enum Strategy { STRAT_AUTO = 0, STRAT_SUBVOL = 1, STRAT_REFLINK = 2, STRAT_COPY = 3 };
enum ErrKind { ERR_NONE = 0, ERR_REFUSED = 1, ERR_IO = 2, ERR_CANCELLED = 3 };

struct CopyError {
  ErrKind kind = ERR_NONE;
  int err = 0;             // errno (0 for refusals that are not syscall failures)
  std::string syscall;     // e.g. "openat", "ioctl(FICLONE)"
  std::string path;        // the path concerned
  std::string message;     // human text
};

struct CopyStats {
  std::atomic<uint64_t> files{0}, dirs{0}, bytes{0}, symlinks{0}, hardlinks{0}, specials{0};
};

struct CopyOpts {
  Strategy strategy = STRAT_AUTO;
  int threads = 0;                    // 0 = default
  const int32_t* cancel = nullptr;    // nonzero = cancel requested (shared with JS)
  int tick_ms = 100;                  // how often tick() is called while walking
  std::function<void()> tick;         // progress hook, called on the calling thread
};

// Returns the strategy used (STRAT_SUBVOL/REFLINK/COPY) or -1 with e filled. On failure or
// cancel everything written under dest is removed again.
int copy_tree(const std::string& src, const std::string& dest, const CopyOpts& o, CopyStats& st,
              CopyError& e);
// Removes a tree (or a btrfs subvolume, nested subvolumes included). Missing path is not an error.
int remove_tree(const std::string& path, CopyError& e);
// Makes an empty btrfs subvolume at path (parent must be on btrfs).
int create_subvolume(const std::string& path, CopyError& e);
// 1 if path is a btrfs subvolume root, 0 if not, -1 on error.
int is_subvolume(const std::string& path, CopyError& e);

}  // namespace loom
