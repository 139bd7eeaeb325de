/*
 * dicom_volume.c — a DICOM series (dicom.cc, GDCM) as an sp_volume: the
 * geometry written as an sform, values as float32 with their range. Zip
 * archives of a series (a file, or bytes in memory such as an HTTP body)
 * are unpacked with libzip into a private temporary folder first: entries
 * get numbered names (the archive's paths are never used, so nothing can
 * be written outside the folder), their bytes are counted as they are
 * inflated (not trusted from the headers), and the total is bounded.
 */
#include "volume.h"
#include "dicom.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#ifndef SP_NO_DICOM
#include <zip.h>
#endif

#ifndef SP_NO_DICOM
/* ---- the DICOM library in a child process ----
 * Debian's GDCM is built with assertions on, and malformed files reach
 * some of them (fuzz_dicom found two): an assertion aborts the process,
 * which for `segpipe serve` would be every request in flight. So the
 * series is read in a forked child that sends the volume back through a
 * pipe; a child that dies is a damaged series (exit 3 / HTTP 422), not a
 * dead service. SEGPIPE_DICOM_INPROCESS=1 reads in process (debugging). */

/* all n bytes through fd (out: write, else read); -1 when the pipe ends
 * early, -2 when *cancel is set while waiting for the child */
static int xfer(int fd, void *p, size_t n, int out, const volatile int *cancel)
{
    char *c = p;
    while (n) {
        if (!out && cancel) {   /* wait for data in slices, so a cancel reaches the child at once */
            struct pollfd pf = {fd, POLLIN, 0};
            int r = poll(&pf, 1, 100);
            if (__atomic_load_n(cancel, __ATOMIC_RELAXED))
                return -2;
            if (r == 0 || (r < 0 && errno == EINTR))
                continue;
        }
        size_t k = n > (1u << 30) ? (1u << 30) : n;
        ssize_t r = out ? write(fd, c, k) : read(fd, c, k);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        c += r, n -= (size_t)r;
    }
    return 0;
}
static int write_all(int fd, const void *p, size_t n) { return xfer(fd, (void *)p, n, 1, NULL); }

/* what parent_receive allocated (the reader's own copy lives in the plugin) */
static void dicom_ref_free(sp_dicom_ref *r)
{
    if (r) {
        free(r->sop_uid);
        free(r->sop_class);
        free(r->ipp);
        free(r);
    }
}

#define NOTES 512   /* what the folder walk skipped: one line */

/* child: status, message, notes, then the volume and its references */
static void child_send(int fd, const sp_dicom_reader *rd, const char *dir, const char *uid, uint64_t max_voxels)
{
    char msg[1024] = "", notes[NOTES] = "";
    sp_dicom_vol d;
    sp_status st = rd->load(dir, uid, max_voxels, &d, msg, sizeof msg);
    snprintf(notes, sizeof notes, "%s", rd->notes());
    if (write_all(fd, &st, sizeof st) || write_all(fd, msg, sizeof msg) || write_all(fd, notes, sizeof notes) || st)
        return;
    sp_dicom_ref none;
    memset(&none, 0, sizeof none);
    const sp_dicom_ref *r = d.ref ? d.ref : &none;
    size_t n = (size_t)(d.dim[0] * d.dim[1] * d.dim[2]), k = (size_t)r->n;
    if (write_all(fd, &d, sizeof d) || write_all(fd, r, sizeof *r) || write_all(fd, d.data, n * sizeof(float)))
        return;
    if (k)
        (void)(write_all(fd, r->sop_uid, k * SP_DICOM_UID) || write_all(fd, r->sop_class, k * SP_DICOM_UID) ||
               write_all(fd, r->ipp, k * sizeof *r->ipp));
}

#define CHILD_DIED ((sp_status)-1)   /* parent_receive: the stream ended early */

