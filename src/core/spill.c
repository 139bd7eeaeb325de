/*
 * spill.c — a buffer's bytes parked in an unlinked temporary file while
 * its memory goes back to the kernel.
 *
 * The CT pipeline holds the input scan for the passport while the network
 * runs, when the network's activations need the memory most. Parked in the
 * page cache of a disk-backed file the bytes become memory the kernel may
 * write out and reclaim under pressure; on a quiet machine they stay cached
 * and come back at memory speed. The file has no name (O_TMPFILE, else
 * unlinked at once) and mode 0600, so nothing is left behind by a crash
 * and no other process can open it. A folder on tmpfs/ramfs is refused:
 * there the file would be memory too.
 */
#include "core.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#ifndef TMPFS_MAGIC
#define TMPFS_MAGIC 0x01021994
#endif
#ifndef RAMFS_MAGIC
#define RAMFS_MAGIC 0x858458f6
#endif

void sp_pages_release(void *from, void *to)
{
    uintptr_t pg = (uintptr_t)sysconf(_SC_PAGESIZE);
    uintptr_t lo = ((uintptr_t)from + pg - 1) & ~(pg - 1), hi = (uintptr_t)to & ~(pg - 1);
    if (hi > lo)
        madvise((void *)lo, hi - lo, MADV_DONTNEED);
}

const char *sp_spill_default_dir(void)
{
    const char *t = getenv("TMPDIR");
    return t && t[0] ? t : "/var/tmp";
}

int sp_unnamed_file(const char *dir)
{
#ifdef O_TMPFILE
    int fd = open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
    if (fd >= 0 || (errno != EOPNOTSUPP && errno != EISDIR && errno != EINVAL))
        return fd;
#endif
    char path[4096];
    if (snprintf(path, sizeof path, "%s/segpipe-spill-XXXXXX", dir) >= (int)sizeof path)
        return -1;
    int f = mkostemp(path, O_CLOEXEC);
    if (f >= 0)
        unlink(path);
    return f;
}

int sp_fd_in_memory(int fd)
{
    struct statfs fs;
    return fstatfs(fd, &fs) != 0 || fs.f_type == TMPFS_MAGIC || fs.f_type == RAMFS_MAGIC;
}

int sp_pwrite_all(int fd, const void *buf, size_t n, size_t at)
{
    const uint8_t *p = buf;
    size_t done = 0;
    while (done < n) {
        size_t chunk = n - done < ((size_t)8 << 20) ? n - done : ((size_t)8 << 20);
        ssize_t w = pwrite(fd, p + done, chunk, (off_t)(at + done));
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        done += (size_t)w;
    }
    return 0;
}

int sp_spill_out(void *buf, size_t bytes, const char *dir, sp_spill *s)
{
    s->fd = -1;
    s->bytes = 0;
    s->map = NULL;
    if (!dir)
        dir = sp_spill_default_dir();
    if (bytes < ((size_t)16 << 20))   /* not worth a file */
        return 0;
    int fd = sp_unnamed_file(dir);
    if (fd < 0) {
        SP_DEBUG("input kept in memory: cannot create a file in %s: %s", dir, strerror(errno));
        return 0;
    }
    if (sp_fd_in_memory(fd)) {
        SP_DEBUG("input kept in memory: %s is in memory (tmpfs/ramfs)", dir);
        close(fd);
        return 0;
    }
    if (sp_pwrite_all(fd, buf, bytes, 0) != 0) {
        SP_DEBUG("input kept in memory: cannot write %zu bytes in %s: %s", bytes, dir, strerror(errno));
        close(fd);
        return 0;
    }
    sp_pages_release(buf, (char *)buf + bytes);
    s->fd = fd;
    s->bytes = bytes;
    SP_DEBUG("input parked: %zu bytes in an unnamed file in %s", bytes, dir);
    return 1;
}

const void *sp_spill_map(sp_spill *s)
{
    if (s->fd < 0)
        return NULL;
    if (!s->map) {
        void *m = mmap(NULL, s->bytes, PROT_READ, MAP_PRIVATE | MAP_POPULATE, s->fd, 0);
        s->map = m == MAP_FAILED ? NULL : m;
    }
    return s->map;
}

sp_status sp_spill_back(sp_spill *s, void *buf)
{
    sp_status st = SP_OK;
    size_t done = 0;
    while (done < s->bytes) {
        ssize_t r = pread(s->fd, (uint8_t *)buf + done, s->bytes - done, (off_t)done);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            st = sp_fail(SP_ERR_IO, "cannot read back the input parked in a temporary file: %s",
                         r < 0 ? strerror(errno) : "short file");
            break;
        }
        done += (size_t)r;
    }
    sp_spill_drop(s);
    return st;
}

void sp_spill_drop(sp_spill *s)
{
    if (s->map)
        munmap(s->map, s->bytes);
    s->map = NULL;
    if (s->fd >= 0)
        close(s->fd);
    s->fd = -1;
    s->bytes = 0;
}
