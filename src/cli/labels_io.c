/* labels_io.c — label files TotalSegmentator users bring and expect: the
 * class names in the NIfTI extension of a multilabel file, and the
 * one-file-per-class folder. */
#include "cli.h"

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

static int msg(const char *who, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "segpipe %s: ", who);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return code;
}

static int has_suffix(const char *s, const char *suf)
{
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcmp(s + a - b, suf);
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* TotalSegmentator's one-file-per-class folder (<name>.nii.gz binary masks)
 * as one label volume: ids from the label map when given (names, nn), else
 * 1..N in name order with the file names as names. */
int cli_read_label_folder(const char *who, const char *dir, char ***names, int *nn, uint16_t **lab, sp_volume **lg)
{
    DIR *d = opendir(dir);
    if (!d)
        return msg(who, 6, "%s: cannot open: %s", dir, strerror(errno));
    char **files = NULL;
    int nf = 0;
    int st = 0;
    for (struct dirent *e; (e = readdir(d));) {
        if (e->d_name[0] == '.' || !(has_suffix(e->d_name, ".nii.gz") || has_suffix(e->d_name, ".nii")))
            continue;
        char **nfl = realloc(files, (size_t)(nf + 1) * sizeof *files);
        if (!nfl || !(nfl[nf] = strdup(e->d_name))) {
            files = nfl ? nfl : files;
            st = msg(who, 7, "out of memory");
            break;
        }
        files = nfl;
        nf++;
    }
    closedir(d);
    if (!st && !nf)
        st = msg(who, 3, "%s: no .nii or .nii.gz masks in the folder", dir);
    if (!st)
        qsort(files, (size_t)nf, sizeof *files, cmp_str);
    int own = !*names;
    if (!st && own) {   /* names from the files, ids in name order */
        *nn = nf + 1;
        if (!(*names = calloc((size_t)*nn, sizeof **names)))
            st = msg(who, 7, "out of memory");
    }
    size_t nv = 0;
    for (int k = 0; k < nf && !st; k++) {
        char path[PATH_MAX], *stem = strdup(files[k]);
        *strstr(stem, ".nii") = 0;
        int id = own ? k + 1 : -1;
        for (int i = 1; !own && i < *nn; i++)
            if ((*names)[i] && !strcmp((*names)[i], stem))
                id = i;
        snprintf(path, sizeof path, "%s/%s", dir, files[k]);
        uint16_t *m = NULL;
        sp_volume *g = NULL;
        sp_status rs = SP_OK;
        if (id < 0)
            st = msg(who, 3, "%s: '%s' is not in the label map", path, stem);
        else if ((rs = sp_labels_read(path, NULL, &m, &g)))
            st = msg(who, sp_status_exit_code(rs), "%s", sp_last_error());
        else if (!*lg) {
            sp_volume_info vi;
            sp_volume_get_info(g, &vi);
            nv = (size_t)(vi.dim[0] * vi.dim[1] * vi.dim[2]);
            *lg = g;
            g = NULL;
            if (!(*lab = calloc(nv ? nv : 1, sizeof **lab)))
                st = msg(who, 7, "out of memory");
        }
        if (!st && g) {   /* every mask on the first one's grid */
            sp_volume_info a, b;
            sp_volume_get_info(*lg, &a);
            sp_volume_get_info(g, &b);
            if (memcmp(a.dim, b.dim, sizeof a.dim))
                st = msg(who, 3, "%s: its grid differs from the folder's other masks", path);
        }
        for (size_t i = 0; !st && i < nv; i++)
            if (m[i])
                (*lab)[i] = (uint16_t)id;
        if (own && !st)
            (*names)[id] = stem, stem = NULL;
        free(stem);
        free(m);
        sp_volume_free(g);
    }
    for (int k = 0; k < nf; k++)
        free(files[k]);
    free(files);
    return st;
}