/* the child's answer; CHILD_DIED, or SP_ERR_CANCELLED when *cancel was set */
static sp_status parent_receive(int fd, const volatile int *cancel, sp_dicom_vol *d, char *msg, size_t cap)
{
    sp_status st;
    char m[1024], notes[NOTES];
    int e;
    memset(d, 0, sizeof *d);
#define RD(p, n) ((e = xfer(fd, (p), (n), 0, cancel)) != 0)
    if (RD(&st, sizeof st) || RD(m, sizeof m) || RD(notes, sizeof notes))
        return e == -2 ? SP_ERR_CANCELLED : CHILD_DIED;
    notes[NOTES - 1] = 0;
    if (notes[0])
        SP_WARN("DICOM folder: %s", notes);
    if (st) {
        m[sizeof m - 1] = 0;
        snprintf(msg, cap, "%s", m);
        return st;
    }
    sp_dicom_ref r;
    if (RD(d, sizeof *d) || RD(&r, sizeof r))
        return e == -2 ? SP_ERR_CANCELLED : CHILD_DIED;
    size_t n = (size_t)(d->dim[0] * d->dim[1] * d->dim[2]), k = r.n > 0 ? (size_t)r.n : 0;
    d->ref = NULL;
    d->data = malloc(n * sizeof(float) + 1);
    sp_dicom_ref *ref = k ? calloc(1, sizeof *ref) : NULL;
    if (ref) {
        *ref = r;
        ref->sop_uid = calloc(k, SP_DICOM_UID);
        ref->sop_class = calloc(k, SP_DICOM_UID);
        ref->ipp = calloc(k, sizeof *ref->ipp);
    }
    if (!d->data || (k && (!ref || !ref->sop_uid || !ref->sop_class || !ref->ipp))) {
        free(d->data);
        d->data = NULL;
        dicom_ref_free(ref);
        snprintf(msg, cap, "DICOM: cannot allocate the volume");
        return SP_ERR_NOMEM;
    }
    if (RD(d->data, n * sizeof(float)) ||
        (k && (RD(ref->sop_uid, k * SP_DICOM_UID) || RD(ref->sop_class, k * SP_DICOM_UID) ||
               RD(ref->ipp, k * sizeof *ref->ipp)))) {
        free(d->data);
        d->data = NULL;
        dicom_ref_free(ref);
        return e == -2 ? SP_ERR_CANCELLED : CHILD_DIED;
    }
#undef RD
    d->ref = ref;
    return SP_OK;
}

/* the forked reader: dies with its parent (a SIGKILLed CLI, service or
 * worker leaves no reader behind), bounded by the headers' memory */
static void child_main(int fd, pid_t parent, const sp_dicom_reader *rd, const char *dir, const char *uid,
                       const sp_read_params *p)
{
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent)   /* the parent died before prctl */
        _exit(1);
    signal(SIGPIPE, SIG_IGN);
    signal(SIGTERM, SIG_DFL);
    signal(SIGINT, SIG_DFL);
    int null = open("/dev/null", O_WRONLY);   /* GDCM's assertion texts: the parent reports instead */
    if (null >= 0)
        dup2(null, 2);
    rd->limits(p->max_memory, 1);
    child_send(fd, rd, dir, uid, p->max_voxels ? p->max_voxels : SP_DEFAULT_MAX_VOXELS);
    _exit(0);
}

