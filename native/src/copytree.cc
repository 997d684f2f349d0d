// Copy primitive: see copytree.h. The walk is a pool of threads taking directories from a
// queue; every directory is reopened from the tree root with openat2(RESOLVE_BENEATH |
// RESOLVE_NO_SYMLINKS), so only a handful of fds are open at any time whatever the depth, no
// symlink is ever followed and nothing is written outside dest. Directory metadata (owner,
// xattrs, mode, times) is applied when the directory and all its subdirectories are done.
// Directories on another device than the source root (mount points, nested btrfs subvolumes)
// are copied as empty directories, which is what a btrfs snapshot gives, so that every strategy
// yields the same tree.
#include "copytree.h"

#include <algorithm>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <deque>
#include <memory>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <vector>

#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/btrfs.h>
#include <linux/fs.h>
#include <linux/magic.h>
#include <linux/openat2.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/xattr.h>
#include <unistd.h>

namespace loom {
namespace {

const uint64_t kSubvolRootIno = 256;  // BTRFS_FIRST_FREE_OBJECTID

void set_err(CopyError& e, ErrKind k, int err, const char* sys, const std::string& path,
             const std::string& msg = "") {
  e.kind = k;
  e.err = err;
  e.syscall = sys ? sys : "";
  e.path = path;
  e.message = msg.empty() ? (e.syscall + " " + path + ": " + strerror(err)) : msg;
}

std::string join(const std::string& a, const char* b) { return a.empty() ? std::string(b) : a + "/" + b; }

std::string shown(const std::string& root, const std::string& rel) { return rel.empty() ? root : root + "/" + rel; }

bool cancelled(const int32_t* flag) { return flag && __atomic_load_n(flag, __ATOMIC_RELAXED) != 0; }

// open rel (relative, no ".." produced by us) beneath root without following any symlink.
int open_beneath(int root, const std::string& rel, int flags) {
  if (rel.empty()) return openat(root, ".", flags | O_CLOEXEC);
  static std::atomic<int> have_openat2{1};
  if (have_openat2.load(std::memory_order_relaxed)) {
    struct open_how how;
    memset(&how, 0, sizeof how);
    how.flags = static_cast<uint64_t>(flags | O_CLOEXEC);
    how.resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS;
    for (int i = 0; i < 8; i++) {
      long fd = syscall(SYS_openat2, root, rel.c_str(), &how, sizeof how);
      if (fd >= 0) return static_cast<int>(fd);
      if (errno != EAGAIN) break;
    }
    if (errno != ENOSYS) return -1;
    have_openat2 = 0;
  }
  // Fallback for kernels without openat2: walk component by component with O_NOFOLLOW.
  int cur = dup(root);
  size_t pos = 0;
  while (cur >= 0) {
    size_t slash = rel.find('/', pos);
    std::string comp = rel.substr(pos, slash == std::string::npos ? std::string::npos : slash - pos);
    bool last = slash == std::string::npos;
    int next = openat(cur, comp.c_str(), last ? (flags | O_NOFOLLOW | O_CLOEXEC)
                                              : (O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    int saved = errno;
    close(cur);
    errno = saved;
    if (last || next < 0) return next;
    cur = next;
    pos = slash + 1;
  }
  return -1;
}

bool is_btrfs_fd(int fd) {
  struct statfs sf;
  return fstatfs(fd, &sf) == 0 && static_cast<unsigned long>(sf.f_type) == BTRFS_SUPER_MAGIC;
}

// ---------------------------------------------------------------- removal

int destroy_subvol(int pfd, const char* name) {
  struct btrfs_ioctl_vol_args a;
  memset(&a, 0, sizeof a);
  strncpy(a.name, name, BTRFS_PATH_NAME_MAX);
  return ioctl(pfd, BTRFS_IOC_SNAP_DESTROY, &a);
}

// Is pfd/name (a directory with stat st) a btrfs subvolume root?
bool subvol_at(int pfd, const struct stat& st, const struct stat* parent) {
  if (st.st_ino != kSubvolRootIno) return false;
  if (parent && parent->st_dev == st.st_dev) return false;
  return is_btrfs_fd(pfd);
}

// Is pfd/name the root of a mount? Removal never descends into another mount (a bind mount or a
// /proc left in a container rootfs must not be emptied).
bool mount_root(int pfd, const char* name) {
  struct statx sx;
  if (statx(pfd, name, AT_SYMLINK_NOFOLLOW | AT_NO_AUTOMOUNT, STATX_TYPE, &sx) != 0) return false;
  return (sx.stx_attributes_mask & STATX_ATTR_MOUNT_ROOT) && (sx.stx_attributes & STATX_ATTR_MOUNT_ROOT);
}

int remove_at(int pfd, const std::string& name, const std::string& shown_path, CopyError& e) {
  struct stat st;
  if (fstatat(pfd, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
    if (errno == ENOENT) return 0;
    set_err(e, ERR_IO, errno, "fstatat", shown_path);
    return -1;
  }
  if (!S_ISDIR(st.st_mode)) {
    if (unlinkat(pfd, name.c_str(), 0) == 0 || errno == ENOENT) return 0;
    set_err(e, ERR_IO, errno, "unlinkat", shown_path);
    return -1;
  }
  if (mount_root(pfd, name.c_str())) {
    set_err(e, ERR_REFUSED, EBUSY, "", shown_path, "refusing to remove " + shown_path + ": it is a mount point");
    return -1;
  }
  if (subvol_at(pfd, st, nullptr) && destroy_subvol(pfd, name.c_str()) == 0) return 0;
  int root = openat(pfd, name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (root < 0) {
    set_err(e, ERR_IO, errno, "openat", shown_path);
    return -1;
  }
  struct Item { std::string rel; bool expanded; };
  std::vector<Item> stack{{"", false}};
  int rc = 0;
  while (!stack.empty() && rc == 0) {
    size_t top = stack.size() - 1;
    if (stack[top].expanded) {
      std::string rel = stack[top].rel;
      stack.pop_back();
      if (rel.empty()) continue;
      size_t slash = rel.rfind('/');
      std::string prel = slash == std::string::npos ? "" : rel.substr(0, slash);
      std::string base = slash == std::string::npos ? rel : rel.substr(slash + 1);
      int p = open_beneath(root, prel, O_RDONLY | O_DIRECTORY | O_NOFOLLOW);
      if (p < 0 || (unlinkat(p, base.c_str(), AT_REMOVEDIR) != 0 && errno != ENOENT)) {
        set_err(e, ERR_IO, errno, p < 0 ? "openat2" : "unlinkat", shown(shown_path, rel));
        rc = -1;
      }
      if (p >= 0) close(p);
      continue;
    }
    stack[top].expanded = true;
    std::string rel = stack[top].rel;
    int fd = open_beneath(root, rel, O_RDONLY | O_DIRECTORY | O_NOFOLLOW);
    if (fd < 0) {
      set_err(e, ERR_IO, errno, "openat2", shown(shown_path, rel));
      rc = -1;
      break;
    }
    struct stat dst;
    fstat(fd, &dst);
    DIR* d = fdopendir(fd);
    if (!d) {
      set_err(e, ERR_IO, errno, "fdopendir", shown(shown_path, rel));
      close(fd);
      rc = -1;
      break;
    }
    struct dirent* de;
    while ((de = readdir(d)) != nullptr) {
      const char* n = de->d_name;
      if (n[0] == '.' && (n[1] == 0 || (n[1] == '.' && n[2] == 0))) continue;
      bool isdir = de->d_type == DT_DIR;
      struct stat cst;
      if (de->d_type == DT_UNKNOWN || isdir) {
        if (fstatat(fd, n, &cst, AT_SYMLINK_NOFOLLOW) != 0) continue;
        isdir = S_ISDIR(cst.st_mode);
        if (isdir && mount_root(fd, n)) {
          std::string p = shown(shown_path, join(rel, n));
          set_err(e, ERR_REFUSED, EBUSY, "", p, "refusing to remove " + p + ": it is a mount point");
          rc = -1;
          break;
        }
        if (isdir && subvol_at(fd, cst, &dst) && destroy_subvol(fd, n) == 0) continue;
      }
      if (!isdir) {
        if (unlinkat(fd, n, 0) != 0 && errno != ENOENT) {
          set_err(e, ERR_IO, errno, "unlinkat", shown(shown_path, join(rel, n)));
          rc = -1;
          break;
        }
        continue;
      }
      stack.push_back({join(rel, n), false});
    }
    closedir(d);
  }
  close(root);
  if (rc == 0 && unlinkat(pfd, name.c_str(), AT_REMOVEDIR) != 0 && errno != ENOENT) {
    set_err(e, ERR_IO, errno, "unlinkat", shown_path);
    rc = -1;
  }
  return rc;
}

// ---------------------------------------------------------------- copy walk

struct DirNode {
  std::string rel;
  struct stat st;
  DirNode* parent;
  std::atomic<int> pending{1};
  bool foreign = false;  // another filesystem (mount point, nested btrfs subvolume): copied empty
};

struct InoKey {
  dev_t dev;
  ino_t ino;
  bool operator==(const InoKey& o) const { return dev == o.dev && ino == o.ino; }
};
struct InoHash {
  size_t operator()(const InoKey& k) const { return std::hash<uint64_t>()(k.ino * 1000003ULL ^ k.dev); }
};
struct LinkEnt {
  std::string rel;
  int state;  // 0 being created, 1 ready, 2 failed
};

struct Ctx {
  int sroot = -1, droot = -1;
  dev_t sdev = 0;  // st_dev of the source root
  std::string src, dest;
  const int32_t* cancel = nullptr;
  CopyStats* st = nullptr;
  std::atomic<int> abort{0};
  std::atomic<int> mode{STRAT_REFLINK};
  bool forced = false;  // strategy forced: no silent fallback from reflink
  bool chown_needed_check = true;
  uid_t euid = 0;
  gid_t egid = 0;
  int umask = -1;  // the process umask (-1: unknown, then modes are always set explicitly)

  std::mutex qm;
  std::condition_variable qcv;
  std::deque<DirNode*> q;
  int outstanding = 0;
  std::vector<std::unique_ptr<DirNode>> nodes;

  std::mutex hm;
  std::condition_variable hcv;
  std::unordered_map<InoKey, LinkEnt, InoHash> links;

  std::mutex em;
  CopyError err;
};

bool stopped(Ctx* c) {
  if (c->abort.load(std::memory_order_relaxed)) return true;
  if (cancelled(c->cancel)) {
    c->abort = 1;
    return true;
  }
  return false;
}

void wake_all(Ctx* c) {
  { std::lock_guard<std::mutex> l(c->hm); }
  c->hcv.notify_all();
  { std::lock_guard<std::mutex> l(c->qm); }
  c->qcv.notify_all();
}

void fail(Ctx* c, int err, const char* sys, const std::string& rel, bool in_dest = true) {
  {
    std::lock_guard<std::mutex> l(c->em);
    if (c->err.kind == ERR_NONE) set_err(c->err, ERR_IO, err, sys, shown(in_dest ? c->dest : c->src, rel));
  }
  c->abort = 1;
  wake_all(c);
}

void enqueue(Ctx* c, DirNode* n) {
  {
    std::lock_guard<std::mutex> l(c->qm);
    c->q.push_back(n);
    c->outstanding++;
  }
  c->qcv.notify_one();
}

// Copy xattrs from (sfd | spath) to (dfd | dpath). Paths are used (l*xattr) when fds are -1.
int copy_xattrs(Ctx* c, int sfd, int dfd, const char* spath, const char* dpath, const std::string& rel) {
  char sbuf[1024];
  std::vector<char> heap;
  char* names = sbuf;
  ssize_t n = sfd >= 0 ? flistxattr(sfd, sbuf, sizeof sbuf) : llistxattr(spath, sbuf, sizeof sbuf);
  if (n == 0) return 0;
  while (n < 0 && errno == ERANGE) {
    ssize_t want = sfd >= 0 ? flistxattr(sfd, nullptr, 0) : llistxattr(spath, nullptr, 0);
    if (want < 0) break;
    heap.resize(static_cast<size_t>(want) + 1);
    names = heap.data();
    n = sfd >= 0 ? flistxattr(sfd, names, heap.size()) : llistxattr(spath, names, heap.size());
  }
  if (n < 0) {
    if (errno == ENOTSUP || errno == EOPNOTSUPP) return 0;
    fail(c, errno, "listxattr", rel, false);
    return -1;
  }
  std::vector<char> val(4096);
  for (ssize_t off = 0; off < n;) {
    const char* name = names + off;
    off += static_cast<ssize_t>(strlen(name)) + 1;
    ssize_t vl;
    for (;;) {
      vl = sfd >= 0 ? fgetxattr(sfd, name, val.data(), val.size()) : lgetxattr(spath, name, val.data(), val.size());
      if (vl >= 0 || errno != ERANGE) break;
      ssize_t want = sfd >= 0 ? fgetxattr(sfd, name, nullptr, 0) : lgetxattr(spath, name, nullptr, 0);
      if (want < 0) break;
      val.resize(static_cast<size_t>(want) + 1);
    }
    if (vl < 0) {
      if (errno == ENODATA) continue;  // vanished meanwhile
      fail(c, errno, "getxattr", rel, false);
      return -1;
    }
    int r = dfd >= 0 ? fsetxattr(dfd, name, val.data(), static_cast<size_t>(vl), 0)
                     : lsetxattr(dpath, name, val.data(), static_cast<size_t>(vl), 0);
    if (r != 0) {
      // Like cp -a: a namespace the destination fs (or an unprivileged caller) cannot hold is skipped.
      if (errno == ENOTSUP || errno == EOPNOTSUPP || (errno == EPERM && c->euid != 0)) continue;
      fail(c, errno, "setxattr", rel);
      return -1;
    }
  }
  return 0;
}

// The permission bits a fresh node is created with (setuid/setgid/sticky come after the chown).
mode_t create_perm(const struct stat& st) { return st.st_mode & 0777; }

// Does a node created with create_perm(st) still need a chmod?
bool needs_chmod(Ctx* c, const struct stat& st) {
  return c->umask < 0 || (st.st_mode & 07777) != (create_perm(st) & ~static_cast<mode_t>(c->umask));
}

// chown / xattrs / chmod / times on an open destination (regular file or directory). fresh: made
// by us with create_perm() and our own uid/gid.
int meta_fd(Ctx* c, int sfd, int dfd, const struct stat& st, const std::string& rel, bool fresh) {
  if (!fresh || st.st_uid != c->euid || st.st_gid != c->egid) {
    if (fchown(dfd, st.st_uid, st.st_gid) != 0 && !(errno == EPERM && c->euid != 0)) {
      fail(c, errno, "fchown", rel);
      return -1;
    }
  }
  if (copy_xattrs(c, sfd, dfd, nullptr, nullptr, rel) != 0) return -1;
  if (!fresh || needs_chmod(c, st)) {
    if (fchmod(dfd, st.st_mode & 07777) != 0) {
      fail(c, errno, "fchmod", rel);
      return -1;
    }
  }
  struct timespec ts[2] = {st.st_atim, st.st_mtim};
  if (futimens(dfd, ts) != 0) {
    fail(c, errno, "futimens", rel);
    return -1;
  }
  return 0;
}

// Same for a symlink or special file, by name (never following).
int meta_at(Ctx* c, int sdir, int ddir, const char* name, const struct stat& st, const std::string& rel) {
  if ((st.st_uid != c->euid || st.st_gid != c->egid) &&
      fchownat(ddir, name, st.st_uid, st.st_gid, AT_SYMLINK_NOFOLLOW) != 0 && !(errno == EPERM && c->euid != 0)) {
    fail(c, errno, "fchownat", rel);
    return -1;
  }
  char sp[64 + NAME_MAX], dp[64 + NAME_MAX];
  snprintf(sp, sizeof sp, "/proc/self/fd/%d/%s", sdir, name);
  snprintf(dp, sizeof dp, "/proc/self/fd/%d/%s", ddir, name);
  if (copy_xattrs(c, -1, -1, sp, dp, rel) != 0) return -1;
  if (!S_ISLNK(st.st_mode) && needs_chmod(c, st) && fchmodat(ddir, name, st.st_mode & 07777, 0) != 0) {
    fail(c, errno, "fchmodat", rel);
    return -1;
  }
  struct timespec ts[2] = {st.st_atim, st.st_mtim};
  if (utimensat(ddir, name, ts, AT_SYMLINK_NOFOLLOW) != 0) {
    fail(c, errno, "utimensat", rel);
    return -1;
  }
  return 0;
}

bool no_cfr(int err) { return err == EXDEV || err == ENOSYS || err == EINVAL || err == EOPNOTSUPP || err == ENOTSUP; }

// Copy [off, off+len) from in to out: copy_file_range, else pread/pwrite.
int copy_range(Ctx* c, int in, int out, off_t off, off_t len, bool& use_cfr, std::vector<char>& buf,
               const std::string& rel) {
  loff_t oin = off, oout = off;
  while (len > 0) {
    if (stopped(c)) return -1;
    if (use_cfr) {
      ssize_t n = copy_file_range(in, &oin, out, &oout, static_cast<size_t>(len), 0);
      if (n > 0) { len -= n; continue; }
      if (n == 0) return 0;  // source shrank
      if (no_cfr(errno)) { use_cfr = false; continue; }
      fail(c, errno, "copy_file_range", rel);
      return -1;
    }
    if (buf.empty()) buf.resize(1 << 20);
    size_t want = static_cast<size_t>(len) < buf.size() ? static_cast<size_t>(len) : buf.size();
    ssize_t n = pread(in, buf.data(), want, oin);
    if (n < 0) {
      if (errno == EINTR) continue;
      fail(c, errno, "pread", rel, false);
      return -1;
    }
    if (n == 0) return 0;
    for (ssize_t w = 0; w < n;) {
      ssize_t k = pwrite(out, buf.data() + w, static_cast<size_t>(n - w), oout + w);
      if (k < 0) {
        if (errno == EINTR) continue;
        fail(c, errno, "pwrite", rel);
        return -1;
      }
      w += k;
    }
    oin += n;
    oout += n;
    len -= n;
  }
  return 0;
}

// Data copy keeping holes (SEEK_DATA / SEEK_HOLE when the file is sparse).
int copy_data(Ctx* c, int in, int out, const struct stat& st, std::vector<char>& buf, const std::string& rel) {
  off_t size = st.st_size;
  bool sparse = static_cast<off_t>(st.st_blocks) * 512 < size;
  bool use_cfr = true;
  off_t pos = 0;
  while (pos < size) {
    off_t data = pos, hole = size;
    if (sparse) {
      data = lseek(in, pos, SEEK_DATA);
      if (data < 0) {
        if (errno == ENXIO) break;  // only a hole is left
        if (errno != EINVAL && errno != EOPNOTSUPP) {
          fail(c, errno, "lseek(SEEK_DATA)", rel, false);
          return -1;
        }
        sparse = false;
        data = pos;
      } else {
        hole = lseek(in, data, SEEK_HOLE);
        if (hole < 0 || hole > size) hole = size;
      }
    }
    if (data >= size) break;
    if (copy_range(c, in, out, data, hole - data, use_cfr, buf, rel) != 0) return -1;
    pos = hole;
  }
  if (sparse && ftruncate(out, size) != 0) {
    fail(c, errno, "ftruncate", rel);
    return -1;
  }
  return 0;
}

// For a non-directory with nlink > 1: 0 = caller creates it (and must call link_done),
// 1 = hard link made to the first copy, -1 = failed/aborted.
int link_claim(Ctx* c, const struct stat& st, const std::string& rel, int ddir, const char* name, LinkEnt** out) {
  std::unique_lock<std::mutex> l(c->hm);
  auto ins = c->links.try_emplace(InoKey{st.st_dev, st.st_ino}, LinkEnt{rel, 0});
  LinkEnt* ent = &ins.first->second;  // element references survive rehashing
  if (ins.second) {
    *out = ent;
    return 0;
  }
  c->hcv.wait(l, [&] { return ent->state != 0 || c->abort.load(); });
  if (ent->state != 1) return -1;
  std::string target = ent->rel;
  l.unlock();
  if (linkat(c->droot, target.c_str(), ddir, name, 0) != 0) {
    fail(c, errno, "linkat", rel);
    return -1;
  }
  c->st->hardlinks++;
  return 1;
}

void link_done(Ctx* c, LinkEnt* ent, bool ok) {
  if (!ent) return;
  {
    std::lock_guard<std::mutex> l(c->hm);
    ent->state = ok ? 1 : 2;
  }
  c->hcv.notify_all();
}

int copy_reg(Ctx* c, int sdir, int in, int ddir, const char* name, const struct stat& st, const std::string& rel,
             std::vector<char>& buf) {
  LinkEnt* ent = nullptr;
  if (st.st_nlink > 1) {
    int r = link_claim(c, st, rel, ddir, name, &ent);
    if (r != 0) return r < 0 ? -1 : 0;
  }
  (void)sdir;
  int out = openat(ddir, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, create_perm(st));
  if (out < 0) {
    fail(c, errno, "openat", rel);
    link_done(c, ent, false);
    return -1;
  }
  int rc = 0;
  if (st.st_size > 0) {
    bool copied = false;
    if (c->mode.load(std::memory_order_relaxed) == STRAT_REFLINK) {
      if (ioctl(out, FICLONE, in) == 0) {
        copied = true;
      } else {
        int err = errno;
        bool unsupported = err == EOPNOTSUPP || err == ENOTSUP || err == EXDEV || err == ENOTTY || err == EINVAL;
        if (c->forced || !unsupported) {
          fail(c, err, "ioctl(FICLONE)", rel);
          rc = -1;
        } else if (err != EINVAL) {
          c->mode = STRAT_COPY;  // the filesystem cannot reflink: copy from now on
        }
      }
    }
    if (rc == 0 && !copied) rc = copy_data(c, in, out, st, buf, rel);
  }
  if (rc == 0) rc = meta_fd(c, in, out, st, rel, true);
  close(out);
  if (rc == 0) {
    c->st->files++;
    c->st->bytes += static_cast<uint64_t>(st.st_size);
  }
  link_done(c, ent, rc == 0);
  return rc;
}

int copy_other(Ctx* c, int sdir, int ddir, const char* name, const struct stat& st, const std::string& rel) {
  LinkEnt* ent = nullptr;
  if (st.st_nlink > 1) {
    int r = link_claim(c, st, rel, ddir, name, &ent);
    if (r != 0) return r < 0 ? -1 : 0;
  }
  int rc = 0;
  if (S_ISLNK(st.st_mode)) {
    std::vector<char> t(static_cast<size_t>(st.st_size > 0 ? st.st_size : PATH_MAX) + 2);
    ssize_t n = readlinkat(sdir, name, t.data(), t.size() - 1);
    if (n < 0 || static_cast<size_t>(n) >= t.size() - 1) {
      fail(c, n < 0 ? errno : ENAMETOOLONG, "readlinkat", rel, false);
      rc = -1;
    } else {
      t[static_cast<size_t>(n)] = 0;
      if (symlinkat(t.data(), ddir, name) != 0) {
        fail(c, errno, "symlinkat", rel);
        rc = -1;
      }
    }
  } else if (mknodat(ddir, name, (st.st_mode & S_IFMT) | create_perm(st), st.st_rdev) != 0) {
    fail(c, errno, "mknodat", rel);
    rc = -1;
  }
  if (rc == 0) rc = meta_at(c, sdir, ddir, name, st, rel);
  if (rc == 0) {
    if (S_ISLNK(st.st_mode)) c->st->symlinks++;
    else c->st->specials++;
  }
  link_done(c, ent, rc == 0);
  return rc;
}

// A directory and its whole subtree are done: apply its metadata, then tell the parent.
void dir_done(Ctx* c, DirNode* n, int sfd, int dfd) {
  while (n) {
    if (--n->pending > 0) return;
    if (stopped(c)) return;
    bool own = sfd < 0;
    if (own) {
      sfd = open_beneath(c->sroot, n->rel, O_RDONLY | O_DIRECTORY | O_NOFOLLOW);
      dfd = sfd < 0 ? -1 : open_beneath(c->droot, n->rel, O_RDONLY | O_DIRECTORY | O_NOFOLLOW);
      if (sfd < 0 || dfd < 0) {
        fail(c, errno, "openat2", n->rel, sfd >= 0);
        if (sfd >= 0) close(sfd);
        return;
      }
    }
    int rc = meta_fd(c, sfd, dfd, n->st, n->rel, false);
    if (own) {
      close(sfd);
      close(dfd);
    }
    if (rc != 0) return;
    n = n->parent;
    sfd = dfd = -1;
  }
}

void do_dir(Ctx* c, DirNode* n, std::vector<char>& buf) {
  if (stopped(c)) return;
  int sfd = open_beneath(c->sroot, n->rel, O_RDONLY | O_DIRECTORY | O_NOFOLLOW);
  if (sfd < 0) return fail(c, errno, "openat2", n->rel, false);
  struct stat now;
  if (fstat(sfd, &now) != 0 || now.st_ino != n->st.st_ino || now.st_dev != n->st.st_dev) {
    close(sfd);
    return fail(c, ESTALE, "fstat", n->rel, false);  // swapped under us
  }
  int dfd = open_beneath(c->droot, n->rel, O_RDONLY | O_DIRECTORY | O_NOFOLLOW);
  if (dfd < 0) {
    close(sfd);
    return fail(c, errno, "openat2", n->rel);
  }
  if (n->foreign) {  // like a snapshot: the directory itself, not what is mounted on it
    dir_done(c, n, sfd, dfd);
    close(sfd);
    close(dfd);
    return;
  }
  int rfd = dup(sfd);
  DIR* d = rfd < 0 ? nullptr : fdopendir(rfd);
  if (!d) {
    if (rfd >= 0) close(rfd);
    fail(c, errno, "fdopendir", n->rel, false);
    close(sfd);
    close(dfd);
    return;
  }
  // Read the whole directory first and work in inode order (fewer seeks on a cold cache, as cp).
  struct Ent { ino_t ino; unsigned char type; std::string name; };
  std::vector<Ent> ents;
  struct dirent* de;
  int rc = 0;
  for (;;) {
    errno = 0;
    de = readdir(d);
    if (!de) {
      if (errno) { fail(c, errno, "readdir", n->rel, false); rc = -1; }
      break;
    }
    const char* nm = de->d_name;
    if (nm[0] == '.' && (nm[1] == 0 || (nm[1] == '.' && nm[2] == 0))) continue;
    ents.push_back({de->d_ino, de->d_type, nm});
  }
  closedir(d);
  if (ents.size() > 1) std::sort(ents.begin(), ents.end(), [](const Ent& a, const Ent& b) { return a.ino < b.ino; });
  for (size_t i = 0; rc == 0 && i < ents.size(); i++) {
    const char* name = ents[i].name.c_str();
    unsigned char dtype = ents[i].type;
    if (stopped(c)) { rc = -1; break; }
    std::string rel = join(n->rel, name);
    struct stat st;
    int in = -1;
    if (dtype == DT_REG) {
      in = openat(sfd, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
      if (in < 0 || fstat(in, &st) != 0) {
        fail(c, errno, "openat", rel, false);
        if (in >= 0) close(in);
        rc = -1;
        break;
      }
    } else if (fstatat(sfd, name, &st, AT_SYMLINK_NOFOLLOW) != 0) {
      fail(c, errno, "fstatat", rel, false);
      rc = -1;
      break;
    }
    if (S_ISREG(st.st_mode) && in < 0) {
      in = openat(sfd, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
      struct stat again;
      if (in < 0 || fstat(in, &again) != 0 || again.st_ino != st.st_ino) {
        fail(c, in < 0 ? errno : ESTALE, "openat", rel, false);
        if (in >= 0) close(in);
        rc = -1;
        break;
      }
    }
    switch (st.st_mode & S_IFMT) {
      case S_IFDIR: {
        if (mkdirat(dfd, name, 0700) != 0) {
          fail(c, errno, "mkdirat", rel);
          rc = -1;
          break;
        }
        c->st->dirs++;
        auto child = std::make_unique<DirNode>();
        child->rel = rel;
        child->st = st;
        child->parent = n;
        child->foreign = st.st_dev != c->sdev;
        n->pending++;
        DirNode* raw = child.get();
        {
          std::lock_guard<std::mutex> l(c->qm);
          c->nodes.push_back(std::move(child));
        }
        enqueue(c, raw);
        break;
      }
      case S_IFREG: rc = copy_reg(c, sfd, in, dfd, name, st, rel, buf); break;
      default: rc = copy_other(c, sfd, dfd, name, st, rel); break;
    }
    if (in >= 0) close(in);
  }
  if (rc == 0) dir_done(c, n, sfd, dfd);
  close(sfd);
  close(dfd);
}

void worker(Ctx* c) {
  std::vector<char> buf;
  for (;;) {
    DirNode* n;
    {
      std::unique_lock<std::mutex> l(c->qm);
      c->qcv.wait(l, [&] { return !c->q.empty() || c->outstanding == 0 || c->abort.load(); });
      if (c->abort.load() || c->q.empty()) return;
      n = c->q.front();
      c->q.pop_front();
    }
    do_dir(c, n, buf);
    bool last;
    {
      std::lock_guard<std::mutex> l(c->qm);
      last = --c->outstanding == 0;
    }
    if (last) c->qcv.notify_all();
  }
}

// Measured on 2 CPUs with loop devices (bench/clone): reflinking is CPU- and lock-bound (more
// threads than CPUs only add contention on the filesystem's trees); copying data is I/O-bound
// and gains from a deeper queue.
int default_threads(int mode) {
  unsigned hw = std::thread::hardware_concurrency();
  int cpus = static_cast<int>(hw ? hw : 2);
  if (mode == STRAT_REFLINK) return cpus < 2 ? 2 : (cpus > 16 ? 16 : cpus);
  int n = cpus * 4;
  return n < 4 ? 4 : (n > 16 ? 16 : n);
}

// The umask without changing it (umask() would race with other threads of the process).
int current_umask() {
  FILE* f = fopen("/proc/self/status", "re");
  if (!f) return -1;  // unknown: every fresh file then gets an explicit fchmod
  char line[256];
  int um = -1;
  while (fgets(line, sizeof line, f))
    if (strncmp(line, "Umask:", 6) == 0) um = static_cast<int>(strtoul(line + 6, nullptr, 8));
  fclose(f);
  return um;
}

std::string strip_slashes(std::string p) {
  while (p.size() > 1 && p.back() == '/') p.pop_back();
  return p;
}

bool refuse(CopyError& e, int err, const std::string& path, const std::string& msg) {
  set_err(e, ERR_REFUSED, err, "", path, msg);
  return false;
}

}  // namespace

// ---------------------------------------------------------------- public entry points

int copy_tree(const std::string& src_in, const std::string& dest_in, const CopyOpts& o, CopyStats& stats,
              CopyError& e) {
  std::string src = strip_slashes(src_in), dest = strip_slashes(dest_in);
  if (src.empty() || dest.empty()) return refuse(e, EINVAL, src.empty() ? src : dest, "empty path"), -1;
  struct stat sst;
  if (lstat(src.c_str(), &sst) != 0) {
    int err = errno;
    return refuse(e, err, src, "source " + src + ": " + strerror(err)), -1;
  }
  if (S_ISLNK(sst.st_mode)) return refuse(e, ELOOP, src, "source " + src + " is a symlink"), -1;
  if (!S_ISDIR(sst.st_mode)) return refuse(e, ENOTDIR, src, "source " + src + " is not a directory"), -1;
  struct stat dst;
  if (lstat(dest.c_str(), &dst) == 0) return refuse(e, EEXIST, dest, "destination " + dest + " already exists"), -1;
  if (errno != ENOENT) {
    int err = errno;
    return refuse(e, err, dest, "destination " + dest + ": " + strerror(err)), -1;
  }
  size_t slash = dest.rfind('/');
  std::string parent = slash == std::string::npos ? "." : (slash == 0 ? "/" : dest.substr(0, slash));
  std::string base = slash == std::string::npos ? dest : dest.substr(slash + 1);
  if (base.empty() || base == "." || base == "..")
    return refuse(e, EINVAL, dest, "destination " + dest + " has no usable name"), -1;
  char rs[PATH_MAX], rp[PATH_MAX];
  if (!realpath(src.c_str(), rs)) {
    int err = errno;
    return refuse(e, err, src, "source " + src + ": " + strerror(err)), -1;
  }
  if (!realpath(parent.c_str(), rp)) {
    int err = errno;
    return refuse(e, err, parent, "destination parent " + parent + ": " + strerror(err)), -1;
  }
  std::string S = rs, P = rp;
  std::string D = P == "/" ? "/" + base : P + "/" + base;
  if (D == S || D.compare(0, S.size() + 1, S + "/") == 0 || S == "/")
    return refuse(e, EINVAL, dest, "destination " + dest + " is inside source " + src), -1;
  if (S.compare(0, D.size() + 1, D + "/") == 0)
    return refuse(e, EINVAL, dest, "source " + src + " is inside destination " + dest), -1;

  int sroot = open(S.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (sroot < 0) {
    set_err(e, ERR_IO, errno, "open", src);
    return -1;
  }
  struct stat now;
  if (fstat(sroot, &now) != 0 || now.st_ino != sst.st_ino || now.st_dev != sst.st_dev) {
    close(sroot);
    return refuse(e, ESTALE, src, "source " + src + " changed while being checked"), -1;
  }
  int pfd = open(P.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (pfd < 0) {
    int err = errno;
    close(sroot);
    return refuse(e, err, parent, "destination parent " + parent + ": " + strerror(err)), -1;
  }
  auto done = [&](int rc) { close(sroot); close(pfd); return rc; };
  if (cancelled(o.cancel)) return set_err(e, ERR_CANCELLED, ECANCELED, "", dest, "copy cancelled"), done(-1);

  struct statfs ssf, dsf;
  if (fstatfs(sroot, &ssf) != 0 || fstatfs(pfd, &dsf) != 0) {
    set_err(e, ERR_IO, errno, "fstatfs", src);
    return done(-1);
  }
  bool src_btrfs = static_cast<unsigned long>(ssf.f_type) == BTRFS_SUPER_MAGIC;
  bool dst_btrfs = static_cast<unsigned long>(dsf.f_type) == BTRFS_SUPER_MAGIC;
  bool subvol = src_btrfs && sst.st_ino == kSubvolRootIno;
  if (o.strategy == STRAT_SUBVOL && !subvol)
    return refuse(e, EINVAL, src, "source " + src + " is not a btrfs subvolume root"), done(-1);
  if (o.strategy == STRAT_SUBVOL || (o.strategy == STRAT_AUTO && subvol && dst_btrfs)) {
    struct btrfs_ioctl_vol_args_v2 a;
    memset(&a, 0, sizeof a);
    a.fd = sroot;
    strncpy(a.name, base.c_str(), BTRFS_SUBVOL_NAME_MAX);
    if (ioctl(pfd, BTRFS_IOC_SNAP_CREATE_V2, &a) == 0) {
      if (cancelled(o.cancel)) {
        CopyError ignore;
        remove_at(pfd, base, dest, ignore);
        set_err(e, ERR_CANCELLED, ECANCELED, "", dest, "copy cancelled");
        return done(-1);
      }
      return done(STRAT_SUBVOL);
    }
    if (o.strategy == STRAT_SUBVOL) {
      int err = errno;
      if (err == EEXIST) return refuse(e, EEXIST, dest, "destination " + dest + " already exists"), done(-1);
      set_err(e, ERR_IO, err, "ioctl(BTRFS_IOC_SNAP_CREATE_V2)", dest);
      return done(-1);
    }
    // auto: not the same btrfs, no privilege, ...: walk instead
  }

  Ctx c;
  c.src = src;
  c.dest = dest;
  c.cancel = o.cancel;
  c.st = &stats;
  c.euid = geteuid();
  c.egid = getegid();
  c.umask = current_umask();
  c.forced = o.strategy == STRAT_REFLINK || o.strategy == STRAT_COPY;
  unsigned long dt = static_cast<unsigned long>(dsf.f_type);
  bool no_reflink_fs = dt == EXT4_SUPER_MAGIC || dt == TMPFS_MAGIC || dt == OVERLAYFS_SUPER_MAGIC;
  c.mode = o.strategy == STRAT_COPY || (o.strategy == STRAT_AUTO && no_reflink_fs) ? STRAT_COPY : STRAT_REFLINK;

  if (mkdirat(pfd, base.c_str(), 0700) != 0) {
    int err = errno;
    if (err == EEXIST) return refuse(e, EEXIST, dest, "destination " + dest + " already exists"), done(-1);
    set_err(e, ERR_IO, err, "mkdirat", dest);
    return done(-1);
  }
  c.sroot = sroot;
  c.sdev = sst.st_dev;
  c.droot = openat(pfd, base.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (c.droot < 0) {
    set_err(e, ERR_IO, errno, "openat", dest);
    unlinkat(pfd, base.c_str(), AT_REMOVEDIR);
    return done(-1);
  }
  // The new root may have inherited a setgid bit / group from the parent: reset it so children
  // are created with our own group (their final owners are applied explicitly).
  if (fchown(c.droot, c.euid, c.egid) != 0 || fchmod(c.droot, 0700) != 0) {
    set_err(e, ERR_IO, errno, "fchown", dest);
    close(c.droot);
    unlinkat(pfd, base.c_str(), AT_REMOVEDIR);
    return done(-1);
  }
  stats.dirs++;
  auto root = std::make_unique<DirNode>();
  root->st = sst;
  root->parent = nullptr;
  enqueue(&c, root.get());

  int nthreads = o.threads > 0 ? o.threads : default_threads(c.mode.load());
  std::vector<std::thread> pool;
  for (int i = 0; i < nthreads; i++) pool.emplace_back(worker, &c);
  {
    std::unique_lock<std::mutex> l(c.qm);
    for (;;) {
      bool fin = c.qcv.wait_for(l, std::chrono::milliseconds(o.tick_ms > 0 ? o.tick_ms : 100),
                                [&] { return c.outstanding == 0 || c.abort.load(); });
      if (fin) break;
      if (cancelled(o.cancel)) {
        c.abort = 1;
        break;
      }
      if (o.tick) {
        l.unlock();
        o.tick();
        l.lock();
      }
    }
  }
  wake_all(&c);
  for (auto& t : pool) t.join();
  close(c.droot);

  bool failed = c.err.kind != ERR_NONE || c.abort.load() || cancelled(o.cancel);
  if (!failed) return done(c.mode.load());
  if (c.err.kind != ERR_NONE) e = c.err;
  else set_err(e, ERR_CANCELLED, ECANCELED, "", dest, "copy cancelled");
  CopyError ignore;
  remove_at(pfd, base, dest, ignore);
  return done(-1);
}

int remove_tree(const std::string& path_in, CopyError& e) {
  std::string path = strip_slashes(path_in);
  char rp[PATH_MAX];
  if (!realpath(path.c_str(), rp)) {
    if (errno == ENOENT) {
      struct stat st;  // a dangling symlink itself is still removed
      if (lstat(path.c_str(), &st) == 0 && unlink(path.c_str()) != 0) {
        set_err(e, ERR_IO, errno, "unlink", path);
        return -1;
      }
      return 0;
    }
    set_err(e, ERR_IO, errno, "realpath", path);
    return -1;
  }
  struct stat st;
  if (lstat(path.c_str(), &st) == 0 && S_ISLNK(st.st_mode)) {
    if (unlink(path.c_str()) != 0) { set_err(e, ERR_IO, errno, "unlink", path); return -1; }
    return 0;  // never remove what a symlink points to
  }
  std::string R = rp;
  if (R == "/") return refuse(e, EINVAL, path, "refusing to remove /"), -1;
  size_t slash = R.rfind('/');
  std::string parent = slash == 0 ? "/" : R.substr(0, slash);
  int pfd = open(parent.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (pfd < 0) {
    set_err(e, ERR_IO, errno, "open", parent);
    return -1;
  }
  int rc = remove_at(pfd, R.substr(slash + 1), path, e);
  close(pfd);
  return rc;
}

int create_subvolume(const std::string& path_in, CopyError& e) {
  std::string path = strip_slashes(path_in);
  size_t slash = path.rfind('/');
  std::string parent = slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash));
  std::string base = slash == std::string::npos ? path : path.substr(slash + 1);
  if (base.empty() || base == "." || base == ".." || base.size() > BTRFS_PATH_NAME_MAX)
    return refuse(e, EINVAL, path, "subvolume path " + path + " has no usable name"), -1;
  int pfd = open(parent.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (pfd < 0) {
    int err = errno;
    return refuse(e, err, parent, "parent " + parent + ": " + strerror(err)), -1;
  }
  if (!is_btrfs_fd(pfd)) {
    close(pfd);
    return refuse(e, ENOTTY, path, "cannot create subvolume " + path + ": parent is not on btrfs"), -1;
  }
  struct btrfs_ioctl_vol_args a;
  memset(&a, 0, sizeof a);
  strncpy(a.name, base.c_str(), BTRFS_PATH_NAME_MAX);
  int rc = ioctl(pfd, BTRFS_IOC_SUBVOL_CREATE, &a);
  int err = errno;
  close(pfd);
  if (rc != 0) {
    if (err == EEXIST) return refuse(e, EEXIST, path, path + " already exists"), -1;
    set_err(e, ERR_IO, err, "ioctl(BTRFS_IOC_SUBVOL_CREATE)", path);
    return -1;
  }
  return 0;
}

int is_subvolume(const std::string& path, CopyError& e) {
  struct stat st;
  struct statfs sf;
  if (lstat(path.c_str(), &st) != 0) { set_err(e, ERR_IO, errno, "lstat", path); return -1; }
  if (!S_ISDIR(st.st_mode) || st.st_ino != kSubvolRootIno) return 0;
  if (statfs(path.c_str(), &sf) != 0) { set_err(e, ERR_IO, errno, "statfs", path); return -1; }
  return static_cast<unsigned long>(sf.f_type) == BTRFS_SUPER_MAGIC ? 1 : 0;
}

}  // namespace loom