static sp_status load_isolated(const char *dir, const char *uid, const sp_read_params *p, sp_dicom_vol *d,
                               char *msg, size_t cap)
{
    const sp_dicom_reader *rd = sp_dicom_reader_open(msg, cap);   /* in the parent: the child never dlopens */
    if (!rd)
        return SP_ERR_RUNTIME;
    const char *inproc = getenv("SEGPIPE_DICOM_INPROCESS");
    if (inproc && !strcmp(inproc, "1")) {
        sp_status st = rd->load(dir, uid, p->max_voxels ? p->max_voxels : SP_DEFAULT_MAX_VOXELS, d, msg, cap);
        if (*rd->notes())
            SP_WARN("DICOM folder: %s", rd->notes());
        return st;
    }
    int fds[2];
    if (pipe2(fds, O_CLOEXEC))
        return snprintf(msg, cap, "DICOM: cannot make a pipe"), SP_ERR_IO;
    pid_t parent = getpid(), pid = fork();
    if (pid < 0) {
        close(fds[0]);
        close(fds[1]);
        return snprintf(msg, cap, "DICOM: cannot start the reader process"), SP_ERR_IO;
    }
    if (pid == 0) {   /* the child: read, send, leave without running the parent's exit handlers */
        close(fds[0]);
        child_main(fds[1], parent, rd, dir, uid, p);
    }
    close(fds[1]);
    sp_status st = parent_receive(fds[0], p->cancel, d, msg, cap);
    close(fds[0]);
    if (st == SP_ERR_CANCELLED)   /* stopped on request: the reader goes now, not when it is done */
        kill(pid, SIGKILL);
    int ws = 0;
    while (waitpid(pid, &ws, 0) < 0 && errno == EINTR)
        ;
    if (st == SP_ERR_CANCELLED) {
        snprintf(msg, cap, "cancelled while reading the DICOM series");
        return st;
    }
    if (st == CHILD_DIED) {
        int sig = WIFSIGNALED(ws) ? WTERMSIG(ws) : 0;
        snprintf(msg, cap, "%s: the DICOM library failed on this series (%s %d%s): a damaged or unsupported file",
                 dir, sig ? "signal" : "exit", sig ? sig : WEXITSTATUS(ws),
                 sig == SIGKILL || sig == SIGSEGV ? ", or more memory than its headers declare" : "");
        return SP_ERR_INPUT;
    }
    return st;
}

sp_status sp_dicom_read_dir(const char *dir, const sp_read_params *p, sp_volume **out)
{
    char msg[1024];
    sp_dicom_vol d;
    sp_read_params dflt = {0};   /* max_voxels 0: the default */
    *out = NULL;
    if (!p)
        p = &dflt;
    const char *uid = p->dicom_series ? p->dicom_series : getenv("SEGPIPE_DICOM_SERIES");
    sp_status st = load_isolated(dir, uid, p, &d, msg, sizeof msg);
    if (st)
        return sp_fail(st, "%s", msg);
    sp_geom g;
    memset(&g, 0, sizeof g);
    memcpy(g.dim, d.dim, sizeof g.dim);
    memcpy(g.affine, d.affine, sizeof g.affine);
    for (int r = 0; r < 3; r++)
        memcpy(g.srow[r], d.affine[r], sizeof g.srow[r]);
    for (int c = 0; c < 3; c++)
        g.spacing[c] = g.pixdim[c + 1] = d.spacing[c];
    g.pixdim[0] = g.qfac = 1;
    g.sform_code = 1;
    g.xyzt_units = 2;   /* mm */
    g.affine_source = "sform";
    sp_volume *v = sp_volume_alloc(&g);
    if (!v) {
        free(d.data);
        dicom_ref_free(d.ref);
        return sp_fail(SP_ERR_NOMEM, "DICOM: cannot allocate the volume");
    }
    v->dicom = d.ref;
    v->dicom_free = dicom_ref_free;
    size_t n = (size_t)sp_geom_nvox(&g);
    memcpy(v->data, d.data, n * sizeof(float));
    free(d.data);
    sp_volume_scan(v);   /* stored integers x slope + intercept: always finite */
    v->file_dtype = v->integer_valued ? SP_DT_I16 : SP_DT_F32;
    *out = v;
    return SP_OK;
}

int sp_is_zip(const void *data, size_t n)
{
    return n >= 4 && !memcmp(data, "PK\x03\x04", 4);
}

static void rm_dir(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    while (d && (e = readdir(d))) {
        char p[PATH_MAX + 300];
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
            snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
            unlink(p);
        }
    }
    if (d)
        closedir(d);
    rmdir(dir);
}

static sp_status unpack_one(zip_t *za, zip_int64_t i, const char *dir, char *buf, uint64_t *total, uint64_t cap,
                            const char *name);

/* every file entry of za into dir as dir/NNNNNN, at most cap bytes in all; stops when *cancel is set */
static sp_status unpack(zip_t *za, const char *dir, uint64_t cap, const char *name, const volatile int *cancel)
{
    zip_int64_t n = zip_get_num_entries(za, 0);
    if (n < 0 || n > 100000)
        return sp_fail(SP_ERR_INPUT, "%s: a zip of %lld entries is refused (at most 100000)", name, (long long)n);
    uint64_t total = 0, declared = 0;
    for (zip_int64_t i = 0; i < n; i++) {   /* the central directory's sizes first: an honest bomb costs nothing */
        zip_stat_t zs;
        if (!zip_stat_index(za, (zip_uint64_t)i, 0, &zs) && (zs.valid & ZIP_STAT_SIZE))
            declared += zs.size;
    }
    if (declared > cap)
        return sp_fail(SP_ERR_INPUT, "%s: the zip unpacks to more than %llu bytes (it declares %llu): refused", name,
                       (unsigned long long)cap, (unsigned long long)declared);
    char *buf = malloc(1 << 16);   /* workers of the service unpack at the same time */
    sp_status st = buf ? SP_OK : sp_fail(SP_ERR_NOMEM, "out of memory");
    for (zip_int64_t i = 0; i < n && !st; i++)
        st = cancel && __atomic_load_n(cancel, __ATOMIC_RELAXED)
                 ? sp_fail(SP_ERR_CANCELLED, "cancelled while unpacking the DICOM zip")
                 : unpack_one(za, i, dir, buf, &total, cap, name);
    free(buf);
    return st;
}

/* entry i of za into dir/NNNNNN, counting its bytes against cap */
static sp_status unpack_one(zip_t *za, zip_int64_t i, const char *dir, char *buf, uint64_t *total, uint64_t cap,
                            const char *name)
{
    const char *en = zip_get_name(za, (zip_uint64_t)i, 0);
    if (en && *en && en[strlen(en) - 1] == '/')
        return SP_OK;   /* a folder */
    zip_file_t *zf = zip_fopen_index(za, (zip_uint64_t)i, 0);
    if (!zf)
        return sp_fail(SP_ERR_INPUT, "%s: zip entry %lld cannot be read (damaged or encrypted)", name, (long long)i);
    char path[PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/%06lld", dir, (long long)i);
    FILE *f = fopen(path, "wb");
    zip_int64_t got = 0;
    zip_stat_t zs;
    /* an entry is not inflated past the size it declares (a lying header stops there) */
    uint64_t mine = 0, says = !zip_stat_index(za, (zip_uint64_t)i, 0, &zs) && (zs.valid & ZIP_STAT_SIZE) ? zs.size
                                                                                                        : UINT64_MAX;
    int werr = !f, over = 0;
    while (!werr && !over && (got = zip_fread(zf, buf, 1 << 16)) > 0) {
        mine += (uint64_t)got;
        over = *total + (uint64_t)got > cap || mine > says;
        *total += (uint64_t)got;
        werr = !over && fwrite(buf, 1, (size_t)got, f) != (size_t)got;
    }
    werr |= f && fclose(f) != 0;
    zip_fclose(zf);
    if (over && mine > says)
        return sp_fail(SP_ERR_INPUT, "%s: zip entry %lld holds more than the %llu bytes it declares: refused", name,
                       (long long)i, (unsigned long long)says);
    if (over)
        return sp_fail(SP_ERR_INPUT, "%s: the zip unpacks to more than %llu bytes: refused", name,
                       (unsigned long long)cap);
    if (got < 0)
        return sp_fail(SP_ERR_INPUT, "%s: zip entry %lld cannot be read (damaged)", name, (long long)i);
    return werr ? sp_fail(SP_ERR_IO, "%s: cannot unpack into the temporary folder ($TMPDIR: full?)", name) : SP_OK;
}

/* "segpipe-dicom-PID-XXXXXX": the PID of the process that unpacked */
static int stale(const char *name, uid_t me, int dfd)
{
    struct stat sb;
    char *end;
    if (strncmp(name, "segpipe-dicom-", 14))
        return 0;
    long pid = strtol(name + 14, &end, 10);
    if (end == name + 14 || *end != '-' || pid <= 0 || fstatat(dfd, name, &sb, AT_SYMLINK_NOFOLLOW) ||
        !S_ISDIR(sb.st_mode) || sb.st_uid != me)
        return 0;
    return kill((pid_t)pid, 0) < 0 && errno == ESRCH;
}

void sp_dicom_clean_stale(void)
{
    const char *tmp = getenv("TMPDIR");
    char base[PATH_MAX], p[PATH_MAX + 300];
    snprintf(base, sizeof base, "%s", tmp && *tmp ? tmp : "/tmp");
    DIR *d = opendir(base);
    struct dirent *e;
    while (d && (e = readdir(d)))
        if (stale(e->d_name, getuid(), dirfd(d))) {
            snprintf(p, sizeof p, "%s/%s", base, e->d_name);
            rm_dir(p);
        }
    if (d)
        closedir(d);
}

/* the last error with the private folder's path replaced by the zip's name
 * (a client never sees where the service unpacks) */
static sp_status hide_dir(sp_status st, const char *dir, const char *name)
{
    char m[2048], out[2048];
    snprintf(m, sizeof m, "%s", sp_last_error());
    size_t o = 0, dl = strlen(dir);
    for (const char *c = m; *c && o + 1 < sizeof out;) {
        if (dl && !strncmp(c, dir, dl)) {
            o += (size_t)snprintf(out + o, sizeof out - o, "%s", name);
            o = o < sizeof out ? o : sizeof out - 1;
            c += dl;
            while (*c == '/' && c[1] && c[1] != ' ')
                c++;   /* a file inside: its numbered name stays */
        } else {
            out[o++] = *c++;
        }
    }
    out[o] = 0;
    return sp_fail(st, "%s", out);
}

sp_status sp_dicom_read_zip(const void *data, size_t size, const char *path, const sp_read_params *p, sp_volume **out)
{
    const char *name = path ? path : "(zip)";
    sp_read_params dflt = {0};   /* max_voxels 0: the default */
    if (!p)
        p = &dflt;
    uint64_t max_voxels = p->max_voxels ? p->max_voxels : SP_DEFAULT_MAX_VOXELS;
    zip_error_t ze;
    zip_error_init(&ze);
    zip_source_t *src = zip_source_buffer_create(data, size, 0, &ze);
    zip_t *za = src ? zip_open_from_source(src, ZIP_RDONLY, &ze) : NULL;
    *out = NULL;
    if (!za) {
        if (src)
            zip_source_free(src);
        zip_error_fini(&ze);
        return sp_fail(SP_ERR_INPUT, "%s: not a readable zip archive", name);
    }
    zip_error_fini(&ze);
    sp_dicom_clean_stale();
    const char *tmp = getenv("TMPDIR");
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%s/segpipe-dicom-%d-XXXXXX", tmp && *tmp ? tmp : "/tmp", (int)getpid());
    sp_status st = mkdtemp(dir) ? SP_OK : sp_fail(SP_ERR_IO, "cannot make a temporary folder in $TMPDIR");
    /* bounded by the volume limit (32-bit voxels + headers) and by 64x the
     * archive: real series compress 2-10x, zip bombs 1000x */
    uint64_t cap = max_voxels * 4 + ((uint64_t)256 << 20), ratio = (uint64_t)size * 64 + ((uint64_t)64 << 20);
    if (!st)
        st = unpack(za, dir, cap < ratio ? cap : ratio, name, p->cancel);
    zip_discard(za);
    if (!st && (st = sp_dicom_read_dir(dir, p, out)))
        st = hide_dir(st, dir, name);
    if (st == SP_OK || dir[0])
        rm_dir(dir);
    return st;
}
#endif
